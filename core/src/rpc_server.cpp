// The RPC server: one I/O thread owns the ROUTER socket, decodes every request, runs quick
// handlers inline, hands blocking ones to a worker pool, and sends every reply. Replies made on
// other threads come back through an outbox and an eventfd, so only the I/O thread touches the
// socket.
#include <poll.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

#include <kj/exception.h>

#include "djinn/core/context.h"
#include "djinn/core/digest.h"
#include "djinn/core/log.h"
#include "djinn/core/reply_batch.h"
#include "djinn/core/rpc.h"
#include "djinn/core/thread_name.h"
#include "wire.h"

namespace djinn::rpc {
namespace {

using internal::RequestHeaderData;

// Results of most methods fit in 128 words; MallocMessageBuilder's default first segment of 1024
// words would allocate and zero 8 KiB per call.
constexpr unsigned kResultsFirstSegmentWords = 128;

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// Longer timeouts are taken as none: a deadline past this is no deadline, and adding more to the
// clock would overflow.
constexpr uint64_t kMaxTimeoutMicros = uint64_t{10} * 365 * 24 * 3600 * 1'000'000;

// A call's idempotency key as the reply cache files it: a digest of the client's key, the method
// and the caller's key.
using DedupKey = Digest128;
using DedupKeyHash = Digest128Hash;

DedupKey dedup_key_of(std::string_view client_key, std::string_view method, std::string_view key) {
  thread_local std::string scratch;
  scratch.assign(client_key);
  scratch.push_back('\0');
  scratch.append(method);
  scratch.push_back('\0');
  scratch.append(key);
  return digest128(scratch);
}

// False for the codes by which a reply says the call was not carried out (the server was not
// ready, dropped the call, or its deadline passed before it ran): such a reply is not remembered
// for the call's idempotency key.
bool carried_out(Code code) {
  return code != Code::kUnavailable && code != Code::kCancelled && code != Code::kDeadlineExceeded;
}

// Reply bytes handed to ZeroMQ and not yet let go by it (written to the peer's connection, or
// dropped with it): in all, and per peer. Updated from ZeroMQ's I/O threads as frames go, and
// shared with the frames, which may outlive the server.
struct UnreadReplies {
  std::atomic<size_t> bytes{0};
};
// Frames under this size are not counted: the router's high-water mark bounds them per peer.
constexpr size_t kCountedReplyFrameBytes = 1024;
constexpr int kRouterSendHighWaterMark = 10000;

// A counted frame's hint: its buffer, and the counts to lower when ZeroMQ lets it go.
struct CountedFrame {
  zmq::message_t frame;
  std::shared_ptr<UnreadReplies> all;
  std::shared_ptr<UnreadReplies> peer;
};

void release_counted_frame(void*, void* hint) {
  auto* c = static_cast<CountedFrame*>(hint);
  c->all->bytes.fetch_sub(c->frame.size(), std::memory_order_relaxed);
  c->peer->bytes.fetch_sub(c->frame.size(), std::memory_order_relaxed);
  delete c;
}

// A reply frame waiting to be sent by the I/O thread.
struct Outgoing {
  std::string routing_id;
  zmq::message_t frame;
  std::optional<DedupKey> dedup_key;  // remember this reply for repeats of the key
  Code code = Code::kOk;              // the reply's status
};

// Shared with Responders, which may outlive the server: after close() replies are dropped.
struct Outbox {
  std::mutex mu;  // guards items, closed
  std::vector<Outgoing> items;
  bool closed = false;
  internal::Wakeup wakeup;
  bool self_posted = false;  // the I/O thread queued replies itself (touched by that thread only)

