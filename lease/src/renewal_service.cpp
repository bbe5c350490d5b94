// The renewal service: sets of leases (held at any landlord) kept renewed on behalf of clients by
// one RenewalManager. The store (renewal.db) records what to renew, not how far: after a restart
// every member is renewed at once, which tells alive leases from lost ones, and retried until the
// longest it could have been renewed for runs out.
#include "renewal_service.h"

#include <algorithm>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <span>
#include <thread>

#include <kj/exception.h>

#include "convert.h"
#include "djinn/core/digest.h"
#include "djinn/core/fault.h"
#include "djinn/core/log.h"
#include "djinn/core/sqlite.h"
#include "djinn/core/thread_name.h"

namespace djinn::lease::internal {
namespace {

constexpr std::string_view kFailedKind = "renewal.failed";
// Members across all sets; more is refused (RESOURCE_EXHAUSTED) rather than renewed late.
constexpr size_t kMaxMembers = 1'000'000;
// The latest untilMs a renewal may run to: the last millisecond a system_clock::time_point holds
// (nanoseconds since 1970, in 2262), which RenewalClient::add sends for time_point::max() ("until
// removed"). A later one would overflow the nanoseconds and wrap into the past.
constexpr int64_t kMaxUntilMs =
    std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::time_point::max().time_since_epoch())
        .count();

// Members whose `until` passed, taken out of the maps and the store per lock hold: a million due
// at once (one `until` for a whole set) become a thousand short holds, between which calls and
// the manager's reports go on.
constexpr size_t kSweepChunk = 1000;
// 1: the index of members by until_ms (a store without it, of version 0, gains it when opened).
constexpr int64_t kSchemaVersion = 1;

constexpr std::string_view kSchema = R"(
CREATE TABLE IF NOT EXISTS renewal_set (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  holder TEXT NOT NULL,
  lease_id INTEGER NOT NULL          -- the set's own lease at this manager's landlord; 0 while granting
);
CREATE TABLE IF NOT EXISTS renewal_member (
  set_id INTEGER NOT NULL,
  landlord TEXT NOT NULL,
  lease_id INTEGER NOT NULL,
  resource TEXT NOT NULL,
  holder TEXT NOT NULL,
  kind INTEGER NOT NULL,
  expiration_ms INTEGER NOT NULL,    -- as handed over, or a renewal's if that is sooner
  granted_ms INTEGER NOT NULL,       -- the latest renewal's grant, written when it changes
  renew_ms INTEGER NOT NULL,
  until_ms INTEGER NOT NULL,
  PRIMARY KEY (landlord, lease_id)
);
CREATE INDEX IF NOT EXISTS renewal_member_set ON renewal_member(set_id);
CREATE INDEX IF NOT EXISTS renewal_member_until ON renewal_member(until_ms);
)";

int64_t wall_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The set's own lease is named by the set's ref: lease events show the resource to everyone.
std::string set_resource(uint64_t set_id) { return "djinn.renewal-set/" + public_ref_hex(set_id); }

// `until_ms` as the manager takes it. Clamped: a store written before untilMs was bounded may hold
// one past what a time_point can.
std::chrono::system_clock::time_point until_point(int64_t until_ms) {
  return std::chrono::system_clock::time_point(std::chrono::milliseconds(std::clamp(until_ms, -kMaxUntilMs, kMaxUntilMs)));
}

}  // namespace

struct RenewalService::Impl {
  using Key = std::pair<std::string, LeaseId>;  // (landlord, lease id) of a member

  struct Member {
    uint64_t set_id = 0;
    int64_t until_ms = 0;
    int64_t granted_ms = 0;     // as in the store
    int64_t expiration_ms = 0;  // as in the store
  };
  struct Set {
    std::string holder;
    LeaseId lease_id = 0;
    std::set<Key> members;
  };

  explicit Impl(RenewalServiceOptions o, sqlite::Database d)
      : options(std::move(o)), db(std::move(d)), manager(options.manager) {}

