// DiscoveryManager: announcements from Avahi and multicast, and locators, become candidate
// endpoints; each is confirmed with lookup.self before it is discovered, then probed to tell when it
// is gone. State is one map under one mutex; Avahi's and multicast's threads and the RPC client's
// I/O thread only update it, and the manager's thread runs the timers and the listeners.
#include "djinn/discovery/manager.h"

#include <algorithm>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <kj/exception.h>

#include "djinn/core/log.h"
#include "djinn/core/model_capnp.h"
#include "djinn/discovery/avahi.h"
#include "djinn/proto/lookup.capnp.h"

namespace djinn::discovery {
namespace {

constexpr const char* kLog = "discovery";
using Clock = std::chrono::steady_clock;
// An announcement is believed for three of its intervals; one claiming more than this interval
// (a spoofed packet can claim 49 days) is taken to mean this.
constexpr std::chrono::milliseconds kMaxAnnounceInterval = std::chrono::minutes(10);
// Lookups heard of and not yet discovered, each probed through a client of its own (sockets, and
// a thread's share of work): past this many, a new one is heard only in place of one that never
// answered. Discovered lookups and locators given by the application are always kept.
constexpr size_t kMaxCandidates = 64;

struct SelfAnswer {
  ServiceItem item;
  std::vector<std::string> groups;
};

Result<SelfAnswer> read_self(rpc::Reply& reply) {
  return rpc::read_reply<SelfAnswer>(reply, "lookup.self", [](rpc::Reply& r) -> Result<SelfAnswer> {
    auto res = r.results<proto::SelfResult>();
    Result<ServiceItem> item = from_capnp(res.getItem());
    if (!item.ok()) return item.status();
    SelfAnswer out{std::move(*item), {}};
    if (res.getGroups().size() > kMaxGroups) {
      return invalid_argument("lookup.self: " + std::to_string(res.getGroups().size()) + " groups, more than " +
                              std::to_string(kMaxGroups));
    }
    // What a lookup says of itself is passed on (DiscoveredLookup, the discovery service's
    // answers): groups a client would refuse are refused here, as a failed probe.
    for (auto g : res.getGroups()) {
      std::string_view group(g.cStr(), g.size());
      if (Status bad = check_group(group); !bad.ok()) return Status(bad.code(), "lookup.self: " + bad.message());
      out.groups.emplace_back(group);
    }
    return out;
  });
}

}  // namespace

struct DiscoveryManager::Impl : std::enable_shared_from_this<Impl> {
  enum class State { kPending, kDiscovered, kIgnored };

  struct Candidate {
    std::string endpoint;
    State state = State::kPending;
    std::optional<Announcement> announced;  // the latest announcement heard
    std::set<std::string> avahi_keys;
    Clock::time_point multicast_until{};
    bool unicast = false;
    bool withdrawn = false;  // its announcement was withdrawn: one failed probe discards it
    std::string via;
    Clock::time_point last_alive{};
    Clock::time_point next_probe{};
    bool probing = false;
    uint64_t generation = 0;  // of the entry, so a late probe answer for a replaced one is dropped
    std::shared_ptr<rpc::Client> client;
    DiscoveredLookup info;

    bool has_source(Clock::time_point now) const { return !avahi_keys.empty() || unicast || multicast_until > now; }
  };

  struct Event {
    bool discovered;
    DiscoveredLookup lookup;
  };

  DiscoveryOptions options;
  mutable std::mutex mu;  // guards everything below
  std::condition_variable wake;
  mutable std::condition_variable changed;
  std::map<std::string, Candidate> candidates;  // by RPC endpoint
  std::vector<Event> events;                     // to deliver, in order
  std::vector<std::shared_ptr<rpc::Client>> retired;  // clients to destroy outside the lock
  DiscoveryStats stats;
  uint64_t next_generation = 1;
  bool stopping = false;
  bool stopped = false;

  std::unique_ptr<AvahiBrowser> browser;
  std::unique_ptr<MulticastListener> listener;
  std::thread thread;
  std::mutex stop_mu;

