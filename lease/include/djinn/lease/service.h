// Serving leases over RPC. LandlordService puts the "lease.*" methods of proto/lease.capnp on any
// rpc::Server for a Landlord and publishes its events, so the lease manager, lookup and the space
// all speak the same lease protocol. LeaseManager is the federation's lease service (djinn-lease):
// a landlord for plain resources and for services that delegate their leasing, plus the renewal
// service.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "djinn/core/events.h"
#include "djinn/core/rpc.h"
#include "djinn/lease/landlord.h"

namespace djinn::lease {

// Registers lease.grant, lease.renew, lease.cancel, lease.get, lease.renewBatch,
// lease.cancelBatch, and (service role) lease.holderLeases, lease.resourceLeases and lease.cancelHolder on
// `server`, and publishes the landlord's events on `publisher` (kinds "lease.<event>", key =
// holder). Call before server.start(); the landlord's on_event must forward to on_event() below.
// Every input is checked at the edge (sizes against the landlord's policy, kinds, durations, batch
// sizes of at most 10,000 items); engine statuses go back unchanged. Grants run on threads of the
// service's own ("grant_threads") and a grant that waits for a conflicting lease holds a reply
// open, not a thread. Destroy the service after server.stop().
class LandlordService {
 public:
  LandlordService(Landlord& landlord, rpc::Server& server, events::Publisher* publisher,
                  std::string landlord_endpoint, int grant_threads = 2);
  ~LandlordService();
  LandlordService(const LandlordService&) = delete;
  LandlordService& operator=(const LandlordService&) = delete;

  // Forwards one engine event to the publisher; wire it as the landlord's on_event.
  void on_event(const LeaseEvent& event);
  // Runs after every cancellation the service makes (lease.cancel, lease.cancelBatch,
  // lease.cancelHolder), before it replies: an owner that removes what a lease held on a thread of
  // its own finishes that here, so whoever cancels finds it gone once the call returns. Set it
  // before the server starts.
  void set_after_cancel(std::function<void()> settle);
  // A resource the owner grants through calls of its own (lookup.register, space.write): lease.grant
  // refuses it, so nobody can take an exclusive lease on it that would hold up every grant, and
  // renewing or cancelling its leases needs `change_role` (client: whoever holds the id). Set it
  // before the server starts.
  void reserve(std::string resource, std::string granted_by, security::Role change_role);
  // The endpoint written into every Lease sent (set it once the server has bound its port).
  void set_endpoint(std::string endpoint);
  std::string endpoint() const;

  // Publishes one engine event as the service does (for events that arrive before a service
  // exists, e.g. expiries while a landlord opens).
  static void publish(events::Publisher& publisher, const LeaseEvent& event, std::string_view endpoint);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct LeaseManagerOptions {
  std::string data_dir;  // holds lease.db (and renewal.db); created if missing; empty: in memory
  std::string rpc_endpoint = "tcp://127.0.0.1:*";
  std::string events_endpoint = "tcp://127.0.0.1:*";
  // The host others dial when an endpoint binds a wildcard address (tcp://0.0.0.0:PORT); empty:
  // this machine's host name. The endpoints reported (leases, items, notify) use it.
  std::string advertise_host;
  Policy policy;
  std::optional<rpc::CurveServer> curve;
  security::Role plaintext_role = security::Role::kAdmin;
  int workers = 2;
  // How the renewal service reaches other landlords (under CURVE: its client key pair and the
  // landlords' server key); default: plaintext.
  std::optional<rpc::CurveClient> renewal_curve;
  // A lease handed to the renewal service whose landlord does not renew it once within this long
  // is reported failed (renewal.failed) instead of retried until the expiration its client gave
  // (RenewalManager::add's confirm_within); 0: until that expiration.
  std::chrono::milliseconds renewal_patience{60'000};
};

// The whole djinn-lease service, in-process (the daemon's main and the tests use it alike): the
// lease.* methods for its own landlord (lease.db), the renewal service (renewal.create, .add,
// .remove, .members; renewal.db), and the events "lease.*" and "renewal.failed".
class LeaseManager {
 public:
  static Result<std::unique_ptr<LeaseManager>> start(LeaseManagerOptions options);
  ~LeaseManager();
  LeaseManager(const LeaseManager&) = delete;
  LeaseManager& operator=(const LeaseManager&) = delete;

  const std::string& rpc_endpoint() const;
  const std::string& events_endpoint() const;
  // The embedded engine (for in-process use and tests); valid until stop().
  Landlord& landlord();
  // Stops serving and closes the stores; the destructor calls it. Idempotent.
  void stop();

 private:
  struct Impl;
  explicit LeaseManager(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace djinn::lease