  RenewalServiceOptions options;
  std::mutex mu;  // guards db, sets, set_of_lease, members, endpoint, stopped
  sqlite::Database db;
  std::map<uint64_t, Set> sets;
  // Changed under `mu` and `set_leases_mu` both; read under either. Every cancel and expiry of the
  // landlord asks whether its lease is a set's, and `mu` is held across fsyncs: those of other
  // leases must not wait for them.
  std::map<LeaseId, uint64_t> set_of_lease;
  mutable std::mutex set_leases_mu;
  std::map<Key, Member> members;
  // Every member by its `until`, soonest first: the sweeper's order.
  std::set<std::pair<int64_t, Key>> by_until;
  std::string endpoint;
  bool stopped = false;
  std::condition_variable sweep_wake;  // with `mu`: a member due sooner, or stop
  std::thread sweeper;                 // joined by stop()
  // Declared last: destroyed (its thread joined) first, while everything it calls back into lives.
  RenewalManager manager;

  // Reads the store and hands every member to the manager; those it refuses (more landlords than
  // it renews at, from a store written before that limit) go to `refused`, still members.
  Status load(std::vector<std::pair<HeldLease, Status>>& refused);
  void on_failure(const HeldLease& held, const Status& why);
  void on_renewed(std::span<const HeldLease> renewed);
  // Removes a set and its members from the store and the maps; returns the members to forget.
  std::vector<Key> drop_set_locked(uint64_t set_id);
  // Drops the sets whose lease the landlord no longer holds; returns the members to forget.
  std::vector<Key> drop_ended_sets_locked();
  // Stops renewing the members of dropped sets.
  void forget_locked(const std::vector<Key>& dropped);
  // Notes that `lease_id` is the lease of set `set_id`.
  void file_set_lease_locked(LeaseId lease_id, uint64_t set_id);
  // Files a member in `members`, its set and `by_until`, in place of the key's earlier filing.
  void file_member_locked(const Key& key, const Member& member);
  // Takes a member out of `members`, its set and `by_until` (not out of the store).
  void unfile_member_locked(std::map<Key, Member>::iterator it);
  // Members whose `until` passed (the manager dropped them then): the first kSweepChunk of them
  // leave the maps, and the store follows. Returns whether more are due.
  bool sweep_locked(int64_t now);
  // Deletes the store's members due by `upto` (indexed by until_ms).
  void delete_finished_rows_locked(int64_t upto);
  // Deletes one member's row from the store.
  Status delete_member_row_locked(const Key& key);
  // The sweeper thread: sleeps until the next member's `until`, then sweeps.
  void sweep_loop();
  Status create(proto::CreateSetParams::Reader p, proto::SetResult::Builder r);
  Status add(proto::AddParams::Reader p);
  Status remove(proto::RemoveParams::Reader p);
  Status list(proto::SetIdParams::Reader p, proto::LeaseList::Builder r);
};

