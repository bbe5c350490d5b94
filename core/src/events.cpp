// Event streams: numbered PUB/SUB with gap detection (see events.h).
#include "djinn/core/events.h"

#include <sodium.h>

#include <algorithm>

#include <kj/exception.h>

#include "djinn/core/context.h"
#include "djinn/core/log.h"
#include "djinn/core/thread_name.h"
#include "djinn/proto/rpc.capnp.h"
#include "resolver.h"
#include "wire.h"

namespace djinn::events {
namespace {

uint64_t now_micros() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

std::string topic_of(std::string_view kind, std::string_view key) {
  std::string t;
  t.reserve(kind.size() + 1 + key.size());
  t.append(kind).push_back('/');
  t.append(key);
  return t;
}

}  // namespace

Publisher::Publisher(PublisherOptions options)
    : options_(std::move(options)), context_(options_.context ? *options_.context : default_context()) {
  if (sodium_init() < 0) throw std::runtime_error("libsodium failed to initialise");
  randombytes_buf(&incarnation_, sizeof incarnation_);
  if (incarnation_ == 0) incarnation_ = 1;
}

Publisher::~Publisher() { stop(); }

Status Publisher::start() {
  std::lock_guard lock(mu_);
  if (socket_) return failed_precondition("publisher already started");
  auto s = std::make_unique<zmq::socket_t>(context_, zmq::socket_type::pub);
  s->set(zmq::sockopt::linger, 0);
  s->set(zmq::sockopt::sndhwm, options_.send_high_water_mark);
  // What a PUB socket reads is subscriptions: a topic is an event kind, never more than a few
  // hundred bytes; a peer sending more is dropped instead of kept in the topic tree.
  s->set(zmq::sockopt::maxmsgsize, int64_t{4096});
  if (options_.curve) {
    if (!options_.curve->keyring) return invalid_argument("CURVE publisher needs a keyring");
    char buf[32];
    std::snprintf(buf, sizeof buf, "djinn-pub-%p", static_cast<void*>(this));
    zap_domain_ = buf;
    security::ZapHandler::for_context(context_).set_domain(zap_domain_, options_.curve->keyring);
    s->set(zmq::sockopt::zap_domain, zap_domain_);
    s->set(zmq::sockopt::curve_server, true);
    s->set(zmq::sockopt::curve_secretkey, options_.curve->server.secret_key);
  }
  bound_.clear();
  for (const auto& ep : options_.endpoints) {
    std::string bound;
    if (Status st = rpc::internal::bind_endpoint(*s, ep, &bound); !st.ok()) {
      bound_.clear();
      return st;
    }
    bound_.push_back(std::move(bound));
  }
  socket_ = std::move(s);
  if (options_.heartbeat_interval.count() > 0) {
    hb_stop_ = false;
    hb_thread_ = std::thread([this] {
      name_this_thread("events-beat");
      std::unique_lock lk(hb_mu_);
      while (!hb_cv_.wait_for(lk, options_.heartbeat_interval, [this] { return hb_stop_; })) {
        lk.unlock();
        heartbeat();
        lk.lock();
      }
    });
  }
  return Status::Ok();
}

void Publisher::stop() {
  if (hb_thread_.joinable()) {
    {
      std::lock_guard lk(hb_mu_);
      hb_stop_ = true;
    }
    hb_cv_.notify_all();
    hb_thread_.join();
  }
  std::lock_guard lock(mu_);
  socket_.reset();
  if (!zap_domain_.empty()) {
    security::ZapHandler::for_context(context_).remove_domain(zap_domain_);
    zap_domain_.clear();
  }
}

uint64_t Publisher::publish(std::string_view kind, std::string_view key, capnp::MessageBuilder& payload) {
  zmq::message_t frame = rpc::internal::message_frame(payload);
  return send(kind, key, false, &frame, 0);
}

uint64_t Publisher::publish(std::string_view kind, std::string_view key) { return send(kind, key, false, nullptr, 0); }

SharedPayload::SharedPayload(capnp::MessageBuilder& message) : frame_(rpc::internal::message_frame(message)) {}

uint64_t Publisher::publish(std::string_view kind, std::string_view key, const SharedPayload& payload) {
  return send(kind, key, false, &payload.frame_, 0);
}

Publisher::Stream& Publisher::stream_locked(std::string_view kind) {
  auto it = seq_.find(kind);
  if (it == seq_.end()) it = seq_.emplace(std::string(kind), Stream{}).first;
  return it->second;
}

uint64_t Publisher::number(std::string_view kind) {
  std::lock_guard lock(mu_);
  return ++stream_locked(kind).numbered;
}

void Publisher::send_numbered(std::string_view kind, std::string_view key, const SharedPayload& payload, uint64_t seq) {
  send(kind, key, false, &payload.frame_, seq);
}

uint64_t Publisher::last_seq(std::string_view kind) const {
  std::lock_guard lock(mu_);
  auto it = seq_.find(kind);
  return it == seq_.end() ? 0 : it->second.numbered;
}

Result<std::unique_ptr<Publisher>> start_publisher(const std::string& endpoint, std::optional<rpc::CurveServer> curve) {
  PublisherOptions options;
  options.endpoints = {endpoint};
  options.curve = std::move(curve);
  auto publisher = std::make_unique<Publisher>(options);
  if (Status st = publisher->start(); !st.ok()) return Status(st.code(), "events endpoint " + endpoint + ": " + st.message());
  return publisher;
}

void Publisher::declare(std::string_view kind) {
  std::lock_guard lock(mu_);
  stream_locked(kind);
}

void Publisher::forget(std::string_view kind) {
  std::lock_guard lock(mu_);
  auto it = seq_.find(kind);
  if (it != seq_.end()) seq_.erase(it);
}

void Publisher::heartbeat() {
  std::vector<std::pair<std::string, uint64_t>> kinds;
  {
    std::lock_guard lock(mu_);
    for (const auto& [kind, stream] : seq_) kinds.emplace_back(kind, stream.sent);
  }
  for (auto& [kind, seq] : kinds) send(kind, "", true, nullptr, seq);
}

uint64_t Publisher::send(std::string_view kind, std::string_view key, bool heartbeat, const zmq::message_t* payload,
                         uint64_t seq_override) {
  std::lock_guard lock(mu_);
  if (!socket_) return 0;
  uint64_t seq;
  if (heartbeat) {
    seq = seq_override;
  } else {
    Stream& stream = stream_locked(kind);
    // Numbered already (send_numbered), or the next number now.
    seq = seq_override ? seq_override : ++stream.numbered;
    stream.sent = std::max(stream.sent, seq);
  }
  capnp::word scratch[64];
  memset(scratch, 0, sizeof scratch);
  capnp::MallocMessageBuilder b(kj::arrayPtr(scratch, 64));
  auto h = b.initRoot<proto::EventHeader>();
  h.setKind(capnp::Text::Reader(kind.data(), kind.size()));
  h.setKey(capnp::Text::Reader(key.data(), key.size()));
  h.setSeq(seq);
  h.setIncarnation(incarnation_);
  h.setHeartbeat(heartbeat);
  h.setTimeMicros(now_micros());
  std::string topic = topic_of(kind, key);
  zmq::message_t t(topic.data(), topic.size());
  zmq::message_t hf = rpc::internal::message_frame(b);
  zmq::message_t pf;
  if (payload) pf.copy(*const_cast<zmq::message_t*>(payload));
  // PUB never blocks: past the high-water mark ZeroMQ drops, and subscribers see the gap.
  rpc::internal::send_frame(*socket_, t, zmq::send_flags::sndmore);
  rpc::internal::send_frame(*socket_, hf, zmq::send_flags::sndmore);
  rpc::internal::send_frame(*socket_, pf, zmq::send_flags::none);
  return seq;
}

capnp::FlatArrayMessageReader Event::reader(const rpc::Limits& limits) const {
  kj::ArrayPtr<const capnp::word> words =
      payload.size() ? kj::ArrayPtr<const capnp::word>(payload) : rpc::internal::empty_message_words();
  return capnp::FlatArrayMessageReader(words, rpc::reader_options(limits, words.size()));
}

struct Subscriber::Named {
  rpc::internal::NamedTcpEndpoint endpoint;
  rpc::internal::Relookup relookup;
};

Subscriber::Subscriber(SubscriberOptions options)
    : options_(std::move(options)), context_(options_.context ? *options_.context : default_context()) {}

Subscriber::~Subscriber() { stop(); }

void Subscriber::subscribe(std::string kind, std::string key) {
  auto& keys = wanted_[kind];
  if (key.empty()) {
    keys.clear();
    keys.insert("");  // "" marks: every key
  } else if (!keys.count("")) {
    keys.insert(std::move(key));
  }
}

void Subscriber::open() {
  if (socket_) return;
  auto socket = std::make_unique<zmq::socket_t>(context_, zmq::socket_type::sub);
  auto& s = *socket;
  s.set(zmq::sockopt::linger, 0);
  s.set(zmq::sockopt::rcvhwm, options_.receive_high_water_mark);
  s.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(options_.limits.hard_max_message_bytes));
  if (options_.curve) {
    s.set(zmq::sockopt::curve_serverkey, options_.curve->server_public_key);
    s.set(zmq::sockopt::curve_publickey, options_.curve->client.public_key);
    s.set(zmq::sockopt::curve_secretkey, options_.curve->client.secret_key);
  }
  // Whole kinds, always: see the header for why keys are filtered here.
  for (const auto& [kind, keys] : wanted_) s.set(zmq::sockopt::subscribe, topic_of(kind, ""));
  dialled_.clear();
  named_.reset();
  // A host name is resolved off ZeroMQ's I/O thread (see resolver.h); poll() dials once it is.
  if (auto named = rpc::internal::named_tcp_endpoint(options_.endpoint)) {
    named_ = std::make_unique<Named>(Named{std::move(*named), {}});
    (void)rpc::internal::resolve(named_->endpoint.host);
  } else {
    auto d = rpc::internal::dial_as_given(options_.endpoint);
    if (d.ipv6) s.set(zmq::sockopt::ipv6, true);
    rpc::internal::past_signals([&] { s.connect(d.endpoint); });
    dialled_ = d.endpoint;
  }
  socket_ = std::move(socket);
}

