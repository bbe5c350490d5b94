// bench-space: the object space's durable writes, takes and template reads per second with
// 1,000,000 stored entries, the wake-up latency of a blocked take, and large-value throughput, beside
// Redis queues (LPUSH / BRPOP with appendfsync always and everysec), the space's own RPC round trip
// (a call that does nothing, the limit of every figure over RPC) and the disk's own sequential
// write + fsync rate, all measured in the same run on 127.0.0.1. The space runs as users run it, the
// djinn-space daemon in its own process beside redis-server in its own. Prints the JSON of DESIGN
// §11 on stdout; progress goes to stderr.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench_json.h"
#include "bench_run.h"
#include "djinn/core/config.h"
#include "djinn/core/log.h"
#include "djinn/heapstore/heap.h"
#include "djinn/heapstore/page_store.h"
#include "djinn/space/client.h"
#include "djinn/space/service.h"
#include "djinn_daemon.h"
#include "fsync_probe.h"
#include "peer_process.h"
#include "redis_server.h"
#include "zmq_echo.h"

using namespace djinn;
using bench::Clock;

namespace {

constexpr const char* kProgram = "bench-space";
constexpr size_t kPayloadBytes = 100;
// Entries a call in the batched writes (space.writeMany), and values an LPUSH beside them.
constexpr int kWriteBatch = 100;
constexpr int kValueRounds = 3;  // large values and disk probes, alternating

struct Sizes {
  size_t stored;       // entries in the space while writes, takes and reads are measured
  int clients;         // concurrent clients for writes, takes and reads (Redis: the same)
  int wake_samples;    // blocked takes woken one after another
  uint64_t value_bytes;
};

void progress(const std::string& text) {
  std::fprintf(stderr, "%s: %s\n", kProgram, text.c_str());
}

Entry task(int64_t id) {
  Entry e;
  e.type = "bench.Task";
  e.supertypes = {"bench.Work"};
  e.fields["id"] = Value(id);
  e.fields["queue"] = Value("q" + std::to_string(id % 16));
  e.fields["payload"] = Value(Value::Bytes(kPayloadBytes, static_cast<uint8_t>(id)));
  return e;
}

// Runs `op(client index, op number)` on `clients` threads for the plan's window and returns the
// rate of the operations that started in the measured part (failures counted apart).
struct Rate {
  double per_second = 0;
  uint64_t failures = 0;
};

Rate measure(int clients, const bench::Plan& plan, const std::function<std::function<bool(uint64_t)>(int)>& make) {
  std::atomic<uint64_t> counted{0}, failed{0};
  bench::Window w = bench::run_together(clients, plan, [&](int i) {
    auto op = make(i);
    return [&, op](const bench::Window& window) {
      uint64_t n = 0;
      for (;;) {
        auto start = Clock::now();
        if (start >= window.until) break;
        bool ok = op(n++);
        if (start >= window.measure_from) (ok ? counted : failed)++;
      }
    };
  });
  return Rate{counted.load() / bench::seconds_of(w.until - w.measure_from), failed.load()};
}

// The disk's sequential write + fsync rate: `bytes` in 1 MiB writes, then one fsync.
double raw_disk_mb_per_s(const std::string& dir, uint64_t bytes) {
  std::string path = dir + "/raw-disk-probe";
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return 0;
  std::vector<uint8_t> block(1 << 20);
  std::mt19937_64 rng(7);
  for (auto& b : block) b = static_cast<uint8_t>(rng());
  auto t0 = Clock::now();
  for (uint64_t done = 0; done < bytes; done += block.size()) {
    block[0] = static_cast<uint8_t>(done >> 20);  // no two blocks alike
    if (::write(fd, block.data(), block.size()) != static_cast<ssize_t>(block.size())) break;
  }
  ::fsync(fd);
  double s = bench::seconds_of(Clock::now() - t0);
  ::close(fd);
  ::unlink(path.c_str());
  return bytes / s / 1e6;
}

struct RedisPeer {
  std::unique_ptr<bench::RedisServer> server;
  std::string mode;
};

std::optional<RedisPeer> start_redis(const std::string& binary, const std::string& fsync) {
  auto s = bench::RedisServer::start(binary, {"--save", "", "--appendonly", "yes", "--appendfsync", fsync});
  if (!s.ok()) {
    progress("redis-server (appendfsync " + fsync + ") not started: " + s.status().to_string());
    return std::nullopt;
  }
  return RedisPeer{std::move(*s), fsync};
}

Rate redis_lpush(RedisPeer& r, int clients, const bench::Plan& plan) {
  std::string payload(kPayloadBytes, 'x');
  return measure(clients, plan, [&](int) {
    auto c = std::make_shared<bench::RedisConnection>(std::move(bench::RedisConnection::connect(r.server->port()).value()));
    return [c, &payload](uint64_t) { return c->command({"LPUSH", "queue", payload}).ok(); };
  });
}

// The same, `batch` values a command (LPUSH queue v1 .. vN): values pushed per second.
Rate redis_lpush_batched(RedisPeer& r, int clients, const bench::Plan& plan, int batch) {
  std::vector<std::string> command{"LPUSH", "queue"};
  for (int i = 0; i < batch; ++i) command.push_back(std::string(kPayloadBytes, 'x'));
  Rate calls = measure(clients, plan, [&](int) {
    auto c = std::make_shared<bench::RedisConnection>(std::move(bench::RedisConnection::connect(r.server->port()).value()));
    return [c, &command](uint64_t) {
      c->append(std::span<const std::string>(command));
      if (!c->flush()) return false;
      auto r = c->read_reply();
      return r.ok() && r->type != '-';
    };
  });
  calls.per_second *= batch;
  return calls;
}

// A heap's pages in the space, as a post-copy heap's PageSource reads them: chunks named by the
// pages' hashes, many a call.
struct SpacePages : heapstore::PageSource {
  explicit SpacePages(space::SpaceClient& space) : space(space) {}
  Status fetch(std::span<const heapstore::PageHash> hashes, const Deliver& deliver) override {
    std::vector<space::ContentHash> names(hashes.size());
    for (size_t i = 0; i < hashes.size(); ++i) names[i] = hashes[i].bytes;
    return space.get_chunks(names, [&](const space::ContentHash& name, std::span<const uint8_t> data) {
      heapstore::PageHash h;
      h.bytes = name;
      return deliver(h, std::as_bytes(data));
    });
  }
  space::SpaceClient& space;
};

struct PostCopyFigures {
  double push_MBps = 0;         // the heap's pages into the space (has_chunks + put_chunks + put_manifest)
  double random_us = 0;         // per page touched at random on the receiving heap
  double fetch_rest_MBps = 0;   // the rest of it
};

// A heap of `bytes` moved through the space by post-copy: its pages pushed as chunks, then a heap
// opened on its manifest elsewhere, 1,000 pages touched at random, then fetch_rest.
std::optional<PostCopyFigures> post_copy_through_space(const std::string& endpoint, const std::string& dir,
                                                       uint64_t bytes) {
  constexpr uint32_t kPage = 4096;
  const uint64_t pages = bytes / kPage;
  auto fail = [](const std::string& what, const Status& st) -> std::optional<PostCopyFigures> {
    progress("post-copy through the space: " + what + ": " + st.to_string());
    return std::nullopt;
  };
  std::filesystem::remove_all(dir);
  auto sender = heapstore::PageStore::open(dir + "/sender");
  if (!sender.ok()) return fail("sender store", sender.status());
  heapstore::Manifest manifest;
  {
    auto heap = heapstore::Heap::open(**sender, 0, {.capacity_bytes = bytes, .budget_bytes = bytes});
    if (!heap.ok()) return fail("sender heap", heap.status());
    std::mt19937_64 gen(11);
    for (uint64_t off = 0; off < bytes; off += 8) {
      uint64_t w = gen();
      std::memcpy((*heap)->base() + off, &w, 8);
    }
    auto v = (*heap)->checkpoint("bench");
    if (!v.ok()) return fail("checkpoint", v.status());
    manifest = *(*sender)->manifest(v->version);
  }
  space::SpaceClient space({.endpoint = endpoint});
  PostCopyFigures f;
  {
    auto t0 = Clock::now();
    std::vector<space::ContentHash> names(manifest.pages.size());
    for (size_t i = 0; i < names.size(); ++i) names[i] = manifest.pages[i].hash.bytes;
    auto stored = space.has_chunks(names);
    if (!stored.ok()) return fail("has_chunks", stored.status());
    constexpr size_t kBatch = 1024;
    std::vector<std::byte> buffer(kBatch * kPage);
    for (size_t at = 0; at < names.size(); at += kBatch) {
      std::vector<std::span<const uint8_t>> chunks;
      std::vector<space::ContentHash> batch_names;
      for (size_t i = at; i < std::min(names.size(), at + kBatch); ++i) {
        if ((*stored)[i]) continue;
        std::span<std::byte> page(buffer.data() + (i - at) * kPage, kPage);
        if (Status st = (*sender)->read_page(manifest.pages[i].hash, page); !st.ok()) return fail("read_page", st);
        chunks.emplace_back(reinterpret_cast<const uint8_t*>(page.data()), kPage);
        batch_names.push_back(names[i]);
      }
      if (chunks.empty()) continue;
      auto put = space.put_chunks(chunks, batch_names);
      if (!put.ok()) return fail("put_chunks", put.status());
    }
    auto value = space.put_manifest(names.size() * uint64_t{kPage}, names);
    if (!value.ok()) return fail("put_manifest", value.status());
    f.push_MBps = static_cast<double>(bytes) / 1e6 / bench::seconds_of(Clock::now() - t0);
  }
  // Two receiving nodes, each starting empty: one touches pages at random, the other fetches all.
  SpacePages source(space);
  for (bool rest : {false, true}) {
    std::string where = dir + (rest ? "/receiver-rest" : "/receiver-random");
    auto receiver = heapstore::PageStore::open(where);
    if (!receiver.ok()) return fail("receiver store", receiver.status());
    auto heap = heapstore::Heap::open_incoming(**receiver, manifest, source, {.budget_bytes = bytes});
    if (!heap.ok()) return fail("incoming heap", heap.status());
    auto t0 = Clock::now();
    if (rest) {
      auto all = (*heap)->fetch_rest();
      if (!all.ok()) return fail("fetch_rest", all.status());
      f.fetch_rest_MBps = static_cast<double>(bytes) / 1e6 / bench::seconds_of(Clock::now() - t0);
    } else {
      std::vector<uint64_t> order(pages);
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), std::mt19937_64(5));
      order.resize(std::min<uint64_t>(1000, pages / 16));  // few enough that runs rarely meet
      for (uint64_t p : order) (void)*static_cast<volatile std::byte*>((*heap)->base() + p * kPage);
      f.random_us = bench::seconds_of(Clock::now() - t0) * 1e6 / static_cast<double>(order.size());
    }
  }
  std::filesystem::remove_all(dir);
  return f;
}