Status RenewalService::Impl::load(std::vector<std::pair<HeldLease, Status>>& refused) {
  DJINN_RETURN_IF_ERROR(db.ensure_schema(kSchemaVersion, kSchema, "renewal store " + options.path));
  std::vector<std::pair<uint64_t, Set>> loaded;
  {
    auto st = db.prepare("SELECT id, holder, lease_id FROM renewal_set");
    if (!st.ok()) return st.status();
    for (;;) {
      auto row = st->step();
      if (!row.ok()) return row.status();
      if (!*row) break;
      loaded.emplace_back(static_cast<uint64_t>(st->column_int64(0)),
                          Set{st->column_text(1), static_cast<LeaseId>(st->column_int64(2)), {}});
    }
  }
  for (auto& [id, set] : loaded) {
    file_set_lease_locked(set.lease_id, id);
    sets.emplace(id, std::move(set));
  }
  // A set whose lease ended while the service was down was abandoned.
  drop_ended_sets_locked();
  delete_finished_rows_locked(wall_now_ms());
  auto st = db.prepare(
      "SELECT set_id, landlord, lease_id, resource, holder, kind, expiration_ms, granted_ms, renew_ms, until_ms "
      "FROM renewal_member");
  if (!st.ok()) return st.status();
  size_t resumed = 0;
  for (;;) {
    auto row = st->step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    uint64_t set_id = static_cast<uint64_t>(st->column_int64(0));
    auto set = sets.find(set_id);
    if (set == sets.end()) continue;  // left over from a dropped set
    HeldLease held;
    held.landlord = st->column_text(1);
    held.lease.id = static_cast<LeaseId>(st->column_int64(2));
    held.lease.resource = st->column_text(3);
    held.lease.holder = st->column_text(4);
    held.lease.kind = static_cast<Kind>(std::clamp<int64_t>(st->column_int64(5), 0, 4));
    held.lease.expiration_ms = st->column_int64(6);
    held.lease.granted_ms = st->column_int64(7);
    int64_t renew_ms = st->column_int64(8);
    int64_t until_ms = st->column_int64(9);
    Key key{held.landlord, held.lease.id};
    file_member_locked(key, Member{set_id, until_ms, held.lease.granted_ms, held.lease.expiration_ms});
    // Stored before renewal.add refused its endpoint (an inproc:// name): reported and dropped.
    if (Status bad = check_endpoint(held.landlord); !bad.ok()) {
      refused.emplace_back(std::move(held), std::move(bad));
      continue;
    }
    // The stored expiration is the one handed over, likely long renewed since: granted_ms 0 has
    // it renewed at once. Its last renewal, before our restart, granted at most the stored grant
    // (or what was asked, should the last change of grant not have reached the store), so the
    // lease may live that long from now: a landlord that comes back within that time keeps it.
    // renew_ms is a client's, and any positive number: bounded so the sum cannot overflow.
    constexpr int64_t kLongest = int64_t{1} << 52;
    int64_t longest = std::min(std::max({held.lease.granted_ms, renew_ms, options.manager.call_timeout.count()}), kLongest);
    held.lease.expiration_ms = std::max(held.lease.expiration_ms, wall_now_ms() + longest);
    held.lease.granted_ms = 0;
    if (Status tracked = manager.add(held, renew_ms, until_point(until_ms)); !tracked.ok()) {
      refused.emplace_back(std::move(held), std::move(tracked));
      continue;
    }
    ++resumed;
  }
  if (!sets.empty()) {
    DJINN_LOG(kInfo, "renewal") << "resumed " << sets.size() << " renewal sets, " << resumed << " leases";
  }
  return Status::Ok();
}

std::vector<RenewalService::Impl::Key> RenewalService::Impl::drop_set_locked(uint64_t set_id) {
  std::vector<Key> dropped;
  auto it = sets.find(set_id);
  if (it == sets.end()) return dropped;
  dropped.assign(it->second.members.begin(), it->second.members.end());
  for (const Key& key : dropped) {
    if (auto m = members.find(key); m != members.end()) unfile_member_locked(m);
  }
  {
    std::lock_guard leases(set_leases_mu);
    set_of_lease.erase(it->second.lease_id);
  }
  sets.erase(it);
  for (std::string_view sql : {"DELETE FROM renewal_member WHERE set_id = ?", "DELETE FROM renewal_set WHERE id = ?"}) {
    auto st = db.cached(sql);
    Status s = st.ok() ? (*st)->bind_all(set_id) : st.status();
    if (s.ok()) s = (*st)->run();
    // The maps already forgot the set; a row left behind is dropped at the next start.
    if (!s.ok()) DJINN_LOG(kWarn, "renewal") << "dropping renewal set " << set_id << ": " << s.to_string();
  }
  return dropped;
}

std::vector<RenewalService::Impl::Key> RenewalService::Impl::drop_ended_sets_locked() {
  std::vector<Key> dropped;
  for (auto it = sets.begin(); it != sets.end();) {
    uint64_t set_id = it->first;
    bool held = it->second.lease_id != 0 && options.landlord->find(it->second.lease_id);
    ++it;  // before drop_set_locked erases the set
    if (held) continue;
    DJINN_LOG(kInfo, "renewal") << "renewal set " << set_id << " dropped: its lease ended";
    std::vector<Key> keys = drop_set_locked(set_id);
    dropped.insert(dropped.end(), keys.begin(), keys.end());
  }
  return dropped;
}

