// The RPC client. Blocking calls use a DEALER socket checked out by the calling thread, so a round
// trip costs what a raw DEALER round trip costs. Asynchronous calls go through one I/O thread that
// owns another DEALER, keeps every call in flight in a table, and sends whatever is queued at each
// wake-up as one batched message. Both paths watch their socket's monitor: a lost connection fails
// or retries the calls in flight, a refused handshake fails them at once with a clear status.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <kj/exception.h>

#include "djinn/core/context.h"
#include "djinn/core/log.h"
#include "djinn/core/rpc.h"
#include "djinn/core/thread_name.h"
#include "resolver.h"
#include "wire.h"

namespace djinn::rpc {

Reply::Reply(Status status, kj::Array<capnp::word> payload, capnp::ReaderOptions options)
    : status_(std::move(status)), payload_(std::move(payload)), options_(options) {}

capnp::MessageReader& Reply::message() {
  if (!reader_) {
    kj::ArrayPtr<const capnp::word> words =
        payload_.size() ? kj::ArrayPtr<const capnp::word>(payload_) : internal::empty_message_words();
    reader_ = std::make_unique<capnp::FlatArrayMessageReader>(words, options_);
  }
  return *reader_;
}

kj::Array<capnp::word> to_words(capnp::MessageBuilder& message) { return capnp::messageToFlatArray(message); }

namespace {

constexpr int kMonitorEvents = ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_SUCCEEDED |
                               ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;

std::atomic<uint64_t> g_monitor_seq{0};

// What the socket monitor has told us about the connection.
struct Link {
  bool connected = false;
  bool lost = false;           // a connection that carried traffic went down since last cleared
  std::optional<Status> refused;  // the last handshake failed; cleared by a successful one
  bool ever_connected = false;
};

// A DEALER socket with its monitor. dial() connects it to an address (see resolver.h), and points
// it at another when the client's host name has moved.
class Channel {
 public:
  Channel(zmq::context_t& ctx, const ClientOptions& o) : dealer_(ctx, zmq::socket_type::dealer) {
    dealer_.set(zmq::sockopt::linger, 0);
    // Not ZMQ_IMMEDIATE: it would drop, with a lost connection, the replies that had arrived on it
    // and were not read yet. The client keeps a call until the monitor says the connection is up
    // instead (calls made while there is none never wait in ZeroMQ's queue).
    dealer_.set(zmq::sockopt::sndhwm, 100000);
    dealer_.set(zmq::sockopt::rcvhwm, 100000);
    dealer_.set(zmq::sockopt::reconnect_ivl, static_cast<int>(o.reconnect_interval.count()));
    dealer_.set(zmq::sockopt::reconnect_ivl_max, static_cast<int>(o.reconnect_interval_max.count()));
    dealer_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(o.limits.hard_max_message_bytes));
    if (o.curve) {
      dealer_.set(zmq::sockopt::curve_serverkey, o.curve->server_public_key);
      dealer_.set(zmq::sockopt::curve_publickey, o.curve->client.public_key);
      dealer_.set(zmq::sockopt::curve_secretkey, o.curve->client.secret_key);
    }
    std::string mon = "inproc://djinn-client-monitor-" + std::to_string(g_monitor_seq.fetch_add(1));
    internal::past_signals([&] {
      if (zmq_socket_monitor(dealer_.handle(), mon.c_str(), kMonitorEvents) != 0) throw zmq::error_t();
    });
    monitor_ = zmq::socket_t(ctx, zmq::socket_type::pair);
    monitor_.set(zmq::sockopt::linger, 0);
    internal::past_signals([&] { monitor_.connect(mon); });
    endpoint_ = o.endpoint;
  }

