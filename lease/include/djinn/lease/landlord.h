// The landlord engine (DESIGN §4): every grant of access in djinn is a lease, and every landlord
// (lookup for registrations, the space for entries, the lease manager for plain resources) embeds
// this engine. It negotiates durations against a policy, enforces the lease kinds, expires leases
// on a monotonic clock, persists every acknowledged lease in SQLite, and reports every change
// through one event callback.
//
// Threading: all methods are thread-safe. Events are delivered on the thread that caused them
// (grant, renew, cancel) or on the engine's expiry thread (expired, and grants that waited), never
// while an engine lock is held, so a callback may call back into the engine.
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

#include "djinn/core/digest.h"
#include "djinn/core/sqlite.h"
#include "djinn/core/status.h"

namespace djinn::lease {

// Nonzero, unique per landlord for its whole life (persisted), never reused. Drawn at random: an
// id is the capability to renew or cancel its lease, so it goes only to the holder (and to callers
// of the service-only lists).
using LeaseId = uint64_t;

// The lease's public reference: a one-way digest of its id (public_ref). The events of a landlord
// service, and the event kinds of notify registrations, name a lease by it; a holder computes it
// from the id it holds to recognise its own.
using LeaseRef = uint64_t;
inline LeaseRef lease_ref(LeaseId id) { return public_ref(id); }

// The kinds of DESIGN §4. kShared and kExclusive are the plain kinds (exclusive: one holder per
// resource at a time); kInterest, kSharedCopy and kExclusiveCopy are the compact levels:
//   interest        no copy; compatible with everything
//   shared copy     compatible with interest and shared copy
//   exclusive copy  compatible with interest only
// Plain and compact kinds on the same resource follow: shared ~ shared copy, exclusive ~
// exclusive copy. An incompatible request is refused (or waits) and raises a conflict event to the
// holders that stand in its way.
enum class Kind : uint8_t { kShared = 0, kExclusive = 1, kInterest = 2, kSharedCopy = 3, kExclusiveCopy = 4 };
std::string_view kind_name(Kind kind);
std::optional<Kind> parse_kind(std::string_view text);
bool compatible(Kind held, Kind requested);

// Requested durations: a positive number of milliseconds, or one of these.
inline constexpr int64_t kDurationAny = -1;      // the landlord chooses (policy.default_duration)
inline constexpr int64_t kDurationForever = -2;  // only where policy.allow_forever
// The expiration of a FOREVER lease.
inline constexpr int64_t kNeverExpires = INT64_MAX;

struct Lease {
  LeaseId id = 0;
  std::string resource;
  std::string holder;
  Kind kind = Kind::kShared;
  int64_t expiration_ms = 0;  // Unix time in ms (wall clock, as persisted and sent); kNeverExpires
  int64_t granted_ms = 0;     // the duration granted by the last grant or renewal
  // The landlord's own deadline on its monotonic clock, in this process only (neither persisted
  // nor sent): the lease is over once Landlord::now_ns() reaches it, whatever the wall clock
  // does meanwhile. INT64_MAX for a lease that never expires.
  int64_t deadline_ns = 0;
};

struct Policy {
  std::chrono::milliseconds max_duration{std::chrono::minutes(5)};
  std::chrono::milliseconds default_duration{std::chrono::seconds(30)};  // for ANY
  std::chrono::milliseconds min_duration{std::chrono::milliseconds(1)};
  bool allow_forever = false;
  size_t max_resource_bytes = 1024;
  size_t max_holder_bytes = 256;
  size_t max_leases = 10'000'000;  // RESOURCE_EXHAUSTED beyond
  // Grants queued at once with a wait (GrantRequest::wait > 0), across all resources; one more
  // that would wait is refused (RESOURCE_EXHAUSTED) instead. 0: none waits.
  size_t max_waiting_grants = 100'000;
};

struct GrantRequest {
  std::string resource;
  std::string holder;
  Kind kind = Kind::kShared;
  int64_t duration_ms = kDurationAny;
  // How long a request that conflicts may wait for the resource to free up; 0 refuses at once
  // (FAILED_PRECONDITION naming the holders in the way).
  std::chrono::milliseconds wait{0};
  // Names this request for its retries (at most kMaxGrantKeyBytes; empty: none). A grant resent
  // with the key of one that was granted, while that lease is held, returns the same lease
  // instead of a second one, also after the landlord restarts (a kill -9 between the commit and
  // the reply included): the key's digest is stored with the lease. The keys of the last
  // kRememberedGrantKeys grants are kept. The same key with another resource, holder or kind is
  // refused (INVALID_ARGUMENT).
  std::string idempotency_key;
};

inline constexpr size_t kMaxGrantKeyBytes = 256;
inline constexpr size_t kRememberedGrantKeys = 65536;

struct RenewRequest {
  LeaseId id = 0;
  int64_t duration_ms = kDurationAny;
};

enum class EventType : uint8_t { kGranted, kRenewed, kCancelled, kExpired, kConflict };
std::string_view event_name(EventType type);

struct LeaseEvent {
  EventType type;
  Lease lease;  // for kConflict: the held lease that stands in the way
  // kConflict only: what was asked.
  std::string requested_by;
  Kind requested_kind = Kind::kShared;
};

// Time sources; tests inject both. Wall time stamps expirations (they survive a restart);
// monotonic time drives expiry while running.
struct Clocks {
  std::function<std::chrono::steady_clock::time_point()> monotonic;
  std::function<int64_t()> wall_ms;  // Unix ms
};

struct LandlordOptions {
  std::string path;  // SQLite file; empty keeps leases in memory only (no persistence)
  Policy policy;
  std::function<void(const LeaseEvent&)> on_event;
  Clocks clocks;  // default: steady_clock and system_clock
  // With an injected clock, expiry runs only when advance()/expire_due() are called.
  bool run_expiry_thread = true;
  std::string name = "landlord";  // for logs
  // SQLite page cache of the store. A landlord whose owner keeps its own tables in the same file
  // (see transact) sizes it for both.
  int cache_kib = 32 * 1024;
};

// What the owner of a landlord writes in the transaction that grants a batch: it sees the
// results in request order (the ok ones are about to be granted) and writes what they grant. A
// failure rolls the whole transaction back and fails every grant of the batch with it.
using GrantWriter = std::function<Status(sqlite::Database& db, std::span<const Result<Lease>> leases)>;

class Landlord {
 public:
  // Opens (or creates) the store. Leases whose deadline passed while the landlord was down
  // expire here, with events.
  static Result<std::unique_ptr<Landlord>> open(LandlordOptions options);
  ~Landlord();
  Landlord(const Landlord&) = delete;
  Landlord& operator=(const Landlord&) = delete;

