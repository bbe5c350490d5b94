// Keeping a service registered: RegistrationKeeper against in-process lookups (registers, renews,
// registers again after a lookup lost its data, propagates a changed item, cancels on stop), and a
// real djinn-lease process registering itself with --lookup.
#include <doctest/doctest.h>

#include <signal.h>

#include <filesystem>

#include "djinn/core/fault.h"
#include "djinn/lookup/client.h"
#include "djinn/lookup/keeper.h"
#include "djinn/lookup/service.h"
#include "support/test_support.h"

using namespace djinn;
using namespace djinn::lookup;
using namespace std::chrono_literals;

namespace {

std::unique_ptr<LookupService> start_lookup(const std::string& dir, int port) {
  LookupServiceOptions o;
  o.data_dir = dir;
  o.rpc_endpoint = "tcp://127.0.0.1:" + std::to_string(port);
  o.policy.min_duration = 50ms;
  auto s = LookupService::start(o);
  REQUIRE_MESSAGE(s.ok(), s.status().to_string());
  return std::move(*s);
}

bool registered_at(const std::string& endpoint, const ServiceId& id) {
  RegistrarClient c({.endpoint = endpoint});
  rpc::CallOptions call;
  call.timeout = 500ms;
  auto found = c.lookup(ServiceTemplate{id, {}, {}}, call);
  return found.ok() && found->has_value();
}

}  // namespace

TEST_CASE("a keeper registers everywhere, renews, re-registers after a loss, and cancels on stop") {
  test::TempDir dir;
  int port_a = test::free_tcp_port(), port_b = test::free_tcp_port();
  auto a = start_lookup(dir.file("a"), port_a);
  auto b = start_lookup(dir.file("b"), port_b);
  ServiceItem item;
  item.service_id = ServiceId::random();
  item.interface_types = {"demo.Printer"};
  KeeperOptions options;
  options.lease_ms = 400;  // renewed several times during the test
  auto keeper = std::make_unique<RegistrationKeeper>(item, std::vector<std::string>{a->rpc_endpoint(), b->rpc_endpoint()}, options);
  REQUIRE(keeper->wait_registered(5s));
  CHECK(registered_at(a->rpc_endpoint(), item.service_id));
  CHECK(registered_at(b->rpc_endpoint(), item.service_id));
  std::this_thread::sleep_for(1200ms);  // three lease lengths: only renewals keep it there
  CHECK(registered_at(a->rpc_endpoint(), item.service_id));

  // Lookup A comes back empty (its data gone): the renewal fails and the keeper registers again.
  a.reset();
  std::filesystem::remove_all(dir.file("a"));
  a = start_lookup(dir.file("a"), port_a);
  CHECK(test::eventually([&] { return registered_at(a->rpc_endpoint(), item.service_id); }, 5000));

  // A changed item reaches both.
  Entry name;
  name.type = "djinn.attr.Name";
  name.fields["name"] = Value("renamed");
  item.attributes = {name};
  keeper->set_item(item);
  REQUIRE(keeper->wait_registered(5s));
  for (auto* s : {a.get(), b.get()}) {
    auto found = s->registrar().find(item.service_id);
    REQUIRE(found.has_value());
    CHECK(found->attributes == item.attributes);
  }
  keeper.reset();
  CHECK(test::eventually([&] { return !a->registrar().find(item.service_id) && !b->registrar().find(item.service_id); }));
}