  // Connects to `to`, dropping the connection to an earlier address; nothing when `generation`
  // (the client's count of addresses) is the one dialled already.
  void dial(const internal::Resolution::Dial& to, uint64_t generation) {
    if (generation == generation_) return;
    if (!dialled_.empty()) {
      try {
        internal::past_signals([&] { dealer_.disconnect(dialled_); });
      } catch (const zmq::error_t&) {
        // Already gone: ZeroMQ forgets an endpoint it failed to reach for good.
      }
      dialled_.clear();
    }
    if (to.ipv6) dealer_.set(zmq::sockopt::ipv6, true);
    internal::past_signals([&] { dealer_.connect(to.endpoint); });
    dialled_ = to.endpoint;
    generation_ = generation;
    dialled_at_ = Clock::now();
    link_.connected = false;  // to the old address; the new one reports its own handshake
  }
  uint64_t generation() const { return generation_; }
  // No connection now, after one was lost or after trying for `patience`: time to ask whether
  // the name still resolves to the address dialled. A socket still making its first connection
  // is not down.
  bool down(Clock::time_point now, std::chrono::milliseconds patience) const {
    return !link_.connected && (link_.ever_connected || now - dialled_at_ >= patience);
  }
  ~Channel() {
    zmq_socket_monitor(dealer_.handle(), nullptr, 0);
  }

  zmq::socket_t& dealer() { return dealer_; }
  zmq::socket_t& monitor() { return monitor_; }
  Link& link() { return link_; }

  // Applies every pending monitor event to link().
  void read_events() {
    for (;;) {
      zmq::message_t ev, addr;
      if (!internal::recv_frame(monitor_, ev, zmq::recv_flags::dontwait)) return;
      if (ev.more()) (void)internal::recv_frame(monitor_, addr, zmq::recv_flags::dontwait);  // parts arrive together
      if (ev.size() < 6) continue;
      uint16_t event;
      uint32_t value;
      std::memcpy(&event, ev.data(), 2);
      std::memcpy(&value, static_cast<const char*>(ev.data()) + 2, 4);
      switch (event) {
        case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
          link_.connected = true;
          link_.ever_connected = true;
          link_.refused.reset();
          break;
        case ZMQ_EVENT_DISCONNECTED:
          if (link_.connected) link_.lost = true;
          link_.connected = false;
          break;
        case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
          link_.refused = unauthenticated("server " + endpoint_ + " refused this client's key (ZAP status " +
                                          std::to_string(value) +
                                          "): add the key to the server's keyring with `djinn-keys keyring add`");
          break;
        case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
        case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
          link_.refused = unauthenticated("security handshake with " + endpoint_ +
                                          " failed: both sides must use CURVE (or both plaintext), with the "
                                          "server's public key configured on the client");
          break;
        default:
          break;
      }
    }
  }

 private:
  zmq::socket_t dealer_;
  zmq::socket_t monitor_;
  std::string endpoint_;  // as the client was given it
  std::string dialled_;   // the address connected to
  uint64_t generation_ = 0;
  Clock::time_point dialled_at_{};
  Link link_;
};

bool retryable(const CallOptions& o) { return o.idempotent || !o.idempotency_key.empty(); }

Status lost_status(const std::string& endpoint, std::string_view method) {
  return unavailable("connection to " + endpoint + " was lost with '" + std::string(method) +
                     "' in flight; it may or may not have been applied (mark the call idempotent or give "
                     "it an idempotency key to have it retried)");
}

Status timeout_status(const std::string& endpoint, std::string_view method, std::chrono::milliseconds t,
                      bool ever_connected) {
  std::string m = "no reply from " + endpoint + " to '" + std::string(method) + "' within " +
                  std::to_string(t.count()) + " ms";
  if (!ever_connected) m += " (no connection was ever established: is the server running there?)";
  return deadline_exceeded(m);
}

struct Pending {
  std::string method;
  kj::Array<capnp::word> payload;
  CallOptions options;
  Clock::time_point deadline;
  std::chrono::milliseconds timeout;
  Callback done;
  std::multimap<Clock::time_point, uint64_t>::iterator due{};  // in the I/O thread's deadline index
};

}  // namespace

