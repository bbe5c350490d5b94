// The lease protocol over RPC against an in-process LeaseManager: every method's round trip, bad
// input refused without effect, roles, events with the holder as key, conflicts and waiting grants.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <future>
#include <mutex>
#include <set>
#include <thread>

#include "djinn/core/events.h"
#include "djinn/core/fault.h"
#include "djinn/core/sqlite.h"
#include "djinn/lease/client.h"
#include "djinn/lease/service.h"
#include "djinn/proto/lease.capnp.h"
#include "support/test_support.h"

using namespace djinn;
using namespace djinn::lease;
using namespace std::chrono_literals;

namespace {

struct Harness {
  explicit Harness(security::Role plaintext_role = security::Role::kAdmin) {
    LeaseManagerOptions o;
    o.data_dir = dir.file("lease");
    o.policy.max_duration = 60s;
    o.policy.default_duration = 30s;
    o.plaintext_role = plaintext_role;
    auto m = LeaseManager::start(o);
    REQUIRE_MESSAGE(m.ok(), m.status().to_string());
    manager = std::move(*m);
    client = std::make_unique<LeaseClient>(rpc::ClientOptions{.endpoint = manager->rpc_endpoint()});
  }
  test::TempDir dir;
  std::unique_ptr<LeaseManager> manager;
  std::unique_ptr<LeaseClient> client;
};

GrantRequest grant_of(std::string resource, std::string holder, Kind kind = Kind::kShared, int64_t ms = 10'000) {
  GrantRequest r;
  r.resource = std::move(resource);
  r.holder = std::move(holder);
  r.kind = kind;
  r.duration_ms = ms;
  return r;
}

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Every lease event the manager publishes, as (kind, key, lease ref, and the id on the wire).
struct EventLog {
  struct Seen {
    std::string kind;
    std::string key;
    LeaseRef ref;
    LeaseId wire_id;  // 0: events never hand out the capability
    std::string requested_by;
  };
  explicit EventLog(Harness& h) : sub({.endpoint = h.manager->events_endpoint()}) {
    for (const char* k : {"lease.granted", "lease.renewed", "lease.cancelled", "lease.expired", "lease.conflict"}) {
      sub.subscribe(k);
    }
    sub.on_event([this](const events::Event& e) {
      auto reader = e.reader();  // owns what the root points into
      auto ev = reader.getRoot<proto::LeaseEvent>();
      std::lock_guard lock(mu);
      seen.push_back({e.kind, e.key, ev.getLease().getRef(), ev.getLease().getId(), ev.getRequestedBy().cStr()});
    });
    REQUIRE(sub.start().ok());
    // PUB/SUB drops what is published before the subscription arrives: grant until one is seen.
    REQUIRE(test::eventually([&] {
      REQUIRE(h.client->grant(grant_of("warmup", "warmup")).ok());
      return count("lease.granted", "warmup") > 0;
    }));
    REQUIRE(h.client->cancel_all_of_holder("warmup").ok());
    REQUIRE(test::eventually([&] { return count("lease.cancelled", "warmup") > 0; }));
    std::this_thread::sleep_for(50ms);  // let the last warm-up cancellations drain
    std::lock_guard lock(mu);
    seen.clear();
  }
  ~EventLog() { sub.stop(); }
  size_t count(const std::string& kind, const std::string& key, LeaseId id = 0) {
    std::lock_guard lock(mu);
    size_t n = 0;
    for (const auto& s : seen) n += s.kind == kind && s.key == key && (id == 0 || s.ref == lease_ref(id));
    return n;
  }
  std::vector<Seen> snapshot() {
    std::lock_guard lock(mu);
    return seen;
  }
  events::Subscriber sub;
  std::mutex mu;  // guards seen
  std::vector<Seen> seen;
};

rpc::Reply raw_grant(LeaseClient& c, const std::function<void(proto::GrantParams::Builder)>& fill) {
  capnp::MallocMessageBuilder m;
  auto p = m.initRoot<proto::GrantParams>();
  p.setResource("r");
  p.setHolder("h");
  p.setDurationMs(1000);
  fill(p);
  return c.rpc().call("lease.grant", m);
}

}  // namespace

