// The registrar's indexes against a brute-force model: random registrations, replacements,
// attribute changes and cancellations, and after every step every template of a fixed set answers
// exactly what matching every live item one by one answers; and items past their lease deadline,
// on injected clocks, never answered.
#include <doctest/doctest.h>

#include <unistd.h>

#include <atomic>
#include <fstream>
#include <map>

#include "djinn/core/fault.h"
#include "djinn/lookup/registrar.h"
#include "support/fake_clocks.h"
#include "support/test_support.h"

using namespace djinn;
using namespace djinn::lookup;

namespace {

Entry random_attribute(std::mt19937_64& rng) {
  static const char* kTypes[] = {"demo.Location", "demo.Name", "demo.Capacity"};
  Entry e;
  e.type = kTypes[rng() % 3];
  if (e.type == "demo.Location") e.supertypes = {"demo.Place"};
  if (rng() % 2) e.fields["building"] = Value("B" + std::to_string(rng() % 3));
  if (rng() % 2) e.fields["floor"] = Value(static_cast<int64_t>(rng() % 3));
  if (rng() % 4 == 0) e.fields["floor"] = Value(static_cast<double>(rng() % 3));  // same name, other type
  return e;
}

ServiceItem random_item(std::mt19937_64& rng, ServiceId id) {
  static const char* kIfaces[] = {"demo.Printer", "demo.Scanner", "demo.Device"};
  ServiceItem item;
  item.service_id = id;
  for (const char* t : kIfaces) {
    if (rng() % 2) item.interface_types.push_back(t);
  }
  size_t n = rng() % 3;
  for (size_t i = 0; i < n; ++i) item.attributes.push_back(random_attribute(rng));
  return item;
}

std::vector<ServiceTemplate> templates() {
  std::vector<ServiceTemplate> out;
  out.push_back({});
  for (const char* t : {"demo.Printer", "demo.Scanner", "demo.Device"}) out.push_back({std::nullopt, {t}, {}});
  out.push_back({std::nullopt, {"demo.Printer", "demo.Device"}, {}});
  for (const char* type : {"", "demo.Location", "demo.Place", "demo.Name"}) {
    out.push_back({std::nullopt, {}, {Template{type, {}}}});
    for (int b = 0; b < 3; ++b) {
      out.push_back({std::nullopt, {}, {Template{type, {{"building", Value("B" + std::to_string(b))}}}}});
      out.push_back({std::nullopt, {"demo.Printer"}, {Template{type, {{"building", Value("B" + std::to_string(b))}, {"floor", Value(int64_t{1})}}}}});
    }
    out.push_back({std::nullopt, {}, {Template{type, {{"floor", Value(1.0)}}}}});
  }
  out.push_back({std::nullopt, {}, {Template{"demo.Name", {}}, Template{"demo.Capacity", {{"floor", Value(int64_t{0})}}}}});
  return out;
}

// A registrar on an in-memory landlord whose expiry the test drives (on `clocks` when given).
struct Fixture {
  explicit Fixture(test::FakeClocks* clocks = nullptr) {
    lease::LandlordOptions lo;
    if (clocks) lo.clocks = clocks->clocks();
    lo.run_expiry_thread = false;
    lo.on_event = [this](const lease::LeaseEvent& e) {
      if (registrar) registrar->on_lease_event(e);
    };
    auto opened_landlord = lease::Landlord::open(lo);
    REQUIRE(opened_landlord.ok());
    landlord = std::move(*opened_landlord);
    auto opened = Registrar::open(RegistrarOptions{.landlord = landlord.get()});
    REQUIRE(opened.ok());
    registrar = std::move(*opened);
  }
  // The registrar goes first; events the landlord sends while closing then find none.
  ~Fixture() { registrar.reset(); }
  std::unique_ptr<Registrar> registrar;
  std::unique_ptr<lease::Landlord> landlord;
};

}  // namespace