  // The candidate an announcement names, or nullptr when there is no room for another (see
  // kMaxCandidates): one that never answered and is not being probed makes way.
  Candidate* heard_of_locked(const std::string& endpoint) {
    if (!candidates.count(endpoint) && candidates.size() >= kMaxCandidates) {
      auto victim = std::find_if(candidates.begin(), candidates.end(), [](const auto& entry) {
        const Candidate& c = entry.second;
        return c.state != State::kDiscovered && !c.unicast && !c.probing && c.last_alive == Clock::time_point{};
      });
      if (victim == candidates.end()) {
        ++stats.crowded_out;
        return nullptr;
      }
      if (victim->second.client) retired.push_back(std::move(victim->second.client));
      candidates.erase(victim);
      ++stats.crowded_out;
    }
    return &candidate_locked(endpoint);
  }

  Candidate& candidate_locked(const std::string& endpoint) {
    auto [it, fresh] = candidates.try_emplace(endpoint);
    if (fresh) {
      it->second.endpoint = endpoint;
      it->second.generation = next_generation++;
      it->second.next_probe = Clock::now();
    }
    return it->second;
  }

  void heard_locked(Candidate& c, const Announcement& a, const std::string& via) {
    Clock::time_point now = Clock::now();
    ++stats.announcements;
    c.announced = a;
    // Only answers keep a discovered lookup alive: one that still announces but no longer
    // answers (hung, or its announcer outlived it) is discarded all the same.
    if (c.state == State::kPending) c.via = via;
    if (c.state == State::kPending && !c.probing) c.next_probe = now;
    if (c.state == State::kIgnored && c.info.groups != a.groups) {
      // It says it serves other groups now: ask it again.
      c.state = State::kPending;
      c.next_probe = now;
    }
    wake.notify_all();
  }

  void on_avahi_found(const std::string& key, const Announcement& a) {
    if (!groups_match(options.groups, a.groups)) return;
    std::lock_guard lock(mu);
    if (stopping) return;
    // One instance may move (a new address or port): it leaves the candidate it was on.
    for (auto& [ep, c] : candidates) {
      if (ep != a.rpc_endpoint()) c.avahi_keys.erase(key);
    }
    Candidate* heard = heard_of_locked(a.rpc_endpoint());
    if (!heard) return;
    Candidate& c = *heard;
    c.avahi_keys.insert(key);
    c.withdrawn = false;
    heard_locked(c, a, "avahi");
  }

  void on_avahi_removed(const std::string& key) {
    std::lock_guard lock(mu);
    for (auto& [ep, c] : candidates) {
      if (!c.avahi_keys.erase(key) || !c.avahi_keys.empty()) continue;
      if (c.state == State::kDiscovered) {
        // Withdrawn from DNS-SD (its process ended, or its daemon): find out now whether it is gone.
        c.withdrawn = true;
        c.next_probe = Clock::now();
      }
    }
    wake.notify_all();
  }

  void on_multicast(const Announcement& a) {
    if (!groups_match(options.groups, a.groups)) return;
    std::lock_guard lock(mu);
    if (stopping) return;
    if (a.leaving && !candidates.count(a.rpc_endpoint())) return;
    Candidate* heard = heard_of_locked(a.rpc_endpoint());
    if (!heard) return;
    Candidate& c = *heard;
    Clock::time_point now = Clock::now();
    if (a.leaving) {
      c.multicast_until = Clock::time_point{};
      c.withdrawn = true;
      c.next_probe = now;
      wake.notify_all();
      return;
    }
    std::chrono::milliseconds interval = std::min(std::chrono::milliseconds(a.interval_ms), kMaxAnnounceInterval);
    std::chrono::milliseconds valid = std::max(options.discard_after, 3 * interval);
    c.multicast_until = now + valid;
    c.withdrawn = false;
    heard_locked(c, a, "multicast");
  }

  std::vector<ServiceId> known() const {
    std::lock_guard lock(mu);
    std::vector<ServiceId> out;
    for (const auto& [ep, c] : candidates) {
      if (c.state == State::kDiscovered) out.push_back(c.info.service_id);
    }
    return out;
  }

  void discard_locked(Candidate& c, const std::string& why) {
    DJINN_LOG(kInfo, kLog) << "discarded lookup " << c.info.service_id.to_string() << " at " << c.endpoint << ": " << why;
    c.state = State::kPending;
    // Another address of the same lookup (or another endpoint claiming its ServiceID) was set
    // aside while this one stood for it: ask it again now.
    for (auto& [ep, other] : candidates) {
      if (&other != &c && other.state == State::kIgnored && other.info.service_id == c.info.service_id) {
        other.state = State::kPending;
        other.next_probe = Clock::now();
      }
    }
    ++stats.discarded;
    events.push_back({false, c.info});
    changed.notify_all();
  }