TEST_CASE("every lease method round-trips over RPC") {
  Harness h;
  LeaseClient& c = *h.client;
  int64_t before = now_ms();
  auto a = c.grant(grant_of("printer", "alice", Kind::kShared, 5000));
  REQUIRE_MESSAGE(a.ok(), a.status().to_string());
  CHECK(a->lease.id != 0);
  CHECK(a->lease.resource == "printer");
  CHECK(a->lease.holder == "alice");
  CHECK(a->lease.kind == Kind::kShared);
  CHECK(a->lease.granted_ms == 5000);
  CHECK(a->lease.expiration_ms >= before + 5000);
  CHECK(a->landlord == h.manager->rpc_endpoint());
  auto b = c.grant(grant_of("printer", "bob", Kind::kSharedCopy, -1));  // ANY: the policy's default
  REQUIRE(b.ok());
  CHECK(b->lease.granted_ms == 30'000);
  auto big = c.grant(grant_of("scanner", "alice", Kind::kExclusive, 3'600'000));  // above the maximum
  REQUIRE(big.ok());
  CHECK(big->lease.granted_ms == 60'000);

  auto got = c.get(a->lease.id);
  REQUIRE(got.ok());
  CHECK(got->lease.expiration_ms == a->lease.expiration_ms);

  auto renewed = c.renew(a->lease.id, 20'000);
  REQUIRE(renewed.ok());
  CHECK(renewed->lease.granted_ms == 20'000);
  CHECK(renewed->lease.expiration_ms > a->lease.expiration_ms);
  CHECK(c.get(a->lease.id)->lease.expiration_ms == renewed->lease.expiration_ms);

  auto of_alice = c.holder_snapshot("alice");
  REQUIRE(of_alice.ok());
  CHECK(of_alice->leases.size() == 2);
  CHECK(of_alice->event_seq >= 3);  // three grants and a renewal were published
  CHECK(of_alice->kind_seqs.size() == 5);
  auto on_printer = c.leases_of_resource("printer");
  REQUIRE(on_printer.ok());
  CHECK(on_printer->size() == 2);
  CHECK(c.leases_of_resource("nothing-here")->empty());

  std::vector<RenewRequest> batch{{a->lease.id, 10'000}, {b->lease.id, kDurationAny}, {999'999, 1000}};
  auto results = c.renew_batch(batch);
  REQUIRE(results.size() == 3);
  CHECK(results[0].ok());
  CHECK(results[0]->granted_ms == 10'000);
  CHECK(results[1].ok());
  CHECK(results[2].status().code() == Code::kNotFound);

  std::vector<LeaseId> ids{b->lease.id, 999'999};
  auto cancelled = c.cancel_batch(ids);
  REQUIRE(cancelled.size() == 2);
  CHECK(cancelled[0].ok());
  CHECK(cancelled[1].code() == Code::kNotFound);
  CHECK(c.get(b->lease.id).status().code() == Code::kNotFound);

  CHECK(c.cancel(a->lease.id).ok());
  CHECK(c.get(a->lease.id).status().code() == Code::kNotFound);
  CHECK(c.cancel(a->lease.id).code() == Code::kNotFound);

  auto all = c.cancel_all_of_holder("alice");
  REQUIRE(all.ok());
  REQUIRE(all->leases.size() == 1);
  CHECK(all->total == 1);
  CHECK(all->leases[0].id == big->lease.id);
  CHECK(c.leases_of_holder("alice")->empty());
  CHECK(h.manager->landlord().size() == 0);
}

TEST_CASE("renewals that arrive while another change is written wait for it, then apply in order") {
  Harness h;
  auto a = h.client->grant(grant_of("printer", "alice", Kind::kShared, 10'000));
  REQUIRE(a.ok());
  // A write holding the engine: a renewal cannot be made on the server's I/O thread meanwhile,
  // and goes to the renewal group commit, which waits for it.
  std::atomic<bool> inside{false}, release{false};
  std::thread writer([&] {
    CHECK(h.manager->landlord()
              .transact(sqlite::Sync::kNormal,
                        [&](sqlite::Database&) {
                          inside = true;
                          while (!release) std::this_thread::sleep_for(1ms);
                          return Status::Ok();
                        })
              .ok());
  });
  while (!inside) std::this_thread::sleep_for(1ms);
  // Two renewals in flight on one connection, which keeps their order on the wire.
  rpc::Client raw({.endpoint = h.manager->rpc_endpoint()});
  auto renew = [&](int64_t ms) {
    capnp::MallocMessageBuilder message;
    auto p = message.initRoot<proto::RenewParams>();
    p.setId(a->lease.id);
    p.setDurationMs(ms);
    return raw.call_async("lease.renew", message, {.timeout = 30s});
  };
  auto first = renew(20'000);
  auto second = renew(40'000);
  // Other calls go on meanwhile.
  CHECK(h.client->get(a->lease.id).ok());
  CHECK(first.wait_for(100ms) == std::future_status::timeout);
  release = true;
  writer.join();
  auto granted_ms = [](std::future<rpc::Reply>& f) -> int64_t {
    rpc::Reply r = f.get();
    REQUIRE_MESSAGE(r.ok(), r.status().to_string());
    return r.results<proto::LeaseResult>().getLease().getGrantedMs();
  };
  CHECK(granted_ms(first) == 20'000);
  CHECK(granted_ms(second) == 40'000);
  CHECK(h.client->get(a->lease.id)->lease.granted_ms == 40'000);
  // With the engine free again, a renewal is answered at once.
  auto r3 = h.client->renew(a->lease.id, 30'000, {.timeout = 2s});
  REQUIRE(r3.ok());
  CHECK(h.client->get(a->lease.id)->lease.granted_ms == 30'000);
}

TEST_CASE("a grant resent with its idempotency key is applied once") {
  Harness h;
  rpc::CallOptions call;
  call.idempotency_key = "grant-once";
  auto first = h.client->grant(grant_of("disk", "carol"), call);
  auto again = h.client->grant(grant_of("disk", "carol"), call);
  REQUIRE(first.ok());
  REQUIRE(again.ok());
  CHECK(first->lease.id == again->lease.id);
  CHECK(h.manager->landlord().size() == 1);
}

TEST_CASE("bad input gets a clear status and changes nothing") {
  Harness h;
  LeaseClient& c = *h.client;
  auto kept = c.grant(grant_of("kept", "dave"));
  REQUIRE(kept.ok());
  auto check = [](const Status& st, Code code, const char* words) {
    CHECK_MESSAGE(st.code() == code, st.to_string());
    CHECK_MESSAGE(st.message().find(words) != std::string::npos, st.to_string());
  };
  check(c.grant(grant_of("", "dave")).status(), Code::kInvalidArgument, "resource is empty");
  check(c.grant(grant_of(std::string(1025, 'r'), "dave")).status(), Code::kInvalidArgument, "at most 1024");
  check(c.grant(grant_of("r", std::string(257, 'h'))).status(), Code::kInvalidArgument, "at most 256");
  check(c.grant(grant_of("r", "")).status(), Code::kInvalidArgument, "holder is empty");
  check(c.grant(grant_of("r", "dave", Kind::kShared, 0)).status(), Code::kInvalidArgument, "must be > 0");
  check(c.grant(grant_of("r", "dave", Kind::kShared, -5)).status(), Code::kInvalidArgument, "-5 ms");
  check(c.grant(grant_of("r", "dave", Kind::kShared, -2)).status(), Code::kPermissionDenied, "FOREVER");
  check(raw_grant(c, [](auto p) { p.setKind(static_cast<proto::LeaseKind>(9)); }).status(), Code::kInvalidArgument,
        "lease kind 9");
  check(raw_grant(c, [](auto p) { p.setWaitMs(-1); }).status(), Code::kInvalidArgument, "waitMs -1");
  check(raw_grant(c, [](auto p) { p.setResource(capnp::Text::Reader("a\0b", 3)); }).status(), Code::kInvalidArgument, "NUL");

  check(c.renew(0, 1000).status(), Code::kInvalidArgument, "lease id 0");
  check(c.renew(kept->lease.id, 0).status(), Code::kInvalidArgument, "renewal duration 0");
  check(c.get(0).status(), Code::kInvalidArgument, "lease id 0");
  check(c.cancel(0), Code::kInvalidArgument, "lease id 0");
  check(c.leases_of_holder("").status(), Code::kInvalidArgument, "holder is empty");
  check(c.leases_of_resource(std::string(2000, 'x')).status(), Code::kInvalidArgument, "at most 1024");

  std::vector<RenewRequest> too_many(10'001, RenewRequest{kept->lease.id, 1000});
  check(c.renew_batch(too_many)[0].status(), Code::kResourceExhausted, "at most 10000");
  std::vector<LeaseId> too_many_ids(10'001, kept->lease.id);
  check(c.cancel_batch(too_many_ids)[0], Code::kResourceExhausted, "at most 10000");
  std::vector<RenewRequest> mixed{{0, 1000}, {kept->lease.id, -7}};
  auto items = c.renew_batch(mixed);
  check(items[0].status(), Code::kInvalidArgument, "lease id 0");
  check(items[1].status(), Code::kInvalidArgument, "-7 ms");
  std::vector<LeaseId> zero{0};
  check(c.cancel_batch(zero)[0], Code::kInvalidArgument, "lease id 0");

  // Nothing changed: the one lease is there as it was, and nothing else was granted.
  CHECK(h.manager->landlord().size() == 1);
  auto still = c.get(kept->lease.id);
  REQUIRE(still.ok());
  CHECK(still->lease.expiration_ms == kept->lease.expiration_ms);
}

TEST_CASE("a malformed payload is refused with INVALID_ARGUMENT") {
  Harness h;
  for (const char* method : {"lease.grant", "lease.renew", "lease.renewBatch", "renewal.add"}) {
    auto words = kj::heapArray<capnp::word>(2);
    std::memset(words.begin(), 0, 16);
    uint32_t table[2] = {0, 1000};  // one segment of 1000 words, of which one arrives
    std::memcpy(words.begin(), table, sizeof table);
    std::promise<rpc::Reply> done;
    h.client->rpc().call_async_raw(method, std::move(words), {}, [&](rpc::Reply r) { done.set_value(std::move(r)); });
    rpc::Reply reply = done.get_future().get();
    CHECK_MESSAGE(reply.status().code() == Code::kInvalidArgument, method, ": ", reply.status().to_string());
  }
  CHECK(h.manager->landlord().size() == 0);
}

TEST_CASE("cancelHolder and the lists of leases need the service role") {
  Harness client_only(security::Role::kClient);
  auto a = client_only.client->grant(grant_of("r1", "erin"));
  REQUIRE(a.ok());
  // The lists would hand a client the ids (capabilities) of leases it was never granted.
  for (const Status& refused : {client_only.client->cancel_all_of_holder("erin").status(),
                                client_only.client->expire_all_of_holder("erin", 1000ms).status(),
                                client_only.client->leases_of_holder("erin").status(),
                                client_only.client->leases_of_resource("r1").status()}) {
    CHECK(refused.code() == Code::kPermissionDenied);
    CHECK_MESSAGE(refused.message().find("needs role service") != std::string::npos, refused.to_string());
  }
  auto still = client_only.client->get(a->lease.id);
  REQUIRE(still.ok());
  CHECK(still->lease.expiration_ms == a->lease.expiration_ms);
  CHECK(client_only.client->cancel(a->lease.id).ok());  // a client may cancel a lease

  Harness node(security::Role::kService);
  REQUIRE(node.client->grant(grant_of("r1", "erin")).ok());
  CHECK(node.client->leases_of_holder("erin")->size() == 1);
  CHECK(node.client->leases_of_resource("r1")->size() == 1);
  auto cancelled = node.client->cancel_all_of_holder("erin");
  REQUIRE(cancelled.ok());
  CHECK(cancelled->leases.size() == 1);
}

TEST_CASE("a reserved resource: lease.grant refuses it, and changing its leases needs the owner's role") {
  // As lookup reserves its registrations: granted by lookup.register, renewed and cancelled by services.
  auto landlord = Landlord::open(LandlordOptions{});
  REQUIRE(landlord.ok());
  rpc::ServerOptions so;
  so.plaintext_role = security::Role::kClient;
  rpc::Server server(so);
  LandlordService service(**landlord, server, nullptr, "");
  service.reserve("demo.registration", "demo.register", security::Role::kService);
  REQUIRE(server.start().ok());
  LeaseClient client({.endpoint = server.endpoints().front()});

  // An exclusive lease here would hold up every registration after it.
  auto taken = client.grant(grant_of("demo.registration", "mallory", Kind::kExclusive));
  CHECK(taken.status().code() == Code::kPermissionDenied);
  CHECK_MESSAGE(taken.status().message().find("demo.register") != std::string::npos, taken.status().to_string());
  auto owned = (*landlord)->grant(grant_of("demo.registration", "printer"));  // as its owner grants it
  REQUIRE(owned.ok());
  CHECK(client.cancel(owned->id).code() == Code::kPermissionDenied);
  CHECK(client.renew(owned->id, 1000).status().code() == Code::kPermissionDenied);
  const LeaseId ids[] = {owned->id};
  CHECK(client.cancel_batch(ids).at(0).code() == Code::kPermissionDenied);
  const RenewRequest renewals[] = {{owned->id, 1000}};
  CHECK(client.renew_batch(renewals).at(0).status().code() == Code::kPermissionDenied);
  auto still = (*landlord)->find(owned->id);
  REQUIRE(still.has_value());
  CHECK(still->expiration_ms == owned->expiration_ms);
  // Other resources are as before.
  auto other = client.grant(grant_of("demo.other", "erin"));
  REQUIRE(other.ok());
  CHECK(client.cancel(other->lease.id).ok());
  server.stop();
}

TEST_CASE("cancelHolder with a grace period: the holder's leases end then, and only it may grant meanwhile") {
  Harness h;
  LeaseClient& c = *h.client;
  auto printer = c.grant(grant_of("printer", "app-7", Kind::kExclusive, 60'000));
  auto port = c.grant(grant_of("port-80", "app-7", Kind::kShared, 60'000));
  auto soon = c.grant(grant_of("lamp", "app-7", Kind::kShared, 1000));
  auto other = c.grant(grant_of("fan", "someone-else", Kind::kExclusive, 60'000));
  REQUIRE((printer.ok() && port.ok() && soon.ok() && other.ok()));

  for (int64_t bad : {-1L, 60'001L}) {
    capnp::MallocMessageBuilder message;
    auto p = message.initRoot<proto::CancelHolderParams>();
    p.setHolder("app-7");
    p.setGraceMs(bad);
    rpc::Reply reply = c.rpc().call("lease.cancelHolder", message);
    CHECK(reply.status().code() == Code::kInvalidArgument);
    CHECK(reply.status().message().find("graceMs") != std::string::npos);
  }
  auto unchanged = c.get(printer->lease.id);
  REQUIRE(unchanged.ok());
  CHECK(unchanged->lease.expiration_ms == printer->lease.expiration_ms);

  int64_t before = now_ms();
  rpc::CallOptions keyed;
  keyed.idempotency_key = "migration-42-step-5";
  // A grace long enough for the calls below on a slow machine; the lamp ends before it anyway.
  auto expiring = c.expire_all_of_holder("app-7", 4000ms, keyed);
  REQUIRE(expiring.ok());
  REQUIRE(expiring->leases.size() == 3);
  CHECK(expiring->total == 3);
  for (const Lease& l : expiring->leases) {
    if (l.id == soon->lease.id) {
      CHECK(l.expiration_ms == soon->lease.expiration_ms);  // ends sooner anyway: unchanged
    } else {
      CHECK(l.expiration_ms >= before + 4000);
      CHECK(l.expiration_ms <= now_ms() + 4000);
      CHECK(l.granted_ms == 60'000);  // what to grant again
    }
  }
  // A resend of the same call (a reply lost on the way) gets the same list back.
  auto again = c.expire_all_of_holder("app-7", 4000ms, keyed);
  REQUIRE(again.ok());
  CHECK(again->leases.size() == 3);
  auto untouched = c.get(other->lease.id);
  REQUIRE(untouched.ok());
  CHECK(untouched->lease.expiration_ms == other->lease.expiration_ms);

  // Meanwhile nobody else gets the exclusive printer; the same holder (on its new node) does.
  GrantRequest thief = grant_of("printer", "thief", Kind::kExclusive);
  CHECK(c.grant(thief).status().code() == Code::kFailedPrecondition);
  auto regranted = c.grant(grant_of("printer", "app-7", Kind::kExclusive, 60'000));
  REQUIRE(regranted.ok());
  CHECK(test::eventually([&] {
    auto held = c.leases_of_holder("app-7");
    return held.ok() && held->size() == 1 && held->front().id == regranted->lease.id;
  }, 10'000));
  CHECK(c.grant(thief).status().code() == Code::kFailedPrecondition);  // held again, by the new lease
}

TEST_CASE("events arrive for grant, renew, cancel and expiry with the holder as key") {
  Harness h;
  EventLog log(h);
  LeaseClient& c = *h.client;
  auto a = c.grant(grant_of("fan", "frank"));
  REQUIRE(a.ok());
  REQUIRE(c.renew(a->lease.id, 5000).ok());
  REQUIRE(c.cancel(a->lease.id).ok());
  auto brief = c.grant(grant_of("lamp", "grace", Kind::kShared, 100));
  REQUIRE(brief.ok());
  CHECK(test::eventually([&] { return log.count("lease.cancelled", "frank", a->lease.id) == 1; }));
  CHECK(log.count("lease.granted", "frank", a->lease.id) == 1);
  CHECK(log.count("lease.renewed", "frank", a->lease.id) == 1);
  CHECK(test::eventually([&] { return log.count("lease.expired", "grace", brief->lease.id) == 1; }, 3000));
  CHECK(log.count("lease.granted", "grace", brief->lease.id) == 1);
  // An id lets whoever knows it renew or cancel: no event, which any subscriber reads, carries one.
  for (const auto& s : log.snapshot()) {
    CHECK(s.wire_id == 0);
    CHECK(s.ref != 0);
  }
  CHECK(lease_ref(a->lease.id) != lease_ref(brief->lease.id));
  // A list says where the streams stood: every event so far is at or below its numbers.
  auto snap = c.holder_snapshot("frank");
  REQUIRE(snap.ok());
  CHECK(snap->leases.empty());
  for (const auto& [kind, seq] : snap->kind_seqs) {
    if (kind == "lease.granted") CHECK(seq >= 2);
    if (kind == "lease.expired") CHECK(seq >= 1);
  }
}

TEST_CASE("an exclusive lease refuses a conflicting grant and hands over to a waiting one") {
  Harness h;
  EventLog log(h);
  LeaseClient& c = *h.client;
  auto held = c.grant(grant_of("door", "heidi", Kind::kExclusive));
  REQUIRE(held.ok());
  auto refused = c.grant(grant_of("door", "ivan", Kind::kExclusive));
  CHECK(refused.status().code() == Code::kFailedPrecondition);
  CHECK(refused.status().message().find("heidi") != std::string::npos);
  // The lease in the way is named by its ref: its id would let the refused caller cancel it.
  CHECK(refused.status().message().find(public_ref_hex(held->lease.id)) != std::string::npos);
  CHECK(refused.status().message().find(std::to_string(held->lease.id)) == std::string::npos);
  CHECK(c.grant(grant_of("door", "ivan", Kind::kInterest)).ok());  // interest is compatible
  CHECK(test::eventually([&] { return log.count("lease.conflict", "heidi", held->lease.id) >= 1; }));
  for (const auto& s : log.snapshot()) {
    if (s.kind == "lease.conflict") CHECK(s.requested_by == "ivan");
  }

  GrantRequest waiting = grant_of("door", "judy", Kind::kExclusive);
  waiting.wait = 5s;
  auto start = std::chrono::steady_clock::now();
  auto pending = std::async(std::launch::async, [&] { return c.grant(waiting); });
  CHECK(pending.wait_for(300ms) == std::future_status::timeout);  // still waiting for heidi
  REQUIRE(c.cancel(held->lease.id).ok());
  auto got = pending.get();
  REQUIRE_MESSAGE(got.ok(), got.status().to_string());
  CHECK(got->lease.holder == "judy");
  CHECK(std::chrono::steady_clock::now() - start < 4s);

  // A wait that runs out is refused, not left hanging.
  GrantRequest brief = grant_of("door", "mallory", Kind::kExclusive);
  brief.wait = 200ms;
  auto late = c.grant(brief);
  CHECK(late.status().code() != Code::kOk);
  CHECK(c.leases_of_resource("door")->size() == 2);  // judy's exclusive and ivan's interest
}

TEST_CASE("leases survive a restart of the manager") {
  test::TempDir dir;
  LeaseManagerOptions o;
  o.data_dir = dir.file("lease");
  Lease granted;
  {
    auto m = LeaseManager::start(o);
    REQUIRE(m.ok());
    LeaseClient c({.endpoint = (*m)->rpc_endpoint()});
    auto a = c.grant(grant_of("vault", "kim"));
    REQUIRE(a.ok());
    granted = a->lease;
  }
  auto m = LeaseManager::start(o);
  REQUIRE(m.ok());
  LeaseClient c({.endpoint = (*m)->rpc_endpoint()});
  auto again = c.get(granted.id);
  REQUIRE(again.ok());
  CHECK(again->lease.expiration_ms == granted.expiration_ms);
  CHECK(again->lease.holder == "kim");
}

TEST_CASE("a grant resent with its key to a restarted manager gets the lease it was granted") {
  // The RPC server's reply cache is gone with the process; the key stored with the lease is not.
  test::TempDir dir;
  LeaseManagerOptions o;
  o.data_dir = dir.file("lease");
  const rpc::CallOptions call{.idempotency_key = "grant-of-vault"};
  Lease granted;
  {
    auto m = LeaseManager::start(o);
    REQUIRE(m.ok());
    LeaseClient c({.endpoint = (*m)->rpc_endpoint()});
    auto a = c.grant(grant_of("vault", "kim", Kind::kExclusive), call);
    REQUIRE(a.ok());
    granted = a->lease;
  }
  auto m = LeaseManager::start(o);
  REQUIRE(m.ok());
  LeaseClient c({.endpoint = (*m)->rpc_endpoint()});
  auto resent = c.grant(grant_of("vault", "kim", Kind::kExclusive), call);
  REQUIRE_MESSAGE(resent.ok(), resent.status().to_string());
  CHECK(resent->lease.id == granted.id);
  CHECK(resent->lease.expiration_ms == granted.expiration_ms);
  CHECK((*m)->landlord().size() == 1);
  // A new key grants.
  CHECK(c.grant(grant_of("safe", "kim")).ok());
  CHECK((*m)->landlord().size() == 2);
}

TEST_CASE("a second manager on the same data directory is refused, saying why") {
  test::TempDir dir;
  LeaseManagerOptions o;
  o.data_dir = dir.file("lease");
  auto first = LeaseManager::start(o);
  REQUIRE(first.ok());
  auto second = LeaseManager::start(o);
  REQUIRE_FALSE(second.ok());
  CHECK(second.status().code() == Code::kUnavailable);
  CHECK(second.status().message().find("in use by another process") != std::string::npos);
  // The first goes on serving.
  LeaseClient c({.endpoint = (*first)->rpc_endpoint()});
  CHECK(c.grant(grant_of("vault", "kim")).ok());
}

TEST_CASE("a holder's leases past a reply's size come in pages, and cancelHolder ends them all") {
  Harness h;
  // 14,000 leases of one holder on one resource, both names at their longest: some 19 MiB as one
  // list, over a client's frame limit (16 MiB).
  const std::string resource(1024, 'r');
  const std::string holder(256, 'h');
  constexpr size_t kLeases = 14'000;
  std::set<LeaseId> granted;
  for (size_t done = 0; done < kLeases; done += 1000) {
    std::vector<GrantRequest> batch(1000, grant_of(resource, holder, Kind::kShared, 60'000));
    for (const Result<Lease>& l : h.manager->landlord().grant_batch(batch)) {
      REQUIRE_MESSAGE(l.ok(), l.status().to_string());
      granted.insert(l->id);
    }
  }
  REQUIRE(granted.size() == kLeases);

  // One page by hand: it fits, and says more follow.
  capnp::MallocMessageBuilder message;
  message.initRoot<proto::HolderParams>().setHolder(holder);
  rpc::Reply first = h.client->rpc().call("lease.holderLeases", message);
  REQUIRE_MESSAGE(first.ok(), first.status().to_string());
  auto page = first.results<proto::LeaseList>();
  CHECK(page.getMore());
  CHECK(page.getTotal() == kLeases);
  CHECK(page.getLeases().size() > 0);
  CHECK(page.getLeases().size() < kLeases);
  CHECK(page.getKindSeqs().size() == 5);

  // The client reads every page: each lease once.
  for (auto list : {h.client->leases_of_holder(holder), h.client->leases_of_resource(resource)}) {
    REQUIRE_MESSAGE(list.ok(), list.status().to_string());
    CHECK(list->size() == kLeases);
    std::set<LeaseId> listed;
    for (const Lease& l : *list) listed.insert(l.id);
    CHECK(listed == granted);
  }

  // All of them end; the reply lists what fits and counts the rest.
  auto ended = h.client->cancel_all_of_holder(holder);
  REQUIRE_MESSAGE(ended.ok(), ended.status().to_string());
  CHECK(ended->total == kLeases);
  CHECK(ended->leases.size() > 0);
  CHECK(ended->leases.size() < kLeases);
  for (const Lease& l : ended->leases) CHECK(granted.count(l.id) == 1);
  CHECK(h.manager->landlord().size() == 0);
  auto none = h.client->leases_of_holder(holder);
  REQUIRE(none.ok());
  CHECK(none->empty());
}

namespace {

// Holds the first durable write of the landlord (and every change behind it) until release().
class HeldCommits {
 public:
  HeldCommits() {
    fault::arm_call("lease.landlord.before_commit", [this] {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return released_; });
    });
  }
  ~HeldCommits() { release(); }
  void release() {
    {
      std::lock_guard lock(mu_);
      released_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool released_ = false;
};

}  // namespace

TEST_CASE("a grant that waited in the queue waits no longer than its caller's deadline for the resource") {
  Harness h;
  auto held = h.client->grant(grant_of("printer", "a", Kind::kExclusive));
  REQUIRE(held.ok());
  // Both threads that carry out waiting grants are held 700 ms: one at its durable write, the other
  // behind it, so the third grant, B's, waits in their queue.
  HeldCommits hold;
  rpc::Client raw({.endpoint = h.manager->rpc_endpoint()});
  auto waiting_grant = [&](const std::string& resource, const std::string& holder, std::chrono::milliseconds timeout) {
    capnp::MallocMessageBuilder msg;
    auto p = msg.initRoot<proto::GrantParams>();
    p.setResource(resource);
    p.setHolder(holder);
    p.setKind(proto::LeaseKind::EXCLUSIVE);
    p.setDurationMs(10'000);
    p.setWaitMs(60'000);
    return raw.call_async("lease.grant", msg, {.timeout = timeout});
  };
  auto first = waiting_grant("d1", "x", 10s);
  auto second = waiting_grant("d2", "x", 10s);
  std::this_thread::sleep_for(100ms);
  auto b = waiting_grant("printer", "b", 1000ms);  // its caller gives up 1 s from now
  std::this_thread::sleep_for(700ms);
  hold.release();
  // The printer frees after B's caller gave up: B must not get it then.
  std::this_thread::sleep_for(500ms);
  REQUIRE(h.client->cancel(held->lease.id).ok());
  CHECK(b.get().status().code() == Code::kDeadlineExceeded);
  CHECK(first.get().ok());
  CHECK(second.get().ok());
  fault::disarm_all();
  std::this_thread::sleep_for(300ms);
  auto now_held = h.client->leases_of_resource("printer");
  REQUIRE(now_held.ok());
  CHECK(now_held->empty());  // no lease granted to a caller that is gone
}

TEST_CASE("grants that may wait are queued up to a bound; past it UNAVAILABLE, and the queued ones are granted") {
  Harness h;
  // The threads that carry out waiting grants are held at their first durable write.
  HeldCommits hold;
  rpc::Client raw({.endpoint = h.manager->rpc_endpoint()});
  constexpr int kCalls = 1400;
  std::vector<std::future<rpc::Reply>> replies;
  for (int i = 0; i < kCalls; ++i) {
    capnp::MallocMessageBuilder msg;
    auto p = msg.initRoot<proto::GrantParams>();
    p.setResource("room-" + std::to_string(i));
    p.setHolder("queue");
    p.setKind(proto::LeaseKind::SHARED);
    p.setDurationMs(10'000);
    p.setWaitMs(1'000);
    replies.push_back(raw.call_async("lease.grant", msg, {.timeout = 30s}));
  }
  auto answered = [&] {
    return std::count_if(replies.begin(), replies.end(), [](auto& r) { return r.wait_for(0s) == std::future_status::ready; });
  };
  // Past the bound (1,024 queued, one held on each of the two threads) answered while the rest wait.
  REQUIRE(test::eventually([&] { return answered() >= kCalls - 1024 - 2; }));
  std::this_thread::sleep_for(200ms);
  auto answered_while_held = answered();
  hold.release();
  int granted = 0, refused = 0;
  for (auto& r : replies) {
    rpc::Reply got = r.get();
    if (got.ok()) {
      ++granted;
      continue;
    }
    ++refused;
    CHECK_MESSAGE(got.status().code() == Code::kUnavailable, got.status().to_string());
    CHECK(got.status().message().find("retry") != std::string::npos);
  }
  fault::disarm_all();
  CHECK(refused == answered_while_held);
  CHECK(granted == kCalls - refused);
  CHECK(granted >= 1024);
  CHECK(h.client->leases_of_holder("queue")->size() == static_cast<size_t>(granted));
}
