// LookupCache: one feed per registrar keeps that registrar's matching items (its "copies") from a
// snapshot plus the notify events numbered after it; the cache's view is their union by
// ServiceID. Every change to the view queues a listener call, made in order on the listener
// thread without the lock.
//
// A feed trusts its copies only while it can prove the event stream since its snapshot is
// complete. It re-syncs (a new lookupMany snapshot with its notify id, reconciled against its
// copies) when:
//   - an event's number is not the next one, or a heartbeat announces a number it never applied
//     (events lost: ZeroMQ dropped them, or the testing knob did);
//   - an event cannot be decoded or contradicts the template (the change it carried is unknown);
//   - its periodic audit (lookupMany with no items) finds the registrar's count differing at the
//     same event number, or the feed still below a number the registrar had reached at the
//     previous audit.
// It registers notify again, then re-syncs, when the registration may be gone:
//   - the renewal manager could not renew the notify lease;
//   - the publisher's incarnation changed (a Gap with restarted = true), or the audit finds the
//     registrar's event number below the feed's (both mean the registrar restarted).
#include "djinn/lookup/lookup_cache.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <utility>

#include "djinn/core/log.h"
#include "djinn/lease/client.h"
#include "djinn/lookup/client.h"
#include "djinn/lookup/service.h"

namespace djinn::lookup {
namespace {

using Clock = std::chrono::steady_clock;

// How long a feed waits for events before it looks at its flags and its audit clock again; also
// bounds how long stopping a feed takes when it is idle.
constexpr auto kPollInterval = std::chrono::milliseconds(50);
// The first audit after a new subscription, and the one after an audit that first finds the
// registrar's event number ahead of the feed's, come this soon rather than after the whole audit
// interval: a
// subscription takes a moment to reach the publisher (ZeroMQ's slow joiner), and events published
// meanwhile are lost without a trace; otherwise only in-flight events are that late.
constexpr auto kRecheck = std::chrono::milliseconds(200);
// A cancel at shutdown is best effort: a registrar that does not answer soon lets the lease lapse.
constexpr auto kMaxCancelWait = std::chrono::milliseconds(1000);

// The same service as far as a user can tell: everything but the lease, which each registrar
// grants on its own.
bool same_service(const ServiceItem& a, const ServiceItem& b) {
  return a.service_id == b.service_id && a.interface_types == b.interface_types && a.attributes == b.attributes &&
         a.endpoints == b.endpoints && a.public_key == b.public_key;
}

// The same copy from one registrar: only the lease's expiration moved (renewals raise no event).
bool same_copy(const ServiceItem& a, const ServiceItem& b) { return same_service(a, b) && a.lease.id == b.lease.id; }

// "scheme://address", with a scheme ZeroMQ connects over and no blanks.
bool valid_endpoint(const std::string& endpoint) {
  size_t sep = endpoint.find("://");
  if (sep == std::string::npos || sep + 3 >= endpoint.size() || endpoint.size() > kMaxEndpointBytes) return false;
  std::string_view scheme(endpoint.data(), sep);
  if (scheme != "tcp" && scheme != "ipc" && scheme != "inproc") return false;
  return endpoint.find_first_of(" \t\r\n") == std::string::npos;
}

// A registrar bound to a wildcard address reports its endpoints as bound ("tcp://0.0.0.0:7101"),
// which nobody can connect to: keep the port, and use the host the cache reached the registrar at.
std::string connectable(const std::string& reported, const std::string& via) {
  constexpr std::string_view kTcp = "tcp://";
  if (!reported.starts_with(kTcp) || !via.starts_with(kTcp)) return reported;
  auto split = [&](std::string_view ep) {
    ep.remove_prefix(kTcp.size());
    size_t colon = ep.rfind(':');
    if (colon == std::string_view::npos) return std::pair(ep, std::string_view());
    return std::pair(ep.substr(0, colon), ep.substr(colon));
  };
  auto [host, port] = split(reported);
  if (host != "0.0.0.0" && host != "*" && host != "[::]" && host != "::") return reported;
  auto [via_host, via_port] = split(via);
  return std::string(kTcp) + std::string(via_host) + std::string(port);
}

}  // namespace

struct LookupCache::Impl : std::enable_shared_from_this<LookupCache::Impl> {
  struct Feed;

  // One registrar's version of an item; `stamp` orders copies by when they were received.
  struct Copy {
    ServiceItem item;
    uint64_t stamp = 0;
  };
  // The item the cache shows, and the feed whose copy it is.
  struct Shown {
    ServiceItem item;
    const Feed* from = nullptr;
  };
  enum class ChangeKind { kAdded, kChanged, kRemoved };
  struct Change {
    ChangeKind kind;
    ServiceItem before;  // kChanged, kRemoved
    ServiceItem after;   // kAdded, kChanged
  };

