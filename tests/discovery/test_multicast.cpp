// The multicast fallback over real sockets, in a network namespace of the test's own that holds
// nothing but `lo` (unshare(CLONE_NEWNET) before any thread starts): nothing can leave the machine.
// A lookup's announcer and a client's listener find each other by announcement and by request,
// the goodbye is heard, hostile datagrams sent to the group are dropped, and the discovery manager
// discovers and discards through multicast alone. Needs root (CI runs it so); skipped otherwise.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "djinn/discovery/manager.h"
#include "djinn/discovery/multicast.h"
#include "djinn/lookup/service.h"
#include "support/test_support.h"

using namespace djinn;
using namespace djinn::discovery;
using namespace std::chrono_literals;

namespace {

// Once per process, while it is single-threaded (the first test case runs before any thread).
bool private_loopback() {
  static int state = [] {
    if (unshare(CLONE_NEWNET) != 0) return 0;
    int rc = std::system("ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo");
    return rc == 0 ? 1 : 0;
  }();
  return state == 1;
}

MulticastOptions on_lo() {
  MulticastOptions o;
  o.interface = "lo";
  o.port = 4160;
  return o;
}

Announcement lookup_announcement(uint16_t port) {
  Announcement a;
  a.service_id = ServiceId::random();
  a.groups = {"public"};
  a.rpc_port = port;
  a.name = "mc";
  return a;
}

void send_raw(const std::vector<uint8_t>& bytes) {
  int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(4160);
  inet_pton(AF_INET, std::string(kMulticastGroup).c_str(), &to.sin_addr);
  ::sendto(fd, bytes.data(), bytes.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to);
  ::close(fd);
}

// A lookup on a free loopback port announcing itself by multicast every 200 ms; restartable on
// the same data and port while its announcer goes on.
struct AnnouncedLookup {
  explicit AnnouncedLookup(const test::TempDir& dir) {
    options.data_dir = dir.file("l");
    port = test::free_tcp_port();
    options.rpc_endpoint = "tcp://127.0.0.1:" + std::to_string(port);
    start();
    Announcement self = lookup_announcement(static_cast<uint16_t>(port));
    self.service_id = service->registrar().self_id();
    auto a = MulticastAnnouncer::start(self, 200ms, on_lo());
    REQUIRE_MESSAGE(a.ok(), a.status().to_string());
    announcer = std::move(*a);
  }
  void start() {
    auto s = lookup::LookupService::start(options);
    REQUIRE_MESSAGE(s.ok(), s.status().to_string());
    service = std::move(*s);
  }
  lookup::LookupServiceOptions options;
  int port = 0;
  std::unique_ptr<lookup::LookupService> service;
  std::unique_ptr<MulticastAnnouncer> announcer;
};

// A discovery manager of group public listening by multicast alone, quick to probe and discard.
DiscoveryOptions multicast_only() {
  DiscoveryOptions d;
  d.avahi = false;
  d.multicast_options = on_lo();
  d.groups = {"public"};
  d.probe_interval = 100ms;
  d.probe_timeout = 200ms;
  d.discard_after = 800ms;
  return d;
}

}  // namespace

