// kill -9 of a real djinn-lease under a load of grants and renewals from several client threads:
// after the restart every acknowledged lease is there with the expiration its last acknowledged
// grant or renewal said, to the millisecond.
#include <doctest/doctest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <thread>

#include "djinn/lease/client.h"
#include "support/test_support.h"

using namespace djinn;
using namespace djinn::lease;
using namespace std::chrono_literals;

namespace {

// The djinn-lease process on fixed ports, so a restart comes back where clients look for it.
struct Daemon {
  Daemon(const test::TempDir& dir, int rpc_port, int events_port)
      : endpoint("tcp://127.0.0.1:" + std::to_string(rpc_port)),
        args{"--data-dir", dir.file("lease"), "--listen", endpoint,
             "--events", "tcp://127.0.0.1:" + std::to_string(events_port), "--max-lease", "1h",
             "--log-level", "warn", "--workers", "4", "--insecure"} {}
  void start() {
    process = std::make_unique<test::ChildProcess>(test::build_path("lease/djinn-lease"), args);
    LeaseClient probe({.endpoint = endpoint});
    REQUIRE_MESSAGE(test::eventually([&] {
                      rpc::CallOptions call;
                      call.timeout = 200ms;
                      return probe.get(1, call).status().code() == Code::kNotFound || probe.get(1, call).ok();
                    }, 10000),
                    "djinn-lease did not come up on ", endpoint);
  }
  void kill9() { process->kill9(); }
  std::string endpoint;
  std::vector<std::string> args;
  std::unique_ptr<test::ChildProcess> process;
};

struct Acked {
  int64_t expiration_ms = 0;
  bool in_doubt = false;  // a renewal failed without an answer: it may have been applied
};

}  // namespace

TEST_CASE("no acknowledged lease is lost to kill -9, and each keeps its exact expiration") {
  test::TempDir dir;
  Daemon daemon(dir, test::free_tcp_port(), test::free_tcp_port());
  daemon.start();

  constexpr int kThreads = 4;
  std::atomic<bool> stop{false};
  std::atomic<int> grants{0}, renewals{0}, errors{0};
  std::atomic<uint64_t> retries{0};  // calls the RPC clients resent after a connection dropped
  std::mutex acked_mu;  // guards acked
  std::map<LeaseId, Acked> acked;
  uint64_t base_seed = test::rng()();
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(base_seed + t);
      rpc::ClientOptions o{.endpoint = daemon.endpoint};
      o.reconnect_interval_max = 50ms;
      LeaseClient client(o);
      rpc::CallOptions call;
      call.timeout = 10s;  // longer than a restart: calls ride it out
      std::vector<LeaseId> mine;
      for (int n = 0; !stop.load(); ++n) {
        if (mine.empty() || rng() % 3 == 0) {
          GrantRequest r;
          r.resource = "res-" + std::to_string(t) + "-" + std::to_string(n);
          r.holder = "holder-" + std::to_string(t);
          r.duration_ms = 600'000 + static_cast<int64_t>(rng() % 600'000);
          auto held = client.grant(r, call);
          if (!held.ok()) {
            errors++;
            continue;
          }
          grants++;
          mine.push_back(held->lease.id);
          std::lock_guard lock(acked_mu);
          acked[held->lease.id] = Acked{held->lease.expiration_ms, false};
        } else {
          LeaseId id = mine[rng() % mine.size()];
          auto held = client.renew(id, 600'000 + static_cast<int64_t>(rng() % 600'000), call);
          std::lock_guard lock(acked_mu);
          if (held.ok()) {
            renewals++;
            acked[id] = Acked{held->lease.expiration_ms, false};
          } else {
            errors++;
            acked[id].in_doubt = true;
          }
        }
      }
      retries += client.rpc().stats().retries;
    });
  }
  auto wait_for_ops = [&](int more) {
    int target = grants.load() + renewals.load() + more;
    REQUIRE(test::eventually([&] { return grants.load() + renewals.load() >= target; }, 15000));
  };
  for (int round = 0; round < 5; ++round) {
    wait_for_ops(400);
    daemon.kill9();  // mid-load: calls are in flight
    daemon.start();
  }
  wait_for_ops(200);
  stop = true;
  for (auto& th : threads) th.join();
  MESSAGE("grants ", grants.load(), ", renewals ", renewals.load(), ", errors ", errors.load(), ", calls resent ",
          retries.load());

  // A fresh process reads what is on disk.
  daemon.kill9();
  daemon.start();
  LeaseClient check({.endpoint = daemon.endpoint});
  size_t exact = 0;
  for (const auto& [id, a] : acked) {
    auto now = check.get(id);
    REQUIRE_MESSAGE(now.ok(), "acknowledged lease ", id, " lost: ", now.status().to_string());
    if (a.in_doubt) {
      CHECK(now->lease.expiration_ms >= a.expiration_ms);
    } else {
      CHECK_MESSAGE(now->lease.expiration_ms == a.expiration_ms, "lease ", id);
      ++exact;
    }
  }
  CHECK(exact > 0);
  CHECK(acked.size() > 100);
}
