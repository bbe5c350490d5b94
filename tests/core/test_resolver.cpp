// Host names in endpoints are resolved off ZeroMQ's I/O thread. The test runs in network and mount
// namespaces of its own (unshare before any thread starts): its /etc/resolv.conf names a DNS
// server on 127.0.0.1 that is a UDP socket of the test which never answers, or, once closed, a
// port that refuses. Needs root (CI runs it so); skipped otherwise.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <future>
#include <thread>

#include "djinn/core/events.h"
#include "djinn/core/rpc.h"
#include "djinn/examples/echo.capnp.h"
#include "echo_service.h"
#include "support/test_support.h"

using namespace djinn;
using namespace std::chrono_literals;
using djinn::examples::EchoParams;
using djinn::examples::EchoResults;

namespace {

int g_silent_dns = -1;  // the UDP socket on 127.0.0.1:53 that reads nothing
std::string g_dir;       // the files mounted over /etc's: resolv.conf, nsswitch.conf, hosts

void write_file(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::trunc) << text;  // in place: the bind mount keeps the inode
}

void remove_files() {
  for (const char* f : {"resolv.conf", "nsswitch.conf", "hosts"}) ::unlink((g_dir + "/" + f).c_str());
  ::rmdir(g_dir.c_str());
}

// Once per process, while it is single-threaded (the first test case runs before any thread).
bool private_resolver() {
  static int state = [] {
    if (unshare(CLONE_NEWNET | CLONE_NEWNS) != 0) return 0;
    if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return 0;
    char dir[] = "/tmp/djinn-resolver-XXXXXX";
    if (!mkdtemp(dir)) return 0;
    g_dir = dir;
    std::atexit(remove_files);
    // Two tries of 2 s each: a name lookup that is not answered takes about 4 s.
    write_file(g_dir + "/resolv.conf", "nameserver 127.0.0.1\noptions timeout:2 attempts:2\n");
    write_file(g_dir + "/nsswitch.conf", "hosts: files dns\n");
    write_file(g_dir + "/hosts", "127.0.0.1 localhost\n");
    for (const char* f : {"resolv.conf", "nsswitch.conf", "hosts"}) {
      std::string from = g_dir + "/" + f, to = std::string("/etc/") + f;
      if (mount(from.c_str(), to.c_str(), nullptr, MS_BIND, nullptr) != 0) return 0;
    }
    // glibc asks a running nscd before nsswitch.conf; hide its socket (absent is fine).
    (void)mount("tmpfs", "/run/nscd", "tmpfs", 0, nullptr);
    return std::system("ip link set lo up") == 0 ? 1 : 0;
  }();
  return state == 1;
}

// The DNS server on 127.0.0.1:53: silent (a socket that reads nothing) or refusing (none).
void dns_silent(bool silent) {
  if (silent == (g_silent_dns >= 0)) return;
  if (!silent) {
    ::close(g_silent_dns);
    g_silent_dns = -1;
    return;
  }
  g_silent_dns = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in at{};
  at.sin_family = AF_INET;
  at.sin_port = htons(53);
  at.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(g_silent_dns, reinterpret_cast<sockaddr*>(&at), sizeof at) == 0);
}

struct EchoServer {
  explicit EchoServer(std::string endpoint = "tcp://127.0.0.1:*")
      : server(rpc::ServerOptions{.endpoints = {std::move(endpoint)}}), echo(server) {
    REQUIRE(server.start().ok());
  }
  std::string endpoint() const { return server.endpoints()[0]; }
  std::string port() const { return endpoint().substr(endpoint().rfind(':') + 1); }
  rpc::Server server;
  examples::EchoService echo;
};

capnp::MallocMessageBuilder& echo_params(capnp::MallocMessageBuilder& msg, const std::string& text) {
  msg.initRoot<EchoParams>().setText(text);
  return msg;
}

rpc::Reply echo(rpc::Client& c, const std::string& text, std::chrono::milliseconds timeout = 0ms) {
  capnp::MallocMessageBuilder msg;
  return c.call("echo.echo", echo_params(msg, text), {.timeout = timeout});
}

