// bench-lease: grants, renewals (single and batched) and cancels per second of the djinn lease
// service with 1 and 16 clients, expiry lag with a million live leases and resident memory per
// lease, beside etcd (leases) and Redis (keys with expirations) run on 127.0.0.1 in the same run.
// Prints the JSON of DESIGN §11 on stdout; progress goes to stderr.
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "bench_json.h"
#include "bench_run.h"
#include "djinn/core/config.h"
#include "djinn/core/log.h"
#include "djinn/lease/client.h"
#include "djinn/lease/landlord.h"
#include "djinn/lease/service.h"
#include "etcd_peer.h"
#include "etcd_server.h"
#include "fsync_probe.h"
#include "djinn_daemon.h"
#include "peer_process.h"
#include "redis_peer.h"
#include "tcp_echo.h"
#include "zmq_echo.h"

using namespace djinn;
using bench::Clock;
using bench::ms_of;
using bench::Plan;
using bench::seconds_of;

namespace {

constexpr int kManyClients = 16;
// The batch: one renew_batch (or one pipelined round of PEXPIREs, or one keep-alive stream)
// renews this many leases.
constexpr size_t kBatch = 100;
// Leases granted by the throughput runs outlive the whole run on every side, so no expiry work
// (an etcd revoke through raft, a djinn delete) falls into a later measurement.
constexpr int64_t kLongLeaseMs = 60 * 60 * 1000;
constexpr int64_t kLongLeaseS = kLongLeaseMs / 1000;
// The live leases of the expiry run: longer than anything the run waits for.
constexpr int64_t kLiveLeaseMs = 3 * 60 * 60 * 1000;
constexpr auto kRpcTimeout = std::chrono::seconds(10);
// A cancel run needs this many times the leases its side granted per second over one run.
// Measured: cancels run up to 3.5 times as fast as grants on this service (one durable delete
// against a durable insert and an index update).
constexpr double kCancelPoolMargin = 3;
// Redis keys are set in pipelined rounds of this many commands.
constexpr size_t kPipelineDepth = 1000;

// The expiry and memory run: `live` leases that stay, `expiring` more whose deadlines are spread
// evenly over `window`, starting `lead` after the last grant; events are awaited `drain` longer.
struct ExpiryPlan {
  size_t live;
  size_t expiring;
  std::chrono::milliseconds lead;
  std::chrono::milliseconds window;
  std::chrono::milliseconds drain;
};

int64_t wall_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void progress(const std::string& text) { std::fprintf(stderr, "bench-lease: %s\n", text.c_str()); }

// ---------------------------------------------------------------------------------------------
// Throughput runs: `clients` threads, each running its own worker in a loop.

// What one call of a worker did: `ops` leases granted, renewed or cancelled (a batch counts each
// lease it renewed); `exhausted` when it had nothing left to work on (a cancel pool ran dry).
struct Step {
  uint64_t ops = 0;
  bool ok = true;
  bool exhausted = false;

  // A call on one lease: one op if it succeeded, an error if not.
  static Step one(bool ok) { return ok ? Step{1, true, false} : Step{0, false, false}; }
};
using Worker = std::function<Step()>;
// Builds client `i`'s worker on the client's own thread, before the clock starts (connections and
// the leases a run works on are made here, untimed). An empty Worker means set-up failed.
using MakeWorker = std::function<Worker(int i)>;

struct Sample {
  uint64_t ops = 0;
  uint64_t errors = 0;
  double seconds = 0;
  int cut_short = 0;  // rounds that ended early because a worker was exhausted
  int failed = 0;     // rounds in which some client could not be set up

  void merge(const Sample& other) {
    ops += other.ops;
    errors += other.errors;
    seconds += other.seconds;
    cut_short += other.cut_short;
    failed += other.failed;
  }
  double throughput() const { return seconds > 0 ? static_cast<double>(ops) / seconds : 0; }
};

// Operations started in [start + warmup, start + warmup + measure) are counted. If a worker is
// exhausted, every client stops and the round measures up to that moment (from the start, if it
// came during the warm-up).
Sample run_clients(int clients, const Plan& plan, const MakeWorker& make_worker) {
  std::atomic<bool> stop{false};
  std::mutex stop_mu;  // guards stopped_at
  std::optional<Clock::time_point> stopped_at;
  std::atomic<int> setup_failures{0};
  struct Counts {
    uint64_t warm = 0, ops = 0, errors = 0;
  };
  std::vector<Counts> counts(static_cast<size_t>(clients));
  bench::Window window = bench::run_together(clients, plan, [&](int i) {
    Worker worker = make_worker(i);
    if (!worker) setup_failures++;
    return [&, &c = counts[static_cast<size_t>(i)], worker = std::move(worker)](const bench::Window& w) {
      if (!worker) return;
      for (;;) {
        Clock::time_point t0 = Clock::now();
        if (t0 >= w.until || stop.load(std::memory_order_relaxed)) break;
        Step s = worker();
        if (s.exhausted) {
          std::lock_guard lock(stop_mu);
          if (!stopped_at) stopped_at = Clock::now();
          stop.store(true);
          break;
        }
        if (!s.ok) {
          if (t0 >= w.measure_from) c.errors++;
          continue;
        }
        (t0 < w.measure_from ? c.warm : c.ops) += s.ops;
      }
    };
  });
  Sample s;
  uint64_t warm = 0;
  for (const Counts& c : counts) {
    s.ops += c.ops;
    s.errors += c.errors;
    warm += c.warm;
  }
  s.failed = setup_failures.load() > 0 ? 1 : 0;
  if (stopped_at && *stopped_at < window.until) {
    s.cut_short = 1;
    if (*stopped_at <= window.measure_from) {
      s.ops += warm;
      s.seconds = seconds_of(*stopped_at - window.start);
    } else {
      s.seconds = seconds_of(*stopped_at - window.measure_from);
    }
  } else {
    s.seconds = seconds_of(plan.measure);
  }
  return s;
}

using Contender = bench::Contender<Sample>;

void run_side_by_side(const std::vector<Contender*>& contenders, const Plan& plan) {
  bench::run_side_by_side(contenders, plan, {"bench-lease", 44, "/s"}, [](const Sample& s) {
    return std::string(s.errors ? " (with errors)" : "") + (s.cut_short ? " (pool exhausted: shorter round)" : "") +
           (s.failed ? " (SET-UP FAILED)" : "");
  });
}

size_t config_index(int clients) { return clients == 1 ? 0 : 1; }

// ---------------------------------------------------------------------------------------------
// The three sides. Each keeps, per client count and client, the leases its runs work on: the
// renewal pool (kBatch leases, granted once) and the leases its grant runs made (what its cancel
// runs cancel). A pool is touched by its client's thread during a run and by nobody else.

using Pools = std::array<std::vector<std::vector<int64_t>>, 2>;

Pools make_pools() {
  return Pools{std::vector<std::vector<int64_t>>(1), std::vector<std::vector<int64_t>>(kManyClients)};
}

class Side {
 public:
  virtual ~Side() = default;
  virtual Worker grant_worker(int clients, int i) = 0;
  virtual Worker renew_worker(int clients, int i) = 0;
  virtual Worker renew_batch_worker(int clients, int i) = 0;
  // Cancels leases this side's grant runs made, granting more first (untimed) if fewer than `need`.
  virtual Worker cancel_worker(int clients, int i, size_t need) = 0;

