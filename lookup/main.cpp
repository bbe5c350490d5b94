// djinn-lookup: the federation's lookup service (DESIGN §5) as a daemon. Serves the registrar
// ("lookup.*") and the lease protocol for its registrations over RPC, publishes notify and lease
// events, keeps its items and leases in --data-dir, announces itself for discovery (Avahi DNS-SD
// and the multicast fallback, docs/discovery.md), and runs until SIGINT or SIGTERM.
#include <cstdio>

#include "djinn/core/config.h"
#include "djinn/core/daemon_flags.h"
#include "djinn/core/log.h"
#include "djinn/discovery/announcer.h"
#include "djinn/lease/flags.h"
#include "djinn/lookup/keeper.h"
#include "djinn/lookup/service.h"

using namespace djinn;

namespace {

constexpr const char* kProgram = "djinn-lookup";

}  // namespace

int main(int argc, char** argv) {
  Config cfg(kProgram,
             "The federation's lookup service: stores service items under registration leases, answers "
             "template queries, and sends notify events for the transitions of items against registered "
             "templates. Registrations are renewed and cancelled with the lease protocol on the same port.");
  cfg.add_string("data-dir", "./.djinn/lookup", "directory of lookup.db (items, notify registrations and their leases; created if missing)");
  add_endpoint_flags(cfg, 4162, 4163);
  cfg.add_string("groups", "public", "comma-separated groups this lookup serves (in its own item, for discovery)");
  cfg.add_string("name", "lookup", "name in the lookup's own item (djinn.attr.Name) and in logs");
  lease::add_policy_flags(cfg, "registration or notify lease", false);
  cfg.add_int("max-item-bytes", 64 * 1024, "largest service item accepted (encoded bytes)", 1024, 16 << 20);
  cfg.add_int("max-items", 1'000'000, "most items held; registrations beyond get RESOURCE_EXHAUSTED", 1, 100'000'000);
  cfg.add_int("max-notify", 100'000,
              "most notify registrations held, from all clients together (each change is matched against every one, "
              "and sends its item to each it concerns); more get RESOURCE_EXHAUSTED",
              1, 10'000'000);
  add_security_flags(cfg);
  cfg.add_int("workers", 2, "threads for queries that may be long and for durable writes", 1, 256);
  cfg.add_string("announce", "avahi,multicast",
                 "how the lookup makes itself known: avahi (DNS-SD _djinn-lookup._tcp), multicast (UDP "
                 "239.255.41.60:4160), both comma-separated, or none (reachable by djinn:// locators only)");
  cfg.add_duration("announce-interval", std::chrono::seconds(5), "time between multicast announcements");
  cfg.add_string("multicast-interface", "",
                 "interface (name or address) for multicast announcements; default: the interface of --listen's "
                 "address (lo for 127.0.0.1), or the routing table's choice when --listen binds a wildcard");
  if (Status st = cfg.parse(argc, argv); !st.ok()) return cfg.exit_code(st);
  log::set_program(kProgram);

  lookup::LookupServiceOptions options;
  options.data_dir = cfg.get_string("data-dir");
  if (options.data_dir.empty()) return cfg.fail("--data-dir is empty: give a directory for lookup.db", 2);
  options.rpc_endpoint = cfg.get_string("listen");
  options.events_endpoint = cfg.get_string("events");
  options.advertise_host = cfg.get_string("advertise-host");
  options.groups = lookup::split_list(cfg.get_string("groups"));
  if (options.groups.empty()) return cfg.fail("--groups is empty: name at least one group (e.g. public)", 2);
  options.name = cfg.get_string("name");
  Result<lease::Policy> policy = lease::policy_from_flags(cfg, false);
  if (!policy.ok()) return cfg.fail(policy.status().message(), 2);
  options.policy = *policy;
  options.max_item_bytes = static_cast<size_t>(cfg.get_int("max-item-bytes"));
  options.max_items = static_cast<size_t>(cfg.get_int("max-items"));
  options.max_notify = static_cast<size_t>(cfg.get_int("max-notify"));
  options.workers = static_cast<int>(cfg.get_int("workers"));
  Result<ServerSecurity> security = security_from_flags(cfg);
  if (!security.ok()) return cfg.fail(security.status().message(), security.status().code() == Code::kInvalidArgument ? 2 : 1);
  options.curve = security->curve;
  options.plaintext_role = security->plaintext_role;

  bool announce_avahi = false, announce_multicast = false;
  for (const std::string& a : lookup::split_list(cfg.get_string("announce"))) {
    if (a == "avahi") {
      announce_avahi = true;
    } else if (a == "multicast") {
      announce_multicast = true;
    } else if (a != "none") {
      return cfg.fail("--announce '" + a + "': expected avahi, multicast or none", 2);
    }
  }
  std::chrono::milliseconds announce_interval = cfg.get_duration("announce-interval");
  if (announce_multicast && announce_interval.count() < 100) {
    return cfg.fail("--announce-interval " + std::to_string(announce_interval.count()) + "ms: at least 100ms", 2);
  }

  block_stop_signals();  // before any thread starts, so all inherit the mask
  raise_open_file_limit();

  auto service = lookup::LookupService::start(options);
  if (!service.ok()) {
    return cfg.fail(service.status().to_string(), service.status().code() == Code::kInvalidArgument ? 2 : 1);
  }
  // The bound endpoints on stdout, so a script that asked for port * learns the ports.
  std::printf("rpc %s\nevents %s\nservice-id %s\n", (*service)->rpc_endpoint().c_str(),
              (*service)->events_endpoint().c_str(), (*service)->registrar().self_id().to_string().c_str());
  std::fflush(stdout);

  std::unique_ptr<discovery::LookupAnnouncer> announcer;
  if (announce_avahi || announce_multicast) {
    discovery::AnnouncerOptions a;
    a.avahi = announce_avahi;
    a.multicast = announce_multicast;
    a.interval = announce_interval;
    a.self.service_id = (*service)->registrar().self_id();
    a.self.groups = options.groups;
    a.self.name = options.name;
    auto rpc = discovery::split_tcp_endpoint((*service)->rpc_endpoint());
    auto events = discovery::split_tcp_endpoint((*service)->events_endpoint());
    if (!rpc) return cfg.fail("cannot announce " + (*service)->rpc_endpoint() + ": only tcp:// endpoints are announced", 2);
    a.self.rpc_port = rpc->second;
    if (events) a.self.events_port = events->second;
    // The address to dial: --advertise-host, else --listen's own address when it names one; with
    // a wildcard, listeners use the address the announcement came from.
    auto bound = discovery::split_tcp_endpoint(options.rpc_endpoint);
    bool wildcard = !bound || bound->first == "*" || bound->first == "0.0.0.0" || bound->first == "::";
    if (!options.advertise_host.empty()) {
      a.self.host = options.advertise_host;
    } else if (!wildcard) {
      a.self.host = bound->first;
    }
    // Multicast leaves by the interface the lookup serves on: a lookup on loopback stays on lo.
    a.multicast_options.interface = cfg.get_string("multicast-interface");
    if (a.multicast_options.interface.empty() && !wildcard) {
      a.multicast_options.interface = bound->first.rfind("127.", 0) == 0 ? "lo" : bound->first;
    }
    auto started = discovery::LookupAnnouncer::start(a);
    if (!started.ok()) return cfg.fail("announcing: " + started.status().to_string(), 2);
    announcer = std::move(*started);
  }

  const char* sig = wait_for_stop_signal();
  DJINN_LOG(kInfo, "lookup") << "stopping on " << sig;
  announcer.reset();
  (*service)->stop();
  return 0;
}
