// The registrar over RPC against an in-process LookupService on real sockets: the template
// matching rules (a table), the transitions notify reports for every kind of change, bad input
// refused without effect, roles, and persistence across a restart.
#include <doctest/doctest.h>

#include <atomic>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "djinn/core/events.h"
#include "djinn/core/fault.h"
#include "djinn/core/model_capnp.h"
#include "djinn/lookup/client.h"
#include "djinn/lookup/service.h"
#include "djinn/proto/lookup.capnp.h"
#include "support/test_support.h"

using namespace djinn;
using namespace djinn::lookup;
using namespace std::chrono_literals;

namespace {

struct Harness {
  explicit Harness(security::Role plaintext_role = security::Role::kAdmin, std::string data = "lookup")
      : data_dir(dir.file(data)) {
    start(plaintext_role);
  }
  void start(security::Role plaintext_role = security::Role::kAdmin) {
    LookupServiceOptions o;
    o.data_dir = data_dir;
    o.policy.max_duration = 60s;
    o.policy.default_duration = 30s;
    o.policy.min_duration = 50ms;
    o.plaintext_role = plaintext_role;
    o.groups = {"public", "lab"};
    auto s = LookupService::start(o);
    REQUIRE_MESSAGE(s.ok(), s.status().to_string());
    service = std::move(*s);
    client = std::make_unique<RegistrarClient>(rpc::ClientOptions{.endpoint = service->rpc_endpoint()});
  }
  void stop() {
    client.reset();
    service.reset();
  }
  test::TempDir dir;
  std::string data_dir;
  std::unique_ptr<LookupService> service;
  std::unique_ptr<RegistrarClient> client;
};

Entry entry(std::string type, Fields fields, std::vector<std::string> supertypes = {}) {
  Entry e;
  e.type = std::move(type);
  e.fields = std::move(fields);
  e.supertypes = std::move(supertypes);
  return e;
}

Template tmpl(std::string type, Fields fields = {}) { return Template{std::move(type), std::move(fields)}; }

ServiceItem item(std::vector<std::string> types, std::vector<Entry> attributes) {
  ServiceItem i;
  i.service_id = ServiceId::random();
  i.interface_types = std::move(types);
  i.attributes = std::move(attributes);
  i.endpoints = Endpoints{"tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"};
  return i;
}

Registered must_register(RegistrarClient& c, const ServiceItem& i, int64_t ms = 30'000) {
  auto r = c.register_service(i, ms);
  REQUIRE_MESSAGE(r.ok(), r.status().to_string());
  return *r;
}

std::string name_of(const ServiceItem& i) {
  for (const Entry& e : i.attributes) {
    if (e.type == "djinn.attr.Name") return e.field("name")->as_text();
  }
  return "?";
}

// Notify events of one registration, collected from a real subscriber.
struct Watcher {
  Watcher(const NotifyHandle& handle) : sub(events::SubscriberOptions{.endpoint = handle.events_endpoint}) {
    sub.subscribe(handle.event_kind);
    sub.on_event([this](const events::Event& e) {
      auto ev = decode_notify_event(e);
      REQUIRE_MESSAGE(ev.ok(), ev.status().to_string());
      std::lock_guard lock(mu);
      got.push_back({*ev, e.seq});
    });
    sub.on_gap([this](const events::Gap& g) {
      if (g.expected != 0) gaps++;
    });
    REQUIRE(sub.start().ok());
  }
  size_t count() {
    std::lock_guard lock(mu);
    return got.size();
  }
  std::pair<NotifyEvent, uint64_t> at(size_t i) {
    std::lock_guard lock(mu);
    return got.at(i);
  }
  events::Subscriber sub;
  std::mutex mu;
  std::vector<std::pair<NotifyEvent, uint64_t>> got;
  std::atomic<int> gaps{0};
};

}  // namespace

