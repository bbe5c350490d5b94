// A RenewalManager keeps 1,000 leases of one second alive for 30 seconds while the djinn-lease
// process that grants them is killed with SIGKILL and restarted midway: none expires, no failure
// is reported.
#include <doctest/doctest.h>

#include <atomic>
#include <set>
#include <thread>

#include "djinn/lease/client.h"
#include "support/test_support.h"

using namespace djinn;
using namespace djinn::lease;
using namespace std::chrono_literals;

TEST_CASE("1,000 one-second leases stay alive for 30 s through a landlord restart") {
  test::TempDir dir;
  std::string endpoint = "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port());
  std::vector<std::string> args{"--data-dir", dir.file("lease"), "--listen", endpoint, "--events",
                                "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port()),
                                "--log-level", "warn", "--workers", "4", "--insecure"};
  auto start = [&] {
    auto process = std::make_unique<test::ChildProcess>(test::build_path("lease/djinn-lease"), args);
    LeaseClient probe({.endpoint = endpoint});
    REQUIRE(test::eventually([&] {
      rpc::CallOptions call;
      call.timeout = 100ms;
      return probe.get(1, call).status().code() != Code::kDeadlineExceeded;
    }, 10000));
    return process;
  };
  auto daemon = start();

  std::atomic<int> failures{0};
  RenewalManager renewals({.renew_at_remaining = 0.5, .jitter = 0.1});
  renewals.on_failure([&](const HeldLease& held, const Status& why) {
    failures++;
    MESSAGE("lease ", held.lease.id, " failed: ", why.to_string());
  });
  LeaseClient client({.endpoint = endpoint});
  constexpr int kLeases = 1000;
  std::vector<LeaseId> ids;
  auto began = std::chrono::steady_clock::now();
  for (int i = 0; i < kLeases; ++i) {
    GrantRequest r;
    r.resource = "short-" + std::to_string(i);
    r.holder = "slow-test";
    r.duration_ms = 1000;
    auto held = client.grant(r);
    REQUIRE_MESSAGE(held.ok(), held.status().to_string());
    ids.push_back(held->lease.id);
    REQUIRE(renewals.add(*held, 1000).ok());  // at once: the lease lives one second
  }
  MESSAGE("granted ", kLeases, " leases in ",
          std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - began).count(), " ms");

  std::this_thread::sleep_for(15s);
  daemon->kill9();
  daemon = start();
  std::this_thread::sleep_for(15s);

  auto all = client.leases_of_holder("slow-test");
  REQUIRE(all.ok());
  std::set<LeaseId> present;
  for (const auto& l : all.value()) present.insert(l.id);
  size_t missing = 0;
  for (LeaseId id : ids) missing += present.count(id) == 0;
  CHECK(missing == 0);
  CHECK(failures.load() == 0);
  CHECK(renewals.size() == kLeases);
  renewals.stop();
}