  explicit Impl(LookupCacheOptions o) : options(std::move(o)) {}

  const LookupCacheOptions options;

  // Guards everything down to `listener_stop`, and the `guarded` part of every Feed.
  mutable std::mutex mu;
  mutable std::condition_variable ready_cv;  // a feed completed a sync, or feeds changed
  std::map<ServiceId, Shown> view;
  std::map<std::string, std::unique_ptr<Feed>> feeds;  // by RPC endpoint
  uint64_t next_stamp = 0;
  std::deque<Change> changes;  // listener calls not made yet
  std::condition_variable changes_cv;
  LookupCacheStats stats;
  bool listener_stop = false;

  // Serialises add_registrar, remove_registrar and stop (the lifecycles of feed threads).
  std::mutex lifecycle_mu;
  bool stopped = false;  // guarded by lifecycle_mu

  std::thread listener;
  std::atomic<std::thread::id> listener_id{};

  void start_listener();
  void listener_loop();
  void deliver(const Change& change);

  Status add(const std::string& endpoint, std::optional<std::string> server_key);
  void remove(const std::string& endpoint);
  void stop();

  bool ready_locked() const;
  // View maintenance (mu held). Each queues the listener calls it implies.
  void put_copy_locked(Feed& feed, ServiceItem item);
  void drop_copy_locked(Feed& feed, const ServiceId& id);
  void reshow_locked(const ServiceId& id, const Feed* dropped);
  void apply_snapshot_locked(Feed& feed, std::vector<ServiceItem>& items);
};

// One registrar: its RPC client, notify registration, event subscriber and copies.
struct LookupCache::Impl::Feed {
  Feed(Impl& c, std::string ep, std::optional<rpc::CurveClient> cv)
      : cache(c), endpoint(std::move(ep)), curve(std::move(cv)) {
    rpc::ClientOptions client_options;
    client_options.endpoint = endpoint;
    client_options.curve = curve;
    client_options.default_timeout = cache.options.call_timeout;
    client_options.reconnect_interval_max = std::chrono::milliseconds(250);
    client = std::make_unique<RegistrarClient>(client_options);
    lease::RenewalManagerOptions renewal_options;
    renewal_options.curve = curve;
    renewal_options.call_timeout = cache.options.call_timeout;
    renewals = std::make_unique<lease::RenewalManager>(renewal_options);
    renewals->on_failure([this](const lease::HeldLease& held, const Status& why) { on_renewal_failure(held, why); });
    state.endpoint = endpoint;
  }
  ~Feed() {
    if (thread.joinable()) thread.join();
  }

  Impl& cache;
  const std::string endpoint;
  const std::optional<rpc::CurveClient> curve;

  // ---- guarded by cache.mu ----
  std::unordered_map<ServiceId, Copy> copies;
  // Items of the last snapshot that did not match the template (a registrar's bug): kept out of
  // the view, but counted, so the audit's count agrees.
  std::set<ServiceId> rejected;
  bool full_logged = false;  // an event past max_items was logged since the last snapshot
  bool ever_synced = false;
  RegistrarState state;

  // Set under cache.mu (so no apply runs after it is seen), read anywhere.
  std::atomic<bool> stopping{false};
  // Set by the renewal thread when the current notify lease could not be renewed.
  std::atomic<bool> notify_lost{false};
  std::atomic<uint64_t> live_notify_id{0};
  std::mutex wake_mu;  // pairs with wake_cv, for the back-off wait
  std::condition_variable wake_cv;

  // ---- owned by the feed thread ----
  std::unique_ptr<RegistrarClient> client;
  std::unique_ptr<lease::RenewalManager> renewals;
  std::unique_ptr<events::Subscriber> subscriber;
  std::optional<NotifyHandle> notify;  // endpoints already made connectable
  uint64_t last_seq = 0;               // the last event number reflected in `copies`
  bool need_register = true;
  bool need_snapshot = true;
  std::optional<events::Gap> pending_gap;  // reported, not yet known to be an event's or a heartbeat's
  std::optional<uint64_t> behind;          // the registrar's number at the last audit, when ahead of ours
  bool failing = false;                    // the last RPC failed (logged once per run of failures)
  std::chrono::milliseconds backoff{0};
  Clock::time_point retry_at{};
  Clock::time_point next_audit{};

  std::thread thread;  // last: started once the feed is in the cache's map

  void wake() {
    { std::lock_guard lock(wake_mu); }
    wake_cv.notify_all();
  }