struct Client::Impl {
  explicit Impl(ClientOptions o)
      : options(std::move(o)),
        context(options.context ? *options.context : default_context()),
        named(internal::named_tcp_endpoint(options.endpoint)) {
    if (Status st = wakeup.status(); !st.ok()) {
      unusable = st;
      return;
    }
    if (named) {
      if (Status st = internal::check_named_endpoint(*named, options.endpoint); !st.ok()) {
        unusable = st;
        return;
      }
    } else {
      dial = internal::dial_as_given(options.endpoint);
      dial_generation = 1;
    }
    // An endpoint or options ZeroMQ refuses fail every call with a status, never with an exception
    // (the I/O thread could not even report one): set up one channel now, and dial an address.
    try {
      auto ch = std::make_unique<Channel>(context, options);
      if (!named) ch->dial(dial, 1);
      release(std::move(ch));
    } catch (const zmq::error_t& e) {
      if (e.num() == EMFILE || e.num() == ENFILE) {
        unusable = resource_exhausted("cannot open a socket to '" + options.endpoint + "': " + e.what() +
                                      " (raise the limit on open files, ulimit -n)");
      } else {
        unusable = invalid_argument("cannot connect to '" + options.endpoint + "': " + e.what() +
                                    " (expected tcp://HOST:PORT)");
      }
      return;
    }
    // A host name is resolved off ZeroMQ's I/O thread, starting now; calls wait for it up to their
    // deadline.
    if (named) (void)internal::resolve(named->host);
  }
  ~Impl() {
    if (io_thread.joinable()) {
      stopping = true;
      wakeup.notify();
      io_thread.join();
    }
  }

  ClientOptions options;
  zmq::context_t& context;
  std::optional<Status> unusable;  // the endpoint cannot be dialled

  // What the sockets dial: the endpoint itself, or for a host name, the address it resolved to.
  // A name is resolved again while the connection is down once its address is
  // options.reresolve_after old; a new address gets a new generation, and each socket re-dials at
  // its next use.
  const std::optional<internal::NamedTcpEndpoint> named;
  // Guards dial_resolved_at, relookup, and dial (which changes after construction only for a
  // host name).
  std::mutex dial_mu;
  internal::Resolution::Dial dial;
  std::atomic<uint64_t> dial_generation{0};  // 0: the name is not resolved yet
  Clock::time_point dial_resolved_at{};
  internal::Relookup relookup;
  uint64_t failed_generation = UINT64_MAX;  // the last address a socket could not dial (logged)

  std::mutex pool_mu;  // guards pool
  std::vector<std::unique_ptr<Channel>> pool;

  // Asynchronous path.
  std::once_flag io_started;
  std::thread io_thread;
  std::atomic<std::thread::id> io_thread_id{};
  std::atomic<bool> stopping{false};
  internal::Wakeup wakeup;
  std::mutex submit_mu;  // guards submitted
  std::vector<Pending> submitted;
  std::vector<Pending> local_submitted;  // from callbacks on the I/O thread; no lock, no wake-up

  std::atomic<uint64_t> n_calls{0}, n_retries{0}, n_timeouts{0}, n_batches{0};

  // Waits for the host name's first resolution until `deadline` at most.
  Status await_dial(Clock::time_point deadline, std::chrono::milliseconds timeout) {
    if (dial_generation.load(std::memory_order_acquire) > 0) return Status::Ok();
    auto r = internal::resolve(named->host);
    if (!r->wait_until(deadline)) return internal::resolution_timeout(named->host, options.endpoint, timeout);
    return settle_dial(*r);
  }
  Status settle_dial(const internal::Resolution& r) {
    auto d = r.dial(named->port);
    std::lock_guard lock(dial_mu);
    if (dial_generation.load(std::memory_order_relaxed) > 0) return Status::Ok();  // another call's
    if (!d.ok()) return d.status();
    dial = *d;
    dial_resolved_at = Clock::now();
    dial_generation.store(1, std::memory_order_release);
    return Status::Ok();
  }
  // Points `ch` at the current address; true when it changed.
  bool redial(Channel& ch) {
    if (!named || ch.generation() == dial_generation.load(std::memory_order_acquire)) return false;
    std::lock_guard lock(dial_mu);
    try {
      ch.dial(dial, dial_generation.load(std::memory_order_relaxed));
      return true;
    } catch (const zmq::error_t& e) {
      // Tried again at the socket's next use; said once per address.
      uint64_t target = dial_generation.load(std::memory_order_relaxed);
      if (failed_generation != target) {
        failed_generation = target;
        DJINN_LOG(kWarn, "rpc") << "cannot dial " << dial.endpoint << " for " << options.endpoint << ": " << e.what();
      }
      return false;
    }
  }
  // With the connection down: a service that came back elsewhere is found (see Relookup); the
  // sockets re-dial at their next use.
  void consider_redial(const Channel& ch) {
    auto now = Clock::now();
    if (!named || !ch.down(now, options.reresolve_after)) return;
    std::lock_guard lock(dial_mu);
    if (dial_generation.load(std::memory_order_relaxed) == 0) return;  // first resolution still pending
    auto moved = relookup.check(*named, dial.endpoint, dial_resolved_at, options.reresolve_after, now);
    if (!moved) return;
    DJINN_LOG(kInfo, "rpc") << options.endpoint << " now resolves to " << moved->endpoint << " (was " << dial.endpoint
                            << ")";
    dial = *moved;
    dial_generation.fetch_add(1, std::memory_order_release);
  }