  MakeWorker grants(int clients) {
    return [this, clients](int i) { return grant_worker(clients, i); };
  }
  MakeWorker renewals(int clients) {
    return [this, clients](int i) { return renew_worker(clients, i); };
  }
  MakeWorker batched_renewals(int clients) {
    return [this, clients](int i) { return renew_batch_worker(clients, i); };
  }
  MakeWorker cancels(int clients, size_t need) {
    return [this, clients, need](int i) { return cancel_worker(clients, i, need); };
  }

 protected:
  std::vector<int64_t>& granted(int clients, int i) { return granted_[config_index(clients)][static_cast<size_t>(i)]; }
  std::vector<int64_t>& renew_pool(int clients, int i) { return renew_[config_index(clients)][static_cast<size_t>(i)]; }
  // A number for the next lease client `i` grants, unique on its side for the whole run: names of
  // resources and keys carry it, so no two grants ever ask for the same one.
  int64_t next_number(int clients, int i) {
    std::vector<int64_t>& slot = next_[config_index(clients)][static_cast<size_t>(i)];
    if (slot.empty()) slot.push_back(0);
    return slot[0]++;
  }

  Pools granted_ = make_pools();
  Pools renew_ = make_pools();
  Pools next_ = make_pools();
};

void log_setup_failure(const std::string& side, const Status& st) {
  static std::mutex mu;
  std::lock_guard lock(mu);
  progress(side + ": client set-up failed: " + st.to_string());
}

// A connection of a peer's driver (C::connect(port)) for one client's worker; nullptr, logged,
// when it cannot be made.
template <class C>
std::shared_ptr<C> connect_client(const std::string& side, uint16_t port) {
  Result<C> c = C::connect(port);
  if (!c.ok()) {
    log_setup_failure(side, c.status());
    return nullptr;
  }
  return std::make_shared<C>(std::move(c).value());
}

// A worker that calls `op` on the leases of `pool` (a pointer to a vector) in turn, round and
// round: renewals, and gets.
template <class PoolPtr, class Op>
Worker cycling(PoolPtr pool, Op op) {
  auto next = std::make_shared<size_t>(0);
  return [pool, next, op]() { return Step::one(op((*pool)[(*next)++ % pool->size()])); };
}

// A worker that takes the leases of `pool` one at a time, newest first, and calls `op` on each:
// cancels. It is exhausted when the pool is empty.
template <class Op>
Worker draining(std::vector<int64_t>* pool, Op op) {
  return [pool, op]() {
    if (pool->empty()) return Step{0, true, true};
    int64_t id = pool->back();
    pool->pop_back();
    return Step::one(op(id));
  };
}

// djinn: one LeaseClient per client thread against the lease service at `endpoint` (the djinn-lease
// daemon, or a LeaseManager in this process). Pools are filled through `landlord` directly when the
// service runs here, else by grants over RPC, before the measured round.
class DjinnSide : public Side {
 public:
  DjinnSide(std::string endpoint, lease::Landlord* landlord) : endpoint_(std::move(endpoint)), landlord_(landlord) {}

  std::unique_ptr<lease::LeaseClient> client() const {
    return std::make_unique<lease::LeaseClient>(rpc::ClientOptions{.endpoint = endpoint_, .default_timeout = kRpcTimeout});
  }

  // Tops `pool` up to `n` leases.
  bool fill(std::vector<int64_t>& pool, size_t n, int clients, int i, const char* what) {
    std::unique_ptr<lease::LeaseClient> c = landlord_ ? nullptr : client();
    while (pool.size() < n) {
      lease::GrantRequest req{.resource = std::string(what) + "/" + std::to_string(clients) + "/" +
                                          std::to_string(i) + "/" + std::to_string(next_number(clients, i)),
                              .holder = "bench-" + std::to_string(i),
                              .duration_ms = kLongLeaseMs};
      Result<lease::Lease> l = landlord_ ? landlord_->grant(req) : [&]() -> Result<lease::Lease> {
        Result<lease::HeldLease> held = c->grant(req);
        if (!held.ok()) return held.status();
        return held->lease;
      }();
      if (!l.ok()) {
        log_setup_failure("djinn", l.status());
        return false;
      }
      pool.push_back(static_cast<int64_t>(l->id));
    }
    return true;
  }

  Worker grant_worker(int clients, int i) override {
    std::shared_ptr<lease::LeaseClient> c = client();
    std::vector<int64_t>* out = &granted(clients, i);
    std::string prefix = "g/" + std::to_string(clients) + "/" + std::to_string(i) + "/";
    std::string holder = "bench-" + std::to_string(i);
    return [this, c, out, prefix, holder, clients, i]() {
      lease::GrantRequest req{.resource = prefix + std::to_string(next_number(clients, i)), .holder = holder,
                              .duration_ms = kLongLeaseMs};
      Result<lease::HeldLease> l = c->grant(req);
      if (!l.ok()) return Step{0, false, false};
      out->push_back(static_cast<int64_t>(l->lease.id));
      return Step{1, true, false};
    };
  }

  Worker renew_worker(int clients, int i) override {
    std::vector<int64_t>* pool = &renew_pool(clients, i);
    if (!fill(*pool, kBatch, clients, i, "r")) return {};
    std::shared_ptr<lease::LeaseClient> c = client();
    return cycling(pool, [c](int64_t id) { return c->renew(static_cast<lease::LeaseId>(id), kLongLeaseMs).ok(); });
  }

  Worker renew_batch_worker(int clients, int i) override {
    std::vector<int64_t>* pool = &renew_pool(clients, i);
    if (!fill(*pool, kBatch, clients, i, "r")) return {};
    std::shared_ptr<lease::LeaseClient> c = client();
    auto requests = std::make_shared<std::vector<lease::RenewRequest>>();
    for (int64_t id : *pool) requests->push_back({static_cast<lease::LeaseId>(id), kLongLeaseMs});
    return [c, requests]() {
      std::vector<Result<lease::Lease>> results = c->renew_batch(*requests);
      uint64_t renewed = 0;
      for (const auto& r : results) renewed += r.ok() ? 1 : 0;
      return Step{renewed, renewed == requests->size(), false};
    };
  }

  Worker cancel_worker(int clients, int i, size_t need) override {
    std::vector<int64_t>* pool = &granted(clients, i);
    if (!fill(*pool, need, clients, i, "c")) return {};
    std::shared_ptr<lease::LeaseClient> c = client();
    return draining(pool, [c](int64_t id) { return c->cancel(static_cast<lease::LeaseId>(id)).ok(); });
  }

  // The limit of the single-lease figures: a lease.get round trip, the same RPC path with no
  // durable write behind it.
  MakeWorker gets(int clients) {
    return [this, clients](int i) -> Worker {
      std::vector<int64_t>* pool = &renew_pool(clients, i);
      if (!fill(*pool, kBatch, clients, i, "r")) return {};
      std::shared_ptr<lease::LeaseClient> c = client();
      return cycling(pool, [c](int64_t id) { return c->get(static_cast<lease::LeaseId>(id)).ok(); });
    };
  }