void RenewalService::Impl::forget_locked(const std::vector<Key>& dropped) {
  // In the same hold of `mu` as the drop: a `renewal.add` of one of these to another set, coming
  // between the two, would otherwise be acknowledged and then no longer renewed.
  for (const auto& [landlord, id] : dropped) manager.remove(id, landlord);
}

void RenewalService::Impl::file_set_lease_locked(LeaseId lease_id, uint64_t set_id) {
  std::lock_guard leases(set_leases_mu);
  set_of_lease[lease_id] = set_id;
}

void RenewalService::Impl::file_member_locked(const Key& key, const Member& member) {
  if (auto old = members.find(key); old != members.end()) unfile_member_locked(old);
  members.emplace(key, member);
  by_until.emplace(member.until_ms, key);
  if (auto set = sets.find(member.set_id); set != sets.end()) set->second.members.insert(key);
  if (by_until.begin()->second == key) sweep_wake.notify_one();  // due before the one slept on
}

void RenewalService::Impl::unfile_member_locked(std::map<Key, Member>::iterator it) {
  by_until.erase({it->second.until_ms, it->first});
  if (auto set = sets.find(it->second.set_id); set != sets.end()) set->second.members.erase(it->first);
  members.erase(it);
}

bool RenewalService::Impl::sweep_locked(int64_t now) {
  size_t swept = 0;
  int64_t upto = 0;
  while (!by_until.empty() && by_until.begin()->first <= now && swept < kSweepChunk) {
    upto = by_until.begin()->first;
    unfile_member_locked(members.find(by_until.begin()->second));
    ++swept;
  }
  if (swept == 0) return false;
  // Rows due by `upto` that the maps still hold (the same `until`, past the chunk) go with these:
  // the next chunk finds nothing left of them in the store.
  delete_finished_rows_locked(upto);
  return !by_until.empty() && by_until.begin()->first <= now;
}

void RenewalService::Impl::delete_finished_rows_locked(int64_t upto) {
  auto st = db.cached("DELETE FROM renewal_member WHERE until_ms <= ?");
  Status s = st.ok() ? (*st)->bind_all(upto) : st.status();
  if (s.ok()) s = (*st)->run();
  if (!s.ok()) DJINN_LOG(kWarn, "renewal") << "removing finished renewals: " << s.to_string();
}

Status RenewalService::Impl::delete_member_row_locked(const Key& key) {
  DJINN_CRASH_POINT("renewal.member_row_deleting");
  auto st = db.cached("DELETE FROM renewal_member WHERE landlord = ? AND lease_id = ?");
  if (!st.ok()) return st.status();
  DJINN_RETURN_IF_ERROR((*st)->bind_all(key.first, key.second));
  return (*st)->run();
}

void RenewalService::Impl::sweep_loop() {
  name_this_thread("renewal-sweep");
  std::unique_lock lock(mu);
  while (!stopped) {
    int64_t now = wall_now_ms();
    if (sweep_locked(now)) {
      // More are due: the calls and reports waiting for the lock go first. A mutex is not fair, and
      // a yield on an idle core hands it to nobody: a short sleep lets a waiter take it.
      lock.unlock();
      std::this_thread::sleep_for(std::chrono::microseconds(20));
      lock.lock();
      continue;
    }
    // Capped: the wall clock may be stepped meanwhile, and a far `until` must not overflow the wait.
    int64_t next = by_until.empty() ? INT64_MAX : by_until.begin()->first;
    int64_t wait_ms = next == INT64_MAX ? 3'600'000 : std::clamp<int64_t>(next - now, 1, 3'600'000);
    sweep_wake.wait_for(lock, std::chrono::milliseconds(wait_ms));
  }
}

