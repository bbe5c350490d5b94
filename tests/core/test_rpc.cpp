// RPC: round trips, deadlines, restarts, concurrency, batching, deferred replies and reply
// batches, idempotency, hostile input.
#include <doctest/doctest.h>

#include <signal.h>
#include <sodium.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <future>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>

#include <zmq_addon.hpp>

#include "djinn/core/context.h"
#include "djinn/core/reply_batch.h"
#include "djinn/core/rpc.h"
#include "djinn/examples/echo.capnp.h"
#include "djinn/proto/rpc.capnp.h"
#include "echo_service.h"
#include "support/test_support.h"

using namespace djinn;
using djinn::examples::EchoParams;
using djinn::examples::EchoResults;

namespace {

struct EchoServer {
  explicit EchoServer(rpc::ServerOptions options = {}) : server(std::move(options)), echo(server) {
    REQUIRE(server.start().ok());
  }
  std::string endpoint() const { return server.endpoints()[0]; }
  rpc::Server server;
  examples::EchoService echo;
};

rpc::Reply echo(rpc::Client& c, const std::string& text, rpc::CallOptions o = {},
                const std::string& method = "echo.echo", uint32_t sleep_ms = 0) {
  capnp::MallocMessageBuilder msg;
  auto p = msg.initRoot<EchoParams>();
  p.setText(text);
  p.setSleepMillis(sleep_ms);
  return c.call(method, msg, o);
}

void check_echo(rpc::Client& c, const std::string& text = "still serving") {
  rpc::Reply r = echo(c, text);
  REQUIRE_MESSAGE(r.ok(), r.status().to_string());
  CHECK(std::string(r.results<EchoResults>().getText().cStr()) == text);
}

// Sends raw frames on a DEALER socket and returns the reply's frames.
std::vector<zmq::message_t> raw_exchange(const std::string& endpoint, std::vector<zmq::message_t> frames,
                                         int timeout_ms = 2000) {
  zmq::context_t& ctx = djinn::default_context();
  zmq::socket_t s(ctx, zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 0);
  s.connect(endpoint);
  zmq::send_multipart(s, frames);
  std::vector<zmq::message_t> reply;
  zmq::pollitem_t item{s.handle(), 0, ZMQ_POLLIN, 0};
  if (zmq::poll(&item, 1, std::chrono::milliseconds(timeout_ms)) > 0) {
    (void)zmq::recv_multipart(s, std::back_inserter(reply));
  }
  return reply;
}

Status reply_status(const std::vector<zmq::message_t>& reply) {
  REQUIRE(reply.size() >= 1);
  capnp::word buf[64];
  REQUIRE(reply[0].size() <= sizeof buf);
  std::memcpy(buf, reply[0].data(), reply[0].size());
  capnp::FlatArrayMessageReader r(kj::arrayPtr(buf, reply[0].size() / 8));
  auto h = r.getRoot<proto::ReplyHeader>();
  return Status(static_cast<Code>(h.getStatus()), h.getMessage().cStr());
}

std::string header_bytes(const std::string& method, uint64_t id = 7, uint64_t timeout_micros = 1'000'000) {
  capnp::MallocMessageBuilder b;
  auto h = b.initRoot<proto::RequestHeader>();
  h.setId(id);
  h.setMethod(method);
  h.setTimeoutMicros(timeout_micros);
  auto words = capnp::messageToFlatArray(b);
  return std::string(reinterpret_cast<const char*>(words.begin()), words.size() * 8);
}

std::string message_bytes(capnp::MessageBuilder& b) {
  auto words = capnp::messageToFlatArray(b);
  return std::string(reinterpret_cast<const char*>(words.begin()), words.size() * 8);
}

std::string echo_payload(const std::string& text, size_t blob = 0) {
  capnp::MallocMessageBuilder b;
  auto p = b.initRoot<EchoParams>();
  p.setText(text);
  if (blob) p.initBlob(blob);
  return message_bytes(b);
}

// One call as the wire carries it: the header message, then the payload message.
zmq::message_t call_frame(const std::string& method, const std::string& payload, uint64_t id = 7) {
  std::string bytes = header_bytes(method, id) + payload;
  return zmq::message_t(bytes.data(), bytes.size());
}

// This process's resident set, from /proc/self/statm.
[[maybe_unused]] size_t resident_bytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  REQUIRE(f);
  unsigned long size = 0, resident = 0;
  REQUIRE(std::fscanf(f, "%lu %lu", &size, &resident) == 2);
  std::fclose(f);
  return resident * static_cast<size_t>(::sysconf(_SC_PAGESIZE));
}

}  // namespace

TEST_CASE("a blocking call round-trips text and bytes") {
  EchoServer s;
  rpc::Client c({.endpoint = s.endpoint()});
  capnp::MallocMessageBuilder msg;
  auto p = msg.initRoot<EchoParams>();
  p.setText("hello");
  auto blob = p.initBlob(100000);
  for (size_t i = 0; i < blob.size(); ++i) blob[i] = static_cast<kj::byte>(i * 7);
  rpc::Reply r = c.call("echo.echo", msg);
  REQUIRE(r.ok());
  auto res = r.results<EchoResults>();
  CHECK(std::string(res.getText().cStr()) == "hello");
  REQUIRE(res.getBlob().size() == 100000);
  CHECK(res.getBlob()[99999] == static_cast<kj::byte>(99999 * 7));
  CHECK(res.getServed() == 1);
}

TEST_CASE("asynchronous calls: many in flight, callbacks and futures, batched on the wire") {
  EchoServer s;
  rpc::Client c({.endpoint = s.endpoint()});
  constexpr int kCalls = 5000;
  std::atomic<int> ok{0}, done{0};
  for (int i = 0; i < kCalls; ++i) {
    capnp::MallocMessageBuilder msg;
    msg.initRoot<EchoParams>().setText(std::to_string(i));
    c.call_async("echo.echo", msg, {}, [&, i](rpc::Reply r) {
      if (r.ok() && std::string(r.results<EchoResults>().getText().cStr()) == std::to_string(i)) ok++;
      done++;
    });
  }
  REQUIRE(test::eventually([&] { return done == kCalls; }, 10000));
  CHECK(ok == kCalls);
  CHECK(c.stats().batches < static_cast<uint64_t>(kCalls));  // several calls left per message

  capnp::MallocMessageBuilder msg;
  msg.initRoot<EchoParams>().setText("future");
  auto f = c.call_async("echo.later", msg);
  rpc::Reply r = f.get();
  REQUIRE(r.ok());
  CHECK(std::string(r.results<EchoResults>().getText().cStr()) == "future");
}

