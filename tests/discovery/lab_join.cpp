// Discovery and join across the hosts of a LAN lab (run through tests/lab/lab.sh, which builds the
// lab of five hosts: h1..h3 with avahi-daemon, h4 without it, h5 with neither avahi nor multicast,
// and tears it down afterwards even when this fails). Every process runs inside a lab host.
#include <doctest/doctest.h>

#include <signal.h>

#include "lab_host.h"
#include "support/test_support.h"

using namespace djinn;
using namespace djinn::lab;
using namespace std::chrono_literals;

namespace {

// What the agents are told: discarded within 1.5 s of silence, probes every 250 ms.
constexpr int64_t kDiscardAfterMs = 1500;
constexpr int64_t kProbeTimeoutMs = 500;

std::string program(const std::string& relative) { return test::build_path(relative); }

struct Lookup {
  std::unique_ptr<HostProcess> process;
  std::string endpoint;
  std::string id;
};

Lookup start_lookup(const Lab& lab, int host, int port, const std::string& dir, const std::string& groups,
                    const std::string& announce = "avahi,multicast") {
  std::string addr = lab.address(host);
  Lookup l;
  l.endpoint = "tcp://" + addr + ":" + std::to_string(port);
  l.process = std::make_unique<HostProcess>(
      lab, host, program("lookup/djinn-lookup"),
      std::vector<std::string>{"--data-dir", dir, "--listen", l.endpoint, "--events", "tcp://" + addr + ":" + std::to_string(port + 1),
                               "--groups", groups, "--name", "lookup-h" + std::to_string(host) + "-" + std::to_string(port),
                               "--insecure", "--announce", announce, "--announce-interval", "500ms", "--log-level", "warn"});
  auto id = l.process->wait_line([](const std::string& s) { return s.rfind("service-id ", 0) == 0; }, 10s);
  REQUIRE_MESSAGE(id, "djinn-lookup did not start in h" << host);
  l.id = id->substr(11);
  return l;
}

std::unique_ptr<HostProcess> agent(const Lab& lab, int host, std::vector<std::string> args) {
  return std::make_unique<HostProcess>(lab, host, program("tests/discovery/discovery-lab-agent"), args);
}

}  // namespace

TEST_CASE("lab: a service on h3 joins the lookups of its group on h1 and h2, and a client on h1 finds it") {
  auto lab = Lab::from_env();
  if (!lab) {
    MESSAGE("DJINN_LAB is not set (run through tests/lab/lab.sh run): skipped");
    return;
  }
  test::TempDir dir;
  Lookup a = start_lookup(*lab, 1, 4162, dir.file("a"), "public");
  Lookup b = start_lookup(*lab, 2, 4162, dir.file("b"), "public");
  Lookup c = start_lookup(*lab, 2, 4172, dir.file("c"), "other");

  // Real tools see a djinn lookup: avahi-browse in h3 resolves A with its TXT.
  {
    bool seen = false;
    for (int i = 0; i < 20 && !seen; ++i) {
      HostProcess browse(*lab, 3, "/usr/bin/avahi-browse", {"-rtp", "_djinn-lookup._tcp"});
      seen = browse.wait_line([&](const std::string& l) {
        return l.rfind("=;", 0) == 0 && l.find(";" + lab->address(1) + ";4162;") != std::string::npos &&
               l.find("id=" + a.id) != std::string::npos && l.find("groups=public") != std::string::npos;
      }, 3s).has_value();
    }
    CHECK_MESSAGE(seen, "avahi-browse in h3 did not resolve lookup A");
  }

  // The service on h3 and the client on h1 discover through Avahi only here.
  auto join = agent(*lab, 3, {"join", "--groups", "public", "--name", "svc1", "--discover", "avahi"});
  auto find = agent(*lab, 1, {"find", "--groups", "", "--discover", "avahi"});
  REQUIRE(join->wait_for("registered " + a.endpoint, 10s));
  REQUIRE(join->wait_for("registered " + b.endpoint, 10s));
  auto svc = join->wait_for("service ", 1s);
  REQUIRE(svc);
  std::string sid = line_text(*svc).substr(8);
  CHECK(join->wait_line([&](const std::string& l) { return line_text(l).rfind("discovered " + a.endpoint, 0) == 0 && l.find(" avahi") != std::string::npos; }, 1s));
  CHECK(find->wait_for("found " + a.endpoint + " " + sid + " svc1", 10s));
  CHECK(find->wait_for("found " + b.endpoint + " " + sid + " svc1", 10s));

  // Groups: the client (every group) sees lookup C, which holds nothing: the service never joined it.
  CHECK(find->wait_for("discovered " + c.endpoint, 10s));
  CHECK(find->wait_for("empty " + c.endpoint, 10s));
  std::this_thread::sleep_for(1s);  // an absence: give a wrong registration time to show
  CHECK(!join->wait_for("registered " + c.endpoint, 0ms));
  CHECK(!join->wait_for("discovered " + c.endpoint, 0ms));
  CHECK(!find->wait_for("found " + c.endpoint, 0ms));

  // An attribute change reaches both lookups.
  size_t mark = find->line_count();
  join->send_line("rename svc1b");
  CHECK(find->wait_for("found " + a.endpoint + " " + sid + " svc1b", 10s, mark));
  CHECK(find->wait_for("found " + b.endpoint + " " + sid + " svc1b", 10s, mark));

  // kill -9 lookup A: discarded within the configured time.
  size_t join_mark = join->line_count();
  int64_t killed = monotonic_ms();
  a.process->kill9();
  auto discarded = join->wait_for("discarded " + a.endpoint, 10s, join_mark);
  REQUIRE(discarded);
  int64_t took = line_time(*discarded) - killed;
  MESSAGE("lookup A discarded " << took << " ms after kill -9 (discard after " << kDiscardAfterMs << " ms)");
  CHECK(took <= kDiscardAfterMs + kProbeTimeoutMs);
  CHECK(join->wait_for("unregistered " + a.endpoint, 5s, join_mark));

  // Restarted (same data): rediscovered, and the service registered there again by itself.
  join_mark = join->line_count();
  mark = find->line_count();
  int64_t restarted = monotonic_ms();
  a = start_lookup(*lab, 1, 4162, dir.file("a"), "public");
  auto again = join->wait_for("registered " + a.endpoint, 10s, join_mark);
  REQUIRE(again);
  CHECK(join->wait_for("discovered " + a.endpoint, 0ms, join_mark));
  MESSAGE("registered again at A " << line_time(*again) - restarted << " ms after its restart began");
  CHECK(line_time(*again) - restarted < 2000);
  // The client on h1 either lost A and finds the service there again, or never noticed the
  // restart (A was back before the client's own discard time): then it still sees the service at
  // A, and never said it was missing.
  std::this_thread::sleep_for(std::chrono::milliseconds(kDiscardAfterMs + kProbeTimeoutMs));
  if (find->wait_for("missing " + a.endpoint + " " + sid, 0ms, mark)) {
    CHECK(find->wait_line([&](const std::string& l) {
      std::string t = line_text(l);
      return t.rfind("found " + a.endpoint + " " + sid, 0) == 0 || t.rfind("discovered " + a.endpoint, 0) == 0;
    }, 10s, mark));
  } else {
    MESSAGE("the client on h1 never lost lookup A: it was back before the client's discard time");
  }
  // Either way the client follows the restarted A: a change made now shows there.
  mark = find->line_count();
  join->send_line("rename svc1c");
  CHECK(find->wait_for("found " + a.endpoint + " " + sid + " svc1c", 10s, mark));

  CHECK(join->stop() == 0);
  // A clean stop cancels the registrations: the client sees the service leave both lookups.
  CHECK(find->wait_for("missing " + b.endpoint + " " + sid, 5s));
  find->stop();
}