 private:
  std::string endpoint_;
  lease::Landlord* landlord_;  // null: the service runs in its own process
};

// etcd through its gateway: one kept-alive HTTP connection per client thread.
class EtcdSide : public Side {
 public:
  explicit EtcdSide(uint16_t port) : port_(port) {}

  std::shared_ptr<lease_bench::EtcdLeaseClient> client() const {
    return connect_client<lease_bench::EtcdLeaseClient>("etcd", port_);
  }

  static bool fill(lease_bench::EtcdLeaseClient& c, std::vector<int64_t>& pool, size_t n) {
    while (pool.size() < n) {
      Result<int64_t> id = c.grant(kLongLeaseS);
      if (!id.ok()) {
        log_setup_failure("etcd", id.status());
        return false;
      }
      pool.push_back(*id);
    }
    return true;
  }

  Worker grant_worker(int clients, int i) override {
    auto c = client();
    if (!c) return {};
    std::vector<int64_t>* out = &granted(clients, i);
    return [c, out]() {
      Result<int64_t> id = c->grant(kLongLeaseS);
      if (!id.ok()) return Step{0, false, false};
      out->push_back(*id);
      return Step{1, true, false};
    };
  }

  Worker renew_worker(int clients, int i) override {
    auto c = client();
    std::vector<int64_t>* pool = &renew_pool(clients, i);
    if (!c || !fill(*c, *pool, kBatch)) return {};
    return cycling(pool, [c](int64_t id) { return c->keep_alive(id).ok(); });
  }

  Worker renew_batch_worker(int clients, int i) override {
    auto c = client();
    std::vector<int64_t>* pool = &renew_pool(clients, i);
    if (!c || !fill(*c, *pool, kBatch)) return {};
    return [this, c, pool]() {
      Result<size_t> n = c->keep_alive_batch(*pool);
      if (!n.ok()) return Step{0, false, false};
      // The gateway now and then ends the response before the stream has answered every message;
      // only the renewals it confirmed count.
      if (*n < pool->size()) short_batches_++;
      return Step{*n, true, false};
    };
  }

  Worker cancel_worker(int clients, int i, size_t need) override {
    auto c = client();
    std::vector<int64_t>* pool = &granted(clients, i);
    if (!c || !fill(*c, *pool, need)) return {};
    return draining(pool, [c](int64_t id) { return c->revoke(id).ok(); });
  }

  uint64_t short_batches() const { return short_batches_.load(); }

 private:
  uint16_t port_;
  std::atomic<uint64_t> short_batches_{0};
};

// Redis: a lease is a key (value: the holder) with an expiration. Grant = SET key holder PX ms NX,
// renew = PEXPIRE key ms, cancel = DEL key; batches are pipelined. Pools hold key numbers.
class RedisSide : public Side {
 public:
  explicit RedisSide(uint16_t port) : port_(port) {}

  std::shared_ptr<lease_bench::RedisConnection> client() const {
    return connect_client<lease_bench::RedisConnection>("redis", port_);
  }

  static std::string key(int clients, int i, int64_t n) {
    return "k:" + std::to_string(clients) + ":" + std::to_string(i) + ":" + std::to_string(n);
  }

  // Tops `pool` up to `n` keys, pipelined.
  bool fill(lease_bench::RedisConnection& c, std::vector<int64_t>& pool, size_t n, int clients, int i) {
    const std::string ms = std::to_string(kLongLeaseMs);
    std::vector<int64_t> numbers;
    while (pool.size() < n) {
      numbers.clear();
      for (size_t k = std::min(kPipelineDepth, n - pool.size()); k > 0; --k) {
        numbers.push_back(next_number(clients, i));
        c.append({"SET", key(clients, i, numbers.back()), "bench", "PX", ms, "NX"});
      }
      if (!c.flush()) return false;
      for (int64_t number : numbers) {
        Result<lease_bench::RespValue> r = c.read_reply();
        if (!r.ok() || r->type != '+') {
          log_setup_failure("redis", r.ok() ? unavailable("SET answered " + r->text) : r.status());
          return false;
        }
        pool.push_back(number);
      }
    }
    return true;
  }

  Worker grant_worker(int clients, int i) override {
    auto c = client();
    if (!c) return {};
    std::vector<int64_t>* out = &granted(clients, i);
    auto ms = std::make_shared<std::string>(std::to_string(kLongLeaseMs));
    return [this, c, out, ms, clients, i]() {
      int64_t n = next_number(clients, i);
      Result<lease_bench::RespValue> r = c->command({"SET", key(clients, i, n), "bench", "PX", *ms, "NX"});
      if (!r.ok() || r->type != '+') return Step{0, false, false};
      out->push_back(n);
      return Step{1, true, false};
    };
  }

  // A connection and the keys its renewal runs cycle over (filled up to the batch size first);
  // nullopt when either could not be had.
  struct Renewing {
    std::shared_ptr<lease_bench::RedisConnection> client;
    std::shared_ptr<std::vector<std::string>> keys;
    std::shared_ptr<std::string> ms;
  };
  std::optional<Renewing> renewing(int clients, int i) {
    auto c = client();
    std::vector<int64_t>* pool = &renew_pool(clients, i);
    if (!c || !fill(*c, *pool, kBatch, clients, i)) return std::nullopt;
    auto keys = std::make_shared<std::vector<std::string>>();
    for (int64_t n : *pool) keys->push_back(key(clients, i, n));
    return Renewing{c, keys, std::make_shared<std::string>(std::to_string(kLongLeaseMs))};
  }

  Worker renew_worker(int clients, int i) override {
    std::optional<Renewing> r = renewing(clients, i);
    if (!r) return {};
    return cycling(r->keys, [c = r->client, ms = r->ms](const std::string& key) {
      Result<lease_bench::RespValue> r = c->command({"PEXPIRE", key, *ms});
      return r.ok() && r->integer == 1;
    });
  }

  Worker renew_batch_worker(int clients, int i) override {
    std::optional<Renewing> r = renewing(clients, i);
    if (!r) return {};
    return [c = r->client, keys = r->keys, ms = r->ms]() {
      for (const std::string& k : *keys) c->append({"PEXPIRE", k, *ms});
      if (!c->flush()) return Step{0, false, false};
      uint64_t renewed = 0;
      for (size_t k = 0; k < keys->size(); ++k) {
        Result<lease_bench::RespValue> r = c->read_reply();
        if (!r.ok()) return Step{0, false, false};
        renewed += r->integer == 1 ? 1 : 0;
      }
      return Step{renewed, renewed == keys->size(), false};
    };
  }

  Worker cancel_worker(int clients, int i, size_t need) override {
    auto c = client();
    std::vector<int64_t>* pool = &granted(clients, i);
    if (!c || !fill(*c, *pool, need, clients, i)) return {};
    return draining(pool, [c, clients, i](int64_t n) {
      Result<lease_bench::RespValue> r = c->command({"DEL", key(clients, i, n)});
      return r.ok() && r->integer == 1;
    });
  }