TEST_CASE("signals the process handles do not end a call, blocking or not, nor the client's thread") {
  test::InterruptingSignal usr1(SIGUSR1);

  EchoServer s;
  rpc::Client c({.endpoint = s.endpoint()});
  check_echo(c);
  std::atomic<bool> done{false};
  pthread_t caller = pthread_self();
  std::thread signaller([&] {
    while (!done.load()) {
      pthread_kill(caller, SIGUSR1);  // the blocking call's own thread
      kill(getpid(), SIGUSR1);        // any thread: the client's and the server's I/O threads
      // Often: ZeroMQ fails even a non-blocking send or receive with EINTR while a signal is
      // pending, a window of microseconds.
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  });
  capnp::MallocMessageBuilder msg;
  msg.initRoot<EchoParams>().setSleepMillis(300);
  auto later = c.call_async("echo.slow", msg);
  rpc::Reply r = echo(c, "slow", {}, "echo.slow", 300);
  rpc::Reply r2 = later.get();
  // Many quick calls, each a few sends and receives on both sides.
  int quick_failures = 0;
  std::vector<std::future<rpc::Reply>> quick;
  capnp::MallocMessageBuilder hello;
  hello.initRoot<EchoParams>().setText("hello");
  for (int i = 0; i < 2000; ++i) {
    if (!echo(c, "quick").ok()) ++quick_failures;
    if (i % 10 == 0) quick.push_back(c.call_async("echo.echo", hello));
  }
  for (auto& f : quick) {
    if (!f.get().ok()) ++quick_failures;
  }
  done = true;
  signaller.join();
  CHECK_MESSAGE(r.ok(), r.status().to_string());
  CHECK_MESSAGE(r2.ok(), r2.status().to_string());
  CHECK(quick_failures == 0);
  check_echo(c);
}

TEST_CASE("a call past its deadline fails with DEADLINE_EXCEEDED and the server goes on") {
  EchoServer s;
  rpc::Client c({.endpoint = s.endpoint()});
  auto start = rpc::Clock::now();
  rpc::Reply r = echo(c, "slow", {.timeout = std::chrono::milliseconds(100)}, "echo.slow", 600);
  auto took = rpc::Clock::now() - start;
  CHECK(r.status().code() == Code::kDeadlineExceeded);
  CHECK(took >= std::chrono::milliseconds(100));
  CHECK(took < std::chrono::milliseconds(500));
  check_echo(c);

  // The async path honours deadlines too.
  capnp::MallocMessageBuilder msg;
  auto p = msg.initRoot<EchoParams>();
  p.setSleepMillis(600);
  auto f = c.call_async("echo.slow", msg, {.timeout = std::chrono::milliseconds(100)});
  CHECK(f.get().status().code() == Code::kDeadlineExceeded);

  // Nothing listening: the deadline still holds, and the message says why.
  rpc::Client nowhere({.endpoint = "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port())});
  rpc::Reply none = echo(nowhere, "x", {.timeout = std::chrono::milliseconds(150)});
  CHECK(none.status().code() == Code::kDeadlineExceeded);
  CHECK(none.status().message().find("no connection") != std::string::npos);
}

TEST_CASE("a call that timed out before there was a server never runs once one starts") {
  std::string ep = "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port());
  rpc::Client c({.endpoint = ep});
  // Blocking and asynchronous, keyed (retryable) and not: each is told DEADLINE_EXCEEDED.
  CHECK(echo(c, "too late", {.timeout = std::chrono::milliseconds(150)}).status().code() == Code::kDeadlineExceeded);
  CHECK(echo(c, "too late", {.timeout = std::chrono::milliseconds(150), .idempotency_key = "late-1"}).status().code() ==
        Code::kDeadlineExceeded);
  capnp::MallocMessageBuilder msg;
  msg.initRoot<EchoParams>().setText("too late");
  auto late = c.call_async("echo.echo", msg, {.timeout = std::chrono::milliseconds(150)});
  auto late_keyed = c.call_async("echo.echo", msg, {.timeout = std::chrono::milliseconds(150), .idempotent = true});
  CHECK(late.get().status().code() == Code::kDeadlineExceeded);
  CHECK(late_keyed.get().status().code() == Code::kDeadlineExceeded);

  // The server comes up on that endpoint: the client connects, and none of those calls reaches it
  // (they waited in the client's socket and ran then, with a fresh deadline, before).
  EchoServer s({.endpoints = {ep}});
  rpc::Reply after = echo(c, "on time", {.timeout = std::chrono::seconds(5)});
  REQUIRE_MESSAGE(after.ok(), after.status().to_string());
  auto async_after = c.call_async("echo.echo", msg, {.timeout = std::chrono::seconds(5)});
  REQUIRE_MESSAGE(async_after.get().ok(), "the asynchronous path connects too");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(s.echo.served() == 2);

  // A call made before the server is up but within its timeout still goes through once it is.
  std::string ep2 = "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port());
  rpc::Client early({.endpoint = ep2});
  auto sync_early = std::async(std::launch::async, [&] { return echo(early, "early", {.timeout = std::chrono::seconds(10)}); });
  auto async_early = early.call_async("echo.echo", msg, {.timeout = std::chrono::seconds(10)});
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EchoServer s2({.endpoints = {ep2}});
  rpc::Reply r1 = sync_early.get();
  CHECK_MESSAGE(r1.ok(), r1.status().to_string());
  rpc::Reply r2 = async_early.get();
  CHECK_MESSAGE(r2.ok(), r2.status().to_string());
  CHECK(s2.echo.served() == 2);
}

namespace {
// A server that answers `calls` calls and closes at once: the last reply is on the client's side
// of the connection when it drops.
void answer_and_close(const std::string& ep, int calls) {
  zmq::socket_t router(djinn::default_context(), zmq::socket_type::router);
  router.set(zmq::sockopt::linger, 2000);
  router.bind(ep);
  while (calls > 0) {
    std::vector<zmq::message_t> in;
    if (!zmq::recv_multipart(router, std::back_inserter(in)) || in.size() < 2) return;
    for (size_t k = 1; k < in.size(); ++k, --calls) {  // a frame per call of a batch
      capnp::word buf[64];
      size_t n_bytes = std::min(in[k].size(), sizeof buf);
      std::memcpy(buf, in[k].data(), n_bytes);
      capnp::FlatArrayMessageReader header(kj::arrayPtr(buf, n_bytes / 8));
      capnp::MallocMessageBuilder reply;
      reply.initRoot<proto::ReplyHeader>().setId(header.getRoot<proto::RequestHeader>().getId());
      capnp::MallocMessageBuilder results;
      results.initRoot<EchoResults>().setText("last words");
      std::string bytes = message_bytes(reply) + message_bytes(results);
      std::array<zmq::message_t, 2> out{zmq::message_t(in[0].data(), in[0].size()), zmq::message_t(bytes.data(), bytes.size())};
      zmq::send_multipart(router, out);
    }
  }
}
}  // namespace

TEST_CASE("a reply that arrived before its server went away is read, blocking or not") {
  for (int round = 0; round < 20; ++round) {
    CAPTURE(round);
    std::string ep = "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port());
    std::thread server([ep] { answer_and_close(ep, 1); });
    rpc::Client c({.endpoint = ep});
    rpc::Reply r = echo(c, "x", {.timeout = std::chrono::seconds(5)});
    CHECK_MESSAGE(r.ok(), r.status().to_string());
    server.join();
  }
  // The asynchronous path, its thread held in the first call's callback while the second reply
  // and the close arrive (a lost connection dropped that reply with it before).
  for (int round = 0; round < 3; ++round) {
    CAPTURE(round);
    std::string ep = "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port());
    std::thread server([ep] { answer_and_close(ep, 3); });
    rpc::Client c({.endpoint = ep});
    REQUIRE(echo(c, "connected", {.timeout = std::chrono::seconds(5)}).ok());
    capnp::MallocMessageBuilder msg;
    msg.initRoot<EchoParams>().setText("x");
    c.call_async("echo.echo", msg, {.timeout = std::chrono::seconds(5)},
                 [](rpc::Reply) { std::this_thread::sleep_for(std::chrono::milliseconds(300)); });
    auto second = c.call_async("echo.echo", msg, {.timeout = std::chrono::seconds(5)});
    rpc::Reply r = second.get();
    CHECK_MESSAGE(r.ok(), r.status().to_string());
    server.join();
  }
}

TEST_CASE("a call whose deadline passed while the client's thread was busy is not sent when the connection comes") {
  std::string ep = "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port());
  rpc::Client c({.endpoint = ep});
  capnp::MallocMessageBuilder msg;
  msg.initRoot<EchoParams>().setText("late");
  // The first call times out with no server, and its callback holds the client's thread while
  // the second call's deadline passes and a server comes up.
  std::promise<void> held;
  c.call_async("echo.echo", msg, {.timeout = std::chrono::milliseconds(100)}, [&](rpc::Reply) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    held.set_value();
  });
  auto late = c.call_async("echo.echo", msg, {.timeout = std::chrono::milliseconds(300)});
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  EchoServer s({.endpoints = {ep}});
  CHECK(late.get().status().code() == Code::kDeadlineExceeded);
  held.get_future().wait();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(s.echo.served() == 0);  // it was sent when the connection came, and ran (told DEADLINE_EXCEEDED)
}

TEST_CASE("the client reconnects after the server process is killed and restarted") {
  int port = test::free_tcp_port();
  std::string ep = "tcp://127.0.0.1:" + std::to_string(port);
  std::string server_bin = test::build_path("examples/echo/djinn-echo-server");
  auto start_server = [&] {
    return std::make_unique<test::ChildProcess>(server_bin, std::vector<std::string>{"--listen", ep, "--log-level", "warn"});
  };
  auto server = start_server();
  rpc::Client c({.endpoint = ep});
  rpc::CallOptions retry{.timeout = std::chrono::seconds(10), .idempotent = true};
  REQUIRE(echo(c, "first", retry).ok());

  // A retryable call in flight survives kill -9 and restart.
  capnp::MallocMessageBuilder slow;
  auto sp = slow.initRoot<EchoParams>();
  sp.setText("in flight");
  sp.setSleepMillis(300);
  auto in_flight = c.call_async("echo.slow", slow, retry);
  // And one that is not retryable is reported lost rather than silently resent.
  auto not_retryable = c.call_async("echo.slow", slow, {.timeout = std::chrono::seconds(10)});
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  server->kill9();
  server = start_server();
  rpc::Reply r = in_flight.get();
  REQUIRE_MESSAGE(r.ok(), r.status().to_string());
  CHECK(std::string(r.results<EchoResults>().getText().cStr()) == "in flight");
  rpc::Reply lost = not_retryable.get();
  CHECK(lost.status().code() == Code::kUnavailable);

  // The blocking path reconnects as well.
  REQUIRE(echo(c, "after restart", retry).ok());
  server->kill9();
  server = start_server();
  REQUIRE(echo(c, "after second restart", retry).ok());
}

TEST_CASE("a server serves many concurrent clients, and a slow method does not hold up quick ones") {
  EchoServer s({.workers = 4});
  constexpr int kThreads = 16, kCalls = 300;
  std::atomic<int> failures{0};
  rpc::Client shared({.endpoint = s.endpoint()});
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      rpc::Client own({.endpoint = s.endpoint()});
      for (int i = 0; i < kCalls; ++i) {
        std::string text = std::to_string(t) + ":" + std::to_string(i);
        rpc::Client& c = i % 2 ? own : shared;
        rpc::Reply r = echo(c, text);
        if (!r.ok() || std::string(r.results<EchoResults>().getText().cStr()) != text) failures++;
      }
    });
  }
  // A slow call on a worker meanwhile.
  rpc::Client slow_client({.endpoint = s.endpoint()});
  auto slow_start = rpc::Clock::now();
  CHECK(echo(slow_client, "slow", {}, "echo.slow", 200).ok());
  for (auto& th : threads) th.join();
  CHECK(failures == 0);
  CHECK(s.echo.served() == kThreads * kCalls + 1);
  CHECK(rpc::Clock::now() - slow_start >= std::chrono::milliseconds(200));
}