TEST_CASE("template matching: a table of cases against a real registrar") {
  Harness h;
  ServiceItem a = item({"demo.Printer", "demo.Device"},
                       {entry("demo.Location", {{"building", Value("B1")}, {"floor", Value(2)}}, {"demo.Place"}),
                        entry("djinn.attr.Name", {{"name", Value("laser")}})});
  ServiceItem b = item({"demo.Printer"}, {entry("demo.Location", {{"building", Value("B2")}, {"floor", Value(2)}}, {"demo.Place"}),
                                          entry("djinn.attr.Name", {{"name", Value("inkjet")}})});
  ServiceItem c = item({"demo.Scanner", "demo.Device"},
                       {entry("djinn.attr.Name", {{"name", Value("scan")}}), entry("demo.Capacity", {{"pages", Value(10)}})});
  for (const ServiceItem& i : {a, b, c}) must_register(*h.client, i);

  struct Case {
    const char* what;
    ServiceTemplate t;
    std::set<std::string> expect;  // names; "lookup" is the registrar's own item
  };
  auto with_id = [](ServiceId id, std::vector<std::string> types = {}) {
    ServiceTemplate t;
    t.service_id = id;
    t.interface_types = std::move(types);
    return t;
  };
  auto types = [](std::vector<std::string> t) { return ServiceTemplate{std::nullopt, std::move(t), {}}; };
  auto attrs = [](std::vector<Template> t, std::vector<std::string> ty = {}) {
    return ServiceTemplate{std::nullopt, std::move(ty), std::move(t)};
  };
  std::vector<Case> cases = {
      {"empty template: everything, the registrar included", ServiceTemplate{}, {"laser", "inkjet", "scan", "lookup"}},
      {"by ServiceID", with_id(a.service_id), {"laser"}},
      {"ServiceID and a type it lacks", with_id(a.service_id, {"demo.Scanner"}), {}},
      {"unknown ServiceID", with_id(ServiceId::random()), {}},
      {"one type", types({"demo.Printer"}), {"laser", "inkjet"}},
      {"all types must be implemented", types({"demo.Printer", "demo.Device"}), {"laser"}},
      {"a shared type", types({"demo.Device"}), {"laser", "scan"}},
      {"an unknown type", types({"demo.Fax"}), {}},
      {"the registrar's own type", types({"djinn.lookup.Registrar"}), {"lookup"}},
      {"attribute type only", attrs({tmpl("demo.Location")}), {"laser", "inkjet"}},
      {"attribute field", attrs({tmpl("demo.Location", {{"floor", Value(2)}})}), {"laser", "inkjet"}},
      {"attribute fields, all equal", attrs({tmpl("demo.Location", {{"building", Value("B1")}, {"floor", Value(2)}})}), {"laser"}},
      {"attribute fields, one differs", attrs({tmpl("demo.Location", {{"building", Value("B1")}, {"floor", Value(3)}})}), {}},
      {"supertype", attrs({tmpl("demo.Place")}), {"laser", "inkjet"}},
      {"supertype with a field", attrs({tmpl("demo.Place", {{"building", Value("B2")}})}), {"inkjet"}},
      {"any type with a field", attrs({tmpl("", {{"name", Value("scan")}})}), {"scan"}},
      {"null field is a wildcard", attrs({tmpl("demo.Location", {{"building", Value()}})}), {"laser", "inkjet"}},
      {"values compare by type: text 2 is not int 2", attrs({tmpl("demo.Location", {{"floor", Value("2")}})}), {}},
      {"values compare by type: float 10 is not int 10", attrs({tmpl("demo.Capacity", {{"pages", Value(10.0)}})}), {}},
      {"int 10", attrs({tmpl("demo.Capacity", {{"pages", Value(10)}})}), {"scan"}},
      {"field the entry lacks", attrs({tmpl("demo.Capacity", {{"colour", Value(true)}})}), {}},
      {"two attribute templates, each matched", attrs({tmpl("djinn.attr.Name", {{"name", Value("laser")}}), tmpl("demo.Location", {{"floor", Value(2)}})}), {"laser"}},
      {"attribute and type together", attrs({tmpl("djinn.attr.Name", {{"name", Value("scan")}})}, {"demo.Printer"}), {}},
      {"group of the registrar", attrs({tmpl("djinn.attr.Group", {{"name", Value("lab")}})}), {"lookup"}},
  };
  for (const Case& k : cases) {
    CAPTURE(k.what);
    auto many = h.client->lookup_many(k.t, 100);
    REQUIRE_MESSAGE(many.ok(), many.status().to_string());
    std::set<std::string> got;
    for (const ServiceItem& i : many->items) got.insert(name_of(i));
    CHECK(got == k.expect);
    CHECK(many->total == k.expect.size());
    auto one = h.client->lookup(k.t);
    REQUIRE(one.ok());
    CHECK(one->has_value() == !k.expect.empty());
    if (one->has_value()) CHECK(k.expect.count(name_of(**one)) == 1);
  }
  // A maximum below the total returns that many, and still the whole count.
  auto capped = h.client->lookup_many(ServiceTemplate{}, 2);
  REQUIRE(capped.ok());
  CHECK(capped->items.size() == 2);
  CHECK(capped->total == 4);
}

