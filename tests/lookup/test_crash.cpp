// kill -9 of a real djinn-lookup under a load of registrations from several client threads:
// after each restart every acknowledged registration is there, with the lease its acknowledgement
// named and the item it registered.
#include <doctest/doctest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <thread>

#include "djinn/lookup/client.h"
#include "djinn/lookup/service.h"
#include "support/test_support.h"

using namespace djinn;
using namespace djinn::lookup;
using namespace std::chrono_literals;

namespace {

// The djinn-lookup process on fixed ports, so a restart comes back where clients look for it.
struct Daemon {
  Daemon(const test::TempDir& dir, int rpc_port, int events_port)
      : endpoint("tcp://127.0.0.1:" + std::to_string(rpc_port)),
        args{"--data-dir", dir.file("lookup"), "--listen", endpoint,
             "--events", "tcp://127.0.0.1:" + std::to_string(events_port), "--max-lease", "1h",
             "--log-level", "warn", "--insecure"} {}
  void start() {
    process = std::make_unique<test::ChildProcess>(test::build_path("lookup/djinn-lookup"), args);
    RegistrarClient probe({.endpoint = endpoint});
    REQUIRE_MESSAGE(test::eventually([&] {
                      rpc::CallOptions call;
                      call.timeout = 200ms;
                      return probe.self(call).ok();
                    }, 10000),
                    "djinn-lookup did not come up on ", endpoint);
  }
  void kill9() { process->kill9(); }
  std::string endpoint;
  std::vector<std::string> args;
  std::unique_ptr<test::ChildProcess> process;
};

}  // namespace

TEST_CASE("no acknowledged registration is lost to kill -9") {
  if (!std::getenv("DJINN_BUILD_DIR")) {
    MESSAGE("DJINN_BUILD_DIR is not set (run through ctest): skipped");
    return;
  }
  test::TempDir dir;
  Daemon daemon(dir, test::free_tcp_port(), test::free_tcp_port());
  daemon.start();

  constexpr int kThreads = 4;
  std::atomic<bool> stop{false};
  std::atomic<int> registered{0}, errors{0};
  std::mutex acked_mu;  // guards acked
  std::map<ServiceId, Registered> acked;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      rpc::ClientOptions o{.endpoint = daemon.endpoint};
      o.reconnect_interval_max = 50ms;
      RegistrarClient client(o);
      rpc::CallOptions call;
      call.timeout = 10s;  // longer than a restart: calls ride it out
      std::vector<ServiceId> mine;
      for (int n = 0; !stop.load(); ++n) {
        ServiceItem item;
        // Every fifth call re-registers one of this thread's services (a replacement).
        item.service_id = (n % 5 == 4 && !mine.empty()) ? mine[n % mine.size()] : ServiceId::random();
        item.interface_types = {"demo.Worker"};
        Entry e;
        e.type = "demo.Slot";
        e.fields["thread"] = Value(t);
        e.fields["n"] = Value(n);
        item.attributes = {e};
        item.endpoints.rpc = "tcp://10.0.0." + std::to_string(t) + ":" + std::to_string(1000 + n);
        auto r = client.register_service(item, 3'600'000, call);
        if (!r.ok()) {
          errors++;
          continue;
        }
        registered++;
        mine.push_back(item.service_id);
        std::lock_guard lock(acked_mu);
        acked[item.service_id] = *r;
      }
    });
  }
  auto wait_for = [&](int more) {
    int target = registered.load() + more;
    REQUIRE(test::eventually([&] { return registered.load() >= target; }, 20000));
  };
  for (int round = 0; round < 4; ++round) {
    wait_for(300);
    daemon.kill9();  // mid-load: registrations are in flight
    daemon.start();
  }
  wait_for(100);
  stop = true;
  for (auto& th : threads) th.join();
  MESSAGE("registrations acknowledged ", registered.load(), ", failed ", errors.load());

  daemon.kill9();
  daemon.start();
  RegistrarClient check({.endpoint = daemon.endpoint});
  auto all = check.lookup_many(ServiceTemplate{std::nullopt, {"demo.Worker"}, {}}, kMaxMatches);
  REQUIRE(all.ok());
  std::map<ServiceId, ServiceItem> stored;
  for (const ServiceItem& i : all->items) stored[i.service_id] = i;
  for (const auto& [id, r] : acked) {
    auto it = stored.find(id);
    REQUIRE_MESSAGE(it != stored.end(), "acknowledged registration ", id.to_string(), " lost");
    CHECK(it->second == r.item);  // the last acknowledged item, with its lease and expiration
  }
  CHECK(acked.size() > 300);
  // Only what was acknowledged (or in flight at a kill) is there: no leases without items.
  CHECK(all->total >= acked.size());
  CHECK(all->total <= acked.size() + kThreads * 4);
}
