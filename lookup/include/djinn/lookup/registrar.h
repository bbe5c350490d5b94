// The registrar engine (DESIGN §2, §5): service items stored in SQLite under registration leases
// from an embedded landlord, answered by template through indexes on interface types and attribute
// field values, and watched by notify registrations that get an event for each transition of an
// item against their template (nomatch->match, match->match, match->nomatch), as Jini's notify.
//
// Threading: all methods are thread-safe. Queries take a shared lock and never wait for a disk
// write; changes are serialized, written durably, then applied in memory and published together
// under the exclusive lock, so a snapshot (lookup_many) and the event stream agree on what came
// before it.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "djinn/core/events.h"
#include "djinn/core/model.h"
#include "djinn/core/status.h"
#include "djinn/lease/landlord.h"

namespace djinn::lookup {

// The landlord resources of the two kinds of lease a registrar grants.
inline constexpr std::string_view kRegistrationResource = "lookup.registration";
inline constexpr std::string_view kNotifyResource = "lookup.notify";

// The interface type every registrar's own item implements.
inline constexpr std::string_view kRegistrarType = "djinn.lookup.Registrar";
// The attribute entry naming a group the registrar serves (one entry per group, field "name").
inline constexpr std::string_view kGroupAttribute = "djinn.attr.Group";

// Transition masks of notify registrations.
enum Transition : uint8_t {
  kNoMatchToMatch = 1,
  kMatchToNoMatch = 2,
  kMatchToMatch = 4,
  kAllTransitions = 7,
};
std::string_view transition_name(Transition t);

struct RegistrarOptions {
  // The landlord of registration and notify leases, which must send its events to
  // Registrar::on_lease_event and outlives the Registrar. The registrar keeps its items and
  // watches in the landlord's SQLite file (Landlord::transact), so a registration and its lease
  // commit together; a landlord in memory keeps the registrar in memory too.
  lease::Landlord* landlord = nullptr;
  // Where notify events go (notify_event_kind); may be null (no events).
  events::Publisher* publisher = nullptr;
  size_t max_item_bytes = 64 * 1024;  // encoded size of one item; larger: INVALID_ARGUMENT
  size_t max_items = 1'000'000;       // RESOURCE_EXHAUSTED beyond
  size_t max_notify = 100'000;        // notify registrations
  std::string name = "lookup";        // for logs
};

struct RegisterRequest {
  ServiceItem item;  // lease is ignored (the registrar fills it in)
  int64_t duration_ms = lease::kDurationAny;
};

struct Registration {
  ServiceItem item;  // as stored, with its lease
  bool replaced = false;
  int64_t granted_ms = 0;  // the lease's granted duration
};

struct LookupMany {
  std::vector<ServiceItem> items;  // at most the maximum asked, in ServiceID order
  uint64_t total = 0;              // every match
  uint64_t event_seq = 0;          // with a notify id: its stream's last event number at the snapshot
  // Matches after the last item were left out (by the maximum, or the page's byte bound): ask for
  // the page after it.
  bool more = false;
};

// Which page of matches lookup_many answers: those after `after` in ServiceID order (all when
// none), as many as fit in `max_bytes` of items (at least one).
struct LookupPage {
  std::optional<ServiceId> after;
  size_t max_bytes = SIZE_MAX;
};

// modifyAttributes (Jini): each change's template picks the first attribute it matches exactly
// (same type, every non-null field equal); that attribute is replaced by `entry`, or deleted.
// A template that matches no attribute is an error (nothing changes).
struct AttributeChange {
  Template match;
  std::optional<Entry> entry;  // absent: delete
};

struct NotifyRegistration {
  uint64_t id = 0;  // = its lease id
  int64_t expiration_ms = 0;
  std::string event_kind;  // notify_event_kind(id)
  int64_t granted_ms = 0;  // the lease's granted duration
};

// One transition as published (proto NotifyEvent is its wire form).
struct NotifyEvent {
  uint64_t notify_id = 0;  // 0 (the event's kind names the registration), but from a registrar of
                           // an earlier release, which sent the id
  Transition transition = kNoMatchToMatch;
  ServiceItem item;  // after the change; for kMatchToNoMatch, before it
  bool removed = false;
};

class Registrar {
 public:
  static Result<std::unique_ptr<Registrar>> open(RegistrarOptions options);
  ~Registrar();
  Registrar(const Registrar&) = delete;
  Registrar& operator=(const Registrar&) = delete;

