// djinn-lease: the federation's lease manager (DESIGN §4) as a daemon. Serves the lease protocol
// and the renewal service over RPC, publishes lease events, keeps its leases in --data-dir, and
// runs until SIGINT or SIGTERM.
#include <signal.h>

#include <cstdio>

#include "djinn/core/config.h"
#include "djinn/core/log.h"
#include "djinn/core/security.h"
#include "djinn/lease/service.h"

using namespace djinn;

namespace {

constexpr const char* kProgram = "djinn-lease";

int fail(const std::string& message, int code = 1) {
  std::fprintf(stderr, "%s: %s\n", kProgram, message.c_str());
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg(kProgram,
             "The federation's lease manager: grants, renews, cancels and expires leases on plain resources "
             "and for services that delegate their leasing, publishes lease events, and renews leases held "
             "elsewhere on behalf of clients (the renewal service).");
  cfg.add_string("data-dir", "./.djinn/lease", "directory of lease.db and renewal.db (created if missing)");
  cfg.add_string("listen", "tcp://127.0.0.1:4160", "RPC endpoint to bind (tcp://HOST:PORT; port * picks a free one)");
  cfg.add_string("events", "tcp://127.0.0.1:4161", "event (PUB) endpoint to bind (tcp://HOST:PORT; port * picks a free one)");
  cfg.add_duration("max-lease", std::chrono::minutes(5), "longest lease granted; longer requests get this");
  cfg.add_duration("default-lease", std::chrono::seconds(30), "duration granted for ANY (-1)");
  cfg.add_bool("allow-forever", false, "grant FOREVER (-2) leases; refused otherwise");
  cfg.add_string("curve-key", "", "server key pair file (from `djinn-keys generate`); enables CURVE on RPC and events");
  cfg.add_string("keyring", "", "keyring of admitted client keys and their roles (required with --curve-key)");
  cfg.add_bool("insecure", false,
               "serve without CURVE: anyone who can reach the ports may call, in --plaintext-role (trusted "
               "networks and local demos only)");
  cfg.add_string("plaintext-role", "admin", "role of every client with --insecure: admin, service or client");
  cfg.add_int("workers", 2, "threads for lease operations (each durable write waits for an fsync)", 1, 256);
  if (Status st = cfg.parse(argc, argv); !st.ok()) return cfg.exit_code(st);
  log::set_program(kProgram);

  lease::LeaseManagerOptions options;
  options.data_dir = cfg.get_string("data-dir");
  if (options.data_dir.empty()) return fail("--data-dir is empty: give a directory for lease.db", 2);
  options.rpc_endpoint = cfg.get_string("listen");
  options.events_endpoint = cfg.get_string("events");
  options.workers = static_cast<int>(cfg.get_int("workers"));
  options.policy.max_duration = cfg.get_duration("max-lease");
  options.policy.default_duration = cfg.get_duration("default-lease");
  options.policy.allow_forever = cfg.get_bool("allow-forever");
  if (options.policy.max_duration.count() <= 0) return fail("--max-lease must be > 0", 2);
  if (options.policy.default_duration.count() <= 0 || options.policy.default_duration > options.policy.max_duration) {
    return fail("--default-lease " + std::to_string(options.policy.default_duration.count()) +
                    " ms: must be > 0 and at most --max-lease (" + std::to_string(options.policy.max_duration.count()) +
                    " ms)",
                2);
  }
  auto plaintext_role = security::parse_role(cfg.get_string("plaintext-role"));
  if (!plaintext_role || *plaintext_role == security::Role::kNone) {
    return fail("--plaintext-role '" + cfg.get_string("plaintext-role") + "': expected admin, service or client", 2);
  }
  options.plaintext_role = *plaintext_role;
  if (!cfg.get_string("curve-key").empty()) {
    auto pair = security::load_keypair(cfg.get_string("curve-key"));
    if (!pair.ok()) return fail(pair.status().message() + " (create one with `djinn-keys generate FILE`)");
    if (cfg.get_string("keyring").empty()) {
      return fail("--curve-key needs --keyring (create one with `djinn-keys keyring add`)", 2);
    }
    auto ring = security::Keyring::load(cfg.get_string("keyring"));
    if (!ring.ok()) return fail(ring.status().message());
    options.curve = rpc::CurveServer{*pair, std::make_shared<security::Keyring>(std::move(*ring))};
    // The renewal service renews with the daemon's own key, at landlords that share its server
    // key (the federation's usual setup); its key must be in their keyrings.
    options.renewal_curve = rpc::CurveClient{*pair, pair->public_key};
  } else if (!cfg.get_string("keyring").empty()) {
    return fail("--keyring without --curve-key does nothing: give the server key pair too", 2);
  } else if (!cfg.get_bool("insecure")) {
    // DESIGN §3: security is off by default only in `djinn up`'s local demo.
    return fail("no --curve-key: give the server's key pair and a --keyring (create them with `djinn-keys "
                "generate` and `djinn-keys keyring add`), or --insecure to serve plaintext on a trusted network",
                2);
  }
  if (options.curve && cfg.get_bool("insecure")) {
    return fail("--insecure and --curve-key contradict each other: drop one", 2);
  }

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // before any thread starts, so all inherit it

  auto manager = lease::LeaseManager::start(options);
  if (!manager.ok()) return fail(manager.status().to_string());
  // The bound endpoints on stdout, so a script that asked for port * learns the ports.
  std::printf("rpc %s\nevents %s\n", (*manager)->rpc_endpoint().c_str(), (*manager)->events_endpoint().c_str());
  std::fflush(stdout);
  DJINN_LOG(kInfo, "lease") << "started: data in " << options.data_dir << ", max lease "
                            << options.policy.max_duration.count() << " ms, default "
                            << options.policy.default_duration.count() << " ms, forever "
                            << (options.policy.allow_forever ? "allowed" : "refused");
  int sig = 0;
  sigwait(&signals, &sig);
  DJINN_LOG(kInfo, "lease") << "stopping on " << (sig == SIGINT ? "SIGINT" : "SIGTERM");
  (*manager)->stop();
  return 0;
}