Rate redis_brpop(RedisPeer& r, int clients, const bench::Plan& plan) {
  return measure(clients, plan, [&](int) {
    auto c = std::make_shared<bench::RedisConnection>(std::move(bench::RedisConnection::connect(r.server->port()).value()));
    return [c](uint64_t) {
      auto v = c->command({"BRPOP", "queue", "1"});
      return v.ok() && !v->is_null;
    };
  });
}

// Redis's memory for `n` list elements of kPayloadBytes: growth of INFO used_memory over pushing
// them (pipelined) onto a list of their own, which is then deleted.
std::optional<double> redis_bytes_per_element(RedisPeer& r, size_t n) {
  auto c = bench::RedisConnection::connect(r.server->port());
  if (!c.ok()) return std::nullopt;
  auto before = bench::redis_info_int(*c, "memory", "used_memory");
  if (!before.ok()) return std::nullopt;
  std::string payload(kPayloadBytes, 'x');
  constexpr size_t kPipeline = 1000;
  for (size_t done = 0; done < n;) {
    size_t k = std::min(kPipeline, n - done);
    for (size_t i = 0; i < k; ++i) {
      payload[0] = static_cast<char>('a' + (done + i) % 26);
      c->append({"LPUSH", "bench-memory", payload});
    }
    if (!c->flush()) return std::nullopt;
    for (size_t i = 0; i < k; ++i) {
      if (!c->read_reply().ok()) return std::nullopt;
    }
    done += k;
  }
  auto after = bench::redis_info_int(*c, "memory", "used_memory");
  (void)c->command({"DEL", "bench-memory"});
  if (!after.ok()) return std::nullopt;
  return static_cast<double>(*after - *before) / static_cast<double>(n);
}

