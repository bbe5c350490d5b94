// The landlord engine (DESIGN §4): negotiation, kinds and conflicts, FIFO waiters, expiry on a
// monotonic clock by one expiry thread, and persistence of every acknowledged lease in SQLite.
// Leases live in a compact slot array (interned names, intrusive lists per holder and resource) so
// a million of them fit in well under 200 bytes each.
#include "djinn/lease/landlord.h"

#include <pthread.h>
#include <sodium.h>
#include <sqlite3.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <future>
#include <limits>
#include <list>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <utility>

#include "djinn/core/digest.h"
#include "djinn/core/fault.h"
#include "djinn/core/log.h"
#include "djinn/core/sqlite.h"
#include "djinn/core/thread_name.h"
#include "landlord_tables.h"

namespace djinn::lease {

std::string_view kind_name(Kind kind) {
  switch (kind) {
    case Kind::kShared: return "shared";
    case Kind::kExclusive: return "exclusive";
    case Kind::kInterest: return "interest";
    case Kind::kSharedCopy: return "shared-copy";
    case Kind::kExclusiveCopy: return "exclusive-copy";
  }
  return "unknown";
}

std::optional<Kind> parse_kind(std::string_view text) {
  if (text == "shared") return Kind::kShared;
  if (text == "exclusive") return Kind::kExclusive;
  if (text == "interest") return Kind::kInterest;
  if (text == "shared-copy" || text == "shared_copy" || text == "sharedCopy") return Kind::kSharedCopy;
  if (text == "exclusive-copy" || text == "exclusive_copy" || text == "exclusiveCopy") {
    return Kind::kExclusiveCopy;
  }
  return std::nullopt;
}

namespace {

// The compact level a kind stands at: plain shared behaves as shared copy, plain exclusive as
// exclusive copy (landlord.h).
int level(Kind kind) {
  switch (kind) {
    case Kind::kInterest: return 0;
    case Kind::kShared:
    case Kind::kSharedCopy: return 1;
    case Kind::kExclusive:
    case Kind::kExclusiveCopy: return 2;
  }
  return 2;
}

bool levels_compatible(int held, int requested) {
  return held == 0 || requested == 0 || (held == 1 && requested == 1);
}

}  // namespace

bool compatible(Kind held, Kind requested) { return levels_compatible(level(held), level(requested)); }

std::string_view event_name(EventType type) {
  switch (type) {
    case EventType::kGranted: return "granted";
    case EventType::kRenewed: return "renewed";
    case EventType::kCancelled: return "cancelled";
    case EventType::kExpired: return "expired";
    case EventType::kConflict: return "conflict";
  }
  return "unknown";
}

namespace {

using internal::kNone;

constexpr int64_t kNoDeadline = std::numeric_limits<int64_t>::max();  // FOREVER leases
// Marks a lease popped for expiry, so a second heap entry with the same deadline is seen as stale.
constexpr int64_t kExpiring = std::numeric_limits<int64_t>::min();
// Leases removed per lock hold and per SQLite transaction during expiry: 10,000 leases due in
// the same millisecond become ten short holds, between which requests go on.
constexpr size_t kExpiryChunk = 1000;
// Ids remembered after removal, so renewing one says "expired" or "cancelled", not just unknown.
constexpr size_t kRecentlyRemoved = 4096;
// Version 2 added the renewal journal; version 3 keys lease rows by write order (seq), not by id;
// version 4 stores a grant's idempotency key (its digest) with the lease.
constexpr int64_t kSchemaVersion = 4;
// The renewal journal is folded into the lease rows once it holds this many renewals, or as many
// as there are live leases if that is more: each fold then rewrites a page of lease rows for many
// renewals rather than one.
constexpr size_t kFoldMinimum = 16384;
// Lease rows rewritten per lock hold and per SQLite transaction while folding, in id order.
constexpr size_t kFoldChunk = 512;
// Records read per lock hold while the deadline heap is rebuilt: at a million leases a rebuild
// under one hold took tens of milliseconds, during which every find() and lease.get waited.
constexpr size_t kRebuildChunk = 16384;
constexpr int64_t kNsPerMs = 1'000'000;
// Start-up logs how far its load has got every this many leases.
constexpr uint64_t kLoadProgressRows = 1'000'000;

constexpr std::string_view kCreateSchema =
    // Rows are appended in grant order and found by seq, which the landlord keeps with each lease
    // in memory. Keyed by the random ids, every grant inserted into a random page of the table:
    // a page per grant into the WAL, and B-tree splits whose page shuffling (through the lock-byte
    // page's number) makes SQLite's page cache scan all its pages at the next commit.
    "CREATE TABLE IF NOT EXISTS lease("
    "  seq INTEGER PRIMARY KEY,"
    "  id INTEGER NOT NULL,"           // the 64-bit id, stored as its signed twin
    "  resource TEXT NOT NULL,"
    "  holder TEXT NOT NULL,"
    "  kind INTEGER NOT NULL,"
    "  expiration_ms INTEGER NOT NULL,"  // Unix ms, wall clock; INT64_MAX = never
    "  granted_ms INTEGER NOT NULL,"
    "  grant_key BLOB);"  // 16-byte digest of the grant's idempotency key, or NULL
    // Renewals, appended in commit order (seq); folded into lease rows in bulk, replayed on open.
    // A renewal names its lease's row and id: SQLite may give a deleted last row's seq to the next
    // grant, and a renewal of the old lease must not land on the new one.
    "CREATE TABLE IF NOT EXISTS renewal("
    "  seq INTEGER PRIMARY KEY,"
    "  row INTEGER NOT NULL,"
    "  id INTEGER NOT NULL,"
    "  expiration_ms INTEGER NOT NULL,"
    "  granted_ms INTEGER NOT NULL)";
constexpr std::string_view kInsertLease =
    "INSERT INTO lease(id, resource, holder, kind, expiration_ms, granted_ms, grant_key) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
constexpr std::string_view kUpgradeV3ToV4 = "ALTER TABLE lease ADD COLUMN grant_key BLOB";
// Folds, cancels and expiries rewrite rows scattered over the table, and each dirty page goes
// whole into the WAL: 1 KiB pages write a quarter of what SQLite's default 4 KiB pages do.
constexpr int kPageSize = 1024;
// Grants and folds write rows anywhere in the table: a cache that holds the hot part of it (the
// B-tree's inner pages at least) spares reading pages back from the OS on every write.
constexpr int kWalAutocheckpoint = 8192;
// A renewal appends to the journal, whose pages fill in order: dozens of renewals share one page
// written to the WAL, where updating each lease row in place dirtied a page per renewal.
constexpr std::string_view kInsertRenewal =
    "INSERT INTO renewal(row, id, expiration_ms, granted_ms) VALUES (?1, ?2, ?3, ?4)";
constexpr std::string_view kUpdateLease =
    "UPDATE lease SET expiration_ms = ?2, granted_ms = ?3 WHERE seq = ?1";
constexpr std::string_view kDropFoldedRenewals = "DELETE FROM renewal WHERE seq <= ?1";
// On open: the last renewal of each lease wins (SQLite takes the bare columns from the max row).
constexpr std::string_view kReplayRenewals =
    "UPDATE lease SET expiration_ms = r.expiration_ms, granted_ms = r.granted_ms "
    "FROM (SELECT row, id, expiration_ms, granted_ms, max(seq) FROM renewal GROUP BY row, id) AS r "
    "WHERE lease.seq = r.row AND lease.id = r.id;"
    "DELETE FROM renewal;";
// From schema 1 or 2 (rows keyed by id; version 2's journal names ids): the journal is replayed,
// then the rows are copied into the version-3 table, in id order.
constexpr std::string_view kReplayRenewalsV2 =
    "UPDATE lease SET expiration_ms = r.expiration_ms, granted_ms = r.granted_ms "
    "FROM (SELECT id, expiration_ms, granted_ms, max(seq) FROM renewal GROUP BY id) AS r "
    "WHERE lease.id = r.id;";
constexpr std::string_view kUpgradeToV3 =
    "DROP TABLE IF EXISTS renewal;"
    "ALTER TABLE lease RENAME TO lease_v2;";
constexpr std::string_view kCopyV2Rows =
    "INSERT INTO lease(id, resource, holder, kind, expiration_ms, granted_ms) "
    "SELECT id, resource, holder, kind, expiration_ms, granted_ms FROM lease_v2 ORDER BY id;"
    "DROP TABLE lease_v2;";
constexpr std::string_view kDeleteLease = "DELETE FROM lease WHERE seq = ?1";
constexpr std::string_view kSelectLeases =
    "SELECT id, resource, holder, kind, expiration_ms, granted_ms, seq, grant_key FROM lease";

// The kind rides in the top bits of a record's holder index, which keeps a record at 64 bytes
// (a separate byte would pad it to 72). Bounds the number of distinct holders, hence of leases.
constexpr uint32_t kKindShift = 28;
constexpr uint32_t kHolderMask = (1u << kKindShift) - 1;
constexpr size_t kMaxLeases = kHolderMask - 1;

// One lease in memory: 64 bytes. Names are interned; the lists of a holder's and a resource's
// leases run through the records themselves (slot indices), so no per-lease node is allocated.
struct Record {
  LeaseId id = 0;                // 0: a free slot (ids are never 0)
  int64_t deadline_ns = 0;       // steady clock; kNoDeadline for FOREVER
  int64_t expiration_ms = 0;     // wall clock, as persisted and reported
  int64_t granted_ms = 0;
  uint32_t resource = kNone;
  uint32_t holder_kind = kNone;  // holder index | kind << kKindShift
  uint32_t res_prev = kNone;
  uint32_t res_next = kNone;     // also chains free slots
  uint32_t hol_prev = kNone;
  uint32_t hol_next = kNone;
  int64_t row = 0;               // its row (seq) in the lease table; 0 without a file

