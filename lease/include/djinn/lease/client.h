// The client side of leases: LeaseClient speaks the lease protocol to one landlord (any service
// that embeds the engine), and RenewalManager keeps a set of leases, at any number of landlords,
// renewed until told otherwise.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "djinn/core/rpc.h"
#include "djinn/lease/landlord.h"

namespace djinn::lease {

// A lease as a holder sees it: the Lease plus where to renew it.
struct HeldLease {
  Lease lease;
  std::string landlord;  // RPC endpoint of the landlord
};

// The grant to hand a RenewalManager with a lease granted just now (Lease::granted_ms): the
// landlord's own `granted_ms` when it said (> 0), not what `expiration_ms` leaves on this host's
// clock, which is off by the clocks' difference (a landlord a lease ahead would have the first
// renewal come after the lease lapsed); from a landlord that did not say, what it leaves, at
// least 1 ms (0 would mean unknown: renewed at once).
int64_t first_grant_ms(int64_t granted_ms, int64_t expiration_ms);

// A list of leases with where the event streams stood when it was taken (LeaseList on the wire):
// events numbered at or below kind_seqs are reflected in `leases`, later ones may or may not be.
// A long list comes in pages (a reply holds at most 8 MiB of leases): the numbers are the first
// page's, and every page was read after them.
struct LeaseSnapshot {
  std::vector<Lease> leases;
  uint64_t event_seq = 0;                                  // sum over the lease event kinds
  std::vector<std::pair<std::string, uint64_t>> kind_seqs;  // ("lease.granted", seq), ...
};

// What lease.cancelHolder ended: the leases as they ended (cancelled, or with their shortened
// expiration), as many as fit in a reply (8 MiB, some 50,000 leases of short names), and how many
// it ended in all. The rest ended too; list them with leases_of_holder first if they matter.
struct EndedLeases {
  std::vector<Lease> leases;
  uint64_t total = 0;  // more than leases.size() when the list was cut short
};

// Typed calls of the lease protocol. grant carries a fresh random idempotency key (unless the
// caller gives one), so a grant retried over a lost connection is applied once; renew, get,
// cancel, the batches and the lists are marked idempotent, so they are retried across a landlord
// restart until their deadline. HeldLease::landlord is the endpoint this client talks to.
// Thread-safe.
class LeaseClient {
 public:
  explicit LeaseClient(rpc::ClientOptions options);
  ~LeaseClient();

  Result<HeldLease> grant(const GrantRequest& request, rpc::CallOptions call = {});
  Result<HeldLease> renew(LeaseId id, int64_t duration_ms, rpc::CallOptions call = {});
  Status cancel(LeaseId id, rpc::CallOptions call = {});
  Result<HeldLease> get(LeaseId id, rpc::CallOptions call = {});
  std::vector<Result<Lease>> renew_batch(std::span<const RenewRequest> requests, rpc::CallOptions call = {});
  std::vector<Status> cancel_batch(std::span<const LeaseId> ids, rpc::CallOptions call = {});
  // The lists hand out lease ids, which are capabilities: they need the service role or admin.
  // A long list is read a page (a call) at a time, until the last.
  Result<std::vector<Lease>> leases_of_holder(const std::string& holder, rpc::CallOptions call = {});
  Result<std::vector<Lease>> leases_of_resource(const std::string& resource, rpc::CallOptions call = {});
  // Needs the service role (a node giving up what its application holds) or admin. Each call
  // carries an idempotency key, so a resend after a lost reply returns the first reply's list (the
  // server keeps replies in memory: keep the list from leases_of_holder beforehand when a landlord
  // restart in between must not lose it).
  Result<EndedLeases> cancel_all_of_holder(const std::string& holder, rpc::CallOptions call = {});
  // Landlord::expire_all_of_holder over RPC: each lease of `holder` ends within `within` (at most
  // the landlord's longest lease), the same role and retries as cancel_all_of_holder.
  Result<EndedLeases> expire_all_of_holder(const std::string& holder, std::chrono::milliseconds within,
                                           rpc::CallOptions call = {});
  // The lists with their event numbers, to re-sync a subscriber that saw a gap.
  Result<LeaseSnapshot> holder_snapshot(const std::string& holder, rpc::CallOptions call = {});
  Result<LeaseSnapshot> resource_snapshot(const std::string& resource, rpc::CallOptions call = {});

  rpc::Client& rpc();

 private:
  std::unique_ptr<rpc::Client> client_;
};

// A set at the renewal service of djinn-lease.
struct RenewalSet {
  uint64_t id = 0;  // random, and a capability: whoever knows it may list and change the set
  HeldLease lease;  // the set's own lease: renew it (LeaseClient::renew) or the set is dropped
};

// The key of a set's "renewal.failed" events: its ref (public_ref_hex of its id), never the id.
inline std::string renewal_event_key(uint64_t set_id) { return public_ref_hex(set_id); }

// Typed calls of the renewal service ("renewal.*" on djinn-lease). Failures arrive as events of
// kind "renewal.failed" with key = renewal_event_key(set id) (payload proto::RenewalFailure, whose
// lease carries its ref, lease_ref, in place of its id).
class RenewalClient {
 public:
  explicit RenewalClient(rpc::ClientOptions options);
  ~RenewalClient();

