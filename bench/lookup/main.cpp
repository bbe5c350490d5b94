// bench-lookup: the registrar's durable registrations per second (blocking and with registrations
// in flight), lookups per second by type and by attribute with 100,000 registered items (1 and 16
// blocking clients, and 16 clients with 8 lookups in flight each) and their latency, and the
// fan-out of registration events to 100 subscribers (events delivered per second, lag), beside etcd
// and ZooKeeper holding the same items, each started on 127.0.0.1 for the run. Prints the JSON of
// DESIGN §11 on stdout; progress goes to stderr.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "bench_json.h"
#include "bench_run.h"
#include "djinn/core/config.h"
#include "djinn/core/log.h"
#include "djinn/lookup/keeper.h"
#include "djinn_side.h"
#include "etcd_server.h"
#include "etcd_side.h"
#include "fsync_probe.h"
#include "harness.h"
#include "peer_process.h"
#include "records.h"
#include "side.h"
#include "tcp_echo.h"
#include "zookeeper_side.h"

using namespace djinn;
using namespace djinn::lookup_bench;

namespace {

constexpr int kManyClients = 16;
// The in-flight variants of the registrations and the lookups: what each client keeps in flight.
// The lookups' depth can be changed with --lookup-depth, for exploration only: their figures keep
// the names of this depth.
constexpr int kInFlight = 8;
// The fan-out's lag run: registrations per second, by this many writers. 200/s to 100
// subscribers is 20,000 events/s: inside what every side delivers here, so the lag is the path of
// one event rather than a queue. Each writer then has 40 ms per registration, more than one takes
// here even with 100 watchers on etcd, so the writers keep the pace.
constexpr double kLagRunRate = 200;
constexpr int kLagRunWriters = 8;

std::optional<bench::Reference> ref(const std::string& name, double value) {
  if (!std::isfinite(value)) return std::nullopt;
  return bench::Reference{name, value};
}

std::string label_of(const Side& side, const std::string& what) { return side.name() + " " + what; }

// The sides of one figure and its limit, each run with the other peers' servers paused (SIGSTOP,
// then SIGCONT), so that no server's background work (etcd's raft and snapshots, ZooKeeper's
// JVM) lands in another contender's round.
template <class Sample>
class Figure {
 public:
  using Contender = bench::Contender<Sample>;
  using Run = std::function<Sample(Side&, const Plan&)>;

  Figure(const std::vector<Side*>& sides, const std::vector<pid_t>& peer_pids) : peer_pids_(peer_pids) {
    for (Side* s : sides) {
      if (s) sides_.push_back(s);
    }
  }

  // Every side runs `run`, its progress label "<side> <what>".
  void add_sides(const std::string& what, const Run& run) {
    for (Side* side : sides_) {
      contenders_[side->name()] = std::make_unique<Contender>(
          Contender{label_of(*side, what), [this, side, run](const Plan& p) {
                      bench::PausedPeers paused(peer_pids_, side->server_pid());
                      return run(*side, p);
                    },
                    {}});
    }
  }
  // The limit, with every peer paused.
  void add_limit(const std::string& label, const std::function<Sample(const Plan&)>& run) {
    contenders_["limit"] = std::make_unique<Contender>(Contender{label, [this, run](const Plan& p) {
                                                                   bench::PausedPeers paused(peer_pids_, 0);
                                                                   return run(p);
                                                                 },
                                                                 {}});
  }

  template <class Remarks>
  void run(const Plan& plan, const std::string& rate_unit, Remarks remarks) {
    std::vector<Contender*> all;
    for (auto& [name, c] : contenders_) all.push_back(c.get());
    bench::run_side_by_side(all, plan, {"bench-lookup", 44, rate_unit}, remarks);
  }

  // The total of "djinn", "etcd", "zookeeper" or "limit"; nullptr when that one did not run.
  const Sample* total(const std::string& name) const {
    auto it = contenders_.find(name);
    return it == contenders_.end() ? nullptr : &it->second->total;
  }

