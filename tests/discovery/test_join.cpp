// Discovery, join and the discovery service on one machine, through unicast locators only (no
// Avahi, no multicast: nothing leaves loopback): lookups are discovered, a service joins them all,
// its attribute changes reach each, a lookup that stops is discarded, and when it returns it is
// rediscovered and the service registered there again. The LAN-lab tests do the same across hosts
// with Avahi and multicast.
#include <doctest/doctest.h>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <thread>

#include "djinn/core/model_capnp.h"
#include "djinn/core/rpc.h"
#include "djinn/discovery/join.h"
#include "djinn/discovery/manager.h"
#include "djinn/discovery/service.h"
#include "djinn/lookup/client.h"
#include "djinn/lookup/service.h"
#include "djinn/proto/lookup.capnp.h"
#include "support/test_support.h"

using namespace djinn;
using namespace djinn::discovery;
using namespace std::chrono_literals;

namespace {

std::unique_ptr<lookup::LookupService> start_lookup(const std::string& dir, int port, std::vector<std::string> groups = {"public"}) {
  lookup::LookupServiceOptions o;
  o.data_dir = dir;
  o.rpc_endpoint = "tcp://127.0.0.1:" + std::to_string(port);
  o.groups = std::move(groups);
  o.policy.min_duration = 50ms;
  auto s = lookup::LookupService::start(o);
  REQUIRE_MESSAGE(s.ok(), s.status().to_string());
  return std::move(*s);
}

std::string locator(int port) { return "djinn://127.0.0.1:" + std::to_string(port); }

DiscoveryOptions unicast_only(std::vector<std::string> locators) {
  DiscoveryOptions o;
  o.avahi = false;
  o.multicast = false;
  o.locators = std::move(locators);
  o.probe_interval = 100ms;
  o.probe_timeout = 200ms;
  o.discard_after = 600ms;
  return o;
}

std::optional<std::string> name_at(lookup::LookupService& l, const ServiceId& id) {
  auto item = l.registrar().find(id);
  if (!item) return std::nullopt;
  for (const Entry& e : item->attributes) {
    if (e.type == "djinn.attr.Name") return e.fields.at("name").as_text();
  }
  return std::string();
}

struct Recorder {
  std::mutex mu;
  std::vector<std::string> log;  // "+endpoint" / "-endpoint"
  void add(const std::string& s) {
    std::lock_guard lock(mu);
    log.push_back(s);
  }
  size_t count(const std::string& s) {
    std::lock_guard lock(mu);
    return static_cast<size_t>(std::count(log.begin(), log.end(), s));
  }
};

// A lookup that answers lookup.self only, with the groups it is told to name.
struct FakeLookup {
  FakeLookup(ServiceId id, std::vector<std::string> groups) : port(test::free_tcp_port()) {
    endpoint = "tcp://127.0.0.1:" + std::to_string(port);
    rpc::ServerOptions so;
    so.endpoints = {endpoint};
    server = std::make_unique<rpc::Server>(so);
    self.service_id = id;
    self.interface_types = {"djinn.lookup.ServiceRegistrar"};
    self.endpoints = Endpoints{endpoint, ""};
    server->method<proto::SelfParams, proto::SelfResult>(
        "lookup.self", [this, groups](const rpc::CallContext&, proto::SelfParams::Reader, proto::SelfResult::Builder out) {
          to_capnp(self, out.initItem());
          auto list = out.initGroups(static_cast<unsigned>(groups.size()));
          for (unsigned i = 0; i < groups.size(); ++i) list.set(i, groups[i]);
          return Status::Ok();
        });
    REQUIRE(server->start().ok());
  }
  int port;
  std::string endpoint;
  ServiceItem self;
  std::unique_ptr<rpc::Server> server;
};

}  // namespace

