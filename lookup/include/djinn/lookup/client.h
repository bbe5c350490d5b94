// The client side of lookup: RegistrarClient speaks the lookup protocol to one registrar, and
// LookupCache (lookup_cache.h) keeps a live local view of matching items across many.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "djinn/core/events.h"
#include "djinn/core/model.h"
#include "djinn/core/rpc.h"
#include "djinn/lease/client.h"
#include "djinn/lookup/registrar.h"

namespace djinn::lookup {

// A registration as the registrant holds it.
struct Registered {
  ServiceItem item;  // as stored; item.lease is the registration lease
  bool replaced = false;
  std::string landlord;  // where to renew and cancel the lease (the registrar's RPC endpoint)
  int64_t granted_ms = 0;  // the lease's granted duration; 0 when the registrar did not say

  // The registration lease in the form the renewal manager takes.
  lease::HeldLease held_lease() const;
};

// A notify registration: subscribe to `event_kind` at `events_endpoint` (decode with
// decode_notify_event) and renew the lease `id` at `landlord`.
struct NotifyHandle {
  uint64_t id = 0;
  int64_t expiration_ms = 0;
  std::string event_kind;
  std::string events_endpoint;
  std::string landlord;
  int64_t granted_ms = 0;  // the lease's granted duration; 0 when the registrar did not say

  lease::HeldLease held_lease() const;
};

struct RegistrarInfo {
  ServiceItem item;  // the registrar's own item
  std::vector<std::string> groups;
};

// Typed calls of the lookup protocol. register_service carries a fresh idempotency key (unless the
// caller gives one), so a registration resent after a lost connection is applied once; queries are
// idempotent and retried across a registrar restart until their deadline. Thread-safe.
class RegistrarClient {
 public:
  explicit RegistrarClient(rpc::ClientOptions options);
  ~RegistrarClient();

  Result<Registered> register_service(const ServiceItem& item, int64_t duration_ms = lease::kDurationAny,
                                      rpc::CallOptions call = {});
  Result<std::optional<ServiceItem>> lookup(const ServiceTemplate& tmpl, rpc::CallOptions call = {});
  // Many in flight at once; `done` runs on the client's I/O thread (keep it short).
  void lookup_async(const ServiceTemplate& tmpl, std::function<void(Result<std::optional<ServiceItem>>)> done,
                    rpc::CallOptions call = {});
  // The first page of up to max_matches matches, in ServiceID order (a reply holds at most 8 MiB
  // of items: `more` says matches were left out).
  Result<LookupMany> lookup_many(const ServiceTemplate& tmpl, size_t max_matches, uint64_t notify_id = 0,
                                 rpc::CallOptions call = {});
  // The page of matches after `after` (from the first when none).
  Result<LookupMany> lookup_page(const ServiceTemplate& tmpl, size_t max_matches, const std::optional<ServiceId>& after,
                                 uint64_t notify_id = 0, rpc::CallOptions call = {});
  // Up to max_matches matches, page after page; event_seq is the first page's. Items that change
  // between pages are as each page found them. `cancelled`, asked between pages, cuts it short
  // (CANCELLED): a caller that is stopping need not wait for the rest of a large answer.
  Result<LookupMany> lookup_all(const ServiceTemplate& tmpl, size_t max_matches, uint64_t notify_id = 0,
                                rpc::CallOptions call = {}, const std::function<bool()>& cancelled = {});
  Result<ServiceItem> modify_attributes(uint64_t lease_id, std::span<const AttributeChange> changes,
                                        std::span<const Entry> add = {}, rpc::CallOptions call = {});
  Result<NotifyHandle> notify(const ServiceTemplate& tmpl, uint8_t transitions, int64_t duration_ms,
                              const std::string& holder = "", rpc::CallOptions call = {});
  Result<RegistrarInfo> self(rpc::CallOptions call = {});
  // The lease protocol on the same registrar, for registration and notify leases.
  Result<lease::HeldLease> renew(uint64_t lease_id, int64_t duration_ms, rpc::CallOptions call = {});
  Status cancel(uint64_t lease_id, rpc::CallOptions call = {});

  rpc::Client& rpc();
  const std::string& endpoint() const;

 private:
  lease::LeaseClient& leases();

  rpc::ClientOptions options_;
  std::unique_ptr<rpc::Client> client_;
  std::once_flag leases_once_;
  std::unique_ptr<lease::LeaseClient> leases_;
};

// The payload of a "lookup.notify.<ref>" event; INVALID_ARGUMENT when it is malformed.
Result<NotifyEvent> decode_notify_event(const events::Event& event);

}  // namespace djinn::lookup