  struct Probe {
    std::shared_ptr<rpc::Client> client;
    std::string endpoint;
    uint64_t generation;
  };
  std::vector<Probe> probes;  // to send once the lock is released

  void probe_locked(Candidate& c) {
    if (!c.client) {
      rpc::ClientOptions o{.endpoint = c.endpoint, .curve = options.curve};
      o.default_timeout = options.probe_timeout;
      // A restarted lookup is seen within a tenth of a second, not after ZeroMQ's 1 s back-off.
      o.reconnect_interval_max = std::chrono::milliseconds(100);
      c.client = std::make_shared<rpc::Client>(o);
    }
    c.probing = true;
    ++stats.probes;
    probes.push_back({c.client, c.endpoint, c.generation});
  }

  // Outside the lock: a client that cannot dial its endpoint answers at once, on this thread.
  void send_probes(std::vector<Probe>& batch) {
    for (Probe& p : batch) {
      rpc::CallOptions call;
      call.timeout = options.probe_timeout;
      call.idempotent = true;
      std::weak_ptr<Impl> weak = weak_from_this();
      p.client->call_async_raw("lookup.self", kj::Array<capnp::word>(), call,
                               [weak, endpoint = p.endpoint, generation = p.generation](rpc::Reply reply) {
                                 if (auto self = weak.lock()) self->on_probe(endpoint, generation, reply);
                               });
    }
    batch.clear();
  }

  void on_probe(const std::string& endpoint, uint64_t generation, rpc::Reply& reply) {
    Result<SelfAnswer> answer = read_self(reply);
    std::lock_guard lock(mu);
    auto it = candidates.find(endpoint);
    if (it == candidates.end() || it->second.generation != generation || stopping) return;
    Candidate& c = it->second;
    c.probing = false;
    Clock::time_point now = Clock::now();
    c.next_probe = now + options.probe_interval;
    wake.notify_all();
    if (!answer.ok()) {
      ++stats.probe_failures;
      DJINN_LOG(kDebug, kLog) << "probe of " << endpoint << ": " << answer.status().to_string();
      if (c.state == State::kDiscovered && c.withdrawn) discard_locked(c, "withdrew its announcement and does not answer");
      return;
    }
    c.withdrawn = false;
    SelfAnswer& a = *answer;
    if (c.state == State::kDiscovered && a.item.service_id != c.info.service_id) {
      // Another lookup answers at this endpoint now (restarted without its data).
      discard_locked(c, "replaced by " + a.item.service_id.to_string());
    }
    c.last_alive = now;
    if (c.state == State::kDiscovered) {
      c.info.item = std::move(a.item);
      return;
    }
    if (!groups_match(options.groups, a.groups)) {
      if (c.state != State::kIgnored) ++stats.ignored;
      c.state = State::kIgnored;
      c.info.groups = a.groups;
      c.next_probe = Clock::time_point::max();
      return;
    }
    for (const auto& [ep, other] : candidates) {
      if (ep != endpoint && other.state == State::kDiscovered && other.info.service_id == a.item.service_id) {
        // Reached at another address already: one lookup is discovered once.
        c.state = State::kIgnored;
        c.info.service_id = a.item.service_id;
        c.info.groups = a.groups;
        c.next_probe = Clock::time_point::max();
        return;
      }
    }
    DiscoveredLookup info;
    info.service_id = a.item.service_id;
    info.rpc_endpoint = endpoint;
    if (c.announced && c.announced->events_port) {
      info.events_endpoint = c.announced->events_endpoint();
    } else {
      info.events_endpoint = a.item.endpoints.events;
    }
    info.groups = a.groups;
    for (const Entry& e : a.item.attributes) {
      auto f = e.fields.find("name");
      if (e.type == "djinn.attr.Name" && f != e.fields.end() && f->second.type() == ValueType::kText) {
        info.name = f->second.as_text();
      }
    }
    info.via = c.via.empty() ? "unicast" : c.via;
    info.item = std::move(a.item);
    c.info = info;
    c.state = State::kDiscovered;
    ++stats.discovered;
    DJINN_LOG(kInfo, kLog) << "discovered lookup " << info.service_id.to_string() << " '" << info.name << "' at " << endpoint
                           << " via " << info.via;
    events.push_back({true, std::move(info)});
    changed.notify_all();
  }

