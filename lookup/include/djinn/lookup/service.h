// The lookup service (djinn-lookup) in one object: a Registrar over RPC ("lookup.*"), the lease
// protocol ("lease.*") for its registration and notify leases, and one event socket for both the
// notify events ("lookup.notify.<ref>") and the lease events. The daemon's main and the tests use it
// alike.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "djinn/core/rpc.h"
#include "djinn/lease/landlord.h"
#include "djinn/lookup/registrar.h"

namespace djinn::lookup {

struct LookupServiceOptions {
  std::string data_dir;  // holds lookup.db; created if missing; empty: in memory
  std::string rpc_endpoint = "tcp://127.0.0.1:*";
  std::string events_endpoint = "tcp://127.0.0.1:*";
  // The host others dial when an endpoint binds a wildcard address (tcp://0.0.0.0:PORT); empty:
  // this machine's host name. The endpoints reported (leases, items, notify) use it.
  std::string advertise_host;
  std::vector<std::string> groups = {"public"};  // served groups, in the registrar's own item
  std::string name = "lookup";                    // djinn.attr.Name of its own item, and for logs
  lease::Policy policy;                           // registration and notify leases
  size_t max_item_bytes = 64 * 1024;
  size_t max_items = 1'000'000;
  // Notify registrations held, from every client together: each change is matched against all of
  // them and sends an event with the item to each that it concerns.
  size_t max_notify = 100'000;
  std::optional<rpc::CurveServer> curve;
  security::Role plaintext_role = security::Role::kAdmin;
  int workers = 2;
};

// Largest lookupMany answer.
inline constexpr size_t kMaxMatches = 100'000;
// A lookup.lookupMany reply stops short of this many bytes of items (at least one), half the
// frame a client reads: 100,000 items of up to 64 KiB each would be gigabytes.
inline constexpr size_t kMaxMatchesReplyBytes = kMaxPageReplyBytes;
// The same for a caller that does not page (built before pages): what its frame of 16 MiB read.
inline constexpr size_t kUnpagedMatchesReplyBytes = 15u << 20;

class LookupService {
 public:
  static Result<std::unique_ptr<LookupService>> start(LookupServiceOptions options);
  ~LookupService();
  LookupService(const LookupService&) = delete;
  LookupService& operator=(const LookupService&) = delete;

  const std::string& rpc_endpoint() const;
  const std::string& events_endpoint() const;
  Registrar& registrar();
  lease::Landlord& landlord();
  // Stops serving and closes the stores; the destructor calls it. Idempotent.
  void stop();

 private:
  struct Impl;
  explicit LookupService(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace djinn::lookup