void RenewalService::Impl::on_failure(const HeldLease& held, const Status& why) {
  uint64_t set_id = 0;
  DJINN_CRASH_POINT("renewal.failure_reported");
  {
    std::lock_guard lock(mu);
    if (stopped) return;
    Key key{held.landlord, held.lease.id};
    auto it = members.find(key);
    if (it == members.end()) return;  // removed, or its set dropped, meanwhile: nobody to tell
    // Added again after the manager gave up on it (renewal.add, before this took `mu`): the
    // manager renews it afresh, and the failure was of the lease as it was before.
    if (manager.get(key.second, key.first)) return;
    set_id = it->second.set_id;
    unfile_member_locked(it);
    if (Status s = delete_member_row_locked(key); !s.ok()) {
      DJINN_LOG(kWarn, "renewal") << "forgetting a failed lease: " << s.to_string();
    }
  }
  if (!options.publisher) return;
  capnp::MallocMessageBuilder message;
  auto out = message.initRoot<proto::RenewalFailure>();
  out.setSetRef(public_ref(set_id));
  lease_to_event_proto(held.lease, held.landlord, out.initLease());
  out.setCode(static_cast<uint16_t>(why.code()));
  out.setMessage(why.message());
  options.publisher->publish(kFailedKind, public_ref_hex(set_id), message);
}

void RenewalService::Impl::on_renewed(std::span<const HeldLease> renewed) {
  std::lock_guard lock(mu);
  if (stopped) return;
  // A grant rarely changes from one renewal to the next: only a change is written, all of one
  // answer's in one transaction, so renewals cost no write of their own. So is an expiration
  // handed over later than the landlord's (a made-up one), which a restart would wait for.
  std::vector<std::pair<Member*, const HeldLease*>> changed;
  for (const HeldLease& held : renewed) {
    auto it = members.find(Key{held.landlord, held.lease.id});
    if (it == members.end()) continue;
    const Member& m = it->second;
    if (m.granted_ms != held.lease.granted_ms || m.expiration_ms > held.lease.expiration_ms) {
      changed.emplace_back(&it->second, &held);
    }
  }
  if (changed.empty()) return;
  Status s = [&]() -> Status {
    auto tx = sqlite::Transaction::begin(db);
    if (!tx.ok()) return tx.status();
    for (const auto& [member, held] : changed) {
      auto st = db.cached(
          "UPDATE renewal_member SET granted_ms = ?, expiration_ms = min(expiration_ms, ?) WHERE landlord = ? AND lease_id = ?");
      if (!st.ok()) return st.status();
      DJINN_RETURN_IF_ERROR(
          (*st)->bind_all(held->lease.granted_ms, held->lease.expiration_ms, held->landlord, held->lease.id));
      DJINN_RETURN_IF_ERROR((*st)->run());
    }
    return tx->commit();
  }();
  if (!s.ok()) {
    DJINN_LOG(kWarn, "renewal") << "noting renewed grants: " << s.to_string();
    return;  // left as stored: the next renewal tries again
  }
  for (auto& [member, held] : changed) {
    member->granted_ms = held->lease.granted_ms;
    member->expiration_ms = std::min(member->expiration_ms, held->lease.expiration_ms);
  }
}