  // Queues a reply; true when the I/O thread must be woken for it (the queue was empty).
  bool push(Outgoing o) {
    std::lock_guard lock(mu);
    if (closed) return false;
    bool was_empty = items.empty();
    items.push_back(std::move(o));
    return was_empty;
  }
};

// The outboxes a ReplyBatch on this thread wakes when it ends.
struct DeferredWakeups {
  int depth = 0;
  std::vector<std::shared_ptr<Outbox>> outboxes;
};
thread_local DeferredWakeups t_deferred;

// The outbox of the server whose I/O thread this is: that thread sends its own replies before it
// waits again, so replying there needs no wake-up.
thread_local Outbox* t_serving = nullptr;

void post_reply(const std::shared_ptr<Outbox>& outbox, Outgoing o) {
  if (!outbox->push(std::move(o))) return;
  if (outbox.get() == t_serving) {
    outbox->self_posted = true;
    return;
  }
  if (t_deferred.depth == 0) return outbox->wakeup.notify();
  auto& pending = t_deferred.outboxes;
  if (std::find(pending.begin(), pending.end(), outbox) == pending.end()) pending.push_back(outbox);
}

}  // namespace

ReplyBatch::ReplyBatch() { ++t_deferred.depth; }

ReplyBatch::~ReplyBatch() {
  if (--t_deferred.depth > 0) return;
  std::vector<std::shared_ptr<Outbox>> pending;
  pending.swap(t_deferred.outboxes);
  for (const auto& outbox : pending) outbox->wakeup.notify();
}

struct Responder::State {
  std::shared_ptr<Outbox> outbox;
  std::string routing_id;
  uint64_t id = 0;
  std::optional<DedupKey> dedup_key;
  Clock::time_point deadline;
};

Responder::Responder(std::unique_ptr<State> state) : state_(std::move(state)) {}
Responder::Responder(Responder&&) noexcept = default;
Responder& Responder::operator=(Responder&& other) noexcept {
  if (this != &other) {
    if (state_) reply(Status(Code::kCancelled, "the server dropped the call without replying"));
    state_ = std::move(other.state_);
  }
  return *this;
}
Responder::~Responder() {
  if (state_) reply(Status(Code::kCancelled, "the server dropped the call without replying"));
}

const Clock::time_point& Responder::deadline() const {
  static const Clock::time_point kNone = Clock::time_point::max();
  return state_ ? state_->deadline : kNone;
}

void Responder::reply(const Status& status) {
  if (!state_) return;
  auto s = std::move(state_);
  post_reply(s->outbox, Outgoing{std::move(s->routing_id),
                                 internal::encode_reply(s->id, status, kj::ArrayPtr<const capnp::word>()),
                                 std::move(s->dedup_key), status.code()});
}

void Responder::reply(const Status& status, capnp::MessageBuilder& results) {
  if (!state_) return;
  auto s = std::move(state_);
  post_reply(s->outbox,
             Outgoing{std::move(s->routing_id), internal::encode_reply(s->id, status, results), std::move(s->dedup_key),
                      status.code()});
}

struct Server::Impl {
  struct Method {
    Handler handler;
    DeferredHandler deferred;
    MethodOptions options;
  };

  // A call handed to the worker pool; owns everything the handler reads.
  struct Job {
    const Method* method;
    std::string routing_id;
    RequestHeaderData header;
    zmq::message_t frame;
    internal::SplitFrame split;
    security::Role role;
    std::string client_key;
    Clock::time_point deadline;
  };

  // Replies remembered by idempotency key; waiters are repeats that arrived while the first
  // call was still running.
  struct DedupEntry {
    bool done = false;
    uint64_t generation = 0;  // tells its place in dedup_order from a forgotten entry's of the same key
    zmq::message_t frame;  // the first reply, sharing the sent frame's buffer
    std::vector<std::pair<std::string, uint64_t>> waiters;  // routing id, request id
  };

  explicit Impl(ServerOptions o)
      : options(std::move(o)),
        context(options.context ? *options.context : default_context()),
        outbox(std::make_shared<Outbox>()) {}

  ServerOptions options;
  zmq::context_t& context;
  std::unordered_map<std::string, Method, StringHash, std::equal_to<>> methods;
  std::vector<std::function<void()>> burst_hooks;
  std::unique_ptr<zmq::socket_t> router;
  std::shared_ptr<Outbox> outbox;
  std::string zap_domain;

  std::thread io_thread;
  std::atomic<bool> running{false};

  std::vector<std::thread> workers;
  std::mutex jobs_mu;  // guards jobs, stopping_workers
  std::condition_variable jobs_cv;
  std::deque<Job> jobs;
  bool stopping_workers = false;

  size_t queued_bytes = 0;  // frames of `jobs` (guarded by jobs_mu)