TEST_CASE("a handler that leaves its results untouched replies ok with an empty message") {
  rpc::Server server({});
  auto untouched = [](const rpc::CallContext&, capnp::MessageReader&, capnp::MessageBuilder&) { return Status::Ok(); };
  server.handle("test.inline", untouched);
  server.handle("test.worker", untouched, {.blocking = true});
  REQUIRE(server.start().ok());
  rpc::Client c({.endpoint = server.endpoints()[0]});
  for (const char* method : {"test.inline", "test.worker"}) {
    rpc::Reply r = c.call(method);
    REQUIRE_MESSAGE(r.ok(), r.status().to_string());
    CHECK_FALSE(r.has_payload());
    CHECK(std::string(r.results<EchoResults>().getText().cStr()).empty());
  }
}

TEST_CASE("deferred replies: answered from another thread, or CANCELLED when dropped") {
  rpc::Server server({});
  server.handle_deferred("test.drop", [](const rpc::CallContext&, capnp::MessageReader&, rpc::Responder) {});
  examples::EchoService echo_service(server);
  REQUIRE(server.start().ok());
  rpc::Client c({.endpoint = server.endpoints()[0]});
  rpc::Reply later = echo(c, "later", {}, "echo.later");
  REQUIRE(later.ok());
  CHECK(std::string(later.results<EchoResults>().getText().cStr()) == "later");
  CHECK(c.call("test.drop").status().code() == Code::kCancelled);
}

