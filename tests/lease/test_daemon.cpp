// The djinn-lease executable: --help, refusal to serve plaintext unless told, bad flags.
#include <doctest/doctest.h>

#include <sys/wait.h>

#include <cstdio>
#include <memory>

#include "support/test_support.h"

using namespace djinn;

namespace {

// Runs djinn-lease with `args` and returns its exit code (-1 if it did not exit in time).
int exit_code_of(const std::vector<std::string>& args) { return test::exit_code_of("lease/djinn-lease", args); }

// What `djinn-lease --help` prints.
std::string help_text() {
  std::unique_ptr<FILE, int (*)(FILE*)> out(popen((test::build_path("lease/djinn-lease") + " --help").c_str(), "r"), pclose);
  REQUIRE(out);
  std::string text;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, out.get())) > 0;) text.append(buf, n);
  return text;
}

}  // namespace

TEST_CASE("djinn-lease: --help, and refusals that say what to do") {
  if (!std::getenv("DJINN_BUILD_DIR")) {
    MESSAGE("DJINN_BUILD_DIR is not set (run through ctest): skipped");
    return;
  }
  test::TempDir dir;
  std::vector<std::string> base{"--data-dir", dir.file("lease"), "--listen", "tcp://127.0.0.1:*", "--events",
                                "tcp://127.0.0.1:*", "--log-level", "off"};
  CHECK(exit_code_of({"--help"}) == 0);
  // Neither CURVE nor --insecure is refused among them (security is off by default only in `djinn up`).
  for (const std::vector<std::string>& refused : test::shared_refusals(base, dir)) {
    CAPTURE(refused.back());
    CHECK(exit_code_of(refused) == 2);
  }
  auto with = [&](const std::vector<std::string>& extra) { return test::args_with(base, extra); };
  CHECK(exit_code_of(with({"--insecure", "--no-such-flag"})) == 2);
  CHECK(help_text().find("--max-waiting-grants N") != std::string::npos);
  CHECK(exit_code_of(with({"--insecure", "--max-waiting-grants", "-1"})) == 2);
  CHECK(exit_code_of(with({"--curve-key", dir.file("missing.key"), "--keyring", dir.file("ring")})) == 1);
}