void Subscriber::connect_to(const std::string& address, bool ipv6) {
  if (!dialled_.empty()) {
    try {
      rpc::internal::past_signals([&] { socket_->disconnect(dialled_); });
    } catch (const zmq::error_t&) {
      // Already gone.
    }
    dialled_.clear();  // a failed connect below leaves it to dial_by_name
  }
  if (ipv6) socket_->set(zmq::sockopt::ipv6, true);
  rpc::internal::past_signals([&] { socket_->connect(address); });
  dialled_ = address;
  dialled_at_ = last_heard_ = std::chrono::steady_clock::now();
}

bool Subscriber::dial_by_name(std::chrono::steady_clock::time_point deadline) {
  if (!named_) return false;  // open() dialled it, or failed
  auto r = rpc::internal::resolve(named_->endpoint.host);
  if (!r->wait_until(deadline)) return false;
  auto d = r->dial(named_->endpoint.port);
  try {
    if (d.ok()) {
      connect_to(d->endpoint, d->ipv6);
      return true;
    }
  } catch (const zmq::error_t& e) {
    d = invalid_argument(std::string("cannot connect to ") + options_.endpoint + ": " + e.what());
  }
  if (d.status().message() != unresolved_) {
    unresolved_ = d.status().message();
    DJINN_LOG(kWarn, "events") << "no events from " << options_.endpoint << " yet: " << unresolved_;
  }
  // A poll loop does not spin on a failed name, which is tried again after a second.
  std::this_thread::sleep_until(std::min(deadline, std::chrono::steady_clock::now() + std::chrono::seconds(1)));
  return false;
}

