// The client side against an in-process LeaseManager: RenewalManager keeps leases past their
// first expiration, reports a lease cancelled behind its back once and drops it, batches, honours
// `until`, and stops cleanly.
#include <doctest/doctest.h>

#include <atomic>
#include <limits>
#include <mutex>
#include <thread>

#include "djinn/lease/client.h"
#include "djinn/lease/service.h"
#include "support/test_support.h"

using namespace djinn;
using namespace djinn::lease;
using namespace std::chrono_literals;

namespace {

struct Harness {
  Harness() {
    LeaseManagerOptions o;
    o.data_dir = dir.file("lease");
    auto m = LeaseManager::start(o);
    REQUIRE_MESSAGE(m.ok(), m.status().to_string());
    manager = std::move(*m);
    client = std::make_unique<LeaseClient>(rpc::ClientOptions{.endpoint = manager->rpc_endpoint()});
  }
  HeldLease grant(const std::string& resource, int64_t ms) {
    GrantRequest r;
    r.resource = resource;
    r.holder = "client-test";
    r.duration_ms = ms;
    auto held = client->grant(r);
    REQUIRE_MESSAGE(held.ok(), held.status().to_string());
    return *held;
  }
  test::TempDir dir;
  std::unique_ptr<LeaseManager> manager;
  std::unique_ptr<LeaseClient> client;
};

struct Failures {
  std::mutex mu;  // guards seen
  std::vector<std::pair<LeaseId, Code>> seen;
  RenewalManager::FailureHandler handler() {
    return [this](const HeldLease& held, const Status& why) {
      std::lock_guard lock(mu);
      seen.emplace_back(held.lease.id, why.code());
    };
  }
  size_t size() {
    std::lock_guard lock(mu);
    return seen.size();
  }
};

}  // namespace

TEST_CASE("renewal manager keeps leases past their expiration and reports a cancelled one once") {
  Harness h;
  Failures failures;
  RenewalManager renewals({.renew_at_remaining = 0.5, .jitter = 0.1});
  renewals.on_failure(failures.handler());
  std::vector<HeldLease> held;
  for (int i = 0; i < 20; ++i) {
    held.push_back(h.grant("res-" + std::to_string(i), 600));
    REQUIRE(renewals.add(held.back(), 600).ok());
  }
  int64_t first_expiry = held.back().lease.expiration_ms;
  // Past every first expiration: all still there, renewed (batched: far fewer calls than leases).
  std::this_thread::sleep_for(1200ms);
  for (const auto& l : held) {
    auto now = h.client->get(l.lease.id);
    REQUIRE_MESSAGE(now.ok(), now.status().to_string());
    CHECK(now->lease.expiration_ms > first_expiry);
    auto view = renewals.get(l.lease.id, l.landlord);
    REQUIRE(view.has_value());
    CHECK(view->lease.expiration_ms > l.lease.expiration_ms);
  }
  CHECK(failures.size() == 0);

  // Cancelled behind the manager's back: reported once, NOT_FOUND, and no longer tracked.
  REQUIRE(h.client->cancel(held[3].lease.id).ok());
  CHECK(test::eventually([&] { return failures.size() == 1; }, 3000));
  std::this_thread::sleep_for(800ms);  // another round of renewals: no second report
  REQUIRE(failures.size() == 1);
  CHECK(failures.seen[0].first == held[3].lease.id);
  CHECK(failures.seen[0].second == Code::kNotFound);
  CHECK(renewals.size() == 19);
  CHECK_FALSE(renewals.get(held[3].lease.id, held[3].landlord).has_value());

  // remove(): left to expire, never reported.
  renewals.remove(held[4].lease.id, held[4].landlord);
  CHECK(test::eventually([&] { return h.client->get(held[4].lease.id).status().code() == Code::kNotFound; }, 3000));

  // stop(): no renewal and no callback after it returns.
  renewals.stop();
  REQUIRE(h.client->cancel(held[5].lease.id).ok());
  std::this_thread::sleep_for(800ms);
  CHECK(failures.size() == 1);
  // Nobody renews any more: the rest expire.
  CHECK(test::eventually([&] { return h.client->get(held[6].lease.id).status().code() == Code::kNotFound; }, 2000));
}

TEST_CASE("renewal manager drops a lease at `until` without reporting it") {
  Harness h;
  Failures failures;
  RenewalManager renewals;
  renewals.on_failure(failures.handler());
  // Leases of two seconds, renewed with about 900 ms left: not late even on a loaded machine
  // running sanitizer builds side by side (a second left about 450 ms, sometimes too little).
  auto l = h.grant("until", 2000);
  REQUIRE(renewals.add(l, 2000, std::chrono::system_clock::now() + 4000ms).ok());
  std::this_thread::sleep_for(3000ms);
  CHECK(h.client->get(l.lease.id).ok());  // renewed past its first expiration
  CHECK(test::eventually([&] { return renewals.size() == 0; }, 5000));
  CHECK(test::eventually([&] { return h.client->get(l.lease.id).status().code() == Code::kNotFound; }, 5000));
  CHECK(failures.size() == 0);
}

TEST_CASE("renewal manager reports a landlord that never answers once the lease has run out") {
  Failures failures;
  RenewalManager renewals({.call_timeout = 300ms});
  renewals.on_failure(failures.handler());
  HeldLease ghost;
  ghost.landlord = "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port());
  ghost.lease.id = 42;
  ghost.lease.granted_ms = 400;
  ghost.lease.expiration_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count() + 400;
  REQUIRE(renewals.add(ghost).ok());
  CHECK(test::eventually([&] { return failures.size() == 1; }, 3000));
  CHECK(failures.seen[0].second == Code::kDeadlineExceeded);
  CHECK(renewals.size() == 0);
}

