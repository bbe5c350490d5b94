// LookupCache against real lookup services in-process: listener calls for every transition, exact
// re-sync after lost events, deduplication across two registrars, a registrar restart on the same
// data directory and ports, answers from memory with the registrar gone, and bad input from a
// registrar that lies.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "djinn/core/model_capnp.h"
#include "djinn/lookup/client.h"
#include "djinn/lookup/lookup_cache.h"
#include "djinn/lookup/service.h"
#include "djinn/proto/lookup.capnp.h"
#include "support/test_support.h"

using namespace djinn;
using namespace djinn::lookup;
using namespace std::chrono_literals;

namespace {

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// One lookup service on loopback, restartable on the same data directory and ports.
struct Lookup {
  explicit Lookup(bool fixed_ports = false) {
    options.data_dir = dir.file("lookup");
    options.name = "lookup-test";
    if (fixed_ports) {
      options.rpc_endpoint = "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port());
      options.events_endpoint = "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port());
    }
    start();
  }
  void start() {
    auto s = LookupService::start(options);
    REQUIRE_MESSAGE(s.ok(), s.status().to_string());
    service = std::move(*s);
    client = std::make_unique<RegistrarClient>(rpc::ClientOptions{.endpoint = service->rpc_endpoint()});
  }
  void stop() {
    client.reset();
    service.reset();
  }
  const std::string& endpoint() const { return service->rpc_endpoint(); }

  Registered add(const ServiceItem& item, int64_t lease_ms = lease::kDurationAny) {
    auto r = client->register_service(item, lease_ms);
    REQUIRE_MESSAGE(r.ok(), r.status().to_string());
    return *r;
  }
  void cancel(const Registered& r) {
    Status st = client->cancel(r.item.lease.id);
    REQUIRE_MESSAGE(st.ok(), st.to_string());
  }
  std::vector<ServiceItem> truth(const ServiceTemplate& tmpl) {
    auto many = client->lookup_all(tmpl, kMaxMatches);
    REQUIRE_MESSAGE(many.ok(), many.status().to_string());
    return many->items;
  }

