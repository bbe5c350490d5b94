// DiscoveryManager (DESIGN §5, Jini's LookupDiscoveryManager): finds the lookup services of some
// groups through Avahi DNS-SD, the multicast fallback and unicast locators at once, and tells its
// listener when one is discovered and when one is discarded.
//
//   DiscoveryOptions o;
//   o.groups = {"public"};
//   o.on_discovered = [&](const DiscoveredLookup& l) { cache->add_registrar(l.rpc_endpoint); };
//   o.on_discarded = [&](const DiscoveredLookup& l) { cache->remove_registrar(l.rpc_endpoint); };
//   auto discovery = DiscoveryManager::start(std::move(o));
//
// Whatever announces a lookup, it is discovered only once it answers lookup.self and serves one of
// the groups: the registrar's own item is the authority on its groups and ServiceID. A discovered
// lookup is probed every probe_interval; it is discarded when it has not answered for
// discard_after (announcements alone do not keep it), or at once when it withdrew its
// announcement (Avahi removal, a multicast goodbye) and then fails a probe. A discarded lookup is
// discovered again when it answers again while something still announces it or a locator names it.
//
// Degradation: without avahi-daemon, one warning and multicast plus unicast; without multicast on
// the host (no route to the group), one warning and Avahi plus unicast; with neither, unicast.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "djinn/core/model.h"
#include "djinn/core/rpc.h"
#include "djinn/core/status.h"
#include "djinn/discovery/multicast.h"
#include "djinn/discovery/wire.h"

namespace djinn::discovery {

struct DiscoveredLookup {
  ServiceId service_id;
  std::string rpc_endpoint;     // as this manager dials it: tcp://<announced address>:<port>
  std::string events_endpoint;  // empty: not announced
  std::vector<std::string> groups;
  std::string name;
  std::string via;  // "avahi", "multicast" or "unicast": how it was found this time
  ServiceItem item;  // the registrar's own item, as lookup.self gave it
};

struct DiscoveryOptions {
  std::vector<std::string> groups;  // wanted; empty: every group
  bool avahi = true;
  bool multicast = true;
  MulticastOptions multicast_options;
  std::vector<std::string> locators;  // djinn://host:port, always probed
  std::chrono::milliseconds probe_interval{1000};
  std::chrono::milliseconds probe_timeout{1000};
  std::chrono::milliseconds discard_after{5000};
  std::optional<rpc::CurveClient> curve;  // for lookup.self (server key: each lookup's own item)
  // Run on the manager's thread, in order, never under its lock; keep them short.
  std::function<void(const DiscoveredLookup&)> on_discovered;
  std::function<void(const DiscoveredLookup&)> on_discarded;
};

struct DiscoveryStats {
  uint64_t announcements = 0;  // heard (Avahi resolutions and multicast)
  uint64_t probes = 0;
  uint64_t probe_failures = 0;
  uint64_t discovered = 0;
  uint64_t discarded = 0;
  uint64_t ignored = 0;  // answered but serves none of the groups
  uint64_t crowded_out = 0;  // lookups heard of past the most kept pending (64): dropped, or one that never answered
  bool avahi_running = false;
  bool multicast_running = false;
};

class DiscoveryManager {
 public:
  // INVALID_ARGUMENT for a bad group or locator; a missing avahi-daemon or multicast is not an
  // error (see above).
  static Result<std::unique_ptr<DiscoveryManager>> start(DiscoveryOptions options);
  ~DiscoveryManager();  // stops; no listener runs after it returns
  DiscoveryManager(const DiscoveryManager&) = delete;
  DiscoveryManager& operator=(const DiscoveryManager&) = delete;

  std::vector<DiscoveredLookup> lookups() const;
  // Waits until at least `count` lookups are discovered; false on timeout.
  bool wait_for(size_t count, std::chrono::milliseconds timeout) const;
  Status add_locator(const std::string& locator);
  void remove_locator(const std::string& locator);
  // Asks the network again now (a multicast request; Avahi browses continuously anyway).
  void rediscover();
  DiscoveryStats stats() const;
  void stop();

  struct Impl;

 private:
  explicit DiscoveryManager(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace djinn::discovery