void Subscriber::consider_redial() {
  auto now = std::chrono::steady_clock::now();
  // Silence counts as a connection down; a lookup under way while the publisher was heard from
  // is dropped by the Relookup once it is old.
  if (!named_ || now - last_heard_ < options_.reresolve_after) return;
  auto moved = named_->relookup.check(named_->endpoint, dialled_, dialled_at_, options_.reresolve_after, now);
  if (!moved) return;
  DJINN_LOG(kInfo, "events") << options_.endpoint << " now resolves to " << moved->endpoint << " (was " << dialled_ << ")";
  try {
    connect_to(moved->endpoint, moved->ipv6);
  } catch (const zmq::error_t& e) {
    DJINN_LOG(kWarn, "events") << "cannot dial " << moved->endpoint << ": " << e.what();
  }
}

Status Subscriber::start() {
  if (running_) return failed_precondition("subscriber already started");
  heard_.store(false);
  if (auto named = rpc::internal::named_tcp_endpoint(options_.endpoint)) {
    DJINN_RETURN_IF_ERROR(rpc::internal::check_named_endpoint(*named, options_.endpoint));
  }
  try {
    open();
  } catch (const zmq::error_t& e) {
    return invalid_argument("cannot connect to " + options_.endpoint + ": " + e.what());
  }
  running_ = true;
  thread_ = std::thread([this] {
    name_this_thread("events-sub");
    while (running_.load(std::memory_order_relaxed)) poll(std::chrono::milliseconds(50));
  });
  return Status::Ok();
}