TEST_CASE("a registration's and a watch's first renewal go by the registrar's grant, not by this host's clock") {
  test::TempDir dir;
  auto lookup = start_lookup(dir.file("l"), test::free_tcp_port());
  RegistrarClient c({.endpoint = lookup->rpc_endpoint()});
  ServiceItem item;
  item.service_id = ServiceId::random();
  auto reg = c.register_service(item, 1500);
  REQUIRE_MESSAGE(reg.ok(), reg.status().to_string());
  CHECK(reg->granted_ms == 1500);
  auto watch = c.notify(ServiceTemplate{}, kAllTransitions, 1500);
  REQUIRE_MESSAGE(watch.ok(), watch.status().to_string());
  CHECK(watch->granted_ms == 1500);
  // As if the registrar's clock were a minute ahead of this host's: the expiration says a minute
  // is left, the grant says 1.5 s. The renewal manager must renew within the grant.
  reg->item.lease.expiration_ms += 60'000;
  watch->expiration_ms += 60'000;
  CHECK(reg->held_lease().lease.granted_ms == 1500);
  CHECK(watch->held_lease().lease.granted_ms == 1500);
  // A registrar of before grantedMs (0): what the expiration leaves on this host's clock, as then.
  Registered unsaid = *reg;
  unsaid.granted_ms = 0;
  CHECK(unsaid.held_lease().lease.granted_ms > 60'000);
}

TEST_CASE("a registration that reaches a starting lookup before its endpoint is known is refused, not left without a landlord") {
  test::TempDir dir;
  const std::string endpoint = "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port());
  Result<Registered> early = internal_error("not tried");
  Result<NotifyHandle> early_watch = internal_error("not tried");
  fault::arm_call("lookup.service.before_endpoint", [&] {
    RegistrarClient c({.endpoint = endpoint});
    ServiceItem item;
    item.service_id = ServiceId::random();
    early = c.register_service(item, 5000);
    early_watch = c.notify(ServiceTemplate{}, kAllTransitions, 5000);
  });
  LookupServiceOptions o;
  o.data_dir = dir.file("l");
  o.rpc_endpoint = endpoint;
  auto lookup = LookupService::start(o);
  fault::disarm_all();
  REQUIRE_MESSAGE(lookup.ok(), lookup.status().to_string());
  CHECK(early.status().code() == Code::kUnavailable);
  CHECK(early_watch.status().code() == Code::kUnavailable);
  // Once it serves, both are answered with where to renew.
  RegistrarClient c({.endpoint = endpoint});
  ServiceItem item;
  item.service_id = ServiceId::random();
  auto reg = c.register_service(item, 5000);
  REQUIRE_MESSAGE(reg.ok(), reg.status().to_string());
  CHECK(reg->landlord == (*lookup)->rpc_endpoint());
}

TEST_CASE("a registration the renewal manager cannot take is made again until it can, and never lapses for good") {
  // Past the renewal manager's landlords (here one; 64 by default, which lookups that are not what
  // they say could fill), a registration is not renewed: the keeper registers it again at each
  // retry, each one good for its lease, and hands it over once a landlord's place frees.
  test::TempDir dir;
  auto a = start_lookup(dir.file("a"), test::free_tcp_port());
  auto b = start_lookup(dir.file("b"), test::free_tcp_port());
  ServiceItem item;
  item.service_id = ServiceId::random();
  item.interface_types = {"demo.Printer"};
  KeeperOptions options;
  options.lease_ms = 600;
  options.retry_max = 200ms;
  options.max_landlords = 1;
  RegistrationKeeper keeper(item, {a->rpc_endpoint(), b->rpc_endpoint()}, options);
  REQUIRE(keeper.wait_registered(5s));
  for (int i = 0; i < 10; ++i) {  // 2 s, over three leases: at both all along
    std::this_thread::sleep_for(200ms);
    CHECK(a->registrar().find(item.service_id).has_value());
    CHECK(b->registrar().find(item.service_id).has_value());
  }
  keeper.remove_registrar(a->rpc_endpoint());  // frees the one place
  std::this_thread::sleep_for(1500ms);
  CHECK(b->registrar().find(item.service_id).has_value());
}

TEST_CASE("a service moved to another node: the old node's keeper leaves the ServiceID to the new one") {
  test::TempDir dir;
  auto a = start_lookup(dir.file("a"), test::free_tcp_port());
  ServiceItem on_s;
  on_s.service_id = ServiceId::random();
  on_s.interface_types = {"demo.Counter"};
  on_s.endpoints.rpc = "tcp://10.0.0.1:5000";
  ServiceItem on_d = on_s;
  on_d.endpoints.rpc = "tcp://10.0.0.2:5000";
  KeeperOptions options;
  options.lease_ms = 1000;  // renewed a few times while the test watches
  auto at_a = [&]() -> std::optional<ServiceItem> { return a->registrar().find(on_s.service_id); };
  auto endpoints_at_a = [&] {
    auto found = at_a();
    return found ? found->endpoints.rpc : std::string();
  };
  const std::vector<std::string> only_a{a->rpc_endpoint()};
  auto s = std::make_unique<RegistrationKeeper>(on_s, only_a, options);
  REQUIRE(s->wait_registered(5s));
  auto d = std::make_unique<RegistrationKeeper>(on_d, only_a, options);
  REQUIRE(d->wait_registered(5s));
  REQUIRE(test::eventually([&] { return s->superseded() == only_a; }, 5000));
  CHECK(s->registered().empty());
  CHECK(s->wait_registered(0ms));  // nothing left for it to do
  // Several lease lengths later the new node still has it: nobody took it back.
  std::this_thread::sleep_for(2500ms);
  CHECK(endpoints_at_a() == on_d.endpoints.rpc);
  CHECK(d->registered() == only_a);
  CHECK(d->superseded().empty());
  // A lookup discarded and found again (a join manager removes and adds it) changes nothing.
  s->remove_registrar(a->rpc_endpoint());
  s->add_registrar(a->rpc_endpoint());
  CHECK(s->superseded() == only_a);
  // The old keeper stopping cancels nothing of the new node's.
  s.reset();
  std::this_thread::sleep_for(1500ms);
  CHECK(endpoints_at_a() == on_d.endpoints.rpc);

  // A registration lost to the very same item (a twin, or a call of its own whose reply was lost)
  // is renewed under the lease it has now, by both: no registering back and forth.
  auto twin = std::make_unique<RegistrationKeeper>(on_d, only_a, options);
  REQUIRE(twin->wait_registered(5s));
  REQUIRE(test::eventually([&] { return d->registered() == only_a; }, 5000));
  auto first = at_a();
  REQUIRE(first.has_value());
  std::this_thread::sleep_for(2500ms);
  auto later = at_a();
  REQUIRE(later.has_value());
  CHECK(later->lease.id == first->lease.id);
  CHECK(later->endpoints.rpc == on_d.endpoints.rpc);
  CHECK(d->superseded().empty());
  CHECK(twin->superseded().empty());
  // One of them stopping cancels that lease; the other registers again.
  twin.reset();
  CHECK(test::eventually([&] {
    auto found = at_a();
    return found && found->lease.id != first->lease.id;
  }, 5000));
  d.reset();
  CHECK(test::eventually([&] { return !at_a(); }));
}

TEST_CASE("djinn-lease registers itself in lookup with --lookup, under a ServiceID kept across restarts") {
  if (!std::getenv("DJINN_BUILD_DIR")) {
    MESSAGE("DJINN_BUILD_DIR is not set (run through ctest): skipped");
    return;
  }
  test::TempDir dir;
  auto lookup = start_lookup(dir.file("lookup"), test::free_tcp_port());
  std::vector<std::string> args{"--data-dir", dir.file("lease"), "--listen", "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port()),
                                "--events", "tcp://127.0.0.1:*", "--insecure", "--log-level", "warn",
                                "--lookup", lookup->rpc_endpoint(), "--name", "leases-1"};
  ServiceTemplate t{std::nullopt, {"djinn.lease.LeaseManager"}, {}};
  ServiceId first;
  {
    test::ChildProcess p(test::build_path("lease/djinn-lease"), args);
    REQUIRE(test::eventually([&] { return lookup->registrar().lookup(t).has_value(); }, 10000));
    ServiceItem item = *lookup->registrar().lookup(t);
    first = item.service_id;
    CHECK(item.endpoints.rpc == args[5 - 2]);
    kill(p.pid(), SIGTERM);
    CHECK(p.wait(10000) != -1);
    // A clean stop cancels the registration.
    CHECK(test::eventually([&] { return !lookup->registrar().lookup(t).has_value(); }));
  }
  test::ChildProcess p(test::build_path("lease/djinn-lease"), args);
  REQUIRE(test::eventually([&] { return lookup->registrar().lookup(t).has_value(); }, 10000));
  CHECK(lookup->registrar().lookup(t)->service_id == first);
}