  void tick_locked(Clock::time_point now) {
    for (auto it = candidates.begin(); it != candidates.end();) {
      Candidate& c = it->second;
      if (c.state == State::kDiscovered && now - c.last_alive > options.discard_after) {
        discard_locked(c, "silent for " + std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(now - c.last_alive).count()) + " ms");
        c.next_probe = now + options.probe_interval;
      }
      if (c.state != State::kDiscovered && !c.has_source(now) && !c.probing) {
        if (c.client) retired.push_back(std::move(c.client));
        it = candidates.erase(it);
        continue;
      }
      if (c.state == State::kIgnored && !c.has_source(now)) c.next_probe = Clock::time_point::max();
      if (!c.probing && c.next_probe <= now) probe_locked(c);
      ++it;
    }
  }

  Clock::time_point next_deadline_locked(Clock::time_point now) const {
    Clock::time_point next = now + std::chrono::seconds(1);  // sources expire without a timer of their own
    for (const auto& [ep, c] : candidates) {
      if (!c.probing) next = std::min(next, c.next_probe);
      if (c.state == State::kDiscovered) next = std::min(next, c.last_alive + options.discard_after + std::chrono::milliseconds(1));
    }
    return next;
  }

  void run() {
    std::unique_lock lock(mu);
    while (!stopping) {
      Clock::time_point now = Clock::now();
      tick_locked(now);
      if (!events.empty() || !retired.empty() || !probes.empty()) {
        std::vector<Event> batch = std::move(events);
        events.clear();
        std::vector<std::shared_ptr<rpc::Client>> drop = std::move(retired);
        retired.clear();
        std::vector<Probe> send = std::move(probes);
        probes.clear();
        lock.unlock();
        drop.clear();
        send_probes(send);
        for (const Event& e : batch) {
          const auto& listener = e.discovered ? options.on_discovered : options.on_discarded;
          if (listener) listener(e.lookup);
        }
        lock.lock();
        continue;
      }
      wake.wait_until(lock, next_deadline_locked(now));
    }
  }
};

Result<std::unique_ptr<DiscoveryManager>> DiscoveryManager::start(DiscoveryOptions options) {
  for (const std::string& g : options.groups) DJINN_RETURN_IF_ERROR(check_group(g));
  if (options.probe_interval.count() <= 0 || options.probe_timeout.count() <= 0 || options.discard_after.count() <= 0) {
    return invalid_argument("probe interval, probe timeout and discard time must be > 0 ms");
  }
  std::vector<Locator> locators;
  for (const std::string& l : options.locators) {
    Result<Locator> parsed = parse_locator(l);
    if (!parsed.ok()) return parsed.status();
    locators.push_back(*parsed);
  }
  auto im = std::make_shared<Impl>();
  im->options = std::move(options);
  for (const Locator& l : locators) im->candidate_locked(l.rpc_endpoint()).unicast = true;
  std::weak_ptr<Impl> weak = im;
  if (im->options.avahi) {
    AvahiBrowserOptions b;
    b.on_found = [weak](const std::string& key, const Announcement& a) {
      if (auto self = weak.lock()) self->on_avahi_found(key, a);
    };
    b.on_removed = [weak](const std::string& key) {
      if (auto self = weak.lock()) self->on_avahi_removed(key);
    };
    b.on_unavailable = [](const std::string& why) {
      DJINN_LOG(kWarn, kLog) << "no DNS-SD discovery until avahi-daemon is there (" << why << ")";
    };
    Result<std::unique_ptr<AvahiBrowser>> browser = AvahiBrowser::start(std::move(b));
    if (browser.ok()) {
      im->browser = std::move(*browser);
    } else {
      DJINN_LOG(kWarn, kLog) << "no DNS-SD: " << browser.status().message();
    }
  }
  if (im->options.multicast) {
    MulticastListenerOptions m;
    m.multicast = im->options.multicast_options;
    m.groups = im->options.groups;
    m.on_announcement = [weak](const Announcement& a) {
      if (auto self = weak.lock()) self->on_multicast(a);
    };
    m.known = [weak]() -> std::vector<ServiceId> {
      if (auto self = weak.lock()) return self->known();
      return {};
    };
    Result<std::unique_ptr<MulticastListener>> listener = MulticastListener::start(std::move(m));
    if (listener.ok()) {
      im->listener = std::move(*listener);
    } else if (listener.status().code() == Code::kInvalidArgument) {
      return listener.status();
    } else {
      DJINN_LOG(kWarn, kLog) << "no multicast discovery (" << listener.status().message() << ")";
    }
  }
  DJINN_LOG(kInfo, kLog) << "discovering lookups of " << (im->options.groups.empty() ? std::string("every group") : "groups " + [&] {
    std::string g;
    for (const auto& x : im->options.groups) g += (g.empty() ? "" : ",") + x;
    return g;
  }()) << " by" << (im->browser ? " avahi" : "") << (im->listener ? " multicast" : "") << " unicast ("
                         << locators.size() << " locators)";
  Impl* raw = im.get();
  im->thread = std::thread([raw] { raw->run(); });
  return std::unique_ptr<DiscoveryManager>(new DiscoveryManager(std::move(im)));
}

