// djinn-space: the federation's object space (DESIGN §6) as a daemon. Serves entries, large values,
// the lease protocol for entry leases, the 2PC participant side and (by default) a transaction
// manager over RPC, publishes notify and lease events, keeps everything in --data-dir, registers
// itself in lookup (--lookup), and runs until SIGINT or SIGTERM.
#include <cstdio>

#include "djinn/core/config.h"
#include "djinn/core/daemon_flags.h"
#include "djinn/core/log.h"
#include "djinn/lease/flags.h"
#include "djinn/lookup/keeper.h"
#include "djinn/space/service.h"

using namespace djinn;

namespace {

constexpr const char* kProgram = "djinn-space";

}  // namespace

int main(int argc, char** argv) {
  Config cfg(kProgram,
             "The federation's object space: typed entries written under leases, read and taken by template "
             "(blocking or not, one taker per entry), notify events for matching writes, transactions (it is a 2PC "
             "participant and, with --txn-manager, a transaction manager), and large values stored once as "
             "content-addressed chunks. Entry leases are renewed and cancelled with the lease protocol on the same "
             "port.");
  cfg.add_string("data-dir", "./.djinn/space",
                 "directory of space.db (entries, notify registrations, leases, prepared transactions), values/ "
                 "(chunks and manifests), txn.db (the manager's log) and service-id; created if missing");
  add_endpoint_flags(cfg, 4166, 4167);
  cfg.add_string("name", "space", "name in the registered item (djinn.attr.Name) and in logs");
  lease::add_policy_flags(cfg, "entry or notify lease", true);
  cfg.add_int("max-entry-bytes", 64 * 1024,
              "largest entry (encoded bytes) and template accepted; larger content goes in values", 256,
              static_cast<int64_t>(space::kMaxChunkBytes));
  cfg.add_int("max-entries", 10'000'000, "most entries held; writes beyond get RESOURCE_EXHAUSTED", 1, 1'000'000'000);
  cfg.add_bool("txn-manager", true, "also serve a transaction manager (txn.*) on the RPC port, its log in txn.db");
  cfg.add_duration("value-grace", std::chrono::minutes(10),
                   "how long a value no entry refers to, or a chunk no value names, is kept after its last put or "
                   "ask before it is collected (at least 1s; SpaceClient::put_value keeps its chunks through a "
                   "longer upload)");
  cfg.add_int("max-value-bytes", 0,
              "most bytes of value chunks and manifests held (0: no limit); a put past it gets RESOURCE_EXHAUSTED "
              "and stores nothing",
              0, INT64_MAX);
  cfg.add_duration("value-gc-interval", std::chrono::seconds(30), "time between collections of unreferenced values");
  cfg.add_string("lookup", "",
                 "comma-separated RPC endpoints of lookup services to register with (tcp://HOST:PORT,...); the "
                 "registration is renewed and made again whenever a lookup loses it");
  add_security_flags(cfg);
  cfg.add_int("workers", 4, "threads for chunk transfers, transactions and other calls that wait for the disk", 1, 256);
  if (Status st = cfg.parse(argc, argv); !st.ok()) return cfg.exit_code(st);
  log::set_program(kProgram);

  space::SpaceServiceOptions options;
  options.data_dir = cfg.get_string("data-dir");
  if (options.data_dir.empty()) return cfg.fail("--data-dir is empty: give a directory for space.db and values/", 2);
  options.rpc_endpoint = cfg.get_string("listen");
  options.events_endpoint = cfg.get_string("events");
  options.advertise_host = cfg.get_string("advertise-host");
  options.name = cfg.get_string("name");
  Result<lease::Policy> policy = lease::policy_from_flags(cfg, true);
  if (!policy.ok()) return cfg.fail(policy.status().message(), 2);
  options.policy = *policy;
  options.max_entry_bytes = static_cast<size_t>(cfg.get_int("max-entry-bytes"));
  options.max_entries = static_cast<size_t>(cfg.get_int("max-entries"));
  options.txn_manager = cfg.get_bool("txn-manager");
  options.value_grace = cfg.get_duration("value-grace");
  // Chunks are put before the value naming them: an uploader asks about them every half grace.
  if (options.value_grace < std::chrono::seconds(1)) return cfg.fail("--value-grace: at least 1s", 2);
  options.value_gc_interval = cfg.get_duration("value-gc-interval");
  options.max_value_bytes = static_cast<uint64_t>(cfg.get_int("max-value-bytes"));
  if (options.value_gc_interval.count() < 100) return cfg.fail("--value-gc-interval: at least 100ms", 2);
  options.workers = static_cast<int>(cfg.get_int("workers"));
  Result<ServerSecurity> security = security_from_flags(cfg);
  if (!security.ok()) return cfg.fail(security.status().message(), security.status().code() == Code::kInvalidArgument ? 2 : 1);
  options.curve = security->curve;
  options.plaintext_role = security->plaintext_role;
  // Managers and participants of the federation share its server key, as the renewal service and
  // the registration keeper assume too.
  if (security->key_pair) options.client_curve = rpc::CurveClient{*security->key_pair, security->key_pair->public_key};

  std::vector<std::string> lookups = lookup::split_list(cfg.get_string("lookup"));
  for (const std::string& l : lookups) {
    if (l.rfind("tcp://", 0) != 0) return cfg.fail("--lookup '" + l + "': expected tcp://HOST:PORT", 2);
  }

  block_stop_signals();  // before any thread starts, so all inherit the mask
  raise_open_file_limit();

  auto service = space::SpaceService::start(options);
  if (!service.ok()) {
    return cfg.fail(service.status().to_string(), service.status().code() == Code::kInvalidArgument ? 2 : 1);
  }
  // The bound endpoints on stdout, so a script that asked for port * learns the ports.
  std::printf("rpc %s\nevents %s\nservice-id %s\n", (*service)->rpc_endpoint().c_str(),
              (*service)->events_endpoint().c_str(), (*service)->service_id().to_string().c_str());
  std::fflush(stdout);
  std::unique_ptr<lookup::RegistrationKeeper> keeper;
  if (!lookups.empty()) {
    lookup::KeeperOptions keep;
    ServiceItem item = (*service)->item();
    if (security->key_pair) keep.curve = rpc::CurveClient{*security->key_pair, security->key_pair->public_key};
    keeper = std::make_unique<lookup::RegistrationKeeper>(std::move(item), lookups, keep);
  }
  const char* sig = wait_for_stop_signal();
  DJINN_LOG(kInfo, "space") << "stopping on " << sig;
  keeper.reset();  // cancels the registrations while the service still answers
  (*service)->stop();
  return 0;
}