Status RenewalService::Impl::create(proto::CreateSetParams::Reader p, proto::SetResult::Builder r) {
  std::string holder = text_of(p.getHolder());
  DJINN_RETURN_IF_ERROR(check_text(holder, options.landlord->policy().max_holder_bytes, "holder"));
  DJINN_RETURN_IF_ERROR(check_duration(p.getDurationMs(), "renewal set lease duration"));
  uint64_t set_id = 0;
  std::string where;
  {
    std::lock_guard lock(mu);
    do {
      set_id = random_secret_id();  // a capability: whoever knows it may list and change the set
    } while (sets.count(set_id));
    auto st = db.cached("INSERT INTO renewal_set(id, holder, lease_id) VALUES (?, ?, 0)");
    if (!st.ok()) return st.status();
    DJINN_RETURN_IF_ERROR((*st)->bind_all(set_id, holder));
    DJINN_RETURN_IF_ERROR((*st)->run());
    where = endpoint;
  }
  // Granted without the lock: the engine reports the grant on this thread, into on_lease_event.
  auto lease = options.landlord->grant(GrantRequest{set_resource(set_id), holder, Kind::kShared, p.getDurationMs(), {}});
  std::lock_guard lock(mu);
  if (!lease.ok()) {
    if (auto st = db.cached("DELETE FROM renewal_set WHERE id = ?"); st.ok()) {
      if ((*st)->bind_all(set_id).ok()) (void)(*st)->run();
    }
    return lease.status();
  }
  auto st = db.cached("UPDATE renewal_set SET lease_id = ? WHERE id = ?");
  if (!st.ok()) return st.status();
  DJINN_RETURN_IF_ERROR((*st)->bind_all(lease->id, set_id));
  DJINN_RETURN_IF_ERROR((*st)->run());
  sets[set_id] = Set{holder, lease->id, {}};
  file_set_lease_locked(lease->id, set_id);
  // Its lease may have ended while it was granted without the lock (a duration of 1 ms, a slow
  // disk), and its event then found no set to drop. The set is dropped now, as at any such event.
  if (!options.landlord->find(lease->id)) {
    DJINN_LOG(kInfo, "renewal") << "renewal set " << set_id << " dropped: its lease ended as it was granted";
    drop_set_locked(set_id);  // it has no members yet: nothing for the manager to forget
  }
  r.setSetId(set_id);
  lease_to_proto(*lease, where, r.initSetLease());
  return Status::Ok();
}

