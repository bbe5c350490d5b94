// RPC over ZeroMQ (DESIGN §3): a Server on a ROUTER socket and a Client on DEALER sockets, every
// message a Cap'n Proto envelope (proto/rpc.capnp) plus a Cap'n Proto payload.
//
//   rpc::Server server({.endpoints = {"tcp://127.0.0.1:*"}});
//   server.method<proto::EchoParams, proto::EchoResults>("demo.echo",
//       [](const rpc::CallContext&, auto params, auto results) {
//         results.setText(params.getText());
//         return Status::Ok();
//       });
//   server.start();
//   rpc::Client client({.endpoint = server.endpoints()[0]});
//   capnp::MallocMessageBuilder msg;
//   msg.initRoot<proto::EchoParams>().setText("hi");
//   rpc::Reply reply = client.call("demo.echo", msg);
//   if (reply.ok()) use(reply.results<proto::EchoResults>().getText());
//
// Handlers run on the server's I/O thread by default, which suits anything that does not block;
// a method registered with `blocking = true` runs on the worker pool, and a deferred method gets a
// Responder it may complete later from any thread (a blocking take in the space).
// The client batches: calls queued while its I/O thread is busy leave together in one message.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/array.h>
#include <kj/exception.h>
#include <zmq.hpp>

#include "djinn/core/security.h"
#include "djinn/core/status.h"

namespace djinn::rpc {

using Clock = std::chrono::steady_clock;

// First segment for messages of a few fields (a request, a reply, an event): 1 KiB. Cap'n Proto's
// default is 8 KiB, allocated and zeroed for every message however small.
inline constexpr unsigned kSmallMessageWords = 128;

// Bounds applied to every frame read from the network.
struct Limits {
  size_t max_frame_bytes = 16u << 20;        // larger frames get RESOURCE_EXHAUSTED
  size_t hard_max_message_bytes = 64u << 20; // ZMQ_MAXMSGSIZE: larger ones drop the connection
  uint64_t traversal_words_per_frame_word = 8;  // Cap'n Proto amplification bound
  int nesting_limit = 64;
  size_t max_batch = 1024;                   // calls in one message
};

// The capnp reader options for a payload of `words` words under these limits.
capnp::ReaderOptions reader_options(const Limits& limits, size_t words);

struct CurveServer {
  security::KeyPair server;                          // the server's own key pair
  std::shared_ptr<const security::Keyring> keyring;  // admitted client keys and their roles
};

struct CurveClient {
  security::KeyPair client;
  std::string server_public_key;  // Z85
};

struct ServerOptions {
  std::vector<std::string> endpoints = {"tcp://127.0.0.1:*"};
  Limits limits;
  int workers = 2;  // threads for methods registered as blocking
  std::optional<CurveServer> curve;
  // The role of every client when CURVE is off (plaintext has no identity to check).
  security::Role plaintext_role = security::Role::kAdmin;
  // Replies remembered by idempotency key, and their bytes: past either bound the oldest go.
  size_t dedup_capacity = 65536;
  size_t dedup_capacity_bytes = 64u << 20;
  // Repeats of a key that wait for its first call to end; past it the oldest is let go
  // unanswered (its caller times out).
  size_t max_waiting_repeats = 16;
  // Calls waiting for a worker, and their frames' bytes; more get UNAVAILABLE (the client may
  // retry) instead of piling up behind a slow disk.
  size_t max_queued_calls = 10000;
  size_t max_queued_bytes = 256u << 20;
  // Replies handed to ZeroMQ but not yet written to their peer's connection (frames of 1 KiB and
  // more are counted), per peer and in all: ZeroMQ bounds a peer's queue only by message count,
  // so a peer that asks for large replies and never reads them would hold the server's memory.
  // Past either bound a reply to a peer that has some waiting already is dropped (its caller
  // times out) and counted; a peer with none waiting always gets its reply, however large.
  size_t max_unread_reply_bytes_per_peer = 256u << 20;
  size_t max_unread_reply_bytes = 1u << 30;
  zmq::context_t* context = nullptr;  // default_context() when null
  std::string name = "rpc";           // for logs
};

// What a handler knows of the call.
struct CallContext {
  std::string_view method;
  security::Role role = security::Role::kNone;
  std::string_view client_key;  // Z85 public key under CURVE, else empty
  Clock::time_point deadline;   // Clock::time_point::max() when the caller gave none
  std::string_view idempotency_key;
};

// Completes one deferred call, from any thread, once. Dropping it unanswered replies
// CANCELLED so no caller waits for nothing.
class Responder {
 public:
  Responder() = default;
  Responder(Responder&&) noexcept;
  Responder& operator=(Responder&&) noexcept;
  ~Responder();

  void reply(const Status& status);  // error or an empty ok
  void reply(const Status& status, capnp::MessageBuilder& results);
  bool done() const { return !state_; }
  const Clock::time_point& deadline() const;

  struct State;
  explicit Responder(std::unique_ptr<State> state);