  // Owned by the I/O thread. A key's entry is made when its first call arrives; it joins
  // dedup_order (and counts against the capacity) once its reply is filed.
  std::unordered_map<DedupKey, DedupEntry, DedupKeyHash> dedup;
  std::deque<std::pair<DedupKey, uint64_t>> dedup_order;  // key and generation, oldest first
  uint64_t next_dedup_generation = 0;
  size_t dedup_bytes = 0;  // of the replies filed in dedup

  std::atomic<uint64_t> n_requests{0}, n_errors{0}, n_rejected{0}, n_dedup_hits{0}, n_dropped_replies{0};

  // Owned by the I/O thread: each peer's unread reply bytes (peers with none are swept now and
  // then), and when a drop was last logged.
  std::shared_ptr<UnreadReplies> unread = std::make_shared<UnreadReplies>();
  std::unordered_map<std::string, std::shared_ptr<UnreadReplies>> unread_by_peer;
  size_t unread_sweep_at = 64;
  Clock::time_point last_drop_logged{};
  // The counts of `rid`, or null when its reply must be dropped (logged now and then).
  std::shared_ptr<UnreadReplies> unread_of(const std::string& rid, size_t bytes);

  void io_loop();
  void on_message(std::vector<zmq::message_t>& parts);
  // Runs or dispatches one call; an inline reply is appended to `replies`.
  void on_call(const std::string& rid, zmq::message_t& frame, security::Role role, const std::string& client_key,
               std::vector<zmq::message_t>& replies);
  void send_outbox();
  void send_reply_message(const std::string& rid, std::vector<zmq::message_t>& frames);
  // Files `frame` as the reply of `key`; returns its entry.
  DedupEntry& remember(const DedupKey& key, zmq::message_t& frame);
  // Files the reply and answers the repeats that waited for it. A reply saying the call was not
  // carried out is then forgotten, so that a retry with the same key runs the call.
  void settle(const DedupKey& key, zmq::message_t& frame, Code code);
  // The remembered reply of `key`, re-addressed to request `id`.
  zmq::message_t recall(const DedupEntry& entry, uint64_t id);
  void worker_loop();
  Status run_handler(const Method& m, const CallContext& ctx, kj::ArrayPtr<const capnp::word> words,
                     capnp::MessageBuilder& results);
};

Server::Server(ServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}

Server::~Server() { stop(); }

void Server::handle(std::string method, Handler handler, MethodOptions options) {
  impl_->methods[std::move(method)] = Impl::Method{std::move(handler), nullptr, options};
}

void Server::handle_deferred(std::string method, DeferredHandler handler, MethodOptions options) {
  options.blocking = false;
  impl_->methods[std::move(method)] = Impl::Method{nullptr, std::move(handler), options};
}

void Server::after_burst(std::function<void()> hook) { impl_->burst_hooks.push_back(std::move(hook)); }

Status Server::start() {
  Impl& im = *impl_;
  if (im.running) return failed_precondition("server already started");
  DJINN_RETURN_IF_ERROR(im.outbox->wakeup.status());
  try {
    im.router = std::make_unique<zmq::socket_t>(im.context, zmq::socket_type::router);
  } catch (const zmq::error_t& e) {
    return resource_exhausted(std::string("cannot open the server's socket: ") + e.what() +
                              (e.num() == EMFILE ? " (raise the limit on open files, ulimit -n)" : ""));
  }
  auto& s = *im.router;
  s.set(zmq::sockopt::linger, 0);
  s.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(im.options.limits.hard_max_message_bytes));
  s.set(zmq::sockopt::sndhwm, kRouterSendHighWaterMark);
  s.set(zmq::sockopt::rcvhwm, 100000);
  if (im.options.curve) {
    if (!im.options.curve->keyring) return invalid_argument("CURVE server needs a keyring");
    char buf[32];
    std::snprintf(buf, sizeof buf, "djinn-%p", static_cast<void*>(&im));
    im.zap_domain = buf;
    security::ZapHandler::for_context(im.context).set_domain(im.zap_domain, im.options.curve->keyring);
    s.set(zmq::sockopt::zap_domain, im.zap_domain);
    s.set(zmq::sockopt::curve_server, true);
    s.set(zmq::sockopt::curve_secretkey, im.options.curve->server.secret_key);
  }
  bound_.clear();
  for (const auto& ep : im.options.endpoints) {
    std::string bound;
    if (Status st = internal::bind_endpoint(s, ep, &bound); !st.ok()) {
      im.router.reset();
      bound_.clear();
      return st;
    }
    bound_.push_back(std::move(bound));
  }
  im.running = true;
  {
    std::lock_guard lock(im.jobs_mu);
    im.stopping_workers = false;
  }
  for (int i = 0; i < im.options.workers; ++i) im.workers.emplace_back([&im] {
    name_this_thread("rpc-worker");
    im.worker_loop();
  });
  im.io_thread = std::thread([&im] {
    name_this_thread("rpc-server");
    im.io_loop();
  });
  DJINN_LOG(kDebug, im.options.name) << "serving on " << bound_[0];
  return Status::Ok();
}