TEST_CASE("replies made inside a ReplyBatch go out when it ends, all of them, nested or not") {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<rpc::Responder> held;
  rpc::Server server({});
  server.handle_deferred("test.hold", [&](const rpc::CallContext&, capnp::MessageReader&, rpc::Responder r) {
    std::lock_guard lock(mu);
    held.push_back(std::move(r));
    cv.notify_all();
  });
  REQUIRE(server.start().ok());
  constexpr int kCalls = 3;
  std::atomic<int64_t> answered_at[kCalls];
  std::vector<std::thread> callers;
  for (int i = 0; i < kCalls; ++i) {
    callers.emplace_back([&, i] {
      rpc::Client c({.endpoint = server.endpoints()[0]});
      rpc::Reply r = c.call("test.hold");
      CHECK(r.ok());
      answered_at[i] = rpc::Clock::now().time_since_epoch().count();
    });
  }
  {
    std::unique_lock lock(mu);
    REQUIRE(cv.wait_for(lock, std::chrono::seconds(5), [&] { return held.size() == kCalls; }));
  }
  int64_t ended;
  {
    rpc::ReplyBatch outer;
    {
      rpc::ReplyBatch inner;
      for (auto& r : held) r.reply(Status::Ok());
    }
    // The inner scope's end sends nothing: the outer one is still open.
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ended = rpc::Clock::now().time_since_epoch().count();
  }
  for (auto& t : callers) t.join();
  for (int i = 0; i < kCalls; ++i) CHECK(answered_at[i] >= ended);
  // Outside any batch a reply goes at once.
  rpc::Client c({.endpoint = server.endpoints()[0]});
  std::thread late([&] { CHECK(c.call("test.hold").ok()); });
  {
    std::unique_lock lock(mu);
    REQUIRE(cv.wait_for(lock, std::chrono::seconds(5), [&] { return held.size() == kCalls + 1; }));
  }
  held.back().reply(Status::Ok());
  late.join();
}

TEST_CASE("after_burst: the calls a deferred handler held are answered together, on the I/O thread") {
  std::vector<rpc::Responder> held;  // touched by the server's I/O thread only
  std::thread::id handler_thread, hook_thread;
  std::vector<size_t> burst_sizes;
  std::atomic<bool> throw_once{true};
  rpc::Server server({});
  server.handle_deferred("test.held", [&](const rpc::CallContext&, capnp::MessageReader&, rpc::Responder r) {
    handler_thread = std::this_thread::get_id();
    held.push_back(std::move(r));
  });
  server.after_burst([&] {
    if (throw_once.exchange(false)) throw std::runtime_error("a hook that fails is logged and skipped");
  });
  server.after_burst([&] {
    hook_thread = std::this_thread::get_id();
    if (held.empty()) return;
    burst_sizes.push_back(held.size());
    for (auto& r : held) r.reply(Status::Ok());
    held.clear();
  });
  examples::EchoService echo_service(server);
  REQUIRE(server.start().ok());
  rpc::Client c({.endpoint = server.endpoints()[0]});

  // A blocking call: its reply, made in the hook, goes out with no other event to wake the server.
  CHECK(c.call("test.held", {.timeout = std::chrono::seconds(2)}).ok());
  // Calls sent in one message arrive in one burst, and the hook answers them at once.
  constexpr int kCalls = 8;
  zmq::socket_t dealer(djinn::default_context(), zmq::socket_type::dealer);
  dealer.set(zmq::sockopt::linger, 0);
  dealer.connect(server.endpoints()[0]);
  std::vector<zmq::message_t> frames;
  for (int i = 0; i < kCalls; ++i) frames.push_back(call_frame("test.held", echo_payload(""), 100 + i));
  zmq::send_multipart(dealer, frames);
  size_t answered = 0;
  zmq::pollitem_t item{dealer.handle(), 0, ZMQ_POLLIN, 0};
  while (answered < kCalls && zmq::poll(&item, 1, std::chrono::seconds(5)) > 0) {
    std::vector<zmq::message_t> reply;
    (void)zmq::recv_multipart(dealer, std::back_inserter(reply));
    CHECK(reply_status(reply).ok());
    answered += reply.size();
  }
  CHECK(answered == kCalls);
  // Quick handlers beside it are untouched.
  CHECK(echo(c, "beside").ok());
  server.stop();
  CHECK(handler_thread == hook_thread);
  REQUIRE(burst_sizes.size() == 2);
  CHECK(burst_sizes[0] == 1);
  CHECK(burst_sizes[1] == kCalls);
}

TEST_CASE("an idempotency key makes a repeated call return the first reply without running it again") {
  EchoServer s;
  rpc::Client c({.endpoint = s.endpoint()});
  rpc::CallOptions keyed{.idempotency_key = "op-1"};
  rpc::Reply a = echo(c, "once", keyed);
  rpc::Reply b = echo(c, "once", keyed);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(a.results<EchoResults>().getServed() == b.results<EchoResults>().getServed());
  CHECK(s.echo.served() == 1);
  CHECK(s.server.stats().dedup_hits == 1);
  rpc::Reply other = echo(c, "twice", {.idempotency_key = "op-2"});
  CHECK(other.results<EchoResults>().getServed() == 2);
}