 private:
  std::unique_ptr<State> state_;
};

struct MethodOptions {
  security::Role min_role = security::Role::kClient;
  bool blocking = false;  // run on the worker pool instead of the I/O thread
};

// Untyped handler: params is the payload (an empty message when the request had none).
using Handler = std::function<Status(const CallContext&, capnp::MessageReader& params,
                                     capnp::MessageBuilder& results)>;
using DeferredHandler =
    std::function<void(const CallContext&, capnp::MessageReader& params, Responder responder)>;

struct ServerStats {
  uint64_t requests = 0;
  uint64_t errors = 0;
  uint64_t rejected_frames = 0;  // malformed, oversized, unknown
  uint64_t dedup_hits = 0;
  uint64_t dropped_replies = 0;  // to peers holding too many unread (ServerOptions)
};

class Server {
 public:
  explicit Server(ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Register before start().
  void handle(std::string method, Handler handler, MethodOptions options = {});
  void handle_deferred(std::string method, DeferredHandler handler, MethodOptions options = {});
  // Runs `hook` on the I/O thread after each burst of requests it read (up to 256 messages),
  // before it sends the replies made meanwhile and waits for more. A deferred handler that keeps
  // its calls until then can carry out a burst's calls together: one commit, no thread hand-off.
  void after_burst(std::function<void()> hook);

  template <class Params, class Results, class F>
  void method(std::string name, F fn, MethodOptions options = {}) {
    handle(std::move(name),
           [fn = std::move(fn)](const CallContext& ctx, capnp::MessageReader& params,
                                capnp::MessageBuilder& results) -> Status {
             return fn(ctx, params.getRoot<Params>(), results.initRoot<Results>());
           },
           options);
  }

  // Binds every endpoint and starts serving. Fails (and serves nothing) if any bind fails.
  Status start();
  void stop();
  // The bound endpoints with their real ports ("tcp://127.0.0.1:41234").
  const std::vector<std::string>& endpoints() const { return bound_; }
  ServerStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::vector<std::string> bound_;
};

// A reply: its status, and when ok, the results message.
class Reply {
 public:
  Reply() = default;
  explicit Reply(Status status) : status_(std::move(status)) {}
  Reply(Status status, kj::Array<capnp::word> payload, capnp::ReaderOptions options);

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  bool has_payload() const { return payload_.size() > 0; }
  // The results; throws kj::Exception when the payload is malformed (caught by callers that
  // hand a Reply's data onward as untrusted input).
  capnp::MessageReader& message();
  template <class T>
  typename T::Reader results() {
    return message().getRoot<T>();
  }

 private:
  Status status_;
  kj::Array<capnp::word> payload_;
  capnp::ReaderOptions options_;
  std::unique_ptr<capnp::FlatArrayMessageReader> reader_;
};

// What others should dial to reach a socket bound at `bound` ("tcp://0.0.0.0:4162"): a wildcard
// host ("*", "0.0.0.0", "[::]") becomes `host`, or this machine's host name when `host` is empty;
// any other endpoint is returned as it is.
std::string advertised_endpoint(const std::string& bound, const std::string& host = "");

// The typed result of a reply: its error status, or what `read` makes of the results (a
// Result<T>). A reply is untrusted input: a malformed one becomes INTERNAL naming `method`.
template <class T, class Read>
Result<T> read_reply(Reply& reply, std::string_view method, Read&& read) {
  if (!reply.ok()) return reply.status();
  try {
    return read(reply);
  } catch (const kj::Exception& e) {
    return internal_error("malformed reply to " + std::string(method) + ": " + e.getDescription().cStr());
  }
}

struct ClientOptions {
  std::string endpoint;
  std::optional<CurveClient> curve;
  Limits limits;
  std::chrono::milliseconds default_timeout{5000};
  zmq::context_t* context = nullptr;  // default_context() when null
  std::chrono::milliseconds reconnect_interval{20};
  std::chrono::milliseconds reconnect_interval_max{1000};
  // A host name in `endpoint` is resolved off ZeroMQ's I/O thread, and again while the connection
  // is down once the address is this old: a service that came back at another address is found.
  std::chrono::milliseconds reresolve_after{30000};
};

// A call's longest timeout (ten years, as the server takes them); a longer one is taken as this.
inline constexpr std::chrono::milliseconds kMaxCallTimeout{int64_t{10} * 365 * 24 * 3600 * 1000};

struct CallOptions {
  std::chrono::milliseconds timeout{0};  // 0: the client's default
  bool idempotent = false;               // safe to send again after a lost connection
  // Makes any call safe to retry: the server answers a repeat with the first reply, unless that
  // reply was UNAVAILABLE, CANCELLED or DEADLINE_EXCEEDED, which say the call was not carried out
  // (a handler returning one of them must not have changed anything); a repeat then runs it.
  std::string idempotency_key;
};

using Callback = std::function<void(Reply)>;

struct ClientStats {
  uint64_t calls = 0;
  uint64_t retries = 0;
  uint64_t timeouts = 0;
  uint64_t batches = 0;  // messages sent by the async path
};

class Client {
 public:
  explicit Client(ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Blocking call on a socket of the calling thread's own: as fast as a raw DEALER round trip.
  Reply call(std::string_view method, capnp::MessageBuilder& params, CallOptions options = {});
  Reply call(std::string_view method, CallOptions options = {});  // no params

  // Asynchronous calls through the client's I/O thread: many in flight, batched on the wire.
  // The callback runs on the I/O thread, exactly once; keep it short.
  void call_async(std::string_view method, capnp::MessageBuilder& params, CallOptions options,
                  Callback done);
  std::future<Reply> call_async(std::string_view method, capnp::MessageBuilder& params,
                                CallOptions options = {});
  // Raw payload bytes (a whole flat-array Cap'n Proto message, or empty).
  void call_async_raw(std::string_view method, kj::Array<capnp::word> payload, CallOptions options,
                      Callback done);

  const std::string& endpoint() const;
  ClientStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Serialises a message into an owned word array.
kj::Array<capnp::word> to_words(capnp::MessageBuilder& message);

}  // namespace djinn::rpc