 private:
  uint16_t port_;
};

// ---------------------------------------------------------------------------------------------
// The disk's limit for durable writes (bench/common's FsyncProbe), one file per writer, in the
// directory that holds djinn's lease.db.
MakeWorker fsync_writers(const std::string& dir) {
  return [dir](int i) -> Worker {
    Result<bench::FsyncProbe> opened = bench::FsyncProbe::open(dir, "fsync-probe-" + std::to_string(i));
    if (!opened.ok()) return {};
    auto probe = std::make_shared<bench::FsyncProbe>(std::move(opened).value());
    return [probe]() { return Step::one(probe->write_one()); };
  };
}

// The loopback's own limit for clients that make one blocking call at a time: 64 bytes each way
// over plain TCP to bench/common's echo thread, no messaging layer, no work.
MakeWorker tcp_pingpongs(uint16_t port) {
  return [port](int) -> Worker {
    Result<std::unique_ptr<bench::TcpEchoClient>> connected = bench::TcpEchoClient::connect(port);
    if (!connected.ok()) return {};
    std::shared_ptr<bench::TcpEchoClient> client = std::move(connected).value();
    return [client]() { return Step::one(client->round_trip()); };
  };
}

// The transport's own limit: 64 bytes each way through a bare ZeroMQ DEALER to bench/common's
// ROUTER echo thread, which has a context of its own; no RPC layer, no work.
MakeWorker zmq_pingpongs(bench::ZmqEchoLimit& limit) {
  return [&limit](int) -> Worker {
    std::shared_ptr<bench::ZmqEchoCaller> caller = limit.caller();
    return [caller]() { return Step::one(caller->round_trip()); };
  };
}

// ---------------------------------------------------------------------------------------------
// Expiry lag and memory.

size_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  size_t pages_total = 0, pages_resident = 0;
  statm >> pages_total >> pages_resident;
  return pages_resident * static_cast<size_t>(::sysconf(_SC_PAGESIZE));
}

// Name of lease k of the expiry runs, the same on every side: "lease-0000042".
std::string lease_name(size_t k) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "lease-%07zu", k);
  return buf;
}
constexpr const char* kHolder = "bench-holder";

struct LagFigures {
  bench::Summary lag_ms;
  size_t expected = 0;
  size_t observed = 0;  // events seen; the rest count as lower bounds (still pending at the end)
  double bytes_per_lease = 0;
  double grant_seconds = 0;  // time to put the live leases in place
};

// The engine alone, in memory (no SQLite file): RSS per live lease, then the lag of each expiry
// event behind its lease's expiration, with `plan.live` leases live throughout.
Result<LagFigures> djinn_expiry(const ExpiryPlan& plan) {
  struct Recorder {
    std::mutex mu;  // guards lags
    std::vector<double> lags;
    std::atomic<size_t> count{0};
  };
  auto rec = std::make_shared<Recorder>();
  rec->lags.reserve(plan.expiring);
  lease::LandlordOptions options;
  options.policy.max_duration = std::chrono::milliseconds(kLiveLeaseMs);
  options.policy.max_leases = plan.live + plan.expiring + 1;
  options.name = "bench-expiry";
  options.on_event = [rec](const lease::LeaseEvent& e) {
    if (e.type != lease::EventType::kExpired) return;
    double lag = static_cast<double>(wall_us()) / 1000.0 - static_cast<double>(e.lease.expiration_ms);
    std::lock_guard lock(rec->mu);
    rec->lags.push_back(lag);
    rec->count.store(rec->lags.size());
  };
  Result<std::unique_ptr<lease::Landlord>> opened = lease::Landlord::open(std::move(options));
  if (!opened.ok()) return opened.status();
  lease::Landlord& landlord = **opened;

  LagFigures f;
  ::malloc_trim(0);
  size_t rss_before = resident_bytes();
  Clock::time_point t0 = Clock::now();
  lease::GrantRequest req{.holder = kHolder, .duration_ms = kLiveLeaseMs};
  for (size_t k = 0; k < plan.live; ++k) {
    req.resource = lease_name(k);
    Result<lease::Lease> l = landlord.grant(req);
    if (!l.ok()) return Status(l.status().code(), "grant " + std::to_string(k) + ": " + l.status().message());
    if (k % 200000 == 199999) progress("  djinn engine: " + std::to_string(k + 1) + " leases");
  }
  f.grant_seconds = seconds_of(Clock::now() - t0);
  size_t rss_after = resident_bytes();
  f.bytes_per_lease = static_cast<double>(rss_after - std::min(rss_after, rss_before)) / static_cast<double>(plan.live);

  // Deadlines spread evenly over the window; each is the grant's own time plus its duration.
  std::vector<int64_t> expirations;
  expirations.reserve(plan.expiring);
  for (size_t k = 0; k < plan.expiring; ++k) {
    req.resource = lease_name(plan.live + k);
    req.duration_ms = plan.lead.count() + static_cast<int64_t>(k) * plan.window.count() /
                                              static_cast<int64_t>(std::max<size_t>(plan.expiring, 1));
    Result<lease::Lease> l = landlord.grant(req);
    if (!l.ok()) return l.status();
    expirations.push_back(l->expiration_ms);
  }
  int64_t last_expiration = expirations.empty() ? 0 : *std::max_element(expirations.begin(), expirations.end());
  int64_t give_up_us = (last_expiration + plan.drain.count()) * 1000;
  while (rec->count.load() < plan.expiring && wall_us() < give_up_us) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::vector<double> lags;
  {
    std::lock_guard lock(rec->mu);
    lags = rec->lags;
  }
  f.expected = plan.expiring;
  f.observed = lags.size();
  // Leases whose event never came: their lag is at least the time waited past their expiration.
  // Counting them as that lower bound keeps the percentiles honest (never lower than the truth).
  if (f.observed < f.expected) {
    double now_ms = static_cast<double>(wall_us()) / 1000.0;
    std::vector<int64_t> sorted = expirations;
    std::sort(sorted.begin(), sorted.end());
    for (size_t k = 0; k < f.expected - f.observed; ++k) {
      lags.push_back(now_ms - static_cast<double>(sorted[sorted.size() - 1 - k]));
    }
  }
  f.lag_ms = bench::summarize(lags);
  return f;
}