  test::TempDir dir;
  LookupServiceOptions options;
  std::unique_ptr<LookupService> service;
  std::unique_ptr<RegistrarClient> client;
};

ServiceTemplate printers_on(int floor) {
  ServiceTemplate t;
  t.interface_types = {"test.Printer"};
  t.attributes = {Template{"test.Location", {{"floor", Value(floor)}}}};
  return t;
}

Entry location(int floor, const std::string& room) {
  return Entry{"test.Location", {}, {{"floor", Value(floor)}, {"room", Value(room)}}};
}

ServiceItem printer(const std::string& name, ServiceId id = ServiceId::random(), int floor = 3,
                    const std::string& room = "r1", const std::string& rpc = "tcp://10.0.0.1:7001") {
  ServiceItem item;
  item.service_id = id;
  item.interface_types = {"test.Printer"};
  item.attributes = {Entry{"djinn.attr.Name", {}, {{"name", Value(name)}}}, location(floor, room)};
  item.endpoints = Endpoints{rpc, ""};
  return item;
}

std::string name_of(const ServiceItem& item) {
  for (const Entry& e : item.attributes) {
    if (e.type == "djinn.attr.Name") {
      const Value* v = e.field("name");
      if (v && v->type() == ValueType::kText) return v->as_text();
    }
  }
  return item.service_id.to_string();
}

std::string room_of(const ServiceItem& item) {
  for (const Entry& e : item.attributes) {
    if (e.type == "test.Location") {
      const Value* v = e.field("room");
      if (v && v->type() == ValueType::kText) return v->as_text();
    }
  }
  return "";
}

// Every listener call, as "added a", "changed a", "removed a", with the items.
struct Recorder {
  struct Call {
    std::string text;
    ServiceItem before, after;
  };
  void attach(LookupCacheOptions& o) {
    o.on_added = [this](const ServiceItem& item) { push({"added " + name_of(item), {}, item}); };
    o.on_changed = [this](const ServiceItem& before, const ServiceItem& after) {
      push({"changed " + name_of(after), before, after});
    };
    o.on_removed = [this](const ServiceItem& item) { push({"removed " + name_of(item), item, {}}); };
  }
  void push(Call c) {
    std::lock_guard lock(mu);
    calls.push_back(std::move(c));
  }
  std::vector<std::string> texts() {
    std::lock_guard lock(mu);
    std::vector<std::string> out;
    for (const Call& c : calls) out.push_back(c.text);
    return out;
  }
  Call at(size_t i) {
    std::lock_guard lock(mu);
    return calls.at(i);
  }
  size_t size() {
    std::lock_guard lock(mu);
    return calls.size();
  }
  // Waits until exactly `expected` has been called (in order) and checks it.
  void expect(const std::vector<std::string>& expected, int timeout_ms = 5000) {
    bool got = test::eventually([&] { return size() >= expected.size(); }, timeout_ms);
    std::vector<std::string> now = texts();
    std::string joined;
    for (const std::string& t : now) joined += (joined.empty() ? "" : ", ") + t;
    INFO("listener calls: " << joined);
    CHECK(got);
    CHECK(now == expected);
  }
  // As expect(), in any order: changes made in a burst may reach the cache through one re-sync
  // (events lost while a new subscription joins), whose additions come in no particular order.
  void expect_any_order(std::vector<std::string> expected, int timeout_ms = 5000) {
    bool got = test::eventually([&] { return size() >= expected.size(); }, timeout_ms);
    std::vector<std::string> now = texts();
    std::string joined;
    for (const std::string& t : now) joined += (joined.empty() ? "" : ", ") + t;
    INFO("listener calls: " << joined);
    CHECK(got);
    std::sort(now.begin(), now.end());
    std::sort(expected.begin(), expected.end());
    CHECK(now == expected);
  }
  std::mutex mu;  // guards calls
  std::vector<Call> calls;
};

// Items without their lease's expiration, which renewals move without any event.
std::map<ServiceId, ServiceItem> comparable(const std::vector<ServiceItem>& items) {
  std::map<ServiceId, ServiceItem> out;
  for (ServiceItem item : items) {
    item.lease.expiration_ms = 0;
    out[item.service_id] = std::move(item);
  }
  return out;
}

// The cache equals the registrar's answer.
bool exact(const LookupCache& cache, Lookup& lookup, const ServiceTemplate& tmpl) {
  return comparable(cache.items()) == comparable(lookup.truth(tmpl));
}

std::set<ServiceId> ids_of(const std::vector<ServiceItem>& items) {
  std::set<ServiceId> out;
  for (const ServiceItem& item : items) out.insert(item.service_id);
  return out;
}

std::unique_ptr<LookupCache> start_cache(LookupCacheOptions o) {
  auto cache = LookupCache::start(std::move(o));
  REQUIRE_MESSAGE(cache.ok(), cache.status().to_string());
  REQUIRE((*cache)->wait_ready(5s));
  return std::move(*cache);
}

RegistrarState state_of(const LookupCache& cache, const std::string& endpoint) {
  for (const RegistrarState& s : cache.registrars()) {
    if (s.endpoint == endpoint) return s;
  }
  FAIL("the cache does not watch " << endpoint);
  return {};
}

}  // namespace

