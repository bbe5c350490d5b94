// LookupCache (DESIGN §3, §5): a live local copy of the items that match one ServiceTemplate across
// a set of lookup services, as Jini's ServiceDiscoveryManager LookupCache or a Consul watch. Each
// registrar feeds it a notify event stream and answers an RPC snapshot whenever the stream cannot
// be trusted (a gap, a restart, a lost notify lease); queries are answered from memory.
//
//   LookupCacheOptions o;
//   o.tmpl.interface_types = {"demo.Printer"};
//   o.registrars = {"tcp://10.0.0.5:7100"};
//   o.on_added = [](const ServiceItem& item) { ... };
//   auto cache = LookupCache::start(std::move(o));
//   (*cache)->wait_ready(std::chrono::seconds(2));
//   std::optional<ServiceItem> printer = (*cache)->lookup();  // no network round trip
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "djinn/core/events.h"
#include "djinn/core/model.h"
#include "djinn/core/rpc.h"
#include "djinn/core/status.h"

namespace djinn::lookup {

struct LookupCacheOptions {
  // What the cache holds: every item matching it at any of the registrars.
  ServiceTemplate tmpl;
  // RPC endpoints of the lookup services to watch ("tcp://host:port"); more can be added and
  // removed while the cache runs (add_registrar / remove_registrar).
  std::vector<std::string> registrars;
  // The notify registration at each registrar is leased this long (ms, or lease::kDurationAny)
  // and renewed by the cache until it stops.
  int64_t notify_lease_ms = 30'000;
  // Holder named in the notify leases (the registrar's lease queries show it).
  std::string holder = "lookup-cache";
  // CURVE for the RPC, lease and event sockets of every registrar (a registrar added with its own
  // server key uses that key with this client key pair).
  std::optional<rpc::CurveClient> curve;
  // Each RPC (notify, snapshot, audit, cancel) waits at most this long.
  std::chrono::milliseconds call_timeout{2000};
  // How often each registrar is asked, with one cheap call (no items), whether its stream and the
  // cache still agree: it catches what no event can show (a registrar that restarted and lost
  // items while no event was published, events lost at the tail of a burst).
  std::chrono::milliseconds audit_interval{5000};
  // Matches held from each registrar, 1 to 100,000 (kMaxMatches): a snapshot brings at most this
  // many, and an event that would add one more is refused as bad input, so a registrar that
  // reports ever new items cannot grow the cache without bound. A registrar with more matches
  // than this is logged once per snapshot: narrow the template.
  size_t max_items = 100'000;
  // Back-off between failed attempts to register notify or take a snapshot, doubling.
  std::chrono::milliseconds retry_backoff_min{50};
  std::chrono::milliseconds retry_backoff_max{2000};

  // Listeners. They run on the cache's one listener thread, in the order the changes were made to
  // the cache, never under the cache's lock, so they may call back into the cache (whose state may
  // already be ahead of the change being delivered). They must not destroy the cache.
  //   on_added:   an item is in the cache that was not (first registrar to report it).
  //   on_changed: the cache's copy of an item changed in something other than its lease (see
  //               LookupCache below for which copy wins).
  //   on_removed: no registrar has the item any more (it is given as the cache last held it).
  std::function<void(const ServiceItem& item)> on_added;
  std::function<void(const ServiceItem& before, const ServiceItem& after)> on_changed;
  std::function<void(const ServiceItem& item)> on_removed;