  void run() {
    while (!stopping) {
      try {
        step();
      } catch (const std::exception& e) {
        // Sockets throw on endpoints ZeroMQ cannot use; nothing here may end the thread.
        failed(internal_error(std::string("socket error (is the endpoint right?): ") + e.what()));
        need_register = true;
      }
    }
    shutdown();
  }

  void step() {
    if (notify_lost.exchange(false)) {
      need_register = true;
      mark_unsynced();
    }
    if (need_register || need_snapshot) {
      if (Clock::now() < retry_at) {
        std::unique_lock lock(wake_mu);
        wake_cv.wait_until(lock, retry_at, [&] { return stopping.load() || notify_lost.load(); });
        return;
      }
      bool subscribing = need_register;
      if (Status st = sync(); !st.ok()) {
        if (stopping) return;  // cut short by stop(): no failure of the registrar's
        failed(st);
        return;
      }
      succeeded();
      next_audit = Clock::now() + (subscribing ? std::min<std::chrono::milliseconds>(kRecheck, cache.options.audit_interval)
                                               : cache.options.audit_interval);
      return;
    }
    subscriber->poll(kPollInterval);
    settle_gap();
    if (need_register || need_snapshot) return;
    if (Clock::now() >= next_audit) {
      bool was_behind = behind.has_value();
      audit();
      bool soon = behind && !was_behind;
      next_audit = Clock::now() + (soon ? std::min<std::chrono::milliseconds>(kRecheck, cache.options.audit_interval)
                                        : cache.options.audit_interval);
    }
  }

  rpc::CallOptions call() const {
    rpc::CallOptions o;
    o.timeout = cache.options.call_timeout;
    return o;
  }

  // DESIGN §3's re-sync: (register notify and subscribe, when needed), then snapshot, then apply
  // only events numbered after the snapshot.
  Status sync() {
    if (need_register) {
      end_notify();
      Result<NotifyHandle> h = client->notify(cache.options.tmpl, kAllTransitions, cache.options.notify_lease_ms,
                                              cache.options.holder, call());
      if (!h.ok()) return Status(h.status().code(), "notify: " + h.status().message());
      NotifyHandle handle = std::move(*h);
      bool kind_ok = handle.event_kind == notify_event_kind(handle.id) ||
                     handle.event_kind == id_notify_event_kind(handle.id);  // a registrar of an earlier release
      if (handle.id == 0 || !kind_ok || handle.events_endpoint.empty()) {
        bad_input("notify answer with id " + std::to_string(handle.id) + ", event kind '" + handle.event_kind +
                  "', events endpoint '" + handle.events_endpoint + "': expected a nonzero id, kind " +
                  notify_event_kind(handle.id) + " and an endpoint");
        if (handle.id != 0) (void)client->cancel(handle.id, cancel_call());
        return internal_error("the registrar's notify answer was inconsistent");
      }
      handle.events_endpoint = connectable(handle.events_endpoint, endpoint);
      handle.landlord = connectable(handle.landlord.empty() ? endpoint : handle.landlord, endpoint);
      auto sub = std::make_unique<events::Subscriber>(events::SubscriberOptions{.endpoint = handle.events_endpoint,
                                                                                .curve = curve});
      sub->subscribe(handle.event_kind);
      sub->on_event([this](const events::Event& ev) { on_event(ev); });
      sub->on_gap([this](const events::Gap& gap) { on_gap(gap); });
      try {
        sub->poll(std::chrono::milliseconds(0));  // connects now, so the snapshot is less likely to race it
      } catch (const std::exception& e) {
        (void)client->cancel(handle.id, cancel_call());
        return invalid_argument("cannot subscribe to " + handle.events_endpoint + ": " + e.what());
      }
      lease::HeldLease held = handle.held_lease();
      held.landlord = handle.landlord;
      if (Status tracked = renewals->add(held, cache.options.notify_lease_ms); !tracked.ok()) {
        (void)client->cancel(handle.id, cancel_call());
        return Status(tracked.code(), "renewing the notify lease: " + tracked.message());
      }
      live_notify_id = handle.id;
      notify = std::move(handle);
      subscriber = std::move(sub);
      need_register = false;
      need_snapshot = true;
      last_seq = 0;
      {
        std::lock_guard lock(cache.mu);
        cache.stats.notify_registrations++;
        state.notify_id = notify->id;
      }
      DJINN_LOG(kDebug, "lookup-cache") << endpoint << ": notify registration " << notify->id << ", events from "
                                        << notify->events_endpoint;
    }
    // Page after page: the events after the first page's number are applied over the whole, so an
    // item that changed between pages ends as its last event left it.
    Result<LookupMany> snap =
        client->lookup_all(cache.options.tmpl, cache.options.max_items, notify->id, call(), [this] { return stopping.load(); });
    if (!snap.ok()) return Status(snap.status().code(), "snapshot: " + snap.status().message());
    if (snap->total > snap->items.size()) {
      DJINN_LOG(kWarn, "lookup-cache") << endpoint << ": " << snap->total << " items match, the cache holds the first "
                                       << snap->items.size() << "; narrow the template";
    }
    need_snapshot = false;
    last_seq = snap->event_seq;
    pending_gap.reset();
    behind.reset();
    std::lock_guard lock(cache.mu);
    if (stopping) return Status::Ok();
    cache.apply_snapshot_locked(*this, snap->items);
    full_logged = false;
    cache.stats.snapshots++;
    ever_synced = true;
    state.synced = true;
    state.reachable = true;
    state.event_seq = last_seq;
    state.items = copies.size();
    cache.changes_cv.notify_one();
    cache.ready_cv.notify_all();
    return Status::Ok();
  }