  uint32_t holder() const { return holder_kind & kHolderMask; }
  Kind kind() const { return static_cast<Kind>(holder_kind >> kKindShift); }
};
static_assert(sizeof(Record) == 64);

struct HeapEntry {
  int64_t deadline_ns;
  LeaseId id;
};
struct LaterFirst {  // makes std::push_heap a min-heap on deadlines
  bool operator()(const HeapEntry& a, const HeapEntry& b) const { return a.deadline_ns > b.deadline_ns; }
};

struct Waiter {
  GrantRequest request;
  int64_t deadline_ns;
  uint64_t ticket;  // in queueing order: tells apart waits that end at the same time
  std::function<void(Result<Lease>)> done;
};
using WaitQueue = std::list<Waiter>;  // a list: a wait that ends leaves from anywhere in its queue

int64_t saturating_add(int64_t a, int64_t b) {
  if (b > 0 && a > std::numeric_limits<int64_t>::max() - b) return std::numeric_limits<int64_t>::max() - 1;
  return a + b;
}

int64_t add_ms(int64_t now_ns, int64_t ms) {
  if (ms > (std::numeric_limits<int64_t>::max() - 1) / kNsPerMs) return kNoDeadline - 1;
  return saturating_add(now_ns, ms * kNsPerMs);
}

std::string quoted(std::string_view text) {
  std::string out = "'";
  out.append(text);
  out += "'";
  return out;
}

// Names the leases in the way by their refs, which the refused caller may not use to cancel
// them: "exclusive lease ref 1f0c... held by 'app-1', shared lease ref ... held by ...".
std::string describe_in_way(const std::vector<Lease>& in_way) {
  std::string out;
  size_t shown = std::min<size_t>(in_way.size(), 3);
  for (size_t i = 0; i < shown; ++i) {
    if (i) out += ", ";
    out += std::string(kind_name(in_way[i].kind)) + " lease ref " + public_ref_hex(in_way[i].id) +
           " held by " + quoted(in_way[i].holder);
  }
  if (in_way.size() > shown) out += " and " + std::to_string(in_way.size() - shown) + " more";
  return out;
}

Status validate_name(std::string_view what, std::string_view text, size_t max_bytes) {
  if (text.empty()) {
    return invalid_argument("lease " + std::string(what) + " is empty: must be 1.." +
                            std::to_string(max_bytes) + " bytes");
  }
  if (text.size() > max_bytes) {
    return invalid_argument("lease " + std::string(what) + " of " + std::to_string(text.size()) +
                            " bytes: must be at most " + std::to_string(max_bytes));
  }
  return Status::Ok();
}

// Negotiation (DESIGN §4): ANY takes the default; FOREVER only where the policy allows it (else
// PERMISSION_DENIED, nothing granted); a positive request is granted up to the maximum and raised
// to the minimum when below it (a landlord may grant other than asked, as in Jini; the holder
// sees what it got in granted_ms). Zero and other negative values are refused.
Result<int64_t> negotiate(const Policy& policy, int64_t requested) {
  int64_t min = policy.min_duration.count();
  int64_t max = policy.max_duration.count();
  if (requested == kDurationAny) return std::clamp<int64_t>(policy.default_duration.count(), min, max);
  if (requested == kDurationForever) {
    if (policy.allow_forever) return kDurationForever;
    return permission_denied("lease duration FOREVER (-2): not allowed by this landlord's policy "
                             "(at most " + std::to_string(max) + " ms)");
  }
  if (requested <= 0) {
    return invalid_argument("lease duration " + std::to_string(requested) +
                            " ms: must be > 0, ANY (-1) or FOREVER (-2)");
  }
  return std::clamp<int64_t>(requested, min, max);
}

Status validate_policy(const Policy& p) {
  if (p.min_duration.count() <= 0 || p.default_duration < p.min_duration ||
      p.max_duration < p.default_duration) {
    return invalid_argument("landlord policy: need 0 < min_duration <= default_duration <= "
                            "max_duration, got " + std::to_string(p.min_duration.count()) + ", " +
                            std::to_string(p.default_duration.count()) + ", " +
                            std::to_string(p.max_duration.count()) + " ms");
  }
  if (p.max_resource_bytes == 0 || p.max_holder_bytes == 0) {
    return invalid_argument("landlord policy: max_resource_bytes and max_holder_bytes must be > 0");
  }
  return Status::Ok();
}

}  // namespace

struct Landlord::Impl {
  // What a grant attempt found: decided (granted, or refused for a reason other than a conflict),
  // or blocked by held leases and/or by incompatible requests already waiting.
  struct Attempt {
    std::optional<Result<Lease>> result;
    bool repeat = false;  // result is the lease an earlier grant with the same key got
    std::vector<Lease> in_way;
    std::vector<std::string> waiting;  // holders queued ahead with an incompatible kind
  };

  LandlordOptions options;

  // Serializes every change (grant, renew, cancel, expiry, waiter hand-over): held across the
  // SQLite write and the in-memory update, so memory and file change in the same order, while
  // readers (find, queries) only take mutex_ and never wait for an fsync. Guards db_ and db_sync_.
  // Lock order: write_mutex_ before mutex_.
  std::mutex write_mutex_;
  // Requests blocked on write_mutex_. std::mutex is not fair: between two expiry chunks the
  // expiry thread would take it straight back, so it steps aside while this is nonzero.
  std::atomic<int> requests_waiting_{0};
  std::optional<sqlite::Database> db_;
  sqlite::Sync db_sync_ = sqlite::Sync::kFull;
  // Frames in the write-ahead log after the last commit, as its WAL hook counts them; and whether
  // the commit under way is made by a caller that must not wait (try_renew_batch), which leaves
  // the checkpoint to the next commit. Guarded by write_mutex_, like every commit.
  int wal_frames_ = 0;
  bool commit_must_not_wait_ = false;
  // A checkpoint copied the whole log: the next commit starts it over, writing and syncing its
  // header, so that commit must be one that may wait.
  bool wal_restart_due_ = false;
  // Leases renewed since the last fold (repeats included), and the journal's last seq.
  std::vector<LeaseId> journaled_;
  int64_t journal_seq_ = 0;

  // The fold of the renewal journal under way, a step per call of expire_due (fold_step), so
  // that leases go on expiring while a large journal is folded.
  struct Fold {
    bool active = false;
    std::vector<LeaseId> ids;  // the leases renewed before it began, in row order
    size_t next = 0;           // ids[0, next) are written
    int64_t upto = 0;          // the journal's last seq when it began: the rows it drops
  };
  std::mutex fold_mutex_;  // guards fold_; held through a step (expire_due may run on a test's thread)
  Fold fold_;

  // Guards the in-memory state below.
  mutable std::mutex mutex_;
  std::condition_variable wake_;  // the expiry thread sleeps on it
  std::vector<Record> slots_;
  uint32_t free_slot_ = kNone;
  internal::IndexTable ids_;  // lease id -> slot
  internal::StringPool resources_;
  internal::StringPool holders_;
  std::vector<HeapEntry> deadlines_;  // min-heap; entries of renewed or removed leases are stale
  size_t timed_live_ = 0;             // live leases with a deadline (not FOREVER)
  // Stale entries outnumber live ones: the expiry step rebuilds the heap (rebuild_deadlines), a
  // chunk of records per lock hold, off the threads that renew. Entries pushed meanwhile are also
  // kept aside, for the heap that replaces this one.
  bool rebuild_wanted_ = false;
  bool rebuilding_ = false;
  std::vector<HeapEntry> pushed_while_rebuilding_;
  std::unordered_map<std::string, WaitQueue> waiters_;  // FIFO per resource
  // Every queued request by the end of its wait (deadline, ticket): the next wait to end is the
  // first, and the ones due are found without walking the queues.
  std::map<std::pair<int64_t, uint64_t>, WaitQueue::iterator> wait_ends_;
  uint64_t next_ticket_ = 0;
  std::set<std::string> retry_;       // resources freed up that have waiters
  std::array<LeaseId, 64> id_pool_{};  // random ids not handed out yet: the last id_pool_left_
  size_t id_pool_left_ = 0;
  std::unordered_map<LeaseId, bool> recent_;  // removed id -> expired (else cancelled)
  // The idempotency keys of the last kRememberedGrantKeys grants that had one, oldest first.
  struct GrantKey {
    LeaseId id;
    uint64_t generation;  // which filing in grant_key_order_ is this key's latest
  };
  std::unordered_map<Digest128, GrantKey, Digest128Hash> grant_keys_;
  std::deque<std::pair<Digest128, uint64_t>> grant_key_order_;
  uint64_t grant_key_generation_ = 0;
  std::deque<LeaseId> recent_order_;
  int64_t sleeping_until_ = kExpiring;  // the expiry thread's wake-up; kExpiring while awake
  bool fold_wanted_ = false;            // the journal is due to be folded (expiry thread's job)
  bool folding_ = false;                // a fold is under way: the expiry thread stays awake
  bool stopping_ = false;

  std::thread expiry_thread_;

  // write_mutex_ taken for a caller's request, which goes ahead of pending expiry chunks.
  class RequestLock {
   public:
    explicit RequestLock(Impl& impl) {
      ++impl.requests_waiting_;
      lock_ = std::unique_lock(impl.write_mutex_);
      --impl.requests_waiting_;
    }

   private:
    std::unique_lock<std::mutex> lock_;
  };

  explicit Impl(LandlordOptions opts) : options(std::move(opts)) {
    if (!options.clocks.monotonic) options.clocks.monotonic = [] { return std::chrono::steady_clock::now(); };
    if (!options.clocks.wall_ms) {
      options.clocks.wall_ms = [] {
        return std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::system_clock::now().time_since_epoch())
            .count();
      };
    }
  }

  int64_t now_ns() const {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(options.clocks.monotonic().time_since_epoch())
        .count();
  }
  int64_t wall_ms() const { return options.clocks.wall_ms(); }

  // ---- in-memory state (mutex_ held) ----

  uint64_t hash_of_slot(uint32_t slot) const { return internal::mix64(slots_[slot].id); }

  uint32_t slot_of(LeaseId id) const {
    if (id == 0) return kNone;
    return ids_.find(internal::mix64(id), [&](uint32_t slot) { return slots_[slot].id == id; });
  }

  Lease to_lease(uint32_t slot) const {
    const Record& r = slots_[slot];
    return Lease{r.id, resources_[r.resource].text, holders_[r.holder()].text, r.kind(), r.expiration_ms,
                 r.granted_ms, r.deadline_ns};
  }

  // A fresh random id: ids are capabilities on the wire, so they must not be guessable from one
  // another. A 64-bit collision with a live id is retried; one with an id that lived before is
  // as likely as guessing it, and nothing extra is persisted to rule it out.
  LeaseId new_id_locked() {
    for (;;) {
      // Drawn 64 at a time: one getrandom per id showed in every batch of grants.
      if (id_pool_left_ == 0) {
        randombytes_buf(id_pool_.data(), sizeof id_pool_);
        id_pool_left_ = id_pool_.size();
      }
      LeaseId id = id_pool_[--id_pool_left_];
      if (id != 0 && slot_of(id) == kNone) return id;
    }
  }