void Server::stop() {
  Impl& im = *impl_;
  if (!im.running.exchange(false)) return;
  im.outbox->wakeup.notify();
  im.io_thread.join();
  {
    std::lock_guard lock(im.jobs_mu);
    im.stopping_workers = true;
  }
  im.jobs_cv.notify_all();
  for (auto& w : im.workers) w.join();
  im.workers.clear();
  im.jobs.clear();
  im.queued_bytes = 0;
  std::vector<Outgoing> unsent;
  {
    std::lock_guard lock(im.outbox->mu);
    im.outbox->closed = true;
    unsent.swap(im.outbox->items);
  }
  im.outbox = std::make_shared<Outbox>();
  // Replies made and not sent are filed all the same: their calls took effect, and a repeat after
  // a start gets the reply. A call still running lost its reply with the old outbox: a repeat of its
  // key runs it again, as after a restart of the process, instead of waiting for that reply.
  for (Outgoing& o : unsent) {
    if (!o.dedup_key || !carried_out(o.code)) continue;
    im.remember(*o.dedup_key, o.frame).waiters.clear();
  }
  std::erase_if(im.dedup, [](const auto& entry) { return !entry.second.done; });
  im.router.reset();
  if (!im.zap_domain.empty()) security::ZapHandler::for_context(im.context).remove_domain(im.zap_domain);
}

ServerStats Server::stats() const {
  return ServerStats{impl_->n_requests.load(), impl_->n_errors.load(), impl_->n_rejected.load(),
                     impl_->n_dedup_hits.load(), impl_->n_dropped_replies.load()};
}

void Server::Impl::io_loop() {
  zmq::pollitem_t items[2] = {{router->handle(), 0, ZMQ_POLLIN, 0},
                              {nullptr, outbox->wakeup.fd(), ZMQ_POLLIN, 0}};
  std::vector<zmq::message_t> parts;
  t_serving = outbox.get();
  while (running.load(std::memory_order_relaxed)) {
    internal::poll_sockets(items, 2, std::chrono::milliseconds(-1));
    if (items[1].revents & ZMQ_POLLIN) {
      outbox->wakeup.drain();
      send_outbox();
    }
    // A bounded drain keeps replies from workers flowing under a flood of requests.
    int read = 0;
    for (; read < 256; ++read) {
      parts.clear();
      if (!internal::recv_parts(*router, parts, zmq::recv_flags::dontwait)) break;
      on_message(parts);
    }
    if (read > 0) {
      for (const auto& hook : burst_hooks) {
        try {
          hook();
        } catch (const std::exception& e) {
          DJINN_LOG(kError, options.name) << "after-burst hook threw: " << e.what();
        } catch (const kj::Exception& e) {
          DJINN_LOG(kError, options.name) << "after-burst hook threw: " << e.getDescription().cStr();
        } catch (...) {
          DJINN_LOG(kError, options.name) << "after-burst hook threw";
        }
      }
    }
    // Replies made here by deferred handlers and hooks. Replies queued inside another thread's
    // ReplyBatch wait for its wake-up.
    if (outbox->self_posted) {
      outbox->self_posted = false;
      send_outbox();
    }
  }
  t_serving = nullptr;
}