DiscoveryManager::DiscoveryManager(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
DiscoveryManager::~DiscoveryManager() { stop(); }

void DiscoveryManager::stop() {
  std::lock_guard stop_lock(impl_->stop_mu);
  if (impl_->stopped) return;
  impl_->stopped = true;
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->wake.notify_all();
  impl_->thread.join();
  // Their threads call into the map: stop them before it goes.
  impl_->browser.reset();
  impl_->listener.reset();
  std::vector<std::shared_ptr<rpc::Client>> clients;
  {
    std::lock_guard lock(impl_->mu);
    for (auto& [ep, c] : impl_->candidates) {
      if (c.client) clients.push_back(std::move(c.client));
    }
    for (auto& c : impl_->retired) clients.push_back(std::move(c));
    impl_->retired.clear();
  }
  clients.clear();
}

std::vector<DiscoveredLookup> DiscoveryManager::lookups() const {
  std::lock_guard lock(impl_->mu);
  std::vector<DiscoveredLookup> out;
  for (const auto& [ep, c] : impl_->candidates) {
    if (c.state == Impl::State::kDiscovered) out.push_back(c.info);
  }
  return out;
}

bool DiscoveryManager::wait_for(size_t count, std::chrono::milliseconds timeout) const {
  std::unique_lock lock(impl_->mu);
  return impl_->changed.wait_for(lock, timeout, [&] {
    size_t n = 0;
    for (const auto& [ep, c] : impl_->candidates) n += c.state == Impl::State::kDiscovered;
    return n >= count;
  });
}

Status DiscoveryManager::add_locator(const std::string& locator) {
  Result<Locator> l = parse_locator(locator);
  if (!l.ok()) return l.status();
  std::lock_guard lock(impl_->mu);
  Impl::Candidate& c = impl_->candidate_locked(l->rpc_endpoint());
  c.unicast = true;
  if (c.state == Impl::State::kPending && !c.probing) c.next_probe = Clock::now();
  impl_->wake.notify_all();
  return Status::Ok();
}

void DiscoveryManager::remove_locator(const std::string& locator) {
  Result<Locator> l = parse_locator(locator);
  if (!l.ok()) return;
  std::lock_guard lock(impl_->mu);
  auto it = impl_->candidates.find(l->rpc_endpoint());
  if (it == impl_->candidates.end()) return;
  it->second.unicast = false;
  if (it->second.state == Impl::State::kDiscovered && !it->second.has_source(Clock::now())) {
    impl_->discard_locked(it->second, "its locator was removed");
  }
  impl_->wake.notify_all();
}

void DiscoveryManager::rediscover() {
  if (impl_->listener) impl_->listener->request();
}

DiscoveryStats DiscoveryManager::stats() const {
  std::lock_guard lock(impl_->mu);
  DiscoveryStats s = impl_->stats;
  s.avahi_running = impl_->browser && impl_->browser->daemon_running();
  s.multicast_running = impl_->listener != nullptr;
  return s;
}

}  // namespace djinn::discovery