// Redis with the same leases as keys: used_memory per key, then keyspace expiry events
// (SUBSCRIBE __keyevent@0__:expired) against each key's PXAT expiration.
Result<LagFigures> redis_expiry(uint16_t port, const ExpiryPlan& plan) {
  Result<lease_bench::RedisConnection> conn = lease_bench::RedisConnection::connect(port);
  if (!conn.ok()) return conn.status();
  lease_bench::RedisConnection& c = *conn;
  for (auto args : {std::initializer_list<std::string_view>{"FLUSHALL", "SYNC"},
                    std::initializer_list<std::string_view>{"CONFIG", "SET", "notify-keyspace-events", "Ex"}}) {
    Result<lease_bench::RespValue> r = c.command(args);
    if (!r.ok()) return r.status();
  }
  Result<int64_t> before = lease_bench::redis_info_int(c, "memory", "used_memory");
  if (!before.ok()) return before.status();

  auto set_all = [&](size_t from, size_t to, const std::function<int64_t(size_t)>& expire_at) -> Status {
    for (size_t k = from; k < to;) {
      size_t end = std::min(to, k + kPipelineDepth);
      for (size_t j = k; j < end; ++j) c.append({"SET", lease_name(j), kHolder, "PXAT", std::to_string(expire_at(j))});
      if (!c.flush()) return unavailable("redis: cannot send");
      for (size_t j = k; j < end; ++j) {
        Result<lease_bench::RespValue> r = c.read_reply();
        if (!r.ok()) return r.status();
        if (r->type != '+') return unavailable("redis SET answered " + r->text);
      }
      k = end;
    }
    return Status::Ok();
  };

  LagFigures f;
  Clock::time_point t0 = Clock::now();
  int64_t live_until = wall_us() / 1000 + kLiveLeaseMs;
  DJINN_RETURN_IF_ERROR(set_all(0, plan.live, [&](size_t) { return live_until; }));
  f.grant_seconds = seconds_of(Clock::now() - t0);
  Result<int64_t> after = lease_bench::redis_info_int(c, "memory", "used_memory");
  if (!after.ok()) return after.status();
  f.bytes_per_lease = static_cast<double>(*after - *before) / static_cast<double>(plan.live);

  Result<lease_bench::RedisConnection> sub = lease_bench::RedisConnection::connect(port);
  if (!sub.ok()) return sub.status();
  Result<lease_bench::RespValue> subscribed = sub->command({"SUBSCRIBE", "__keyevent@0__:expired"});
  if (!subscribed.ok()) return subscribed.status();

  // The same schedule as the engine's: the first deadline `lead` after the last grant.
  int64_t base = wall_us() / 1000 + plan.lead.count();
  std::vector<int64_t> expirations(plan.expiring);
  for (size_t k = 0; k < plan.expiring; ++k) {
    expirations[k] = base + static_cast<int64_t>(k) * plan.window.count() /
                                static_cast<int64_t>(std::max<size_t>(plan.expiring, 1));
  }
  DJINN_RETURN_IF_ERROR(set_all(plan.live, plan.live + plan.expiring,
                                [&](size_t j) { return expirations[j - plan.live]; }));

  int64_t last_expiration = expirations.empty() ? 0 : expirations.back();
  int64_t give_up_us = (last_expiration + plan.drain.count()) * 1000;
  std::vector<char> seen(plan.expiring, 0);
  std::vector<double> lags;
  lags.reserve(plan.expiring);
  while (lags.size() < plan.expiring && wall_us() < give_up_us) {
    if (!sub->wait_readable(std::chrono::milliseconds(50))) continue;
    Result<lease_bench::RespValue> m = sub->read_reply();
    int64_t now = wall_us();
    if (!m.ok()) return m.status();
    if (m->elements.size() != 3 || m->elements[0].text != "message") continue;
    const std::string& key = m->elements[2].text;
    size_t n = 0;
    if (key.size() < 7 || std::from_chars(key.data() + 6, key.data() + key.size(), n).ec != std::errc()) continue;
    if (n < plan.live || n >= plan.live + plan.expiring || seen[n - plan.live]) continue;
    seen[n - plan.live] = 1;
    lags.push_back(static_cast<double>(now) / 1000.0 - static_cast<double>(expirations[n - plan.live]));
  }
  f.expected = plan.expiring;
  f.observed = lags.size();
  double now_ms = static_cast<double>(wall_us()) / 1000.0;
  for (size_t k = 0; k < plan.expiring; ++k) {
    if (!seen[k]) lags.push_back(now_ms - static_cast<double>(expirations[k]));
  }
  f.lag_ms = bench::summarize(lags);
  Result<lease_bench::RespValue> flushed = c.command({"FLUSHALL", "SYNC"});
  if (!flushed.ok()) return flushed.status();
  return f;
}

// ---------------------------------------------------------------------------------------------

// The peer server `Server` started from `path`, or nullptr with a note saying why its figures are
// null. `name` is how figures and notes call it, `program` how progress does.
template <class Server>
std::unique_ptr<Server> start_peer(bench::Report& report, const std::string& name, const std::string& program,
                                   const std::string& path) {
  if (::access(path.c_str(), X_OK) != 0) {
    report.note(name + ": " + path + " not found (install " + name + "-server): its figures are null");
    return nullptr;
  }
  progress("starting " + program);
  Result<std::unique_ptr<Server>> server = Server::start(path);
  if (!server.ok()) {
    report.note(name + " did not start (" + server.status().to_string() + "): its figures are null");
    return nullptr;
  }
  return std::move(server).value();
}