  // The heap's size at which it is due to be rebuilt: stale entries (renewals, cancels) outnumber
  // live ones.
  size_t rebuild_threshold_locked() const { return 2 * timed_live_ + 4096; }
  // Past this the heap is rebuilt by whoever pushes, if it may wait (try_renew_batch declines
  // instead): the expiry step has not kept up, or nothing runs it (an injected clock). Twice the
  // threshold's share of live leases, and room for bursts of renewals meanwhile.
  size_t heap_limit_locked() const { return 4 * timed_live_ + 65536; }

  // Requires write_mutex_ (for commit_must_not_wait_), except while opening.
  void push_deadline_locked(LeaseId id, int64_t deadline_ns) {
    deadlines_.push_back({deadline_ns, id});
    std::push_heap(deadlines_.begin(), deadlines_.end(), LaterFirst{});
    if (rebuilding_) {
      pushed_while_rebuilding_.push_back({deadline_ns, id});
    } else if (deadlines_.size() > heap_limit_locked() && !commit_must_not_wait_) {
      rebuild_deadlines_now_locked();
    } else if (deadlines_.size() > rebuild_threshold_locked() && !rebuild_wanted_) {
      rebuild_wanted_ = true;
      wake_.notify_one();
    }
    if (deadline_ns < sleeping_until_) wake_.notify_one();
  }

  // Appends the deadline of every timed live lease among the records in [begin, end).
  void collect_deadlines_locked(size_t begin, size_t end, std::vector<HeapEntry>& out) const {
    for (size_t i = begin; i < end; ++i) {
      const Record& r = slots_[i];
      if (r.id != 0 && r.deadline_ns != kNoDeadline && r.deadline_ns != kExpiring) out.push_back({r.deadline_ns, r.id});
    }
  }

  // The whole rebuild under one hold: only where the heap outgrew its limit.
  void rebuild_deadlines_now_locked() {
    DJINN_CRASH_POINT("lease.landlord.rebuild_deadlines");
    std::vector<HeapEntry> fresh;
    fresh.reserve(timed_live_);
    collect_deadlines_locked(0, slots_.size(), fresh);
    std::make_heap(fresh.begin(), fresh.end(), LaterFirst{});
    deadlines_.swap(fresh);
    rebuild_wanted_ = false;
  }

  // Keeps `lease` with its deadline (lease.deadline_ns).
  void insert_locked(const Lease& lease, int64_t row) {
    const int64_t deadline_ns = lease.deadline_ns;
    uint32_t res = resources_.intern(lease.resource);
    uint32_t hol = holders_.intern(lease.holder);
    uint32_t slot;
    if (free_slot_ != kNone) {
      slot = free_slot_;
      free_slot_ = slots_[slot].res_next;
    } else {
      slot = static_cast<uint32_t>(slots_.size());
      slots_.emplace_back();
    }
    Record& r = slots_[slot];
    r = Record{lease.id, deadline_ns, lease.expiration_ms, lease.granted_ms, res,
               hol | static_cast<uint32_t>(lease.kind) << kKindShift, kNone, kNone, kNone, kNone, row};
    auto& re = resources_[res];
    r.res_next = re.head;
    if (re.head != kNone) slots_[re.head].res_prev = slot;
    re.head = slot;
    ++re.by_level[level(lease.kind)];
    auto& he = holders_[hol];
    r.hol_next = he.head;
    if (he.head != kNone) slots_[he.head].hol_prev = slot;
    he.head = slot;
    ++he.by_level[level(lease.kind)];
    ids_.insert(internal::mix64(lease.id), slot, [&](uint32_t s) { return hash_of_slot(s); });
    if (deadline_ns != kNoDeadline) {
      ++timed_live_;
      push_deadline_locked(lease.id, deadline_ns);
    }
  }

  void remove_locked(uint32_t slot, bool expired) {
    Record& r = slots_[slot];
    ids_.erase(
        internal::mix64(r.id), [&](uint32_t s) { return s == slot; },
        [&](uint32_t s) { return hash_of_slot(s); });
    auto& re = resources_[r.resource];
    if (r.res_prev != kNone) slots_[r.res_prev].res_next = r.res_next; else re.head = r.res_next;
    if (r.res_next != kNone) slots_[r.res_next].res_prev = r.res_prev;
    --re.by_level[level(r.kind())];
    if (!waiters_.empty() && waiters_.count(re.text)) {
      retry_.insert(re.text);
      wake_.notify_one();
    }
    if (re.count() == 0) resources_.release(r.resource);
    auto& he = holders_[r.holder()];
    if (r.hol_prev != kNone) slots_[r.hol_prev].hol_next = r.hol_next; else he.head = r.hol_next;
    if (r.hol_next != kNone) slots_[r.hol_next].hol_prev = r.hol_prev;
    --he.by_level[level(r.kind())];
    if (he.count() == 0) holders_.release(r.holder());
    if (r.deadline_ns != kNoDeadline) --timed_live_;

    recent_[r.id] = expired;
    recent_order_.push_back(r.id);
    if (recent_order_.size() > kRecentlyRemoved) {
      recent_.erase(recent_order_.front());
      recent_order_.pop_front();
    }
    r = Record{};
    r.res_next = free_slot_;
    free_slot_ = slot;
  }

  Status gone_locked(LeaseId id) const {
    auto it = recent_.find(id);
    if (it == recent_.end()) return not_found("lease " + std::to_string(id) + " not found");
    return not_found("lease " + std::to_string(id) + (it->second ? " expired" : " was cancelled"));
  }

  // The leases of other holders on `res` that are incompatible with `kind`. A holder's own
  // leases never stand in its way: asking again for a resource it holds is a new lease, checked
  // against the others only (so an "upgrade" to exclusive succeeds only when nobody else holds
  // anything incompatible).
  std::vector<Lease> in_way_locked(std::string_view resource, std::string_view holder, Kind kind) const {
    std::vector<Lease> out;
    uint32_t res = resources_.find(resource);
    if (res == kNone) return out;
    const auto& entry = resources_[res];
    bool any = false;
    for (int held = 0; held < 3; ++held) {
      if (entry.by_level[held] && !levels_compatible(held, level(kind))) any = true;
    }
    if (!any) return out;
    uint32_t hol = holders_.find(holder);
    for (uint32_t slot = entry.head; slot != kNone; slot = slots_[slot].res_next) {
      const Record& r = slots_[slot];
      if (r.holder() != hol && !compatible(r.kind(), kind)) out.push_back(to_lease(slot));
    }
    return out;
  }

  // The holders of requests queued for `r`'s resource that `r` must not overtake: other holders'
  // incompatible ones, unless `r`'s holder already holds a lease on the resource. A holder keeps
  // what it has: its leases ending in a grace period pass to its new ones (expire_all_of_holder),
  // and an upgrade does not queue behind requests that its own lease blocks.
  std::vector<std::string> queued_ahead_locked(const GrantRequest& r) const {
    std::vector<std::string> out;
    if (waiters_.empty()) return out;
    auto queued = waiters_.find(r.resource);
    if (queued == waiters_.end()) return out;
    // The first such request is enough to refuse or queue `r` (and the refusal names it).
    for (const Waiter& w : queued->second) {
      if (w.request.holder != r.holder && !compatible(w.request.kind, r.kind)) {
        out.push_back(w.request.holder);
        break;
      }
    }
    if (out.empty()) return out;
    uint32_t res = resources_.find(r.resource);
    uint32_t hol = holders_.find(r.holder);
    if (res == kNone || hol == kNone) return out;
    for (uint32_t slot = resources_[res].head; slot != kNone; slot = slots_[slot].res_next) {
      if (slots_[slot].holder() == hol) return {};
    }
    return out;
  }

  int64_t next_wake_locked() const {
    if (!retry_.empty() || fold_wanted_ || folding_ || rebuild_wanted_) return kExpiring;
    int64_t next = deadlines_.empty() ? kNoDeadline : deadlines_.front().deadline_ns;
    if (!wait_ends_.empty()) next = std::min(next, wait_ends_.begin()->first.first);
    return next;
  }

  // project(slot) for each lease chained from one name of the holder or resource index.
  template <class Project>
  auto chain_of(const internal::StringPool& index, std::string_view name, uint32_t Record::*next,
                Project project) const {
    std::lock_guard lock(mutex_);
    std::vector<decltype(project(uint32_t{}))> out;
    uint32_t entry = index.find(name);
    if (entry == kNone) return out;
    for (uint32_t s = index[entry].head; s != kNone; s = slots_[s].*next) out.push_back(project(s));
    return out;
  }
  std::vector<Lease> chain_of(const internal::StringPool& index, std::string_view name,
                              uint32_t Record::*next) const {
    return chain_of(index, name, next, [this](uint32_t s) { return to_lease(s); });
  }

  // ---- durable writes (write_mutex_ held) ----

