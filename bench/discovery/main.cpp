// bench-discovery (DESIGN §11): discovery and join measured in the LAN lab, three hosts.
//   join_findable_avahi_{p50,p99}_ms      a lookup starts on h1; a service on h3 joins it and a client
//                                         on h2 finds the service there: ms from the lookup's start
//                                         (its process spawned) to the client's first answer holding
//                                         the item, Avahi only. Peer: plain DNS-SD, avahi-publish on h1
//                                         to avahi-browse resolving it on h2. Limit: the lookup's own
//                                         start (spawned to serving), below which nothing is findable.
//   join_findable_multicast_{p50,p99}_ms  the same through the multicast fallback only
//   reregistered_after_restart_{p50,p99}_ms  kill -9 of the lookup, discard seen by the service,
//                                         restart: ms from the restart to the service registered there
//   discarded_after_kill_p50_ms           ms from kill -9 to the service's discard (after 1500 ms)
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
                                          std::string* id, double* started_ms = nullptr) {
  const int64_t spawned = monotonic_ms();
  std::string addr = lab.address(host);
  auto p = std::make_unique<HostProcess>(
      lab, host, DJINN_LOOKUP_PROGRAM,
      std::vector<std::string>{"--data-dir", dir, "--listen", "tcp://" + addr + ":" + std::to_string(port), "--events",
                               "tcp://" + addr + ":" + std::to_string(port + 1), "--groups", "public", "--insecure",
                               "--announce", announce, "--announce-interval", "1s", "--log-level", "error"});
  auto line = p->wait_line([](const std::string& l) { return l.rfind("service-id ", 0) == 0; }, 10s);
  if (!line) return nullptr;
  if (started_ms) *started_ms = static_cast<double>(monotonic_ms() - spawned);
  if (id) *id = line->substr(11);
  return p;
}

std::unique_ptr<HostProcess> agent(const Lab& lab, int host, std::vector<std::string> args) {
  args.push_back("--log-level");
  args.push_back("error");
  return std::make_unique<HostProcess>(lab, host, DJINN_AGENT_PROGRAM, args);
}

bench::Result figure(std::string name, double value, std::optional<double> max,
                     std::optional<bench::Reference> peer = std::nullopt,
                     std::optional<bench::Reference> limit = std::nullopt) {
  bench::Result r;
  r.name = std::move(name);
  r.value = bench::round_to(value, 1);
  r.unit = "ms";
  r.peer = std::move(peer);
  r.limit = std::move(limit);
  if (max) r.target = bench::Target::at_most(bench::Target::Of::kValue, *max);
  return r;
}

// Plain DNS-SD between two hosts, the peer of the Avahi figures: avahi-publish of a fresh service on
// h1 until avahi-browse on h2 has resolved it, with Avahi's default probing.
std::vector<double> plain_dns_sd(const Lab& lab, int trials) {
  std::vector<double> samples;
  HostProcess browse(lab, 2, "/usr/bin/avahi-browse", {"-rpk", "_djinn-peer._tcp"});
  std::this_thread::sleep_for(300ms);
  for (int t = 0; t < trials; ++t) {
    const std::string name = "peer-" + std::to_string(getpid()) + "-" + std::to_string(t);
    size_t mark = browse.line_count();
    int64_t t0 = monotonic_ms();
    HostProcess publish(lab, 1, "/usr/bin/avahi-publish", {"-s", name, "_djinn-peer._tcp", "9", "k=v"});
    auto resolved = browse.wait_line(
        [&](const std::string& l) { return l.rfind("=;", 0) == 0 && l.find(";" + name + ";") != std::string::npos; }, 15s,
        mark);
    if (!resolved) {
      std::fprintf(stderr, "bench-discovery: plain DNS-SD trial %d: not resolved in 15 s\n", t);
      continue;
    }
    samples.push_back(static_cast<double>(monotonic_ms() - t0));
    std::fprintf(stderr, "bench-discovery: plain DNS-SD trial %d: %.0f ms\n", t, samples.back());
    publish.stop();
  }
  browse.stop();
  return samples;
}

// Lookup start to "findable from another host", per trial a fresh lookup on a fresh port;
// `startups` gets each lookup's own start (spawned to serving).
std::vector<double> findable(const Lab& lab, const std::string& how, int trials, int base_port,
                             std::vector<double>& startups) {
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
    double startup = 0;
    auto lookup = start_lookup(lab, 1, port, (dir / std::to_string(port)).string(), how, nullptr, &startup);
    if (!lookup) break;
    startups.push_back(startup);
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
  std::vector<double> startups;
  std::vector<double> avahi = findable(*lab, "avahi", trials, 4200, startups);
  std::vector<double> mcast = findable(*lab, "multicast", trials, 4250, startups);
  std::vector<double> plain = plain_dns_sd(*lab, trials);
  std::vector<double> rereg, discard;
  restarts(*lab, trials, rereg, discard);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  auto pct = [&](std::vector<double> samples, bool p99) {
    bench::Summary s = bench::summarize(samples);
    return s.count ? bench::round_to(p99 ? s.p99 : s.p50, 1) : nan;
  };
  auto add = [&](const std::string& name, const std::vector<double>& samples, std::optional<double> max,
                 const std::vector<double>* peer, const std::string& peer_name) {
    for (bool p99 : {false, true}) {
      const std::string tag = p99 ? "p99" : "p50";
      std::optional<bench::Reference> peer_ref, limit_ref;
      if (peer) peer_ref = bench::Reference{peer_name + "_" + tag + "_ms", pct(*peer, p99)};
      if (name.rfind("join_findable", 0) == 0) limit_ref = bench::Reference{"lookup_startup_" + tag + "_ms", pct(startups, p99)};
      report.add(figure(name + "_" + tag + "_ms", pct(samples, p99), max, peer_ref, limit_ref));
    }
  };
  add("join_findable_avahi", avahi, 1000, &plain, "plain_dns_sd_publish_to_resolved");
  add("join_findable_multicast", mcast, std::nullopt, nullptr, "");
  add("reregistered_after_restart", rereg, 2000, nullptr, "");
  report.add(figure("discarded_after_kill_p50_ms", pct(discard, false), std::nullopt));
  report.print();
  return 0;
}