TEST_CASE("listeners see every transition once, in order") {
  Lookup lookup;
  ServiceTemplate tmpl = printers_on(3);
  Recorder rec;
  LookupCacheOptions o;
  o.tmpl = tmpl;
  o.registrars = {lookup.endpoint()};
  o.notify_lease_ms = 5000;
  rec.attach(o);
  auto cache = start_cache(std::move(o));
  CHECK(cache->size() == 0);

  // register -> added
  ServiceItem a = printer("a");
  Registered ra = lookup.add(a);
  rec.expect({"added a"});
  REQUIRE(cache->find(a.service_id).has_value());
  CHECK(comparable({*cache->find(a.service_id)}) == comparable({ra.item}));

  // modifyAttributes keeping the match -> changed (room r1 -> r2)
  std::vector<AttributeChange> to_r2 = {{Template{"test.Location", {{"floor", Value(3)}}}, location(3, "r2")}};
  REQUIRE(lookup.client->modify_attributes(ra.item.lease.id, to_r2).ok());
  rec.expect({"added a", "changed a"});
  CHECK(room_of(rec.at(1).before) == "r1");
  CHECK(room_of(rec.at(1).after) == "r2");

  // modifyAttributes breaking the match -> removed
  std::vector<AttributeChange> to_floor4 = {{Template{"test.Location", {}}, location(4, "r2")}};
  REQUIRE(lookup.client->modify_attributes(ra.item.lease.id, to_floor4).ok());
  rec.expect({"added a", "changed a", "removed a"});
  CHECK(room_of(rec.at(2).before) == "r2");
  CHECK(cache->size() == 0);

  // registered again matching -> added; replaced with a new endpoint (a migrated app) -> changed
  ra = lookup.add(a);
  rec.expect({"added a", "changed a", "removed a", "added a"});
  ServiceItem moved = a;
  moved.endpoints.rpc = "tcp://10.0.0.2:7001";
  Registered rm = lookup.add(moved);
  CHECK(rm.replaced);
  rec.expect({"added a", "changed a", "removed a", "added a", "changed a"});
  CHECK(rec.at(4).before.endpoints.rpc == "tcp://10.0.0.1:7001");
  CHECK(rec.at(4).after.endpoints.rpc == "tcp://10.0.0.2:7001");

  // replaced with the same content: only the lease differs, no listener call, new lease shown
  Registered same = lookup.add(moved);
  CHECK(same.item.lease.id != rm.item.lease.id);
  CHECK(test::eventually([&] {
    auto now = cache->find(a.service_id);
    return now && now->lease.id == same.item.lease.id;
  }));

  // cancel -> removed
  lookup.cancel(same);
  rec.expect({"added a", "changed a", "removed a", "added a", "changed a", "removed a"});

  // a lease that is not renewed expires -> removed
  ServiceItem b = printer("b");
  lookup.add(b, 300);
  rec.expect({"added a", "changed a", "removed a", "added a", "changed a", "removed a", "added b"});
  rec.expect({"added a", "changed a", "removed a", "added a", "changed a", "removed a", "added b", "removed b"}, 5000);
  CHECK(cache->size() == 0);
  CHECK(exact(*cache, lookup, tmpl));
  LookupCacheStats stats = cache->stats();
  CHECK(stats.bad_input == 0);
  CHECK(stats.notify_registrations == 1);

  // Stopping cancels the notify registration at the registrar.
  CHECK(lookup.service->landlord().leases_of_resource(kNotifyResource).size() == 1);
  cache.reset();
  CHECK(lookup.service->landlord().leases_of_resource(kNotifyResource).empty());
}

TEST_CASE("lost events are detected and a re-sync leaves the cache exact") {
  Lookup lookup;
  ServiceTemplate tmpl = printers_on(3);
  Recorder rec;
  std::atomic<int> drop_next{0};  // events still to drop
  std::atomic<int> dropped{0};
  LookupCacheOptions o;
  o.tmpl = tmpl;
  o.registrars = {lookup.endpoint()};
  o.audit_interval = 200ms;
  o.drop_events_for_test = [&](const events::Event&) {
    if (drop_next.load() <= 0) return false;
    drop_next--;
    dropped++;
    return true;
  };
  rec.attach(o);
  auto cache = start_cache(std::move(o));

  Registered ra = lookup.add(printer("a"));
  Registered rb = lookup.add(printer("b"));
  Registered rc = lookup.add(printer("c"));
  rec.expect_any_order({"added a", "added b", "added c"});
  uint64_t snapshots = cache->stats().snapshots;

  SUBCASE("lost at the tail of a burst: the audit finds the stream behind") {
    drop_next = 3;
    std::vector<AttributeChange> to_r2 = {{Template{"test.Location", {}}, location(3, "r2")}};
    REQUIRE(lookup.client->modify_attributes(ra.item.lease.id, to_r2).ok());
    lookup.cancel(rb);
    lookup.add(printer("d"));
    REQUIRE(test::eventually([&] { return dropped.load() == 3; }));
    // Nothing follows the lost events, so only the audit can reveal them.
    REQUIRE(test::eventually([&] { return exact(*cache, lookup, tmpl); }, 5000));
    CHECK(cache->size() == 3);
    // The listeners' net effect: a changed, b removed, d added (in the reconcile's order).
    REQUIRE(test::eventually([&] { return rec.size() == 6; }));
    std::vector<std::string> after = rec.texts();
    std::multiset<std::string> net(after.begin() + 3, after.end());
    CHECK(net == std::multiset<std::string>{"changed a", "removed b", "added d"});
    for (size_t i = 3; i < 6; ++i) {
      if (rec.at(i).text == "changed a") CHECK(room_of(rec.at(i).after) == "r2");
    }
  }

  SUBCASE("lost in the middle: the next event's number reveals it") {
    drop_next = 1;
    lookup.cancel(rc);  // lost
    REQUIRE(test::eventually([&] { return dropped.load() == 1; }));
    lookup.add(printer("e"));  // arrives numbered one too far
    REQUIRE(test::eventually([&] { return exact(*cache, lookup, tmpl); }, 5000));
    REQUIRE(test::eventually([&] { return rec.size() == 5; }));
    std::vector<std::string> after = rec.texts();
    std::multiset<std::string> net(after.begin() + 3, after.end());
    CHECK(net == std::multiset<std::string>{"removed c", "added e"});
  }

  LookupCacheStats stats = cache->stats();
  CHECK(stats.gaps >= 1);
  CHECK(stats.snapshots > snapshots);
  CHECK(stats.bad_input == 0);
  CHECK(stats.notify_registrations == 1);  // a gap needs a snapshot, not a new registration
  // Nothing more comes after the re-sync.
  CHECK(exact(*cache, lookup, tmpl));
}