TEST_CASE("lab: without avahi-daemon by multicast, without multicast by a locator; avahi-publish is discovered") {
  auto lab = Lab::from_env();
  if (!lab) {
    MESSAGE("DJINN_LAB is not set (run through tests/lab/lab.sh run): skipped");
    return;
  }
  test::TempDir dir;
  Lookup a = start_lookup(*lab, 1, 4162, dir.file("a"), "public");
  Lookup b = start_lookup(*lab, 2, 4162, dir.file("b"), "public");

  // h4 has no avahi-daemon: one warning, then multicast finds both lookups.
  auto j4 = agent(*lab, 4, {"join", "--groups", "public", "--name", "svc4"});
  CHECK(j4->wait_for("registered " + a.endpoint, 10s));
  CHECK(j4->wait_for("registered " + b.endpoint, 10s));
  CHECK(j4->wait_line([&](const std::string& l) { return line_text(l).rfind("discovered " + a.endpoint, 0) == 0 && l.find(" multicast") != std::string::npos; }, 1s));

  // h5 has neither avahi nor multicast: told a locator, it joins that lookup only.
  auto j5 = agent(*lab, 5, {"join", "--groups", "public", "--name", "svc5", "--locators", "djinn://" + lab->address(1) + ":4162"});
  CHECK(j5->wait_for("registered " + a.endpoint, 10s));
  auto find = agent(*lab, 3, {"find", "--groups", "public"});
  CHECK(find->wait_line([&](const std::string& l) { return line_text(l).rfind("found " + a.endpoint, 0) == 0 && l.find(" svc5") != std::string::npos; }, 10s));
  CHECK(find->wait_line([&](const std::string& l) { return line_text(l).rfind("found " + b.endpoint, 0) == 0 && l.find(" svc4") != std::string::npos; }, 10s));
  CHECK(!j5->wait_for("registered " + b.endpoint, 0ms));
  CHECK(!j5->wait_for("discovered " + b.endpoint, 0ms));

  // A lookup that does not announce itself, published by hand with avahi-publish in the TXT
  // format of docs/discovery.md, is discovered through Avahi.
  Lookup d = start_lookup(*lab, 2, 4182, dir.file("d"), "public", "none");
  HostProcess publish(*lab, 2, "/usr/bin/avahi-publish", {"-s", "by-hand", "_djinn-lookup._tcp", "4182", "groups=public", "version=1"});
  auto f3 = agent(*lab, 3, {"find", "--groups", "public", "--discover", "avahi"});
  auto seen = f3->wait_for("discovered " + d.endpoint + " " + d.id + " avahi", 10s);
  CHECK_MESSAGE(seen, "the lookup published with avahi-publish was not discovered");
}