  // ---- the event stream (called from subscriber->poll, on this thread) ----

  void on_gap(const events::Gap& gap) {
    settle_gap();
    if (gap.restarted) {
      restarted("its event publisher restarted (new incarnation)");
      return;
    }
    // The subscriber reports a gap before the event that revealed it, or for a heartbeat (which
    // is not delivered): which one is known when the next event comes, or the poll ends.
    pending_gap = gap;
  }

  // A pending gap not followed by its event came from a heartbeat: it announces the publisher's
  // last number, so anything above ours was lost.
  void settle_gap() {
    if (!pending_gap) return;
    uint64_t announced = pending_gap->received;
    pending_gap.reset();
    if (need_register || need_snapshot) return;
    if (announced > last_seq) {
      lost("heartbeat announces event " + std::to_string(announced) + ", last applied " + std::to_string(last_seq));
    }
  }

  void on_event(const events::Event& ev) {
    if (pending_gap) {
      if (pending_gap->received == ev.seq) {
        pending_gap.reset();  // this event's own gap: the numbers below decide
      } else {
        settle_gap();
      }
    }
    if (cache.options.drop_events_for_test && cache.options.drop_events_for_test(ev)) return;
    if (need_register || need_snapshot || stopping) return;  // the coming snapshot covers it
    if (ev.seq <= last_seq) return;                           // already in the snapshot
    if (ev.seq != last_seq + 1) {
      lost("event " + std::to_string(ev.seq) + " after " + std::to_string(last_seq));
      return;
    }
    Result<NotifyEvent> decoded = decode_notify_event(ev);
    if (!decoded.ok()) {
      bad_input("event " + std::to_string(ev.seq) + ": " + decoded.status().message());
      need_snapshot = true;
      mark_unsynced();
      return;
    }
    NotifyEvent& n = *decoded;
    // The kind names the registration; a registrar of an earlier release named it in the payload too.
    bool ours = ev.kind == notify->event_kind && (n.notify_id == 0 || n.notify_id == notify->id);
    if (!ours || ev.key != n.item.service_id.to_string()) {
      bad_input("event " + std::to_string(ev.seq) + " of kind " + ev.kind + " names notify " +
                std::to_string(n.notify_id) + " and key '" + ev.key + "': expected kind " + notify->event_kind +
                " and the item's ServiceID");
      need_snapshot = true;
      mark_unsynced();
      return;
    }
    if (n.transition != kMatchToNoMatch && !matches(cache.options.tmpl, n.item)) {
      bad_input("event " + std::to_string(ev.seq) + " reports " + std::string(transition_name(n.transition)) +
                " for " + n.item.service_id.to_string() + ", which does not match the template");
      need_snapshot = true;
      mark_unsynced();
      return;
    }
    last_seq = ev.seq;
    std::unique_lock lock(cache.mu);
    if (stopping) return;
    if (n.transition != kMatchToNoMatch && copies.size() + rejected.size() >= cache.options.max_items &&
        !copies.count(n.item.service_id) && !rejected.count(n.item.service_id)) {
      // A registrar holds no more matches than a snapshot brings (max_items): one that reports
      // ever new items between audits would grow the cache without bound. Counted each time,
      // logged once a snapshot.
      if (full_logged) {
        cache.stats.bad_input++;
        return;
      }
      full_logged = true;
      lock.unlock();
      bad_input("event " + std::to_string(ev.seq) + " adds " + n.item.service_id.to_string() + " past the " +
                std::to_string(cache.options.max_items) + " matches the cache holds of a registrar; narrow the " +
                "template (logged once until the next snapshot)");
      return;
    }
    if (n.transition == kMatchToNoMatch) {
      rejected.erase(n.item.service_id);
      cache.drop_copy_locked(*this, n.item.service_id);
    } else {
      rejected.erase(n.item.service_id);
      cache.put_copy_locked(*this, std::move(n.item));
    }
    cache.stats.events++;
    state.event_seq = last_seq;
    state.items = copies.size();
    cache.changes_cv.notify_one();
  }