// LPUSH followed by the BRPOP of a client blocked on the list: send to receipt, in microseconds.
std::vector<double> redis_wake(RedisPeer& r, int samples) {
  auto pusher = bench::RedisConnection::connect(r.server->port());
  auto popper = bench::RedisConnection::connect(r.server->port());
  std::vector<double> out;
  if (!pusher.ok() || !popper.ok()) return out;
  for (int i = 0; i < samples; ++i) {
    std::promise<Clock::time_point> got;
    std::thread t([&] {
      auto v = popper->command({"BRPOP", "wake", "5"});
      got.set_value(Clock::now());
      (void)v;
    });
    std::this_thread::sleep_for(std::chrono::microseconds(300));  // the BRPOP is in place
    auto start = Clock::now();
    (void)pusher->command({"LPUSH", "wake", "x"});
    auto end = got.get_future().get();
    t.join();
    out.push_back(std::chrono::duration<double, std::micro>(end - start).count());
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg(kProgram,
             "Benchmarks djinn-space: durable writes, takes and template reads per second with 1,000,000 stored "
             "entries, blocked-take wake-up latency, and large-value throughput, beside Redis queues (LPUSH/BRPOP, "
             "appendfsync always and everysec) and the disk's sequential write + fsync rate.");
  cfg.add_bool("quick", false, "small sizes: 20,000 stored entries, 64 MiB values, about a second per figure, under a minute in all");
  cfg.add_string("redis", bench::kRedisPath, "the redis-server binary; Redis figures are null when it is missing");
  cfg.add_int("clients", 50, "concurrent clients for writes, takes and reads (Redis gets the same number)", 1, 1000);
  cfg.add_int("heap-mib", 0, "MiB of the heap moved through the space by post-copy (0: a 16th of the large value: 4 with --quick, else 64)", 0, 16384);
  cfg.add_string("dir", "", "directory for the space's data and the disk probe (default: a temporary directory)");
  cfg.add_string("space-binary", DJINN_SPACE_BINARY, "the djinn-space daemon measured");
  cfg.add_bool("in-process", false,
               "serve the space from a thread of this benchmark instead of the djinn-space daemon (clients and "
               "server then share one process and its ZeroMQ I/O thread)");
  bench::Plan quick{std::chrono::milliseconds(300), std::chrono::milliseconds(1500), 1};
  bench::Plan full{std::chrono::milliseconds(1000), std::chrono::seconds(5), 2};
  bench::add_plan_flags(cfg, quick, full);
  if (Status st = cfg.parse(argc, argv); !st.ok()) return cfg.exit_code(st);
  log::set_program(kProgram);
  if (!cfg.was_set("log-level")) log::set_level(log::Level::kWarn);
  bench::Plan plan = bench::plan_from_flags(cfg, quick, full);
  bool is_quick = cfg.get_bool("quick");
  Sizes sizes = is_quick ? Sizes{20'000, static_cast<int>(cfg.get_int("clients")), 200, 64ull << 20}
                         : Sizes{1'000'000, static_cast<int>(cfg.get_int("clients")), 2000, 1ull << 30};

  std::optional<bench::TempDir> tmp;
  std::string dir = cfg.get_string("dir");
  if (dir.empty()) {
    auto t = bench::TempDir::create("djinn-bench-space-");
    if (!t.ok()) {
      progress(t.status().to_string());
      return 1;
    }
    tmp.emplace(std::move(t).value());
    dir = tmp->path();
  }

  bench::Report report("space");
  std::string clients_tag = bench::clients_tag(sizes.clients);

  // ---- the space with `stored` entries: written in this process, then served by the daemon ----
  space::SpaceServiceOptions o;
  o.data_dir = dir + "/space";
  o.policy.max_duration = std::chrono::hours(24);
  o.policy.default_duration = std::chrono::hours(1);
  o.max_entries = 100'000'000;
  auto service = space::SpaceService::start(o);
  if (!service.ok()) {
    progress("space: " + service.status().to_string());
    return 1;
  }
  std::string endpoint = (*service)->rpc_endpoint();
  {
    progress("storing " + std::to_string(sizes.stored) + " entries");
    auto t0 = Clock::now();
    std::atomic<size_t> done{0}, failed{0};
    std::mutex mu;
    std::condition_variable cv;
    size_t in_flight = 0;
    for (size_t i = 0; i < sizes.stored; ++i) {
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return in_flight < 4000; });
        ++in_flight;
      }
      (*service)->space().write_async(space::WriteRequest{task(static_cast<int64_t>(i)), 24 * 3'600'000, std::nullopt, ""},
                                      [&](Result<space::Written> w) {
                                        done++;
                                        if (!w.ok()) failed++;
                                        std::lock_guard lock(mu);
                                        --in_flight;
                                        cv.notify_one();
                                      });
    }
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return in_flight == 0; });
    if (failed > 0) {
      progress(std::to_string(failed.load()) + " of the stored entries could not be written: see the log above");
      return 1;
    }
    progress("stored in " + std::to_string(bench::seconds_of(Clock::now() - t0)) + " s");
  }
  const bool in_process = cfg.get_bool("in-process");
  std::unique_ptr<bench::DjinnDaemon> daemon;
  if (!in_process) {
    (*service)->stop();
    service->reset();
    progress("starting " + cfg.get_string("space-binary") + " on the stored entries");
    auto t0 = Clock::now();
    auto d = bench::DjinnDaemon::start(
        cfg.get_string("space-binary"),
        {"--data-dir", dir + "/space", "--max-lease", "24h", "--default-lease", "1h", "--max-entries", "100000000"},
        dir + "/djinn-space.log", std::chrono::minutes(5), [&](const std::string& at) {
          space::SpaceClient probe({.endpoint = at, .default_timeout = std::chrono::milliseconds(1000)});
          auto s = probe.stats();
          return s.ok() && s->entries >= sizes.stored;
        });
    if (!d.ok()) {
      progress("djinn-space: " + d.status().to_string());
      return 1;
    }
    daemon = std::move(d).value();
    endpoint = daemon->rpc_endpoint();
    progress("djinn-space ready in " + std::to_string(bench::seconds_of(Clock::now() - t0)) + " s");
  }
  // Resident memory per stored entry, as the daemon holds them after loading (its whole resident
  // set: the process's own baseline of a few MiB included).
  std::optional<double> bytes_per_entry;
  if (daemon) bytes_per_entry = static_cast<double>(daemon->resident_bytes()) / static_cast<double>(sizes.stored);
  space::SpaceClient stats_client({.endpoint = endpoint});
  auto waiters = [&]() -> uint64_t {
    if (in_process) return (*service)->space().stats().waiters;
    auto s = stats_client.stats();
    return s.ok() ? s->waiters : 0;
  };
  std::atomic<int64_t> next_id{static_cast<int64_t>(sizes.stored)};

  std::optional<RedisPeer> always = start_redis(cfg.get_string("redis"), "always");
  std::optional<RedisPeer> everysec = start_redis(cfg.get_string("redis"), "everysec");
  std::string redis_version = always ? always->server->version() : "";

  // ---- template reads ----
  auto reads = [&] {
    return measure(sizes.clients, plan, [&](int i) {
      auto c = std::make_shared<space::SpaceClient>(rpc::ClientOptions{.endpoint = endpoint});
      auto rng = std::make_shared<std::mt19937_64>(i + 1);
      size_t stored = sizes.stored;
      return [c, rng, stored](uint64_t) {
        Template t{"bench.Task", {{"id", Value(static_cast<int64_t>((*rng)() % stored))}}};
        return c->read_if_exists(t).ok();
      };
    });
  };
  // The limit of every figure over RPC: a call of the same clients to the same server that does
  // next to nothing (a template of a type no entry has: one index lookup, no entry, no disk).
  auto round_trips = [&] {
    return measure(sizes.clients, plan, [&](int) {
      auto c = std::make_shared<space::SpaceClient>(rpc::ClientOptions{.endpoint = endpoint});
      return [c](uint64_t) { return c->read_if_exists(Template{"bench.Nothing", {}}).ok(); };
    });
  };
  // The transport's own limit: the same clients through bare ZeroMQ DEALERs to a ROUTER echo
  // thread with a context of its own, no RPC layer, no work.
  bench::ZmqEchoLimit zmq_echo;
  auto zmq_round_trips = [&] {
    return measure(sizes.clients, plan, [&](int) {
      std::shared_ptr<bench::ZmqEchoCaller> c = zmq_echo.caller();
      return [c](uint64_t) { return c->round_trip(); };
    });
  };
  Rate read_rate, round_trip_rate, zmq_round_trip_rate;
  for (int r = 0; r < plan.rounds; ++r) {
    Rate x = reads();
    progress("template reads round " + std::to_string(r + 1) + ": " + std::to_string(static_cast<int64_t>(x.per_second)) + "/s");
    read_rate.per_second += x.per_second / plan.rounds;
    Rate y = round_trips();
    progress("RPC round trips round " + std::to_string(r + 1) + ": " + std::to_string(static_cast<int64_t>(y.per_second)) + "/s");
    round_trip_rate.per_second += y.per_second / plan.rounds;
    Rate z = zmq_round_trips();
    progress("bare ZeroMQ round trips round " + std::to_string(r + 1) + ": " +
             std::to_string(static_cast<int64_t>(z.per_second)) + "/s");
    zmq_round_trip_rate.per_second += z.per_second / plan.rounds;
  }

  // ---- durable writes, beside Redis LPUSH ----
  Rate write_rate, always_push, everysec_push;
  for (int r = 0; r < plan.rounds; ++r) {
    Rate x = measure(sizes.clients, plan, [&](int) {
      auto c = std::make_shared<space::SpaceClient>(rpc::ClientOptions{.endpoint = endpoint});
      return [c, &next_id](uint64_t) { return c->write(task(next_id++), 24 * 3'600'000).ok(); };
    });
    progress("durable writes round " + std::to_string(r + 1) + ": " + std::to_string(static_cast<int64_t>(x.per_second)) + "/s");
    write_rate.per_second += x.per_second / plan.rounds;
    if (always) {
      Rate y = redis_lpush(*always, sizes.clients, plan);
      progress("redis LPUSH always round " + std::to_string(r + 1) + ": " + std::to_string(static_cast<int64_t>(y.per_second)) + "/s");
      always_push.per_second += y.per_second / plan.rounds;
    }
    if (everysec) {
      Rate y = redis_lpush(*everysec, sizes.clients, plan);
      progress("redis LPUSH everysec round " + std::to_string(r + 1) + ": " + std::to_string(static_cast<int64_t>(y.per_second)) + "/s");
      everysec_push.per_second += y.per_second / plan.rounds;
    }
  }
  // One client: the latency-bound figure.
  Rate write_one = measure(1, plan, [&](int) {
    auto c = std::make_shared<space::SpaceClient>(rpc::ClientOptions{.endpoint = endpoint});
    return [c, &next_id](uint64_t) { return c->write(task(next_id++), 24 * 3'600'000).ok(); };
  });
  Rate always_one = always ? redis_lpush(*always, 1, plan) : Rate{};
  // Batches of kWriteBatch entries a call (space.writeMany), beside Redis's LPUSH of as many values.
  Rate write_batched = measure(sizes.clients, plan, [&](int) {
    auto c = std::make_shared<space::SpaceClient>(rpc::ClientOptions{.endpoint = endpoint});
    return [c, &next_id](uint64_t) {
      std::vector<Entry> batch;
      batch.reserve(kWriteBatch);
      for (int k = 0; k < kWriteBatch; ++k) batch.push_back(task(next_id++));
      auto w = c->write_many(batch, 24 * 3'600'000);
      return w.ok() && std::all_of(w->begin(), w->end(), [](const auto& r) { return r.ok(); });
    };
  });
  write_batched.per_second *= kWriteBatch;
  progress("durable writes in batches of " + std::to_string(kWriteBatch) + ": " +
           std::to_string(static_cast<int64_t>(write_batched.per_second)) + " entries/s");
  Rate always_batched = always ? redis_lpush_batched(*always, sizes.clients, plan, kWriteBatch) : Rate{};

  // ---- takes, beside Redis BRPOP ----
  Rate take_rate, always_pop, everysec_pop;
  for (int r = 0; r < plan.rounds; ++r) {
    Rate x = measure(sizes.clients, plan, [&](int) {
      auto c = std::make_shared<space::SpaceClient>(rpc::ClientOptions{.endpoint = endpoint});
      return [c](uint64_t) {
        auto t = c->take_if_exists(Template{"bench.Task", {}});
        return t.ok() && t->has_value();
      };
    });
    progress("takes round " + std::to_string(r + 1) + ": " + std::to_string(static_cast<int64_t>(x.per_second)) + "/s");
    take_rate.per_second += x.per_second / plan.rounds;
    if (always) always_pop.per_second += redis_brpop(*always, sizes.clients, plan).per_second / plan.rounds;
    if (everysec) everysec_pop.per_second += redis_brpop(*everysec, sizes.clients, plan).per_second / plan.rounds;
  }

  // ---- wake-up latency of a blocked take ----
  // Each wake-up includes its write's fsync: the disk's own latency for one 4 KiB write and its
  // fdatasync, sampled between the wake-ups, is their limit.
  std::vector<double> wake, disk_sync;
  {
    space::SpaceClient writer({.endpoint = endpoint});
    space::SpaceClient taker({.endpoint = endpoint});
    Result<bench::FsyncProbe> sync_probe = bench::FsyncProbe::open(dir, "wake-fsync-probe");
    if (!sync_probe.ok()) progress("wake-up: no disk probe: " + sync_probe.status().to_string());
    for (int i = 0; i < sizes.wake_samples; ++i) {
      Entry e;
      e.type = "bench.Wake";
      e.fields["i"] = Value(i);
      std::promise<Clock::time_point> got;
      std::thread t([&] {
        auto r = taker.take(Template{"bench.Wake", {{"i", Value(i)}}}, std::chrono::seconds(5));
        got.set_value(r.ok() && r->has_value() ? Clock::now() : Clock::time_point{});
      });
      // The take is waiting before the write starts.
      auto give_up = Clock::now() + std::chrono::seconds(10);
      while (waiters() == 0 && Clock::now() < give_up) std::this_thread::sleep_for(std::chrono::microseconds(50));
      if (Clock::now() >= give_up) {
        progress("wake-up: no blocked take showed up in the space within 10 s; giving up on this figure");
        t.join();
        break;
      }
      auto start = Clock::now();
      (void)writer.write(e, 60'000);
      auto end = got.get_future().get();
      t.join();
      if (end != Clock::time_point{}) wake.push_back(std::chrono::duration<double, std::micro>(end - start).count());
      // After the wake-up, so that its write's fsync does not follow the probe's at once.
      if (sync_probe.ok()) {
        auto t0 = Clock::now();
        if (sync_probe->write_one()) disk_sync.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
      }
    }
  }
  bench::Summary wake_s = bench::summarize(wake);
  std::vector<double> redis_wake_samples = always ? redis_wake(*always, sizes.wake_samples) : std::vector<double>{};
  std::optional<bench::Summary> redis_wake_s;
  if (!redis_wake_samples.empty()) redis_wake_s = bench::summarize(redis_wake_samples);
  progress("wake-up p50 " + std::to_string(wake_s.p50) + " us, p99 " + std::to_string(wake_s.p99) + " us");
  std::optional<bench::Summary> disk_sync_s;
  if (!disk_sync.empty()) {
    disk_sync_s = bench::summarize(disk_sync);
    progress("4 KiB write + fdatasync between them: p50 " + std::to_string(disk_sync_s->p50) + " us, p99 " +
             std::to_string(disk_sync_s->p99) + " us");
  }

  // ---- large values, beside the disk's sequential write + fsync ----
  // This disk's rate limiter lets bursts through at several times its sustained rate, from one
  // second to the next: rounds of the probe and of a value (a different one each round, so none
  // is stored once already) alternate, and their medians compare.
  double value_mb_s = 0, read_mb_s = 0, raw_mb_s = 0;
  {
    std::vector<double> raw_rounds, write_rounds, read_rounds;
    space::SpaceClient c({.endpoint = endpoint});
    for (int r = 0; r < kValueRounds; ++r) {
      raw_rounds.push_back(raw_disk_mb_per_s(dir, sizes.value_bytes));
      uint64_t left = sizes.value_bytes;
      uint64_t x = 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(r);
      auto t0 = Clock::now();
      auto id = c.put_value([&](uint8_t* out, size_t max) -> Result<size_t> {
        size_t n = static_cast<size_t>(std::min<uint64_t>(max, left));
        for (size_t i = 0; i + 8 <= n; i += 8) {
          x ^= x << 13;
          x ^= x >> 7;
          x ^= x << 17;
          std::memcpy(out + i, &x, 8);
        }
        left -= n;
        return n;
      }, {.chunk_bytes = space::kDefaultChunkBytes, .in_flight = 8});
      double s = bench::seconds_of(Clock::now() - t0);
      if (!id.ok()) {
        progress("put_value: " + id.status().to_string());
        break;
      }
      write_rounds.push_back(sizes.value_bytes / s / 1e6);
      auto t1 = Clock::now();
      uint64_t got = 0;
      Status st = c.get_value(*id, [&](std::span<const uint8_t> b) {
        got += b.size();
        return Status::Ok();
      }, {.chunk_bytes = space::kDefaultChunkBytes, .in_flight = 8});
      if (st.ok()) read_rounds.push_back(got / bench::seconds_of(Clock::now() - t1) / 1e6);
      progress("values round " + std::to_string(r + 1) + ": disk " + std::to_string(raw_rounds.back()) +
               " MB/s, write " + std::to_string(write_rounds.back()) + " MB/s");
    }
    raw_mb_s = bench::median(raw_rounds);
    value_mb_s = write_rounds.empty() ? 0 : bench::median(write_rounds);
    read_mb_s = read_rounds.empty() ? 0 : bench::median(read_rounds);
    progress("values: write " + std::to_string(value_mb_s) + " MB/s, read " + std::to_string(read_mb_s) +
             " MB/s, disk " + std::to_string(raw_mb_s) + " MB/s");
  }

  // ---- a heap moved through the space by post-copy (DESIGN §9) ----
  const uint64_t heap_bytes = cfg.get_int("heap-mib") > 0 ? static_cast<uint64_t>(cfg.get_int("heap-mib")) << 20
                                                         : sizes.value_bytes / 16;
  progress("post-copy through the space: a heap of " + std::to_string(heap_bytes >> 20) + " MiB");
  std::optional<PostCopyFigures> post = post_copy_through_space(endpoint, dir + "/post-copy", heap_bytes);
  if (post) {
    progress("post-copy: pages pushed " + std::to_string(post->push_MBps) + " MB/s, random touches " +
             std::to_string(post->random_us) + " us/page, fetch_rest " + std::to_string(post->fetch_rest_MBps) + " MB/s");
  }

  // Redis's memory last, so the append-only file's rewrite that a million pushes set off cannot land
  // in a measured round.
  std::optional<double> redis_bytes = everysec ? redis_bytes_per_element(*everysec, sizes.stored) : std::nullopt;

  // ---- the report ----
  auto peer = [&](const std::optional<RedisPeer>& p, const std::string& what, double v) -> std::optional<bench::Reference> {
    if (!p) return std::nullopt;
    return bench::Reference{"redis_" + what, bench::round_to(v, 0)};
  };
  const bench::Reference round_trip{"space_rpc_round_trips_per_s_" + clients_tag, bench::round_to(round_trip_rate.per_second, 0)};
  report.add({"durable_writes_per_s_" + clients_tag, bench::round_to(write_rate.per_second, 0),
              "writes/s", peer(always, "lpush_appendfsync_always_per_s", always_push.per_second), round_trip,
              bench::Target::at_least(bench::Target::Of::kPeer, 1.0)});
  report.add({"durable_writes_per_s_" + clients_tag + "_vs_redis_everysec", bench::round_to(write_rate.per_second, 0), "writes/s",
              peer(everysec, "lpush_appendfsync_everysec_per_s", everysec_push.per_second), std::nullopt, std::nullopt});
  report.add({"durable_writes_batched" + std::to_string(kWriteBatch) + "_per_s_" + clients_tag,
              bench::round_to(write_batched.per_second, 0), "entries/s",
              peer(always, "lpush_" + std::to_string(kWriteBatch) + "_values_appendfsync_always_per_s",
                   always_batched.per_second),
              std::nullopt, std::nullopt});
  report.add({"durable_writes_per_s_1client", bench::round_to(write_one.per_second, 0), "writes/s",
              peer(always, "lpush_appendfsync_always_per_s_1client", always_one.per_second), std::nullopt, std::nullopt});
  report.add({"takes_per_s_" + clients_tag, bench::round_to(take_rate.per_second, 0), "takes/s",
              peer(always, "brpop_appendfsync_always_per_s", always_pop.per_second), std::nullopt, std::nullopt});
  report.add({"takes_per_s_" + clients_tag + "_vs_redis_everysec", bench::round_to(take_rate.per_second, 0), "takes/s",
              peer(everysec, "brpop_appendfsync_everysec_per_s", everysec_pop.per_second), std::nullopt, std::nullopt});
  report.add({"zeromq_pingpong_per_s_" + clients_tag, bench::round_to(zmq_round_trip_rate.per_second, 0), "round trips/s",
              std::nullopt, std::nullopt, std::nullopt});
  report.add({"template_reads_by_field_per_s_" + clients_tag,
              bench::round_to(read_rate.per_second, 0), "reads/s", std::nullopt, round_trip, std::nullopt});
  auto wake_peer = [&](double v) -> std::optional<bench::Reference> {
    if (!redis_wake_s) return std::nullopt;
    return bench::Reference{"redis_brpop_woken_by_lpush_us", bench::round_to(v, 1)};
  };
  auto disk_sync_limit = [&](std::string_view which, double v) -> std::optional<bench::Reference> {
    if (!disk_sync_s) return std::nullopt;
    return bench::Reference{"disk_4KiB_write_fdatasync_" + std::string(which) + "_us", bench::round_to(v, 1)};
  };
  report.add({"take_wakeup_p50_us", bench::round_to(wake_s.p50, 1), "us",
              wake_peer(redis_wake_s ? redis_wake_s->p50 : 0),
              disk_sync_limit("p50", disk_sync_s ? disk_sync_s->p50 : 0), std::nullopt});
  report.add({"take_wakeup_p99_us", bench::round_to(wake_s.p99, 1), "us",
              wake_peer(redis_wake_s ? redis_wake_s->p99 : 0),
              disk_sync_limit("p99", disk_sync_s ? disk_sync_s->p99 : 0),
              bench::Target::at_most(bench::Target::Of::kValue, 1000)});
  report.add({"large_value_write_MB_per_s", bench::round_to(value_mb_s, 0), "MB/s", std::nullopt,
              bench::Reference{"disk_sequential_write_fsync_MB_per_s", bench::round_to(raw_mb_s, 0)},
              bench::Target::at_least(bench::Target::Of::kLimit, 0.5)});
  if (bytes_per_entry) {
    std::optional<bench::Reference> redis_memory;
    if (redis_bytes) redis_memory = bench::Reference{"redis_list_used_memory_per_element_bytes", bench::round_to(*redis_bytes, 1)};
    report.add({"resident_bytes_per_stored_entry", bench::round_to(*bytes_per_entry, 1), "bytes", redis_memory,
                std::nullopt, std::nullopt});
  }
  report.add({"large_value_read_MB_per_s", bench::round_to(read_mb_s, 0), "MB/s", std::nullopt, std::nullopt, std::nullopt});
  if (post) {
    report.add({"heap_pages_to_space_MB_per_s", bench::round_to(post->push_MBps, 0), "MB/s", std::nullopt,
                bench::Reference{"large_value_write_MB_per_s", bench::round_to(value_mb_s, 0)}, std::nullopt});
    report.add({"post_copy_from_space_random_page_us", bench::round_to(post->random_us, 1), "us/page", std::nullopt,
                std::nullopt, std::nullopt});
    report.add({"post_copy_from_space_fetch_rest_MB_per_s", bench::round_to(post->fetch_rest_MBps, 0), "MB/s",
                std::nullopt, bench::Reference{"large_value_read_MB_per_s", bench::round_to(read_mb_s, 0)}, std::nullopt});
    report.note("post-copy: a heap of " + std::to_string(heap_bytes >> 20) + " MiB (4 KiB pages, each "
                "written) pushed into the space as chunks named by the pages' hashes (has_chunks, put_chunks of 1,024 "
                "pages, put_manifest), then opened on two other nodes (empty stores) with Heap::open_incoming on a "
                "PageSource reading the space with get_chunks: on one, up to 1,000 pages (a 16th of them) touched at "
                "random, each fault fetching its run; on the other, fetch_rest of all of it");
  }
  report.note(std::string(in_process ? "djinn-space served from a thread of this process" : "djinn-space in its own process") +
              " (data in " + dir + "), clients over loopback RPC; entries of type bench.Task "
              "with an int id, a text queue and a " + std::to_string(kPayloadBytes) + "-byte payload; Redis values of " +
              std::to_string(kPayloadBytes) + " bytes");
  report.note("sizes: " + std::to_string(sizes.stored) + " entries stored before the writes, takes and reads; a large "
              "value of " + std::to_string(sizes.value_bytes >> 20) + " MiB, " + std::to_string(kValueRounds) +
              " different ones, each after a disk probe of as many bytes (medians of both); Redis " + redis_version);
  report.note("durable: a write or take is acknowledged after its group-commit transaction is fsync'd (SQLite WAL, "
              "synchronous=FULL); Redis appendfsync always fsyncs its AOF before replying");
  report.note("limit of the figures over RPC: the same clients calling the same server for next to nothing "
              "(readIfExists of a type no entry has: one index lookup, no entry, no disk), in rounds alternating with "
              "the template reads; below it, the transport's own: 64 bytes each way through bare ZeroMQ DEALERs to a "
              "ROUTER echo thread of this process with a context of its own (zeromq_pingpong_*)");
  // Each bound of every call that Redis's rate is above, in the same run.
  auto redis_above = [&](double bound, const std::string& what, const std::string& over) {
    if (!always || always_push.per_second <= bound) return;
    report.note("durable writes: Redis's " + std::to_string(static_cast<int64_t>(always_push.per_second)) +
                " LPUSH/s with appendfsync always is above this run's " + what + ", " +
                std::to_string(static_cast<int64_t>(bound)) + "/s with the same " + std::to_string(sizes.clients) +
                " clients: no " + over + " reaches it on this machine");
  };
  redis_above(round_trip_rate.per_second, "RPC round trips to the same server doing next to nothing",
              "write over this RPC path");
  redis_above(zmq_round_trip_rate.per_second, "bare ZeroMQ DEALER/ROUTER round trips of 64 bytes (zeromq_pingpong_*)",
              "call over ZeroMQ (DESIGN §3)");
  report.note("memory: djinn-space's resident set (/proc/PID/statm) after loading the stored entries, divided by "
              "their number (each entry with its lease, indexes and SQLite row cache); Redis: growth of INFO used_memory "
              "over LPUSHing as many " + std::to_string(kPayloadBytes) + "-byte values onto one list");
  report.note("wake-up: from the start of the matching write (which includes its fsync) to the blocked taker's reply; "
              "Redis: from LPUSH sent to BRPOP's reply; the limit: one 4 KiB pwrite and its fdatasync in the space's "
              "directory, one after each wake-up");
  if (disk_sync_s && disk_sync_s->p99 >= 1000) {
    report.note("wake-up: this disk's own p99 for one 4 KiB write and its fdatasync, " +
                std::to_string(static_cast<int64_t>(disk_sync_s->p99)) + " us between the wake-ups, is at or above "
                "the 1 ms target: no wake-up by a durable write reaches it at that percentile on this disk today");
  }
  bench::print_verdicts(report, kProgram, 9, "not judged (no value or peer)");
  report.print();
  return 0;
}
