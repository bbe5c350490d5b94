// The renewal service of djinn-lease: clients hand over leases held at any landlord, grouped in
// sets, to be kept renewed until a time. Sets and members persist in SQLite (renewal.db); each set
// is itself leased from the manager's own landlord, so a set its client abandoned is dropped when
// that lease ends. A lease that cannot be renewed is reported once, as event "renewal.failed".
#pragma once

#include <memory>
#include <string>

#include "djinn/core/events.h"
#include "djinn/core/rpc.h"
#include "djinn/lease/client.h"
#include "djinn/lease/landlord.h"

namespace djinn::lease::internal {

struct RenewalServiceOptions {
  std::string path;  // SQLite file; empty: in memory
  Landlord* landlord = nullptr;              // where set leases are granted
  events::Publisher* publisher = nullptr;    // for "renewal.failed"; may be null
  RenewalManagerOptions manager;
  // A lease handed over (renewal.add) that its landlord does not renew once within this long is
  // reported failed, not retried until the expiration its client gave (0: until then). Leases
  // resumed at start-up are retried until their expiration as before.
  std::chrono::milliseconds patience{0};
};

class RenewalService {
 public:
  // Opens the store, drops sets whose lease is gone and resumes renewing the rest.
  static Result<std::unique_ptr<RenewalService>> open(RenewalServiceOptions options);
  ~RenewalService();
  RenewalService(const RenewalService&) = delete;
  RenewalService& operator=(const RenewalService&) = delete;

  // renewal.create, renewal.add, renewal.remove, renewal.members (role client). Before start().
  void register_methods(rpc::Server& server);
  void set_endpoint(std::string endpoint);
  // Engine events of the manager's own landlord: a set whose lease was cancelled or expired is
  // dropped. Must not be called with an engine lock held (the engine never does).
  void on_lease_event(const LeaseEvent& event);
  // Drops the sets whose lease is no longer held: call once on_lease_event receives the engine's
  // events, for the leases that ended before.
  void drop_ended_sets();
  // Stops renewing; no event is published after it returns.
  void stop();

 private:
  struct Impl;
  explicit RenewalService(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace djinn::lease::internal
