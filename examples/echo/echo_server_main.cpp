// djinn-echo-server: serves the echo service until SIGINT or SIGTERM.
#include <signal.h>

#include <cstdio>

#include "djinn/core/config.h"
#include "djinn/core/log.h"
#include "djinn/core/security.h"
#include "echo_service.h"

using namespace djinn;

int main(int argc, char** argv) {
  Config cfg("djinn-echo-server", "Serves the echo service (echo.echo, echo.slow, echo.later, echo.admin) over djinn RPC.");
  cfg.add_string("listen", "tcp://127.0.0.1:5555", "endpoint to bind (tcp://HOST:PORT; port * picks a free one)");
  cfg.add_string("curve-key", "", "server key pair file (from `djinn-keys generate`); enables CURVE");
  cfg.add_string("keyring", "", "keyring of admitted client keys (required with --curve-key)");
  cfg.add_int("workers", 2, "threads for blocking methods", 0, 256);
  cfg.add_int("max-frame", 16 << 20, "largest request frame accepted, in bytes", 1024, 1 << 30);
  if (Status st = cfg.parse(argc, argv); !st.ok()) return cfg.exit_code(st);
  log::set_program("djinn-echo-server");

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // before any thread starts, so all inherit it

  rpc::ServerOptions options;
  options.endpoints = {cfg.get_string("listen")};
  options.workers = static_cast<int>(cfg.get_int("workers"));
  options.limits.max_frame_bytes = static_cast<size_t>(cfg.get_int("max-frame"));
  if (!cfg.get_string("curve-key").empty()) {
    auto pair = security::load_keypair(cfg.get_string("curve-key"));
    if (!pair.ok()) return std::fprintf(stderr, "djinn-echo-server: %s\n", pair.status().message().c_str()), 1;
    if (cfg.get_string("keyring").empty()) {
      std::fprintf(stderr, "djinn-echo-server: --curve-key needs --keyring (create one with `djinn-keys keyring add`)\n");
      return 2;
    }
    auto ring = security::Keyring::load(cfg.get_string("keyring"));
    if (!ring.ok()) return std::fprintf(stderr, "djinn-echo-server: %s\n", ring.status().message().c_str()), 1;
    options.curve = rpc::CurveServer{*pair, std::make_shared<security::Keyring>(std::move(*ring))};
  }
  rpc::Server server(options);
  examples::EchoService echo(server);
  if (Status st = server.start(); !st.ok()) {
    std::fprintf(stderr, "djinn-echo-server: %s\n", st.message().c_str());
    return 1;
  }
  // The bound endpoint on stdout, so a script that asked for port * learns the port.
  std::printf("%s\n", server.endpoints()[0].c_str());
  std::fflush(stdout);
  DJINN_LOG(kInfo, "echo") << "serving on " << server.endpoints()[0] << (options.curve ? " with CURVE" : "");
  int sig = 0;
  sigwait(&signals, &sig);
  DJINN_LOG(kInfo, "echo") << "stopping after " << echo.served() << " calls";
  server.stop();
  return 0;
}
