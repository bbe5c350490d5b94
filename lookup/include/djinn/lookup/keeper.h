// RegistrationKeeper: keeps one service registered with a set of lookup services, as Jini's join
// manager does once lookups are known: registers with each, renews the registration leases,
// registers again when a lease is lost (a lookup restarted without its data, or was unreachable
// past the lease), and cancels everything on stop. A registration lost because another item took
// its ServiceID at a lookup (the service moved to another node, which registered it there with its
// own endpoints) is left to that item: the keeper stops registering there until set_item, even
// when the registrar is removed and added again. Until the registrar answers what it holds, the
// keeper does not register there again. One lost
// while the very same item is registered there under another lease (a registration whose reply
// was lost, or a twin process with the same item) renews that lease instead of registering again. The discovery issue's join manager feeds it the
// lookups it discovers; daemons given --lookup endpoints use it directly.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "djinn/core/model.h"
#include "djinn/core/rpc.h"
#include "djinn/core/status.h"

namespace djinn::lookup {

struct KeeperOptions {
  int64_t lease_ms = 30'000;  // registration lease asked for (the registrar may grant less)
  std::optional<rpc::CurveClient> curve;
  std::chrono::milliseconds call_timeout{2000};
  std::chrono::milliseconds retry_min{100};  // after a failed registration, doubling
  std::chrono::milliseconds retry_max{5000};
  // Landlords (lookups) whose leases are renewed at once: a registration past them is made again
  // at each retry until one frees (lease::RenewalManagerOptions::max_landlords).
  size_t max_landlords = 64;
};

class RegistrationKeeper {
 public:
  RegistrationKeeper(ServiceItem item, std::vector<std::string> registrars, KeeperOptions options = {});
  // Cancels the registrations (best effort: a lookup that does not answer lets its lease lapse).
  ~RegistrationKeeper();
  RegistrationKeeper(const RegistrationKeeper&) = delete;
  RegistrationKeeper& operator=(const RegistrationKeeper&) = delete;

  void add_registrar(const std::string& endpoint);
  void remove_registrar(const std::string& endpoint);  // cancels the registration there
  // Registers the new item (same ServiceID) everywhere, where it was superseded too: how
  // attributes and endpoints change.
  void set_item(ServiceItem item);
  // The registrars where the item is registered now.
  std::vector<std::string> registered() const;
  // The registrars where another item took the ServiceID (see above).
  std::vector<std::string> superseded() const;
  // Waits until the item is registered with every registrar where it was not superseded; false on
  // timeout.
  bool wait_registered(std::chrono::milliseconds timeout) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A daemon's ServiceID for life: read from `<data_dir>/service-id`, or minted and written there.
Result<ServiceId> load_or_mint_service_id(const std::string& data_dir);

// "a,b,,c" -> {"a", "b", "c"} (flags that list endpoints or groups).
std::vector<std::string> split_list(const std::string& text);

}  // namespace djinn::lookup