TEST_CASE("notify: transitions for register, replace, modify, cancel and expiry, numbered in order") {
  Harness h;
  ServiceTemplate t{std::nullopt, {"demo.Printer"}, {tmpl("djinn.attr.Name", {{"name", Value("laser")}})}};
  auto handle = h.client->notify(t, kAllTransitions, 30'000, "test");
  REQUIRE_MESSAGE(handle.ok(), handle.status().to_string());
  auto only_new = h.client->notify(t, kNoMatchToMatch, 30'000, "test");
  REQUIRE(only_new.ok());
  // Every subscriber sees every kind: the kind names the registration's ref, never its id, which
  // lets whoever knows it cancel the registration.
  CHECK(handle->event_kind == "lookup.notify." + public_ref_hex(handle->id));
  CHECK(handle->event_kind.find(std::to_string(handle->id)) == std::string::npos);
  Watcher w(*handle);
  Watcher w_new(*only_new);
  std::this_thread::sleep_for(200ms);  // PUB/SUB joins asynchronously: let the subscriptions land

  ServiceItem p = item({"demo.Printer"}, {entry("djinn.attr.Name", {{"name", Value("laser")}})});
  Registered r = must_register(*h.client, p);                         // nomatch -> match
  p.attributes.push_back(entry("demo.Location", {{"building", Value("B1")}}));
  r = must_register(*h.client, p);                                    // replace: match -> match
  CHECK(r.replaced);
  AttributeChange move{tmpl("demo.Location"), entry("demo.Location", {{"building", Value("B2")}})};
  REQUIRE(h.client->modify_attributes(r.item.lease.id, std::span(&move, 1)).ok());  // match -> match
  AttributeChange rename{tmpl("djinn.attr.Name"), entry("djinn.attr.Name", {{"name", Value("inkjet")}})};
  REQUIRE(h.client->modify_attributes(r.item.lease.id, std::span(&rename, 1)).ok());  // match -> nomatch
  AttributeChange back{tmpl("djinn.attr.Name"), entry("djinn.attr.Name", {{"name", Value("laser")}})};
  REQUIRE(h.client->modify_attributes(r.item.lease.id, std::span(&back, 1)).ok());  // nomatch -> match
  must_register(*h.client, item({"demo.Scanner"}, {entry("djinn.attr.Name", {{"name", Value("laser")}})}));  // none
  REQUIRE(h.client->cancel(r.item.lease.id).ok());                    // match -> nomatch, removed
  ServiceItem q = item({"demo.Printer"}, {entry("djinn.attr.Name", {{"name", Value("laser")}})});
  must_register(*h.client, q, 300);                                   // nomatch -> match, then expiry

  struct Want {
    Transition t;
    ServiceId id;
    bool removed;
  };
  std::vector<Want> want = {{kNoMatchToMatch, p.service_id, false}, {kMatchToMatch, p.service_id, false},
                            {kMatchToMatch, p.service_id, false},   {kMatchToNoMatch, p.service_id, false},
                            {kNoMatchToMatch, p.service_id, false}, {kMatchToNoMatch, p.service_id, true},
                            {kNoMatchToMatch, q.service_id, false}, {kMatchToNoMatch, q.service_id, true}};
  REQUIRE(test::eventually([&] { return w.count() >= want.size(); }, 5000));
  std::this_thread::sleep_for(100ms);
  CHECK(w.count() == want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    CAPTURE(i);
    auto [ev, seq] = w.at(i);
    CHECK(seq == i + 1);
    CHECK(ev.transition == want[i].t);
    CHECK(ev.item.service_id == want[i].id);
    CHECK(ev.removed == want[i].removed);
    CHECK(ev.notify_id == 0);
  }
  // The third event carries the moved location; the nomatch one the item as it was.
  CHECK(w.at(2).first.item.attributes.back().field("building")->as_text() == "B2");
  CHECK(name_of(w.at(3).first.item) == "laser");
  CHECK(w.gaps == 0);
  // The mask: only the three nomatch -> match transitions.
  REQUIRE(test::eventually([&] { return w_new.count() >= 3; }));
  std::this_thread::sleep_for(50ms);
  CHECK(w_new.count() == 3);
  for (size_t i = 0; i < w_new.count(); ++i) CHECK(w_new.at(i).first.transition == kNoMatchToMatch);

  // Cancelling the notify registration ends it: no more events.
  REQUIRE(h.client->cancel(handle->id).ok());
  REQUIRE(test::eventually([&] { return h.client->lookup_many(t, 1, handle->id)->event_seq == 0; }));
  must_register(*h.client, item({"demo.Printer"}, {entry("djinn.attr.Name", {{"name", Value("laser")}})}));
  std::this_thread::sleep_for(100ms);
  CHECK(w.count() == want.size());
}

TEST_CASE("queries are answered while a change's notify events go out") {
  Harness h;
  auto handle = h.client->notify(ServiceTemplate{std::nullopt, {"demo.Printer"}, {}}, kAllTransitions, 30'000);
  REQUIRE(handle.ok());
  Watcher w(*handle);
  REQUIRE(test::eventually([&] { return w.sub.heard(); }, 5000));
  // While the registration's events are published (to many registrations, this takes a while), a
  // lookup on another thread gets its answer; a snapshot then has the item and the number of its
  // event, though the event is not sent yet (a subscriber skips it as already in the snapshot).
  std::atomic<bool> answered{false}, answered_in_time{false};
  LookupMany snapshot;
  std::optional<std::thread> query;
  fault::arm_call("lookup.notify.publishing", [&] {
    if (query) return;
    query.emplace([&] {
      snapshot = h.service->registrar().lookup_many(ServiceTemplate{std::nullopt, {"demo.Printer"}, {}}, 10, handle->id);
      answered = true;
    });
    answered_in_time = test::eventually([&] { return answered.load(); }, 2000);
  });
  must_register(*h.client, item({"demo.Printer"}, {}));
  fault::disarm_all();
  REQUIRE(query);
  query->join();
  CHECK(answered_in_time);
  CHECK(snapshot.items.size() == 1);
  CHECK(snapshot.event_seq == 1);
  CHECK(test::eventually([&] { return w.count() == 1; }));
  CHECK(w.at(0).second == 1);
}

TEST_CASE("a lookup that walks a long list leaves the I/O thread to other calls, and answers rightly") {
  Harness h;
  // Two large groups that share no item: a template asking for both walks the smaller whole.
  // Registered in one batch (one commit), with leases far longer than the test.
  std::vector<ServiceItem> red;
  std::vector<RegisterRequest> batch;
  for (int i = 0; i < 1500; ++i) {
    red.push_back(item({"demo.Lamp"}, {entry("demo.Color", {{"c", Value("red")}})}));
    batch.push_back({red.back(), 60'000});
    batch.push_back({item({"demo.Lamp"}, {entry("demo.Shape", {{"s", Value("round")}})}), 60'000});
  }
  for (const auto& r : h.service->registrar().register_batch(batch)) REQUIRE_MESSAGE(r.ok(), r.status().to_string());
  ServiceTemplate both{std::nullopt, {}, {tmpl("demo.Color", {{"c", Value("red")}}), tmpl("demo.Shape", {{"s", Value("round")}})}};
  // While it walks, on the lookup threads, a lookup by ServiceID from another client is answered.
  RegistrarClient other({.endpoint = h.service->rpc_endpoint()});
  std::atomic<bool> answered_in_time{false};
  fault::arm_call("lookup.lookup.long", [&] {
    auto found = other.lookup(ServiceTemplate{red[7].service_id, {}, {}}, rpc::CallOptions{.timeout = 2000ms});
    answered_in_time = found.ok() && found->has_value();
  });
  auto none = h.client->lookup(both);
  fault::disarm_all();
  REQUIRE_MESSAGE(none.ok(), none.status().to_string());
  CHECK_FALSE(none->has_value());
  CHECK(answered_in_time);
  // A match among them is found, on the I/O thread or the lookup threads.
  ServiceItem purple = item({"demo.Lamp"}, {entry("demo.Color", {{"c", Value("red")}}), entry("demo.Shape", {{"s", Value("round")}})});
  must_register(*h.client, purple, 60'000);
  auto found = h.client->lookup(both);
  REQUIRE(found.ok());
  REQUIRE(found->has_value());
  CHECK((*found)->service_id == purple.service_id);
}

TEST_CASE("a registration gets in while long lookups keep coming on several threads") {
  Harness h;
  std::vector<RegisterRequest> batch;
  for (int i = 0; i < 4000; ++i) {
    batch.push_back({item({"demo.Lamp"}, {entry("demo.Color", {{"c", Value("red")}})}), 60'000});
    batch.push_back({item({"demo.Lamp"}, {entry("demo.Shape", {{"s", Value("round")}})}), 60'000});
  }
  for (const auto& r : h.service->registrar().register_batch(batch)) REQUIRE_MESSAGE(r.ok(), r.status().to_string());
  ServiceTemplate both{std::nullopt, {}, {tmpl("demo.Color", {{"c", Value("red")}}), tmpl("demo.Shape", {{"s", Value("round")}})}};
  // Four threads walk the 4,000 candidates over and over, as the lookup threads do under a stream
  // of such lookups: their holds of the registrar's lock overlap, so it is never free of readers.
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> walks{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t) {
    readers.emplace_back([&] {
      while (!stop) {
        h.service->registrar().visit_one(both, [](const ServiceItem&) {});
        walks++;
      }
    });
  }
  REQUIRE(test::eventually([&] { return walks.load() >= 8; }, 5000));
  auto registered = std::async(std::launch::async, [&] { return h.client->register_service(item({"demo.Printer"}, {}), 30'000); });
  bool in_time = registered.wait_for(3s) == std::future_status::ready;
  stop = true;
  for (auto& t : readers) t.join();
  CHECK_MESSAGE(in_time, "the registration waited for the readers to stop");
  auto r = registered.get();
  CHECK_MESSAGE(r.ok(), r.status().to_string());
}

TEST_CASE("a cancelled registration is gone when the cancel returns, and its event comes first") {
  Harness h;
  ServiceTemplate printers{std::nullopt, {"demo.Printer"}, {}};
  auto handle = h.client->notify(printers, kAllTransitions, 30'000, "test");
  REQUIRE(handle.ok());
  Watcher w(*handle);
  std::this_thread::sleep_for(200ms);  // PUB/SUB joins asynchronously: let the subscription land
  constexpr int kRounds = 100;
  for (int i = 0; i < kRounds; ++i) {
    CAPTURE(i);
    ServiceItem p = item({"demo.Printer"}, {entry("djinn.attr.Name", {{"name", Value("p" + std::to_string(i))}})});
    Registered r = must_register(*h.client, p);
    REQUIRE(h.client->cancel(r.item.lease.id).ok());
    ServiceTemplate by_id{p.service_id, {}, {}};
    auto found = h.client->lookup(by_id);
    REQUIRE(found.ok());
    CHECK_FALSE(found->has_value());
  }
  // Every registration's event, then its cancellation's, in that order.
  REQUIRE(test::eventually([&] { return w.count() >= 2 * kRounds; }, 5000));
  for (int i = 0; i < 2 * kRounds; ++i) {
    CAPTURE(i);
    auto [ev, seq] = w.at(static_cast<size_t>(i));
    CHECK(ev.transition == (i % 2 == 0 ? kNoMatchToMatch : kMatchToNoMatch));
    CHECK(ev.removed == (i % 2 == 1));
  }
}

TEST_CASE("a snapshot carries the event number it reflects") {
  Harness h;
  ServiceTemplate t{std::nullopt, {"demo.Printer"}, {}};
  auto handle = h.client->notify(t, kAllTransitions, 30'000);
  REQUIRE(handle.ok());
  for (int i = 0; i < 5; ++i) must_register(*h.client, item({"demo.Printer"}, {}));
  auto many = h.client->lookup_many(t, 100, handle->id);
  REQUIRE(many.ok());
  CHECK(many->items.size() == 5);
  CHECK(many->event_seq == 5);
}

TEST_CASE("lookupMany pages: replies stop short of 8 MiB, matches come in ServiceID order after a cursor") {
  Harness h;
  ServiceTemplate t{std::nullopt, {"demo.Big"}, {}};
  // 300 items of 60 KB: 18 MB, over the 16 MiB a client reads in one reply.
  std::vector<ServiceId> ids;
  for (int i = 0; i < 300; ++i) {
    ServiceItem it = item({"demo.Big"}, {entry("demo.Blob", {{"text", Value(std::string(60'000, 'a' + i % 26))}})});
    ids.push_back(must_register(*h.client, it).item.service_id);
  }
  std::sort(ids.begin(), ids.end());
  auto first = h.client->lookup_many(t, 300);
  REQUIRE_MESSAGE(first.ok(), first.status().to_string());
  CHECK(first->total == 300);
  CHECK(first->more);
  CHECK(first->items.size() < 300);
  CHECK(first->items.size() * 60'000 <= kMaxMatchesReplyBytes);
  for (size_t i = 0; i < first->items.size(); ++i) CHECK(first->items[i].service_id == ids[i]);

  // Page by page (a key given by the caller does not make every page the first).
  rpc::CallOptions keyed;
  keyed.idempotency_key = "the caller's";
  auto all = h.client->lookup_all(t, 1000, 0, keyed);
  REQUIRE_MESSAGE(all.ok(), all.status().to_string());
  CHECK(!all->more);
  REQUIRE(all->items.size() == 300);
  for (size_t i = 0; i < ids.size(); ++i) CHECK(all->items[i].service_id == ids[i]);

  // A page of ten after the hundredth; the maximum counts too; after the last, nothing.
  auto ten = h.client->lookup_page(t, 10, ids[99]);
  REQUIRE(ten.ok());
  REQUIRE(ten->items.size() == 10);
  CHECK(ten->items.front().service_id == ids[100]);
  CHECK(ten->more);
  auto capped = h.client->lookup_all(t, 250);
  REQUIRE(capped.ok());
  CHECK(capped->items.size() == 250);
  CHECK(capped->items.back().service_id == ids[249]);
  CHECK(capped->more);
  auto none = h.client->lookup_page(t, 10, ids.back());
  REQUIRE(none.ok());
  CHECK(none->items.empty());
  CHECK(!none->more);
  CHECK(none->total == 300);

  // A caller that does not page (built before pages) gets what its 16 MiB frame read before.
  capnp::MallocMessageBuilder message;
  auto p = message.initRoot<proto::LookupManyParams>();
  to_capnp(t, p.initTemplate());
  p.setMaxMatches(300);
  rpc::Reply reply = h.client->rpc().call("lookup.lookupMany", message);
  REQUIRE_MESSAGE(reply.status().ok(), reply.status().to_string());
  auto unpaged = reply.results<proto::LookupManyResult>();
  CHECK(unpaged.getItems().size() > first->items.size());
  CHECK(unpaged.getItems().size() * 60'000 <= kUnpagedMatchesReplyBytes);
  CHECK(unpaged.getMore());
}

TEST_CASE("lookup_all asks for its pages again when items change between them") {
  Harness h;
  ServiceTemplate t{std::nullopt, {"demo.Big"}, {}};
  auto handle = h.client->notify(t, kAllTransitions, 30'000);
  REQUIRE(handle.ok());
  for (int i = 0; i < 200; ++i) {
    must_register(*h.client, item({"demo.Big"}, {entry("demo.Blob", {{"text", Value(std::string(60'000, 'b'))}})}));
  }
  // Between the first page and the second, an item with the smallest ServiceID there is: a second
  // page after the first's last item cannot hold it.
  ServiceItem early = item({"demo.Big"}, {});
  early.service_id = ServiceId::from_halves(0, 1);
  RegistrarClient other(rpc::ClientOptions{.endpoint = h.service->rpc_endpoint()});
  fault::arm_call("lookup.client.between_pages", [&] { must_register(other, early); });
  auto all = h.client->lookup_all(t, 1000, handle->id);
  fault::disarm_all();
  REQUIRE_MESSAGE(all.ok(), all.status().to_string());
  CHECK(all->items.size() == 201);
  CHECK(all->items.front().service_id == early.service_id);
  CHECK(all->event_seq == 201);  // the snapshot holds every event it names
  CHECK(all->total == 201);
}

TEST_CASE("lookup_all refuses pages that do not go on after the last, whatever a registrar says") {
  // A registrar that says there is more and answers the same item again would be asked forever.
  rpc::Server fake(rpc::ServerOptions{});
  ServiceItem same = item({"demo.Big"}, {});
  fake.method<proto::LookupManyParams, proto::LookupManyResult>(
      "lookup.lookupMany", [&](const rpc::CallContext&, proto::LookupManyParams::Reader, proto::LookupManyResult::Builder out) {
        to_capnp(same, out.initItems(1)[0]);
        out.setTotalMatches(2);
        out.setMore(true);
        return Status::Ok();
      });
  REQUIRE(fake.start().ok());
  RegistrarClient c({.endpoint = fake.endpoints().at(0)});
  auto all = c.lookup_all(ServiceTemplate{std::nullopt, {"demo.Big"}, {}}, 1000);
  CHECK(all.status().code() == Code::kFailedPrecondition);
  CHECK(all.status().message().find("ServiceID order") != std::string::npos);
}

TEST_CASE("notify registrations: a template no larger than the largest item, and at most --max-notify in all") {
  test::TempDir dir;
  LookupServiceOptions o;
  o.data_dir = dir.file("lookup");
  o.max_item_bytes = 2048;
  o.max_notify = 2;
  auto s = LookupService::start(o);
  REQUIRE_MESSAGE(s.ok(), s.status().to_string());
  RegistrarClient c({.endpoint = (*s)->rpc_endpoint()});
  ServiceTemplate big{std::nullopt, {}, {tmpl("demo.Blob", {{"text", Value(std::string(4096, 'x'))}})}};
  auto refused = c.notify(big, kAllTransitions, 30'000);
  CHECK(refused.status().code() == Code::kInvalidArgument);
  CHECK(refused.status().message().find("template of") != std::string::npos);
  ServiceTemplate t{std::nullopt, {"demo.Printer"}, {}};
  REQUIRE(c.notify(t, kAllTransitions, 30'000).ok());
  REQUIRE(c.notify(t, kAllTransitions, 30'000).ok());
  CHECK(c.notify(t, kAllTransitions, 30'000).status().code() == Code::kResourceExhausted);
}

TEST_CASE("renewing a registration lease shows in the item; an unrenewed one expires") {
  Harness h;
  ServiceItem p = item({"demo.Printer"}, {});
  Registered r = must_register(*h.client, p, 400);
  auto renewed = h.client->renew(r.item.lease.id, 10'000);
  REQUIRE(renewed.ok());
  auto found = h.client->lookup(ServiceTemplate{p.service_id, {}, {}});
  REQUIRE(found.ok());
  REQUIRE(found->has_value());
  CHECK((*found)->lease.expiration_ms == renewed->lease.expiration_ms);
  ServiceItem brief = item({"demo.Printer"}, {});
  must_register(*h.client, brief, 200);
  CHECK(test::eventually([&] { return !h.client->lookup(ServiceTemplate{brief.service_id, {}, {}})->has_value(); }, 3000));
  CHECK(h.client->lookup(ServiceTemplate{p.service_id, {}, {}})->has_value());
}

TEST_CASE("bad input: a clear status and nothing changed") {
  Harness h;
  size_t before = h.service->registrar().size();
  ServiceItem nil = item({"demo.Printer"}, {});
  nil.service_id = ServiceId();
  CHECK(h.client->register_service(nil).status().code() == Code::kInvalidArgument);

  ServiceItem big = item({"demo.Printer"}, {entry("demo.Blob", {{"a", Value(std::string(40'000, 'x'))},
                                                                {"b", Value(std::string(40'000, 'y'))}})});
  auto too_big = h.client->register_service(big);
  CHECK(too_big.status().code() == Code::kInvalidArgument);
  CHECK(too_big.status().message().find("bytes") != std::string::npos);

  ServiceItem bad_type = item({"9not.a.type"}, {});
  CHECK(h.client->register_service(bad_type).status().code() == Code::kInvalidArgument);
  ServiceItem mine = item({"demo.Printer"}, {});
  mine.service_id = h.service->registrar().self_id();
  CHECK(h.client->register_service(mine).status().code() == Code::kInvalidArgument);
  CHECK(h.client->register_service(item({"demo.Printer"}, {}), -5).status().code() == Code::kInvalidArgument);
  CHECK(h.client->register_service(item({"demo.Printer"}, {}), 0).status().code() == Code::kInvalidArgument);

  ServiceTemplate bad_tmpl{std::nullopt, {"bad type!"}, {}};
  CHECK(h.client->lookup(bad_tmpl).status().code() == Code::kInvalidArgument);
  CHECK(h.client->lookup_many(ServiceTemplate{}, kMaxMatches + 1).status().code() == Code::kInvalidArgument);
  CHECK(h.client->notify(ServiceTemplate{}, 9, 1000).status().code() == Code::kInvalidArgument);
  CHECK(h.service->registrar().size() == before);

  Registered r = must_register(*h.client, item({"demo.Printer"}, {entry("djinn.attr.Name", {{"name", Value("x")}})}));
  AttributeChange none{tmpl("demo.Nothing"), std::nullopt};
  auto missed = h.client->modify_attributes(r.item.lease.id, std::span(&none, 1));
  CHECK(missed.status().code() == Code::kNotFound);
  CHECK(h.client->modify_attributes(12345, {}).status().code() == Code::kNotFound);
  std::vector<Entry> huge(1, entry("demo.Blob", {{"a", Value(std::string(60'000, 'z'))}, {"b", Value(std::string(60'000, 'z'))}}));
  CHECK(h.client->modify_attributes(r.item.lease.id, {}, huge).status().code() == Code::kInvalidArgument);
  auto still = h.client->lookup(ServiceTemplate{r.item.service_id, {}, {}});
  REQUIRE(still.ok());
  REQUIRE(still->has_value());
  CHECK((*still)->attributes == r.item.attributes);

  // Raw garbage as a payload: an error reply, and the server goes on.
  kj::Array<capnp::word> junk = kj::heapArray<capnp::word>(4);
  memset(static_cast<void*>(junk.begin()), 0xab, junk.size() * sizeof(capnp::word));
  std::promise<rpc::Reply> got;
  h.client->rpc().call_async_raw("lookup.register", std::move(junk), {}, [&](rpc::Reply r) { got.set_value(std::move(r)); });
  CHECK_FALSE(got.get_future().get().ok());
  CHECK(h.client->self().ok());
}

TEST_CASE("roles: a client may look up but not register or modify") {
  Harness h(security::Role::kClient);
  CHECK(h.client->register_service(item({"demo.Printer"}, {})).status().code() == Code::kPermissionDenied);
  CHECK(h.client->lookup(ServiceTemplate{}).ok());
  CHECK(h.client->notify(ServiceTemplate{}, 0, 1000).ok());
  CHECK(h.client->modify_attributes(1, {}).status().code() == Code::kPermissionDenied);
}

TEST_CASE("the registrar's own item: its groups, endpoints and a ServiceID kept across restarts") {
  Harness h;
  auto self = h.client->self();
  REQUIRE(self.ok());
  CHECK(self->groups == std::vector<std::string>{"public", "lab"});
  CHECK(self->item.endpoints.rpc == h.service->rpc_endpoint());
  CHECK(self->item.endpoints.events == h.service->events_endpoint());
  ServiceId id = self->item.service_id;
  h.stop();
  h.start();
  auto again = h.client->self();
  REQUIRE(again.ok());
  CHECK(again->item.service_id == id);
}

TEST_CASE("persistence: a restarted registrar has every registration with its lease; lapsed ones are gone") {
  Harness h;
  std::vector<Registered> kept;
  for (int i = 0; i < 20; ++i) kept.push_back(must_register(*h.client, item({"demo.Printer"}, {entry("djinn.attr.Name", {{"name", Value("p" + std::to_string(i))}})}), 60'000));
  ServiceItem brief = item({"demo.Printer"}, {});
  must_register(*h.client, brief, 300);
  // A replaced item keeps only its new lease.
  ServiceItem moved = kept[0].item;
  moved.endpoints.rpc = "tcp://127.0.0.1:9999";
  kept[0] = must_register(*h.client, moved, 60'000);
  auto handle = h.client->notify(ServiceTemplate{std::nullopt, {"demo.Printer"}, {}}, 0, 60'000);
  REQUIRE(handle.ok());
  h.stop();
  std::this_thread::sleep_for(400ms);  // the brief registration lapses while the registrar is down
  h.start();
  CHECK(h.service->registrar().size() == kept.size() + 1);  // + its own item
  for (const Registered& r : kept) {
    auto found = h.client->lookup(ServiceTemplate{r.item.service_id, {}, {}});
    REQUIRE(found.ok());
    REQUIRE(found->has_value());
    CHECK(**found == r.item);
  }
  CHECK_FALSE(h.client->lookup(ServiceTemplate{brief.service_id, {}, {}})->has_value());
  CHECK(h.service->landlord().leases_of_resource(std::string(kRegistrationResource)).size() == kept.size());
  // The notify registration survived too: it can be renewed and still reports.
  CHECK(h.client->renew(handle->id, 60'000).ok());
  NotifyHandle moved_handle = *handle;
  moved_handle.events_endpoint = h.service->events_endpoint();  // a port of this run
  Watcher w(moved_handle);
  std::this_thread::sleep_for(200ms);
  must_register(*h.client, item({"demo.Printer"}, {}));
  CHECK(test::eventually([&] { return w.count() == 1; }));
}

TEST_CASE("a notify registration made before kinds named refs keeps its kind across the upgrade") {
  Harness h;
  auto handle = h.client->notify(ServiceTemplate{std::nullopt, {"demo.Printer"}, {}}, kAllTransitions, 60'000);
  REQUIRE(handle.ok());
  h.stop();
  // The store as schema version 1 left it: no by_ref column.
  REQUIRE(test::run_sql(h.data_dir + "/lookup.db", {"ALTER TABLE watch DROP COLUMN by_ref",
                                                    "UPDATE meta SET value = 1 WHERE key = 'schema'"}) == "");
  h.start();
  // Its subscriber listens on the kind it was given then, which named the id.
  NotifyHandle old = *handle;
  old.event_kind = id_notify_event_kind(handle->id);
  CHECK(old.event_kind == "lookup.notify." + std::to_string(handle->id));
  old.events_endpoint = h.service->events_endpoint();  // a port of this run
  Watcher w(old);
  REQUIRE(test::eventually([&] { return w.sub.heard(); }, 5000));
  must_register(*h.client, item({"demo.Printer"}, {}));
  REQUIRE(test::eventually([&] { return w.count() == 1; }));
  CHECK(w.at(0).first.notify_id == handle->id);  // as the cache that registered it checks
  // New registrations are named by their refs.
  auto fresh = h.client->notify(ServiceTemplate{std::nullopt, {"demo.Printer"}, {}}, kAllTransitions, 60'000);
  REQUIRE(fresh.ok());
  CHECK(fresh->event_kind == notify_event_kind(fresh->id));
}

TEST_CASE("a client of an earlier release gets the kind and events it expects: named by the id") {
  Harness h;
  capnp::MallocMessageBuilder message;
  auto p = message.initRoot<proto::NotifyParams>();
  to_capnp(ServiceTemplate{std::nullopt, {"demo.Printer"}, {}}, p.initTemplate());
  p.setDurationMs(60'000);  // kindByRef unset, as such a client sends it
  rpc::Reply reply = h.client->rpc().call("lookup.notify", message);
  REQUIRE_MESSAGE(reply.ok(), reply.status().to_string());
  auto res = reply.results<proto::NotifyResult>();
  NotifyHandle old{res.getId(), res.getExpirationMs(), res.getEventKind().cStr(), res.getEventsEndpoint().cStr(),
                   res.getLandlord().cStr()};
  CHECK(old.event_kind == "lookup.notify." + std::to_string(old.id));
  // A client of this release, registered alongside, gets a ref kind and id-less events.
  auto fresh = h.client->notify(ServiceTemplate{std::nullopt, {"demo.Printer"}, {}}, kAllTransitions, 60'000);
  REQUIRE(fresh.ok());
  Watcher w_old(old), w_new(*fresh);
  REQUIRE(test::eventually([&] { return w_old.sub.heard() && w_new.sub.heard(); }, 5000));
  must_register(*h.client, item({"demo.Printer"}, {}));
  REQUIRE(test::eventually([&] { return w_old.count() == 1 && w_new.count() == 1; }));
  CHECK(w_old.at(0).first.notify_id == old.id);
  CHECK(w_new.at(0).first.notify_id == 0);
  CHECK(w_old.at(0).first.item == w_new.at(0).first.item);
}

TEST_CASE("registrations whose leases end while the registrar opens are removed once it is wired") {
  Harness h;
  ServiceItem brief = item({"demo.Printer"}, {});
  must_register(*h.client, brief, 1500);
  Registered kept = must_register(*h.client, item({"demo.Printer"}, {}), 60'000);
  h.stop();
  // The load finds both leases alive; they end before the landlord's events reach the registrar.
  fault::arm_call("lookup.open.after_load", [] { std::this_thread::sleep_for(2500ms); });
  h.start();
  fault::disarm_all();
  h.service->registrar().settle_ended();
  CHECK(h.service->registrar().size() == 2);  // `kept` and its own item
  CHECK(h.client->lookup(ServiceTemplate{kept.item.service_id, {}, {}})->has_value());
}

TEST_CASE("a registrar bound to a wildcard address advertises endpoints others can dial") {
  CHECK(rpc::advertised_endpoint("tcp://0.0.0.0:4162", "10.0.0.5") == "tcp://10.0.0.5:4162");
  CHECK(rpc::advertised_endpoint("tcp://*:4162", "lab-1") == "tcp://lab-1:4162");
  CHECK(rpc::advertised_endpoint("tcp://127.0.0.1:4162", "10.0.0.5") == "tcp://127.0.0.1:4162");
  CHECK(rpc::advertised_endpoint("ipc:///tmp/x", "10.0.0.5") == "ipc:///tmp/x");
  CHECK(rpc::advertised_endpoint("tcp://0.0.0.0:4162").find("0.0.0.0") == std::string::npos);

  test::TempDir dir;
  LookupServiceOptions o;
  o.data_dir = dir.file("lookup");
  o.rpc_endpoint = "tcp://0.0.0.0:*";
  o.events_endpoint = "tcp://0.0.0.0:*";
  o.advertise_host = "127.0.0.1";
  auto s = LookupService::start(o);
  REQUIRE_MESSAGE(s.ok(), s.status().to_string());
  CHECK((*s)->rpc_endpoint().rfind("tcp://127.0.0.1:", 0) == 0);
  RegistrarClient client({.endpoint = (*s)->rpc_endpoint()});
  auto self = client.self();
  REQUIRE(self.ok());
  CHECK(self->item.endpoints.rpc == (*s)->rpc_endpoint());
  CHECK(self->item.endpoints.events.rfind("tcp://127.0.0.1:", 0) == 0);
  auto reg = client.register_service(item({"demo.Printer"}, {}));
  REQUIRE(reg.ok());
  CHECK(reg->landlord == (*s)->rpc_endpoint());
}

TEST_CASE("CURVE: keys in the keyring by role; an unknown key is refused; notify events are encrypted too") {
  security::KeyPair server = security::generate_keypair();
  security::KeyPair service_key = security::generate_keypair();
  security::KeyPair client_key = security::generate_keypair();
  security::KeyPair stranger = security::generate_keypair();
  auto ring = std::make_shared<security::Keyring>();
  REQUIRE(ring->add(security::Role::kService, service_key.public_key, "printer").ok());
  REQUIRE(ring->add(security::Role::kClient, client_key.public_key, "laptop").ok());
  test::TempDir dir;
  LookupServiceOptions o;
  o.data_dir = dir.file("lookup");
  o.curve = rpc::CurveServer{server, ring};
  auto s = LookupService::start(o);
  REQUIRE_MESSAGE(s.ok(), s.status().to_string());
  auto client_for = [&](const security::KeyPair& keys) {
    rpc::ClientOptions co{.endpoint = (*s)->rpc_endpoint(), .curve = rpc::CurveClient{keys, server.public_key}};
    co.default_timeout = std::chrono::milliseconds(2000);
    return std::make_unique<RegistrarClient>(co);
  };
  auto as_service = client_for(service_key);
  auto as_client = client_for(client_key);
  auto as_stranger = client_for(stranger);

  auto handle = as_client->notify(ServiceTemplate{std::nullopt, {"demo.Printer"}, {}}, 0, 30'000);
  REQUIRE_MESSAGE(handle.ok(), handle.status().to_string());
  events::Subscriber sub(events::SubscriberOptions{.endpoint = handle->events_endpoint,
                                                   .curve = rpc::CurveClient{client_key, server.public_key}});
  sub.subscribe(handle->event_kind);
  std::atomic<int> got{0};
  sub.on_event([&](const events::Event&) { got++; });
  REQUIRE(sub.start().ok());
  std::this_thread::sleep_for(300ms);

  auto reg = as_service->register_service(item({"demo.Printer"}, {}));
  REQUIRE_MESSAGE(reg.ok(), reg.status().to_string());
  CHECK((*s)->registrar().self_id() != reg->item.service_id);
  auto self = as_client->self();
  REQUIRE(self.ok());
  CHECK(self->item.public_key == server.public_key);
  CHECK(as_client->register_service(item({"demo.Printer"}, {})).status().code() == Code::kPermissionDenied);
  CHECK(as_client->lookup(ServiceTemplate{reg->item.service_id, {}, {}})->has_value());
  CHECK(as_stranger->lookup(ServiceTemplate{}).status().code() == Code::kUnauthenticated);
  CHECK(test::eventually([&] { return got.load() == 1; }));
}