  Result<RenewalSet> create_set(const std::string& holder, int64_t duration_ms, rpc::CallOptions call = {});
  // Keeps `lease` renewed, `renew_ms` at a time, until `until`.
  Status add(uint64_t set_id, const HeldLease& lease, int64_t renew_ms,
             std::chrono::system_clock::time_point until, rpc::CallOptions call = {});
  Status remove(uint64_t set_id, LeaseId id, const std::string& landlord, rpc::CallOptions call = {});
  // The members, with the expirations of their latest renewals.
  Result<std::vector<HeldLease>> members(uint64_t set_id, rpc::CallOptions call = {});

  rpc::Client& rpc();

 private:
  std::unique_ptr<rpc::Client> client_;
};

struct RenewalManagerOptions {
  // Renew when this fraction of the granted duration is left (plus jitter), e.g. 0.5.
  double renew_at_remaining = 0.5;
  double jitter = 0.1;  // +- fraction of the interval, so many holders do not renew in step
  std::chrono::milliseconds batch_window{5};  // renewals due within it go in one batch per landlord
  std::optional<rpc::CurveClient> curve;
  std::chrono::milliseconds call_timeout{2000};
  // Reconnection to a landlord that went away backs off up to this: short, since a lease may be
  // only a second long.
  std::chrono::milliseconds reconnect_interval_max{100};
  std::chrono::milliseconds retry_backoff_min{20};   // after a failed renewal call, doubling
  std::chrono::milliseconds retry_backoff_max{500};
  size_t max_batch = 1000;  // renewals in one lease.renewBatch call
  // Landlords renewed at, at once: add refuses a lease at one more (RESOURCE_EXHAUSTED). Each has
  // an RPC client of its own (a few ZeroMQ sockets and a thread), kept while a tracked lease is
  // there; a process's ZeroMQ context has room for 1,023 sockets in all.
  size_t max_landlords = 64;
  // This holder's wall clock (default: system_clock), which `until` is on and a lease's
  // expiration is read with when it is added; renewals are scheduled on the monotonic clock.
  // Tests skew it.
  std::function<std::chrono::system_clock::time_point()> wall_clock;
};

// Keeps leases renewed before they expire, batching renewals per landlord. Survives a landlord
// restart (renewals retry until the lease's expiration). Reports a lease it could not renew —
// expired, cancelled, refused, or unreachable past its expiration — through on_failure, once,
// and stops tracking it. One thread, sleeping until the next renewal is due; calls go out
// asynchronously, so a landlord that does not answer delays no other. on_failure runs on that
// thread, with no lock held (it may call add/remove); a lease whose `until` passed is dropped
// silently. A FOREVER lease is tracked but never renewed.
class RenewalManager {
 public:
  using FailureHandler = std::function<void(const HeldLease& lease, const Status& why)>;
  // The leases one landlord's answer renewed, as renewed.
  using RenewedHandler = std::function<void(std::span<const HeldLease> renewed)>;

  explicit RenewalManager(RenewalManagerOptions options = {});
  ~RenewalManager();  // stops cleanly: no renewal runs after it returns
  RenewalManager(const RenewalManager&) = delete;
  RenewalManager& operator=(const RenewalManager&) = delete;

  void on_failure(FailureHandler handler);
  // Called like on_failure (the manager's thread, no lock held) after each answer that renewed
  // leases: a holder that must outlive its own restart can note what each renewal granted.
  void on_renewed(RenewedHandler handler);
  // Keeps `lease` renewed, `renew_ms` at a time (ANY: the landlord chooses), until `until`
  // (nullopt: until removed). The first renewal is due when renew_at_remaining of
  // lease.granted_ms is left before lease.expiration_ms as read on this holder's clock, or before
  // granted_ms from now if that comes sooner (the landlord's clock may be ahead); at once when
  // granted_ms is 0 (unknown). Later renewals are due renew_at_remaining of their grant before
  // the time they were sent plus that grant, on the monotonic clock: the landlord's expiration
  // is only reported. Adding a lease already tracked replaces it. A lease at a landlord other than
  // the max_landlords already renewed at is refused (RESOURCE_EXHAUSTED) and not tracked. With
  // `confirm_within` (> 0) and granted_ms 0, a lease its landlord has not renewed once within that
  // long is reported failed (UNAVAILABLE) rather than retried until the expiration it came with:
  // for a lease and expiration handed over by someone else, which only they vouch for.
  Status add(const HeldLease& lease, int64_t renew_ms = kDurationAny,
             std::optional<std::chrono::system_clock::time_point> until = std::nullopt,
             std::chrono::milliseconds confirm_within = std::chrono::milliseconds(0));
  // Stops renewing (the lease is left to expire, or cancel it yourself).
  void remove(LeaseId id, const std::string& landlord);
  // The current view of a tracked lease (its latest expiration).
  std::optional<HeldLease> get(LeaseId id, const std::string& landlord) const;
  size_t size() const;
  // The landlords it renews at: each has its client (connection) while a tracked lease is there.
  size_t landlords() const;
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace djinn::lease