  // Durable before it returns. A conflicting request with wait > 0 blocks the caller; use
  // grant_async to wait without a thread.
  Result<Lease> grant(const GrantRequest& request);
  void grant_async(const GrantRequest& request, std::function<void(Result<Lease>)> done);
  Result<Lease> renew(const RenewRequest& request);
  Status cancel(LeaseId id);
  // One durable write for the whole batch; each element succeeds or fails on its own. A batch
  // grant never waits (wait must be 0): a request in conflict with held leases, with queued
  // requests or with an earlier request of the same batch is refused.
  std::vector<Result<Lease>> grant_batch(std::span<const GrantRequest> requests);
  // The same, with the owner's own rows written in the same transaction: a registration and its
  // lease (lookup), an entry and its lease (the space) commit together, with one fsync.
  std::vector<Result<Lease>> grant_batch(std::span<const GrantRequest> requests, const GrantWriter& also_write);

  // Runs `body` in one transaction of the landlord's store, in turn with the landlord's own
  // writes: the owner's tables live in the same file (created by the owner, named apart from the
  // landlord's "lease" and "renewal"). `kFull` syncs the commit. Without a store (in memory) the
  // body is not run and the result is ok. `body` must not call back into the landlord.
  Status transact(sqlite::Sync sync, const std::function<Status(sqlite::Database&)>& body);
  std::vector<Result<Lease>> renew_batch(std::span<const RenewRequest> requests);
  // renew_batch for a caller that must not wait (a server's I/O thread): renews now when no
  // other change is being written, else does nothing and returns nullopt, and the caller hands
  // the batch to a thread that may wait. Declines too when the batch, or the store, needs a sync
  // (a renewal to FOREVER, a checkpoint that is due).
  std::optional<std::vector<Result<Lease>>> try_renew_batch(std::span<const RenewRequest> requests);
  std::vector<Status> cancel_batch(std::span<const LeaseId> ids);

  std::optional<Lease> find(LeaseId id) const;
  std::vector<Lease> leases_of_holder(std::string_view holder) const;
  std::vector<Lease> leases_of_resource(std::string_view resource) const;
  // The ids alone, for a caller that pages through them (a reply of half a million leases would
  // not fit in a message): cheaper to take under the lock than the leases.
  std::vector<LeaseId> lease_ids_of_holder(std::string_view holder) const;
  std::vector<LeaseId> lease_ids_of_resource(std::string_view resource) const;
  // Cancels the leases of `resource` that `held` says nothing holds (an owner's start-up sweep of
  // leases whose grant outlived what they were granted for); returns how many. `held` is called
  // without the landlord's lock; the owner's own lock must not be held across this call, since
  // the cancellations report events.
  size_t cancel_unheld(std::string_view resource, const std::function<bool(LeaseId)>& held);
  // Cancels every lease of a holder (a migrating application gives up all it holds).
  Result<std::vector<Lease>> cancel_all_of_holder(std::string_view holder);
  // Ends every lease of a holder within `within`: each that would live longer now expires then,
  // keeping its granted duration (announced as renewed, journaled like a renewal); returns them
  // all as they now are. Until they expire, the holder's leases keep other holders' incompatible
  // grants out while its own new ones succeed (a holder never stands in its own way): a migrating
  // application's leases expire while its new node grants them again under the same holder, and
  // nobody else takes an exclusive resource in between, not even a request queued for it (DESIGN
  // §9 steps 5 and 9). A renewal gives a shortened lease a new expiration as it would any lease.
  // `within` of zero or less cancels them at once, as cancel_all_of_holder.
  Result<std::vector<Lease>> expire_all_of_holder(std::string_view holder, std::chrono::milliseconds within);
  size_t size() const;
  // Now on the landlord's monotonic clock (the injected one in tests), for Lease::deadline_ns.
  int64_t now_ns() const;

  // Expires every lease whose deadline is at or before now; returns how many. First takes one
  // step of folding the renewal journal when a fold is due or under way (a chunk of rows), so a
  // fold spans many calls. The expiry thread calls this; tests with an injected clock call it
  // after moving the clock.
  size_t expire_due();

  const Policy& policy() const;

 private:
  struct Impl;
  explicit Landlord(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace djinn::lease