std::future<rpc::Reply> echo_async(rpc::Client& c, const std::string& text, std::chrono::milliseconds timeout) {
  capnp::MallocMessageBuilder msg;
  return c.call_async("echo.echo", echo_params(msg, text), {.timeout = timeout});
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

TEST_CASE("a resolver that does not answer holds up only the calls to its name, never the process's sockets") {
  if (!private_resolver()) {
    MESSAGE("no private network and mount namespaces (needs root): skipped");
    return;
  }
  dns_silent(true);
  EchoServer server;
  events::Publisher publisher({});
  REQUIRE(publisher.start().ok());
  rpc::Client by_address({.endpoint = server.endpoint()});
  REQUIRE(echo(by_address, "first").ok());

  // ZeroMQ would resolve these names on its I/O thread, which the server's socket shares.
  const std::string named = "tcp://silent.example:" + server.port();
  auto t0 = std::chrono::steady_clock::now();
  auto by_name = std::make_unique<rpc::Client>(rpc::ClientOptions{.endpoint = named});
  auto async_reply = echo_async(*by_name, "async", 300ms);
  auto sync_reply = std::async(std::launch::async, [&] { return echo(*by_name, "sync", 300ms); });
  std::string pub = publisher.endpoints()[0];
  events::Subscriber subscriber({.endpoint = "tcp://silent-events.example:" + pub.substr(pub.rfind(':') + 1)});
  subscriber.subscribe("demo.kind");
  REQUIRE(subscriber.start().ok());

  // Meanwhile the server answers at once, for 1.5 s, well into the unanswered lookups (stalled,
  // it would not answer for about 4 s).
  double slowest = 0;
  int answered = 0;
  while (ms_since(t0) < 1500) {
    auto t = std::chrono::steady_clock::now();
    rpc::Reply r = echo(by_address, "meanwhile", 1000ms);
    REQUIRE_MESSAGE(r.ok(), r.status().to_string());
    slowest = std::max(slowest, ms_since(t));
    answered++;
    std::this_thread::sleep_for(10ms);
  }
  CHECK(answered > 20);
  CHECK_MESSAGE(slowest < 750, "slowest call while a name was being resolved: " << slowest << " ms");

  // The calls to the name end at their own deadline, saying why.
  for (std::future<rpc::Reply>* f : {&async_reply, &sync_reply}) {
    rpc::Reply r = f->get();
    CHECK(r.status().code() == Code::kDeadlineExceeded);
    CHECK_MESSAGE(r.status().message().find("was not resolved within 300 ms") != std::string::npos,
                  r.status().message());
  }
  // A client or a subscriber waiting for a name closes at once.
  auto closing = std::chrono::steady_clock::now();
  auto late = echo_async(*by_name, "closed", 5000ms);
  by_name.reset();
  subscriber.stop();
  CHECK(ms_since(closing) < 500);
  CHECK(late.get().status().code() == Code::kCancelled);
  CHECK(echo(by_address, "after").ok());
}

TEST_CASE("a host name that does not resolve fails the call at once; a malformed port is refused") {
  if (!private_resolver()) {
    MESSAGE("no private network and mount namespaces (needs root): skipped");
    return;
  }
  dns_silent(false);  // 127.0.0.1:53 refuses: lookups fail at once
  EchoServer server;
  rpc::Client by_name({.endpoint = "tcp://nowhere.example:" + server.port()});
  for (int i = 0; i < 2; ++i) {  // the second is answered from the remembered failure
    auto t0 = std::chrono::steady_clock::now();
    rpc::Reply r = echo(by_name, "x", 3000ms);
    CHECK(r.status().code() == Code::kUnavailable);
    CHECK_MESSAGE(r.status().message().find("cannot resolve host name 'nowhere.example'") != std::string::npos,
                  r.status().message());
    CHECK(ms_since(t0) < 2000);
    rpc::Reply a = echo_async(by_name, "y", 3000ms).get();
    CHECK(a.status().code() == Code::kUnavailable);
  }
  rpc::Client bad_port({.endpoint = "tcp://localhost:99999"});
  rpc::Reply r = echo(bad_port, "x");
  CHECK(r.status().code() == Code::kInvalidArgument);
  CHECK_MESSAGE(r.status().message().find("not a number from 1 to 65535") != std::string::npos, r.status().message());
  rpc::Client bad_host({.endpoint = "tcp://bad host:1"});
  CHECK(echo(bad_host, "x").status().code() == Code::kInvalidArgument);
  events::Subscriber bad_sub({.endpoint = "tcp://localhost:0x50"});
  CHECK(bad_sub.start().code() == Code::kInvalidArgument);
}

TEST_CASE("names that resolve reach the server: blocking and asynchronous calls, and events") {
  if (!private_resolver()) {
    MESSAGE("no private network and mount namespaces (needs root): skipped");
    return;
  }
  dns_silent(true);  // /etc/hosts answers these
  EchoServer server;
  rpc::Client by_name({.endpoint = "tcp://localhost:" + server.port()});
  rpc::Reply r = echo(by_name, "hello");
  REQUIRE_MESSAGE(r.ok(), r.status().to_string());
  CHECK(std::string(r.results<EchoResults>().getText().cStr()) == "hello");
  rpc::Client fresh({.endpoint = "tcp://localhost:" + server.port()});
  rpc::Reply a = echo_async(fresh, "async first", 3000ms).get();  // the I/O thread dials the name
  REQUIRE_MESSAGE(a.ok(), a.status().to_string());

  events::Publisher publisher({});
  REQUIRE(publisher.start().ok());
  std::string pub = publisher.endpoints()[0];
  events::Subscriber subscriber({.endpoint = "tcp://localhost:" + pub.substr(pub.rfind(':') + 1)});
  subscriber.subscribe("demo.kind");
  std::atomic<int> got{0};
  subscriber.on_event([&](const events::Event&) { got++; });
  REQUIRE(subscriber.start().ok());
  CHECK(test::eventually([&] {
    publisher.publish("demo.kind", "k");
    return got.load() > 0;
  }));
}

TEST_CASE("a client and a subscriber follow a host name to the address it moved to") {
  if (!private_resolver()) {
    MESSAGE("no private network and mount namespaces (needs root): skipped");
    return;
  }
  dns_silent(false);
  write_file(g_dir + "/hosts", "127.0.0.1 localhost\n127.0.0.1 mover.example\n");
  auto first = std::make_unique<EchoServer>("tcp://127.0.0.1:*");
  auto first_pub = std::make_unique<events::Publisher>(events::PublisherOptions{.heartbeat_interval = 0ms});
  REQUIRE(first_pub->start().ok());
  std::string port = first->port();
  std::string pub = first_pub->endpoints()[0];
  std::string pub_port = pub.substr(pub.rfind(':') + 1);

  rpc::Client client({.endpoint = "tcp://mover.example:" + port, .reresolve_after = 300ms});
  REQUIRE(echo(client, "here").ok());
  REQUIRE(echo_async(client, "here", 2000ms).get().ok());
  events::Subscriber subscriber({.endpoint = "tcp://mover.example:" + pub_port, .reresolve_after = 300ms});
  subscriber.subscribe("demo.kind");
  std::atomic<int> from_first{0}, from_second{0};
  std::atomic<bool> moved{false};
  subscriber.on_event([&](const events::Event&) { (moved ? from_second : from_first)++; });
  REQUIRE(subscriber.start().ok());
  REQUIRE(test::eventually([&] {
    first_pub->publish("demo.kind", "k");
    return from_first.load() > 0;
  }));

  // The service comes back at another address under the same name.
  first.reset();
  first_pub.reset();
  moved = true;
  write_file(g_dir + "/hosts", "127.0.0.1 localhost\n127.0.0.2 mover.example\n");
  EchoServer second("tcp://127.0.0.2:" + port);
  events::Publisher second_pub({.endpoints = {"tcp://127.0.0.2:" + pub_port}, .heartbeat_interval = 0ms});
  REQUIRE(second_pub.start().ok());

  CHECK(test::eventually([&] { return echo(client, "there", 200ms).ok(); }, 10000));
  CHECK(test::eventually([&] { return echo_async(client, "there", 200ms).get().ok(); }, 10000));
  CHECK(test::eventually([&] {
    second_pub.publish("demo.kind", "k");
    return from_second.load() > 0;
  }, 10000));
}
