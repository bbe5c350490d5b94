// The renewal service of djinn-lease (in-process LeaseManager): leases handed over stay alive past
// their expiration, a lease cancelled behind the service's back gives exactly one renewal.failed,
// an abandoned set is dropped, and sets survive a restart, even one their landlords are slow to
// come back from.
#include <doctest/doctest.h>

#include <atomic>
#include <mutex>
#include <set>
#include <thread>

#include "djinn/core/events.h"
#include "djinn/core/fault.h"
#include "djinn/core/sqlite.h"
#include "djinn/lease/client.h"
#include "djinn/lease/service.h"
#include "djinn/proto/lease.capnp.h"
#include "../../lease/src/renewal_service.h"
#include "support/test_support.h"

using namespace djinn;
using namespace djinn::lease;
using namespace std::chrono_literals;

namespace {

std::unique_ptr<LeaseManager> start_manager(const std::string& dir, const std::string& endpoint = "tcp://127.0.0.1:*",
                                           Policy policy = {}) {
  LeaseManagerOptions o;
  o.data_dir = dir;
  o.policy = policy;
  o.rpc_endpoint = endpoint;
  auto m = LeaseManager::start(o);
  REQUIRE_MESSAGE(m.ok(), m.status().to_string());
  return std::move(*m);
}

HeldLease grant(LeaseClient& c, const std::string& resource, int64_t ms) {
  GrantRequest r;
  r.resource = resource;
  r.holder = "renewal-test";
  r.duration_ms = ms;
  auto held = c.grant(r);
  REQUIRE_MESSAGE(held.ok(), held.status().to_string());
  return *held;
}

// An in-process djinn-lease and clients of its leases and of its renewal sets.
struct Renewing {
  Renewing()
      : manager(start_manager(dir.file("lease"))),
        leases({.endpoint = manager->rpc_endpoint()}),
        renewal({.endpoint = manager->rpc_endpoint()}) {}
  test::TempDir dir;
  std::unique_ptr<LeaseManager> manager;
  LeaseClient leases;
  RenewalClient renewal;
};

// renewal.failed events, after a warm-up on lease.granted (both subscriptions travel together).
struct FailureLog {
  FailureLog(LeaseManager& m, LeaseClient& c) : sub({.endpoint = m.events_endpoint()}) {
    sub.subscribe("renewal.failed");
    sub.subscribe("lease.granted", "warmup");
    sub.on_event([this](const events::Event& e) {
      std::lock_guard lock(mu);
      if (e.kind == "lease.granted") {
        warm = true;
        return;
      }
      auto reader = e.reader();  // owns what the root points into
      auto f = reader.getRoot<proto::RenewalFailure>();
      seen.push_back({e.key, f.getSetId(), f.getSetRef(), f.getLease().getId(), f.getLease().getRef(), f.getCode()});
    });
    REQUIRE(sub.start().ok());
    REQUIRE(test::eventually([&] {
      GrantRequest r;
      r.resource = "warmup";
      r.holder = "warmup";
      REQUIRE(c.grant(r).ok());
      std::lock_guard lock(mu);
      return warm;
    }));
  }
  ~FailureLog() { sub.stop(); }
  struct Seen {
    std::string key;
    uint64_t set_id;  // on the wire: 0, ids are capabilities
    uint64_t set_ref;
    LeaseId id;       // on the wire: 0
    LeaseRef ref;
    uint16_t code;
  };
  size_t size() {
    std::lock_guard lock(mu);
    return seen.size();
  }
  events::Subscriber sub;
  std::mutex mu;  // guards seen, warm
  std::vector<Seen> seen;
  bool warm = false;
};

// renewal.add with an untilMs RenewalClient::add cannot send (it takes a time_point).
Status add_until_ms(RenewalClient& renewal, uint64_t set_id, const HeldLease& held, int64_t renew_ms, int64_t until_ms) {
  capnp::MallocMessageBuilder message;
  auto p = message.initRoot<proto::AddParams>();
  p.setSetId(set_id);
  p.initLease().setId(held.lease.id);
  p.getLease().setResource(held.lease.resource);
  p.getLease().setHolder(held.lease.holder);
  p.getLease().setExpirationMs(held.lease.expiration_ms);
  p.getLease().setGrantedMs(held.lease.granted_ms);
  p.getLease().setLandlord(held.landlord);
  p.setRenewMs(renew_ms);
  p.setUntilMs(until_ms);
  return renewal.rpc().call("renewal.add", message).status();
}

// A manager at `endpoint` (its store in dir/lease) given a set renewing one lease of 1.5 s on
// `resource` for 30 s, then stopped: the set's id and the lease.
std::pair<uint64_t, HeldLease> set_of_one(const test::TempDir& dir, const std::string& endpoint,
                                          const std::string& resource) {
  auto manager = start_manager(dir.file("lease"), endpoint);
  LeaseClient leases({.endpoint = endpoint});
  RenewalClient renewal({.endpoint = endpoint});
  auto set = renewal.create_set("owner", 30'000);
  REQUIRE(set.ok());
  HeldLease held = grant(leases, resource, 1500);
  REQUIRE(renewal.add(set->id, held, 1500, std::chrono::system_clock::now() + 30s).ok());
  return {set->id, held};
}

}  // namespace

TEST_CASE("the renewal service keeps a set's leases alive and reports a lost one once") {
  test::TempDir dir;
  auto manager = start_manager(dir.file("lease"));
  LeaseClient leases({.endpoint = manager->rpc_endpoint()});
  RenewalClient renewal({.endpoint = manager->rpc_endpoint()});
  FailureLog failures(*manager, leases);

  auto set = renewal.create_set("owner", 20'000);
  REQUIRE_MESSAGE(set.ok(), set.status().to_string());
  CHECK(set->id != 0);
  CHECK(set->lease.lease.holder == "owner");
  // A set id lets whoever knows it list and change the set: drawn at random (below 2^32 once in
  // 2^31 sets), and the set's lease, which lease events show everyone, names its ref instead.
  CHECK(set->id > (uint64_t{1} << 32));
  CHECK(set->lease.lease.resource == "djinn.renewal-set/" + public_ref_hex(set->id));
  auto until = std::chrono::system_clock::now() + 30s;
  std::vector<HeldLease> held;
  for (int i = 0; i < 5; ++i) {
    held.push_back(grant(leases, "kept-" + std::to_string(i), 600));
    REQUIRE(renewal.add(set->id, held.back(), 600, until).ok());
  }
  std::this_thread::sleep_for(1300ms);  // two original lifetimes
  for (const auto& l : held) {
    auto now = leases.get(l.lease.id);
    REQUIRE_MESSAGE(now.ok(), now.status().to_string());
    CHECK(now->lease.expiration_ms > l.lease.expiration_ms);
  }
  auto members = renewal.members(set->id);
  REQUIRE(members.ok());
  CHECK(members->size() == 5);

  REQUIRE(leases.cancel(held[2].lease.id).ok());  // behind the service's back
  CHECK(test::eventually([&] { return failures.size() == 1; }, 3000));
  std::this_thread::sleep_for(700ms);
  REQUIRE(failures.size() == 1);
  // Named by refs only: set ids and lease ids let whoever knows them change the set or the lease.
  CHECK(failures.seen[0].key == renewal_event_key(set->id));
  CHECK(failures.seen[0].set_id == 0);
  CHECK(failures.seen[0].set_ref == public_ref(set->id));
  CHECK(failures.seen[0].id == 0);
  CHECK(failures.seen[0].ref == lease_ref(held[2].lease.id));
  CHECK(failures.seen[0].code == static_cast<uint16_t>(Code::kNotFound));
  CHECK(renewal.members(set->id)->size() == 4);

  CHECK(renewal.remove(set->id, held[0].lease.id, held[0].landlord).ok());
  CHECK(renewal.remove(set->id, held[0].lease.id, held[0].landlord).code() == Code::kNotFound);
  CHECK(test::eventually([&] { return leases.get(held[0].lease.id).status().code() == Code::kNotFound; }, 3000));

  // The client abandons the set (its lease ends): the set is dropped and its leases run out.
  REQUIRE(leases.cancel(set->lease.lease.id).ok());
  CHECK(renewal.members(set->id).status().code() == Code::kNotFound);
  CHECK(test::eventually([&] { return leases.get(held[1].lease.id).status().code() == Code::kNotFound; }, 3000));
  CHECK(failures.size() == 1);  // dropped, not failed
}

TEST_CASE("a member whose row could not be deleted stays renewed and listed, and a retry removes it") {
  test::TempDir dir;
  auto manager = start_manager(dir.file("lease"));
  LeaseClient leases({.endpoint = manager->rpc_endpoint()});
  RenewalClient renewal({.endpoint = manager->rpc_endpoint()});
  auto set = renewal.create_set("owner", 20'000);
  REQUIRE(set.ok());
  HeldLease held = grant(leases, "kept", 1500);
  REQUIRE(renewal.add(set->id, held, 1500, std::chrono::system_clock::now() + 30s).ok());
  fault::arm("renewal.remove.delete_failed", fault::Action::kFail);
  Status failed = renewal.remove(set->id, held.lease.id, held.landlord);
  fault::disarm_all();
  CHECK(failed.code() == Code::kUnavailable);
  CHECK(renewal.members(set->id)->size() == 1);
  std::this_thread::sleep_for(2500ms);  // past the lease's first lifetime: renewed all along
  CHECK(leases.get(held.lease.id).ok());
  CHECK(renewal.remove(set->id, held.lease.id, held.landlord).ok());
  CHECK(renewal.members(set->id)->empty());
}

TEST_CASE_FIXTURE(Renewing, "a lease added to another set as its first set is dropped stays renewed") {
  auto first = renewal.create_set("owner", 20'000);
  auto second = renewal.create_set("owner", 20'000);
  REQUIRE(first.ok());
  REQUIRE(second.ok());
  HeldLease held = grant(leases, "moved", 1500);
  auto until = std::chrono::system_clock::now() + 30s;
  REQUIRE(renewal.add(first->id, held, 1500, until).ok());
  // The first set's lease is cancelled; between dropping the set and forgetting its members, the
  // lease is added to the second set from another client.
  Status added = internal_error("not added");
  std::thread adder;
  fault::arm_call("renewal.set_dropped", [&] {
    adder = std::thread([&] {
      RenewalClient other({.endpoint = manager->rpc_endpoint()});
      added = other.add(second->id, held, 1500, until);
    });
    std::this_thread::sleep_for(300ms);  // its add lands now, unless the drop still holds the set's lock
  });
  REQUIRE(leases.cancel(first->lease.lease.id).ok());
  adder.join();
  fault::disarm_all();
  REQUIRE_MESSAGE(added.ok(), added.to_string());
  auto members = renewal.members(second->id);
  REQUIRE(members.ok());
  REQUIRE(members->size() == 1);  // the manager renews it (a member it does not renew is not listed)
  std::this_thread::sleep_for(2500ms);  // past the lease's first lifetime
  CHECK(leases.get(held.lease.id).ok());
}

TEST_CASE_FIXTURE(Renewing, "a failure reported for a lease added again since leaves the new member renewed") {
  FailureLog failures(*manager, leases);
  auto set = renewal.create_set("owner", 20'000);
  REQUIRE(set.ok());
  HeldLease held = grant(leases, "again", 1500);
  auto until = std::chrono::system_clock::now() + 30s;
  // Its first renewal is refused; before the service takes in the failure, it is added again.
  fault::arm("renewal_manager.renewal_refused", fault::Action::kFail);
  Status again = internal_error("not added");
  fault::arm_call("renewal.failure_reported", [&] {
    RenewalClient other({.endpoint = manager->rpc_endpoint()});
    again = other.add(set->id, held, 1500, until);
  });
  REQUIRE(renewal.add(set->id, held, 1500, until).ok());
  REQUIRE(test::eventually([&] { return fault::hits("renewal.failure_reported") >= 1; }, 3000));
  REQUIRE(test::eventually([&] { return again.code() != Code::kInternal; }, 3000));
  fault::disarm_all();
  REQUIRE_MESSAGE(again.ok(), again.to_string());
  std::this_thread::sleep_for(200ms);
  CHECK(failures.size() == 0);  // the failure was of the lease as it was before
  auto members = renewal.members(set->id);
  REQUIRE(members.ok());
  CHECK(members->size() == 1);
  std::this_thread::sleep_for(2500ms);  // past the lease's first lifetime
  CHECK(leases.get(held.lease.id).ok());
  CHECK(renewal.remove(set->id, held.lease.id, held.landlord).ok());
}

TEST_CASE_FIXTURE(Renewing, "a lease of no set ends while the renewal service's lock is held across a write") {
  auto set = renewal.create_set("owner", 20'000);
  REQUIRE(set.ok());
  HeldLease member = grant(leases, "member", 20'000);
  REQUIRE(renewal.add(set->id, member, 20'000, std::chrono::system_clock::now() + 30s).ok());
  HeldLease other = grant(leases, "other", 20'000);
  // A renewal.remove holds the service's lock for 2 s (as a slow fsync would).
  std::atomic<bool> removing{false};
  fault::arm_call("renewal.member_row_deleting", [&] {
    removing = true;
    std::this_thread::sleep_for(2s);
  });
  std::atomic<bool> removed{false};
  std::thread remover([&] {
    RenewalClient r({.endpoint = manager->rpc_endpoint()});
    CHECK(r.remove(set->id, member.lease.id, member.landlord).ok());
    removed = true;
  });
  REQUIRE(test::eventually([&] { return removing.load(); }, 3000));
  // A cancel of a lease no set holds is answered without waiting for that lock.
  CHECK(leases.cancel(other.lease.id).ok());
  CHECK_FALSE(removed.load());
  remover.join();
  fault::disarm_all();
}

TEST_CASE("renewal.members of a set over 8 MiB comes in pages, each member once") {
  test::TempDir dir;
  auto manager = start_manager(dir.file("lease"));
  LeaseClient leases({.endpoint = manager->rpc_endpoint()});
  RenewalClient renewal({.endpoint = manager->rpc_endpoint()});
  auto set = renewal.create_set("owner", 60'000);
  REQUIRE(set.ok());
  // 6,500 members of about 1.3 KB each (long resource and holder names): 8.5 MB listed.
  std::set<LeaseId> added;
  auto until = std::chrono::system_clock::now() + 60s;
  for (int i = 0; i < 6500; ++i) {
    GrantRequest r;
    r.resource = std::string(990, 'r') + std::to_string(i);
    r.holder = std::string(250, 'h');
    r.duration_ms = 60'000;
    auto held = leases.grant(r);
    REQUIRE(held.ok());
    REQUIRE(renewal.add(set->id, *held, 60'000, until).ok());
    added.insert(held->lease.id);
  }
  rpc::Client raw({.endpoint = manager->rpc_endpoint()});
  capnp::MallocMessageBuilder message;
  message.initRoot<proto::SetIdParams>().setSetId(set->id);
  rpc::Reply first = raw.call("renewal.members", message);
  REQUIRE(first.ok());
  auto page = first.results<proto::LeaseList>();
  CHECK(page.getMore());
  CHECK(page.getTotal() == 6500);
  CHECK(page.getLeases().size() < 6500);
  auto all = renewal.members(set->id);
  REQUIRE_MESSAGE(all.ok(), all.status().to_string());
  std::set<LeaseId> listed;
  for (const HeldLease& h : *all) listed.insert(h.lease.id);
  CHECK(all->size() == 6500);
  CHECK(listed == added);
}

TEST_CASE("a set whose lease ends before renewal.create has registered it is dropped") {
  // The set's lease is cancelled from the engine's report of its grant, as a 1 ms lease or a slow
  // disk has it end: the end is reported before renewal.create has registered the set.
  internal::RenewalService* service = nullptr;
  Landlord* engine = nullptr;
  LandlordOptions landlord_options;
  landlord_options.on_event = [&](const LeaseEvent& e) {
    if (e.type == EventType::kGranted) {
      REQUIRE(engine->cancel(e.lease.id).ok());
    } else if (service) {
      service->on_lease_event(e);
    }
  };
  auto landlord = Landlord::open(landlord_options);
  REQUIRE(landlord.ok());
  engine = landlord->get();
  auto renewal_service = internal::RenewalService::open({.landlord = engine});
  REQUIRE(renewal_service.ok());
  service = renewal_service->get();
  rpc::Server server({});
  service->register_methods(server);
  REQUIRE(server.start().ok());
  RenewalClient renewal({.endpoint = server.endpoints().at(0)});
  auto set = renewal.create_set("hasty", 10'000);
  REQUIRE_MESSAGE(set.ok(), set.status().to_string());
  CHECK(renewal.members(set->id).status().code() == Code::kNotFound);
  server.stop();
  service = nullptr;  // the engine outlives the service
}

TEST_CASE("a set whose lease ended before the renewal service heard of its end is dropped when it does") {
  // As at the start of djinn-lease: the engine runs (and ends leases) before the renewal service
  // receives its events.
  test::TempDir dir;
  internal::RenewalService* service = nullptr;
  LandlordOptions landlord_options;
  landlord_options.on_event = [&](const LeaseEvent& e) {
    if (service) service->on_lease_event(e);
  };
  auto landlord = Landlord::open(landlord_options);
  REQUIRE(landlord.ok());
  internal::RenewalServiceOptions options{.path = dir.file("renewal.db"), .landlord = landlord->get()};
  auto first = internal::RenewalService::open(options);
  REQUIRE(first.ok());
  auto granted = (*landlord)->grant(GrantRequest{"kept", "owner", Kind::kShared, 10'000, {}});
  REQUIRE(granted.ok());
  LeaseId set_lease = 0;
  uint64_t set_id = 0;
  {
    rpc::Server server({});
    (*first)->register_methods(server);
    REQUIRE(server.start().ok());
    RenewalClient renewal({.endpoint = server.endpoints().at(0)});
    auto set = renewal.create_set("owner", 10'000);
    REQUIRE(set.ok());
    set_lease = set->lease.lease.id;
    set_id = set->id;
    REQUIRE(renewal.add(set->id, {*granted, server.endpoints().at(0)}, 10'000,
                        std::chrono::system_clock::now() + 60s).ok());
    server.stop();
  }
  first->reset();

  auto second = internal::RenewalService::open(options);
  REQUIRE(second.ok());
  REQUIRE((*landlord)->cancel(set_lease).ok());  // heard by nobody
  service = second->get();
  service->drop_ended_sets();
  rpc::Server server({});
  service->register_methods(server);
  REQUIRE(server.start().ok());
  RenewalClient renewal({.endpoint = server.endpoints().at(0)});
  CHECK(renewal.members(set_id).status().code() == Code::kNotFound);
  server.stop();
  service = nullptr;  // the engine outlives the service
}

TEST_CASE("renewal calls refuse bad input") {
  test::TempDir dir;
  auto manager = start_manager(dir.file("lease"));
  LeaseClient leases({.endpoint = manager->rpc_endpoint()});
  RenewalClient renewal({.endpoint = manager->rpc_endpoint()});
  auto set = renewal.create_set("owner", 10'000);
  REQUIRE(set.ok());
  auto l = grant(leases, "x", 10'000);
  auto later = std::chrono::system_clock::now() + 10s;
  CHECK(renewal.create_set("", 1000).status().code() == Code::kInvalidArgument);
  CHECK(renewal.create_set("owner", 0).status().code() == Code::kInvalidArgument);
  CHECK(renewal.add(999, l, 1000, later).code() == Code::kNotFound);
  CHECK(renewal.add(set->id, l, 1000, std::chrono::system_clock::now() - 1s).code() == Code::kInvalidArgument);
  CHECK(renewal.add(set->id, l, 0, later).code() == Code::kInvalidArgument);
  HeldLease bogus = l;
  bogus.landlord = "http://example";
  CHECK(renewal.add(set->id, bogus, 1000, later).code() == Code::kInvalidArgument);
  bogus.landlord = "inproc://zeromq.zap.01";  // a socket of the service's own process
  CHECK(renewal.add(set->id, bogus, 1000, later).code() == Code::kInvalidArgument);
  bogus = l;
  bogus.lease.id = 0;
  CHECK(renewal.add(set->id, bogus, 1000, later).code() == Code::kInvalidArgument);
  bogus = l;
  bogus.lease.expiration_ms = kNeverExpires;  // nothing to renew, and it would never be
  auto never = renewal.add(set->id, bogus, 1000, later);
  CHECK(never.code() == Code::kInvalidArgument);
  CHECK_MESSAGE(never.message().find("needs no renewal") != std::string::npos, never.to_string());
  CHECK(renewal.members(set->id)->empty());
  // The same lease in two sets would be renewed twice and reported twice.
  auto other = renewal.create_set("owner", 10'000);
  REQUIRE(renewal.add(set->id, l, 1000, later).ok());
  Status twice = renewal.add(other->id, l, 1000, later);
  CHECK(twice.code() == Code::kAlreadyExists);
  CHECK(twice.message().find(std::to_string(set->id)) == std::string::npos);  // a set id is a capability
}

TEST_CASE("a lease handed over with a made-up expiration and grant is renewed as it really is") {
  test::TempDir dir;
  auto manager = start_manager(dir.file("lease"));
  LeaseClient leases({.endpoint = manager->rpc_endpoint()});
  RenewalClient renewal({.endpoint = manager->rpc_endpoint()});
  FailureLog failures(*manager, leases);
  auto set = renewal.create_set("owner", 30'000);
  REQUIRE(set.ok());
  HeldLease held = grant(leases, "claims-an-hour", 1500);
  HeldLease told = held;
  told.lease.expiration_ms = kNeverExpires - 1;
  told.lease.granted_ms = 3'600'000;
  REQUIRE(renewal.add(set->id, told, 1500, std::chrono::system_clock::now() + 30s).ok());
  std::this_thread::sleep_for(3200ms);  // two lifetimes of the real lease
  auto now = leases.get(held.lease.id);
  REQUIRE_MESSAGE(now.ok(), now.status().to_string());
  CHECK(now->lease.expiration_ms > held.lease.expiration_ms);
  auto members = renewal.members(set->id);
  REQUIRE(members.ok());
  REQUIRE(members->size() == 1);
  CHECK(members->front().lease.granted_ms == 1500);
  CHECK(failures.size() == 0);
  // Nor does the made-up expiration outlive the first renewal in the store, where a restart would
  // take it for how long to try a landlord that does not answer.
  auto db = sqlite::Database::open(dir.file("lease") + "/renewal.db");
  REQUIRE(db.ok());
  auto st = db->prepare("SELECT expiration_ms, granted_ms FROM renewal_member");
  REQUIRE(st.ok());
  REQUIRE(*st->step());
  CHECK(st->column_int64(0) < held.lease.expiration_ms + 60'000);
  CHECK(st->column_int64(1) == 1500);
}

namespace {

// Restarts the manager of set_of_one's set and checks, past the lease's first expiration, that it
// renewed the lease and still lists it.
void renewed_after_restart(const test::TempDir& dir, const std::string& endpoint, uint64_t set_id, const HeldLease& held) {
  auto manager = start_manager(dir.file("lease"), endpoint);
  LeaseClient leases({.endpoint = endpoint});
  RenewalClient renewal({.endpoint = endpoint});
  std::this_thread::sleep_for(2000ms);  // past the lease's first expiration
  auto now = leases.get(held.lease.id);
  REQUIRE_MESSAGE(now.ok(), now.status().to_string());
  CHECK(now->lease.expiration_ms > held.lease.expiration_ms);
  auto members = renewal.members(set_id);
  REQUIRE(members.ok());
  CHECK(members->size() == 1);
}

}  // namespace

TEST_CASE("renewal sets survive a restart of the manager") {
  test::TempDir dir;
  std::string endpoint = "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port());
  auto [set_id, held] = set_of_one(dir, endpoint, "durable");
  renewed_after_restart(dir, endpoint, set_id, held);
}

TEST_CASE("after a restart, a lease is kept while its landlord is away for less than the lease's last grant") {
  test::TempDir dir;
  std::string renewer_endpoint = "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port());
  std::string landlord_endpoint = "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port());
  Policy policy;
  policy.default_duration = 8s;  // what the renewals (ANY) get: longer than the handed-over lease
  auto renewer = start_manager(dir.file("renewer"), renewer_endpoint);
  auto landlord = start_manager(dir.file("landlord"), landlord_endpoint, policy);
  LeaseClient at_landlord({.endpoint = landlord_endpoint});
  HeldLease held;
  uint64_t set_id = 0;
  {
    RenewalClient renewal({.endpoint = renewer_endpoint});
    auto set = renewal.create_set("owner", 60'000);
    REQUIRE(set.ok());
    set_id = set->id;
    held = grant(at_landlord, "slow-landlord", 1000);
    REQUIRE(renewal.add(set_id, held, kDurationAny, std::chrono::system_clock::now() + 60s).ok());
  }
  // The renewal service has renewed it for 8 s and noted that grant in its store.
  {
    auto db = sqlite::Database::open(dir.file("renewer") + "/renewal.db");
    REQUIRE(db.ok());
    REQUIRE(test::eventually([&] {
      auto st = db->prepare("SELECT granted_ms FROM renewal_member");
      REQUIRE(st.ok());
      auto row = st->step();
      return row.ok() && *row && st->column_int64(0) == 8000;
    }, 3000));
  }
  auto before = at_landlord.get(held.lease.id);
  REQUIRE(before.ok());
  renewer.reset();
  landlord.reset();

  // The renewal service comes back first; the landlord stays away longer than a renewal call's
  // timeout (2 s), not as long as the lease's 8 s.
  renewer = start_manager(dir.file("renewer"), renewer_endpoint);
  LeaseClient at_renewer({.endpoint = renewer_endpoint});
  FailureLog failures(*renewer, at_renewer);
  std::this_thread::sleep_for(3000ms);
  landlord = start_manager(dir.file("landlord"), landlord_endpoint, policy);
  CHECK(test::eventually([&] {
    auto now = at_landlord.get(held.lease.id);
    return now.ok() && now->lease.expiration_ms > before->lease.expiration_ms;
  }, 5000));
  CHECK(failures.size() == 0);
  RenewalClient renewal({.endpoint = renewer_endpoint});
  auto members = renewal.members(set_id);
  REQUIRE(members.ok());
  CHECK(members->size() == 1);
}

TEST_CASE("renewal.add refuses an untilMs past 2262 and renews one of time_point::max() until removed") {
  test::TempDir dir;
  auto manager = start_manager(dir.file("lease"));
  LeaseClient leases({.endpoint = manager->rpc_endpoint()});
  RenewalClient renewal({.endpoint = manager->rpc_endpoint()});
  FailureLog failures(*manager, leases);
  auto set = renewal.create_set("owner", 30'000);
  REQUIRE(set.ok());
  HeldLease refused = grant(leases, "until-int64-max", 600);
  // Once taken as a time_point of nanoseconds, these wrapped into the past: accepted, then dropped
  // at once without a renewal or a report.
  for (int64_t until_ms : {INT64_MAX, int64_t{9'223'372'036'855}, int64_t{1} << 62}) {
    CAPTURE(until_ms);
    Status st = add_until_ms(renewal, set->id, refused, 600, until_ms);
    CHECK(st.code() == Code::kInvalidArgument);
    CHECK_MESSAGE(st.message().find("9223372036854") != std::string::npos, st.to_string());
  }
  CHECK(renewal.members(set->id)->empty());

  // The latest time there is, as RenewalClient::add sends time_point::max(): renewed until removed.
  HeldLease kept = grant(leases, "until-removed", 600);
  REQUIRE(renewal.add(set->id, kept, 600, std::chrono::system_clock::time_point::max()).ok());
  std::this_thread::sleep_for(1300ms);  // two lifetimes of the lease
  auto now = leases.get(kept.lease.id);
  REQUIRE_MESSAGE(now.ok(), now.status().to_string());
  CHECK(now->lease.expiration_ms > kept.lease.expiration_ms);
  CHECK(renewal.members(set->id)->size() == 1);
  CHECK(failures.size() == 0);
}

TEST_CASE("a member stored with an untilMs past 2262 is renewed after a restart, not dropped") {
  test::TempDir dir;
  std::string endpoint = "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port());
  auto [set_id, held] = set_of_one(dir, endpoint, "stored-far");
  {
    // As a store written before untilMs was bounded may hold it.
    auto db = sqlite::Database::open(dir.file("lease") + "/renewal.db");
    REQUIRE(db.ok());
    REQUIRE(db->exec("UPDATE renewal_member SET until_ms = 9223372036854775807").ok());
  }
  renewed_after_restart(dir, endpoint, set_id, held);
}

TEST_CASE("renewal.add refuses a lease at one landlord more than it renews at, and forgets landlords left") {
  test::TempDir dir;
  auto manager = start_manager(dir.file("lease"));
  RenewalClient renewal({.endpoint = manager->rpc_endpoint()});
  auto set = renewal.create_set("owner", 60'000);
  REQUIRE(set.ok());
  auto until = std::chrono::system_clock::now() + 60s;
  // Each at an unreachable landlord of its own (TEST-NET-1 routes nowhere), retried meanwhile.
  auto at = [](int landlord) {
    HeldLease held;
    held.landlord = "tcp://192.0.2.1:" + std::to_string(20000 + landlord);
    held.lease.id = 1000 + static_cast<LeaseId>(landlord);
    held.lease.resource = "far";
    held.lease.holder = "owner";
    held.lease.expiration_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count() +
        60'000;
    return held;
  };
  constexpr int kLimit = 64;  // RenewalManagerOptions::max_landlords
  for (int i = 0; i < kLimit; ++i) REQUIRE(renewal.add(set->id, at(i), 10'000, until).ok());
  Status refused = renewal.add(set->id, at(kLimit), 10'000, until);
  CHECK(refused.code() == Code::kResourceExhausted);
  CHECK_MESSAGE(refused.message().find("64 landlords") != std::string::npos, refused.to_string());
  CHECK(renewal.members(set->id)->size() == kLimit);
  // Once no lease is left at them, their clients go, and others may come.
  for (int i = 0; i < kLimit; ++i) REQUIRE(renewal.remove(set->id, at(i).lease.id, at(i).landlord).ok());
  for (int i = kLimit; i < 2 * kLimit; ++i) REQUIRE(renewal.add(set->id, at(i), 10'000, until).ok());
  CHECK(renewal.members(set->id)->size() == kLimit);
}

TEST_CASE("a lease whose landlord never answers is reported failed after the patience, not at the expiration handed over") {
  test::TempDir dir;
  LeaseManagerOptions o;
  o.data_dir = dir.file("lease");
  o.renewal_patience = 1500ms;
  auto started = LeaseManager::start(o);
  REQUIRE_MESSAGE(started.ok(), started.status().to_string());
  LeaseManager& manager = **started;
  LeaseClient leases({.endpoint = manager.rpc_endpoint()});
  RenewalClient renewal({.endpoint = manager.rpc_endpoint()});
  FailureLog failures(manager, leases);
  auto set = renewal.create_set("owner", 60'000);
  REQUIRE(set.ok());
  // Made up: a landlord that routes nowhere (TEST-NET-1), an expiration and a grant a day away.
  const int64_t day = 24 * 3'600'000;
  HeldLease far;
  far.landlord = "tcp://192.0.2.1:20001";
  far.lease.id = 4242;
  far.lease.resource = "far";
  far.lease.holder = "owner";
  far.lease.granted_ms = day;
  far.lease.expiration_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count() + day;
  // A real one beside it, at the manager's own landlord, stays renewed.
  HeldLease kept = grant(leases, "kept", 1'000);
  const auto until = std::chrono::system_clock::now() + std::chrono::hours(48);
  const auto added = std::chrono::steady_clock::now();
  REQUIRE(renewal.add(set->id, far, 1'000, until).ok());
  REQUIRE(renewal.add(set->id, kept, 1'000, until).ok());
  CHECK(renewal.members(set->id)->size() == 2);
  REQUIRE(test::eventually([&] { return failures.size() == 1; }, 15'000));
  CHECK(std::chrono::steady_clock::now() - added >= 1500ms);
  {
    std::lock_guard lock(failures.mu);
    CHECK(failures.seen[0].code == static_cast<uint16_t>(Code::kUnavailable));
  }
  auto members = renewal.members(set->id);
  REQUIRE(members.ok());
  REQUIRE(members->size() == 1);
  CHECK(members->front().lease.resource == "kept");
  std::this_thread::sleep_for(1500ms);  // past the kept lease's own grant: renewed all along
  CHECK(leases.get(kept.lease.id).ok());
}

TEST_CASE("members are swept at their untilMs without any call, through an index on until_ms") {
  test::TempDir dir;
  std::string endpoint = "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port());
  uint64_t set_id = 0;
  {
    auto manager = start_manager(dir.file("lease"), endpoint);
    LeaseClient leases({.endpoint = endpoint});
    RenewalClient renewal({.endpoint = endpoint});
    auto set = renewal.create_set("owner", 60'000);
    REQUIRE(set.ok());
    set_id = set->id;
    REQUIRE(renewal.add(set_id, grant(leases, "kept", 10'000), 10'000, std::chrono::system_clock::now() + 60s).ok());
  }
  auto rows = [&](const std::string& sql) {
    auto db = sqlite::Database::open(dir.file("lease") + "/renewal.db");
    REQUIRE(db.ok());
    auto st = db->prepare(sql);
    REQUIRE(st.ok());
    auto row = st->step();
    REQUIRE(row.ok());
    return *row ? st->column_int64(0) : int64_t{-1};
  };
  {
    // A store as written before the index.
    auto db = sqlite::Database::open(dir.file("lease") + "/renewal.db");
    REQUIRE(db.ok());
    REQUIRE(db->exec("DROP INDEX IF EXISTS renewal_member_until; PRAGMA user_version = 0").ok());
  }
  auto manager = start_manager(dir.file("lease"), endpoint);
  CHECK(rows("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'renewal_member_until'") == 1);
  CHECK(rows("PRAGMA user_version") == 1);
  CHECK(rows("SELECT count(*) FROM renewal_member") == 1);

  LeaseClient leases({.endpoint = endpoint});
  RenewalClient renewal({.endpoint = endpoint});
  auto soon = grant(leases, "soon", 10'000);
  REQUIRE(renewal.add(set_id, soon, 10'000, std::chrono::system_clock::now() + 300ms).ok());
  CHECK(rows("SELECT count(*) FROM renewal_member") == 2);
  // No call of the service after it: the row goes at its untilMs all the same.
  CHECK(test::eventually([&] { return rows("SELECT count(*) FROM renewal_member") == 1; }, 3000));
  auto members = renewal.members(set_id);
  REQUIRE(members.ok());
  REQUIRE(members->size() == 1);
  CHECK(members->front().lease.resource == "kept");
  // Its lease may go into another set now.
  auto other = renewal.create_set("owner", 60'000);
  REQUIRE(other.ok());
  CHECK(renewal.add(other->id, soon, 10'000, std::chrono::system_clock::now() + 60s).ok());
}