TEST_CASE("two registrars: one entry per ServiceID, removed when the last one drops it") {
  Lookup l1, l2;
  ServiceTemplate tmpl = printers_on(3);
  Recorder rec;
  LookupCacheOptions o;
  o.tmpl = tmpl;
  o.registrars = {l1.endpoint(), l2.endpoint()};
  rec.attach(o);
  auto cache = start_cache(std::move(o));
  REQUIRE(cache->registrars().size() == 2);

  ServiceItem s = printer("s");
  Registered s1 = l1.add(s);
  rec.expect({"added s"});
  // The same service at the second registrar: still one entry, no call (only the lease differs).
  Registered s2 = l2.add(s);
  REQUIRE(test::eventually([&] { return state_of(*cache, l2.endpoint()).items == 1; }));
  CHECK(cache->size() == 1);

  l2.add(printer("t"));
  rec.expect({"added s", "added t"});
  CHECK(cache->size() == 2);

  // A change at one registrar: its copy is now the most recent, and shown.
  std::vector<AttributeChange> to_r2 = {{Template{"test.Location", {}}, location(3, "r2")}};
  REQUIRE(l1.client->modify_attributes(s1.item.lease.id, to_r2).ok());
  rec.expect({"added s", "added t", "changed s"});
  CHECK(room_of(*cache->find(s.service_id)) == "r2");

  // Cancelled where the copy shown came from: the other registrar's copy is shown instead.
  l1.cancel(s1);
  rec.expect({"added s", "added t", "changed s", "changed s"});
  CHECK(room_of(rec.at(3).before) == "r2");
  CHECK(room_of(rec.at(3).after) == "r1");
  REQUIRE(cache->find(s.service_id).has_value());
  CHECK(cache->find(s.service_id)->lease.id == s2.item.lease.id);

  // Cancelled in both: removed, once.
  l2.cancel(s2);
  rec.expect({"added s", "added t", "changed s", "changed s", "removed s"});
  CHECK(cache->size() == 1);

  // Registrars come and go at run time (as discovery will feed them).
  cache->remove_registrar(l2.endpoint());
  rec.expect({"added s", "added t", "changed s", "changed s", "removed s", "removed t"});
  CHECK(cache->registrars().size() == 1);
  CHECK(cache->size() == 0);
  REQUIRE(cache->add_registrar(l2.endpoint()).ok());
  REQUIRE(cache->add_registrar(l2.endpoint()).ok());  // already watched: nothing happens
  CHECK(cache->wait_ready(5s));
  rec.expect({"added s", "added t", "changed s", "changed s", "removed s", "removed t", "added t"});
  CHECK(cache->registrars().size() == 2);

  // A service in both, then one registrar dropped from the cache: the item stays.
  ServiceItem u = printer("u");
  l1.add(u);
  l2.add(u);
  REQUIRE(test::eventually([&] { return state_of(*cache, l1.endpoint()).items == 1 && state_of(*cache, l2.endpoint()).items == 2; }));
  cache->remove_registrar(l1.endpoint());
  CHECK(cache->find(u.service_id).has_value());
  rec.expect({"added s", "added t", "changed s", "changed s", "removed s", "removed t", "added t", "added u"});

  std::set<ServiceId> truth = ids_of(l2.truth(tmpl));
  CHECK(ids_of(cache->items()) == truth);
  CHECK(!cache->add_registrar("not an endpoint").ok());
}

