// djinn-lease: the federation's lease manager (DESIGN §4) as a daemon. Serves the lease protocol
// and the renewal service over RPC, publishes lease events, keeps its leases in --data-dir, and
// runs until SIGINT or SIGTERM.
#include <cstdio>

#include "djinn/core/config.h"
#include "djinn/core/daemon_flags.h"
#include "djinn/core/log.h"
#include "djinn/lease/flags.h"
#include "djinn/lease/service.h"
#include "djinn/lookup/keeper.h"

using namespace djinn;

namespace {

constexpr const char* kProgram = "djinn-lease";

}  // namespace

int main(int argc, char** argv) {
  Config cfg(kProgram,
             "The federation's lease manager: grants, renews, cancels and expires leases on plain resources "
             "and for services that delegate their leasing, publishes lease events, and renews leases held "
             "elsewhere on behalf of clients (the renewal service).");
  cfg.add_string("data-dir", "./.djinn/lease", "directory of lease.db and renewal.db (created if missing)");
  add_endpoint_flags(cfg, 4160, 4161);
  lease::add_policy_flags(cfg, "lease", true);
  cfg.add_int("max-waiting-grants", static_cast<int64_t>(lease::Policy{}.max_waiting_grants),
              "grants that may wait at once (waitMs > 0) for resources others hold; more are refused "
              "(RESOURCE_EXHAUSTED)",
              0, 10'000'000);
  cfg.add_duration("renewal-patience", lease::LeaseManagerOptions{}.renewal_patience,
                   "a lease handed to the renewal service whose landlord does not renew it once within this "
                   "long is reported failed (renewal.failed), not retried until the expiration its client gave "
                   "(0: until then)");
  cfg.add_string("lookup", "",
                 "comma-separated RPC endpoints of lookup services to register with (tcp://HOST:PORT,...); the "
                 "registration is renewed and made again whenever a lookup loses it");
  cfg.add_string("name", "lease", "name in the registered item (djinn.attr.Name)");
  add_security_flags(cfg);
  cfg.add_int("workers", 2, "threads for lease operations (each durable write waits for an fsync)", 1, 256);
  if (Status st = cfg.parse(argc, argv); !st.ok()) return cfg.exit_code(st);
  log::set_program(kProgram);

  lease::LeaseManagerOptions options;
  options.data_dir = cfg.get_string("data-dir");
  if (options.data_dir.empty()) return cfg.fail("--data-dir is empty: give a directory for lease.db", 2);
  options.rpc_endpoint = cfg.get_string("listen");
  options.events_endpoint = cfg.get_string("events");
  options.advertise_host = cfg.get_string("advertise-host");
  options.workers = static_cast<int>(cfg.get_int("workers"));
  Result<lease::Policy> policy = lease::policy_from_flags(cfg, true);
  if (!policy.ok()) return cfg.fail(policy.status().message(), 2);
  options.policy = *policy;
  options.policy.max_waiting_grants = static_cast<size_t>(cfg.get_int("max-waiting-grants"));
  options.renewal_patience = cfg.get_duration("renewal-patience");
  Result<ServerSecurity> security = security_from_flags(cfg);
  if (!security.ok()) return cfg.fail(security.status().message(), security.status().code() == Code::kInvalidArgument ? 2 : 1);
  options.curve = security->curve;
  options.plaintext_role = security->plaintext_role;
  // The renewal service renews with the daemon's own key, at landlords that share its server key
  // (the federation's usual setup); its key must be in their keyrings.
  if (security->key_pair) options.renewal_curve = rpc::CurveClient{*security->key_pair, security->key_pair->public_key};

  std::vector<std::string> lookups = lookup::split_list(cfg.get_string("lookup"));
  for (const std::string& l : lookups) {
    if (l.rfind("tcp://", 0) != 0) return cfg.fail("--lookup '" + l + "': expected tcp://HOST:PORT", 2);
  }

  block_stop_signals();  // before any thread starts, so all inherit the mask
  raise_open_file_limit();

  auto manager = lease::LeaseManager::start(options);
  if (!manager.ok()) return cfg.fail(manager.status().to_string());
  // The bound endpoints on stdout, so a script that asked for port * learns the ports.
  std::printf("rpc %s\nevents %s\n", (*manager)->rpc_endpoint().c_str(), (*manager)->events_endpoint().c_str());
  std::fflush(stdout);
  std::unique_ptr<lookup::RegistrationKeeper> keeper;
  if (!lookups.empty()) {
    Result<ServiceId> id = lookup::load_or_mint_service_id(options.data_dir);
    if (!id.ok()) return cfg.fail(id.status().to_string());
    ServiceItem item;
    item.service_id = *id;
    item.interface_types = {"djinn.lease.LeaseManager", "djinn.lease.Landlord", "djinn.lease.RenewalService"};
    Entry name;
    name.type = "djinn.attr.Name";
    name.fields["name"] = Value(cfg.get_string("name"));
    item.attributes.push_back(std::move(name));
    item.endpoints = Endpoints{(*manager)->rpc_endpoint(), (*manager)->events_endpoint()};
    lookup::KeeperOptions keep;
    if (security->key_pair) {
      // Lookups of the federation share its server key, as the renewal service assumes too.
      keep.curve = rpc::CurveClient{*security->key_pair, security->key_pair->public_key};
      item.public_key = security->key_pair->public_key;
    }
    keeper = std::make_unique<lookup::RegistrationKeeper>(std::move(item), lookups, keep);
  }
  DJINN_LOG(kInfo, "lease") << "started: data in " << options.data_dir << ", max lease "
                            << options.policy.max_duration.count() << " ms, default "
                            << options.policy.default_duration.count() << " ms, forever "
                            << (options.policy.allow_forever ? "allowed" : "refused");
  const char* sig = wait_for_stop_signal();
  DJINN_LOG(kInfo, "lease") << "stopping on " << sig;
  keeper.reset();  // cancels the registrations while the service still answers
  (*manager)->stop();
  return 0;
}