  // ---- the audit: one lookupMany with no items ----

  void audit() {
    Result<LookupMany> r = client->lookup_many(cache.options.tmpl, 0, notify->id, call());
    if (!r.ok()) {
      failed(Status(r.status().code(), "audit: " + r.status().message()));
      return;
    }
    succeeded();
    if (r->event_seq < last_seq) {
      // Numbers only grow within one publisher's life.
      restarted("its event number went back from " + std::to_string(last_seq) + " to " + std::to_string(r->event_seq));
      return;
    }
    if (r->event_seq == last_seq) {
      behind.reset();
      size_t held;
      {
        std::lock_guard lock(cache.mu);
        held = copies.size() + rejected.size();
      }
      // Same event number, so the same set: a different count means changes no event reported
      // (items that lapsed while a registrar was down, or a stream that restarted unseen). A
      // registrar with more matches than the cache holds differs for good once the cache is full.
      bool full = r->total > cache.options.max_items && held >= cache.options.max_items;
      if (r->total != held && !full) {
        lost("the registrar holds " + std::to_string(r->total) + " matches at event " + std::to_string(last_seq) +
             ", the cache " + std::to_string(held));
      }
      return;
    }
    // Ahead of us: events in flight, unless they were already due at the previous audit.
    if (behind && last_seq < *behind) {
      lost("events up to " + std::to_string(*behind) + " never arrived (last applied " + std::to_string(last_seq) + ")");
      return;
    }
    behind = r->event_seq;
  }

  // ---- outcomes ----

  void lost(const std::string& why) {
    DJINN_LOG(kInfo, "lookup-cache") << endpoint << ": events lost (" << why << "); re-syncing";
    need_snapshot = true;
    behind.reset();
    std::lock_guard lock(cache.mu);
    cache.stats.gaps++;
    state.synced = false;
  }

  void restarted(const std::string& why) {
    DJINN_LOG(kInfo, "lookup-cache") << endpoint << ": registrar restarted (" << why
                                     << "); registering notify again and re-syncing";
    need_register = true;
    behind.reset();
    std::lock_guard lock(cache.mu);
    cache.stats.restarts++;
    state.synced = false;
  }

  void bad_input(const std::string& what) {
    DJINN_LOG(kWarn, "lookup-cache") << endpoint << ": bad input: " << what;
    std::lock_guard lock(cache.mu);
    cache.stats.bad_input++;
  }

  void mark_unsynced() {
    std::lock_guard lock(cache.mu);
    state.synced = false;
  }

  void failed(const Status& why) {
    if (!failing) {
      DJINN_LOG(kWarn, "lookup-cache") << endpoint << ": " << why.to_string() << " (retrying; the cache keeps its items)";
    } else {
      DJINN_LOG(kDebug, "lookup-cache") << endpoint << ": " << why.to_string();
    }
    failing = true;
    backoff = backoff.count() == 0 ? cache.options.retry_backoff_min
                                   : std::min(backoff * 2, cache.options.retry_backoff_max);
    retry_at = Clock::now() + backoff;
    std::lock_guard lock(cache.mu);
    cache.stats.rpc_failures++;
    state.reachable = false;
  }

  void succeeded() {
    if (failing) DJINN_LOG(kInfo, "lookup-cache") << endpoint << ": answering again";
    failing = false;
    backoff = std::chrono::milliseconds(0);
    std::lock_guard lock(cache.mu);
    state.reachable = true;
  }

  void on_renewal_failure(const lease::HeldLease& held, const Status& why) {
    if (held.lease.id == 0 || held.lease.id != live_notify_id.load()) return;  // an older registration
    DJINN_LOG(kInfo, "lookup-cache") << endpoint << ": notify lease " << held.lease.id
                                     << " lost: " << why.to_string() << "; registering again";
    {
      std::lock_guard lock(cache.mu);
      cache.stats.notify_lost++;
    }
    notify_lost = true;
    wake();
  }

  rpc::CallOptions cancel_call() const {
    rpc::CallOptions o;
    o.timeout = std::min<std::chrono::milliseconds>(cache.options.call_timeout, kMaxCancelWait);
    return o;
  }