  // Testing knob, never set in production: called on a registrar's feed thread for every notify
  // event received; returning true drops the event as if the network had lost it, which forces
  // the cache's gap detection and re-sync. Unset: nothing is dropped.
  std::function<bool(const events::Event& event)> drop_events_for_test;
};

// One registrar as the cache sees it.
struct RegistrarState {
  std::string endpoint;
  bool synced = false;     // a snapshot is applied and the event stream since is complete
  bool reachable = false;  // its last RPC answered
  uint64_t notify_id = 0;  // current notify registration (0: none)
  uint64_t event_seq = 0;  // last notify event applied (or the snapshot's number)
  size_t items = 0;        // matching items it holds, as last known
};

struct LookupCacheStats {
  uint64_t events = 0;                // notify events applied
  uint64_t snapshots = 0;             // lookupMany snapshots applied (first syncs and re-syncs)
  uint64_t gaps = 0;                  // lost events detected (sequence, heartbeat or audit)
  uint64_t restarts = 0;              // registrar restarts detected
  uint64_t notify_registrations = 0;  // notify registrations made (first ones and replacements)
  uint64_t notify_lost = 0;           // notify leases that could not be renewed
  uint64_t bad_input = 0;             // undecodable or inconsistent events and answers
  uint64_t rpc_failures = 0;          // calls to registrars that failed
};

// The union over the registrars of their matching items, one entry per ServiceID. An item held
// by several registrars is added once and removed when the last of them drops it. Registrars may
// hold different copies of one service (a change reaches one before the other): the cache shows
// the copy received most recently, and when the registrar of the copy shown drops the item, the
// most recent copy of another registrar that still holds it. A copy that differs from the shown
// one only in its lease (every registrar grants its own) replaces it without on_changed; the
// item's `lease` is therefore that of the registrar whose copy is shown, with its expiration as
// last reported (renewals raise no event).
//
// A registrar that stops answering keeps its items in the cache (stale, but still answered from
// memory) until it comes back and re-syncs or remove_registrar drops it; registrars() tells
// which are reachable.
//
// Threads: per registrar, a feed thread (its RPCs and its event stream, which it polls itself) and
// a lease::RenewalManager for its notify lease (each registrar may have its own CURVE server key);
// one listener thread for the whole cache. All methods are thread-safe.
class LookupCache {
 public:
  // Checks the options and starts watching every registrar. Registrars that cannot be reached
  // yet are retried in the background (wait_ready tells when all have been synced).
  static Result<std::unique_ptr<LookupCache>> start(LookupCacheOptions options);
  // Stops (see stop()).
  ~LookupCache();
  LookupCache(const LookupCache&) = delete;
  LookupCache& operator=(const LookupCache&) = delete;

  // Queries, from memory. Items come in ServiceID order.
  std::vector<ServiceItem> items() const;
  // The first cached item (in ServiceID order) matching `filter`; an empty filter matches all.
  std::optional<ServiceItem> lookup(const ServiceTemplate& filter = {}) const;
  std::vector<ServiceItem> lookup_many(const ServiceTemplate& filter, size_t max_matches) const;
  std::optional<ServiceItem> find(const ServiceId& id) const;
  size_t size() const;

  // True once every registrar currently watched has been synced at least once (at once when it
  // watches none); wait_ready waits up to `timeout` for it. Listeners for what the first syncs
  // found may still be running.
  bool ready() const;
  bool wait_ready(std::chrono::milliseconds timeout) const;

  // Starts watching one more lookup service (the discovery manager calls this); a registrar
  // already watched is left as it is. `server_public_key` overrides the server key of the
  // options' CURVE for this one.
  Status add_registrar(const std::string& rpc_endpoint, std::optional<std::string> server_public_key = std::nullopt);
  // Stops watching it: its notify registration is cancelled (best effort) and its items leave
  // the cache unless another registrar holds them (on_removed, or on_changed when the copy shown
  // was its). Unknown endpoints are ignored.
  void remove_registrar(const std::string& rpc_endpoint);
  std::vector<RegistrarState> registrars() const;

  LookupCacheStats stats() const;

  // Stops every feed, cancels the notify registrations (best effort, each within call_timeout)
  // and stops the listener thread; listener calls not yet made are dropped. The cache stays
  // readable (its last view) and is stopped for good. Idempotent.
  void stop();

 private:
  struct Impl;
  explicit LookupCache(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace djinn::lookup