TEST_CASE("renewal manager renews on time whatever its wall clock says of the landlord's") {
  Harness h;
  // A holder whose clock is 10 s behind the landlord's, one 10 s ahead: both renew each lease
  // about a second after its grant, neither hastily nor late.
  for (auto skew : {-10s, 10s}) {
    CAPTURE(skew.count());
    Failures failures;
    RenewalManager renewals({.wall_clock = [skew] { return std::chrono::system_clock::now() + skew; }});
    renewals.on_failure(failures.handler());
    auto l = h.grant("skewed" + std::to_string(skew.count()), 2000);
    REQUIRE(renewals.add(l, 2000).ok());
    std::this_thread::sleep_for(3000ms);  // past the first expiration, and the one after it
    auto now = h.client->get(l.lease.id);
    REQUIRE_MESSAGE(now.ok(), now.status().to_string());
    CHECK(now->lease.expiration_ms > l.lease.expiration_ms + 1000);
    CHECK(failures.size() == 0);
  }
}

TEST_CASE("a failure handler may call back into the manager and stop it") {
  Harness h;
  std::atomic<int> calls{0};
  auto renewals = std::make_unique<RenewalManager>();
  RenewalManager* raw = renewals.get();
  renewals->on_failure([&](const HeldLease& held, const Status&) {
    calls++;
    raw->remove(held.lease.id, held.landlord);  // re-entrant calls must not deadlock
    raw->stop();
  });
  auto a = h.grant("a", 400);
  auto b = h.grant("b", 400);
  REQUIRE(renewals->add(a, 400).ok());
  REQUIRE(renewals->add(b, 400).ok());
  REQUIRE(h.client->cancel(a.lease.id).ok());
  REQUIRE(h.client->cancel(b.lease.id).ok());
  CHECK(test::eventually([&] { return calls.load() >= 1; }, 3000));
  renewals.reset();  // joins
  CHECK(calls.load() == 1);  // none after the stop, even from the batch being reported then
}

TEST_CASE("renewal manager keeps a landlord's client only while a lease is there, and caps landlords") {
  Failures failures;
  RenewalManager renewals({.call_timeout = 300ms, .max_landlords = 8});
  renewals.on_failure(failures.handler());
  int64_t now_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  // Unreachable landlords, a new one per lease (TEST-NET-1 addresses route nowhere). Renewed at
  // once (grant unknown) and retried until their minute runs out: each has a client meanwhile.
  auto at = [&](int landlord, LeaseId id, int64_t ms) {
    HeldLease held;
    held.landlord = "tcp://192.0.2.1:" + std::to_string(20000 + landlord);
    held.lease.id = id;
    held.lease.expiration_ms = now_ms + ms;
    return held;
  };
  std::vector<HeldLease> held;
  for (int i = 0; i < 8; ++i) {
    held.push_back(at(i, 100 + static_cast<LeaseId>(i), 60'000));
    REQUIRE(renewals.add(held.back()).ok());
  }
  CHECK(renewals.landlords() == 8);
  // A second lease at a landlord already there, and a lease added again, take no room.
  REQUIRE(renewals.add(at(0, 200, 60'000)).ok());
  REQUIRE(renewals.add(held[1]).ok());
  CHECK(renewals.landlords() == 8);
  Status refused = renewals.add(at(8, 300, 60'000));
  CHECK(refused.code() == Code::kResourceExhausted);
  CHECK_MESSAGE(refused.message().find("8 landlords") != std::string::npos, refused.to_string());
  CHECK(renewals.size() == 9);

  renewals.remove(200, held[0].landlord);
  CHECK(renewals.landlords() == 8);  // lease 100 is still there
  for (const HeldLease& l : held) renewals.remove(l.lease.id, l.landlord);
  CHECK(renewals.size() == 0);
  CHECK(renewals.landlords() == 0);
  REQUIRE(renewals.add(at(8, 300, 60'000)).ok());
  renewals.remove(300, at(8, 300, 0).landlord);

  // A lease given up on (its landlord never answered) takes its landlord's client with it.
  REQUIRE(renewals.add(at(9, 400, 300)).ok());
  CHECK(test::eventually([&] { return failures.size() == 1; }, 3000));
  CHECK(renewals.landlords() == 0);
  CHECK(failures.size() == 1);
}

TEST_CASE("renewal manager refuses a bad renewal duration, and any lease once stopped, when it is added") {
  RenewalManager renewals({.call_timeout = 300ms});
  HeldLease held;
  held.landlord = "tcp://192.0.2.1:20000";  // routes nowhere: nothing here may call it
  held.lease.id = 7;
  held.lease.expiration_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count() +
      60'000;
  for (int64_t bad : {int64_t{0}, int64_t{-3}, std::numeric_limits<int64_t>::min()}) {
    CAPTURE(bad);
    Status st = renewals.add(held, bad);
    CHECK(st.code() == Code::kInvalidArgument);
  }
  CHECK(renewals.size() == 0);
  CHECK(renewals.landlords() == 0);
  renewals.stop();
  Status late = renewals.add(held, 1000);
  CHECK(late.code() == Code::kFailedPrecondition);
  CHECK(renewals.size() == 0);
}