TEST_CASE("discovery by locator: groups filter, a silent lookup is discarded and rediscovered") {
  test::TempDir dir;
  int pa = test::free_tcp_port(), pb = test::free_tcp_port();
  auto a = start_lookup(dir.file("a"), pa);
  auto b = start_lookup(dir.file("b"), pb, {"other"});
  Recorder events;
  DiscoveryOptions o = unicast_only({locator(pa), locator(pb)});
  o.groups = {"public"};
  o.on_discovered = [&](const DiscoveredLookup& l) { events.add("+" + l.rpc_endpoint); };
  o.on_discarded = [&](const DiscoveredLookup& l) { events.add("-" + l.rpc_endpoint); };
  auto d = DiscoveryManager::start(o);
  REQUIRE(d.ok());
  REQUIRE((*d)->wait_for(1, 5s));
  auto found = (*d)->lookups();
  REQUIRE(found.size() == 1);
  CHECK(found[0].service_id == a->registrar().self_id());
  CHECK(found[0].via == "unicast");
  CHECK(found[0].groups == std::vector<std::string>{"public"});
  CHECK(test::eventually([&] { return (*d)->stats().ignored == 1; }, 3000));  // b serves another group

  a.reset();
  auto t0 = std::chrono::steady_clock::now();
  REQUIRE(test::eventually([&] { return (*d)->lookups().empty(); }, 5000));
  auto took = std::chrono::steady_clock::now() - t0;
  MESSAGE("discarded after " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms (discard_after 600 ms)");
  CHECK(took < 600ms + 200ms + 500ms);
  a = start_lookup(dir.file("a"), pa);
  CHECK(test::eventually([&] { return (*d)->lookups().size() == 1; }, 5000));
  std::string ep = "tcp://127.0.0.1:" + std::to_string(pa);
  CHECK(test::eventually([&] { return events.count("+" + ep) == 2 && events.count("-" + ep) == 1; }, 2000));
  CHECK(!parse_locator("bogus").ok());
  CHECK(!DiscoveryManager::start(unicast_only({"tcp://x:1"})).ok());
}

TEST_CASE("discovery by locator: a lookup that names groups no client would take is not discovered") {
  // What a lookup says of itself is passed on to every client of the discovery service, whose
  // decoding refuses such groups: the probe fails here instead.
  FakeLookup fake(ServiceId::random(), {"public", "a b"});
  auto d = DiscoveryManager::start(unicast_only({locator(fake.port)}));
  REQUIRE(d.ok());
  CHECK(test::eventually([&] { return (*d)->stats().probe_failures >= 2; }, 3000));
  CHECK((*d)->lookups().empty());
}

TEST_CASE("discovery by locator: a lookup set aside for another address of its ServiceID is taken once that one goes") {
  ServiceId id = ServiceId::random();
  auto first = std::make_unique<FakeLookup>(id, std::vector<std::string>{"public"});
  DiscoveryOptions o = unicast_only({locator(first->port)});
  auto d = DiscoveryManager::start(o);
  REQUIRE(d.ok());
  REQUIRE((*d)->wait_for(1, 5s));
  // The same ServiceID answers at a second address: one lookup is discovered once.
  FakeLookup second(id, {"public"});
  REQUIRE((*d)->add_locator(locator(second.port)).ok());
  CHECK(test::eventually([&] { return (*d)->stats().probes >= 6; }, 3000));
  REQUIRE((*d)->lookups().size() == 1);
  CHECK((*d)->lookups()[0].rpc_endpoint == first->endpoint);
  // The first goes silent: discarded, and the second, set aside until then, is discovered.
  first.reset();
  CHECK(test::eventually([&] {
    auto found = (*d)->lookups();
    return found.size() == 1 && found[0].rpc_endpoint == second.endpoint;
  }, 5000));
}

TEST_CASE("join: registered with every lookup, attributes everywhere, registered again after a restart") {
  test::TempDir dir;
  int pa = test::free_tcp_port(), pb = test::free_tcp_port();
  auto a = start_lookup(dir.file("a"), pa);
  auto b = start_lookup(dir.file("b"), pb);
  ServiceItem item;
  item.service_id = ServiceId::random();
  item.interface_types = {"demo.Printer"};
  Entry name;
  name.type = "djinn.attr.Name";
  name.fields["name"] = Value("first");
  item.attributes = {name};
  JoinOptions o;
  o.discovery = unicast_only({locator(pa), locator(pb)});
  o.keeper.lease_ms = 1000;
  auto join = JoinManager::start(item, o);
  REQUIRE(join.ok());
  REQUIRE((*join)->wait_registered(2, 5s));
  CHECK(name_at(*a, item.service_id) == "first");
  CHECK(name_at(*b, item.service_id) == "first");

  name.fields["name"] = Value("second");
  (*join)->set_attributes({name});
  CHECK(test::eventually([&] { return name_at(*a, item.service_id) == "second" && name_at(*b, item.service_id) == "second"; }, 5000));

  // Lookup A goes away and comes back empty: discarded, rediscovered, registered again.
  a.reset();
  std::filesystem::remove_all(dir.file("a"));
  std::string ea = "tcp://127.0.0.1:" + std::to_string(pa);
  CHECK(test::eventually([&] { return (*join)->lookups().size() == 1; }, 5000));
  a = start_lookup(dir.file("a"), pa);
  auto t0 = std::chrono::steady_clock::now();
  CHECK(test::eventually([&] { return name_at(*a, item.service_id) == "second"; }, 5000));
  MESSAGE("registered again " << std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count()
                              << " ms after the lookup restarted");
  CHECK((*join)->wait_registered(2, 5s));

  // Stopping cancels the registrations.
  join->reset();
  CHECK(test::eventually([&] { return !a->registrar().find(item.service_id) && !b->registrar().find(item.service_id); }));
  CHECK(!JoinManager::start(ServiceItem{}, o).ok());  // a nil ServiceID
}

TEST_CASE("the discovery service: interest in groups, snapshot, discovered and discarded events") {
  test::TempDir dir;
  int pa = test::free_tcp_port(), pb = test::free_tcp_port();
  auto a = start_lookup(dir.file("a"), pa);
  auto b = start_lookup(dir.file("b"), pb, {"other"});
  DiscoveryServiceOptions so;
  so.discovery = unicast_only({locator(pa), locator(pb)});
  auto service = DiscoveryService::start(so);
  REQUIRE_MESSAGE(service.ok(), service.status().to_string());
  REQUIRE((*service)->discovery().wait_for(2, 5s));

  DiscoveryClient client({.endpoint = (*service)->rpc_endpoint()});
  auto interest = client.register_interest({"public"}, 10'000);
  REQUIRE_MESSAGE(interest.ok(), interest.status().to_string());
  // The id lets whoever knows it renew or cancel: random, and kept out of the kind subscribers see.
  CHECK(interest->event_kind == "discovery.interest." + public_ref_hex(interest->id));
  CHECK(interest->id > (uint64_t{1} << 32));  // below once in 2^32
  REQUIRE(interest->lookups.size() == 1);
  CHECK(interest->lookups[0].service_id == a->registrar().self_id());

  events::Subscriber sub({.endpoint = interest->events_endpoint});
  sub.subscribe(interest->event_kind);
  std::mutex mu;
  std::vector<DiscoveryEvent> got;
  sub.on_event([&](const events::Event& e) {
    auto ev = decode_discovery_event(e);
    REQUIRE(ev.ok());
    std::lock_guard lock(mu);
    got.push_back(*ev);
  });
  REQUIRE(sub.start().ok());
  // The subscription reaches the publisher (slow joiner): the kind's first heartbeat arrives.
  REQUIRE(test::eventually([&] { return sub.heard(); }, 5000));

  a.reset();
  CHECK(test::eventually([&] {
    std::lock_guard lock(mu);
    return got.size() == 1 && got[0].discarded;
  }, 5000));
  a = start_lookup(dir.file("a"), pa);
  CHECK(test::eventually([&] {
    std::lock_guard lock(mu);
    return got.size() == 2 && !got[1].discarded && got[1].lookup.rpc_endpoint == "tcp://127.0.0.1:" + std::to_string(pa);
  }, 5000));
  sub.stop();

  auto snap = client.snapshot(interest->id);
  REQUIRE(snap.ok());
  CHECK(snap->lookups.size() == 1);
  CHECK(client.renew(interest->id, 5000).ok());
  CHECK(client.cancel(interest->id).ok());
  CHECK(client.renew(interest->id, 5000).status().code() == Code::kNotFound);
  CHECK(client.register_interest({"a b"}, 1000).status().code() == Code::kInvalidArgument);
  CHECK(client.register_interest({"public"}, 0).status().code() == Code::kInvalidArgument);
  // An interest that is not renewed expires.
  auto short_lived = client.register_interest({}, 200);
  REQUIRE(short_lived.ok());
  CHECK(test::eventually([&] { return (*service)->interests() == 0; }, 3000));
}