TEST_CASE("property: indexed answers equal brute-force matching through random changes") {
  Fixture fx;
  Registrar* registrar = fx.registrar.get();

  std::mt19937_64& rng = test::rng();
  std::map<ServiceId, ServiceItem> model;
  std::vector<ServiceTemplate> tmpls = templates();
  for (int step = 0; step < 600; ++step) {
    CAPTURE(step);
    int op = static_cast<int>(rng() % 10);
    if (op < 5 || model.empty()) {
      bool replace = !model.empty() && op == 4;
      ServiceId id = replace ? std::next(model.begin(), static_cast<long>(rng() % model.size()))->first : ServiceId::random();
      auto r = registrar->register_item({random_item(rng, id), 60'000});
      REQUIRE_MESSAGE(r.ok(), r.status().to_string());
      model[id] = r->item;
    } else if (op < 8) {
      auto it = std::next(model.begin(), static_cast<long>(rng() % model.size()));
      std::vector<AttributeChange> changes;
      if (!it->second.attributes.empty() && rng() % 2) {
        const Entry& a = it->second.attributes[rng() % it->second.attributes.size()];
        changes.push_back({Template{a.type, a.fields}, rng() % 2 ? std::optional<Entry>(random_attribute(rng)) : std::nullopt});
      }
      std::vector<Entry> add;
      if (rng() % 2) add.push_back(random_attribute(rng));
      auto m = registrar->modify_attributes(it->second.lease.id, changes, add);
      REQUIRE_MESSAGE(m.ok(), m.status().to_string());
      it->second = *m;
    } else {
      auto it = std::next(model.begin(), static_cast<long>(rng() % model.size()));
      REQUIRE(fx.landlord->cancel(it->second.lease.id).ok());
      model.erase(it);
      // Removal runs on the registrar's own thread.
      REQUIRE(test::eventually([&] { return registrar->size() == model.size() + 0; }));
    }
    for (size_t k = 0; k < tmpls.size(); ++k) {
      CAPTURE(k);
      std::set<ServiceId> want;
      for (const auto& [id, item] : model) {
        if (matches(tmpls[k], item)) want.insert(id);
      }
      LookupMany many = registrar->lookup_many(tmpls[k], 100'000);
      std::set<ServiceId> got;
      for (const ServiceItem& i : many.items) got.insert(i.service_id);
      REQUIRE(got == want);
      REQUIRE(many.total == want.size());
      REQUIRE(registrar->lookup(tmpls[k]).has_value() == !want.empty());
    }
  }
}

namespace {
// This process's resident set, in bytes.
size_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  size_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}
}  // namespace

TEST_CASE("a large field value under many supertypes is indexed in eight bytes a key, and still found exactly") {
  Fixture fx;
  const std::string big(56'000, 'v');
  std::vector<std::string> supertypes;
  for (int i = 0; i < 64; ++i) supertypes.push_back("demo.Kind" + std::to_string(i));
  const size_t before = resident_bytes();
  std::vector<ServiceId> ids;
  for (int i = 0; i < 40; ++i) {
    ServiceItem item;
    item.service_id = ServiceId::random();
    Entry e{"demo.Blob", supertypes, {{"data", Value(big + std::to_string(i))}}};
    item.attributes.push_back(e);
    auto r = fx.registrar->register_item({item, 60'000});
    REQUIRE_MESSAGE(r.ok(), r.status().to_string());
    ids.push_back(item.service_id);
  }
  // Filed whole under its type, 64 supertypes and "", each value cost 3.7 MB of keys: 148 MB for
  // the 40. The items themselves (each kept once, and in the store's file) are some 5 MB.
  const size_t grown = resident_bytes() - std::min(before, resident_bytes());
  CHECK_MESSAGE(grown < 40u << 20, "resident set grew " << grown << " bytes");
  // Found by the value under its own type, any supertype and no type; a near value finds nothing.
  for (const char* type : {"demo.Blob", "demo.Kind17", ""}) {
    CAPTURE(type);
    auto found = fx.registrar->lookup({std::nullopt, {}, {Template{type, {{"data", Value(big + "7")}}}}});
    REQUIRE(found.has_value());
    CHECK(found->service_id == ids[7]);
    CHECK_FALSE(fx.registrar->lookup({std::nullopt, {}, {Template{type, {{"data", Value(big + "x")}}}}}).has_value());
  }
}

TEST_CASE("an item past its lease deadline is never returned, even before its removal; the wall clock has no say") {
  test::FakeClocks clocks;
  Fixture fx(&clocks);
  Registrar* registrar = fx.registrar.get();
  lease::Landlord* landlord = fx.landlord.get();

  auto printer = [](ServiceId id) {
    ServiceItem item;
    item.service_id = id;
    item.interface_types = {"demo.Printer"};
    Entry name;
    name.type = "demo.Name";
    name.fields["name"] = Value("p");
    item.attributes.push_back(name);
    return item;
  };
  const ServiceTemplate by_type{std::nullopt, {"demo.Printer"}, {}};  // answered from one posting
  const ServiceTemplate by_name{std::nullopt, {"demo.Printer"}, {Template{"demo.Name", {{"name", Value("p")}}}}};
  ServiceId a = ServiceId::random(), b = ServiceId::random(), c = ServiceId::random();
  auto ra = registrar->register_item({printer(a), 1000});
  REQUIRE(ra.ok());
  auto rb = registrar->register_item({printer(b), 1000});
  REQUIRE(rb.ok());
  auto rc = registrar->register_item({printer(c), 60'000});
  REQUIRE(rc.ok());
  auto answers = [&](const ServiceTemplate& t) { return registrar->lookup_many(t, 100).total; };

  clocks.wall += 3'600'000;  // an hour ahead, then behind: nothing expires or comes back
  CHECK(answers(by_type) == 3);
  clocks.wall -= 7'200'000;
  CHECK(answers(by_name) == 3);

  clocks.mono_ns += 500'000'000;
  REQUIRE(landlord->renew({rb->item.lease.id, 1000}).ok());  // to t = 1.5 s
  REQUIRE(registrar->modify_attributes(rc->item.lease.id, {}, {}).ok());
  clocks.mono_ns += 500'000'000;  // t = 1 s: a's deadline; no expiry has run
  CHECK(registrar->size() == 3);
  CHECK(answers(by_type) == 2);
  CHECK(answers(by_name) == 2);
  CHECK_FALSE(registrar->find(a).has_value());
  CHECK_FALSE(registrar->lookup(ServiceTemplate{a, {}, {}}).has_value());
  // Gone to changes as well as to queries.
  auto changed = registrar->modify_attributes(ra->item.lease.id, {}, {});
  CHECK(changed.status().code() == Code::kNotFound);
  CHECK(registrar->find(b).has_value());
  CHECK(landlord->expire_due() == 1);
  REQUIRE(test::eventually([&] { return registrar->size() == 2; }));

  clocks.mono_ns += 500'000'000;  // t = 1.5 s: b's renewed deadline
  CHECK_FALSE(registrar->find(b).has_value());
  CHECK(answers(by_type) == 1);
  clocks.mono_ns += 60'000'000'000;  // c's deadline, kept through its attribute change
  CHECK(answers(by_type) == 0);
  CHECK_FALSE(registrar->lookup(by_name).has_value());
}

TEST_CASE("a registration whose lease expires between its commit and its arrival in memory is removed") {
  // The expiry runs in that instant, as the landlord's expiry thread may, and finds no item yet.
  test::TempDir dir;
  test::FakeClocks clocks;
  lease::LandlordOptions lo;
  lo.path = dir.file("lookup.db");
  lo.clocks = clocks.clocks();
  lo.run_expiry_thread = false;
  std::atomic<Registrar*> target{nullptr};
  lo.on_event = [&](const lease::LeaseEvent& e) {
    if (Registrar* r = target.load()) r->on_lease_event(e);
  };
  auto landlord = lease::Landlord::open(lo);
  REQUIRE(landlord.ok());
  auto opened = Registrar::open(RegistrarOptions{.landlord = landlord->get()});
  REQUIRE(opened.ok());
  std::unique_ptr<Registrar> registrar = std::move(*opened);
  target = registrar.get();
  ServiceItem item;
  item.service_id = ServiceId::random();
  item.interface_types = {"demo.Printer"};
  size_t expired = 0;
  fault::arm_call("lookup.register.after_commit", [&] {
    clocks.mono_ns += 2'000'000'000;
    expired = (*landlord)->expire_due();
  });
  auto r = registrar->register_item({item, 1000});
  fault::disarm_all();
  REQUIRE_MESSAGE(r.ok(), r.status().to_string());
  CHECK(expired == 1);
  registrar->settle_ended();
  CHECK(registrar->size() == 0);
  target = nullptr;
  registrar.reset();
}

TEST_CASE("at its item limit, a batch admits replacements and the new ServiceIDs that fit, each decided alone") {
  auto landlord = lease::Landlord::open(lease::LandlordOptions{});
  REQUIRE(landlord.ok());
  auto opened = Registrar::open(RegistrarOptions{.landlord = landlord->get(), .max_items = 2});
  REQUIRE(opened.ok());
  Registrar& registrar = **opened;
  auto item_of = [](ServiceId id) {
    ServiceItem item;
    item.service_id = id;
    item.interface_types = {"demo.Printer"};
    return item;
  };
  ServiceId a = ServiceId::random(), b = ServiceId::random(), c = ServiceId::random();
  REQUIRE(registrar.register_item({item_of(a), 60'000}).ok());
  // One place left: a's replacement fits, b twice counts once, c does not fit.
  std::vector<RegisterRequest> batch = {{item_of(b), 60'000}, {item_of(a), 60'000}, {item_of(b), 60'000},
                                        {item_of(c), 60'000}};
  auto results = registrar.register_batch(batch);
  REQUIRE(results.size() == 4);
  CHECK(results[0].ok());
  CHECK(results[1].ok());
  CHECK(results[2].ok());
  CHECK(results[3].status().code() == Code::kResourceExhausted);
  CHECK(registrar.size() == 2);
  CHECK(registrar.find(a).has_value());
  CHECK(registrar.find(b).has_value());
  CHECK_FALSE(registrar.find(c).has_value());
}