void Subscriber::stop() {
  running_ = false;
  if (thread_.joinable()) thread_.join();
  socket_.reset();
}

int Subscriber::poll(std::chrono::milliseconds timeout) {
  open();
  if (dialled_.empty()) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    if (!dial_by_name(deadline)) return 0;
    timeout = std::chrono::ceil<std::chrono::milliseconds>(
        std::max(deadline - std::chrono::steady_clock::now(), std::chrono::steady_clock::duration::zero()));
  } else {
    consider_redial();
  }
  zmq::pollitem_t item{socket_->handle(), 0, ZMQ_POLLIN, 0};
  rpc::internal::poll_sockets(&item, 1, timeout);
  int delivered = 0;
  bool heard = false;
  std::vector<zmq::message_t> parts;
  for (int n = 0; n < kMaxPerPoll; ++n) {
    parts.clear();
    if (!rpc::internal::recv_parts(*socket_, parts, zmq::recv_flags::dontwait)) break;
    heard = true;
    if (parts.size() != 3) continue;  // not ours
    handle(parts);
    ++delivered;
  }
  if (heard) {
    last_heard_ = std::chrono::steady_clock::now();
    heard_.store(true);
  }
  return delivered;
}

void Subscriber::handle(std::vector<zmq::message_t>& parts) {
  Event ev;
  bool heartbeat = false;
  Status st = [&] {
    kj::Array<capnp::word> words;
    DJINN_RETURN_IF_ERROR(rpc::internal::frame_words(parts[1], &words));
    if (words.size() == 0) return invalid_argument("empty event header");
    try {
      capnp::FlatArrayMessageReader r(words, rpc::reader_options(options_.limits, words.size()));
      auto h = r.getRoot<proto::EventHeader>();
      ev.kind = h.getKind().cStr();
      ev.key = h.getKey().cStr();
      ev.seq = h.getSeq();
      ev.incarnation = h.getIncarnation();
      ev.time_micros = h.getTimeMicros();
      heartbeat = h.getHeartbeat();
    } catch (const kj::Exception& e) {
      return invalid_argument(std::string("malformed event header: ") + e.getDescription().cStr());
    }
    return rpc::internal::frame_words(parts[2], &ev.payload);
  }();
  if (!st.ok()) {
    DJINN_LOG(kWarn, "events") << "dropped an event from " << options_.endpoint << ": " << st.message();
    return;
  }
  auto wanted = wanted_.find(ev.kind);
  if (wanted == wanted_.end()) return;

  Stream& s = streams_[ev.kind];
  Gap gap{ev.kind, s.last + 1, ev.seq, false};
  bool report = false;
  if (s.incarnation != ev.incarnation) {
    // First contact, or the publisher restarted: whatever we knew is stale.
    report = true;
    gap.restarted = s.incarnation != 0;
    gap.expected = 0;
    s.incarnation = ev.incarnation;
  } else if (heartbeat ? ev.seq > s.last : ev.seq != s.last + 1) {
    report = ev.seq > s.last;  // an older number is a duplicate; ignore it
    if (!report) return;
  }
  if (report) {
    if (gap.expected != 0 || gap.restarted || ev.seq > 1 || heartbeat) {
      gaps_++;
      if (on_gap_) on_gap_(gap);
    }
  }
  if (ev.seq > s.last || report) s.last = ev.seq;
  if (heartbeat) return;
  const auto& keys = wanted->second;
  if (!keys.count("") && !keys.count(ev.key)) return;
  if (on_event_) on_event_(ev);
}

}  // namespace djinn::events