std::optional<bench::Reference> ref(const std::string& name, const std::optional<double>& value) {
  if (!value) return std::nullopt;
  return bench::Reference{name, *value};
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg("bench-lease",
             "Grants/s, renewals/s (single and batches of 100) and cancels/s of the djinn lease service over RPC\n"
             "with 1 and 16 clients, expiry lag (deadline to event) with 1,000,000 live leases and resident\n"
             "memory per lease, beside etcd leases (through its grpc-gateway) and Redis keys with expirations,\n"
             "both started on 127.0.0.1 for the run. Prints one JSON object (DESIGN §11) on stdout.");
  cfg.add_bool("quick", false, "small sizes: 100,000 live leases, under a second per figure, under a minute in all");
  const Plan quick_plan{std::chrono::milliseconds(150), std::chrono::milliseconds(700), 1};
  const Plan full_plan{std::chrono::milliseconds(500), std::chrono::milliseconds(2000), 3};
  bench::add_plan_flags(cfg, quick_plan, full_plan);
  cfg.add_int("leases", 0, "live leases in the expiry and memory run (0: 100,000 with --quick, else 1,000,000)", 0,
              50'000'000);
  cfg.add_string("etcd", bench::kEtcdPath, "the etcd server binary; its figures are null when it is missing");
  cfg.add_string("redis", lease_bench::kRedisPath, "the redis-server binary; its figures are null when it is missing");
  cfg.add_string("lease-binary", DJINN_LEASE_BINARY, "the djinn-lease daemon measured");
  cfg.add_bool("in-process", false,
               "serve leases from a LeaseManager in this benchmark's process instead of the djinn-lease daemon "
               "(clients and server then share one process and its ZeroMQ I/O thread)");
  if (Status st = cfg.parse(argc, argv); !st.ok()) return cfg.exit_code(st);
  log::set_level(log::Level::kWarn);

  const bool quick = cfg.get_bool("quick");
  const Plan plan = bench::plan_from_flags(cfg, quick_plan, full_plan);
  ExpiryPlan expiry = quick ? ExpiryPlan{100'000, 5'000, std::chrono::milliseconds(500), std::chrono::seconds(2),
                                         std::chrono::milliseconds(1500)}
                            : ExpiryPlan{1'000'000, 20'000, std::chrono::seconds(1), std::chrono::seconds(10),
                                         std::chrono::seconds(10)};
  if (cfg.get_int("leases") > 0) expiry.live = static_cast<size_t>(cfg.get_int("leases"));

  bench::Report report("lease");
  auto fail = [](const std::string& what, const Status& st) {
    std::fprintf(stderr, "bench-lease: %s: %s\n", what.c_str(), st.to_string().c_str());
    return 1;
  };

  // Peers first, so that a missing or broken one is known before anything is measured.
  std::unique_ptr<bench::EtcdServer> etcd =
      start_peer<bench::EtcdServer>(report, "etcd", "etcd", cfg.get_string("etcd"));
  std::unique_ptr<lease_bench::RedisServer> redis =
      start_peer<lease_bench::RedisServer>(report, "redis", "redis-server", cfg.get_string("redis"));

  // Expiry and memory first, while this process is still small and its heap unfragmented, so the
  // RSS growth is the engine's.
  progress("expiry lag and memory: djinn engine, " + std::to_string(expiry.live) + " live leases, " +
           std::to_string(expiry.expiring) + " expiring over " + std::to_string(expiry.window.count()) + " ms");
  Result<LagFigures> djinn_lag = djinn_expiry(expiry);
  if (!djinn_lag.ok()) return fail("djinn expiry run", djinn_lag.status());
  progress("  djinn: " + std::to_string(djinn_lag->bytes_per_lease) + " bytes/lease, lag p99 " +
           std::to_string(djinn_lag->lag_ms.p99) + " ms, " + std::to_string(djinn_lag->observed) + "/" +
           std::to_string(djinn_lag->expected) + " events");
  std::optional<LagFigures> redis_lag;
  if (redis) {
    progress("expiry lag and memory: redis, " + std::to_string(expiry.live) + " live keys");
    Result<LagFigures> r = redis_expiry(redis->port(), expiry);
    if (r.ok()) {
      redis_lag = *r;
      progress("  redis: " + std::to_string(r->bytes_per_lease) + " bytes/key, lag p99 " +
               std::to_string(r->lag_ms.p99) + " ms, " + std::to_string(r->observed) + "/" +
               std::to_string(r->expected) + " events");
    } else {
      report.note("redis expiry run failed (" + r.status().to_string() + "): its expiry and memory figures are null");
    }
  }
  ::malloc_trim(0);

  // The lease service: the djinn-lease daemon in its own process, as etcd and Redis run in theirs.
  Result<bench::TempDir> djinn_dir = bench::TempDir::create("djinn-bench-lease-");
  if (!djinn_dir.ok()) return fail("temporary directory", djinn_dir.status());
  const bool in_process = cfg.get_bool("in-process");
  std::unique_ptr<lease::LeaseManager> manager;
  std::unique_ptr<bench::DjinnDaemon> daemon;
  if (in_process) {
    lease::LeaseManagerOptions manager_options;
    manager_options.data_dir = djinn_dir->path() + "/data";
    manager_options.policy.max_duration = std::chrono::milliseconds(kLiveLeaseMs);
    Result<std::unique_ptr<lease::LeaseManager>> m = lease::LeaseManager::start(manager_options);
    if (!m.ok()) return fail("lease manager", m.status());
    manager = std::move(m).value();
  } else {
    progress("starting " + cfg.get_string("lease-binary"));
    Result<std::unique_ptr<bench::DjinnDaemon>> d = bench::DjinnDaemon::start(
        cfg.get_string("lease-binary"),
        {"--data-dir", djinn_dir->path() + "/data", "--max-lease", std::to_string(kLiveLeaseMs) + "ms"},
        djinn_dir->path() + "/djinn-lease.log", std::chrono::seconds(30), [](const std::string& at) {
          lease::LeaseClient probe(rpc::ClientOptions{.endpoint = at, .default_timeout = std::chrono::seconds(1)});
          return probe.leases_of_holder("bench-probe").ok();
        });
    if (!d.ok()) return fail("djinn-lease", d.status());
    daemon = std::move(d).value();
  }
  DjinnSide djinn(in_process ? manager->rpc_endpoint() : daemon->rpc_endpoint(),
                  in_process ? &manager->landlord() : nullptr);
  Result<std::unique_ptr<bench::TcpEchoServer>> tcp_echo = bench::TcpEchoServer::start();
  if (!tcp_echo.ok()) return fail("TCP echo server", tcp_echo.status());
  bench::ZmqEchoLimit zmq_echo;
  std::optional<EtcdSide> etcd_side;
  std::optional<RedisSide> redis_side;
  if (etcd) etcd_side.emplace(etcd->client_port());
  if (redis) redis_side.emplace(redis->port());

  // Each contender runs with the other peers paused (SIGSTOP, then SIGCONT), so that no peer's
  // background work (etcd settling its gateway's streams and its raft log, Redis's expiry cycles)
  // lands in another contender's round; djinn's service, in this process, sits idle in theirs.
  std::vector<pid_t> peer_pids;
  if (etcd) peer_pids.push_back(etcd->pid());
  if (redis) peer_pids.push_back(redis->pid());
  const pid_t djinn_pid = daemon ? daemon->pid() : 0;
  if (daemon) peer_pids.push_back(djinn_pid);
  const pid_t etcd_pid = etcd ? etcd->pid() : 0;
  const pid_t redis_pid = redis ? redis->pid() : 0;
  auto contender = [&peer_pids](std::string label, int clients, MakeWorker make, pid_t own_peer = 0) {
    return Contender{std::move(label),
                     [clients, make, own_peer, &peer_pids](const Plan& p) {
                       bench::PausedPeers paused(peer_pids, own_peer);
                       return run_clients(clients, p, make);
                     },
                     {}};
  };
  // Contenders run only when their side exists; their figures are otherwise nullopt.
  auto throughput_of = [](const std::optional<Contender>& c) -> std::optional<double> {
    if (!c || c->total.failed) return std::nullopt;
    return bench::round_to(c->total.throughput(), 0);
  };
  auto run_all = [&](std::vector<std::optional<Contender>*> all) {
    std::vector<Contender*> present;
    for (auto* c : all) {
      if (*c) present.push_back(&**c);
    }
    run_side_by_side(present, plan);
  };
  uint64_t total_errors = 0;
  int cut_short = 0;
  auto account = [&](const std::optional<Contender>& c) {
    if (!c) return;
    if (c->total.errors) progress(c->label + ": " + std::to_string(c->total.errors) + " failed calls");
    total_errors += c->total.errors;
    cut_short += c->total.cut_short;
  };

  const int sizes[2] = {1, kManyClients};
  std::array<std::optional<double>, 2> djinn_grant_rate, etcd_grant_rate, redis_grant_rate, get_rate;
  for (int n : sizes) {
    std::string tag = bench::clients_tag(n);
    size_t k = config_index(n);
    progress("grants, " + std::to_string(n) + " client(s)");
    std::optional<Contender> d = contender("djinn LeaseClient::grant", n, djinn.grants(n), djinn_pid);
    std::optional<Contender> e, r;
    if (etcd_side) e = contender("etcd /v3/lease/grant", n, etcd_side->grants(n), etcd_pid);
    if (redis_side) r = contender("redis SET PX NX", n, redis_side->grants(n), redis_pid);
    std::optional<Contender> f = contender("fdatasync of 4 KiB (limit)", n, fsync_writers(djinn_dir->path()));
    run_all({&d, &e, &r, &f});
    for (auto* c : {&d, &e, &r, &f}) account(*c);
    djinn_grant_rate[k] = throughput_of(d);
    etcd_grant_rate[k] = throughput_of(e);
    redis_grant_rate[k] = throughput_of(r);
    std::string writers = n == 1 ? "1writer" : std::to_string(n) + "writers";
    report.add({"grant_" + tag + "_per_s", djinn_grant_rate[k].value_or(NAN), "grants/s",
                ref("etcd_grant_" + tag + "_per_s", etcd_grant_rate[k]),
                ref("fdatasync_" + writers + "_per_s", throughput_of(f)), std::nullopt});
    report.add({"grant_" + tag + "_vs_redis_per_s", djinn_grant_rate[k].value_or(NAN), "grants/s",
                ref("redis_set_px_nx_" + tag + "_per_s", redis_grant_rate[k]), std::nullopt, std::nullopt});
  }

  for (int n : sizes) {
    std::string tag = bench::clients_tag(n);
    progress("renewals, " + std::to_string(n) + " client(s)");
    std::optional<Contender> d = contender("djinn LeaseClient::renew", n, djinn.renewals(n), djinn_pid);
    std::optional<Contender> e, r;
    if (etcd_side) e = contender("etcd /v3/lease/keepalive", n, etcd_side->renewals(n), etcd_pid);
    if (redis_side) r = contender("redis PEXPIRE", n, redis_side->renewals(n), redis_pid);
    std::optional<Contender> g = contender("djinn LeaseClient::get (RPC path)", n, djinn.gets(n), djinn_pid);
    std::optional<Contender> t = contender("TCP ping-pong, 64 bytes (limit)", n, tcp_pingpongs((*tcp_echo)->port()));
    std::optional<Contender> z = contender("ZeroMQ DEALER/ROUTER ping-pong, 64 bytes (limit)", n,
                                           zmq_pingpongs(zmq_echo));
    run_all({&d, &e, &r, &g, &t, &z});
    for (auto* c : {&d, &e, &r, &g, &t, &z}) account(*c);
    get_rate[config_index(n)] = throughput_of(g);
    std::optional<double> etcd_rate = throughput_of(e), tcp_rate = throughput_of(t), zmq_rate = throughput_of(z);
    std::optional<bench::Reference> tcp_limit = ref("tcp_pingpong_" + tag + "_per_s", tcp_rate);
    report.add({"renew_" + tag + "_per_s", throughput_of(d).value_or(NAN), "renewals/s",
                ref("etcd_keepalive_" + tag + "_per_s", etcd_rate), tcp_limit,
                bench::Target::at_least(bench::Target::Of::kPeer, 5)});
    report.add({"lease_get_" + tag + "_per_s", get_rate[config_index(n)].value_or(NAN), "calls/s",
                ref("zeromq_pingpong_" + tag + "_per_s", zmq_rate), tcp_limit, std::nullopt});
    report.add({"zeromq_pingpong_" + tag + "_per_s", zmq_rate.value_or(NAN), "round trips/s", std::nullopt, tcp_limit,
                std::nullopt});
    // The lowest bound the target is above: the loopback's TCP, else ZeroMQ's.
    auto above = [&](const std::optional<double>& bound, const std::string& what, const std::string& over) {
      if (!etcd_rate || !bound || 5 * *etcd_rate <= *bound) return false;
      auto whole = [](double v) { return std::to_string(static_cast<int64_t>(v)); };
      report.note("renewals, " + tag + ": the target, 5x etcd's " + whole(*etcd_rate) + "/s = " + whole(5 * *etcd_rate) +
                  "/s, is above " + what + " of " + whole(*bound) + "/s in the same round: no client making one " +
                  "blocking call at a time over " + over + " reaches it here");
      return true;
    };
    if (!above(tcp_rate, "the loopback's own TCP ping-pong", "TCP on this loopback")) {
      above(zmq_rate, "a bare ZeroMQ DEALER/ROUTER ping-pong", "ZeroMQ (DESIGN §3)");
    }
    report.add({"renew_" + tag + "_vs_redis_per_s", throughput_of(d).value_or(NAN), "renewals/s",
                ref("redis_pexpire_" + tag + "_per_s", throughput_of(r)), std::nullopt, std::nullopt});
  }

  for (int n : sizes) {
    std::string tag = bench::clients_tag(n);
    progress("batched renewals (" + std::to_string(kBatch) + " per call), " + std::to_string(n) + " client(s)");
    std::optional<Contender> d = contender("djinn LeaseClient::renew_batch", n, djinn.batched_renewals(n), djinn_pid);
    std::optional<Contender> e, r;
    if (etcd_side) e = contender("etcd keep-alive stream of 100", n, etcd_side->batched_renewals(n), etcd_pid);
    if (redis_side) r = contender("redis 100 PEXPIRE pipelined", n, redis_side->batched_renewals(n), redis_pid);
    run_all({&d, &e, &r});
    for (auto* c : {&d, &e, &r}) account(*c);
    std::string batch = std::to_string(kBatch);
    report.add({"renew_batched" + batch + "_" + tag + "_per_s", throughput_of(d).value_or(NAN), "renewals/s",
                ref("etcd_keepalive_stream" + batch + "_" + tag + "_per_s", throughput_of(e)), std::nullopt,
                bench::Target::at_least(bench::Target::Of::kPeer, 5)});
    report.add({"renew_batched" + batch + "_" + tag + "_vs_redis_per_s", throughput_of(d).value_or(NAN),
                "renewals/s", ref("redis_pexpire_pipelined" + batch + "_" + tag + "_per_s", throughput_of(r)),
                std::nullopt, std::nullopt});
  }

  for (int n : sizes) {
    std::string tag = bench::clients_tag(n);
    size_t k = config_index(n);
    progress("cancels, " + std::to_string(n) + " client(s)");
    // Each client cancels what its side's grant runs made, topped up to what one round may take.
    double round_s = seconds_of(plan.warmup + plan.measure);
    auto need = [&](const std::optional<double>& rate) {
      return static_cast<size_t>(std::ceil(rate.value_or(1000) * round_s * kCancelPoolMargin / n)) + 10;
    };
    std::optional<Contender> d = contender("djinn LeaseClient::cancel", n, djinn.cancels(n, need(djinn_grant_rate[k])), djinn_pid);
    std::optional<Contender> e, r;
    if (etcd_side) e = contender("etcd /v3/lease/revoke", n, etcd_side->cancels(n, need(etcd_grant_rate[k])), etcd_pid);
    if (redis_side) r = contender("redis DEL", n, redis_side->cancels(n, need(redis_grant_rate[k])), redis_pid);
    run_all({&d, &e, &r});
    for (auto* c : {&d, &e, &r}) account(*c);
    // A cancel is not fsync'd (synchronous=NORMAL): its limit is the RPC round trip, measured
    // beside the renewals.
    report.add({"cancel_" + tag + "_per_s", throughput_of(d).value_or(NAN), "cancels/s",
                ref("etcd_revoke_" + tag + "_per_s", throughput_of(e)),
                ref("rpc_lease_get_" + tag + "_per_s", get_rate[k]), std::nullopt});
    report.add({"cancel_" + tag + "_vs_redis_per_s", throughput_of(d).value_or(NAN), "cancels/s",
                ref("redis_del_" + tag + "_per_s", throughput_of(r)), std::nullopt, std::nullopt});
  }

  auto redis_figure = [&](const std::string& name, auto pick) -> std::optional<bench::Reference> {
    if (!redis_lag) return std::nullopt;
    return bench::Reference{name, bench::round_to(pick(*redis_lag), 2)};
  };
  const LagFigures& dl = *djinn_lag;
  report.add({"expiry_lag_p50_ms", bench::round_to(dl.lag_ms.p50, 2), "ms",
              redis_figure("redis_expired_event_lag_p50_ms", [](const LagFigures& f) { return f.lag_ms.p50; }),
              std::nullopt, std::nullopt});
  report.add({"expiry_lag_p99_ms", bench::round_to(dl.lag_ms.p99, 2), "ms",
              redis_figure("redis_expired_event_lag_p99_ms", [](const LagFigures& f) { return f.lag_ms.p99; }),
              std::nullopt, bench::Target::at_most(bench::Target::Of::kValue, 10)});
  report.add({"expiry_lag_max_ms", bench::round_to(dl.lag_ms.max, 2), "ms",
              redis_figure("redis_expired_event_lag_max_ms", [](const LagFigures& f) { return f.lag_ms.max; }),
              std::nullopt, std::nullopt});
  report.add({"memory_per_lease_bytes", bench::round_to(dl.bytes_per_lease, 1), "bytes",
              redis_figure("redis_used_memory_per_key_bytes", [](const LagFigures& f) { return f.bytes_per_lease; }),
              std::nullopt, bench::Target::at_most(bench::Target::Of::kValue, 200)});

  if (manager) manager->stop();

  // How the run was made, and what each side promises about durability.
  unsigned cores = std::thread::hardware_concurrency();
  report.note("one machine, " + std::to_string(cores) + " hardware threads shared by every server and client; all "
              "traffic on 127.0.0.1; data dirs of djinn and etcd and the fdatasync probe in the same temporary "
              "directory tree (" + djinn_dir->path().substr(0, djinn_dir->path().rfind('/')) + ")");
  report.note(std::string(in_process ? "djinn: LeaseManager in this process (RPC server on its own threads, default 2 workers)"
                                      : "djinn: the djinn-lease daemon in its own process (default 2 workers)") +
              ", clients are "
              "LeaseClient over tcp://127.0.0.1, one per client thread; 16 clients = 16 threads, 16 connections. "
              "Durability (SQLite WAL): grants are fsync'd before they return (synchronous=FULL); renewals, cancels "
              "and expiries are written with synchronous=NORMAL (no fsync): they survive a crash of the process, "
              "not a power loss. So grants compare like with like against etcd's; djinn's cancels do not (etcd "
              "fsyncs its revokes)");
  if (etcd) {
    report.note("etcd " + etcd->version() + " (Debian etcd-server), one member on 127.0.0.1, default settings: grants "
                "and revokes are raft proposals, fsync'd to its WAL before they return; keep-alives are answered by "
                "the leader from memory and not persisted (a leader change resets TTLs)");
    report.note("etcd client: etcd's own benchmark tool is not in Debian's golang-etcd-server-dev 3.4.23 (no "
                "tools/benchmark), so etcd is driven through its grpc-gateway (HTTP/1.1 + JSON) over one kept-alive "
                "TCP connection per client thread (TCP_NODELAY), C++ here; each keep-alive request opens a "
                "LeaseKeepAlive stream inside the gateway (etcd's Go client keeps one stream open, so its native "
                "keep-alive rate may be higher); a batch of 100 keep-alives is one request whose body carries 100 "
                "messages on one stream");
  }
  if (redis) {
    report.note("redis " + redis->version() + " (Debian redis-server) on 127.0.0.1 with --save \"\" --appendonly "
                "no: nothing is persisted (compare renewals, not grants or cancels, with djinn's durable ones); "
                "RESP over one TCP connection per client thread; batches are 100 PEXPIREs pipelined; default hz 10 "
                "and active-expire-effort 1");
  }
  report.note("isolation: each contender's rounds run with the other peer processes paused (SIGSTOP, SIGCONT "
              "after the round), so no peer's background work lands in another's round" +
              std::string(in_process ? "; djinn's service, in this process, is idle during the peers' rounds"
                                     : ", djinn-lease's included"));
  report.note("throughput: per figure " + std::to_string(plan.rounds) + " round(s) of " +
              std::to_string(ms_of(plan.measure)) + " ms measured after " + std::to_string(ms_of(plan.warmup)) +
              " ms of warm-up, sides interleaved round by round; each client makes one blocking call at a time; "
              "leases are granted for 1 h so none expires during the run; renewals cycle over 100 leases per "
              "client; cancels take leases granted by the grant runs (topped up beforehand, untimed)");
  report.note("limits: grants: 4 KiB pwrite + fdatasync, overwriting a preallocated 4 MiB file as a WAL in steady "
              "state does, one file per writer, 1 or 16 writers in parallel, in djinn's data directory; renewals: "
              "64-byte round trips over plain TCP on 127.0.0.1 to an echo thread of this process, the same number "
              "of clients, each one blocking call at a time, measured beside the renewals, and below it the same "
              "round trips through a bare ZeroMQ DEALER to a ROUTER echo thread with a context of its own "
              "(zeromq_pingpong_*: the transport of DESIGN §3 without djinn's RPC layer); cancels: lease.get round "
              "trips over the same RPC path (no write), also measured beside the renewals (lease_get_*)");
  report.note("expiry lag: djinn's engine alone (Landlord, in memory: no SQLite file, so expiries are not persisted "
              "in this figure) with " + std::to_string(expiry.live) + " live leases (3 h) and " +
              std::to_string(expiry.expiring) + " more whose durations make them expire evenly over " +
              std::to_string(expiry.window.count()) + " ms; lag = wall time at the kExpired callback minus the "
              "lease's expiration (Unix ms, so up to 1 ms of the lag is rounding of the grant time); events awaited " +
              std::to_string(expiry.drain.count()) + " ms past the last deadline, any not seen counted at that "
              "lower bound. Redis: the same names as keys with PXAT at the same spread, lag = arrival of the "
              "__keyevent@0__:expired message on a subscribed connection minus PXAT (Redis finds expired keys by "
              "sampling)");
  report.note("memory: djinn: growth of this process's resident set (/proc/self/statm) over granting " +
              std::to_string(expiry.live) + " leases to the in-memory engine, divided by their number; Redis: growth "
              "of INFO used_memory over setting the same keys; resource \"lease-NNNNNNN\" (13 bytes), holder "
              "\"bench-holder\" (12 bytes) on both sides (Redis: key and value, with an expiration)");
  report.note("djinn engine: " + std::to_string(expiry.live) + " in-memory grants took " +
              std::to_string(bench::round_to(dl.grant_seconds, 2)) + " s; events seen " + std::to_string(dl.observed) +
              "/" + std::to_string(dl.expected) +
              (redis_lag ? "; redis: keys set in " + std::to_string(bench::round_to(redis_lag->grant_seconds, 2)) +
                               " s (pipelined), events seen " + std::to_string(redis_lag->observed) + "/" +
                               std::to_string(redis_lag->expected)
                         : std::string()));
  if (etcd_side && etcd_side->short_batches()) {
    report.note("etcd: " + std::to_string(etcd_side->short_batches()) + " keep-alive streams of 100 ended before "
                "answering every message (the gateway closes the response early); only confirmed renewals count");
  }
  if (quick) report.note("--quick: short runs and 100,000 live leases; the targets are the issue's, for the full sizes");
  if (total_errors) report.note(std::to_string(total_errors) + " calls failed during the measured windows");
  if (cut_short) {
    report.note(std::to_string(cut_short) + " cancel round(s) ran out of leases to cancel and were measured over "
                "the shorter time they ran");
  }
  bench::print_verdicts(report, "bench-lease", 10, "cannot judge (no peer)");
  report.print();
  return 0;
}
