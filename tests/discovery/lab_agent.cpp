// discovery-lab-agent: a service or a client run inside a LAN-lab host by the lab tests and by
// bench-discovery, reporting what it sees as lines on stdout, each "<monotonic ms> <event> ...":
//   discovered <endpoint> <lookup id> <via>     discarded <endpoint> <lookup id>
//   registered <endpoint>  unregistered <endpoint>          (join: where the item is registered)
//   found <endpoint> <service id> <name>   missing <endpoint> <service id>   empty <endpoint>  (find)
// `join` reads "rename NAME" lines on stdin and applies them to every lookup. CLOCK_MONOTONIC is
// shared by every namespace, so the times compare across hosts.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "djinn/core/config.h"
#include "djinn/core/daemon_flags.h"
#include "djinn/core/log.h"
#include "djinn/discovery/join.h"
#include "djinn/discovery/manager.h"
#include "djinn/lookup/client.h"
#include "djinn/lookup/keeper.h"

using namespace djinn;
using namespace djinn::discovery;
using namespace std::chrono_literals;

namespace {

constexpr const char* kServiceType = "demo.LabService";
std::mutex out_mu;

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void say(const std::string& line) {
  std::lock_guard lock(out_mu);
  std::printf("%lld %s\n", static_cast<long long>(now_ms()), line.c_str());
  std::fflush(stdout);
}

Entry name_entry(const std::string& name) {
  Entry e;
  e.type = "djinn.attr.Name";
  e.fields["name"] = Value(name);
  return e;
}

std::string name_of(const ServiceItem& item) {
  for (const Entry& e : item.attributes) {
    auto f = e.fields.find("name");
    if (e.type == "djinn.attr.Name" && f != e.fields.end() && f->second.type() == ValueType::kText) return f->second.as_text();
  }
  return "";
}

DiscoveryOptions discovery_from(const Config& cfg) {
  DiscoveryOptions o;
  o.groups = lookup::split_list(cfg.get_string("groups"));
  o.avahi = o.multicast = false;
  for (const std::string& d : lookup::split_list(cfg.get_string("discover"))) {
    o.avahi |= d == "avahi";
    o.multicast |= d == "multicast";
  }
  o.locators = lookup::split_list(cfg.get_string("locators"));
  o.multicast_options.interface = cfg.get_string("multicast-interface");
  o.probe_interval = cfg.get_duration("probe-interval");
  o.probe_timeout = cfg.get_duration("probe-timeout");
  o.discard_after = cfg.get_duration("discard-after");
  o.on_discovered = [](const DiscoveredLookup& l) {
    say("discovered " + l.rpc_endpoint + " " + l.service_id.to_string() + " " + l.via);
  };
  o.on_discarded = [](const DiscoveredLookup& l) { say("discarded " + l.rpc_endpoint + " " + l.service_id.to_string()); };
  return o;
}

int run_join(const Config& cfg) {
  ServiceItem item;
  item.service_id = ServiceId::random();
  item.interface_types = {kServiceType};
  item.attributes = {name_entry(cfg.get_string("name"))};
  item.endpoints.rpc = "tcp://" + cfg.get_string("name") + ":1";
  JoinOptions o;
  o.discovery = discovery_from(cfg);
  o.keeper.lease_ms = cfg.get_duration("lease").count();
  o.keeper.call_timeout = 1000ms;
  auto join = JoinManager::start(item, o);
  if (!join.ok()) {
    std::fprintf(stderr, "join: %s\n", join.status().to_string().c_str());
    return 2;
  }
  say("service " + item.service_id.to_string());
  std::atomic<bool> stop{false};
  std::thread watch([&] {
    std::set<std::string> shown;
    while (!stop) {
      auto now = (*join)->registered();
      std::set<std::string> current(now.begin(), now.end());
      for (const auto& e : current) {
        if (!shown.count(e)) say("registered " + e);
      }
      for (const auto& e : shown) {
        if (!current.count(e)) say("unregistered " + e);
      }
      shown = std::move(current);
      std::this_thread::sleep_for(5ms);
    }
  });
  std::thread commands([&] {
    std::string line;
    while (std::getline(std::cin, line)) {
      if (line.rfind("rename ", 0) == 0) (*join)->set_attributes({name_entry(line.substr(7))});
    }
  });
  commands.detach();  // blocked in read until the process ends
  wait_for_stop_signal();
  stop = true;
  watch.join();
  join->reset();
  std::fflush(stdout);
  _exit(0);
}

int run_find(const Config& cfg) {
  auto discovery = DiscoveryManager::start(discovery_from(cfg));
  if (!discovery.ok()) {
    std::fprintf(stderr, "find: %s\n", discovery.status().to_string().c_str());
    return 2;
  }
  std::atomic<bool> stop{false};
  std::thread poll([&] {
    std::map<std::string, std::unique_ptr<lookup::RegistrarClient>> clients;
    std::map<std::string, std::map<ServiceId, std::string>> seen;  // endpoint -> service -> name
    std::set<std::string> reported_empty;
    ServiceTemplate tmpl{std::nullopt, {kServiceType}, {}};
    while (!stop) {
      std::set<std::string> live;
      for (const DiscoveredLookup& l : (*discovery)->lookups()) live.insert(l.rpc_endpoint);
      for (auto it = seen.begin(); it != seen.end();) {
        if (live.count(it->first)) {
          ++it;
          continue;
        }
        for (const auto& [id, name] : it->second) say("missing " + it->first + " " + id.to_string());
        clients.erase(it->first);
        reported_empty.erase(it->first);
        it = seen.erase(it);
      }
      for (const std::string& ep : live) {
        auto& client = clients[ep];
        if (!client) client = std::make_unique<lookup::RegistrarClient>(rpc::ClientOptions{.endpoint = ep});
        rpc::CallOptions call;
        call.timeout = 300ms;
        auto many = client->lookup_many(tmpl, 100, 0, call);
        if (!many.ok()) continue;
        auto& before = seen[ep];
        std::map<ServiceId, std::string> now;
        for (const ServiceItem& item : many->items) now[item.service_id] = name_of(item);
        for (const auto& [id, name] : now) {
          auto b = before.find(id);
          if (b == before.end() || b->second != name) say("found " + ep + " " + id.to_string() + " " + name);
        }
        for (const auto& [id, name] : before) {
          if (!now.count(id)) say("missing " + ep + " " + id.to_string());
        }
        if (now.empty() && !reported_empty.count(ep)) {
          reported_empty.insert(ep);
          say("empty " + ep);
        }
        before = std::move(now);
      }
      std::this_thread::sleep_for(20ms);
    }
  });
  wait_for_stop_signal();
  stop = true;
  poll.join();
  discovery->reset();
  std::fflush(stdout);
  _exit(0);
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg("discovery-lab-agent", "join: keep a demo.LabService registered; find: report where demo.LabService items are.");
  cfg.add_string("groups", "public", "groups (empty: all)");
  cfg.add_string("name", "svc", "join: the service's djinn.attr.Name");
  cfg.add_string("discover", "avahi,multicast", "avahi, multicast, none");
  cfg.add_string("locators", "", "djinn://HOST:PORT,...");
  cfg.add_string("multicast-interface", "", "interface for multicast");
  cfg.add_duration("probe-interval", 250ms, "probe interval");
  cfg.add_duration("probe-timeout", 500ms, "probe timeout");
  cfg.add_duration("discard-after", 1500ms, "discard after silence");
  cfg.add_duration("lease", 3000ms, "join: registration lease");
  if (Status st = cfg.parse(argc, argv); !st.ok()) return cfg.exit_code(st);
  log::set_program("lab-agent");
  if (cfg.positional().size() != 1) {
    std::fprintf(stderr, "usage: discovery-lab-agent join|find [flags]\n");
    return 2;
  }
  block_stop_signals();
  const std::string& mode = cfg.positional()[0];
  if (mode == "join") return run_join(cfg);
  if (mode == "find") return run_find(cfg);
  std::fprintf(stderr, "unknown mode '%s'\n", mode.c_str());
  return 2;
}