  std::unique_ptr<Channel> acquire() {
    std::unique_ptr<Channel> c;
    {
      std::lock_guard lock(pool_mu);
      if (!pool.empty()) {
        c = std::move(pool.back());
        pool.pop_back();
      }
    }
    if (!c) {
      c = std::make_unique<Channel>(context, options);
      if (!named) c->dial(dial, 1);
    }
    if (c->generation() == 0) redial(*c);  // a named endpoint's first dial
    return c;
  }
  void release(std::unique_ptr<Channel> c) {
    std::lock_guard lock(pool_mu);
    pool.push_back(std::move(c));
  }

  Reply call_sync(std::string_view method, kj::ArrayPtr<const capnp::word> payload, const CallOptions& o);
  void submit(Pending p);
  std::unique_ptr<Channel> open_io_channel();
  void cancel_queued();
  void io_loop();
};

Client::Client(ClientOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Client::~Client() = default;

const std::string& Client::endpoint() const { return impl_->options.endpoint; }

ClientStats Client::stats() const {
  return ClientStats{impl_->n_calls.load(), impl_->n_retries.load(), impl_->n_timeouts.load(),
                     impl_->n_batches.load()};
}

Reply Client::call(std::string_view method, capnp::MessageBuilder& params, CallOptions options) {
  auto words = capnp::messageToFlatArray(params);
  return impl_->call_sync(method, words, options);
}

Reply Client::call(std::string_view method, CallOptions options) {
  return impl_->call_sync(method, kj::ArrayPtr<const capnp::word>(), options);
}

namespace {

// Decodes one reply frame into a Reply that owns its results.
Reply to_reply(const zmq::message_t& frame, const Limits& limits, uint64_t* id) {
  Status st;
  internal::SplitFrame split;
  // An oversized reply's header is read, so its call learns why instead of waiting out its deadline.
  *id = 0;
  if (Status fs = internal::decode_reply(frame, limits, id, &st, &split); !fs.ok()) return Reply(fs);
  auto words = kj::heapArray<capnp::word>(split.payload.size());
  if (words.size()) std::memcpy(words.begin(), split.payload.begin(), words.size() * sizeof(capnp::word));
  auto options = reader_options(limits, words.size());
  return Reply(std::move(st), std::move(words), options);
}

// The call's timeout, or the client's default; one too long to add to the clock is the longest.
std::chrono::milliseconds call_timeout(const CallOptions& call, const ClientOptions& client) {
  auto t = call.timeout.count() > 0 ? call.timeout : client.default_timeout;
  return std::clamp(t, std::chrono::milliseconds(1), kMaxCallTimeout);
}

// How often a call that found no room on an open connection tries again.
constexpr std::chrono::milliseconds kUnsentRetry{10};

bool send_call(zmq::socket_t& s, uint64_t id, std::string_view method, Clock::time_point deadline,
               const CallOptions& o, kj::ArrayPtr<const capnp::word> payload, bool more_follows = false) {
  auto left = std::chrono::duration_cast<std::chrono::microseconds>(deadline - Clock::now()).count();
  zmq::message_t frame = internal::encode_request(id, method, left > 0 ? static_cast<uint64_t>(left) : 1,
                                                  o.idempotent, o.idempotency_key, payload);
  return internal::send_frame(s, frame,
                              (more_follows ? zmq::send_flags::sndmore : zmq::send_flags::none) |
                                  zmq::send_flags::dontwait)
      .has_value();
}

}  // namespace

Reply Client::Impl::call_sync(std::string_view method, kj::ArrayPtr<const capnp::word> payload,
                              const CallOptions& o) {
  n_calls++;
  if (unusable) return Reply(*unusable);
  auto timeout = call_timeout(o, options);
  Clock::time_point deadline = Clock::now() + timeout;
  if (named) {
    if (Status st = await_dial(deadline, timeout); !st.ok()) {
      if (st.code() == Code::kDeadlineExceeded) n_timeouts++;
      return Reply(st);
    }
  }
  std::unique_ptr<Channel> ch;
  try {
    ch = acquire();
  } catch (const zmq::error_t& e) {
    return Reply(unavailable("cannot open a socket to " + options.endpoint + ": " + e.what()));
  }
  struct Release {
    Impl* im;
    std::unique_ptr<Channel>& c;
    ~Release() { im->release(std::move(c)); }
  } release_on_return{this, ch};

  ch->read_events();
  Link& link = ch->link();
  link.lost = false;
  if (link.refused) return Reply(*link.refused);
  if (named && !link.connected) {
    consider_redial(*ch);
    redial(*ch);
  }

  static std::atomic<uint64_t> next_id{0};
  uint64_t id = next_id.fetch_add(1) + 1;
  // Unsent while there is no connection (or no room on it): sent when the monitor says it is up,
  // never once its deadline has passed. Queued in ZeroMQ for a connection still to come, it would
  // reach a server that starts after its caller was told DEADLINE_EXCEEDED, and run then.
  auto may_send = [&] { return link.connected && Clock::now() < deadline; };
  bool sent = may_send() && send_call(ch->dealer(), id, method, deadline, o, payload);
  zmq::pollitem_t items[2] = {{ch->dealer().handle(), 0, ZMQ_POLLIN, 0}, {ch->monitor().handle(), 0, ZMQ_POLLIN, 0}};
  std::vector<zmq::message_t> parts;
  // Anything but our id is a late reply to an earlier call that timed out: dropped.
  auto read_replies = [&]() -> std::optional<Reply> {
    while (true) {
      parts.clear();
      if (!internal::recv_parts(ch->dealer(), parts, zmq::recv_flags::dontwait)) return std::nullopt;
      for (auto& frame : parts) {
        uint64_t got = 0;
        Reply r = to_reply(frame, options.limits, &got);
        if (got == id) return r;
      }
    }
  };
  for (;;) {
    auto now = Clock::now();
    if (now >= deadline) {
      n_timeouts++;
      return Reply(timeout_status(options.endpoint, method, timeout, link.ever_connected));
    }
    auto wait = std::chrono::ceil<std::chrono::milliseconds>(deadline - now);
    if (!sent && link.connected) wait = std::min(wait, kUnsentRetry);  // no room yet: no event will say when
    internal::poll_sockets(items, 2, wait);
    if (items[0].revents & ZMQ_POLLIN) {
      if (std::optional<Reply> r = read_replies()) return std::move(*r);
    }
    if (items[1].revents & ZMQ_POLLIN) {
      ch->read_events();
      if (link.refused) return Reply(*link.refused);
      if (link.lost) {
        link.lost = false;
        // A reply that came before the connection went is read, not taken for lost.
        if (std::optional<Reply> r = read_replies()) return std::move(*r);
        if (sent) {
          if (!retryable(o)) return Reply(lost_status(options.endpoint, method));
          n_retries++;
          sent = false;  // perhaps lost with the connection: sent again once it is back
        }
      }
    }
    if (!sent && may_send()) sent = send_call(ch->dealer(), id, method, deadline, o, payload);
  }
}

void Client::call_async(std::string_view method, capnp::MessageBuilder& params, CallOptions options, Callback done) {
  call_async_raw(method, capnp::messageToFlatArray(params), std::move(options), std::move(done));
}

std::future<Reply> Client::call_async(std::string_view method, capnp::MessageBuilder& params, CallOptions options) {
  auto promise = std::make_shared<std::promise<Reply>>();
  auto future = promise->get_future();
  call_async(method, params, std::move(options), [promise](Reply r) { promise->set_value(std::move(r)); });
  return future;
}

void Client::call_async_raw(std::string_view method, kj::Array<capnp::word> payload, CallOptions options,
                            Callback done) {
  Impl& im = *impl_;
  if (im.unusable) {
    done(Reply(*im.unusable));
    return;
  }
  std::call_once(im.io_started, [&im] {
    im.io_thread = std::thread([&im] {
      name_this_thread("rpc-client");
      im.io_loop();
    });
  });
  im.n_calls++;
  auto timeout = call_timeout(options, im.options);
  im.submit(Pending{std::string(method), std::move(payload), std::move(options), Clock::now() + timeout, timeout,
                    std::move(done)});
}

void Client::Impl::submit(Pending p) {
  if (unusable) {
    p.done(Reply(*unusable));
    return;
  }
  if (std::this_thread::get_id() == io_thread_id) {
    local_submitted.push_back(std::move(p));
    return;
  }
  bool was_empty;
  {
    std::lock_guard lock(submit_mu);
    was_empty = submitted.empty();
    submitted.push_back(std::move(p));
  }
  if (was_empty) wakeup.notify();
}

// Before the I/O thread has a socket: waits for the host name to resolve, answering calls whose
// deadline passes meanwhile, and every queued call when the name does not resolve or no socket can
// be opened. Null when stopping.
std::unique_ptr<Channel> Client::Impl::open_io_channel() {
  std::vector<Pending> queue;
  auto take_queue = [&] {
    std::lock_guard lock(submit_mu);
    for (auto& p : submitted) queue.push_back(std::move(p));
    submitted.clear();
    for (auto& p : local_submitted) queue.push_back(std::move(p));  // from callbacks answered here
    local_submitted.clear();
  };
  auto give_back = [&] {  // in front of what was submitted meanwhile, keeping the order of calls
    std::lock_guard lock(submit_mu);
    for (auto& p : submitted) queue.push_back(std::move(p));
    submitted.swap(queue);
    queue.clear();
  };
  auto fail_queue = [&](const Status& st) {
    for (auto& p : queue) p.done(Reply(st));
    queue.clear();
  };
  zmq::pollitem_t wake{nullptr, wakeup.fd(), ZMQ_POLLIN, 0};
  auto idle = [&] {
    internal::poll_sockets(&wake, 1, std::chrono::milliseconds(100));
    if (wake.revents & ZMQ_POLLIN) wakeup.drain();
  };
  std::shared_ptr<const internal::Resolution> r;  // kept until it finishes: one lookup at a time
  while (!stopping.load(std::memory_order_relaxed)) {
    if (dial_generation.load(std::memory_order_acquire) > 0) {
      try {
        auto ch = std::make_unique<Channel>(context, options);
        std::lock_guard lock(dial_mu);
        ch->dial(dial, dial_generation.load(std::memory_order_relaxed));
        give_back();
        return ch;
      } catch (const zmq::error_t& e) {
        take_queue();
        fail_queue(unavailable("cannot open a socket to " + options.endpoint + ": " + e.what()));
        idle();
        continue;
      }
    }
    take_queue();
    if (queue.empty()) {
      idle();
      continue;
    }
    auto next = Clock::now() + std::chrono::milliseconds(20);  // how soon a stop is noticed
    for (const auto& p : queue) next = std::min(next, p.deadline);
    if (!r) r = internal::resolve(named->host);
    if (r->wait_until(next)) {
      Status st = settle_dial(*r);
      r.reset();
      if (!st.ok()) fail_queue(st);
      give_back();
      continue;
    }
    auto now = Clock::now();
    std::vector<Pending> waiting;
    for (auto& p : queue) {
      if (p.deadline > now) {
        waiting.push_back(std::move(p));
        continue;
      }
      n_timeouts++;
      p.done(Reply(internal::resolution_timeout(named->host, options.endpoint, p.timeout)));
    }
    queue.swap(waiting);
    give_back();
  }
  give_back();
  return nullptr;
}

void Client::Impl::cancel_queued() {
  {
    std::lock_guard lock(submit_mu);
    for (auto& p : submitted) local_submitted.push_back(std::move(p));
    submitted.clear();
  }
  while (!local_submitted.empty()) {
    std::vector<Pending> left;
    left.swap(local_submitted);
    for (auto& p : left) p.done(Reply(Status(Code::kCancelled, "the client was closed")));
  }
}

void Client::Impl::io_loop() {
  io_thread_id = std::this_thread::get_id();
  std::unique_ptr<Channel> channel = open_io_channel();
  if (!channel) {
    cancel_queued();  // stopping before there was a socket
    return;
  }
  wakeup.notify();  // calls queued meanwhile leave in the first turn
  Channel& ch = *channel;
  Link& link = ch.link();
  std::unordered_map<uint64_t, Pending> in_flight;
  // Calls in flight whose message has not left (no connection, or no room on it), in call order.
  // An id answered meanwhile (its deadline passed) is skipped.
  std::deque<uint64_t> unsent;
  // Ordered by deadline; an answered call leaves it at once, so it holds only calls in flight.
  std::multimap<Clock::time_point, uint64_t> deadlines;
  uint64_t next_id = 0;
  std::vector<Pending> batch;
  std::vector<zmq::message_t> parts;

  auto finish = [&](std::unordered_map<uint64_t, Pending>::iterator it, Reply r) {
    Callback cb = std::move(it->second.done);
    deadlines.erase(it->second.due);
    in_flight.erase(it);
    cb(std::move(r));
  };

  // Sends the unsent calls in order, as few messages as the batch limit allows, until the socket
  // takes no more. Once a batch's first call is taken the rest go with it: ZeroMQ drops a message
  // whose later parts it could not take along with the whole of it, as with a lost connection.
  // Only while the monitor says the connection is up (as for a blocking call), and never a call
  // whose deadline has passed (the deadline sweep answers it).
  std::vector<std::pair<uint64_t, const Pending*>> going;  // in_flight's nodes stay put
  auto send_unsent = [&] {
    auto now = Clock::now();
    while (!unsent.empty() && !link.refused && link.connected) {
      going.clear();
      while (!unsent.empty() && going.size() < options.limits.max_batch) {
        auto it = in_flight.find(unsent.front());
        if (it != in_flight.end() && it->second.deadline > now) going.emplace_back(it->first, &it->second);
        unsent.pop_front();
      }
      for (size_t k = 0; k < going.size(); ++k) {
        const auto& [id, p] = going[k];
        bool taken = send_call(ch.dealer(), id, p->method, p->deadline, p->options, p->payload, k + 1 < going.size());
        if (k == 0 && !taken) {
          for (auto g = going.rbegin(); g != going.rend(); ++g) unsent.push_front(g->first);
          return;
        }
      }
      if (!going.empty()) n_batches++;
    }
  };

  // Takes the queued calls in flight and sends them, after any that wait to be sent already.
  auto flush = [&](std::vector<Pending>& queue) {
    for (Pending& p : queue) {
      if (link.refused) {
        p.done(Reply(*link.refused));
        continue;
      }
      uint64_t id = ++next_id;
      p.due = deadlines.emplace(p.deadline, id);
      in_flight.emplace(id, std::move(p));
      unsent.push_back(id);
    }
    queue.clear();
    send_unsent();
  };

  // After a lost connection: retryable calls in flight are sent again once it is back (a copy
  // ZeroMQ had not carried yet may go too: they are safe to repeat), and so are calls never sent;
  // the others fail, since they may or may not have been applied.
  auto resend_or_fail = [&] {
    std::unordered_set<uint64_t> never_sent(unsent.begin(), unsent.end());
    std::vector<uint64_t> again;
    for (auto it = in_flight.begin(); it != in_flight.end();) {
      const bool unsent_yet = never_sent.count(it->first) != 0;
      if (unsent_yet || retryable(it->second.options)) {
        if (!unsent_yet) n_retries++;
        again.push_back(it->first);
        ++it;
      } else {
        auto next = std::next(it);
        finish(it, Reply(lost_status(options.endpoint, it->second.method)));
        it = next;
      }
    }
    std::sort(again.begin(), again.end());  // ids count up in call order
    unsent.assign(again.begin(), again.end());
    send_unsent();
  };

  auto read_replies = [&](int at_most) {
    for (int n = 0; n < at_most; ++n) {
      parts.clear();
      if (!internal::recv_parts(ch.dealer(), parts, zmq::recv_flags::dontwait)) return;
      for (auto& frame : parts) {
        uint64_t id = 0;
        Reply r = to_reply(frame, options.limits, &id);
        auto it = in_flight.find(id);
        if (it != in_flight.end()) finish(it, std::move(r));
      }
    }
  };

  zmq::pollitem_t items[3] = {{ch.dealer().handle(), 0, ZMQ_POLLIN, 0},
                              {ch.monitor().handle(), 0, ZMQ_POLLIN, 0},
                              {nullptr, wakeup.fd(), ZMQ_POLLIN, 0}};
  while (!stopping.load(std::memory_order_relaxed)) {
    auto wait = std::chrono::milliseconds(100);
    if (!unsent.empty() && link.connected) wait = kUnsentRetry;  // no room yet: no event will say when
    if (!deadlines.empty()) {
      auto d = std::chrono::ceil<std::chrono::milliseconds>(deadlines.begin()->first - Clock::now());
      wait = std::clamp(d, std::chrono::milliseconds(0), wait);
    }
    if (local_submitted.empty()) internal::poll_sockets(items, 3, wait);
    if (items[2].revents & ZMQ_POLLIN) wakeup.drain();
    if (items[0].revents & ZMQ_POLLIN) read_replies(1024);
    // The monitor before new calls leave: a call must not go out on a connection it has already
    // reported lost. Replies that came before the connection went are read, not taken for lost.
    if (items[1].revents & ZMQ_POLLIN) {
      ch.read_events();
      if (link.refused) {
        unsent.clear();
        while (!in_flight.empty()) finish(in_flight.begin(), Reply(*link.refused));
      } else if (link.lost) {
        link.lost = false;
        read_replies(INT_MAX);
        resend_or_fail();
      }
    }
    {
      std::lock_guard lock(submit_mu);
      batch.swap(submitted);
    }
    flush(batch);  // and whatever waited, now the connection may be up or have room
    if (named && !link.connected) {
      consider_redial(ch);
      // What was queued for the old address is dropped with its connection: as for a lost one,
      // retryable calls go again and the others fail.
      if (redial(ch)) resend_or_fail();
    }
    // Calls submitted by callbacks during this turn leave now, in one batch.
    if (!local_submitted.empty()) {
      batch.swap(local_submitted);
      flush(batch);
    }
    auto now = Clock::now();
    while (!deadlines.empty() && deadlines.begin()->first <= now) {
      auto it = in_flight.find(deadlines.begin()->second);
      n_timeouts++;
      finish(it, Reply(timeout_status(options.endpoint, it->second.method, it->second.timeout, link.ever_connected)));
    }
    // Calls answered while unsent leave their ids behind; while there is no connection nothing
    // else clears them.
    if (unsent.size() > 64 + 2 * in_flight.size()) {
      std::erase_if(unsent, [&](uint64_t id) { return !in_flight.count(id); });
    }
  }
  // Whatever is left is answered, so no caller waits forever.
  cancel_queued();
  while (!in_flight.empty()) finish(in_flight.begin(), Reply(Status(Code::kCancelled, "the client was closed")));
}

}  // namespace djinn::rpc