TEST_CASE("a long error message is cut, and the reply still reaches its call") {
  rpc::Server server({});
  server.handle("t.fail", [](const rpc::CallContext&, capnp::MessageReader&, capnp::MessageBuilder&) {
    return not_found("no such thing: " + std::string(100'000, 'n') + "\xc3\xa9" + std::string(100, 'e'));
  });
  REQUIRE(server.start().ok());
  rpc::Client c({.endpoint = server.endpoints()[0]});
  auto started = rpc::Clock::now();
  rpc::Reply r = c.call("t.fail", {.timeout = std::chrono::seconds(10)});
  CHECK(rpc::Clock::now() - started < std::chrono::seconds(5));
  CHECK(r.status().code() == Code::kNotFound);
  CHECK(r.status().message().rfind("no such thing: nnn", 0) == 0);
  CHECK(r.status().message().size() <= 4096);
  CHECK(r.status().message().find("more bytes cut") != std::string::npos);
}

TEST_CASE("a reply saying the call was not carried out is not remembered: a retry with its key runs it") {
  rpc::ServerOptions options;
  options.workers = 1;
  EchoServer s(options);
  // Dropped unanswered the first time (CANCELLED), answered the second.
  std::atomic<int> runs{0};
  rpc::Server flaky({});
  flaky.handle_deferred("t.flaky", [&](const rpc::CallContext&, capnp::MessageReader&, rpc::Responder r) {
    if (++runs == 2) r.reply(Status::Ok());
  });
  REQUIRE(flaky.start().ok());
  rpc::Client fc({.endpoint = flaky.endpoints()[0]});
  rpc::CallOptions keyed{.idempotency_key = "once"};
  CHECK(fc.call("t.flaky", keyed).status().code() == Code::kCancelled);
  rpc::Reply second = fc.call("t.flaky", keyed);
  CHECK_MESSAGE(second.ok(), second.status().to_string());
  CHECK(runs == 2);
  CHECK(fc.call("t.flaky", keyed).ok());  // now remembered
  CHECK(runs == 2);

  // The only worker is busy past the keyed call's deadline: the call never ran.
  rpc::Client c({.endpoint = s.endpoint()});
  auto busy = std::async(std::launch::async, [&] { return echo(c, "busy", {}, "echo.slow", 400); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  rpc::Reply late = echo(c, "keyed", {.timeout = std::chrono::milliseconds(100), .idempotency_key = "k"}, "echo.slow", 0);
  CHECK(late.status().code() == Code::kDeadlineExceeded);
  REQUIRE(busy.get().ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the expired call's reply is filed
  rpc::Reply retry = echo(c, "keyed", {.idempotency_key = "k"}, "echo.slow", 0);
  REQUIRE_MESSAGE(retry.ok(), retry.status().to_string());
  CHECK(std::string(retry.results<EchoResults>().getText().cStr()) == "keyed");
  CHECK(s.echo.served() == 2);
}

TEST_CASE("the reply cache: a key forgotten and filed again keeps its place; a reply over the request limit is recalled whole") {
  rpc::ServerOptions options;
  options.dedup_capacity = 4;
  options.limits.max_frame_bytes = 64 * 1024;
  rpc::Server server(options);
  std::atomic<int> runs{0};
  server.handle_deferred("t.flaky", [&](const rpc::CallContext& ctx, capnp::MessageReader&, rpc::Responder r) {
    if (ctx.idempotency_key == "K" && ++runs == 1) return;  // dropped: CANCELLED, not carried out
    r.reply(Status::Ok());
  });
  server.handle("t.big", [](const rpc::CallContext&, capnp::MessageReader&, capnp::MessageBuilder& results) {
    std::vector<kj::byte> bytes(200 * 1024, 7);
    results.initRoot<EchoResults>().setBlob(kj::arrayPtr(bytes.data(), bytes.size()));
    return Status::Ok();
  });
  REQUIRE(server.start().ok());
  rpc::Client c({.endpoint = server.endpoints()[0]});
  auto keyed = [](std::string k) { return rpc::CallOptions{.idempotency_key = std::move(k)}; };

  CHECK(c.call("t.flaky", keyed("K")).status().code() == Code::kCancelled);
  REQUIRE(c.call("t.flaky", keyed("K")).ok());  // runs, and is filed again
  for (const char* k : {"a", "b", "c"}) REQUIRE(c.call("t.flaky", keyed(k)).ok());
  // Four keys filed, the cache's capacity: the forgotten first filing of K is passed over, and
  // the second stays.
  REQUIRE(c.call("t.flaky", keyed("K")).ok());
  CHECK(runs == 2);

  rpc::Reply first = c.call("t.big", keyed("big"));
  rpc::Reply again = c.call("t.big", keyed("big"));
  REQUIRE(first.ok());
  REQUIRE(again.ok());
  CHECK(first.results<EchoResults>().getBlob().size() == 200 * 1024);
  CHECK(again.results<EchoResults>().getBlob().size() == 200 * 1024);
}

TEST_CASE("a keyed call unanswered when its server stopped runs again on a repeat after the server starts again") {
  // The first call's handler keeps its responder, so the call is still running when the server
  // stops; its reply, made after, is dropped with the old server's outbox. A repeat of its key on
  // the restarted server runs the call (as after a restart of the process) instead of waiting
  // for a reply that can no longer come.
  std::atomic<int> runs{0};
  std::mutex held_mu;
  std::optional<rpc::Responder> held;
  rpc::Server server({});
  server.handle_deferred("t.hold", [&](const rpc::CallContext&, capnp::MessageReader&, rpc::Responder r) {
    if (++runs == 1) {
      std::lock_guard lock(held_mu);
      held.emplace(std::move(r));
      return;
    }
    r.reply(Status::Ok());
  });
  REQUIRE(server.start().ok());
  rpc::CallOptions keyed{.timeout = std::chrono::milliseconds(300), .idempotency_key = "held"};
  {
    rpc::Client c({.endpoint = server.endpoints()[0]});
    CHECK(c.call("t.hold", keyed).status().code() == Code::kDeadlineExceeded);
  }
  REQUIRE(runs == 1);
  server.stop();
  {
    std::lock_guard lock(held_mu);
    held->reply(Status::Ok());  // to the stopped server: dropped
    held.reset();
  }
  REQUIRE(server.start().ok());
  rpc::Client c({.endpoint = server.endpoints()[0]});
  rpc::CallOptions again{.timeout = std::chrono::seconds(2), .idempotency_key = "held"};
  rpc::Reply r = c.call("t.hold", again);
  CHECK_MESSAGE(r.ok(), r.status().to_string());
  CHECK(runs == 2);
  CHECK(c.call("t.hold", again).ok());  // remembered now
  CHECK(runs == 2);
}

TEST_CASE("the reply cache keeps the last dedup_capacity keys, and a call still running outlives eviction") {
  rpc::ServerOptions options;
  options.dedup_capacity = 4;
  EchoServer s(options);
  rpc::Client c({.endpoint = s.endpoint()});
  auto key = [](int i) { return rpc::CallOptions{.idempotency_key = "k-" + std::to_string(i)}; };

  // A slow call still running while more keys than the cache holds are filed: its repeat still
  // waits for it. (It sleeps long enough for the quick calls to end first on a loaded machine.)
  auto slow = std::async(std::launch::async, [&] { return echo(c, "slow", key(100), "echo.slow", 1500); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  for (int i = 0; i < 8; ++i) REQUIRE(echo(c, "quick", key(i)).ok());
  rpc::Reply again = echo(c, "slow", key(100), "echo.slow", 1500);
  rpc::Reply first = slow.get();
  REQUIRE(first.ok());
  REQUIRE(again.ok());
  CHECK(again.results<EchoResults>().getServed() == first.results<EchoResults>().getServed());
  CHECK(s.echo.served() == 9);

  // The quick calls ran while the slow one slept (served 1..8, the slow one 9). The newest key is
  // answered from the cache; the oldest ran out of it and runs again.
  CHECK(first.results<EchoResults>().getServed() == 9);
  rpc::Reply newest = echo(c, "quick", key(7));
  CHECK(newest.results<EchoResults>().getServed() == 8);
  CHECK(s.echo.served() == 9);
  rpc::Reply oldest = echo(c, "quick", key(0));
  CHECK(oldest.results<EchoResults>().getServed() == 10);
  CHECK(s.server.stats().dedup_hits == 2);
}

TEST_CASE("the reply cache is bounded by bytes too: the oldest replies go first, the newest stays however large") {
  std::atomic<int> runs{0};
  auto serve_big = [&](rpc::Server& server) {
    server.handle("t.big", [&](const rpc::CallContext&, capnp::MessageReader&, capnp::MessageBuilder& results) {
      ++runs;
      std::vector<kj::byte> bytes(200 * 1024, 7);
      results.initRoot<EchoResults>().setBlob(kj::arrayPtr(bytes.data(), bytes.size()));
      return Status::Ok();
    });
    REQUIRE(server.start().ok());
  };
  auto keyed = [](int i) { return rpc::CallOptions{.idempotency_key = "big-" + std::to_string(i)}; };

  rpc::ServerOptions options;
  options.dedup_capacity_bytes = 500 * 1024;  // two replies of 200 KiB
  rpc::Server server(options);
  serve_big(server);
  rpc::Client c({.endpoint = server.endpoints()[0]});
  for (int i = 0; i < 4; ++i) REQUIRE(c.call("t.big", keyed(i)).ok());
  REQUIRE(c.call("t.big", keyed(3)).ok());
  REQUIRE(c.call("t.big", keyed(2)).ok());
  CHECK(runs == 4);
  CHECK(server.stats().dedup_hits == 2);
  REQUIRE(c.call("t.big", keyed(1)).ok());  // gone from the cache: runs again
  CHECK(runs == 5);

  runs = 0;
  options.dedup_capacity_bytes = 100 * 1024;  // less than one reply
  rpc::Server small(options);
  serve_big(small);
  rpc::Client d({.endpoint = small.endpoints()[0]});
  rpc::Reply first = d.call("t.big", keyed(0));
  rpc::Reply again = d.call("t.big", keyed(0));
  REQUIRE(first.ok());
  REQUIRE(again.ok());
  CHECK(again.results<EchoResults>().getBlob().size() == 200 * 1024);
  CHECK(runs == 1);
}

TEST_CASE("repeats of a running call past max_waiting_repeats let the oldest go; calls past the worker queue's bound get UNAVAILABLE") {
  rpc::ServerOptions options;
  options.max_waiting_repeats = 2;
  options.workers = 1;
  options.max_queued_calls = 2;
  rpc::Server server(options);
  std::mutex mu;
  std::condition_variable cv;
  std::vector<rpc::Responder> held;
  bool release = false;
  int running = 0;
  server.handle_deferred("t.hold", [&](const rpc::CallContext&, capnp::MessageReader&, rpc::Responder r) {
    std::lock_guard lock(mu);
    held.push_back(std::move(r));
  });
  server.handle(
      "t.wait",
      [&](const rpc::CallContext&, capnp::MessageReader&, capnp::MessageBuilder&) {
        std::unique_lock lock(mu);
        ++running;
        cv.notify_all();
        cv.wait(lock, [&] { return release; });
        return Status::Ok();
      },
      {.blocking = true});
  REQUIRE(server.start().ok());
  rpc::Client c({.endpoint = server.endpoints()[0]});
  capnp::MallocMessageBuilder none(rpc::kSmallMessageWords);
  none.initRoot<EchoParams>();

  SUBCASE("repeats") {
    rpc::CallOptions o{.timeout = std::chrono::seconds(3), .idempotency_key = "K"};
    std::vector<std::future<rpc::Reply>> calls;
    for (int i = 0; i < 4; ++i) calls.push_back(c.call_async("t.hold", none, o));
    // The first runs and three repeats arrive: two may wait, so the oldest repeat is let go.
    CHECK(calls[3].wait_for(std::chrono::milliseconds(500)) == std::future_status::timeout);
    {
      std::lock_guard lock(mu);
      REQUIRE(held.size() == 1);
      held[0].reply(Status::Ok());
    }
    CHECK(calls[0].get().ok());
    CHECK(calls[2].get().ok());
    CHECK(calls[3].get().ok());
    CHECK(calls[1].get().status().code() == Code::kDeadlineExceeded);
  }
  SUBCASE("queued calls") {
    rpc::CallOptions o{.timeout = std::chrono::seconds(10)};
    std::vector<std::future<rpc::Reply>> calls;
    calls.push_back(c.call_async("t.wait", none, o));
    {
      std::unique_lock lock(mu);
      REQUIRE(cv.wait_for(lock, std::chrono::seconds(5), [&] { return running == 1; }));
    }
    for (int i = 0; i < 4; ++i) calls.push_back(c.call_async("t.wait", none, o));
    // One runs on the worker, two queue, the other two are turned away at once.
    int busy = 0;
    for (auto& f : calls) {
      if (f.wait_for(std::chrono::seconds(2)) != std::future_status::ready) continue;
      rpc::Reply r = f.get();
      CHECK(r.status().code() == Code::kUnavailable);
      CHECK(r.status().message().find("server busy") != std::string::npos);
      ++busy;
    }
    CHECK(busy == 2);
    {
      std::lock_guard lock(mu);
      release = true;
    }
    cv.notify_all();
    int answered = 0;
    for (auto& f : calls) {
      if (f.valid() && f.get().ok()) ++answered;
    }
    CHECK(answered == 3);
    // The queue drained: calls are taken again.
    CHECK(c.call("t.wait", none).ok());
  }
}

TEST_CASE("a reply over the client's frame limit fails its call at once with RESOURCE_EXHAUSTED") {
  rpc::Server server({});
  server.handle("t.big", [&](const rpc::CallContext&, capnp::MessageReader&, capnp::MessageBuilder& results) {
    std::vector<kj::byte> bytes(200 * 1024, 7);
    results.initRoot<EchoResults>().setBlob(kj::arrayPtr(bytes.data(), bytes.size()));
    return Status::Ok();
  });
  REQUIRE(server.start().ok());
  rpc::ClientOptions co{.endpoint = server.endpoints()[0]};
  co.limits.max_frame_bytes = 64 * 1024;
  rpc::Client c(co);
  auto start = rpc::Clock::now();
  rpc::Reply r = c.call("t.big", {.timeout = std::chrono::seconds(10)});
  CHECK(r.status().code() == Code::kResourceExhausted);
  CHECK(rpc::Clock::now() - start < std::chrono::seconds(5));
  capnp::MallocMessageBuilder none(rpc::kSmallMessageWords);
  none.initRoot<EchoParams>();
  rpc::Reply a = c.call_async("t.big", none, {.timeout = std::chrono::seconds(10)}).get();
  CHECK(a.status().code() == Code::kResourceExhausted);
  CHECK(rpc::Clock::now() - start < std::chrono::seconds(5));
}

TEST_CASE("a timeout too long to add to the clock is taken as none") {
  EchoServer s;
  for (uint64_t timeout : {uint64_t{1} << 62, UINT64_MAX}) {
    std::string bytes = header_bytes("echo.echo", 9, timeout) + echo_payload("far");
    std::vector<zmq::message_t> f;
    f.emplace_back(bytes.data(), bytes.size());
    auto reply = raw_exchange(s.endpoint(), std::move(f));
    REQUIRE(reply.size() == 1);
    CHECK(reply_status(reply).ok());
  }
}

TEST_CASE("a caller's timeout too long to add to the clock is taken as the longest, blocking or not") {
  EchoServer s;
  rpc::Client c({.endpoint = s.endpoint()});
  for (auto timeout : {std::chrono::milliseconds(std::chrono::hours(24 * 365 * 300)), std::chrono::milliseconds::max()}) {
    rpc::Reply r = echo(c, "far", {.timeout = timeout});
    CHECK_MESSAGE(r.ok(), r.status().to_string());
    capnp::MallocMessageBuilder msg;
    msg.initRoot<EchoParams>().setText("far");
    rpc::Reply a = c.call_async("echo.echo", msg, {.timeout = timeout}).get();
    CHECK_MESSAGE(a.ok(), a.status().to_string());
  }
}

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;  // the sanitizers' runtime needs descriptors of its own
#else
constexpr bool kSanitized = false;
#endif

TEST_CASE("out of file descriptors: a server refuses to start and a client's calls fail, saying why" *
          doctest::skip(kSanitized)) {
  // In a child, whose descriptor limit can be lowered without harm to the rest of the tests.
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    zmq::context_t ctx;
    { zmq::socket_t warm(ctx, zmq::socket_type::dealer); }  // the context's own threads and descriptors
    rlimit few{256, 256};
    if (::setrlimit(RLIMIT_NOFILE, &few) != 0) ::_exit(10);
    while (::dup(0) >= 0) {
    }  // every descriptor left taken
    if (errno != EMFILE) ::_exit(13);
    rpc::Server server({.endpoints = {"tcp://127.0.0.1:*"}, .context = &ctx});
    Status started = server.start();
    if (started.code() != Code::kResourceExhausted || started.message().find("ulimit") == std::string::npos) ::_exit(11);
    rpc::Client client({.endpoint = "tcp://127.0.0.1:9", .context = &ctx});
    rpc::Reply r = client.call("echo.echo", {.timeout = std::chrono::milliseconds(200)});
    if (r.status().code() != Code::kResourceExhausted) ::_exit(12);
    // One descriptor free: the eventfd is made, the socket is not.
    ::close(200);
    rpc::Server second({.endpoints = {"tcp://127.0.0.1:*"}, .context = &ctx});
    started = second.start();
    if (started.code() != Code::kResourceExhausted || started.message().find("ulimit") == std::string::npos) ::_exit(14);
    ::_exit(0);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("a peer that asks for large replies and never reads them holds a bounded share of the server's memory") {
  rpc::Server server({.max_unread_reply_bytes_per_peer = 16u << 20, .max_unread_reply_bytes = 64u << 20});
  server.handle("big.reply", [](const rpc::CallContext&, capnp::MessageReader&, capnp::MessageBuilder& results) {
    results.initRoot<EchoResults>().initBlob(1u << 20);
    return Status::Ok();
  });
  REQUIRE(server.start().ok());
  // Raw DEALERs that take one message and then read no more: their replies wait in the server.
  std::vector<std::unique_ptr<zmq::socket_t>> greedy;
  for (int peer = 0; peer < 6; ++peer) {
    auto s = std::make_unique<zmq::socket_t>(djinn::default_context(), zmq::socket_type::dealer);
    s->set(zmq::sockopt::linger, 0);
    s->set(zmq::sockopt::rcvhwm, 1);
    s->set(zmq::sockopt::rcvbuf, 4096);
    s->connect(server.endpoints()[0]);
    for (uint64_t i = 1; i <= 200; ++i) {
      std::string bytes = header_bytes("big.reply", i) + echo_payload("");
      zmq::message_t f(bytes.data(), bytes.size());
      (void)s->send(f, zmq::send_flags::none);
    }
    greedy.push_back(std::move(s));
  }
  // 1,200 replies of 1 MiB were asked for; the bounds keep about 64 MiB of them, and drop the rest.
  REQUIRE(test::eventually([&] { return server.stats().requests >= 1200; }, 20000));
  REQUIRE(test::eventually([&] { return server.stats().dropped_replies >= 1000; }, 20000));
#if !defined(__SANITIZE_ADDRESS__)  // AddressSanitizer keeps freed memory in quarantine
  CHECK(resident_bytes() < (size_t{400} << 20));  // it grew to gigabytes before
#endif
  // A reader is served as ever, large replies and small.
  rpc::Client c({.endpoint = server.endpoints()[0]});
  rpc::Reply big = c.call("big.reply", {.timeout = std::chrono::seconds(5)});
  REQUIRE_MESSAGE(big.ok(), big.status().to_string());
  CHECK(big.results<EchoResults>().getBlob().size() == (1u << 20));
  // Once the greedy peers go, what waited for them is let go.
  greedy.clear();
  rpc::Reply again = c.call("big.reply", {.timeout = std::chrono::seconds(5)});
  CHECK_MESSAGE(again.ok(), again.status().to_string());
}

TEST_CASE("hostile input gets an error reply and the server goes on serving") {
  rpc::ServerOptions options;
  options.limits.max_frame_bytes = 64 * 1024;
  options.limits.hard_max_message_bytes = 1 << 20;
  EchoServer s(options);
  rpc::Client good({.endpoint = s.endpoint()});
  const std::string ep = s.endpoint();

  SUBCASE("a frame that is not whole words") {
    std::vector<zmq::message_t> f;
    f.emplace_back("abc", 3);
    auto reply = raw_exchange(ep, std::move(f));
    CHECK(reply_status(reply).code() == Code::kInvalidArgument);
  }
  SUBCASE("a header of garbage words") {
    std::vector<zmq::message_t> f;
    std::string junk(64, '\xff');
    f.emplace_back(junk.data(), junk.size());
    auto reply = raw_exchange(ep, std::move(f));
    CHECK(reply_status(reply).code() == Code::kInvalidArgument);
  }
  SUBCASE("random frames") {
    for (int i = 0; i < 200; ++i) {
      std::vector<zmq::message_t> f;
      size_t n = (test::rng()() % 16) * 8;
      std::string bytes(n, '\0');
      for (auto& ch : bytes) ch = static_cast<char>(test::rng()());
      bytes += echo_payload("x");
      f.emplace_back(bytes.data(), bytes.size());
      auto reply = raw_exchange(ep, std::move(f));
      REQUIRE(reply.size() >= 1);
    }
  }
  SUBCASE("a truncated payload") {
    std::string full = echo_payload(std::string(200, 'a'));
    std::vector<zmq::message_t> f;
    f.push_back(call_frame("echo.echo", full.substr(0, full.size() - 16)));
    auto reply = raw_exchange(ep, std::move(f));
    CHECK(reply_status(reply).code() == Code::kInvalidArgument);
  }
  SUBCASE("a payload over the frame limit") {
    std::vector<zmq::message_t> f;
    f.push_back(call_frame("echo.echo", echo_payload("big", 100 * 1024)));
    auto reply = raw_exchange(ep, std::move(f));
    Status st = reply_status(reply);
    CHECK(st.code() == Code::kResourceExhausted);
    CHECK(st.message().find("exceeds the limit") != std::string::npos);
    // Answered under the call's own id, so a client's call fails at once rather than at its deadline.
    capnp::MallocMessageBuilder big;
    auto p = big.initRoot<EchoParams>();
    std::vector<kj::byte> bytes(100 * 1024);
    p.setBlob(kj::arrayPtr(bytes.data(), bytes.size()));
    auto started = rpc::Clock::now();
    rpc::Reply r = good.call("echo.echo", big, {.timeout = std::chrono::seconds(10)});
    CHECK(r.status().code() == Code::kResourceExhausted);
    CHECK(rpc::Clock::now() - started < std::chrono::seconds(5));
  }
  SUBCASE("a message over the hard limit drops only that connection") {
    std::vector<zmq::message_t> f;
    f.push_back(call_frame("echo.echo", echo_payload("huge", 2 << 20)));
    auto reply = raw_exchange(ep, std::move(f), 300);
    CHECK(reply.empty());
  }
  SUBCASE("an unknown method") {
    std::vector<zmq::message_t> f;
    f.push_back(call_frame("no.such", echo_payload("x")));
    auto reply = raw_exchange(ep, std::move(f));
    CHECK(reply_status(reply).code() == Code::kUnimplemented);
    CHECK(s.server.stats().rejected_frames == 1);
  }
  SUBCASE("an empty frame") {
    std::vector<zmq::message_t> f;
    f.emplace_back();
    auto reply = raw_exchange(ep, std::move(f));
    CHECK(reply_status(reply).code() == Code::kInvalidArgument);
  }
  SUBCASE("a batch whose middle call is malformed: the others are still answered") {
    std::vector<zmq::message_t> f;
    f.push_back(call_frame("echo.echo", echo_payload("a"), 1));
    f.emplace_back("junk", 4);
    f.push_back(call_frame("echo.echo", echo_payload("c"), 3));
    auto reply = raw_exchange(ep, std::move(f));
    REQUIRE(reply.size() == 3);
    CHECK(reply_status(reply).ok());
    std::vector<zmq::message_t> middle;
    middle.push_back(std::move(reply[1]));
    CHECK(reply_status(middle).code() == Code::kInvalidArgument);
  }
  SUBCASE("a payload whose pointer leads outside the message") {
    std::vector<zmq::message_t> f;
    // Segment table (one segment of two words); a root struct pointer with one pointer field;
    // that field, EchoParams.text, a byte-list pointer 65536 words past the segment's end.
    uint64_t words[3] = {2ull << 32, 1ull << 48, 1ull | (0x10000ull << 2) | (2ull << 32) | (5ull << 35)};
    f.push_back(call_frame("echo.echo", std::string(reinterpret_cast<const char*>(words), sizeof words)));
    auto reply = raw_exchange(ep, std::move(f));
    Status st = reply_status(reply);
    CHECK(st.code() == Code::kInvalidArgument);
    CHECK(st.message().find("malformed payload") != std::string::npos);
  }
  SUBCASE("nesting deeper than the limit") {
    capnp::MallocMessageBuilder b;
    auto chain = b.initRoot<examples::Chain>();
    for (int i = 0; i < 100; ++i) chain = chain.initNext();
    std::vector<zmq::message_t> f;
    f.push_back(call_frame("echo.depth", message_bytes(b)));
    auto reply = raw_exchange(ep, std::move(f));
    Status st = reply_status(reply);
    CHECK(st.code() == Code::kInvalidArgument);
    CHECK(st.message().find("nesting") != std::string::npos);
  }
  SUBCASE("a batch over the limit") {
    std::vector<zmq::message_t> f;
    for (int i = 0; i < 1100; ++i) f.push_back(call_frame("echo.echo", "", i));
    auto reply = raw_exchange(ep, std::move(f));
    CHECK(reply_status(reply).code() == Code::kResourceExhausted);
  }
  check_echo(good);
}

TEST_CASE("an endpoint that cannot be dialled fails every call with a status, blocking or not") {
  for (const char* bad : {"tcp://127.0.0.1:notaport", "nonsense", "tcp://"}) {
    CAPTURE(bad);
    rpc::Client client({.endpoint = bad});
    rpc::Reply r = client.call("echo.echo");
    CHECK(r.status().code() == Code::kInvalidArgument);
    capnp::MallocMessageBuilder m;
    m.initRoot<EchoParams>();
    CHECK(client.call_async("echo.echo", m).get().status().code() == Code::kInvalidArgument);
  }
}
