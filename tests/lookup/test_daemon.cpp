// The djinn-lookup executable: --help, refusal to serve plaintext unless told, bad flags, and the
// endpoints it prints.
#include <doctest/doctest.h>

#include <sys/wait.h>

#include "djinn/lookup/client.h"
#include "support/test_support.h"

using namespace djinn;
using namespace std::chrono_literals;

namespace {

int exit_code_of(const std::vector<std::string>& args) { return test::exit_code_of("lookup/djinn-lookup", args); }

}  // namespace

TEST_CASE("djinn-lookup: --help, refusals that say what to do, and a served registrar") {
  if (!std::getenv("DJINN_BUILD_DIR")) {
    MESSAGE("DJINN_BUILD_DIR is not set (run through ctest): skipped");
    return;
  }
  test::TempDir dir;
  std::vector<std::string> base{"--data-dir", dir.file("lookup"), "--listen", "tcp://127.0.0.1:*", "--events",
                                "tcp://127.0.0.1:*", "--log-level", "off"};
  auto with = [&](const std::vector<std::string>& extra) { return test::args_with(base, extra); };
  CHECK(exit_code_of({"--help"}) == 0);
  for (const std::vector<std::string>& refused : test::shared_refusals(base, dir)) {
    CAPTURE(refused.back());
    CHECK(exit_code_of(refused) == 2);
  }
  CHECK(exit_code_of(with({"--insecure", "--groups", ""})) == 2);
  CHECK(exit_code_of(with({"--insecure", "--groups", "a b"})) == 2);
  CHECK(exit_code_of(with({"--insecure", "--max-item-bytes", "10"})) == 2);
  CHECK(exit_code_of(with({"--insecure", "--listen", "bogus://x"})) != 0);
  CHECK(exit_code_of(with({"--curve-key", dir.file("missing.key"), "--keyring", dir.file("ring")})) == 1);

  // Served: its own item names its groups.
  int port = test::free_tcp_port();
  std::string endpoint = "tcp://127.0.0.1:" + std::to_string(port);
  test::ChildProcess p(test::build_path("lookup/djinn-lookup"),
                       {"--data-dir", dir.file("served"), "--listen", endpoint, "--events", "tcp://127.0.0.1:*",
                        "--groups", "lab,public", "--name", "lookup-a", "--insecure", "--log-level", "warn"});
  lookup::RegistrarClient client({.endpoint = endpoint});
  REQUIRE(test::eventually([&] {
    rpc::CallOptions call;
    call.timeout = 200ms;
    return client.self(call).ok();
  }, 10000));
  auto self = client.self();
  REQUIRE(self.ok());
  CHECK(self->groups == std::vector<std::string>{"lab", "public"});
  kill(p.pid(), SIGTERM);
  int status = p.wait(10000);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}
