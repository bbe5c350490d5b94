// The djinn-discovery and djinn-lookup executables: --help, refusals of bad flags, a served
// discovery service that reports a lookup given by locator, and djinn-lookup's announcement flags.
// Nothing here uses multicast or Avahi (--discover none, --announce none): it runs on any machine.
#include <doctest/doctest.h>

#include <sys/wait.h>

#include "djinn/discovery/service.h"
#include "djinn/lookup/service.h"
#include "support/test_support.h"

using namespace djinn;
using namespace std::chrono_literals;

namespace {

using test::exit_code_of;

}  // namespace

TEST_CASE("djinn-discovery: --help, refusals, and interest served for a lookup given by locator") {
  if (!std::getenv("DJINN_BUILD_DIR")) {
    MESSAGE("DJINN_BUILD_DIR is not set (run through ctest): skipped");
    return;
  }
  const std::string prog = "discovery/djinn-discovery";
  std::vector<std::string> base{"--listen", "tcp://127.0.0.1:*", "--events", "tcp://127.0.0.1:*", "--discover", "none",
                                "--log-level", "off"};
  auto with = [&](const std::vector<std::string>& extra) { return test::args_with(base, extra); };
  CHECK(exit_code_of(prog, {"--help"}) == 0);
  CHECK(exit_code_of(prog, base) == 2);  // neither CURVE nor --insecure
  CHECK(exit_code_of(prog, with({"--insecure", "--discover", "carrier-pigeon"})) == 2);
  CHECK(exit_code_of(prog, with({"--insecure", "--locators", "tcp://h:1"})) == 2);
  CHECK(exit_code_of(prog, with({"--insecure", "--discard-after", "0"})) == 2);
  CHECK(exit_code_of("lookup/djinn-lookup", {"--insecure", "--data-dir", "x", "--announce", "smoke-signals"}) == 2);

  test::TempDir dir;
  lookup::LookupServiceOptions lo;
  lo.data_dir = dir.file("lookup");
  lo.rpc_endpoint = "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port());
  lo.groups = {"lab"};
  auto lookup = lookup::LookupService::start(lo);
  REQUIRE(lookup.ok());
  int port = test::free_tcp_port();
  std::string endpoint = "tcp://127.0.0.1:" + std::to_string(port);
  test::ChildProcess p(test::build_path(prog),
                       with({"--insecure", "--listen", endpoint, "--locators", "djinn://127.0.0.1:" + lo.rpc_endpoint.substr(lo.rpc_endpoint.rfind(':') + 1),
                             "--probe-interval", "100ms"}));
  discovery::DiscoveryClient client({.endpoint = endpoint});
  std::optional<discovery::Interest> interest;
  REQUIRE(test::eventually([&] {
    rpc::CallOptions call;
    call.timeout = 200ms;
    auto r = client.register_interest({"lab"}, 10'000, call);
    if (!r.ok() || r->lookups.empty()) return false;
    interest = *r;
    return true;
  }, 10000));
  CHECK(interest->lookups[0].service_id == (*lookup)->registrar().self_id());
  CHECK(interest->lookups[0].via == "unicast");
  auto none = client.register_interest({"elsewhere"}, 10'000);
  REQUIRE(none.ok());
  CHECK(none->lookups.empty());
  kill(p.pid(), SIGTERM);
  int status = p.wait(10000);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}
