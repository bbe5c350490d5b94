// bench-discovery (DESIGN §11): discovery and join measured in the LAN lab, three hosts.
//   join-findable-avahi-p50/p99     a lookup starts on h1; a service on h3 joins it and a client on h2
//                                   finds the service there: ms from the lookup's start (its process
//                                   spawned) to the client's first answer holding the item, Avahi only
//   join-findable-multicast-p50/p99 the same through the multicast fallback only
//   reregistered-after-restart-p50/p99  kill -9 of the lookup, discard seen by the service, restart:
//                                   ms from the restart to the service registered there again
//   discarded-after-kill-p50        ms from kill -9 to the service's discard (discard after 1500 ms)
// 20 trials each (--quick: 5). Without $DJINN_LAB the program runs itself under `lab.sh run`, which
// builds the lab and tears it down afterwards.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <thread>
#include <memory>
#include <string>
#include <vector>

#include "bench_json.h"
#include "lab_host.h"

using namespace djinn;
using namespace djinn::lab;
using namespace std::chrono_literals;

namespace {

std::unique_ptr<HostProcess> start_lookup(const Lab& lab, int host, int port, const std::string& dir, const std::string& announce,
                                          std::string* id) {
  std::string addr = lab.address(host);
  auto p = std::make_unique<HostProcess>(
      lab, host, DJINN_LOOKUP_PROGRAM,
      std::vector<std::string>{"--data-dir", dir, "--listen", "tcp://" + addr + ":" + std::to_string(port), "--events",
                               "tcp://" + addr + ":" + std::to_string(port + 1), "--groups", "public", "--insecure",
                               "--announce", announce, "--announce-interval", "1s", "--log-level", "error"});
  auto line = p->wait_line([](const std::string& l) { return l.rfind("service-id ", 0) == 0; }, 10s);
  if (!line) return nullptr;
  if (id) *id = line->substr(11);
  return p;
}

std::unique_ptr<HostProcess> agent(const Lab& lab, int host, std::vector<std::string> args) {
  args.push_back("--log-level");
  args.push_back("error");
  return std::make_unique<HostProcess>(lab, host, DJINN_AGENT_PROGRAM, args);
}

bench::Result figure(std::string name, double value, std::optional<double> max) {
  bench::Result r;
  r.name = std::move(name);
  r.value = bench::round_to(value, 1);
  r.unit = "ms";
  if (max) r.target = bench::Target::at_most(bench::Target::Of::kValue, *max);
  return r;
}

// Lookup start to "findable from another host", per trial a fresh lookup on a fresh port.
std::vector<double> findable(const Lab& lab, const std::string& how, int trials, int base_port) {
  std::vector<double> samples;
  auto join = agent(lab, 3, {"join", "--groups", "public", "--name", "bench-svc", "--discover", how, "--lease", "10s"});
  auto find = agent(lab, 2, {"find", "--groups", "public", "--discover", how});
  if (!join->wait_for("service ", 10s)) return samples;
  std::this_thread::sleep_for(300ms);  // both agents' browsers and sockets are up
  std::filesystem::path dir = std::filesystem::temp_directory_path() / ("bench-discovery-" + std::to_string(getpid()));
  for (int t = 0; t < trials; ++t) {
    int port = base_port + 2 * t;
    std::string endpoint = "tcp://" + lab.address(1) + ":" + std::to_string(port);
    size_t mark = find->line_count();
    int64_t t0 = monotonic_ms();
    auto lookup = start_lookup(lab, 1, port, (dir / std::to_string(port)).string(), how, nullptr);
    if (!lookup) break;
    auto found = find->wait_for("found " + endpoint + " ", 15s, mark);
    if (!found) {
      std::fprintf(stderr, "bench-discovery: %s trial %d: not found in 15 s\n", how.c_str(), t);
      continue;
    }
    samples.push_back(static_cast<double>(line_time(*found) - t0));
    std::fprintf(stderr, "bench-discovery: %s trial %d: %.0f ms\n", how.c_str(), t, samples.back());
    // A clean stop withdraws it, so the next trial starts from nothing known.
    mark = find->line_count();
    lookup->stop();
    find->wait_for("missing " + endpoint, 5s, mark);
  }
  join->stop();
  find->stop();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return samples;
}

void restarts(const Lab& lab, int trials, std::vector<double>& rereg, std::vector<double>& discard) {
  std::filesystem::path dir = std::filesystem::temp_directory_path() / ("bench-discovery-r-" + std::to_string(getpid()));
  int port = 4300;
  std::string endpoint = "tcp://" + lab.address(1) + ":" + std::to_string(port);
  auto lookup = start_lookup(lab, 1, port, dir.string(), "avahi,multicast", nullptr);
  auto join = agent(lab, 3, {"join", "--groups", "public", "--name", "bench-svc", "--lease", "10s"});
  if (!lookup || !join->wait_for("registered " + endpoint, 15s)) return;
  for (int t = 0; t < trials; ++t) {
    size_t mark = join->line_count();
    int64_t killed = monotonic_ms();
    lookup->kill9();
    auto discarded = join->wait_for("discarded " + endpoint, 15s, mark);
    if (!discarded) break;
    discard.push_back(static_cast<double>(line_time(*discarded) - killed));
    mark = join->line_count();
    int64_t t0 = monotonic_ms();
    lookup = start_lookup(lab, 1, port, dir.string(), "avahi,multicast", nullptr);
    if (!lookup) break;
    auto again = join->wait_for("registered " + endpoint, 15s, mark);
    if (!again) break;
    rereg.push_back(static_cast<double>(line_time(*again) - t0));
    std::fprintf(stderr, "bench-discovery: restart trial %d: discarded after %.0f ms, registered again after %.0f ms\n", t,
                 discard.back(), rereg.back());
  }
  join->stop();
  lookup->stop();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else if (std::strcmp(argv[i], "--help") == 0) {
      std::printf("usage: bench-discovery [--quick]  (root: runs in a LAN lab of network namespaces)\n");
      return 0;
    } else {
      std::fprintf(stderr, "bench-discovery: unknown argument '%s' (expected --quick)\n", argv[i]);
      return 2;
    }
  }
  auto lab = Lab::from_env();
  if (!lab) {
    if (geteuid() != 0) {
      std::fprintf(stderr, "bench-discovery: the LAN lab needs root (network namespaces)\n");
      return 1;
    }
    std::vector<std::string> args{DJINN_LAB_SCRIPT, "run", "--hosts", "3", "--", argv[0]};
    for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
    std::vector<char*> a;
    for (auto& s : args) a.push_back(s.data());
    a.push_back(nullptr);
    execv(DJINN_LAB_SCRIPT, a.data());
    std::perror("bench-discovery: exec lab.sh");
    return 1;
  }
  const int trials = quick ? 5 : 20;
  bench::Report report("discovery");
  report.note(std::string(quick ? "--quick: " : "") + std::to_string(trials) +
              " trials per figure in a LAN lab of 3 network namespaces (lookup on h1, joined service on h3, client on h2)");
  std::vector<double> avahi = findable(*lab, "avahi", trials, 4200);
  std::vector<double> mcast = findable(*lab, "multicast", trials, 4250);
  std::vector<double> rereg, discard;
  restarts(*lab, trials, rereg, discard);
  auto add = [&](const std::string& name, std::vector<double>& samples, std::optional<double> p50_max,
                 std::optional<double> p99_max) {
    bench::Summary s = bench::summarize(samples);
    double nan = std::numeric_limits<double>::quiet_NaN();
    report.add(figure(name + "-p50", s.count ? s.p50 : nan, p50_max));
    report.add(figure(name + "-p99", s.count ? s.p99 : nan, p99_max));
  };
  add("join-findable-avahi", avahi, 1000, 1000);
  add("join-findable-multicast", mcast, std::nullopt, std::nullopt);
  add("reregistered-after-restart", rereg, 2000, 2000);
  {
    bench::Summary s = bench::summarize(discard);
    report.add(figure("discarded-after-kill-p50", s.count ? s.p50 : std::numeric_limits<double>::quiet_NaN(), std::nullopt));
  }
  report.print();
  return 0;
}