TEST_CASE("a registrar restarted on the same data and ports: the cache re-syncs and stays exact") {
  Lookup lookup(/*fixed_ports=*/true);
  ServiceTemplate tmpl = printers_on(3);
  Recorder rec, quiet_rec;
  LookupCacheOptions o;
  o.tmpl = tmpl;
  o.registrars = {lookup.endpoint()};
  o.notify_lease_ms = 10'000;
  o.call_timeout = 500ms;
  LookupCacheOptions q = o;
  o.audit_interval = 200ms;
  rec.attach(o);
  auto cache = start_cache(std::move(o));
  // This one never audits in this test: only its event stream can tell it of a restart.
  q.audit_interval = 3600s;
  quiet_rec.attach(q);
  auto quiet = start_cache(std::move(q));

  Registered ra = lookup.add(printer("a"));
  // d's registration lapses while the registrar is down: nothing will announce it.
  Registered rd = lookup.add(printer("d"), 1500);
  rec.expect_any_order({"added a", "added d"});
  quiet_rec.expect_any_order({"added a", "added d"});

  lookup.stop();
  REQUIRE(test::eventually([&] { return now_ms() > rd.item.lease.expiration_ms + 100; }, 5000));
  lookup.start();

  // The audit finds the stream's numbers went back (a new publisher): the cache registers notify
  // again and takes a snapshot, which no longer holds d.
  rec.expect({"added a", "added d", "removed d"}, 8000);
  CHECK(exact(*cache, lookup, tmpl));
  CHECK(cache->stats().restarts >= 1);
  CHECK(cache->stats().notify_registrations >= 2);
  // Its old notify registration was cancelled, not left to lapse (the quiet cache's remains).
  CHECK(test::eventually([&] { return lookup.service->landlord().leases_of_resource(kNotifyResource).size() == 2; }));

  // The next event (or heartbeat) of the new incarnation tells the quiet cache, through the
  // registration it still holds there.
  lookup.add(printer("c"));
  rec.expect({"added a", "added d", "removed d", "added c"});
  REQUIRE(test::eventually([&] { return quiet_rec.size() == 4; }, 8000));
  std::vector<std::string> seen = quiet_rec.texts();
  CHECK(std::multiset<std::string>(seen.begin() + 2, seen.end()) == std::multiset<std::string>{"removed d", "added c"});
  CHECK(quiet->stats().restarts >= 1);
  CHECK(exact(*quiet, lookup, tmpl));

  // Both registrations deliver events again.
  lookup.cancel(ra);
  rec.expect({"added a", "added d", "removed d", "added c", "removed a"});
  REQUIRE(test::eventually([&] { return quiet_rec.size() == 5; }));
  CHECK(quiet_rec.texts().back() == "removed a");
  CHECK(exact(*cache, lookup, tmpl));
  CHECK(exact(*quiet, lookup, tmpl));
  CHECK(state_of(*cache, lookup.endpoint()).synced);
  CHECK(cache->stats().bad_input == 0);
  CHECK(quiet->stats().bad_input == 0);
}