  // After each commit (SQLite's WAL hook): checkpoints when the log is due, as SQLite's automatic
  // checkpoint would, unless the committing caller must not wait.
  static int on_wal_commit(void* arg, sqlite3* db, const char* name, int frames) {
    auto* self = static_cast<Impl*>(arg);
    self->wal_frames_ = frames;
    if (self->commit_must_not_wait_) return SQLITE_OK;
    self->wal_restart_due_ = false;
    if (frames >= kWalAutocheckpoint) {
      // PASSIVE, as SQLite's own: it copies what it can without waiting for anyone. Once all of
      // the log is copied, the next commit starts it over.
      int in_log = 0, copied = 0;
      if (sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, &in_log, &copied) == SQLITE_OK &&
          copied == in_log) {
        self->wal_frames_ = 0;
        self->wal_restart_due_ = true;
      }
    }
    return SQLITE_OK;
  }

  // One transaction at the given sync level around `body`; nothing when in memory only.
  // In WAL mode synchronous=NORMAL survives a process kill (the WAL is in the OS page cache) but
  // not a power loss; FULL fsyncs the WAL at commit. Grants (FOREVER ones included) use FULL;
  // renewals and cancels use NORMAL: losing one to a power cut only shortens or restores a lease.
  template <class Body>
  Status durable(sqlite::Sync sync, Body&& body) {
    if (!db_) return Status::Ok();
    if (sync != db_sync_) {
      DJINN_RETURN_IF_ERROR(db_->set_sync(sync));
      db_sync_ = sync;
    }
    Result<sqlite::Transaction> tx = sqlite::Transaction::begin(*db_);
    if (!tx.ok()) return tx.status();
    DJINN_RETURN_IF_ERROR(body(*db_));
    return tx->commit();
  }

  // Appends the lease's row; `row` receives its seq.
  static Status insert_row(sqlite::Database& db, const Lease& lease, int64_t& row,
                           const std::optional<Digest128>& key = std::nullopt) {
    Result<sqlite::Statement*> st = db.cached(kInsertLease);
    if (!st.ok()) return st.status();
    std::array<uint8_t, 16> stored{};
    std::optional<std::span<const uint8_t>> key_bytes;
    if (key) {
      stored = grant_key_bytes(*key);
      key_bytes = std::span<const uint8_t>(stored);
    }
    DJINN_RETURN_IF_ERROR((*st)->bind_all(lease.id, lease.resource, lease.holder, static_cast<int64_t>(lease.kind),
                                          lease.expiration_ms, lease.granted_ms, key_bytes));
    DJINN_RETURN_IF_ERROR((*st)->run());
    row = db.last_insert_rowid();
    return Status::Ok();
  }

  static Status delete_row(sqlite::Database& db, int64_t row) {
    Result<sqlite::Statement*> st = db.cached(kDeleteLease);
    if (!st.ok()) return st.status();
    DJINN_RETURN_IF_ERROR((*st)->bind_all(row));
    return (*st)->run();
  }

  // ---- grant ----

  // A grant key as stored: the digest's two halves, little-endian.
  static std::array<uint8_t, 16> grant_key_bytes(const Digest128& d) {
    std::array<uint8_t, 16> out{};
    for (int i = 0; i < 8; ++i) {
      out[i] = static_cast<uint8_t>(d.lo >> (8 * i));
      out[8 + i] = static_cast<uint8_t>(d.hi >> (8 * i));
    }
    return out;
  }
  static std::optional<Digest128> grant_key_of(const std::vector<uint8_t>& bytes) {
    if (bytes.size() != 16) return std::nullopt;
    Digest128 d;
    for (int i = 0; i < 8; ++i) {
      d.lo |= static_cast<uint64_t>(bytes[i]) << (8 * i);
      d.hi |= static_cast<uint64_t>(bytes[8 + i]) << (8 * i);
    }
    return d;
  }
  static std::optional<Digest128> key_digest(const GrantRequest& r) {
    if (r.idempotency_key.empty()) return std::nullopt;
    return digest128(r.idempotency_key);
  }

  // Files the key of a lease just granted (mutex_ held), forgetting the oldest beyond the limit.
  // A key filed again (its earlier lease ended) takes its place at the back: the order holds
  // each filing with its generation, and only the key's latest one forgets it.
  void remember_grant_key_locked(const Digest128& key, LeaseId id) {
    uint64_t generation = ++grant_key_generation_;
    grant_keys_[key] = GrantKey{id, generation};
    grant_key_order_.emplace_back(key, generation);
    while (grant_keys_.size() > kRememberedGrantKeys || grant_key_order_.size() > 2 * kRememberedGrantKeys) {
      auto [oldest, filed] = grant_key_order_.front();
      grant_key_order_.pop_front();
      auto it = grant_keys_.find(oldest);
      if (it != grant_keys_.end() && it->second.generation == filed) grant_keys_.erase(it);
    }
  }

  // The answer to a request whose key an earlier grant used (mutex_ held): that lease while it is
  // held, a refusal when the request asks for something else; nothing when the key is new or its
  // lease is gone (the request is then granted as any other).
  std::optional<Result<Lease>> keyed_grant_locked(const GrantRequest& r, const std::optional<Digest128>& key) const {
    if (!key) return std::nullopt;
    auto it = grant_keys_.find(*key);
    if (it == grant_keys_.end()) return std::nullopt;
    uint32_t slot = slot_of(it->second.id);
    if (slot == kNone) return std::nullopt;
    Lease held = to_lease(slot);
    if (held.resource != r.resource || held.holder != r.holder || held.kind != r.kind) {
      return Result<Lease>(invalid_argument("idempotency key already used for lease " + std::to_string(held.id) +
                                            " (" + std::string(kind_name(held.kind)) + " on " +
                                            quoted(held.resource) + " for " + quoted(held.holder) +
                                            "): a new grant needs a new key"));
    }
    return Result<Lease>(std::move(held));
  }

  Status validate(const GrantRequest& r) const {
    const Policy& p = options.policy;
    if (static_cast<uint8_t>(r.kind) > static_cast<uint8_t>(Kind::kExclusiveCopy)) {
      return invalid_argument("lease kind " + std::to_string(static_cast<int>(r.kind)) +
                              ": must be shared, exclusive, interest, shared-copy or exclusive-copy");
    }
    DJINN_RETURN_IF_ERROR(validate_name("resource", r.resource, p.max_resource_bytes));
    DJINN_RETURN_IF_ERROR(validate_name("holder", r.holder, p.max_holder_bytes));
    if (r.idempotency_key.size() > kMaxGrantKeyBytes) {
      return invalid_argument("idempotency key of " + std::to_string(r.idempotency_key.size()) + " bytes: at most " +
                              std::to_string(kMaxGrantKeyBytes));
    }
    if (r.wait.count() < 0) {
      return invalid_argument("lease wait " + std::to_string(r.wait.count()) + " ms: must be >= 0");
    }
    return Status::Ok();
  }

  // Requires write_mutex_. Grants durably when nothing stands in the way. `behind_waiters`: also
  // yield to incompatible requests already queued for the resource (a new request); the head of
  // the queue itself passes false.
  Attempt attempt_grant(const GrantRequest& r, int64_t granted, bool behind_waiters) {
    Attempt attempt;
    Lease lease;
    std::optional<Digest128> key = key_digest(r);
    {
      std::lock_guard lock(mutex_);
      if (auto again = keyed_grant_locked(r, key)) {
        attempt.result = std::move(*again);
        attempt.repeat = attempt.result->ok();
        return attempt;
      }
      attempt.in_way = in_way_locked(r.resource, r.holder, r.kind);
      if (behind_waiters) attempt.waiting = queued_ahead_locked(r);
      if (!attempt.in_way.empty() || !attempt.waiting.empty()) return attempt;
      if (ids_.size() >= std::min(options.policy.max_leases, kMaxLeases)) {
        attempt.result = resource_exhausted("landlord " + quoted(options.name) + " holds " +
                                            std::to_string(ids_.size()) + " leases, its maximum");
        return attempt;
      }
      bool forever = granted == kDurationForever;
      lease = Lease{new_id_locked(), r.resource, r.holder, r.kind,
                    forever ? kNeverExpires : saturating_add(wall_ms(), granted), granted,
                    forever ? kNoDeadline : add_ms(now_ns(), granted)};
    }
    int64_t row = 0;
    Status written = durable(sqlite::Sync::kFull, [&](sqlite::Database& db) -> Status {
      DJINN_RETURN_IF_ERROR(insert_row(db, lease, row, key));
      DJINN_CRASH_POINT("lease.landlord.before_commit");
      return Status::Ok();
    });
    if (!written.ok()) {
      attempt.result = Status(written.code(), "grant on " + quoted(r.resource) + ": " + written.message());
      return attempt;
    }
    if (db_) DJINN_CRASH_POINT("lease.landlord.after_commit");
    {
      std::lock_guard lock(mutex_);
      insert_locked(lease, row);
      if (key) remember_grant_key_locked(*key, lease.id);
    }
    attempt.result = std::move(lease);
    return attempt;
  }

  static std::string refusal(const GrantRequest& r, const Attempt& a) {
    std::string out = std::string(kind_name(r.kind)) + " lease on " + quoted(r.resource) + " for " +
                      quoted(r.holder) + ": ";
    if (!a.in_way.empty()) {
      out += "conflicts with " + describe_in_way(a.in_way);
    } else {
      out += quoted(a.waiting.front()) + " is waiting for it first";
    }
    return out;
  }

  static void add_conflicts(const GrantRequest& r, const Attempt& a, std::vector<LeaseEvent>& events) {
    for (const Lease& held : a.in_way) {
      events.push_back(LeaseEvent{EventType::kConflict, held, r.holder, r.kind});
    }
  }

  void queue_waiter_locked(Waiter w) {
    WaitQueue& queue = waiters_[w.request.resource];
    std::pair<int64_t, uint64_t> end{w.deadline_ns, w.ticket};
    queue.push_back(std::move(w));
    wait_ends_.emplace(end, std::prev(queue.end()));
  }

  // Takes a queued request out of its queue (and the queue out of waiters_ once empty).
  Waiter unqueue_waiter_locked(WaitQueue::iterator w) {
    wait_ends_.erase({w->deadline_ns, w->ticket});
    auto queue = waiters_.find(w->request.resource);
    Waiter out = std::move(*w);
    queue->second.erase(w);
    if (queue->second.empty()) waiters_.erase(queue);
    return out;
  }

  // Decides now, or queues `done` (when the request may wait) and returns nothing.
  std::optional<Result<Lease>> grant_or_queue(const GrantRequest& r,
                                              std::function<void(Result<Lease>)> done) {
    if (Status bad = validate(r); !bad.ok()) return Result<Lease>(std::move(bad));
    Result<int64_t> granted = negotiate(options.policy, r.duration_ms);
    if (!granted.ok()) return Result<Lease>(granted.status());
    std::vector<LeaseEvent> events;
    std::optional<Result<Lease>> result;
    {
      RequestLock write(*this);
      Attempt a = attempt_grant(r, *granted, /*behind_waiters=*/true);
      if (a.result) {
        result = std::move(*a.result);
        if (result->ok() && !a.repeat) events.push_back(LeaseEvent{EventType::kGranted, result->value(), {}, r.kind});
      } else {
        add_conflicts(r, a, events);
        if (r.wait.count() > 0 && done) {
          std::lock_guard lock(mutex_);
          if (wait_ends_.size() >= options.policy.max_waiting_grants) {
            result = Result<Lease>(resource_exhausted(
                "landlord " + quoted(options.name) + " already has " + std::to_string(wait_ends_.size()) +
                " grants waiting, its maximum: " + refusal(r, a) + "; ask again later, or without a wait"));
          } else {
            int64_t deadline = add_ms(now_ns(), r.wait.count());
            queue_waiter_locked(Waiter{r, deadline, ++next_ticket_, std::move(done)});
            if (deadline < sleeping_until_) wake_.notify_one();
          }
        } else {
          result = Result<Lease>(failed_precondition(refusal(r, a)));
        }
      }
    }
    deliver(events);
    return result;
  }

  // Grants a batch with one durable write (write_mutex_ held). Nothing waits: a request in
  // conflict, with held leases, queued requests or an earlier request of the same batch, is
  // refused as grant() with wait 0 refuses it.
  std::vector<Result<Lease>> grant_batch_locked(std::span<const GrantRequest> requests,
                                                std::vector<LeaseEvent>& events,
                                                const GrantWriter* also_write = nullptr) {
    struct Planned {
      size_t index;
      Lease lease;
      int64_t row = 0;
      std::optional<Digest128> key;
    };
    std::vector<std::optional<Result<Lease>>> decided(requests.size());
    std::vector<Planned> plans;
    size_t planned_exclusive = 0;  // planned leases of an exclusive level
    {
      std::lock_guard lock(mutex_);
      int64_t now = now_ns();
      int64_t wall = wall_ms();
      for (size_t i = 0; i < requests.size(); ++i) {
        const GrantRequest& r = requests[i];
        if (Status bad = validate(r); !bad.ok()) {
          decided[i] = Result<Lease>(std::move(bad));
          continue;
        }
        if (r.wait.count() != 0) {
          decided[i] = Result<Lease>(invalid_argument("a batch grant cannot wait: wait must be 0"));
          continue;
        }
        std::optional<Digest128> key = key_digest(r);
        if (auto again = keyed_grant_locked(r, key)) {
          decided[i] = std::move(*again);
          continue;
        }
        if (key && std::any_of(plans.begin(), plans.end(), [&](const Planned& p) { return p.key == key; })) {
          decided[i] = Result<Lease>(invalid_argument("idempotency key used twice in one batch"));
          continue;
        }
        Result<int64_t> granted = negotiate(options.policy, r.duration_ms);
        if (!granted.ok()) {
          decided[i] = Result<Lease>(granted.status());
          continue;
        }
        Attempt a;
        a.in_way = in_way_locked(r.resource, r.holder, r.kind);
        a.waiting = queued_ahead_locked(r);
        // An earlier request of the batch stands in the way only if one of the two excludes the
        // other: skipped for the common batch, all shared.
        bool excludes = level(r.kind) == 2;
        if (level(r.kind) != 0 && (excludes || planned_exclusive > 0)) {
          for (const Planned& p : plans) {
            if (!compatible(p.lease.kind, r.kind) && p.lease.resource == r.resource && p.lease.holder != r.holder) {
              a.in_way.push_back(p.lease);
            }
          }
        }
        if (!a.in_way.empty() || !a.waiting.empty()) {
          add_conflicts(r, a, events);
          decided[i] = Result<Lease>(failed_precondition(refusal(r, a)));
          continue;
        }
        if (ids_.size() + plans.size() >= std::min(options.policy.max_leases, kMaxLeases)) {
          decided[i] = Result<Lease>(resource_exhausted("landlord " + quoted(options.name) + " holds " +
                                                        std::to_string(ids_.size()) + " leases, its maximum"));
          continue;
        }
        LeaseId id = new_id_locked();
        while (std::any_of(plans.begin(), plans.end(), [&](const Planned& p) { return p.lease.id == id; })) {
          id = new_id_locked();
        }
        bool forever = *granted == kDurationForever;
        if (level(r.kind) == 2) ++planned_exclusive;
        plans.push_back(Planned{i,
                                Lease{id, r.resource, r.holder, r.kind,
                                      forever ? kNeverExpires : saturating_add(wall, *granted), *granted,
                                      forever ? kNoDeadline : add_ms(now, *granted)},
                                0, key});
      }
    }
    Status written = plans.empty() ? Status::Ok() : durable(sqlite::Sync::kFull, [&](sqlite::Database& db) -> Status {
      for (Planned& p : plans) DJINN_RETURN_IF_ERROR(insert_row(db, p.lease, p.row, p.key));
      if (also_write && *also_write) {
        std::vector<Result<Lease>> tentative;
        tentative.reserve(decided.size());
        for (const auto& d : decided) tentative.push_back(d ? *d : Result<Lease>(Status(Code::kInternal, "")));
        for (const Planned& p : plans) tentative[p.index] = Result<Lease>(p.lease);
        DJINN_RETURN_IF_ERROR((*also_write)(db, tentative));
      }
      DJINN_CRASH_POINT("lease.landlord.before_commit");
      return Status::Ok();
    });
    if (written.ok() && db_ && !plans.empty()) DJINN_CRASH_POINT("lease.landlord.after_commit");
    {
      std::lock_guard lock(mutex_);
      for (Planned& p : plans) {
        if (!written.ok()) {
          decided[p.index] = Result<Lease>(Status(written.code(), "grant on " + quoted(p.lease.resource) + ": " +
                                                                      written.message()));
          continue;
        }
        insert_locked(p.lease, p.row);
        if (p.key) remember_grant_key_locked(*p.key, p.lease.id);
        events.push_back(LeaseEvent{EventType::kGranted, p.lease, {}, p.lease.kind});
        decided[p.index] = Result<Lease>(std::move(p.lease));
      }
    }
    std::vector<Result<Lease>> results;
    results.reserve(decided.size());
    for (auto& d : decided) results.push_back(std::move(*d));
    return results;
  }

  // ---- renew and cancel (write_mutex_ held) ----

  // A lease's new expiration: journaled, then applied.
  struct NewExpiration {
    uint32_t slot;
    LeaseId id;
    int64_t expiration_ms, deadline_ns, granted_ms, row;
  };

  // Writes `changes` to the renewal journal in one transaction (`sync`), then applies them and
  // reports each as renewed; returns the leases as they now are, in order. On a write error
  // nothing changes.
  Result<std::vector<Lease>> set_expirations_locked(std::span<const NewExpiration> changes, sqlite::Sync sync,
                                                    std::vector<LeaseEvent>& events) {
    Status written = durable(sync, [&](sqlite::Database& db) -> Status {
      for (const NewExpiration& c : changes) {
        Result<sqlite::Statement*> st = db.cached(kInsertRenewal);
        if (!st.ok()) return st.status();
        DJINN_RETURN_IF_ERROR((*st)->bind_all(c.row, c.id, c.expiration_ms, c.granted_ms));
        DJINN_RETURN_IF_ERROR((*st)->run());
      }
      return Status::Ok();
    });
    if (!written.ok()) return written;
    if (db_ && !changes.empty()) {
      journal_seq_ = db_->last_insert_rowid();
      for (const NewExpiration& c : changes) journaled_.push_back(c.id);
    }
    std::vector<Lease> leases;
    leases.reserve(changes.size());
    std::lock_guard lock(mutex_);
    if (journaled_.size() >= std::max(kFoldMinimum, ids_.size()) && !fold_wanted_) {
      fold_wanted_ = true;
      wake_.notify_one();
    }
    for (const NewExpiration& c : changes) {
      Record& r = slots_[c.slot];
      if (r.deadline_ns == kNoDeadline && c.deadline_ns != kNoDeadline) ++timed_live_;
      if (r.deadline_ns != kNoDeadline && c.deadline_ns == kNoDeadline) --timed_live_;
      r.deadline_ns = c.deadline_ns;
      r.expiration_ms = c.expiration_ms;
      r.granted_ms = c.granted_ms;
      if (c.deadline_ns != kNoDeadline) push_deadline_locked(r.id, c.deadline_ns);
      leases.push_back(to_lease(c.slot));
      events.push_back(LeaseEvent{EventType::kRenewed, leases.back(), {}, r.kind()});
    }
    return leases;
  }

  std::vector<Result<Lease>> renew_locked(std::span<const RenewRequest> requests,
                                          std::vector<LeaseEvent>& events) {
    std::vector<Result<Lease>> results;
    results.reserve(requests.size());
    std::vector<NewExpiration> changes;
    std::vector<size_t> positions;  // of each change in `requests`
    {
      std::lock_guard lock(mutex_);
      int64_t now = now_ns();
      int64_t wall = wall_ms();
      for (size_t i = 0; i < requests.size(); ++i) {
        const RenewRequest& req = requests[i];
        Result<int64_t> granted = negotiate(options.policy, req.duration_ms);
        uint32_t slot = slot_of(req.id);
        if (!granted.ok()) {
          results.emplace_back(granted.status());
        } else if (slot == kNone) {
          results.emplace_back(gone_locked(req.id));
        } else if (slots_[slot].deadline_ns <= now) {
          // Past its deadline, waiting for the expiry thread: a lease that expired cannot be renewed.
          results.emplace_back(not_found("lease " + std::to_string(req.id) + " expired"));
        } else {
          bool forever = *granted == kDurationForever;
          changes.push_back(NewExpiration{slot, req.id, forever ? kNeverExpires : saturating_add(wall, *granted),
                                          forever ? kNoDeadline : add_ms(now, *granted), *granted, slots_[slot].row});
          positions.push_back(i);
          results.emplace_back(Lease{});  // filled in below
        }
      }
    }
    // A renewal to FOREVER is as weighty as a grant: FULL, like grants.
    bool forever = std::any_of(changes.begin(), changes.end(),
                               [](const NewExpiration& c) { return c.granted_ms == kDurationForever; });
    Result<std::vector<Lease>> renewed =
        set_expirations_locked(changes, forever ? sqlite::Sync::kFull : sqlite::Sync::kNormal, events);
    for (size_t k = 0; k < changes.size(); ++k) {
      if (renewed.ok()) {
        results[positions[k]] = std::move((*renewed)[k]);
      } else {
        results[positions[k]] = Status(renewed.status().code(), "renew: " + renewed.status().message());
      }
    }
    return results;
  }

  // Brings forward to now + `within_ms` the end of every lease of `holder` that would outlive it;
  // each keeps its granted duration. Returns all of the holder's leases as they now are.
  Result<std::vector<Lease>> shorten_holder_locked(std::string_view holder, int64_t within_ms,
                                                   std::vector<LeaseEvent>& events) {
    std::vector<Lease> unchanged;
    std::vector<NewExpiration> changes;
    {
      std::lock_guard lock(mutex_);
      int64_t deadline = add_ms(now_ns(), within_ms);
      int64_t expiration = saturating_add(wall_ms(), within_ms);
      uint32_t hol = holders_.find(holder);
      for (uint32_t s = hol == kNone ? kNone : holders_[hol].head; s != kNone; s = slots_[s].hol_next) {
        const Record& r = slots_[s];
        if (r.deadline_ns <= deadline) {
          unchanged.push_back(to_lease(s));
        } else {
          changes.push_back(NewExpiration{s, r.id, expiration, deadline, r.granted_ms, r.row});
        }
      }
    }
    Result<std::vector<Lease>> shortened = set_expirations_locked(changes, sqlite::Sync::kNormal, events);
    if (!shortened.ok()) return Status(shortened.status().code(), "expire leases of a holder: " + shortened.status().message());
    unchanged.insert(unchanged.end(), std::make_move_iterator(shortened->begin()), std::make_move_iterator(shortened->end()));
    return unchanged;
  }

  std::vector<Status> cancel_locked(std::span<const LeaseId> ids, std::vector<LeaseEvent>& events,
                                    std::vector<Lease>* cancelled = nullptr) {
    std::vector<Status> statuses(ids.size());
    std::vector<std::pair<size_t, uint32_t>> plans;  // index in ids, slot
    {
      std::lock_guard lock(mutex_);
      std::set<uint32_t> seen;
      for (size_t i = 0; i < ids.size(); ++i) {
        uint32_t slot = slot_of(ids[i]);
        if (slot == kNone) {
          statuses[i] = gone_locked(ids[i]);
        } else if (!seen.insert(slot).second) {
          statuses[i] = not_found("lease " + std::to_string(ids[i]) + " was cancelled");
        } else {
          plans.emplace_back(i, slot);
        }
      }
    }
    Status written = durable(sqlite::Sync::kNormal, [&](sqlite::Database& db) -> Status {
      for (const auto& [index, slot] : plans) DJINN_RETURN_IF_ERROR(delete_row(db, slots_[slot].row));
      return Status::Ok();
    });
    if (!written.ok()) {
      for (const auto& [index, slot] : plans) {
        statuses[index] = Status(written.code(), "cancel: " + written.message());
      }
      return statuses;
    }
    std::lock_guard lock(mutex_);
    for (const auto& [index, slot] : plans) {
      Lease lease = to_lease(slot);
      remove_locked(slot, /*expired=*/false);
      if (cancelled) cancelled->push_back(lease);
      events.push_back(LeaseEvent{EventType::kCancelled, std::move(lease), {}, Kind::kShared});
    }
    return statuses;
  }

  // Freed resources with waiters are handed over on the expiry thread; without one, right here.
  void kick_waiters() {
    if (options.run_expiry_thread) return;  // remove_locked already woke the thread
    bool any;
    {
      std::lock_guard lock(mutex_);
      any = !retry_.empty();
    }
    if (any) service_waiters();
  }

  // ---- expiry and waiters ----

  size_t expire_due() {
    rebuild_deadlines();
    // One step, not the whole fold: at a million live leases a fold is thousands of chunks, and
    // the leases due meanwhile expire between them.
    fold_step();
    size_t total = 0;
    for (bool more = true; more;) {
      std::vector<LeaseEvent> events;
      {
        std::lock_guard write(write_mutex_);
        std::vector<uint32_t> due;
        std::vector<int64_t> rows;
        {
          std::lock_guard lock(mutex_);
          int64_t now = now_ns();
          while (!deadlines_.empty() && deadlines_.front().deadline_ns <= now &&
                 due.size() < kExpiryChunk) {
            HeapEntry entry = deadlines_.front();
            std::pop_heap(deadlines_.begin(), deadlines_.end(), LaterFirst{});
            deadlines_.pop_back();
            uint32_t slot = slot_of(entry.id);
            if (slot == kNone || slots_[slot].deadline_ns != entry.deadline_ns) continue;  // stale
            slots_[slot].deadline_ns = kExpiring;
            due.push_back(slot);
          }
          more = due.size() == kExpiryChunk;
          events.reserve(due.size());
          rows.reserve(due.size());
          for (uint32_t slot : due) {
            events.push_back(LeaseEvent{EventType::kExpired, to_lease(slot), {}, Kind::kShared});
            rows.push_back(slots_[slot].row);
          }
        }
        if (due.empty()) break;
        // An expired lease is dead whether or not its removal reaches the file: if it does not,
        // the next open finds it past its expiration and expires it again.
        Status written = durable(sqlite::Sync::kNormal, [&](sqlite::Database& db) -> Status {
          for (int64_t row : rows) DJINN_RETURN_IF_ERROR(delete_row(db, row));
          return Status::Ok();
        });
        if (!written.ok()) {
          DJINN_LOG(kWarn, "lease") << options.name << ": persisting " << due.size()
                                    << " expirations failed: " << written.to_string();
        }
        std::lock_guard lock(mutex_);
        for (uint32_t slot : due) remove_locked(slot, /*expired=*/true);
      }
      total += events.size();
      deliver(events);
      if (more) step_aside_for_requests();
    }
    service_waiters();
    return total;
  }

  // Rebuilds the deadline heap from the records when it is due, a chunk of records per hold of
  // mutex_, and the heap itself outside it. A lease live at the end has its deadline in the new
  // heap: pushed before the rebuild began, it was in its record when the record was read; pushed
  // after, it was kept aside too. Entries of leases that ended meanwhile are stale, as in any heap.
  void rebuild_deadlines() {
    {
      std::lock_guard lock(mutex_);
      if (!rebuild_wanted_ || rebuilding_) return;
      rebuild_wanted_ = false;
      rebuilding_ = true;
    }
    DJINN_CRASH_POINT("lease.landlord.rebuild_deadlines");
    std::vector<HeapEntry> fresh;
    for (size_t begin = 0;; begin += kRebuildChunk) {
      std::lock_guard lock(mutex_);
      if (begin >= slots_.size()) break;
      collect_deadlines_locked(begin, std::min(slots_.size(), begin + kRebuildChunk), fresh);
    }
    std::make_heap(fresh.begin(), fresh.end(), LaterFirst{});
    std::vector<HeapEntry> old, aside;
    {
      std::lock_guard lock(mutex_);
      for (const HeapEntry& e : pushed_while_rebuilding_) {
        fresh.push_back(e);
        std::push_heap(fresh.begin(), fresh.end(), LaterFirst{});
      }
      aside.swap(pushed_while_rebuilding_);
      old.swap(deadlines_);
      deadlines_.swap(fresh);
      rebuilding_ = false;
    }
    // `old` and `aside` are freed here, outside the lock.
  }

  // Folding writes the current expiration of every lease renewed since the last fold into its
  // row, in row order and in chunks (requests and expiries go on between them), then drops the
  // journal rows folded. A crash part-way leaves rows and journal that replay to the same leases:
  // a row holds the last renewal journaled before its chunk, and replay applies every later
  // journal row over it. Each call takes one step: the start (when a fold is wanted), one chunk,
  // or the end.
  void fold_step() {
    std::lock_guard step(fold_mutex_);
    if (!fold_.active) {
      start_fold();
    } else if (fold_.next < fold_.ids.size()) {
      fold_chunk();
    } else {
      finish_fold();
    }
  }

  void start_fold() {
    std::vector<LeaseId> ids;
    int64_t upto;
    {
      std::lock_guard write(write_mutex_);
      {
        std::lock_guard lock(mutex_);
        if (!fold_wanted_) return;
        fold_wanted_ = false;
        folding_ = true;
      }
      ids.swap(journaled_);
      upto = journal_seq_;
    }
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    {
      // In row order, so each chunk rewrites neighbouring rows. Looked up a few thousand at a
      // time and sorted outside the lock, which the RPC I/O thread takes to renew and to read.
      std::vector<std::pair<int64_t, LeaseId>> by_row;
      by_row.reserve(ids.size());
      for (size_t begin = 0; begin < ids.size(); begin += kFoldChunk * 8) {
        std::lock_guard lock(mutex_);
        for (size_t i = begin; i < std::min(ids.size(), begin + kFoldChunk * 8); ++i) {
          uint32_t slot = slot_of(ids[i]);
          if (slot != kNone) by_row.emplace_back(slots_[slot].row, ids[i]);
        }
      }
      std::sort(by_row.begin(), by_row.end());
      ids.clear();
      for (const auto& [row, id] : by_row) ids.push_back(id);
    }
    fold_ = Fold{true, std::move(ids), 0, upto};
  }

  void fold_chunk() {
    size_t begin = fold_.next;
    size_t end = std::min(fold_.ids.size(), begin + kFoldChunk);
    {
      std::lock_guard write(write_mutex_);
      // Looked up again: a lease cancelled or expired since is skipped (its row may even hold a
      // newer lease).
      std::vector<std::tuple<int64_t, int64_t, int64_t>> rows;
      {
        std::lock_guard lock(mutex_);
        for (size_t i = begin; i < end; ++i) {
          uint32_t slot = slot_of(fold_.ids[i]);
          if (slot != kNone) rows.emplace_back(slots_[slot].row, slots_[slot].expiration_ms, slots_[slot].granted_ms);
        }
      }
      Status written = durable(sqlite::Sync::kNormal, [&](sqlite::Database& db) -> Status {
        for (const auto& [row, expiration, granted] : rows) {
          Result<sqlite::Statement*> st = db.cached(kUpdateLease);
          if (!st.ok()) return st.status();
          DJINN_RETURN_IF_ERROR((*st)->bind_all(row, expiration, granted));
          DJINN_RETURN_IF_ERROR((*st)->run());
        }
        return Status::Ok();
      });
      if (!written.ok()) {
        // The journal keeps every renewal; the next fold takes these leases again.
        DJINN_LOG(kWarn, "lease") << options.name << ": folding renewals failed: " << written.to_string();
        journaled_.insert(journaled_.end(), fold_.ids.begin() + static_cast<std::ptrdiff_t>(begin), fold_.ids.end());
        end_fold();
        return;
      }
      DJINN_CRASH_POINT("lease.landlord.fold_chunk");
    }
    fold_.next = end;
    step_aside_for_requests();
  }

  void finish_fold() {
    {
      std::lock_guard write(write_mutex_);
      Status dropped = durable(sqlite::Sync::kNormal, [&](sqlite::Database& db) -> Status {
        Result<sqlite::Statement*> st = db.cached(kDropFoldedRenewals);
        if (!st.ok()) return st.status();
        DJINN_RETURN_IF_ERROR((*st)->bind_all(fold_.upto));
        return (*st)->run();
      });
      if (!dropped.ok()) {
        DJINN_LOG(kWarn, "lease") << options.name << ": dropping folded renewals failed: " << dropped.to_string();
      }
    }
    end_fold();
  }

  void end_fold() {
    fold_ = Fold{};
    std::lock_guard lock(mutex_);
    folding_ = false;
  }

  // Lets requests that queued up during a chunk of background work go first (bounded, so the
  // background work keeps pace).
  void step_aside_for_requests() const {
    auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(1);
    while (requests_waiting_.load() > 0 && std::chrono::steady_clock::now() < until) std::this_thread::yield();
  }

  // The answer to a grant whose wait ended before it could be granted.
  static Status wait_ended(const GrantRequest& r, std::string_view why) {
    return deadline_exceeded(std::string(kind_name(r.kind)) + " lease on " + quoted(r.resource) + " for " +
                             quoted(r.holder) + ": waited " + std::to_string(r.wait.count()) + " ms; " + std::string(why));
  }

  // Ends the waits that timed out and hands freed resources to their queues, head first (FIFO:
  // the queue stops at the first request still blocked).
  void service_waiters() {
    for (;;) {
      std::vector<std::pair<std::function<void(Result<Lease>)>, Status>> ended;
      std::set<std::string> retry;
      {
        std::lock_guard write(write_mutex_);
        std::lock_guard lock(mutex_);
        int64_t now = now_ns();
        // The waits due, soonest first, a chunk per lock hold.
        while (!wait_ends_.empty() && wait_ends_.begin()->first.first <= now && ended.size() < kExpiryChunk) {
          Waiter w = unqueue_waiter_locked(wait_ends_.begin()->second);
          const GrantRequest& r = w.request;
          std::vector<Lease> in_way = in_way_locked(r.resource, r.holder, r.kind);
          std::string why = in_way.empty() ? "requests ahead of it still wait"
                                           : "still conflicts with " + describe_in_way(in_way);
          ended.emplace_back(std::move(w.done), wait_ended(r, why));
          retry.insert(r.resource);
        }
        retry.merge(retry_);
        retry_.clear();
      }
      for (auto& [done, status] : ended) done(Result<Lease>(std::move(status)));
      if (ended.empty() && retry.empty()) return;
      for (const std::string& resource : retry) hand_over(resource);
    }
  }

  void hand_over(const std::string& resource) {
    for (;;) {
      std::vector<LeaseEvent> events;
      std::function<void(Result<Lease>)> done;
      std::optional<Result<Lease>> result;
      {
        std::lock_guard write(write_mutex_);
        GrantRequest request;
        {
          std::lock_guard lock(mutex_);
          auto it = waiters_.find(resource);
          if (it == waiters_.end() || it->second.empty()) return;
          // A wait that ended while earlier hand-overs were written is not granted late, to a
          // caller gone by then: the resource would be held for nobody.
          if (it->second.front().deadline_ns <= now_ns()) {
            Waiter w = unqueue_waiter_locked(it->second.begin());
            done = std::move(w.done);
            result = Result<Lease>(wait_ended(w.request, "the resource was freed too late"));
          } else {
            request = it->second.front().request;
          }
        }
        if (!result) {
          Result<int64_t> granted = negotiate(options.policy, request.duration_ms);  // checked when queued
          Attempt a = attempt_grant(request, granted.ok() ? *granted : 0, /*behind_waiters=*/false);
          if (!a.result) return;  // still blocked; the queue keeps its order
          result = std::move(*a.result);
          if (result->ok() && !a.repeat) events.push_back(LeaseEvent{EventType::kGranted, result->value(), {}, request.kind});
          std::lock_guard lock(mutex_);
          done = unqueue_waiter_locked(waiters_.find(resource)->second.begin()).done;
        }
      }
      deliver(events);
      done(std::move(*result));
    }
  }

  void expiry_loop() {
    name_this_thread("lease-expiry");
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      int64_t next = next_wake_locked();
      if (next > now_ns()) {
        sleeping_until_ = next;
        if (next == kNoDeadline) {
          wake_.wait(lock);
        } else {
          wake_.wait_until(lock, std::chrono::steady_clock::time_point(std::chrono::nanoseconds(next)));
        }
        sleeping_until_ = kExpiring;
        continue;
      }
      lock.unlock();
      expire_due();
      lock.lock();
    }
  }

  void deliver(const std::vector<LeaseEvent>& events) const {
    if (!options.on_event) return;
    for (const LeaseEvent& e : events) {
      try {
        options.on_event(e);
      } catch (const std::exception& ex) {
        DJINN_LOG(kError, "lease") << options.name << ": event callback threw: " << ex.what();
      }
    }
  }

  // ---- open and close ----

  // A store of schema 1 or 2 keeps its rows keyed by id: its journal (2) is replayed into them,
  // then they move into the table of schema 3, all in one transaction.
  Status upgrade_store() {
    Result<int64_t> version = db_->user_version();
    if (!version.ok()) return version.status();
    if (*version == 3) {
      Result<sqlite::Transaction> tx = sqlite::Transaction::begin(*db_);
      if (!tx.ok()) return tx.status();
      DJINN_RETURN_IF_ERROR(db_->exec(kUpgradeV3ToV4));
      DJINN_RETURN_IF_ERROR(db_->set_user_version(kSchemaVersion));
      DJINN_LOG(kInfo, "lease") << options.name << ": lease store " << options.path
                                << " upgraded from schema 3 to " << kSchemaVersion;
      return tx->commit();
    }
    if (*version != 1 && *version != 2) return Status::Ok();
    Result<sqlite::Transaction> tx = sqlite::Transaction::begin(*db_);
    if (!tx.ok()) return tx.status();
    if (*version == 2) DJINN_RETURN_IF_ERROR(db_->exec(kReplayRenewalsV2));
    DJINN_RETURN_IF_ERROR(db_->exec(kUpgradeToV3));
    DJINN_RETURN_IF_ERROR(db_->exec(kCreateSchema));
    DJINN_RETURN_IF_ERROR(db_->exec(kCopyV2Rows));
    DJINN_RETURN_IF_ERROR(db_->set_user_version(kSchemaVersion));
    DJINN_LOG(kInfo, "lease") << options.name << ": lease store " << options.path << " upgraded from schema "
                              << *version << " to " << kSchemaVersion;
    return tx->commit();
  }

  Status open_store(std::vector<LeaseEvent>& expired) {
    // Exclusive: this landlord is the file's only user, so SQLite skips its per-transaction file
    // locks (measured: fcntl locking was a visible share of each renewal), and a second landlord
    // on the same file is refused.
    Result<sqlite::Database> db =
        sqlite::Database::open(options.path, {.exclusive = true, .busy_timeout = std::chrono::milliseconds(500),
                                              .page_size = kPageSize, .cache_kib = options.cache_kib,
                                              .wal_autocheckpoint = kWalAutocheckpoint});
    if (!db.ok()) {
      if (db.status().code() != Code::kUnavailable) return db.status();
      return unavailable("lease store " + options.path +
                         " is in use by another process (is another landlord, e.g. djinn-lease, running on this "
                         "data directory?): " + db.status().message());
    }
    db_.emplace(std::move(*db));
    db_sync_ = sqlite::Sync::kFull;
    // Replaces SQLite's automatic checkpoint (same threshold), which would otherwise run, fsync
    // included, inside whichever commit crosses it.
    sqlite3_wal_hook(db_->handle(), &Impl::on_wal_commit, this);
    DJINN_RETURN_IF_ERROR(upgrade_store());
    DJINN_RETURN_IF_ERROR(db_->ensure_schema(kSchemaVersion, kCreateSchema, "lease store " + options.path));
    {
      Result<sqlite::Transaction> tx = sqlite::Transaction::begin(*db_);
      if (!tx.ok()) return tx.status();
      DJINN_RETURN_IF_ERROR(db_->exec(kReplayRenewals));
      DJINN_RETURN_IF_ERROR(tx->commit());
    }

    Result<sqlite::Statement> select = db_->prepare(kSelectLeases);
    if (!select.ok()) return select.status();
    int64_t now = now_ns();
    int64_t wall = wall_ms();
    std::vector<int64_t> expired_rows;
    struct KeyedRow {
      int64_t row;
      Digest128 key;
      LeaseId id;
    };
    std::vector<KeyedRow> keyed;  // of the leases kept
    std::lock_guard lock(mutex_);
    const auto load_started = std::chrono::steady_clock::now();
    for (uint64_t read = 0;; ++read) {
      Result<bool> more = select->step();
      if (!more.ok()) return more.status();
      if (!*more) break;
      if (read > 0 && read % kLoadProgressRows == 0) {  // a start-up of millions of leases says how far it is
        DJINN_LOG(kInfo, "lease") << options.name << ": loading leases, " << read << " read after "
                                  << std::chrono::duration_cast<std::chrono::milliseconds>(
                                         std::chrono::steady_clock::now() - load_started).count()
                                  << " ms";
      }
      Lease lease{static_cast<LeaseId>(select->column_int64(0)), select->column_text(1),
                  select->column_text(2), static_cast<Kind>(select->column_int64(3)),
                  select->column_int64(4), select->column_int64(5)};
      const int64_t row = select->column_int64(6);
      if (lease.id == 0 || select->column_int64(3) < 0 ||
          select->column_int64(3) > static_cast<int64_t>(Kind::kExclusiveCopy)) {
        DJINN_LOG(kWarn, "lease") << options.name << ": skipping a malformed lease row, id " << lease.id;
        continue;
      }
      if (lease.expiration_ms == kNeverExpires || lease.expiration_ms > wall) {
        if (!select->column_is_null(7)) {
          if (std::optional<Digest128> key = grant_key_of(select->column_blob(7))) keyed.push_back({row, *key, lease.id});
        }
      }
      if (lease.expiration_ms == kNeverExpires) {
        lease.deadline_ns = kNoDeadline;
        insert_locked(lease, row);
      } else if (lease.expiration_ms <= wall) {
        expired.push_back(LeaseEvent{EventType::kExpired, std::move(lease), {}, Kind::kShared});
        expired_rows.push_back(row);
      } else {
        // The deadline on this run's monotonic clock: what remains of the persisted wall-clock
        // expiration.
        lease.deadline_ns = add_ms(now, lease.expiration_ms - wall);
        insert_locked(lease, row);
      }
    }
    // The keys of the latest grants (rows are numbered in grant order), oldest first.
    if (keyed.size() > kRememberedGrantKeys) {
      std::nth_element(keyed.begin(), keyed.end() - kRememberedGrantKeys, keyed.end(),
                       [](const KeyedRow& a, const KeyedRow& b) { return a.row < b.row; });
      keyed.erase(keyed.begin(), keyed.end() - kRememberedGrantKeys);
    }
    std::sort(keyed.begin(), keyed.end(), [](const KeyedRow& a, const KeyedRow& b) { return a.row < b.row; });
    for (const KeyedRow& k : keyed) remember_grant_key_locked(k.key, k.id);
    if (!expired.empty()) {
      Status written = durable(sqlite::Sync::kNormal, [&](sqlite::Database& d) -> Status {
        for (int64_t row : expired_rows) DJINN_RETURN_IF_ERROR(delete_row(d, row));
        return Status::Ok();
      });
      if (!written.ok()) return written;
      for (const LeaseEvent& e : expired) {
        recent_[e.lease.id] = true;
        recent_order_.push_back(e.lease.id);
      }
      while (recent_order_.size() > kRecentlyRemoved) {
        recent_.erase(recent_order_.front());
        recent_order_.pop_front();
      }
    }
    return Status::Ok();
  }

  void close() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    if (expiry_thread_.joinable()) expiry_thread_.join();
    std::vector<Waiter> left;
    {
      std::lock_guard write(write_mutex_);
      std::lock_guard lock(mutex_);
      for (auto& [resource, queue] : waiters_) {
        for (Waiter& w : queue) left.push_back(std::move(w));
      }
      waiters_.clear();
      wait_ends_.clear();
    }
    for (Waiter& w : left) {
      w.done(Result<Lease>(unavailable("landlord " + quoted(options.name) +
                                       " closed while the lease request waited")));
    }
  }
};