  // Registers or replaces, durably, with one write for the whole batch (group commit); each
  // element succeeds or fails on its own. Replacing an item gives it a new lease and cancels the
  // old one.
  std::vector<Result<Registration>> register_batch(std::span<const RegisterRequest> requests);
  Result<Registration> register_item(RegisterRequest request);

  // Queries never return an item whose lease deadline has passed (on the landlord's monotonic
  // clock), even in the moment before the lease's end removes it.
  // An arbitrary match, or none.
  std::optional<ServiceItem> lookup(const ServiceTemplate& tmpl) const;
  // Calls `visit` with an arbitrary match, under the registrar's shared lock (so without copying
  // it: `visit` must not call back into the registrar); false when nothing matches.
  bool visit_one(const ServiceTemplate& tmpl, const std::function<void(const ServiceItem&)>& visit) const;
  // visit_one, giving up (nullopt, nothing visited) once it has checked `max_candidates` items
  // without a match: what a caller that must not wait long (the RPC I/O thread) tries first.
  std::optional<bool> visit_one_within(const ServiceTemplate& tmpl, size_t max_candidates,
                                       const std::function<void(const ServiceItem&)>& visit) const;
  // Up to max_matches matches of `page`, in ServiceID order, and how many match in all. With
  // notify_id, also the last event number of that registration's stream, taken atomically with
  // the matches.
  LookupMany lookup_many(const ServiceTemplate& tmpl, size_t max_matches, uint64_t notify_id = 0,
                         const LookupPage& page = {}) const;
  std::optional<ServiceItem> find(const ServiceId& id) const;
  size_t size() const;  // items held, including any past their deadline and not yet removed

  // The item registered under registration lease `lease_id`, changed as asked (Jini's
  // modifyAttributes and addAttributes in one durable step).
  Result<ServiceItem> modify_attributes(uint64_t lease_id, std::span<const AttributeChange> changes,
                                        std::span<const Entry> add);

  // `by_ref` false: the kind and events of a client of an earlier release, which name the id
  // (id_notify_event_kind, and NotifyEvent.notifyId).
  Result<NotifyRegistration> notify(const ServiceTemplate& tmpl, uint8_t transitions, int64_t duration_ms,
                                    std::string holder, bool by_ref = true);

  // The registrar's own item: stored and matched like any other, leased by nobody (it lives as
  // long as the registrar serves). Its ServiceID is kept across restarts (self_id()).
  Status set_self(ServiceItem item);
  ServiceId self_id() const;

  // Wire as the landlord's on_event (after open, via the forwarding the service sets up):
  // expired or cancelled registration leases remove their items, notify leases their
  // registrations.
  void on_lease_event(const lease::LeaseEvent& event);
  // Removes the items and notify registrations whose leases ended while the registrar was
  // opening, before on_lease_event was wired (their events went nowhere); returns how many were
  // found. Call once, after wiring.
  size_t drop_lapsed();
  // Returns once what every lease ended so far held is removed (a thread of the registrar's own
  // removes it soon anyway): a cancel answers after this, so its caller never finds the item.
  void settle_ended();

 private:
  struct Impl;
  explicit Registrar(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// "lookup.notify.<ref>": the event kind of notify registration `notify_id`, named by its lease's
// ref (lease::lease_ref in 16 hex digits), since every subscriber sees every kind and the id would
// let any of them cancel the registration.
std::string notify_event_kind(uint64_t notify_id);
// "lookup.notify.<id in decimal>": the kind of a registration made by a registrar of an earlier
// release, which keeps it.
std::string id_notify_event_kind(uint64_t notify_id);

}  // namespace djinn::lookup