void Server::Impl::on_message(std::vector<zmq::message_t>& parts) {
  if (parts.empty()) return;
  std::string rid(static_cast<const char*>(parts[0].data()), parts[0].size());
  std::vector<zmq::message_t> replies;
  size_t calls = parts.size() - 1;
  if (calls == 0 || calls > options.limits.max_batch) {
    n_rejected++;
    n_errors++;
    Status st = calls == 0 ? invalid_argument("request has no frames; expected one frame per call")
                           : resource_exhausted("batch of " + std::to_string(calls) + " calls exceeds the limit of " +
                                                std::to_string(options.limits.max_batch));
    replies.push_back(internal::encode_reply(0, st, kj::ArrayPtr<const capnp::word>()));
    send_reply_message(rid, replies);
    return;
  }
  security::Role role = options.plaintext_role;
  std::string client_key;
  if (options.curve) {
    role = security::role_of_message(parts[1]).value_or(security::Role::kNone);
    client_key = security::client_key_of_message(parts[1]);
  }
  for (size_t i = 1; i < parts.size(); ++i) on_call(rid, parts[i], role, client_key, replies);
  if (!replies.empty()) send_reply_message(rid, replies);
}

void Server::Impl::on_call(const std::string& rid, zmq::message_t& frame, security::Role role,
                           const std::string& client_key, std::vector<zmq::message_t>& replies) {
  n_requests++;
  auto reply_error = [&](uint64_t id, const Status& st) {
    n_errors++;
    replies.push_back(internal::encode_reply(id, st, kj::ArrayPtr<const capnp::word>()));
  };
  RequestHeaderData h;
  internal::SplitFrame split;
  if (Status st = internal::decode_request(frame, options.limits, &h, &split); !st.ok()) {
    n_rejected++;
    return reply_error(h.id, st);  // 0 unless the header was read (an oversized call's was)
  }
  auto it = methods.find(h.method);
  if (it == methods.end()) {
    n_rejected++;
    return reply_error(h.id, unimplemented("unknown method '" + h.method + "'"));
  }
  const Method& m = it->second;
  if (role < m.options.min_role) {
    return reply_error(h.id, permission_denied("method '" + h.method + "' needs role " +
                                               std::string(security::role_name(m.options.min_role)) +
                                               "; this client has role " +
                                               std::string(security::role_name(role))));
  }
  std::optional<DedupKey> dedup_key;
  if (!h.idempotency_key.empty()) {
    dedup_key = dedup_key_of(client_key, h.method, h.idempotency_key);
    auto [d, fresh] = dedup.try_emplace(*dedup_key);
    if (!fresh) {
      n_dedup_hits++;
      if (!d->second.done) {
        auto& waiters = d->second.waiters;
        std::pair<std::string, uint64_t> waiter(rid, h.id);
        if (std::find(waiters.begin(), waiters.end(), waiter) != waiters.end()) return;  // resent: waits already
        // Past the bound the oldest repeat makes room: a client resends after a lost connection,
        // so the oldest is the likeliest to have no connection left. It is not answered (an
        // answer saying "not carried out" could be wrong: the first call may yet take effect).
        if (waiters.size() >= options.max_waiting_repeats) waiters.erase(waiters.begin());
        waiters.push_back(std::move(waiter));
        return;
      }
      replies.push_back(recall(d->second, h.id));
      return;
    }
  }
  Clock::time_point deadline = h.timeout_micros && h.timeout_micros <= kMaxTimeoutMicros
                                   ? Clock::now() + std::chrono::microseconds(h.timeout_micros)
                                   : Clock::time_point::max();

  if (m.options.blocking) {
    // The job keeps the frame: the payload view points into it (or into split.storage).
    size_t queued = 0;
    bool accepted = false;
    {
      std::lock_guard lock(jobs_mu);
      queued = jobs.size();
      accepted = queued < options.max_queued_calls && queued_bytes + frame.size() <= options.max_queued_bytes;
      if (accepted) {
        queued_bytes += frame.size();
        jobs.push_back(Job{&m, rid, std::move(h), std::move(frame), std::move(split), role, client_key, deadline});
      }
    }
    if (accepted) {
      jobs_cv.notify_one();
      return;
    }
    if (dedup_key) dedup.erase(*dedup_key);  // not carried out: a retry runs it
    return reply_error(h.id, unavailable("server busy: " + std::to_string(queued) +
                                         " calls wait for a worker; retry later"));
  }

  kj::ArrayPtr<const capnp::word> words = split.payload.size() ? split.payload : internal::empty_message_words();
  CallContext ctx{h.method, role, client_key, deadline, h.idempotency_key};
  if (m.deferred) {
    auto state = std::make_unique<Responder::State>();
    state->outbox = outbox;
    state->routing_id = rid;
    state->id = h.id;
    state->dedup_key = dedup_key;
    state->deadline = deadline;
    Responder responder(std::move(state));
    std::optional<capnp::FlatArrayMessageReader> reader;
    try {
      reader.emplace(words, reader_options(options.limits, words.size()));
    } catch (const kj::Exception& e) {
      n_errors++;
      responder.reply(invalid_argument("malformed payload for '" + h.method + "': " + e.getDescription().cStr()));
      return;
    }
    try {
      m.deferred(ctx, *reader, std::move(responder));
    } catch (const std::exception& e) {
      // The handler owned the responder; unless it replied, its destructor answered CANCELLED.
      DJINN_LOG(kWarn, options.name) << "method " << h.method << " threw: " << e.what();
    } catch (const kj::Exception& e) {
      DJINN_LOG(kDebug, options.name) << "method " << h.method << ": " << e.getDescription().cStr();
    }
    return;
  }

  capnp::MallocMessageBuilder results(kResultsFirstSegmentWords);
  Status st = run_handler(m, ctx, words, results);
  if (!st.ok()) n_errors++;
  zmq::message_t reply = internal::encode_reply(h.id, st, results);
  if (dedup_key) settle(*dedup_key, reply, st.code());
  replies.push_back(std::move(reply));
}

