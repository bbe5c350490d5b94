// djinn-echo: calls the echo service and prints what it answers.
#include <chrono>
#include <cstdio>

#include "djinn/core/config.h"
#include "djinn/core/rpc.h"
#include "djinn/core/security.h"
#include "djinn/examples/echo.capnp.h"

using namespace djinn;

int main(int argc, char** argv) {
  Config cfg("djinn-echo", "Calls echo.echo on a djinn-echo-server with the given words.\n"
                           "example: djinn-echo --connect tcp://127.0.0.1:5555 hello federation");
  cfg.add_string("connect", "tcp://127.0.0.1:5555", "the server's endpoint");
  cfg.add_string("method", "echo.echo", "method to call");
  cfg.add_string("server-key", "", "the server's public key (.pub file or Z85); enables CURVE");
  cfg.add_string("key", "", "this client's key pair file (with --server-key)");
  cfg.add_int("count", 1, "calls to make; more than one prints the rate", 1, 100000000);
  cfg.add_duration("timeout", std::chrono::seconds(5), "deadline of each call");
  if (Status st = cfg.parse(argc, argv); !st.ok()) return cfg.exit_code(st);

  rpc::ClientOptions options;
  options.endpoint = cfg.get_string("connect");
  if (!cfg.get_string("server-key").empty()) {
    auto server_key = security::load_public_key(cfg.get_string("server-key"));
    if (!server_key.ok()) return std::fprintf(stderr, "djinn-echo: %s\n", server_key.status().message().c_str()), 1;
    if (cfg.get_string("key").empty()) {
      std::fprintf(stderr, "djinn-echo: --server-key needs --key (create one with `djinn-keys generate FILE`)\n");
      return 2;
    }
    auto pair = security::load_keypair(cfg.get_string("key"));
    if (!pair.ok()) return std::fprintf(stderr, "djinn-echo: %s\n", pair.status().message().c_str()), 1;
    options.curve = rpc::CurveClient{*pair, *server_key};
  }
  std::string text;
  for (const auto& w : cfg.positional()) text += (text.empty() ? "" : " ") + w;
  if (text.empty()) text = "hello from djinn";

  rpc::Client client(options);
  rpc::CallOptions call{.timeout = cfg.get_duration("timeout"), .idempotent = true};
  int64_t count = cfg.get_int("count");
  auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < count; ++i) {
    capnp::MallocMessageBuilder msg;
    msg.initRoot<examples::EchoParams>().setText(text);
    rpc::Reply reply = client.call(cfg.get_string("method"), msg, call);
    if (!reply.ok()) {
      std::fprintf(stderr, "djinn-echo: %s\n", reply.status().to_string().c_str());
      return 1;
    }
    if (i == 0 || i + 1 == count) {
      auto r = reply.results<examples::EchoResults>();
      std::printf("reply: \"%s\" (call %llu served by %s)\n", r.getText().cStr(),
                  static_cast<unsigned long long>(r.getServed()), options.endpoint.c_str());
    }
  }
  if (count > 1) {
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("%lld calls in %.3f s: %.0f calls/s, %.1f us per round trip\n", static_cast<long long>(count), secs,
                count / secs, secs * 1e6 / count);
  }
  return 0;
}
