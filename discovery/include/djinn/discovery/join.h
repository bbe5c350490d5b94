// JoinManager (DESIGN §5, Jini's JoinManager): keeps one service registered with every discovered
// lookup service of its groups. Discovery (manager.h) finds the lookups; a lookup::RegistrationKeeper
// registers with each, renews through the renewal manager and registers again when a lease is
// lost. A lookup that is discarded is dropped, and when it is discovered again (it came back, or
// restarted) the service is registered there again at once. Attribute changes reach every lookup.
//
//   JoinOptions o;
//   o.discovery.groups = {"public"};
//   auto join = JoinManager::start(item, std::move(o));   // item.service_id kept for life
//   (*join)->set_attributes({location_entry});
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "djinn/core/model.h"
#include "djinn/core/status.h"
#include "djinn/discovery/manager.h"
#include "djinn/lookup/keeper.h"

namespace djinn::discovery {

struct JoinOptions {
  // Where to look; its listeners are the join manager's own (any set here run after them).
  DiscoveryOptions discovery;
  lookup::KeeperOptions keeper;
};

class JoinManager {
 public:
  // INVALID_ARGUMENT for a nil ServiceID or bad discovery options.
  static Result<std::unique_ptr<JoinManager>> start(ServiceItem item, JoinOptions options);
  // Stops discovering and cancels the registrations (best effort).
  ~JoinManager();
  JoinManager(const JoinManager&) = delete;
  JoinManager& operator=(const JoinManager&) = delete;

  // Replaces the attributes in every lookup (the item is registered again, same ServiceID).
  void set_attributes(std::vector<Entry> attributes);
  // Replaces the whole item (endpoints after a move, interfaces); the ServiceID stays.
  void set_item(ServiceItem item);
  ServiceItem item() const;

  // RPC endpoints of the lookups the current item is registered with.
  std::vector<std::string> registered() const;
  // The lookups discovered now.
  std::vector<DiscoveredLookup> lookups() const;
  // Waits until the item is registered with at least `count` lookups; false on timeout.
  bool wait_registered(size_t count, std::chrono::milliseconds timeout) const;
  DiscoveryManager& discovery();

  struct Impl;

 private:
  explicit JoinManager(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace djinn::discovery