  // Drops the current notify registration: no more renewals, events or subscriber, and a cancel
  // (best effort; a registrar that lost it answers NOT_FOUND, one that is down lets it lapse).
  void end_notify() {
    subscriber.reset();
    pending_gap.reset();
    if (!notify) return;
    live_notify_id = 0;
    renewals->remove(notify->id, notify->landlord);
    Status st = client->cancel(notify->id, cancel_call());
    if (!st.ok()) {
      DJINN_LOG(kDebug, "lookup-cache") << endpoint << ": cancelling notify " << notify->id << ": " << st.to_string();
    }
    notify.reset();
    std::lock_guard lock(cache.mu);
    state.notify_id = 0;
  }

  void shutdown() {
    renewals->stop();
    try {
      end_notify();
    } catch (const std::exception& e) {
      DJINN_LOG(kDebug, "lookup-cache") << endpoint << ": while stopping: " << e.what();
    }
  }
};

// ---- the view (mu held) ----

void LookupCache::Impl::put_copy_locked(Feed& feed, ServiceItem item) {
  const ServiceId id = item.service_id;
  auto [copy, fresh] = feed.copies.try_emplace(id);
  if (!fresh && same_copy(copy->second.item, item)) {
    // A renewal moved the expiration; not a change, nor a newer copy.
    copy->second.item.lease.expiration_ms = item.lease.expiration_ms;
    auto shown = view.find(id);
    if (shown != view.end() && shown->second.from == &feed) shown->second.item.lease = item.lease;
    return;
  }
  copy->second = Copy{item, ++next_stamp};
  auto shown = view.find(id);
  if (shown == view.end()) {
    view.emplace(id, Shown{item, &feed});
    changes.push_back(Change{ChangeKind::kAdded, {}, std::move(item)});
    return;
  }
  // The most recent copy wins.
  ServiceItem before = std::move(shown->second.item);
  shown->second = Shown{item, &feed};
  if (!same_service(before, item)) changes.push_back(Change{ChangeKind::kChanged, std::move(before), std::move(item)});
}

void LookupCache::Impl::drop_copy_locked(Feed& feed, const ServiceId& id) {
  if (feed.copies.erase(id) == 0) return;
  reshow_locked(id, &feed);
}

// The copy shown came from `dropped`, which no longer has it: show the most recent copy of
// another registrar, or remove the item when none has it.
void LookupCache::Impl::reshow_locked(const ServiceId& id, const Feed* dropped) {
  auto shown = view.find(id);
  if (shown == view.end() || shown->second.from != dropped) return;
  const Copy* best = nullptr;
  const Feed* best_feed = nullptr;
  for (const auto& [endpoint, f] : feeds) {
    if (f->stopping) continue;
    auto c = f->copies.find(id);
    if (c != f->copies.end() && (!best || c->second.stamp > best->stamp)) {
      best = &c->second;
      best_feed = f.get();
    }
  }
  if (!best) {
    changes.push_back(Change{ChangeKind::kRemoved, std::move(shown->second.item), {}});
    view.erase(shown);
    return;
  }
  ServiceItem before = std::move(shown->second.item);
  shown->second = Shown{best->item, best_feed};
  if (!same_service(before, best->item)) changes.push_back(Change{ChangeKind::kChanged, std::move(before), best->item});
}

// Reconciles the feed's copies with a snapshot: what it no longer has is dropped, what is new or
// different is put, so the listeners see exactly the net difference.
void LookupCache::Impl::apply_snapshot_locked(Feed& feed, std::vector<ServiceItem>& items) {
  std::map<ServiceId, ServiceItem*> fresh;
  feed.rejected.clear();
  for (ServiceItem& item : items) {
    if (!matches(options.tmpl, item)) {
      feed.rejected.insert(item.service_id);
      continue;
    }
    fresh[item.service_id] = &item;
  }
  if (!feed.rejected.empty()) {
    stats.bad_input++;
    DJINN_LOG(kWarn, "lookup-cache") << feed.endpoint << ": bad input: the snapshot holds " << feed.rejected.size()
                                     << " items that do not match the template; left out";
  }
  std::vector<ServiceId> gone;
  for (const auto& [id, copy] : feed.copies) {
    if (!fresh.count(id)) gone.push_back(id);
  }
  std::sort(gone.begin(), gone.end());
  for (const ServiceId& id : gone) drop_copy_locked(feed, id);
  for (auto& [id, item] : fresh) put_copy_locked(feed, std::move(*item));
}

bool LookupCache::Impl::ready_locked() const {
  return std::all_of(feeds.begin(), feeds.end(), [](const auto& f) { return f.second->stopping || f.second->ever_synced; });
}

// ---- listeners ----

void LookupCache::Impl::start_listener() {
  // The thread holds the cache alive, so stop() may even run from a listener.
  listener = std::thread([self = shared_from_this()] { self->listener_loop(); });
}

void LookupCache::Impl::listener_loop() {
  listener_id = std::this_thread::get_id();
  std::unique_lock lock(mu);
  for (;;) {
    changes_cv.wait(lock, [&] { return listener_stop || !changes.empty(); });
    if (listener_stop) return;
    Change change = std::move(changes.front());
    changes.pop_front();
    lock.unlock();
    deliver(change);
    lock.lock();
  }
}

void LookupCache::Impl::deliver(const Change& change) {
  try {
    switch (change.kind) {
      case ChangeKind::kAdded:
        if (options.on_added) options.on_added(change.after);
        break;
      case ChangeKind::kChanged:
        if (options.on_changed) options.on_changed(change.before, change.after);
        break;
      case ChangeKind::kRemoved:
        if (options.on_removed) options.on_removed(change.before);
        break;
    }
  } catch (const std::exception& e) {
    DJINN_LOG(kError, "lookup-cache") << "a listener threw (a bug in it): " << e.what();
  }
}

// ---- lifecycle ----

Status LookupCache::Impl::add(const std::string& endpoint, std::optional<std::string> server_key) {
  if (!valid_endpoint(endpoint)) {
    return invalid_argument("registrar endpoint '" + endpoint + "': expected tcp://host:port (or ipc://, inproc://)");
  }
  if (server_key && !security::is_z85_key(*server_key)) {
    return invalid_argument("server public key for " + endpoint + ": expected 40 Z85 characters");
  }
  if (server_key && !options.curve) {
    return invalid_argument("server public key for " + endpoint + " given, but the cache has no CURVE key pair");
  }
  std::lock_guard life(lifecycle_mu);
  if (stopped) return failed_precondition("the lookup cache is stopped");
  std::optional<rpc::CurveClient> curve = options.curve;
  if (curve && server_key) curve->server_public_key = *server_key;
  Feed* feed;
  {
    std::lock_guard lock(mu);
    if (feeds.count(endpoint)) return Status::Ok();
    auto owned = std::make_unique<Feed>(*this, endpoint, std::move(curve));
    feed = owned.get();
    feeds.emplace(endpoint, std::move(owned));
  }
  feed->thread = std::thread([feed] { feed->run(); });
  return Status::Ok();
}

void LookupCache::Impl::remove(const std::string& endpoint) {
  std::lock_guard life(lifecycle_mu);
  Feed* feed;
  {
    std::lock_guard lock(mu);
    auto it = feeds.find(endpoint);
    if (it == feeds.end()) return;
    feed = it->second.get();
    // From here the feed applies nothing; its items leave the view now, each falling back to
    // another registrar's copy where there is one.
    feed->stopping = true;
    std::vector<ServiceId> ids;
    for (const auto& [id, copy] : feed->copies) ids.push_back(id);
    std::sort(ids.begin(), ids.end());
    for (const ServiceId& id : ids) drop_copy_locked(*feed, id);
    changes_cv.notify_one();
    ready_cv.notify_all();
  }
  feed->wake();
  if (feed->thread.joinable()) feed->thread.join();
  std::unique_ptr<Feed> owned;
  {
    std::lock_guard lock(mu);
    auto it = feeds.find(endpoint);
    owned = std::move(it->second);
    feeds.erase(it);
  }
}

void LookupCache::Impl::stop() {
  std::vector<std::unique_ptr<Feed>> ending;
  {
    std::lock_guard life(lifecycle_mu);
    if (stopped) return;
    stopped = true;
    {
      std::lock_guard lock(mu);
      for (auto& [endpoint, f] : feeds) f->stopping = true;
    }
    // The feeds stop together, so their cancels run in parallel.
    for (auto& [endpoint, f] : feeds) f->wake();
    for (auto& [endpoint, f] : feeds) {
      if (f->thread.joinable()) f->thread.join();
    }
    std::lock_guard lock(mu);
    for (auto& [id, shown] : view) shown.from = nullptr;
    for (auto& [endpoint, f] : feeds) ending.push_back(std::move(f));
    feeds.clear();
    listener_stop = true;
    ready_cv.notify_all();
  }
  ending.clear();
  changes_cv.notify_all();
  if (listener.joinable()) {
    if (std::this_thread::get_id() == listener_id.load()) {
      listener.detach();  // stopped from a listener: the loop ends when it returns
    } else {
      listener.join();
    }
  }
}

// ---- LookupCache ----

LookupCache::LookupCache(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
LookupCache::~LookupCache() { impl_->stop(); }

Result<std::unique_ptr<LookupCache>> LookupCache::start(LookupCacheOptions options) {
  if (Status st = validate(options.tmpl); !st.ok()) {
    return Status(st.code(), "lookup cache template: " + st.message());
  }
  if (options.notify_lease_ms != lease::kDurationAny && options.notify_lease_ms <= 0) {
    return invalid_argument("notify lease of " + std::to_string(options.notify_lease_ms) +
                            " ms: must be > 0 or ANY (-1)");
  }
  if (options.call_timeout.count() <= 0 || options.audit_interval.count() <= 0) {
    return invalid_argument("call_timeout and audit_interval must be > 0 ms");
  }
  if (options.retry_backoff_min.count() <= 0 || options.retry_backoff_max < options.retry_backoff_min) {
    return invalid_argument("retry back-off: need 0 < retry_backoff_min <= retry_backoff_max");
  }
  if (options.max_items == 0 || options.max_items > kMaxMatches) {
    return invalid_argument("max_items of " + std::to_string(options.max_items) + ": must be 1 to " +
                            std::to_string(kMaxMatches));
  }
  if (options.holder.size() > 256) return invalid_argument("holder of " + std::to_string(options.holder.size()) + " bytes: at most 256");
  for (const std::string& endpoint : options.registrars) {
    if (!valid_endpoint(endpoint)) {
      return invalid_argument("registrar endpoint '" + endpoint + "': expected tcp://host:port (or ipc://, inproc://)");
    }
  }
  auto impl = std::make_shared<Impl>(std::move(options));
  impl->start_listener();
  std::unique_ptr<LookupCache> cache(new LookupCache(impl));
  for (const std::string& endpoint : impl->options.registrars) {
    if (Status st = impl->add(endpoint, std::nullopt); !st.ok()) return st;
  }
  return cache;
}

std::vector<ServiceItem> LookupCache::items() const {
  std::lock_guard lock(impl_->mu);
  std::vector<ServiceItem> out;
  out.reserve(impl_->view.size());
  for (const auto& [id, shown] : impl_->view) out.push_back(shown.item);
  return out;
}

std::optional<ServiceItem> LookupCache::lookup(const ServiceTemplate& filter) const {
  std::lock_guard lock(impl_->mu);
  if (filter.service_id) {
    auto it = impl_->view.find(*filter.service_id);
    if (it != impl_->view.end() && matches(filter, it->second.item)) return it->second.item;
    return std::nullopt;
  }
  for (const auto& [id, shown] : impl_->view) {
    if (matches(filter, shown.item)) return shown.item;
  }
  return std::nullopt;
}

std::vector<ServiceItem> LookupCache::lookup_many(const ServiceTemplate& filter, size_t max_matches) const {
  std::lock_guard lock(impl_->mu);
  std::vector<ServiceItem> out;
  for (const auto& [id, shown] : impl_->view) {
    if (out.size() >= max_matches) break;
    if (matches(filter, shown.item)) out.push_back(shown.item);
  }
  return out;
}

std::optional<ServiceItem> LookupCache::find(const ServiceId& id) const {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->view.find(id);
  if (it == impl_->view.end()) return std::nullopt;
  return it->second.item;
}

size_t LookupCache::size() const {
  std::lock_guard lock(impl_->mu);
  return impl_->view.size();
}

bool LookupCache::ready() const {
  std::lock_guard lock(impl_->mu);
  return impl_->ready_locked();
}

bool LookupCache::wait_ready(std::chrono::milliseconds timeout) const {
  std::unique_lock lock(impl_->mu);
  return impl_->ready_cv.wait_for(lock, timeout, [&] { return impl_->ready_locked(); });
}

Status LookupCache::add_registrar(const std::string& rpc_endpoint, std::optional<std::string> server_public_key) {
  return impl_->add(rpc_endpoint, std::move(server_public_key));
}

void LookupCache::remove_registrar(const std::string& rpc_endpoint) { impl_->remove(rpc_endpoint); }

std::vector<RegistrarState> LookupCache::registrars() const {
  std::lock_guard lock(impl_->mu);
  std::vector<RegistrarState> out;
  for (const auto& [endpoint, f] : impl_->feeds) {
    if (f->stopping) continue;
    out.push_back(f->state);
    out.back().items = f->copies.size();
  }
  return out;
}

LookupCacheStats LookupCache::stats() const {
  std::lock_guard lock(impl_->mu);
  return impl_->stats;
}

void LookupCache::stop() { impl_->stop(); }

}  // namespace djinn::lookup
