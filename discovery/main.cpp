// djinn-discovery: the discovery service (DESIGN §5) as a daemon, for clients that cannot discover
// lookup services themselves (the bridge, a client on another subnet). It discovers every lookup
// it can reach (Avahi, multicast, --locators) and serves interest registrations ("discovery.*")
// with discovered/discarded events. Runs until SIGINT or SIGTERM.
#include <cstdio>

#include "djinn/core/config.h"
#include "djinn/core/daemon_flags.h"
#include "djinn/core/log.h"
#include "djinn/discovery/service.h"
#include "djinn/lookup/keeper.h"

using namespace djinn;

namespace {

constexpr const char* kProgram = "djinn-discovery";

}  // namespace

int main(int argc, char** argv) {
  Config cfg(kProgram,
             "The federation's discovery service: discovers lookup services (Avahi DNS-SD, the UDP multicast "
             "fallback on 239.255.41.60:4160, unicast locators) on behalf of clients that cannot, which register "
             "interest in groups and receive discovered and discarded events.");
  add_endpoint_flags(cfg, 4164, 4165);
  cfg.add_string("discover", "avahi,multicast", "how to discover: avahi, multicast, both comma-separated, or none (locators only)");
  cfg.add_string("locators", "", "comma-separated unicast locators of lookups to watch (djinn://HOST:PORT,...)");
  cfg.add_string("multicast-interface", "",
                 "interface (name or address) for multicast; default: the interface of --listen's address (lo for "
                 "127.0.0.1), or the routing table's choice when --listen binds a wildcard");
  cfg.add_duration("probe-interval", std::chrono::seconds(1), "how often each discovered lookup is asked whether it is alive");
  cfg.add_duration("probe-timeout", std::chrono::seconds(1), "how long a probe waits for its answer");
  cfg.add_duration("discard-after", std::chrono::seconds(5), "a lookup heard of by no means for this long is discarded");
  cfg.add_duration("max-interest-lease", std::chrono::minutes(5), "longest interest registration granted (clients renew)");
  cfg.add_int("max-interests", 10'000, "most interest registrations held", 1, 10'000'000);
  add_security_flags(cfg);
  if (Status st = cfg.parse(argc, argv); !st.ok()) return cfg.exit_code(st);
  log::set_program(kProgram);

  discovery::DiscoveryServiceOptions options;
  options.rpc_endpoint = cfg.get_string("listen");
  options.events_endpoint = cfg.get_string("events");
  options.advertise_host = cfg.get_string("advertise-host");
  options.discovery.avahi = options.discovery.multicast = false;
  for (const std::string& d : lookup::split_list(cfg.get_string("discover"))) {
    if (d == "avahi") {
      options.discovery.avahi = true;
    } else if (d == "multicast") {
      options.discovery.multicast = true;
    } else if (d != "none") {
      return cfg.fail("--discover '" + d + "': expected avahi, multicast or none", 2);
    }
  }
  options.discovery.locators = lookup::split_list(cfg.get_string("locators"));
  for (const std::string& l : options.discovery.locators) {
    if (auto parsed = discovery::parse_locator(l); !parsed.ok()) return cfg.fail("--locators: " + parsed.status().message(), 2);
  }
  std::string iface = cfg.get_string("multicast-interface");
  if (iface.empty()) {
    auto host_of = [](const std::string& ep) -> std::string {
      size_t start = ep.find("://");
      size_t colon = ep.rfind(':');
      if (start == std::string::npos || colon == std::string::npos || colon < start + 3) return "";
      return ep.substr(start + 3, colon - start - 3);
    };
    std::string host = host_of(options.rpc_endpoint);
    if (host.rfind("127.", 0) == 0) {
      iface = "lo";
    } else if (!host.empty() && host != "*" && host != "0.0.0.0") {
      iface = host;
    }
  }
  options.discovery.multicast_options.interface = iface;
  options.discovery.probe_interval = cfg.get_duration("probe-interval");
  options.discovery.probe_timeout = cfg.get_duration("probe-timeout");
  options.discovery.discard_after = cfg.get_duration("discard-after");
  if (options.discovery.probe_interval.count() <= 0 || options.discovery.probe_timeout.count() <= 0 ||
      options.discovery.discard_after.count() <= 0) {
    return cfg.fail("--probe-interval, --probe-timeout and --discard-after must be > 0", 2);
  }
  options.max_interest_lease = cfg.get_duration("max-interest-lease");
  if (options.max_interest_lease.count() <= 0) return cfg.fail("--max-interest-lease must be > 0", 2);
  options.max_interests = static_cast<size_t>(cfg.get_int("max-interests"));
  Result<ServerSecurity> security = security_from_flags(cfg);
  if (!security.ok()) return cfg.fail(security.status().message(), security.status().code() == Code::kInvalidArgument ? 2 : 1);
  options.curve = security->curve;
  options.plaintext_role = security->plaintext_role;

  block_stop_signals();  // before any thread starts, so all inherit the mask
  raise_open_file_limit();

  auto service = discovery::DiscoveryService::start(options);
  if (!service.ok()) {
    return cfg.fail(service.status().to_string(), service.status().code() == Code::kInvalidArgument ? 2 : 1);
  }
  std::printf("rpc %s\nevents %s\n", (*service)->rpc_endpoint().c_str(), (*service)->events_endpoint().c_str());
  std::fflush(stdout);
  const char* sig = wait_for_stop_signal();
  DJINN_LOG(kInfo, "discovery") << "stopping on " << sig;
  (*service)->stop();
  return 0;
}