 private:
  const std::vector<pid_t>& peer_pids_;
  std::vector<Side*> sides_;
  std::map<std::string, std::unique_ptr<Contender>> contenders_;
};

std::string throughput_remarks(const ThroughputSample& s) {
  return std::string(s.unmeasured ? " (not measured)" : "") + (s.errors ? " (with errors)" : "") +
         (s.failed ? " (SET-UP FAILED)" : "");
}

std::string fanout_remarks(const FanoutSample& s) {
  std::string r = s.unmeasured ? " (not measured)" : "";
  if (s.unmeasured == 0) r += ", " + std::to_string(s.registrations) + " registrations in the window";
  if (s.expected) r += ", " + std::to_string(s.received) + "/" + std::to_string(s.expected) + " events received";
  if (s.errors) r += " (with errors)";
  if (s.failed) r += " (SET-UP FAILED)";
  return r;
}

double rate_of(const ThroughputSample* s) { return s ? bench::round_to(s->throughput(), 0) : NAN; }
double rate_of(const FanoutSample* s) { return s ? bench::round_to(s->throughput(), 0) : NAN; }

// p50 or p99 of a run's latency samples (a blocking run's calls, a pipelined run's operations from
// submit to answer), in ms; NaN when it was not measured.
double latency_ms(const ThroughputSample* s, double p) {
  if (!s || !s->valid() || s->latencies_us.empty()) return NAN;
  std::vector<double> sorted = s->latencies_us;
  std::sort(sorted.begin(), sorted.end());
  return bench::round_to(bench::percentile_sorted(sorted, p) / 1000.0, 3);
}

double lag_ms(const FanoutSample* s, double p) {
  if (!s || !s->valid() || s->lag_ms.empty()) return NAN;
  std::vector<double> sorted = s->lag_ms;
  std::sort(sorted.begin(), sorted.end());
  return bench::round_to(bench::percentile_sorted(sorted, p), 3);
}

// The machine's load average over the last minute (/proc/loadavg), to tell a quiet run from one
// that shared the machine with other work; NaN when unreadable.
double load_average() {
  std::FILE* f = std::fopen("/proc/loadavg", "r");
  if (f == nullptr) return NAN;
  double one_minute = NAN;
  if (std::fscanf(f, "%lf", &one_minute) != 1) one_minute = NAN;
  std::fclose(f);
  return one_minute;
}

// The limit of request/answer figures: `clients` clients of a plain TCP echo on loopback.
ThroughputSample tcp_round_trips(uint16_t port, int clients, const Plan& plan) {
  return run_clients(clients, plan, [port](int) -> Worker {
    djinn::Result<std::unique_ptr<bench::TcpEchoClient>> c = bench::TcpEchoClient::connect(port);
    if (!c.ok()) {
      progress("TCP echo: " + c.status().to_string());
      return {};
    }
    std::shared_ptr<bench::TcpEchoClient> client = std::move(c).value();
    return [client]() { return Step::one(client->round_trip()); };
  });
}

// The limit of durable registrations: `writers` writers of 4 KiB + fdatasync, one file each, in
// `dir`.
ThroughputSample fsync_writes(const std::string& dir, int writers, const Plan& plan) {
  return run_clients(writers, plan, [&dir](int i) -> Worker {
    djinn::Result<bench::FsyncProbe> p = bench::FsyncProbe::open(dir, "fsync-probe-" + std::to_string(i));
    if (!p.ok()) {
      progress("fsync probe: " + p.status().to_string());
      return {};
    }
    auto probe = std::make_shared<bench::FsyncProbe>(std::move(p).value());
    return [probe]() { return Step::one(probe->write_one()); };
  });
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg("bench-lookup",
             "Durable registrations/s of service items (16 clients, blocking and with 8 in flight each),\n"
             "lookups/s by type and by attribute with 100,000 registered items (1 and 16 blocking clients, 16\n"
             "clients with 8 lookups in flight each) and their latency, and event fan-out to 100 subscribers\n"
             "(events/s, lag), of the djinn registrar beside etcd\n"
             "(txns, prefix ranges, watches through its grpc-gateway) and ZooKeeper (multi-ops, child\n"
             "listings, child watches), both started on 127.0.0.1 for the run. Prints one JSON object\n"
             "(DESIGN §11) on stdout.");
  cfg.add_bool("quick", false, "small sizes: 10,000 items, under a second per figure, under a minute in all");
  const Plan quick_plan{std::chrono::milliseconds(150), std::chrono::milliseconds(600), 1};
  const Plan full_plan{std::chrono::milliseconds(500), std::chrono::milliseconds(2000), 3};
  bench::add_plan_flags(cfg, quick_plan, full_plan);
  cfg.add_int("items", 0, "items registered before the lookups (0: 10,000 with --quick, else 100,000)", 0,
              10'000'000);
  cfg.add_int("subscribers", 100, "subscribers of the fan-out", 1, 1000);
  cfg.add_int("lookup-depth", kInFlight,
              "lookups each client keeps in flight in the *_16clients_8inflight figures (exploration only: the "
              "figures keep their names)",
              1, 1024);
  cfg.add_string("etcd", bench::kEtcdPath, "the etcd server binary; its figures are null when it is missing");
  cfg.add_string("zookeeper", kZooKeeperJarDir,
                 "the directory of zookeeper.jar (Debian: /usr/share/java); its figures are null when it is missing");
  cfg.add_string("java", kJavaPath, "the java that runs ZooKeeper");
  cfg.add_string("only", "",
                 "comma-separated figure groups to run (lookups, registrations, fanout; exploration only: empty runs "
                 "them all); the load always runs");
  if (Status st = cfg.parse(argc, argv); !st.ok()) return cfg.exit_code(st);
  log::set_level(log::Level::kWarn);

  const bool quick = cfg.get_bool("quick");
  const Plan plan = bench::plan_from_flags(cfg, quick_plan, full_plan);
  const uint64_t items =
      cfg.get_int("items") > 0 ? static_cast<uint64_t>(cfg.get_int("items")) : quick ? 10'000 : 100'000;
  const int subscribers = static_cast<int>(cfg.get_int("subscribers"));
  const int lookup_depth = static_cast<int>(cfg.get_int("lookup-depth"));
  const std::vector<std::string> only = lookup::split_list(cfg.get_string("only"));
  for (const std::string& g : only) {
    if (g != "lookups" && g != "registrations" && g != "fanout") {
      std::fprintf(stderr, "bench-lookup: --only: unknown figure group \"%s\" (lookups, registrations, fanout)\n",
                   g.c_str());
      return 2;
    }
  }
  auto runs = [&](const std::string& group) {
    return only.empty() || std::find(only.begin(), only.end(), group) != only.end();
  };
  const Clock::time_point run_start = Clock::now();
  // Read before the run only: the run's own client threads count in the load average.
  const double load_at_start = load_average();

  bench::Report report("lookup");
  auto fail = [](const std::string& what, const Status& st) {
    std::fprintf(stderr, "bench-lookup: %s: %s\n", what.c_str(), st.to_string().c_str());
    return 1;
  };

  // Everything written to disk (the registrar's data, the peers' data dirs, the fsync probe) lives
  // under the same temporary directory root, so every side writes to the same file system.
  djinn::Result<bench::TempDir> work_dir = bench::TempDir::create("djinn-bench-lookup-");
  if (!work_dir.ok()) return fail("temporary directory", work_dir.status());

  // Peers first, so that a missing or broken one is known before anything is measured.
  std::unique_ptr<bench::EtcdServer> etcd;
  const std::string etcd_path = cfg.get_string("etcd");
  if (::access(etcd_path.c_str(), X_OK) != 0) {
    report.note("etcd: " + etcd_path + " not found (install etcd-server): its figures are null");
  } else {
    progress("starting etcd");
    djinn::Result<std::unique_ptr<bench::EtcdServer>> started = bench::EtcdServer::start(etcd_path);
    if (started.ok()) {
      etcd = std::move(started).value();
    } else {
      report.note("etcd did not start (" + started.status().to_string() + "): its figures are null");
    }
  }
  std::unique_ptr<ZooKeeperServer> zookeeper;
  std::unique_ptr<ZooKeeperSide> zookeeper_side;
  {
    progress("starting zookeeper");
    djinn::Result<std::unique_ptr<ZooKeeperServer>> started =
        ZooKeeperServer::start(cfg.get_string("java"), cfg.get_string("zookeeper"));
    if (started.ok()) {
      zookeeper = std::move(started).value();
      djinn::Result<std::unique_ptr<ZooKeeperSide>> side = ZooKeeperSide::create(*zookeeper);
      if (side.ok()) {
        zookeeper_side = std::move(side).value();
      } else {
        report.note("zookeeper started but its nodes could not be made (" + side.status().to_string() +
                    "): its figures are null");
      }
    } else {
      report.note("zookeeper did not start (" + started.status().to_string() + "): its figures are null");
    }
  }
  std::unique_ptr<EtcdSide> etcd_side = etcd ? std::make_unique<EtcdSide>(*etcd) : nullptr;

  progress("starting the djinn registrar");
  std::unique_ptr<DjinnSide> djinn_side;
  {
    djinn::Result<std::unique_ptr<DjinnSide>> started = DjinnSide::start(work_dir->path());
    if (started.ok()) {
      djinn_side = std::move(started).value();
    } else {
      report.note("the djinn registrar did not start (" + started.status().to_string() + "): its figures are null");
    }
  }

  djinn::Result<std::unique_ptr<bench::TcpEchoServer>> echo = bench::TcpEchoServer::start();
  if (!echo.ok()) return fail("TCP echo server", echo.status());
  const uint16_t echo_port = (*echo)->port();
  const std::string probe_dir = work_dir->path();

  const std::vector<Side*> sides = {djinn_side.get(), etcd_side.get(), zookeeper_side.get()};
  std::vector<pid_t> peer_pids;
  for (Side* s : sides) {
    if (s && s->server_pid() > 0) peer_pids.push_back(s->server_pid());
  }
  // Each side registers the same items: [0, items) in the load, then items + 0, 1, ... in the
  // registration and fan-out runs, from a counter of its own.
  std::map<std::string, std::unique_ptr<ItemCounter>> counters;
  for (Side* s : sides) {
    if (s) counters[s->name()] = std::make_unique<ItemCounter>(items);
  }

  // ------------------------------------------------------------------------------------------
  // The load: `items` registrations into each side, timed (a registrations figure at scale).
  std::map<std::string, LoadSample> loads;
  for (Side* s : sides) {
    if (!s) continue;
    progress("loading " + std::to_string(items) + " items into " + s->name());
    bench::PausedPeers paused(peer_pids, s->server_pid());
    LoadSample l = s->load(items);
    if (!l.measured) {
      progress("  " + s->name() + ": not measured");
    } else if (!l.error.empty()) {
      progress("  " + s->name() + ": load failed: " + l.error);
      report.note(s->name() + ": the load failed (" + l.error + "): its lookup figures are not comparable");
    } else {
      progress("  " + s->name() + ": " + std::to_string(l.items) + " items in " + fixed(l.seconds, 2) + " s (" +
               fixed(l.rate(), 0) + "/s)");
    }
    loads[s->name()] = l;
  }
  auto load_rate = [&](const std::string& name) {
    auto it = loads.find(name);
    return it == loads.end() ? NAN : bench::round_to(it->second.rate(), 0);
  };
  report.add({"load_registrations_per_s", load_rate("djinn"), "registrations/s",
              ref("etcd_load_txns_per_s", load_rate("etcd")), std::nullopt, std::nullopt});
  report.add({"load_registrations_per_s_zookeeper", load_rate("zookeeper"), "registrations/s", std::nullopt,
              std::nullopt, std::nullopt});

  // ------------------------------------------------------------------------------------------
  // Lookups, with exactly `items` items registered: by type and by attribute, 1 and 16 clients one
  // blocking lookup at a time, then 16 clients with `lookup_depth` lookups in flight each.
  struct LookupRun {
    int clients;
    int depth;
    bool pipelined;  // the in-flight variant, named *_8inflight whatever its depth
  };
  const std::string inflight_tag = "_" + std::to_string(kInFlight) + "inflight";
  const LookupRun lookup_runs[3] = {{1, 1, false}, {kManyClients, 1, false}, {kManyClients, lookup_depth, true}};
  struct LookupKindInfo {
    LookupKind kind;
    std::string tag;  // "by_type"
    std::string what;
  };
  const LookupKindInfo kinds[2] = {{LookupKind::kByType, "by_type", "lookup by type"},
                                   {LookupKind::kByAttribute, "by_attribute", "lookup by name"}};
  // The limit of the blocking 16-client lookups, for the note on where the 100,000/s target sits.
  double echo_16clients_rate = NAN;
  for (const LookupKindInfo& k : kinds) {
    if (!runs("lookups")) break;
    for (const LookupRun& r : lookup_runs) {
      const int n = r.clients;
      const int depth = r.depth;
      const bool pipelined = r.pipelined;
      progress(k.what + ", " + std::to_string(n) + " client(s), " + std::to_string(depth) + " in flight each, " +
               std::to_string(items) + " items");
      Figure<ThroughputSample> f(sides, peer_pids);
      f.add_sides(k.what + (pipelined ? " x" + std::to_string(depth) + " in flight" : std::string()),
                  [&, n, depth, kind = k.kind](Side& s, const Plan& p) { return s.lookups(kind, items, n, depth, p); });
      // The limit: as many blocking echo clients as the run has lookups in flight (a peer's
      // pipelined client is that many connections too).
      const int echo_clients = n * depth;
      f.add_limit("TCP echo round trip, " + bench::clients_tag(echo_clients) + " (limit)",
                  [&, echo_clients](const Plan& p) { return tcp_round_trips(echo_port, echo_clients, p); });
      f.run(plan, "/s", throughput_remarks);

      const std::string name = "lookups_" + k.tag + "_per_s_" + bench::clients_tag(n) + (pipelined ? inflight_tag : "");
      const auto limit = ref("tcp_round_trips_per_s_" + bench::clients_tag(echo_clients), rate_of(f.total("limit")));
      if (k.kind == LookupKind::kByType && n == kManyClients && !pipelined) {
        echo_16clients_rate = rate_of(f.total("limit"));
      }
      const bool by_type_many = k.kind == LookupKind::kByType && n == kManyClients;
      std::optional<bench::Target> target;
      if (by_type_many && pipelined) target = bench::Target::at_least(bench::Target::Of::kValue, 100'000);
      report.add({name, rate_of(f.total("djinn")), "lookups/s", ref("etcd_" + name, rate_of(f.total("etcd"))), limit,
                  target});
      if (by_type_many) {
        report.add({name + "_vs_etcd", rate_of(f.total("djinn")), "lookups/s",
                    ref("etcd_" + name, rate_of(f.total("etcd"))), std::nullopt,
                    bench::Target::at_least(bench::Target::Of::kPeer, 1)});
      }
      report.add({name + "_zookeeper", rate_of(f.total("zookeeper")), "lookups/s", std::nullopt, limit, std::nullopt});

      // Latency: every call of the 1-client runs (p99 < 1 ms by type: what a caller sees of a
      // server that is not saturated), and every lookup of the pipelined by-type run, from its
      // submit to its answer (no target: it includes the queue of the lookups in flight).
      if (n == 1 || (k.kind == LookupKind::kByType && pipelined)) {
        const std::string lsuffix = pipelined ? inflight_tag : "";
        const std::string echo_suffix = n == 1 ? "" : "_" + bench::clients_tag(echo_clients);
        for (double p : {50.0, 99.0}) {
          const std::string pct = p == 50 ? "p50" : "p99";
          const std::string lname = "lookup_" + k.tag + "_latency_" + pct + "_ms" + lsuffix;
          const auto llimit = ref("tcp_round_trip_" + pct + "_ms" + echo_suffix, latency_ms(f.total("limit"), p));
          std::optional<bench::Target> ltarget;
          if (k.kind == LookupKind::kByType && p == 99 && n == 1) {
            ltarget = bench::Target::at_most(bench::Target::Of::kValue, 1);
          }
          report.add({lname, latency_ms(f.total("djinn"), p), "ms",
                      ref("etcd_" + lname, latency_ms(f.total("etcd"), p)), llimit, ltarget});
          report.add({lname + "_zookeeper", latency_ms(f.total("zookeeper"), p), "ms", std::nullopt, llimit,
                      std::nullopt});
        }
      }
    }
  }

  // ------------------------------------------------------------------------------------------
  // Durable registrations of new items, 16 clients: one blocking call at a time, then 8 in flight.
  double fsync_rate = NAN;
  for (int depth : {1, kInFlight}) {
    if (!runs("registrations")) break;
    const std::string variant = depth == 1 ? "" : "_" + std::to_string(depth) + "inflight";
    progress("registrations, " + std::to_string(kManyClients) + " clients, " + std::to_string(depth) +
             " in flight each");
    Figure<ThroughputSample> f(sides, peer_pids);
    f.add_sides("register" + (depth == 1 ? std::string() : " x" + std::to_string(depth) + " in flight"),
                [&, depth](Side& s, const Plan& p) {
                  return s.registrations(*counters[s.name()], kManyClients, depth, p);
                });
    if (depth == 1) {
      f.add_limit("fdatasync of 4 KiB, 16 writers (limit)",
                  [&](const Plan& p) { return fsync_writes(probe_dir, kManyClients, p); });
    }
    f.run(plan, "/s", throughput_remarks);
    if (depth == 1) fsync_rate = rate_of(f.total("limit"));

    const std::string name = "registrations_per_s_" + bench::clients_tag(kManyClients) + variant;
    const auto limit = ref("fdatasync_16writers_per_s", fsync_rate);
    report.add({name, rate_of(f.total("djinn")), "registrations/s", ref("etcd_txn_" + name, rate_of(f.total("etcd"))),
                limit, depth == 1 ? std::nullopt
                                  : std::optional(bench::Target::at_least(bench::Target::Of::kValue, 20'000))});
    report.add({name + "_vs_etcd", rate_of(f.total("djinn")), "registrations/s",
                ref("etcd_txn_" + name, rate_of(f.total("etcd"))), std::nullopt,
                bench::Target::at_least(bench::Target::Of::kPeer, 1)});
    report.add({name + "_zookeeper", rate_of(f.total("zookeeper")), "registrations/s", std::nullopt, limit,
                std::nullopt});
  }

  // ------------------------------------------------------------------------------------------
  // Fan-out: registrations announced to every subscriber. First as fast as 16 writers go (events
  // delivered per second), then paced (each event's lag).
  const FanoutRun throughput_run{subscribers, kManyClients, 0, false, 200'000, std::chrono::milliseconds(2000)};
  const double lag_round_s = bench::seconds_of(plan.warmup + plan.measure);
  const FanoutRun lag_run{subscribers,
                          kLagRunWriters,
                          kLagRunRate,
                          true,
                          static_cast<size_t>(kLagRunRate * lag_round_s * 1.5) + 100,
                          std::chrono::milliseconds(2000)};
  const std::string subs_tag = std::to_string(subscribers) + "subscribers";
  uint64_t missing_events = 0;
  for (const FanoutRun* run : {&throughput_run, &lag_run}) {
    if (!runs("fanout")) break;
    const bool lag = run->measure_lag;
    progress(std::string(lag ? "fan-out lag" : "fan-out throughput") + ", " + std::to_string(run->subscribers) +
             " subscribers, " + std::to_string(run->writers) + " writers" +
             (lag ? ", " + std::to_string(static_cast<int>(run->rate_per_s)) + " registrations/s" : ""));
    Figure<FanoutSample> f(sides, peer_pids);
    f.add_sides(lag ? "fan-out (paced)" : "fan-out",
                [&, run](Side& s, const Plan& p) { return s.fanout(*run, *counters[s.name()], p); });
    f.run(plan, "events/s", fanout_remarks);
    for (const char* side : {"djinn", "etcd", "zookeeper"}) {
      if (const FanoutSample* s = f.total(side); s && s->valid()) missing_events += s->expected - s->received;
    }
    if (!lag) {
      const std::string name = "fanout_events_per_s_" + subs_tag;
      report.add({name, rate_of(f.total("djinn")), "events/s", ref("etcd_watch_" + name, rate_of(f.total("etcd"))),
                  std::nullopt, std::nullopt});
      report.add({name + "_zookeeper", rate_of(f.total("zookeeper")), "events/s", std::nullopt, std::nullopt,
                  std::nullopt});
    } else {
      for (double p : {50.0, 99.0}) {
        const std::string name = std::string("fanout_lag_") + (p == 50 ? "p50" : "p99") + "_ms_" + subs_tag;
        report.add({name, lag_ms(f.total("djinn"), p), "ms", ref("etcd_watch_" + name, lag_ms(f.total("etcd"), p)),
                    std::nullopt, std::nullopt});
        report.add({name + "_zookeeper", lag_ms(f.total("zookeeper"), p), "ms", std::nullopt, std::nullopt,
                    std::nullopt});
      }
    }
  }

  // ------------------------------------------------------------------------------------------
  // How the run was made.
  unsigned cores = std::thread::hardware_concurrency();
  report.note("one machine, " + std::to_string(cores) + " hardware threads shared by every server and client; all "
              "traffic on 127.0.0.1; the data of every side and the fsync probe under one temporary directory (" +
              work_dir->path() + ")");
  report.note("items: service items of about 335 bytes as JSON (ServiceID, interface types djinn.bench.Service and "
              "djinn.bench.Kind<k mod 100>, attributes djinn.attr.Name{name: svc-<k>} and djinn.attr.Location"
              "{building, floor}, rpc and events endpoints); " + std::to_string(items) + " loaded before the lookups, "
              "the same on every side. Lookup by type: one item of a kind drawn at random (" +
              std::to_string(items / kKinds) + " matches); lookup by attribute: djinn.attr.Name{name} of a loaded item "
              "drawn at random (1 match); each client draws the same queries on every side");
  for (const std::string& n : djinn_side ? djinn_side->notes() : std::vector<std::string>{}) report.note(n);
  if (etcd) {
    report.note("etcd " + etcd->version() + " (Debian etcd-server), one member on 127.0.0.1, default settings (each "
                "txn a raft entry fsync'd to the WAL before it answers), driven through its grpc-gateway "
                "(HTTP/1.1 + JSON) over kept-alive connections, C++ here: Debian's golang-etcd-server-dev has no "
                "tools/benchmark to build its own Go client offline. The gateway relays each request to etcd's gRPC "
                "server over a loopback connection of its own: etcd's figures include that hop, which its Go client "
                "would not make");
    report.note("etcd layout: /svc/<sid> = item JSON; empty index keys /type/<interface>/<sid> and "
                "/attr/<EntryType>/<field>=<value>/<sid>; a registration is one txn putting the item and its 5 index "
                "keys. A lookup is a range on the index prefix with limit 1 and keys_only, then a get of /svc/<sid>: "
                "2 round trips; both reads serializable, which on a single member sees every acknowledged write "
                "(linearizable reads add a raft read-index round per read). In-flight registrations: 8 kept-alive "
                "connections per client, one request in flight on each (the gateway answers one request at a time "
                "per HTTP/1.1 connection); the load: 16 clients x 8. In-flight lookups: the same, " +
                std::to_string(lookup_depth) + " connections per client, each lookup's range and get on one "
                "connection, the get sent as soon as the range's answer has been read");
    report.note("etcd fan-out: each subscriber is a watch on the prefix /svc/ over a connection of its own (POST "
                "/v3/watch, a chunked stream of JSON messages); every new item's put is one event, carrying the item");
  }
  if (zookeeper_side) {
    report.note("zookeeper " + zookeeper->version() + " (Debian zookeeper jars, started here as java -cp "
                "zookeeper.jar org.apache.zookeeper.server.ZooKeeperServerMain zoo.cfg; never the system service): "
                "standalone on 127.0.0.1, temporary dataDir, forceSync=yes (its default: the transaction log is "
                "fsync'd before a write answers), admin server and four-letter words off, maxClientCnxns=0; driven "
                "by its C client (libzookeeper_mt), one session per client");
    report.note("zookeeper layout: the same paths as etcd's as znodes (/svc/<sid> with the item JSON as data, empty "
                "index znodes). A registration is one multi-op creating the item and its index znodes; an attribute "
                "value's index node (/attr/<EntryType>/<field>=<value>) is created in the same multi when the "
                "client has not yet seen it exist, and the multi is sent again without it when it already did "
                "(ZooKeeper has no create-if-missing); the type nodes are made before the load. A lookup is "
                "get_children of the index node (ZooKeeper has no prefix range or limit: by type that lists every "
                "item of the kind) then a get of /svc/<sid>. In-flight registrations: 8 asynchronous multi-ops "
                "(zoo_amulti) in flight per session; the load: 16 sessions x 8. In-flight lookups: " +
                std::to_string(lookup_depth) + " per session, each an asynchronous zoo_aget_children whose "
                "completion sends the zoo_aget of the item");
    report.note("zookeeper fan-out: its watches fire once and do not say which child came, and the C client has no "
                "persistent watches, so each subscriber (a session of its own) holds a child watch on a node made "
                "for the round (/events/r<n>), under which each registration's multi also creates <sid>; on each "
                "event the subscriber lists the children again, which re-arms the watch, and takes the new ones "
                "(children added before it re-armed come in that listing: events coalesce)");
  }
  report.note("limits: lookups: round trips of a plain TCP echo on 127.0.0.1 (64 bytes, one blocking round trip "
              "at a time per client; a peer's lookup is 2 round trips, djinn's 1), with as many echo clients as the "
              "run has lookups in flight (" + bench::clients_tag(kManyClients * lookup_depth) + " for the "
              "in-flight runs: no echo client batches, so a client that puts several calls in one message can pass "
              "it); lookup latency: the same round trip's p50 and p99; durable registrations: 4 KiB pwrite + "
              "fdatasync by 16 writers in parallel, one preallocated 4 MiB file each, in the run's temporary "
              "directory");
  report.note("throughput: per figure " + std::to_string(plan.rounds) + " round(s) of " +
              std::to_string(bench::ms_of(plan.measure)) + " ms measured after " +
              std::to_string(bench::ms_of(plan.warmup)) + " ms of warm-up, sides interleaved round by round, each "
              "side's rounds with the other peers' servers paused (SIGSTOP, SIGCONT after); latencies are every call "
              "of the 1-client runs, and *_8inflight every lookup of the in-flight by-type run from its submit to "
              "its answer; registrations: new items (numbers from " + std::to_string(items) +
              " on), so the lookups ran against exactly the loaded items");
  report.note("fan-out: " + std::to_string(subscribers) + " subscribers of every new item; events/s: what arrived at "
              "all subscribers in the window while " + std::to_string(kManyClients) + " writers registered as fast "
              "as they could; lag: " + std::to_string(static_cast<int>(kLagRunRate)) + " registrations/s by " +
              std::to_string(kLagRunWriters) + " writers, lag = arrival at a subscriber minus the start of the "
              "registering call (so it includes the durable write); an event not received 2 s after the window "
              "counts at that lower bound (" + std::to_string(missing_events) + " such)");
  report.note("targets (the issue's, at the full sizes): lookups by type >= 100,000/s (on the 16 clients x 8 in "
              "flight figure) and ahead of etcd (with 16 blocking clients and with 16 x 8 in flight), lookup p99 < 1 "
              "ms (1 client), durable registrations >= 20,000/s (on the 16 clients x 8 in flight figure: group commit needs writes in flight; a blocking client has one) and ahead of etcd (with 16 blocking clients and with 16 x 8 in flight); a figure with two "
              "targets appears twice, the second named *_vs_etcd; ZooKeeper's figures are results of their own, "
              "named *_zookeeper, with no peer");
  report.note("why the 100,000 lookups/s target sits on lookups_by_type_per_s_16clients" + inflight_tag + ": a "
              "blocking client has one lookup in flight, so 16 blocking clients can never pass the round trips of a "
              "bare TCP echo with 16 clients, which does no work at all between receiving and answering: " +
              fixed(echo_16clients_rate, 0) + " round trips/s in this run (tcp_round_trips_per_s_16clients). A "
              "lookup server shares the same " + std::to_string(cores) + " hardware threads with its 16 clients and "
              "does real work per lookup, so the blocking figure lies well below that bound, and 100,000/s from it "
              "would need lookups that cost the server nothing. 100,000/s on this machine needs clients that keep "
              "several lookups in flight, as a service serving many concurrent requests does; the blocking figures "
              "stay as the round-trip-bound view, and the p99 < 1 ms target stays on the 1-client latency (a server "
              "that is not saturated)");
  if (lookup_depth != kInFlight) {
    report.note("--lookup-depth " + std::to_string(lookup_depth) + ": the *" + inflight_tag + " figures were run "
                "with " + std::to_string(lookup_depth) + " lookups in flight per client, not " +
                std::to_string(kInFlight) + " (exploration: not the issue's figure)");
  }
  if (quick) {
    report.note("--quick: " + std::to_string(items) + " items and short runs; the targets are for the full sizes");
  }
  report.note("run time: " + fixed(bench::seconds_of(Clock::now() - run_start), 1) + " s; load average (1 min) "
              "before the run " + fixed(load_at_start, 2) + " on " + std::to_string(cores) +
              " hardware threads (near or above their number, other work shared the machine)");

  bench::print_verdicts(report, "bench-lookup", 15, "not judged (no value or peer)");
  report.print();
  return 0;
}