Status Server::Impl::run_handler(const Method& m, const CallContext& ctx, kj::ArrayPtr<const capnp::word> words,
                                 capnp::MessageBuilder& results) {
  try {
    capnp::FlatArrayMessageReader reader(words, reader_options(options.limits, words.size()));
    return m.handler(ctx, reader, results);
  } catch (const kj::Exception& e) {
    return invalid_argument("malformed payload for '" + std::string(ctx.method) + "': " + e.getDescription().cStr());
  } catch (const std::exception& e) {
    DJINN_LOG(kError, options.name) << "method " << ctx.method << " threw: " << e.what();
    return internal_error("method '" + std::string(ctx.method) + "' failed: " + e.what());
  }
}

void Server::Impl::worker_loop() {
  for (;;) {
    Job job;
    {
      std::unique_lock lock(jobs_mu);
      jobs_cv.wait(lock, [&] { return stopping_workers || !jobs.empty(); });
      if (stopping_workers) return;
      job = std::move(jobs.front());
      jobs.pop_front();
      queued_bytes -= job.frame.size();
    }
    Status st;
    capnp::MallocMessageBuilder results(kResultsFirstSegmentWords);
    if (Clock::now() >= job.deadline) {
      st = deadline_exceeded("the call's deadline passed while it waited for a worker");
    } else {
      CallContext ctx{job.header.method, job.role, job.client_key, job.deadline, job.header.idempotency_key};
      kj::ArrayPtr<const capnp::word> words =
          job.split.payload.size() ? job.split.payload : internal::empty_message_words();
      st = run_handler(*job.method, ctx, words, results);
    }
    if (!st.ok()) n_errors++;
    std::optional<DedupKey> dedup_key;
    if (!job.header.idempotency_key.empty()) {
      dedup_key = dedup_key_of(job.client_key, job.header.method, job.header.idempotency_key);
    }
    post_reply(outbox, Outgoing{std::move(job.routing_id), internal::encode_reply(job.header.id, st, results),
                                std::move(dedup_key), st.code()});
  }
}

void Server::Impl::send_outbox() {
  std::vector<Outgoing> items;
  {
    std::lock_guard lock(outbox->mu);
    items.swap(outbox->items);
  }
  std::vector<zmq::message_t> one(1);
  for (auto& o : items) {
    if (o.dedup_key) settle(*o.dedup_key, o.frame, o.code);
    one[0] = std::move(o.frame);
    send_reply_message(o.routing_id, one);
  }
}

Server::Impl::DedupEntry& Server::Impl::remember(const DedupKey& key, zmq::message_t& frame) {
  auto& e = dedup[key];
  e.done = true;
  e.frame.copy(frame);  // shares the buffer, which nobody writes once built
  e.generation = ++next_dedup_generation;
  dedup_bytes += e.frame.size();
  dedup_order.emplace_back(key, e.generation);
  // The oldest go first; the reply just filed stays, however large, for its waiters.
  while (dedup_order.size() > 1 &&
         (dedup_order.size() > options.dedup_capacity || dedup_bytes > options.dedup_capacity_bytes)) {
    auto oldest = dedup_order.front();
    dedup_order.pop_front();
    auto old = dedup.find(oldest.first);
    if (old == dedup.end() || old->second.generation != oldest.second) continue;  // forgotten since
    dedup_bytes -= old->second.frame.size();
    dedup.erase(old);
  }
  return e;
}

