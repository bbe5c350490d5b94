// The djinn-space executable: --help, refusal to serve plaintext unless told, bad flags, the
// endpoints and service id it prints, registration in lookup, and kill -9 under a load of writes
// from several clients: after each restart every acknowledged write is there, whole, and every
// value whose manifest was acknowledged has all its pages.
#include <doctest/doctest.h>

#include <sys/resource.h>
#include <sys/wait.h>

#include <atomic>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "djinn/lookup/client.h"
#include "djinn/space/client.h"
#include "support/test_support.h"

using namespace djinn;
using namespace djinn::space;
using namespace std::chrono_literals;

namespace {

int exit_code_of(const std::vector<std::string>& args) { return test::exit_code_of("space/djinn-space", args); }

// djinn-space on fixed ports, so a restart comes back where clients look for it.
struct Daemon {
  Daemon(const test::TempDir& dir, std::string data, std::vector<std::string> extra = {})
      : endpoint("tcp://127.0.0.1:" + std::to_string(test::free_tcp_port())),
        args{"--data-dir", dir.file(data), "--listen", endpoint,
             "--events", "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port()), "--max-lease", "1h",
             "--log-level", "warn", "--insecure"} {
    args.insert(args.end(), extra.begin(), extra.end());
  }
  void start(const std::vector<std::string>& env = {}) {
    process = std::make_unique<test::ChildProcess>(test::build_path("space/djinn-space"), args, env);
    SpaceClient probe({.endpoint = endpoint});
    REQUIRE_MESSAGE(test::eventually([&] {
                      rpc::CallOptions call;
                      call.timeout = 200ms;
                      return probe.stats(call).ok();
                    }, 10000),
                    "djinn-space did not come up on ", endpoint);
  }
  void kill9() { process->kill9(); }
  // A client that reconnects quickly after a restart, and calls that last longer than one.
  rpc::ClientOptions client_options() const {
    rpc::ClientOptions o{.endpoint = endpoint};
    o.reconnect_interval_max = 50ms;
    return o;
  }
  static rpc::CallOptions call_riding_restarts() {
    rpc::CallOptions call;
    call.timeout = 10s;
    return call;
  }
  std::string endpoint;
  std::vector<std::string> args;
  std::unique_ptr<test::ChildProcess> process;
};

// The tests start the daemons found through DJINN_BUILD_DIR, which ctest sets.
bool run_through_ctest() {
  if (std::getenv("DJINN_BUILD_DIR")) return true;
  MESSAGE("DJINN_BUILD_DIR is not set (run through ctest): skipped");
  return false;
}

}  // namespace

TEST_CASE("djinn-space: --help, refusals that say what to do, lookup registration") {
  if (!run_through_ctest()) return;
  test::TempDir dir;
  std::vector<std::string> base{"--data-dir", dir.file("space"), "--listen", "tcp://127.0.0.1:*", "--events",
                                "tcp://127.0.0.1:*", "--log-level", "off"};
  auto with = [&](const std::vector<std::string>& extra) { return test::args_with(base, extra); };
  CHECK(exit_code_of({"--help"}) == 0);
  for (const std::vector<std::string>& refused : test::shared_refusals(base, dir)) {
    CAPTURE(refused.back());
    CHECK(exit_code_of(refused) == 2);
  }
  CHECK(exit_code_of(with({"--insecure", "--max-entry-bytes", "10"})) == 2);
  CHECK(exit_code_of(with({"--insecure", "--max-value-bytes", "-1"})) == 2);
  CHECK(exit_code_of(with({"--insecure", "--value-grace", "500ms"})) == 2);
  CHECK(exit_code_of(with({"--insecure", "--lookup", "udp://x"})) == 2);
  CHECK(exit_code_of(with({"--insecure", "--data-dir", ""})) == 2);
  CHECK(exit_code_of(with({"--curve-key", dir.file("missing.key"), "--keyring", dir.file("ring")})) == 1);
}