// ---- Landlord ----

Landlord::Landlord(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Landlord::~Landlord() {
  if (impl_) impl_->close();
}

Result<std::unique_ptr<Landlord>> Landlord::open(LandlordOptions options) {
  DJINN_RETURN_IF_ERROR(validate_policy(options.policy));
  if (sodium_init() < 0) return internal_error("libsodium failed to initialise");
  auto impl = std::make_unique<Impl>(std::move(options));
  // Leases that expired while the landlord was down: their events are delivered here, on the
  // caller's thread, before open returns (a callback must not assume the Landlord exists yet).
  std::vector<LeaseEvent> expired;
  if (!impl->options.path.empty()) {
    Status opened = impl->open_store(expired);
    if (!opened.ok()) {
      return Status(opened.code(), "landlord " + quoted(impl->options.name) + ": " + opened.message());
    }
  }
  DJINN_LOG(kInfo, "lease") << impl->options.name << ": open"
                            << (impl->options.path.empty() ? " in memory" : " at " + impl->options.path)
                            << ", " << impl->ids_.size() << " leases, " << expired.size()
                            << " expired while closed";
  impl->deliver(expired);
  if (impl->options.run_expiry_thread) {
    Impl* raw = impl.get();
    impl->expiry_thread_ = std::thread([raw] { raw->expiry_loop(); });
  }
  return std::unique_ptr<Landlord>(new Landlord(std::move(impl)));
}

Result<Lease> Landlord::grant(const GrantRequest& request) {
  if (request.wait.count() <= 0) return std::move(*impl_->grant_or_queue(request, nullptr));
  // Shared with the callback: the expiry thread may still be inside set_value when get() returns.
  auto promise = std::make_shared<std::promise<Result<Lease>>>();
  std::future<Result<Lease>> future = promise->get_future();
  std::optional<Result<Lease>> now =
      impl_->grant_or_queue(request, [promise](Result<Lease> result) { promise->set_value(std::move(result)); });
  if (now) return std::move(*now);
  return future.get();
}

void Landlord::grant_async(const GrantRequest& request, std::function<void(Result<Lease>)> done) {
  // Decided at once (granted or refused): `done` runs here, on the caller's thread. Queued: it
  // runs on the expiry thread when the lease is handed over or the wait ends (with an injected
  // clock and no expiry thread: on the thread that frees the resource, or in expire_due). Event
  // callbacks and `done` must not block in grant() with wait > 0: the thread that would hand the
  // lease over is the one blocked. A landlord destroyed with requests waiting ends them UNAVAILABLE.
  auto shared_done = std::make_shared<std::function<void(Result<Lease>)>>(std::move(done));
  std::optional<Result<Lease>> now =
      impl_->grant_or_queue(request, [shared_done](Result<Lease> r) { (*shared_done)(std::move(r)); });
  if (now) (*shared_done)(std::move(*now));
}

Result<Lease> Landlord::renew(const RenewRequest& request) {
  std::vector<Result<Lease>> results = renew_batch(std::span<const RenewRequest>(&request, 1));
  return std::move(results.front());
}

Status Landlord::cancel(LeaseId id) {
  std::vector<Status> statuses = cancel_batch(std::span<const LeaseId>(&id, 1));
  return std::move(statuses.front());
}

std::vector<Result<Lease>> Landlord::grant_batch(std::span<const GrantRequest> requests) {
  std::vector<LeaseEvent> events;
  std::vector<Result<Lease>> results = [&] {
    Impl::RequestLock write(*impl_);
    return impl_->grant_batch_locked(requests, events);
  }();
  impl_->deliver(events);
  return results;
}

std::vector<Result<Lease>> Landlord::grant_batch(std::span<const GrantRequest> requests,
                                                 const GrantWriter& also_write) {
  std::vector<LeaseEvent> events;
  std::vector<Result<Lease>> results = [&] {
    Impl::RequestLock write(*impl_);
    return impl_->grant_batch_locked(requests, events, &also_write);
  }();
  impl_->deliver(events);
  return results;
}

Status Landlord::transact(sqlite::Sync sync, const std::function<Status(sqlite::Database&)>& body) {
  Impl::RequestLock write(*impl_);
  return impl_->durable(sync, body);
}

std::vector<Result<Lease>> Landlord::renew_batch(std::span<const RenewRequest> requests) {
  std::vector<LeaseEvent> events;
  std::vector<Result<Lease>> results = [&] {
    Impl::RequestLock write(*impl_);
    return impl_->renew_locked(requests, events);
  }();
  impl_->deliver(events);
  return results;
}

std::optional<std::vector<Result<Lease>>> Landlord::try_renew_batch(std::span<const RenewRequest> requests) {
  // A renewal to FOREVER syncs its commit (see renew_locked).
  for (const RenewRequest& r : requests) {
    Result<int64_t> granted = negotiate(impl_->options.policy, r.duration_ms);
    if (granted.ok() && *granted == kDurationForever) return std::nullopt;
  }
  std::vector<LeaseEvent> events;
  std::vector<Result<Lease>> results;
  {
    std::unique_lock write(impl_->write_mutex_, std::try_to_lock);
    if (!write.owns_lock() || impl_->wal_frames_ >= kWalAutocheckpoint || impl_->wal_restart_due_) {
      return std::nullopt;
    }
    {
      // A deadline heap past its limit is rebuilt by the next renewal that may wait.
      std::lock_guard lock(impl_->mutex_);
      if (impl_->deadlines_.size() + requests.size() > impl_->heap_limit_locked()) return std::nullopt;
    }
    struct MustNotWait {
      bool& flag;
      explicit MustNotWait(bool& f) : flag(f) { flag = true; }
      ~MustNotWait() { flag = false; }
    } must_not_wait(impl_->commit_must_not_wait_);
    results = impl_->renew_locked(requests, events);
  }
  impl_->deliver(events);
  return results;
}

std::vector<Status> Landlord::cancel_batch(std::span<const LeaseId> ids) {
  std::vector<LeaseEvent> events;
  std::vector<Status> statuses = [&] {
    Impl::RequestLock write(*impl_);
    return impl_->cancel_locked(ids, events);
  }();
  impl_->deliver(events);
  impl_->kick_waiters();
  return statuses;
}

std::optional<Lease> Landlord::find(LeaseId id) const {
  std::lock_guard lock(impl_->mutex_);
  uint32_t slot = impl_->slot_of(id);
  // Past its deadline it is gone, as renewing it says, though the expiry thread has yet to end it.
  if (slot == kNone || impl_->slots_[slot].deadline_ns <= impl_->now_ns()) return std::nullopt;
  return impl_->to_lease(slot);
}

std::vector<Lease> Landlord::leases_of_holder(std::string_view holder) const {
  return impl_->chain_of(impl_->holders_, holder, &Record::hol_next);
}

std::vector<Lease> Landlord::leases_of_resource(std::string_view resource) const {
  return impl_->chain_of(impl_->resources_, resource, &Record::res_next);
}

std::vector<LeaseId> Landlord::lease_ids_of_holder(std::string_view holder) const {
  return impl_->chain_of(impl_->holders_, holder, &Record::hol_next, [&](uint32_t s) { return impl_->slots_[s].id; });
}

std::vector<LeaseId> Landlord::lease_ids_of_resource(std::string_view resource) const {
  return impl_->chain_of(impl_->resources_, resource, &Record::res_next, [&](uint32_t s) { return impl_->slots_[s].id; });
}

size_t Landlord::cancel_unheld(std::string_view resource, const std::function<bool(LeaseId)>& held) {
  // The ids alone: a start-up sweep over a million leases copies no names.
  std::vector<LeaseId> orphans =
      impl_->chain_of(impl_->resources_, resource, &Record::res_next, [&](uint32_t s) { return impl_->slots_[s].id; });
  std::erase_if(orphans, held);
  if (!orphans.empty()) cancel_batch(orphans);
  return orphans.size();
}

Result<std::vector<Lease>> Landlord::cancel_all_of_holder(std::string_view holder) {
  std::vector<LeaseEvent> events;
  std::vector<Lease> cancelled;
  Status failed;
  {
    Impl::RequestLock write(*impl_);
    std::vector<LeaseId> ids;
    {
      std::lock_guard lock(impl_->mutex_);
      uint32_t hol = impl_->holders_.find(holder);
      if (hol != kNone) {
        for (uint32_t s = impl_->holders_[hol].head; s != kNone; s = impl_->slots_[s].hol_next) {
          ids.push_back(impl_->slots_[s].id);
        }
      }
    }
    // One transaction: all of the holder's leases go, or (on a write error) none.
    std::vector<Status> statuses = impl_->cancel_locked(ids, events, &cancelled);
    for (const Status& s : statuses) {
      if (!s.ok()) failed = s;
    }
  }
  impl_->deliver(events);
  impl_->kick_waiters();
  if (!failed.ok()) return failed;
  return cancelled;
}

Result<std::vector<Lease>> Landlord::expire_all_of_holder(std::string_view holder, std::chrono::milliseconds within) {
  if (within.count() <= 0) return cancel_all_of_holder(holder);
  std::vector<LeaseEvent> events;
  Result<std::vector<Lease>> leases = [&] {
    Impl::RequestLock write(*impl_);
    return impl_->shorten_holder_locked(holder, within.count(), events);
  }();
  impl_->deliver(events);
  return leases;
}

size_t Landlord::size() const {
  std::lock_guard lock(impl_->mutex_);
  return impl_->ids_.size();
}

int64_t Landlord::now_ns() const { return impl_->now_ns(); }

size_t Landlord::expire_due() { return impl_->expire_due(); }

const Policy& Landlord::policy() const { return impl_->options.policy; }

}  // namespace djinn::lease