void Server::Impl::settle(const DedupKey& key, zmq::message_t& frame, Code code) {
  DedupEntry& d = remember(key, frame);
  std::vector<zmq::message_t> one(1);
  for (auto& [wrid, wid] : d.waiters) {
    one[0] = recall(d, wid);
    send_reply_message(wrid, one);
  }
  d.waiters.clear();
  if (!carried_out(code)) {  // its place in dedup_order is skipped when reached (generation)
    dedup_bytes -= d.frame.size();
    dedup.erase(key);
  }
}

zmq::message_t Server::Impl::recall(const DedupEntry& entry, uint64_t id) {
  uint64_t old_id;
  Status status;
  internal::SplitFrame split;
  // A reply this server built, which may be larger than the requests it takes.
  Limits own = options.limits;
  own.max_frame_bytes = std::max(own.max_frame_bytes, entry.frame.size());
  (void)internal::decode_reply(entry.frame, own, &old_id, &status, &split);
  return internal::encode_reply(id, status, split.payload);
}

std::shared_ptr<UnreadReplies> Server::Impl::unread_of(const std::string& rid, size_t bytes) {
  if (unread_by_peer.size() >= unread_sweep_at) {
    std::erase_if(unread_by_peer, [](const auto& p) {
      return p.second.use_count() == 1 && p.second->bytes.load(std::memory_order_relaxed) == 0;
    });
    unread_sweep_at = std::max<size_t>(64, 2 * unread_by_peer.size());
  }
  std::shared_ptr<UnreadReplies>& peer = unread_by_peer[rid];
  if (!peer) peer = std::make_shared<UnreadReplies>();
  const size_t mine = peer->bytes.load(std::memory_order_relaxed);
  const size_t all = unread->bytes.load(std::memory_order_relaxed);
  if (mine == 0 ||
      (mine + bytes <= options.max_unread_reply_bytes_per_peer && all + bytes <= options.max_unread_reply_bytes)) {
    return peer;
  }
  n_dropped_replies++;
  auto now = Clock::now();
  if (now - last_drop_logged >= std::chrono::seconds(10)) {
    last_drop_logged = now;
    DJINN_LOG(kWarn, options.name) << "dropping replies to a peer that does not read them: " << mine
                                   << " bytes of replies wait for it, " << all << " for all peers ("
                                   << n_dropped_replies.load() << " dropped so far)";
  }
  return nullptr;
}

void Server::Impl::send_reply_message(const std::string& rid, std::vector<zmq::message_t>& frames) {
  size_t counted = 0;
  for (const zmq::message_t& f : frames) counted += f.size() >= kCountedReplyFrameBytes ? f.size() : 0;
  std::shared_ptr<UnreadReplies> peer;
  if (counted > 0 && !(peer = unread_of(rid, counted))) return;
  // A peer that went away, or a full pipe, only loses this reply: the client times out or retries.
  zmq::message_t id(rid.data(), rid.size());
  if (!internal::send_frame(*router, id, zmq::send_flags::sndmore | zmq::send_flags::dontwait)) return;
  for (size_t i = 0; i < frames.size(); ++i) {
    auto flags = i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
    if (!peer || frames[i].size() < kCountedReplyFrameBytes) {
      internal::send_frame(*router, frames[i], flags | zmq::send_flags::dontwait);
      continue;
    }
    // Sent as a view of the frame, whose release ZeroMQ reports: counted until then.
    const size_t size = frames[i].size();
    auto* hold = new CountedFrame{std::move(frames[i]), unread, peer};
    unread->bytes.fetch_add(size, std::memory_order_relaxed);
    peer->bytes.fetch_add(size, std::memory_order_relaxed);
    zmq::message_t view(hold->frame.data(), size, release_counted_frame, hold);
    internal::send_frame(*router, view, flags | zmq::send_flags::dontwait);
  }
}

}  // namespace djinn::rpc