Status RenewalService::Impl::add(proto::AddParams::Reader p) {
  auto lease = lease_from_proto(p.getLease());
  if (!lease.ok()) return lease.status();
  HeldLease held{std::move(*lease), text_of(p.getLease().getLandlord())};
  if (held.lease.id == 0) return invalid_argument("lease id 0: lease ids are nonzero (use the id a grant returned)");
  DJINN_RETURN_IF_ERROR(check_endpoint(held.landlord));
  // The text fields are only kept to report a failure; bounded so a set cannot hoard memory.
  if (held.lease.resource.size() > 4096 || held.lease.holder.size() > 4096) {
    return invalid_argument("lease resource/holder over 4096 bytes: send the lease as the landlord returned it");
  }
  DJINN_RETURN_IF_ERROR(check_duration(p.getRenewMs(), "renewal duration"));
  if (held.lease.expiration_ms == kNeverExpires) {
    return invalid_argument("lease " + std::to_string(held.lease.id) + " never expires (expirationMs " +
                            std::to_string(kNeverExpires) + "): it needs no renewal");
  }
  int64_t now = wall_now_ms();
  int64_t until_ms = p.getUntilMs();
  if (until_ms <= now) {
    return invalid_argument("untilMs " + std::to_string(until_ms) + " is not in the future (now " + std::to_string(now) +
                            "): renew until a later time");
  }
  if (until_ms > kMaxUntilMs) {
    return invalid_argument("untilMs " + std::to_string(until_ms) + " is past the latest time a renewal can run to (" +
                            std::to_string(kMaxUntilMs) + ", in the year 2262): send that to renew until removed");
  }
  std::lock_guard lock(mu);
  auto set = sets.find(p.getSetId());
  if (set == sets.end()) {
    return not_found("renewal set " + std::to_string(p.getSetId()) + " not found: create one with renewal.create");
  }
  Key key{held.landlord, held.lease.id};
  // A member past its `until` is done, whether or not the sweeper has taken it out yet.
  if (auto it = members.find(key); it != members.end() && it->second.set_id != set->first && it->second.until_ms > now) {
    // The other set is not named: its id would let the caller list and change it.
    return already_exists("lease " + std::to_string(key.second) + " at " + key.first +
                          " is already in another renewal set: remove it there first");
  } else if (it == members.end() && members.size() >= kMaxMembers) {
    return resource_exhausted("the renewal service already renews " + std::to_string(members.size()) + " leases (the limit)");
  }
  auto st = db.cached(
      "INSERT OR REPLACE INTO renewal_member(set_id, landlord, lease_id, resource, holder, kind, expiration_ms, "
      "granted_ms, renew_ms, until_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
  if (!st.ok()) return st.status();
  DJINN_RETURN_IF_ERROR((*st)->bind_all(set->first, held.landlord, held.lease.id, held.lease.resource,
                                        held.lease.holder, static_cast<int64_t>(held.lease.kind),
                                        held.lease.expiration_ms, held.lease.granted_ms, p.getRenewMs(), until_ms));
  DJINN_RETURN_IF_ERROR((*st)->run());
  Member member{set->first, until_ms, held.lease.granted_ms, held.lease.expiration_ms};
  // The caller's copy of the lease may say anything (an expiration and a grant hours away would
  // have it renewed hours late): renewed at once, the landlord's answer says what it really is,
  // and a landlord that never answers has it reported failed after the patience, not at that
  // expiration (a far one kept a landlord slot of the manager's 64 for nothing).
  held.lease.granted_ms = 0;
  if (Status tracked = manager.add(held, p.getRenewMs(), until_point(until_ms), options.patience); !tracked.ok()) {
    // Its landlord would be one too many. A lease the manager does not renew is not kept: a
    // member replaced here was no longer renewed either (only a lease the manager has dropped
    // can be refused).
    if (Status s = delete_member_row_locked(key); !s.ok()) {
      DJINN_LOG(kWarn, "renewal") << "forgetting a refused lease: " << s.to_string();
    }
    if (auto it = members.find(key); it != members.end()) unfile_member_locked(it);
    return tracked;
  }
  file_member_locked(key, member);
  return Status::Ok();
}

Status RenewalService::Impl::remove(proto::RemoveParams::Reader p) {
  Key key{text_of(p.getLandlord()), p.getLeaseId()};
  std::lock_guard lock(mu);
  auto it = members.find(key);
  if (it == members.end() || it->second.set_id != p.getSetId() || it->second.until_ms <= wall_now_ms()) {
    return not_found("lease " + std::to_string(key.second) + " at " + key.first + " is not in renewal set " +
                     std::to_string(p.getSetId()));
  }
  // Its row first: a member whose row stays (the delete failed) stays renewed and listed, and the
  // caller may remove it again.
  if (DJINN_FAIL_POINT("renewal.remove.delete_failed")) return unavailable("renewal.remove.delete_failed (injected)");
  DJINN_RETURN_IF_ERROR(delete_member_row_locked(key));
  unfile_member_locked(it);
  manager.remove(key.second, key.first);
  return Status::Ok();
}

Status RenewalService::Impl::list(proto::SetIdParams::Reader p, proto::LeaseList::Builder r) {
  std::vector<HeldLease> out;
  {
    std::lock_guard lock(mu);
    int64_t now = wall_now_ms();
    auto set = sets.find(p.getSetId());
    if (set == sets.end()) {
      return not_found("renewal set " + std::to_string(p.getSetId()) + " not found: it was never created or its lease ended");
    }
    r.setEventSeq(options.publisher ? options.publisher->last_seq(kFailedKind) : 0);
    const std::set<Key>& all = set->second.members;
    auto it = all.begin();
    if (p.hasAfterLandlord() && p.getAfterLandlord().size() > 0) {
      it = all.upper_bound(Key{text_of(p.getAfterLandlord()), p.getAfterLeaseId()});
    }
    size_t bytes = 0;
    for (; it != all.end(); ++it) {
      if (members.at(*it).until_ms <= now) continue;  // done, left to the sweeper
      auto held = manager.get(it->second, it->first);
      if (!held) continue;
      bytes += wire_bytes(held->lease, held->landlord.size());
      if (!out.empty() && bytes > kMaxListReplyBytes) {
        r.setMore(true);
        break;
      }
      out.push_back(std::move(*held));
    }
    r.setTotal(all.size());
  }
  auto list = r.initLeases(static_cast<unsigned>(out.size()));
  for (size_t i = 0; i < out.size(); ++i) lease_to_proto(out[i].lease, out[i].landlord, list[static_cast<unsigned>(i)]);
  return Status::Ok();
}

RenewalService::RenewalService(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RenewalService::~RenewalService() { stop(); }

Result<std::unique_ptr<RenewalService>> RenewalService::open(RenewalServiceOptions options) {
  if (!options.landlord) return invalid_argument("renewal service needs a landlord for its sets' leases");
  auto db = sqlite::Database::open(options.path.empty() ? ":memory:" : options.path);
  if (!db.ok()) return Status(db.status().code(), "renewal store: " + db.status().message());
  auto impl = std::make_unique<Impl>(std::move(options), std::move(*db));
  Impl* im = impl.get();
  im->manager.on_failure([im](const HeldLease& held, const Status& why) { im->on_failure(held, why); });
  im->manager.on_renewed([im](std::span<const HeldLease> renewed) { im->on_renewed(renewed); });
  std::vector<std::pair<HeldLease, Status>> refused;
  {
    std::lock_guard lock(im->mu);
    if (Status st = im->load(refused); !st.ok()) return Status(st.code(), "renewal store: " + st.message());
  }
  // Reported as leases that could not be renewed, and dropped, as any other.
  for (const auto& [held, why] : refused) im->on_failure(held, why);
  im->sweeper = std::thread([im] { im->sweep_loop(); });
  return std::unique_ptr<RenewalService>(new RenewalService(std::move(impl)));
}

void RenewalService::register_methods(rpc::Server& server) {
  Impl* im = impl_.get();
  const rpc::MethodOptions options{.min_role = security::Role::kClient, .blocking = true};
  server.method<proto::CreateSetParams, proto::SetResult>(
      "renewal.create",
      [im](const rpc::CallContext&, proto::CreateSetParams::Reader p, proto::SetResult::Builder r) {
        return im->create(p, r);
      },
      options);
  server.method<proto::AddParams, proto::Empty>(
      "renewal.add",
      [im](const rpc::CallContext&, proto::AddParams::Reader p, proto::Empty::Builder) { return im->add(p); },
      options);
  server.method<proto::RemoveParams, proto::Empty>(
      "renewal.remove",
      [im](const rpc::CallContext&, proto::RemoveParams::Reader p, proto::Empty::Builder) { return im->remove(p); },
      options);
  server.method<proto::SetIdParams, proto::LeaseList>(
      "renewal.members",
      [im](const rpc::CallContext&, proto::SetIdParams::Reader p, proto::LeaseList::Builder r) { return im->list(p, r); },
      options);
}

void RenewalService::set_endpoint(std::string endpoint) {
  std::lock_guard lock(impl_->mu);
  impl_->endpoint = std::move(endpoint);
}

void RenewalService::on_lease_event(const LeaseEvent& event) {
  if (event.type != EventType::kCancelled && event.type != EventType::kExpired) return;
  {
    std::lock_guard leases(impl_->set_leases_mu);
    if (!impl_->set_of_lease.count(event.lease.id)) return;  // most leases are no set's
  }
  std::lock_guard lock(impl_->mu);
  auto it = impl_->set_of_lease.find(event.lease.id);
  if (it == impl_->set_of_lease.end()) return;
  DJINN_LOG(kInfo, "renewal") << "renewal set " << it->second << " dropped: its lease was "
                              << (event.type == EventType::kExpired ? "not renewed" : "cancelled");
  std::vector<Impl::Key> dropped = impl_->drop_set_locked(it->second);
  DJINN_CRASH_POINT("renewal.set_dropped");
  impl_->forget_locked(dropped);
}

void RenewalService::drop_ended_sets() {
  std::lock_guard lock(impl_->mu);
  impl_->forget_locked(impl_->drop_ended_sets_locked());
}

void RenewalService::stop() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopped = true;
  }
  impl_->sweep_wake.notify_all();
  if (impl_->sweeper.joinable()) impl_->sweeper.join();
  impl_->manager.stop();
}

}  // namespace djinn::lease::internal
