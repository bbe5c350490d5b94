// djinn-lookup: the federation's lookup service (DESIGN §5) as a daemon. Serves the registrar
// ("lookup.*") and the lease protocol for its registrations over RPC, publishes notify and lease
// events, keeps its items and leases in --data-dir, and runs until SIGINT or SIGTERM.
#include <cstdio>

#include "djinn/core/config.h"
#include "djinn/core/daemon_flags.h"
#include "djinn/core/log.h"
#include "djinn/lease/flags.h"
#include "djinn/lookup/keeper.h"
#include "djinn/lookup/service.h"

using namespace djinn;

namespace {

constexpr const char* kProgram = "djinn-lookup";

int fail(const std::string& message, int code = 1) {
  std::fprintf(stderr, "%s: %s\n", kProgram, message.c_str());
  return code;
}

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
  add_security_flags(cfg);
  cfg.add_int("workers", 2, "threads for queries that may be long and for durable writes", 1, 256);
  if (Status st = cfg.parse(argc, argv); !st.ok()) return cfg.exit_code(st);
  log::set_program(kProgram);

  lookup::LookupServiceOptions options;
  options.data_dir = cfg.get_string("data-dir");
  if (options.data_dir.empty()) return fail("--data-dir is empty: give a directory for lookup.db", 2);
  options.rpc_endpoint = cfg.get_string("listen");
  options.events_endpoint = cfg.get_string("events");
  options.advertise_host = cfg.get_string("advertise-host");
  options.groups = lookup::split_list(cfg.get_string("groups"));
  if (options.groups.empty()) return fail("--groups is empty: name at least one group (e.g. public)", 2);
  options.name = cfg.get_string("name");
  Result<lease::Policy> policy = lease::policy_from_flags(cfg, false);
  if (!policy.ok()) return fail(policy.status().message(), 2);
  options.policy = *policy;
  options.max_item_bytes = static_cast<size_t>(cfg.get_int("max-item-bytes"));
  options.max_items = static_cast<size_t>(cfg.get_int("max-items"));
  options.workers = static_cast<int>(cfg.get_int("workers"));
  Result<ServerSecurity> security = security_from_flags(cfg);
  if (!security.ok()) return fail(security.status().message(), security.status().code() == Code::kInvalidArgument ? 2 : 1);
  options.curve = security->curve;
  options.plaintext_role = security->plaintext_role;

  block_stop_signals();  // before any thread starts, so all inherit the mask

  auto service = lookup::LookupService::start(options);
  if (!service.ok()) {
    return fail(service.status().to_string(), service.status().code() == Code::kInvalidArgument ? 2 : 1);
  }
  // The bound endpoints on stdout, so a script that asked for port * learns the ports.
  std::printf("rpc %s\nevents %s\nservice-id %s\n", (*service)->rpc_endpoint().c_str(),
              (*service)->events_endpoint().c_str(), (*service)->registrar().self_id().to_string().c_str());
  std::fflush(stdout);
  const char* sig = wait_for_stop_signal();
  DJINN_LOG(kInfo, "lookup") << "stopping on " << sig;
  (*service)->stop();
  return 0;
}
