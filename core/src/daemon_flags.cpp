#include "djinn/core/daemon_flags.h"

#include <signal.h>
#include <sys/resource.h>

#include <filesystem>

#include "djinn/core/files.h"

namespace djinn {

void add_security_flags(Config& cfg) {
  cfg.add_string("curve-key", "", "server key pair file (from `djinn-keys generate`); enables CURVE on RPC and events");
  cfg.add_string("keyring", "", "keyring of admitted client keys and their roles (required with --curve-key)");
  cfg.add_bool("insecure", false,
               "serve without CURVE: anyone who can reach the ports may call, in --plaintext-role (trusted "
               "networks and local demos only)");
  cfg.add_string("plaintext-role", "admin", "role of every client with --insecure: admin, service or client");
}

Result<ServerSecurity> security_from_flags(const Config& cfg) {
  ServerSecurity out;
  auto role = security::parse_role(cfg.get_string("plaintext-role"));
  if (!role || *role == security::Role::kNone) {
    return invalid_argument("--plaintext-role '" + cfg.get_string("plaintext-role") +
                            "': expected admin, service or client");
  }
  out.plaintext_role = *role;
  const std::string& key = cfg.get_string("curve-key");
  const std::string& ring_path = cfg.get_string("keyring");
  bool insecure = cfg.get_bool("insecure");
  if (!key.empty()) {
    if (insecure) return invalid_argument("--insecure and --curve-key contradict each other: drop one");
    auto pair = security::load_keypair(key);
    if (!pair.ok()) {
      return Status(pair.status().code(), pair.status().message() + " (create one with `djinn-keys generate FILE`)");
    }
    if (ring_path.empty()) return invalid_argument("--curve-key needs --keyring (create one with `djinn-keys keyring add`)");
    auto ring = security::Keyring::load(ring_path);
    if (!ring.ok()) return ring.status();
    out.curve = rpc::CurveServer{*pair, std::make_shared<security::Keyring>(std::move(*ring))};
    out.key_pair = *pair;
  } else if (!ring_path.empty()) {
    return invalid_argument("--keyring without --curve-key does nothing: give the server key pair too");
  } else if (!insecure) {
    return invalid_argument(
        "no --curve-key: give the server's key pair and a --keyring (create them with `djinn-keys generate` and "
        "`djinn-keys keyring add`), or --insecure to serve plaintext on a trusted network");
  }
  return out;
}

Status ensure_data_dir(const std::string& path) {
  if (path.empty()) return Status::Ok();
  Status made = files::create_directories_synced(path);
  if (!made.ok()) {
    return Status(made.code(), "cannot create data directory '" + path + "': " + made.message() +
                                   " (choose a writable --data-dir)");
  }
  return Status::Ok();
}

void add_endpoint_flags(Config& cfg, int rpc_port, int events_port) {
  cfg.add_string("listen", "tcp://127.0.0.1:" + std::to_string(rpc_port),
                 "RPC endpoint to bind (tcp://HOST:PORT; port * picks a free one)");
  cfg.add_string("events", "tcp://127.0.0.1:" + std::to_string(events_port),
                 "event (PUB) endpoint to bind (tcp://HOST:PORT; port * picks a free one)");
  cfg.add_string("advertise-host", "",
                 "host name or address others dial when --listen or --events binds a wildcard (0.0.0.0 or *); "
                 "default: this machine's host name");
}

namespace {
sigset_t stop_signals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  return signals;
}
}  // namespace

void block_stop_signals() {
  sigset_t signals = stop_signals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
}

uint64_t raise_open_file_limit() {
  struct rlimit limit {};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  if (limit.rlim_cur < limit.rlim_max) {
    struct rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  return limit.rlim_cur == RLIM_INFINITY ? UINT64_MAX : static_cast<uint64_t>(limit.rlim_cur);
}

const char* wait_for_stop_signal() {
  sigset_t signals = stop_signals();
  int sig = 0;
  sigwait(&signals, &sig);
  return sig == SIGINT ? "SIGINT" : "SIGTERM";
}

}  // namespace djinn
