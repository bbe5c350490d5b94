// The registrar's indexes against a brute-force model: random registrations, replacements,
// attribute changes and cancellations, and after every step every template of a fixed set answers
// exactly what matching every live item one by one answers.
#include <doctest/doctest.h>

#include <map>

#include "djinn/lookup/registrar.h"
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

}  // namespace

TEST_CASE("property: indexed answers equal brute-force matching through random changes") {
  lease::LandlordOptions lo;
  lo.run_expiry_thread = false;
  std::unique_ptr<Registrar> registrar;
  lo.on_event = [&](const lease::LeaseEvent& e) {
    if (registrar) registrar->on_lease_event(e);
  };
  auto landlord = lease::Landlord::open(lo);
  REQUIRE(landlord.ok());
  auto opened = Registrar::open(RegistrarOptions{.landlord = landlord->get()});
  REQUIRE(opened.ok());
  registrar = std::move(*opened);

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
      REQUIRE(landlord->get()->cancel(it->second.lease.id).ok());
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
  registrar.reset();
}