TEST_CASE("djinn-space registers itself in lookup with a ServiceID kept in its data directory") {
  if (!run_through_ctest()) return;
  test::TempDir dir;
  std::string lookup_endpoint = "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port());
  test::ChildProcess lookupd(test::build_path("lookup/djinn-lookup"),
                             {"--data-dir", dir.file("lookup"), "--listen", lookup_endpoint, "--events",
                              "tcp://127.0.0.1:*", "--announce", "none", "--insecure", "--log-level", "warn"});
  lookup::RegistrarClient registrar({.endpoint = lookup_endpoint});
  REQUIRE(test::eventually([&] {
    rpc::CallOptions call;
    call.timeout = 200ms;
    return registrar.self(call).ok();
  }, 10000));
  Daemon d(dir, "space", {"--lookup", lookup_endpoint, "--name", "space-a"});
  d.start();
  ServiceTemplate t;
  t.interface_types = {"djinn.space.JavaSpace"};
  std::optional<ServiceItem> found;
  REQUIRE(test::eventually([&] {
    auto r = registrar.lookup(t);
    if (r.ok() && r->has_value()) found = **r;
    return found.has_value();
  }, 10000));
  CHECK(found->endpoints.rpc == d.endpoint);
  std::ifstream id_file(dir.file("space") + "/service-id");
  std::string id;
  id_file >> id;
  CHECK(found->service_id.to_string() == id);
  kill(d.process->pid(), SIGTERM);
  CHECK(d.process->wait(10000) != -1);
}

TEST_CASE("no acknowledged write is lost to kill -9, and nothing is half-written") {
  if (!run_through_ctest()) return;
  test::TempDir dir;
  Daemon daemon(dir, "space");
  daemon.start();

  constexpr int kThreads = 6;
  std::atomic<bool> stop{false};
  std::atomic<int> acked_count{0}, errors{0}, takes{0};
  std::mutex acked_mu;  // guards acked, taken
  std::map<int64_t, Entry> acked;
  std::set<int64_t> taken;
  std::set<int64_t> tried;  // takes not acknowledged (cut off by a kill): maybe done
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      SpaceClient client(daemon.client_options());
      const rpc::CallOptions call = Daemon::call_riding_restarts();
      for (int n = 0; !stop.load(); ++n) {
        int64_t id = int64_t{t} << 32 | n;
        Entry e;
        e.type = "demo.Record";
        e.supertypes = {"demo.Any"};
        e.fields["id"] = Value(id);
        e.fields["body"] = Value(std::string(static_cast<size_t>(50 + n % 200), static_cast<char>('a' + n % 26)));
        // One thread in three also takes what it wrote now and then: takes are durable too.
        auto r = client.write(e, 3'600'000, std::nullopt, call);
        if (!r.ok()) {
          if (errors++ < 5) MESSAGE("write failed: ", r.status().to_string());
          continue;
        }
        acked_count++;
        {
          std::lock_guard lock(acked_mu);
          acked[id] = e;
        }
        if (t % 3 == 0 && n % 4 == 0) {
          Template tk{"demo.Record", {{"id", Value(id)}}};
          auto got = client.take_if_exists(tk, std::nullopt, call);
          std::lock_guard lock(acked_mu);
          if (got.ok() && got->has_value()) {
            takes++;
            taken.insert(id);
          } else {
            tried.insert(id);
          }
        }
      }
    });
  }
  auto wait_for = [&](int more) {
    int target = acked_count.load() + more;
    REQUIRE(test::eventually([&] { return acked_count.load() >= target; }, 30000));
  };
  for (int round = 0; round < 4; ++round) {
    wait_for(400);
    daemon.kill9();  // mid-load: writes are in flight
    daemon.start();
  }
  wait_for(100);
  stop = true;
  for (auto& th : threads) th.join();
  MESSAGE("writes acknowledged ", acked_count.load(), ", failed ", errors.load(), ", taken ", takes.load());

  daemon.kill9();
  daemon.start();
  SpaceClient check({.endpoint = daemon.endpoint});
  auto all = check.contents_all(Template{"demo.Any", {}});
  REQUIRE(all.ok());
  std::map<int64_t, Entry> stored;
  size_t repeated = 0;
  std::set<int64_t> repeated_ids;
  for (const Entry& e : *all) {
    REQUIRE(e.field("id") != nullptr);
    auto [it, fresh] = stored.emplace(e.field("id")->as_int(), e);
    if (!fresh) {
      // A write committed but not acknowledged before a kill is resent by its client to the
      // restarted daemon; the key stored with the entry answers it, so none should be stored twice.
      ++repeated;
      repeated_ids.insert(it->first);
      CHECK(it->second == e);
    }
  }
  MESSAGE("entries stored twice (resent across a kill): ", repeated);
  CHECK(repeated == 0);
  std::lock_guard lock(acked_mu);
  size_t present = 0;
  for (const auto& [id, e] : acked) {
    if (taken.count(id)) {
      CHECK_MESSAGE((!stored.count(id) || repeated_ids.count(id)), "acknowledged take of ", id, " came back");
      continue;
    }
    if (tried.count(id)) continue;
    auto it = stored.find(id);
    REQUIRE_MESSAGE(it != stored.end(), "acknowledged write ", id, " lost");
    CHECK(it->second == e);  // whole: exactly what was written
    ++present;
  }
  CHECK(acked.size() > 1500);
  // Only what was acknowledged (or in flight at a kill) is there.
  CHECK(stored.size() <= present + kThreads * 5);
  CHECK(all->size() == stored.size() + repeated);
}