TEST_CASE("a cache holds every match however many replies its snapshot takes") {
  Lookup lookup;
  ServiceTemplate tmpl;
  tmpl.interface_types = {"test.Printer"};
  // 300 items of 60 KB: the snapshot is three replies or more.
  for (int i = 0; i < 300; ++i) {
    ServiceItem item = printer("p" + std::to_string(i));
    item.attributes.push_back(Entry{"test.Manual", {}, {{"text", Value(std::string(60'000, 'm'))}}});
    lookup.add(item);
  }
  LookupCacheOptions o;
  o.tmpl = tmpl;
  o.registrars = {lookup.endpoint()};
  auto cache = start_cache(std::move(o));
  CHECK(cache->size() == 300);
  CHECK(cache->lookup_many(tmpl, 1000).size() == 300);
}

TEST_CASE("lookups are answered from memory, even with the registrar gone") {
  auto lookup = std::make_unique<Lookup>();
  ServiceTemplate tmpl = printers_on(3);
  Recorder rec;
  LookupCacheOptions o;
  o.tmpl = tmpl;
  o.registrars = {lookup->endpoint()};
  o.audit_interval = 200ms;
  o.call_timeout = 300ms;
  rec.attach(o);
  auto cache = start_cache(std::move(o));
  ServiceItem a = printer("a", ServiceId::random(), 3, "r1");
  ServiceItem b = printer("b", ServiceId::random(), 3, "r7");
  lookup->add(a);
  lookup->add(b);
  rec.expect_any_order({"added a", "added b"});
  std::string endpoint = lookup->endpoint();

  lookup.reset();  // the registrar is gone
  CHECK(test::eventually([&] { return !state_of(*cache, endpoint).reachable; }));

  CHECK(cache->size() == 2);
  CHECK(cache->lookup().has_value());
  ServiceTemplate in_r7;
  in_r7.attributes = {Template{"test.Location", {{"room", Value("r7")}}}};
  auto found = cache->lookup(in_r7);
  REQUIRE(found.has_value());
  CHECK(found->service_id == b.service_id);
  ServiceTemplate by_id;
  by_id.service_id = a.service_id;
  CHECK(cache->lookup(by_id)->service_id == a.service_id);
  CHECK(cache->lookup_many({}, 10).size() == 2);
  CHECK(cache->lookup_many({}, 1).size() == 1);
  ServiceTemplate nothing;
  nothing.interface_types = {"test.Scanner"};
  CHECK(!cache->lookup(nothing).has_value());
  CHECK(cache->items().size() == 2);
  CHECK(rec.size() == 2);  // an unreachable registrar removes nothing

  // Stopping with the registrar gone is still prompt (the cancel is best effort).
  auto begin = std::chrono::steady_clock::now();
  cache.reset();
  CHECK(std::chrono::steady_clock::now() - begin < 3s);
}

namespace {

// A registrar that speaks the protocol but publishes what the test tells it to.
struct FakeRegistrar {
  FakeRegistrar() : publisher(events::PublisherOptions{}), server(rpc::ServerOptions{}) {
    REQUIRE(publisher.start().ok());
    server.method<proto::NotifyParams, proto::NotifyResult>(
        "lookup.notify", [this](const rpc::CallContext&, proto::NotifyParams::Reader, proto::NotifyResult::Builder out) {
          out.setId(kId);
          out.setExpirationMs(now_ms() + 60'000);
          out.setEventKind(notify_event_kind(kId));
          out.setEventsEndpoint(publisher.endpoints().at(0));
          out.setLandlord(server.endpoints().at(0));
          return Status::Ok();
        });
    server.method<proto::LookupManyParams, proto::LookupManyResult>(
        "lookup.lookupMany",
        [this](const rpc::CallContext&, proto::LookupManyParams::Reader p, proto::LookupManyResult::Builder out) {
          if (endless_pages) {
            // One new item a page, each after the last, and always more, slowly.
            std::this_thread::sleep_for(100ms);
            uint64_t after = p.hasAfterId() ? from_capnp(p.getAfterId())->lo() : 0;
            if (p.getMaxMatches() == 0) return Status::Ok();
            to_capnp(printer("endless", ServiceId::from_halves(0, after + 1)), out.initItems(1)[0]);
            out.setTotalMatches(1'000'000);
            out.setMore(true);
            return Status::Ok();
          }
          std::lock_guard lock(mu);
          size_t n = std::min<size_t>(p.getMaxMatches(), items.size());
          auto list = out.initItems(static_cast<unsigned>(n));
          for (size_t i = 0; i < n; ++i) to_capnp(items[i], list[static_cast<unsigned>(i)]);
          out.setTotalMatches(items.size());
          out.setEventSeq(publisher.last_seq(notify_event_kind(kId)));
          return Status::Ok();
        });
    REQUIRE(server.start().ok());
  }
  // Publishes an event and updates the truth the snapshots tell, in one step.
  void publish_added(const ServiceItem& item) {
    std::lock_guard lock(mu);
    items.push_back(item);
    capnp::MallocMessageBuilder message;
    auto ev = message.initRoot<proto::NotifyEvent>();
    ev.setNotifyId(kId);
    ev.setTransition(proto::Transition::NO_MATCH_TO_MATCH);
    to_capnp(item.service_id, ev.initServiceId());
    to_capnp(item, ev.initItem());
    publisher.publish(notify_event_kind(kId), item.service_id.to_string(), message);
  }
  void publish_raw(capnp::MessageBuilder* message, const std::string& key) {
    std::lock_guard lock(mu);
    if (message) {
      publisher.publish(notify_event_kind(kId), key, *message);
    } else {
      publisher.publish(notify_event_kind(kId), key);
    }
  }
  static constexpr uint64_t kId = 7;
  std::atomic<bool> endless_pages{false};  // lookupMany answers a page of one new item, forever
  std::mutex mu;  // guards items and orders publishing with snapshots
  std::vector<ServiceItem> items;
  events::Publisher publisher;
  rpc::Server server;
};

}  // namespace

TEST_CASE("bad events are counted and logged, never applied, never fatal") {
  FakeRegistrar fake;
  ServiceTemplate tmpl = printers_on(3);
  Recorder rec;
  LookupCacheOptions o;
  o.tmpl = tmpl;
  o.registrars = {fake.server.endpoints().at(0)};
  o.audit_interval = 200ms;
  o.call_timeout = 500ms;
  rec.attach(o);
  auto cache = start_cache(std::move(o));

  // First a good one, so the subscription is known to be live.
  ServiceItem x = printer("x");
  fake.publish_added(x);
  rec.expect({"added x"});

  // Each bad event costs a re-sync (the change it carried is unknown), whose snapshot covers the
  // events published after it: so one at a time, each seen before the next goes out.
  auto expect_rejected = [&](const std::function<void()>& publish, uint64_t count = 1) {
    LookupCacheStats before = cache->stats();
    publish();
    CHECK(test::eventually([&] {
      LookupCacheStats now = cache->stats();
      return now.bad_input >= before.bad_input + count && now.snapshots > before.snapshots;
    }));
  };
  // No payload at all.
  expect_rejected([&] { fake.publish_raw(nullptr, "k"); });
  // Another message type where a NotifyEvent belongs.
  expect_rejected([&] {
    capnp::MallocMessageBuilder wrong;
    auto p = wrong.initRoot<proto::LookupManyParams>();
    p.setMaxMatches(12345);
    p.setNotifyId(999);
    fake.publish_raw(&wrong, "k");
  });
  // An event of another notify registration.
  ServiceItem y = printer("y");
  expect_rejected([&] {
    capnp::MallocMessageBuilder other;
    auto ev = other.initRoot<proto::NotifyEvent>();
    ev.setNotifyId(8);
    ev.setTransition(proto::Transition::NO_MATCH_TO_MATCH);
    to_capnp(y, ev.initItem());
    fake.publish_raw(&other, y.service_id.to_string());
  });
  // An item that does not match the template, announced as a match.
  ServiceItem z = printer("z", ServiceId::random(), 9);
  expect_rejected([&] {
    capnp::MallocMessageBuilder off;
    auto ev = off.initRoot<proto::NotifyEvent>();
    ev.setNotifyId(FakeRegistrar::kId);
    ev.setTransition(proto::Transition::NO_MATCH_TO_MATCH);
    to_capnp(z, ev.initItem());
    fake.publish_raw(&off, z.service_id.to_string());
  });
  // A snapshot holding an item that does not match: left out, counted.
  expect_rejected([&] {
    {
      std::lock_guard lock(fake.mu);
      fake.items.push_back(z);
    }
    fake.publish_raw(nullptr, "k");  // forces the re-sync that reads it
  }, 2);
  // Still working: a good event is applied, and only the truth that matches is held.
  ServiceItem w = printer("w");
  fake.publish_added(w);
  rec.expect({"added x", "added w"});
  CHECK(ids_of(cache->items()) == std::set<ServiceId>{x.service_id, w.service_id});
  CHECK(cache->stats().snapshots >= 6);
}

TEST_CASE("a cache holds at most max_items of a registrar: events past them are refused, audits do not re-sync") {
  FakeRegistrar fake;
  Recorder rec;
  LookupCacheOptions o;
  o.tmpl = printers_on(3);
  o.registrars = {fake.server.endpoints().at(0)};
  o.audit_interval = 100ms;
  o.call_timeout = 500ms;
  o.max_items = 3;
  rec.attach(o);
  auto cache = start_cache(std::move(o));
  std::vector<ServiceItem> sent;
  for (int i = 0; i < 5; ++i) sent.push_back(printer("p" + std::to_string(i)));
  fake.publish_added(sent[0]);
  rec.expect({"added p0"});
  for (int i = 1; i < 5; ++i) fake.publish_added(sent[i]);
  CHECK(test::eventually([&] { return cache->stats().bad_input >= 2; }));
  CHECK(cache->size() == 3);
  // The registrar holds 5, the cache the 3 it may: the audits see a full cache, not lost events.
  LookupCacheStats before = cache->stats();
  std::this_thread::sleep_for(500ms);
  CHECK(cache->stats().snapshots == before.snapshots);
  CHECK(cache->size() == 3);
}

TEST_CASE("stop cuts short a snapshot that pages on and on") {
  FakeRegistrar fake;
  fake.endless_pages = true;
  LookupCacheOptions o;
  o.tmpl = printers_on(3);
  o.registrars = {fake.server.endpoints().at(0)};
  auto started_cache = LookupCache::start(std::move(o));
  REQUIRE(started_cache.ok());
  auto& cache = *started_cache;
  std::this_thread::sleep_for(500ms);  // a few pages in
  CHECK(!cache->ready());
  auto started = std::chrono::steady_clock::now();
  cache->stop();
  // Between two pages: one page's wait at most, and the notify cancel (answered at once here).
  CHECK(std::chrono::steady_clock::now() - started < 1500ms);
  // Cut short by the cache itself: no failure of the registrar's.
  CHECK(cache->stats().rpc_failures == 0);
}

TEST_CASE("bad options are refused with a clear status") {
  LookupCacheOptions o;
  o.registrars = {"127.0.0.1:7000"};
  auto bad_endpoint = LookupCache::start(o);
  REQUIRE(!bad_endpoint.ok());
  CHECK(bad_endpoint.status().code() == Code::kInvalidArgument);

  LookupCacheOptions l;
  l.notify_lease_ms = 0;
  CHECK(!LookupCache::start(l).ok());

  LookupCacheOptions t;
  t.tmpl.interface_types = {"not a type"};
  CHECK(!LookupCache::start(t).ok());

  for (size_t bad : {size_t{0}, kMaxMatches + 1}) {
    LookupCacheOptions m;
    m.max_items = bad;
    CHECK(LookupCache::start(m).status().code() == Code::kInvalidArgument);
  }

  // No registrars: ready at once, empty.
  auto empty = LookupCache::start(LookupCacheOptions{});
  REQUIRE(empty.ok());
  CHECK((*empty)->ready());
  CHECK((*empty)->size() == 0);
  // An endpoint ZeroMQ refuses: retried in the background, never fatal, never ready.
  CHECK((*empty)->add_registrar("tcp://127.0.0.1:notaport").ok());
  CHECK(test::eventually([&] { return (*empty)->stats().rpc_failures >= 2; }));
  CHECK(!(*empty)->ready());
  CHECK(!(*empty)->wait_ready(10ms));
  CHECK(!(*empty)->add_registrar("tcp://127.0.0.1:7000", "short-key").ok());
  (*empty)->stop();
  CHECK(!(*empty)->add_registrar("tcp://127.0.0.1:1").ok());  // stopped for good
}