TEST_CASE("multicast: announcements, requests and goodbyes on a private loopback; hostile datagrams dropped") {
  if (!private_loopback()) {
    MESSAGE("no private network namespace (needs root): skipped");
    return;
  }
  std::mutex mu;
  std::vector<Announcement> heard;
  MulticastListenerOptions lo;
  lo.multicast = on_lo();
  lo.groups = {"public"};
  lo.on_announcement = [&](const Announcement& a) {
    std::lock_guard lock(mu);
    heard.push_back(a);
  };
  auto listener = MulticastListener::start(lo);
  REQUIRE_MESSAGE(listener.ok(), listener.status().to_string());

  // Garbage to the group first: it must neither crash nor stop the listener.
  auto& rng = test::rng();
  for (int i = 0; i < 200; ++i) {
    std::vector<uint8_t> b((rng() % 32 + 1) * 8);
    for (auto& x : b) x = static_cast<uint8_t>(rng());
    send_raw(b);
  }
  send_raw(std::vector<uint8_t>(5000, 0));  // oversized
  CHECK(test::eventually([&] { return (*listener)->stats().bad_packets >= 150; }, 3000));

  Announcement self = lookup_announcement(4162);
  auto announcer = MulticastAnnouncer::start(self, 200ms, on_lo());
  REQUIRE_MESSAGE(announcer.ok(), announcer.status().to_string());
  CHECK(test::eventually([&] {
    std::lock_guard lock(mu);
    return !heard.empty() && heard.back().service_id == self.service_id && heard.back().host == "127.0.0.1" &&
           heard.back().interval_ms == 200;
  }, 3000));

  // A request is answered by unicast, unless the requester already knows the lookup.
  auto answers_before = (*announcer)->stats().answers;
  (*listener)->request();
  CHECK(test::eventually([&] { return (*announcer)->stats().answers > answers_before; }, 3000));
  // Answers are rationed (a request's source may be spoofed): a burst of fifty from one address
  // gets at most a few.
  std::this_thread::sleep_for(300ms);
  answers_before = (*announcer)->stats().answers;
  auto requests_before = (*announcer)->stats().requests;
  Request burst;
  burst.groups = {"public"};
  for (int i = 0; i < 50; ++i) send_raw(encode_packet(burst));
  CHECK(test::eventually([&] { return (*announcer)->stats().requests >= requests_before + 40; }, 3000));
  std::this_thread::sleep_for(100ms);
  auto after = (*announcer)->stats();
  MESSAGE((after.requests - requests_before) << " requests, " << (after.answers - answers_before) << " answered, "
                                             << after.not_answered << " not");
  CHECK((*announcer)->stats().answers - answers_before <= 3);
  CHECK((*announcer)->stats().not_answered > 0);

  announcer->reset();
  CHECK(test::eventually([&] {
    std::lock_guard lock(mu);
    return heard.back().leaving;
  }, 3000));
}

TEST_CASE("discovery manager by multicast alone: discovered, discarded after silence, discovered again") {
  if (!private_loopback()) {
    MESSAGE("no private network namespace (needs root): skipped");
    return;
  }
  test::TempDir dir;
  AnnouncedLookup lookup(dir);

  std::atomic<int> discovered{0}, discarded{0};
  DiscoveryOptions d = multicast_only();
  d.on_discovered = [&](const DiscoveredLookup& l) {
    CHECK(l.via == "multicast");
    ++discovered;
  };
  d.on_discarded = [&](const DiscoveredLookup&) { ++discarded; };
  auto manager = DiscoveryManager::start(d);
  REQUIRE(manager.ok());
  CHECK(test::eventually([&] { return discovered == 1; }, 3000));

  // The lookup dies without a goodbye (its announcer goes on): discarded after the silence.
  lookup.service->stop();
  lookup.service.reset();
  auto t0 = std::chrono::steady_clock::now();
  CHECK(test::eventually([&] { return discarded == 1; }, 5000));
  MESSAGE("discarded " << std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count()
                       << " ms after the lookup stopped (discard after 800 ms)");
  lookup.start();
  CHECK(test::eventually([&] { return discovered == 2; }, 3000));
}

TEST_CASE("discovery manager under a flood of spoofed announcements: a bounded number kept, the real lookup discovered") {
  if (!private_loopback()) {
    MESSAGE("no private network namespace (needs root): skipped");
    return;
  }
  DiscoveryOptions d = multicast_only();
  std::atomic<int> discovered{0};
  d.on_discovered = [&](const DiscoveredLookup&) { ++discovered; };
  auto manager = DiscoveryManager::start(d);
  REQUIRE(manager.ok());
  // 500 lookups that never answer, each claiming to announce every 49 days.
  for (int i = 0; i < 500; ++i) {
    Announcement fake = lookup_announcement(static_cast<uint16_t>(20000 + i));
    fake.interval_ms = UINT32_MAX;
    auto bytes = encode_packet(fake);
    REQUIRE(bytes.ok());
    send_raw(*bytes);
  }
  CHECK(test::eventually([&] { return (*manager)->stats().crowded_out > 0; }, 3000));
  uint64_t probes_then = (*manager)->stats().probes;

  test::TempDir dir;
  AnnouncedLookup lookup(dir);
  CHECK(test::eventually([&] { return discovered == 1; }, 5000));
  // A second's probes of what is kept: 64 candidates every 100 ms at most, not 500.
  std::this_thread::sleep_for(1s);
  CHECK((*manager)->stats().probes - probes_then < 64 * 12 + 50);
}