TEST_CASE("no value whose manifest was acknowledged loses a page to kill -9 (pages in pack files)") {
  if (!run_through_ctest()) return;
  test::TempDir dir;
  Daemon daemon(dir, "space");
  daemon.start();
  // A page of 4 KiB from a seed; a quarter of each checkpoint's pages are shared by all of them.
  auto page_of = [](uint64_t seed) {
    std::vector<uint8_t> page(4096);
    uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 1;
    for (auto& b : page) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      b = static_cast<uint8_t>(x);
    }
    return page;
  };
  constexpr int kThreads = 3;
  constexpr uint64_t kPages = 64;
  std::atomic<bool> stop{false};
  std::atomic<int> acked_count{0};
  std::mutex acked_mu;  // guards acked
  std::map<ContentHash, std::vector<uint64_t>> acked;  // value id -> its pages' seeds
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      SpaceClient client(daemon.client_options());
      const rpc::CallOptions call = Daemon::call_riding_restarts();
      for (uint64_t n = 0; !stop.load(); ++n) {
        std::vector<uint64_t> seeds;
        std::vector<std::vector<uint8_t>> pages;
        std::vector<ContentHash> names;
        for (uint64_t i = 0; i < kPages; ++i) {
          seeds.push_back(i % 4 == 0 ? i : (uint64_t{1} << 40) + (uint64_t(t) << 32) + n * kPages + i);
          pages.push_back(page_of(seeds.back()));
          names.push_back(hash_bytes(pages.back()));
        }
        std::vector<std::span<const uint8_t>> spans(pages.begin(), pages.end());
        if (!client.put_chunks(spans, names, call).ok()) continue;
        auto id = client.put_manifest(kPages * 4096, names, call);
        if (!id.ok()) continue;
        acked_count++;
        std::lock_guard lock(acked_mu);
        acked[*id] = seeds;
      }
    });
  }
  for (int round = 0; round < 3; ++round) {
    int target = acked_count.load() + 30;
    REQUIRE(test::eventually([&] { return acked_count.load() >= target; }, 30000));
    daemon.kill9();  // mid-load: pages are being appended
    daemon.start();
  }
  stop = true;
  for (auto& th : threads) th.join();
  daemon.kill9();
  daemon.start();
  SpaceClient check({.endpoint = daemon.endpoint});
  std::lock_guard lock(acked_mu);
  MESSAGE("values acknowledged: ", acked.size());
  CHECK(acked.size() >= 90);
  for (const auto& [id, seeds] : acked) {
    auto m = check.get_manifest(id);
    REQUIRE_MESSAGE(m.ok(), "acknowledged value ", to_hex(id), ": ", m.status().to_string());
    REQUIRE(m->chunks.size() == seeds.size());
    size_t at = 0;
    Status st = check.get_chunks(m->chunks, [&](const ContentHash&, std::span<const uint8_t> data) {
      CHECK(std::vector<uint8_t>(data.begin(), data.end()) == page_of(seeds[at++]));
      return Status::Ok();
    });
    REQUIRE_MESSAGE(st.ok(), "pages of acknowledged value ", to_hex(id), ": ", st.to_string());
    CHECK(at == seeds.size());
  }
}

TEST_CASE("djinn-space raises its limit on open files to the hard limit (a descriptor per pack file)") {
  if (!run_through_ctest()) return;
  test::TempDir dir;
  struct rlimit mine {};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &mine) == 0);
  if (mine.rlim_max <= 1024) {
    MESSAGE("the hard limit on open files is 1,024 or less here: nothing to raise");
    return;
  }
  // Started with the usual soft limit of 1,024, which it inherits.
  struct rlimit low = mine;
  low.rlim_cur = 1024;
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
  Daemon d(dir, "space");
  d.start();
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &mine) == 0);
  std::ifstream limits("/proc/" + std::to_string(d.process->pid()) + "/limits");
  std::string line, soft;
  while (std::getline(limits, line)) {
    if (line.rfind("Max open files", 0) != 0) continue;
    std::istringstream fields(line.substr(std::string("Max open files").size()));
    fields >> soft;
  }
  CHECK(soft == (mine.rlim_max == RLIM_INFINITY ? std::string("unlimited") : std::to_string(mine.rlim_max)));
  kill(d.process->pid(), SIGTERM);
  CHECK(d.process->wait(10000) != -1);
}
