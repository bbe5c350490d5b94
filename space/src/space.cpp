// The space engine: entries in memory with their indexes, persisted in the landlord's SQLite file,
// written and taken through one group commit, waited for by blocking reads and takes, and staged
// per transaction until the coordinator's decision.
#include "djinn/space/space.h"

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <boost/container/small_vector.hpp>

#include <algorithm>
#include <array>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <span>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>

#include "djinn/core/digest.h"
#include "djinn/core/fault.h"
#include "djinn/core/group_commit.h"
#include "djinn/core/job_threads.h"
#include "djinn/core/little_endian.h"
#include "djinn/core/log.h"
#include "djinn/core/model_capnp.h"
#include "djinn/core/shared_mutex.h"
#include "djinn/core/thread_name.h"
#include "djinn/proto/model.capnp.h"
#include "djinn/proto/space.capnp.h"
#include "posting.h"

namespace djinn::space {
namespace {

using Clock = std::chrono::steady_clock;

// Set on the space's scan threads, where completions of long reads and takes may run: a blocking
// read or take there could wait for the thread it runs on.
thread_local bool on_scan_thread = false;

// A reply of one entry, moved in (a braced list would copy it).
std::vector<Entry> just(Entry e) {
  std::vector<Entry> out;
  out.push_back(std::move(e));
  return out;
}

using txn::TxnId;

// 2: space_watch.by_ref, whether a registration's event kind names its lease's ref (1) or, made
// before version 2, its lease id (0).
constexpr int64_t kSchemaVersion = 2;
// Entries are appended in write order and keyed by that order (seq), which the space keeps in
// memory: a group of writes fills the table's last pages instead of dirtying a page anywhere in it
// per write (see docs/lease.md on the landlord's rows). `txn` is set while the entry was written by
// a prepared transaction that has not committed yet.
constexpr std::string_view kCreateSchema =
    "CREATE TABLE IF NOT EXISTS space_entry("
    "  seq INTEGER PRIMARY KEY,"
    "  lease INTEGER NOT NULL,"
    "  txn BLOB,"
    "  data BLOB NOT NULL,"  // a Cap'n Proto Entry message
    "  ikey TEXT"            // the writer's idempotency key, or NULL
    ");"
    "CREATE INDEX IF NOT EXISTS space_entry_txn ON space_entry(txn) WHERE txn IS NOT NULL;"
    "CREATE TABLE IF NOT EXISTS space_watch(id INTEGER PRIMARY KEY, template BLOB NOT NULL);"
    "CREATE TABLE IF NOT EXISTS space_meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);";
constexpr std::string_view kInsertEntry = "INSERT INTO space_entry(seq, lease, txn, data, ikey) VALUES (?1, ?2, ?3, ?4, ?5)";
constexpr std::string_view kDeleteEntry = "DELETE FROM space_entry WHERE seq = ?1";
constexpr std::string_view kCommitEntries = "UPDATE space_entry SET txn = NULL WHERE txn = ?1";
constexpr std::string_view kAbortEntries = "DELETE FROM space_entry WHERE txn = ?1";
constexpr std::string_view kUpgradeV1ToV2 = "ALTER TABLE space_watch ADD COLUMN by_ref INTEGER NOT NULL DEFAULT 0";
constexpr std::string_view kInsertWatch = "INSERT INTO space_watch(id, template, by_ref) VALUES (?1, ?2, 1)";
constexpr std::string_view kDeleteWatch = "DELETE FROM space_watch WHERE id = ?1";

// Transactions that ended recently: an operation still in flight under one is refused rather than
// starting its state afresh.
constexpr size_t kRememberEnded = 4096;
// A large space says how far its loading has got every this many entries.
constexpr size_t kLoadProgressRows = 1'000'000;
// Idempotency keys of the latest writes, found again after a restart.
constexpr size_t kRememberKeys = 65536;

// One index key of an entry: a type it is filed under (its own, the empty type), a supertype (filed
// the same way, and counted so templates of it know entries extend it), or a field.
struct IndexKey {
  enum Kind : uint8_t { kType, kSupertype, kField };
  uint64_t key;
  Kind kind;
};

// Index keys are IndexHasher's (model.h), its seed drawn for each space. Type and field keys live
// in maps of their own, so they need no separation from each other.
class IndexKeys : public IndexHasher {
 public:
  // Appends every index key of `e` to `out`: its type, each supertype and the empty type; each
  // non-null field under its own type and under the empty type.
  template <class Out>
  void of(const Entry& e, Out& out) const {
    out.push_back({type(e.type), IndexKey::kType});
    for (const std::string& s : e.supertypes) out.push_back({type(s), IndexKey::kSupertype});
    out.push_back({type(""), IndexKey::kType});
    std::string scratch;
    for (const auto& [name, value] : e.fields) {
      if (value.is_null()) continue;
      out.push_back({field(e.type, name, value, scratch), IndexKey::kField});
      out.push_back({field("", name, value, scratch), IndexKey::kField});
    }
  }
};

std::string encode_entry(const Entry& e) {
  capnp::MallocMessageBuilder message(rpc::kSmallMessageWords);
  to_capnp(e, message.initRoot<proto::Entry>());
  return flat_bytes(message);
}

std::string encode_template(const Template& t) {
  capnp::MallocMessageBuilder message(rpc::kSmallMessageWords);
  to_capnp(t, message.initRoot<proto::Template>());
  return flat_bytes(message);
}


std::span<const uint8_t> as_bytes(const std::string& s) {
  return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

// A prepared transaction's participant-log state names the entries it took, each by sequence and
// lease: after a restart a sequence alone could name another entry (one whose row took it once
// the taken entry's own row was gone), which would then be held, and deleted at the commit. The
// tag sets this format apart from the first one, sequences alone (8 bytes each, still read): its
// length is never a multiple of 8.
struct TakenRef {
  uint64_t seq = 0;
  uint64_t lease = 0;  // 0: not recorded (the first format)
};
constexpr std::array<uint8_t, 4> kTakenTag = {'T', 'K', 'N', '2'};

std::vector<uint8_t> encode_taken(const std::vector<TakenRef>& taken) {
  std::vector<uint8_t> out(kTakenTag.size() + taken.size() * 16);
  std::copy(kTakenTag.begin(), kTakenTag.end(), out.begin());
  uint8_t* at = out.data() + kTakenTag.size();
  for (const TakenRef& t : taken) {
    put_le(at, t.seq, 8);
    put_le(at + 8, t.lease, 8);
    at += 16;
  }
  return out;
}

std::vector<TakenRef> decode_taken(const std::vector<uint8_t>& bytes) {
  std::vector<TakenRef> out;
  if (bytes.size() % 8 == 0) {  // the first format
    for (size_t i = 0; i < bytes.size(); i += 8) out.push_back(TakenRef{get_le(&bytes[i], 8), 0});
    return out;
  }
  if (bytes.size() < kTakenTag.size() || !std::equal(kTakenTag.begin(), kTakenTag.end(), bytes.begin())) return out;
  for (size_t i = kTakenTag.size(); i + 16 <= bytes.size(); i += 16) {
    out.push_back(TakenRef{get_le(&bytes[i], 8), get_le(&bytes[i + 8], 8)});
  }
  return out;
}

// An entry as the space keeps it in memory: its encoded Cap'n Proto message (the row's bytes),
// about a third of what the decoded Entry's strings, map nodes and variants take. Matched where it
// lies (matches() on the message), decoded only for those who receive it.
class StoredEntry {
 public:
  StoredEntry() = default;
  // `encoded` is an Entry message as flat_bytes wrote it (whole words).
  explicit StoredEntry(std::string_view encoded)
      : words_(std::make_unique<capnp::word[]>(encoded.size() / sizeof(capnp::word))),
        count_(encoded.size() / sizeof(capnp::word)) {
    std::memcpy(words_.get(), encoded.data(), count_ * sizeof(capnp::word));
  }
  StoredEntry(StoredEntry&& other) noexcept
      : words_(std::move(other.words_)), count_(std::exchange(other.count_, 0)) {}
  StoredEntry& operator=(StoredEntry&& other) noexcept {
    words_ = std::move(other.words_);
    count_ = std::exchange(other.count_, 0);
    return *this;
  }

  std::string_view bytes() const {
    return std::string_view(reinterpret_cast<const char*>(words_.get()), count_ * sizeof(capnp::word));
  }
  bool matches(const Template& t) const {
    capnp::FlatArrayMessageReader reader(words());
    return djinn::matches(t, reader.getRoot<proto::Entry>());
  }
  // Stored entries were checked when written or loaded, so decoding them cannot fail; if it ever
  // did (memory exhausted, memory corrupted), going on would unindex the entry by the wrong keys.
  Entry decode() const {
    capnp::FlatArrayMessageReader reader(words());
    Result<Entry> e = from_capnp_unchecked(reader.getRoot<proto::Entry>());
    if (!e.ok()) {
      DJINN_LOG(kError, "space") << "an entry kept in memory no longer decodes (" << e.status().to_string()
                                 << "): stopping rather than corrupting the indexes";
      std::abort();
    }
    return std::move(*e);
  }

 private:
  kj::ArrayPtr<const capnp::word> words() const { return kj::ArrayPtr<const capnp::word>(words_.get(), count_); }
  std::unique_ptr<capnp::word[]> words_;
  size_t count_ = 0;
};

}  // namespace

std::string notify_event_kind(uint64_t notify_id) { return "space.notify." + public_ref_hex(notify_id); }

namespace {
// The kind of a registration made before kinds named refs: kept, since its subscriber listens there.
std::string id_notify_event_kind(uint64_t notify_id) { return "space.notify." + std::to_string(notify_id); }
}  // namespace

struct Space::Impl {
  enum class Hold : uint8_t { kFree, kTaking, kTxn };
  struct Stored {
    StoredEntry entry;
    uint64_t lease = 0;
    int64_t expiration_ms = 0;  // wall clock, as the lease reports it
    int64_t deadline_ns = 0;    // the landlord's monotonic deadline: visible only before it
    std::optional<TxnId> written_by;  // an uncommitted write: visible to that transaction only
    Hold hold = Hold::kFree;
    TxnId held_by;                    // kTxn: the transaction that took it
    bool has_row = false;
    bool lease_ended = false;  // while kTaking: removed if the take fails instead of freed
  };
  // A transaction's part here moves one way, each step under mu:
  //   kActive     operations join it;
  //   kPreparing  prepare is writing its prepared state (mu released): nothing joins it, and a
  //               second prepare, commit or abort waits for that write's outcome (txn_cv);
  //   kPrepared   its prepared state is durable: PREPARED is the vote;
  //   kFinishing  its outcome is being written and applied: a prepare now votes ABORTED, another
  //               commit or abort waits;
  // then it is erased. Only the call that moved it to kPreparing or kFinishing moves it on: a
  // failed prepare aborts it (ABORTED), a failed finish puts it back where it was. Keeping
  // "voting" apart from "durably prepared" is what stops a prepare from answering PREPARED for a
  // state that is not (or will never be) on disk.
  enum class Phase : uint8_t { kActive, kPreparing, kPrepared, kFinishing };
  struct TxnState {
    std::string manager;
    Clock::time_point joined_at;                    // when this space joined it
    std::optional<Clock::time_point> silent_since;  // its manager has not answered since
    std::vector<uint64_t> written;
    std::vector<uint64_t> taken;
    Phase phase = Phase::kActive;
    bool recovered = false;  // prepared before a restart: its outcome must be asked
    std::string coordinator;
    Clock::time_point prepared_at;  // kPrepared since (this run)
  };
  struct Waiter {
    Template tmpl;
    bool take = false;
    size_t max = 1;
    std::optional<TxnId> txn;
    Clock::time_point deadline;
    MatchDone done;
  };
  struct Watch {
    Template tmpl;
    std::string kind;
  };
  // The values a write refers to, referenced from its check until it is over (its entry holds
  // references of its own by then): the collector could otherwise take one in between, when the
  // write waits longer than the values' grace (a transaction's join, a long commit queue).
  struct ValuePins {
    ValueStore* store;
    std::vector<ContentHash> pinned;
    explicit ValuePins(ValueStore* s) : store(s) {}
    ValuePins(const ValuePins&) = delete;
    ValuePins& operator=(const ValuePins&) = delete;
    ~ValuePins() {
      for (const ContentHash& v : pinned) store->unref(v);
    }
  };
  // One request of the group commit: a write, or the durable removal of entries being taken.
  struct Op {
    bool write = true;
    std::shared_ptr<ValuePins> pins;  // write: of the values it refers to
    Entry entry;
    std::string encoded;
    int64_t duration_ms = 0;
    std::optional<TxnId> txn;
    std::vector<uint64_t> seqs;  // delete
    std::string key;             // write: idempotency key
    std::string holder;          // write: of the entry's lease (empty: its type)
  };
  struct OpOutcome {
    OpOutcome() = default;
    // What GroupCommit answers for a request it did not write (stopped).
    explicit OpOutcome(Status s) : status(std::move(s)) {}
    Status status;
    Written written;
    std::vector<Entry> taken;
  };
  // Replies to run once no lock is held.
  struct Deliveries {
    std::vector<std::pair<MatchDone, Result<std::vector<Entry>>>> replies;
    std::vector<std::pair<std::vector<uint64_t>, MatchDone>> takes;  // to remove durably, then reply
    std::vector<uint64_t> cancel;                                   // leases to cancel
  };

  SpaceOptions options;
  lease::Landlord& landlord;
  bool has_store = false;

  // Guards everything below: shared for reads that do not wait, exclusive for changes.
  mutable SharedMutex mu;
  std::unordered_map<uint64_t, Stored> entries;
  std::unordered_map<uint64_t, uint64_t> by_lease;  // lease id -> seq
  IndexKeys keys;
  std::unordered_map<uint64_t, Posting> by_type;   // keys.type(): type, each supertype, and "" (all)
  // Each field twice: keys.field(entry's own type, name, value) and keys.field("", name, value).
  // A template of a type no live entry names as a supertype finds exactly its entries under the
  // first; one of a supertype, or of any type, looks under the second (matches() sorts out the
  // types), so an entry costs two keys per field, not one per field and type it is a kind of.
  std::unordered_map<uint64_t, Posting> by_field;
  std::unordered_map<uint64_t, size_t> as_supertype;  // keys.type(t) -> live entries listing t as a supertype
  uint64_t next_seq = 1;
  std::map<TxnId, TxnState> txns;
  std::condition_variable_any txn_cv;  // a transaction left kPreparing or kFinishing (with mu)
  std::set<TxnId> ended;
  std::deque<TxnId> ended_order;
  // Transactions aborted here because their manager did not answer, and when: kept a day (past
  // any transaction lease), not among the last ended, which a busy space forgets in seconds. Were
  // one forgotten, an operation under it once the manager answers again would join it afresh
  // under the same incarnation, the manager would take that, and the transaction would commit
  // without what this space dropped.
  std::set<TxnId> abandoned;
  std::deque<std::pair<Clock::time_point, TxnId>> abandoned_order;  // oldest first
  std::map<uint64_t, Waiter> waiters;  // by arrival: the first waiter gets the first match
  std::multimap<Clock::time_point, uint64_t> deadlines;
  uint64_t next_waiter = 1;
  std::unordered_map<uint64_t, Watch> watches;
  std::unordered_map<Digest128, uint64_t, Digest128Hash> recent_keys;  // idempotency key's digest -> seq
  std::deque<Digest128> key_order;
  std::condition_variable_any timer_cv;
  bool stopping = false;
  // Entries visible again under their old seq (a failed take's, an abort's, a commit's), which a
  // walk in slices may have passed: numbered, the last kRevivedKept kept as (number, seq).
  static constexpr size_t kRevivedKept = 4096;
  uint64_t revived = 0;
  std::deque<std::pair<uint64_t, uint64_t>> revived_log;

  std::unique_ptr<GroupCommit<Op, OpOutcome>> commit;
  std::thread timer;

  // A template whose smallest posting is long but matches few walks many candidates (some 300 ns
  // each). Neither the thread a call arrives on (the RPC server's I/O thread, the joiner) nor the
  // lock is held for such a walk: the arriving thread walks at most kScanSlice candidates, and a
  // read or take not decided by then goes, having taken nothing, to the scan threads. Outside a
  // transaction they walk kScanSlice candidates per shared hold of mu and hold it exclusively only
  // to hold what a slice found and to decide; under one, whose view must be one, the walk is one
  // exclusive hold. A contents page stops after kScanSlice candidates.
  static constexpr size_t kScanSlice = 4096;
  static constexpr size_t kMaxQueuedScans = 1024;
  std::unique_ptr<JobThreads> scans;

  // Rows of entries whose leases ended, deleted by the remover thread (synchronous=NORMAL, like the
  // landlord's expiries: a row left behind by a crash is dropped at the next open, its lease gone).
  std::mutex ended_mu;
  std::condition_variable ended_cv;
  std::vector<uint64_t> dead_rows;
  std::vector<uint64_t> dead_watches;
  bool remover_stop = false;
  std::thread remover;
  bool watch_stop = false;  // under ended_mu
  std::condition_variable watch_cv;
  std::thread txn_watch;

  // Joining a transaction is a call to its manager, which may be served by this very process:
  // joins start, and the operations that waited for them run, on the joiner thread, never on the
  // RPC server's I/O thread. A join's answer comes back from any thread, possibly after the space
  // stopped: the queue is shared with the calls, and a stopped queue fails what arrives.
  struct JoinQueue {
    struct Item {
      std::function<void()> run;
      std::function<void(Status)> fail;  // instead of run, when the space stops first
    };
    std::mutex mu;
    std::condition_variable cv;
    std::deque<Item> items;
    bool stopped = false;
    std::string stopping_message;
    // Operations waiting for a join (or for the joiner thread), and the bytes they carry: a
    // client could otherwise queue writes without end under transactions whose manager never
    // answers. Counted from with_txn until the last copy of the operation's job and fail goes.
    static constexpr size_t kMaxWaiting = 4096;
    static constexpr size_t kMaxWaitingBytes = size_t{256} << 20;
    // Not `mu`: an operation's last copy may go while the joiner thread holds that.
    std::mutex room_mu;  // guards waiting, waiting_bytes
    size_t waiting = 0;
    size_t waiting_bytes = 0;

    struct Reservation {
      Reservation(std::shared_ptr<JoinQueue> q, size_t b) : queue(std::move(q)), bytes(b) {}
      Reservation(const Reservation&) = delete;
      Reservation& operator=(const Reservation&) = delete;
      std::shared_ptr<JoinQueue> queue;
      size_t bytes;
      ~Reservation() {
        std::lock_guard lock(queue->room_mu);
        --queue->waiting;
        queue->waiting_bytes -= bytes;
      }
    };
    // Room for one more operation of `bytes`, or null when the bounds are reached.
    static std::shared_ptr<Reservation> reserve(const std::shared_ptr<JoinQueue>& q, size_t bytes) {
      {
        std::lock_guard lock(q->room_mu);
        if (q->waiting >= kMaxWaiting || q->waiting_bytes + bytes > kMaxWaitingBytes) return nullptr;
        ++q->waiting;
        q->waiting_bytes += bytes;
      }
      return std::make_shared<Reservation>(q, bytes);
    }

    void push(Item item) {
      {
        std::lock_guard lock(mu);
        if (!stopped) {
          items.push_back(std::move(item));
          cv.notify_one();
          return;
        }
      }
      item.fail(unavailable(stopping_message));
    }
  };
  std::shared_ptr<JoinQueue> joins = std::make_shared<JoinQueue>();
  std::thread joiner;

  explicit Impl(SpaceOptions o) : options(std::move(o)), landlord(*options.landlord) {
    joins->stopping_message = "space " + options.name + " is stopping";
  }

  void joiner_loop() {
    JoinQueue& q = *joins;
    std::unique_lock lock(q.mu);
    for (;;) {
      q.cv.wait(lock, [&] { return q.stopped || !q.items.empty(); });
      if (q.stopped) {
        std::deque<JoinQueue::Item> left;
        left.swap(q.items);
        lock.unlock();
        for (auto& item : left) item.fail(unavailable(q.stopping_message));
        return;
      }
      JoinQueue::Item item = std::move(q.items.front());
      q.items.pop_front();
      lock.unlock();
      item.run();
      lock.lock();
    }
  }

  // Runs `job` now when the space already takes part in `txn` (or there is none), else on the
  // joiner thread once the manager has answered the join; `fail` gets the join's error. `bytes`:
  // what the job holds (entries to write), counted against the bound on waiting operations.
  void with_txn(const std::optional<TxnRef>& txn, std::function<void()> job, std::function<void(Status)> fail,
                size_t bytes = 0) {
    if (!txn) return job();
    Result<bool> needed = join_needed(*txn);
    if (!needed.ok()) return fail(needed.status());
    if (!*needed) return job();
    std::shared_ptr<JoinQueue::Reservation> room = JoinQueue::reserve(joins, bytes);
    if (!room) {
      return fail(unavailable(std::to_string(JoinQueue::kMaxWaiting) + " operations (or " +
                              std::to_string(JoinQueue::kMaxWaitingBytes >> 20) +
                              " MiB of them) already wait for their transactions' managers to answer a join; "
                              "retry later"));
    }
    // Every copy of the two holds the room, given back when the last goes.
    job = [job = std::move(job), room] { job(); };
    fail = [fail = std::move(fail), room](Status st) { fail(std::move(st)); };
    joins->push({[this, ref = *txn, job, fail] { start_join(ref, job, fail); }, fail});
  }

  // On the joiner thread: asks the manager; its answer queues `job` (or `fail`) back here.
  void start_join(const TxnRef& ref, std::function<void()> job, std::function<void(Status)> fail) {
    std::string participant;
    {
      std::shared_lock lock(mu);
      participant = options.participant_name;
    }
    options.join(ref, participant, [this, queue = joins, ref, job, fail](Status joined) {
      queue->push({[this, ref, joined, job, fail] {
                     Status st = joined_now(ref, joined);
                     if (!st.ok()) return fail(st);
                     job();
                   },
                   fail});
    });
  }

  // ---- indexes (mu exclusive) ----

  void index(uint64_t seq, const Entry& e, bool add) {
    boost::container::small_vector<IndexKey, 16> found;
    keys.of(e, found);
    index_keys(seq, std::span<const IndexKey>(found.data(), found.size()), add);
  }

  void index_keys(uint64_t seq, std::span<const IndexKey> found, bool add) {
    for (const IndexKey& k : found) {
      if (k.kind == IndexKey::kSupertype) {
        if (add) {
          ++as_supertype[k.key];
        } else if (auto it = as_supertype.find(k.key); it != as_supertype.end() && --it->second == 0) {
          as_supertype.erase(it);
        }
      }
      auto& map = k.kind == IndexKey::kField ? by_field : by_type;
      if (add) {
        map[k.key].insert(seq);
      } else if (auto it = map.find(k.key); it != map.end()) {
        it->second.erase(seq);
        if (it->second.empty()) map.erase(it);
      }
    }
  }

  // `entry` is s.entry decoded, for its index keys and value references.
  void insert_locked(uint64_t seq, Stored s, const Entry& entry) {
    boost::container::small_vector<IndexKey, 16> found;
    keys.of(entry, found);
    insert_keyed_locked(seq, std::move(s), std::span<const IndexKey>(found.data(), found.size()),
                        options.values ? value_refs_of(entry) : std::vector<ContentHash>{});
  }
  // The same with the entry's keys and value references worked out already.
  void insert_keyed_locked(uint64_t seq, Stored s, std::span<const IndexKey> found, const std::vector<ContentHash>& refs) {
    index_keys(seq, found, true);
    if (s.lease) by_lease[s.lease] = seq;
    if (options.values) {
      for (const ContentHash& v : refs) options.values->ref(v);
    }
    entries.emplace(seq, std::move(s));
  }

  // Removes an entry from memory; returns its lease (to cancel) or 0. `decoded`: the entry
  // decoded already, if the caller has it.
  uint64_t erase_locked(uint64_t seq, const Entry* decoded = nullptr) {
    auto it = entries.find(seq);
    if (it == entries.end()) return 0;
    Entry own;
    if (!decoded) {
      own = it->second.entry.decode();
      decoded = &own;
    }
    index(seq, *decoded, false);
    uint64_t lease = it->second.lease;
    if (lease) by_lease.erase(lease);
    if (options.values) {
      for (const ContentHash& v : value_refs_of(*decoded)) options.values->unref(v);
    }
    entries.erase(it);
    return lease;
  }

  void remember_key_locked(const std::string& key, uint64_t seq) {
    if (key.empty()) return;
    Digest128 d = digest128(key);
    if (recent_keys.insert_or_assign(d, seq).second) key_order.push_back(d);
    while (key_order.size() > kRememberKeys) {
      recent_keys.erase(key_order.front());
      key_order.pop_front();
    }
  }

  std::variant<Op, Result<Written>> prepare_write(WriteRequest& request, size_t pending);

  // The lease of a write already stored under `key` (mu held).
  std::optional<Written> keyed_write_locked(const std::string& key) const {
    if (key.empty()) return std::nullopt;
    auto k = recent_keys.find(digest128(key));
    if (k == recent_keys.end()) return std::nullopt;
    auto e = entries.find(k->second);
    if (e == entries.end() || e->second.written_by) return std::nullopt;
    return Written{e->second.lease, e->second.expiration_ms};
  }

  // ---- matching (mu held) ----

  const Posting* candidates_locked(const Template& t) const {
    static const Posting kEmpty;
    auto find = [](const std::unordered_map<uint64_t, Posting>& map, uint64_t key) {
      auto it = map.find(key);
      return it == map.end() ? &kEmpty : &it->second;
    };
    const uint64_t type_key = keys.type(t.type);
    const Posting* best = find(by_type, type_key);
    // Entries of the template's own type alone, unless some entry is a kind of it too.
    const std::string_view filed_under = as_supertype.contains(type_key) ? std::string_view() : t.type;
    std::string scratch;
    for (const auto& [name, value] : t.fields) {
      if (value.is_null()) continue;
      const Posting* p = find(by_field, keys.field(filed_under, name, value, scratch));
      if (p->size() < best->size()) best = p;
    }
    return best;
  }

  // Expired entries are hidden from the deadline on, before the landlord's expiry removes them.
  // The landlord's monotonic clock decides, so a step of the wall clock hides or shows nothing.
  static bool visible(const Stored& s, const std::optional<TxnId>& txn, int64_t now_ns) {
    if (s.hold != Hold::kFree) return false;
    if (s.written_by && (!txn || *s.written_by != *txn)) return false;
    return s.deadline_ns > now_ns;
  }

  // Calls f(seq, stored) for visible matches after `after`, in write order, until f returns false,
  // walking at most `budget` candidates. False when the budget ran out first: `last` is then the
  // last candidate walked, the place to go on from.
  template <class F>
  bool scan_locked(const Template& t, uint64_t after, const std::optional<TxnId>& txn, F&& f,
                   size_t budget = SIZE_MAX, uint64_t* last = nullptr) const {
    const Posting* p = candidates_locked(t);
    int64_t now = landlord.now_ns();
    bool walked_all = true;
    p->for_each_after(after, [&](uint64_t seq) {
      if (budget == 0) return walked_all = false;
      --budget;
      if (last) *last = seq;
      const Stored& s = entries.at(seq);
      return !visible(s, txn, now) || !s.entry.matches(t) || f(seq, s);
    });
    return walked_all;
  }

  void hold_locked(uint64_t seq, const std::optional<TxnId>& txn) {
    Stored& s = entries.at(seq);
    if (txn) {
      s.hold = Hold::kTxn;
      s.held_by = *txn;
      txns.at(*txn).taken.push_back(seq);
    } else {
      s.hold = Hold::kTaking;
    }
  }

  // An entry marked for a take outside a transaction that will not be taken (the take failed or
  // was given up) is free again; or gone, when its lease ended meanwhile and left it to the take.
  void untake_locked(uint64_t seq, Deliveries& d, std::vector<uint64_t>& ended_rows) {
    auto it = entries.find(seq);
    if (it == entries.end() || it->second.hold != Hold::kTaking) return;
    it->second.hold = Hold::kFree;
    if (it->second.lease_ended) {
      end_entry_locked(seq, ended_rows);
      return;
    }
    revive_locked(seq, d);
  }

  // An entry visible again under its old seq (committed, or freed by an abort or a failed take).
  void revive_locked(uint64_t seq, Deliveries& out) {
    revived_log.emplace_back(++revived, seq);
    if (revived_log.size() > kRevivedKept) revived_log.pop_front();
    offer_locked(seq, out);
  }

  // An entry just became visible (written, committed, or freed by an abort or a failed take):
  // waiters that match get it, first come first served; a take ends the offer.
  void offer_locked(uint64_t seq, Deliveries& out) {
    if (waiters.empty()) return;
    int64_t now = landlord.now_ns();
    for (auto it = waiters.begin(); it != waiters.end();) {
      Stored& s = entries.at(seq);
      Waiter& w = it->second;
      if (!visible(s, w.txn, now) || !s.entry.matches(w.tmpl)) {
        ++it;
        continue;
      }
      if (w.txn) {
        auto t = txns.find(*w.txn);
        if (t == txns.end() || t->second.phase != Phase::kActive) {  // voting or over: answered by end_waiters_of_locked
          ++it;
          continue;
        }
      }
      remove_deadline_locked(it->first, w.deadline);
      if (!w.take) {
        out.replies.emplace_back(std::move(w.done), just(s.entry.decode()));
        it = waiters.erase(it);
        continue;
      }
      hold_locked(seq, w.txn);
      if (w.txn) {
        out.replies.emplace_back(std::move(w.done), just(s.entry.decode()));
      } else {
        out.takes.emplace_back(std::vector<uint64_t>{seq}, std::move(w.done));
      }
      waiters.erase(it);
      return;
    }
  }

  // Answers the blocked reads and takes under `id` (mu exclusive): once a transaction votes or
  // ends, nothing may be read or taken under it, and its waiters would otherwise only time out.
  void end_waiters_of_locked(const TxnId& id, Deliveries& out) {
    for (auto it = waiters.begin(); it != waiters.end();) {
      if (!it->second.txn || *it->second.txn != id) {
        ++it;
        continue;
      }
      remove_deadline_locked(it->first, it->second.deadline);
      out.replies.emplace_back(std::move(it->second.done),
                               failed_precondition(std::string(it->second.take ? "take" : "read") + " under transaction " +
                                                   id.to_string() + ": the transaction is voting or over; it waited no longer"));
      it = waiters.erase(it);
    }
  }

  void remove_deadline_locked(uint64_t id, Clock::time_point deadline) {
    auto [lo, hi] = deadlines.equal_range(deadline);
    for (auto d = lo; d != hi; ++d) {
      if (d->second == id) {
        deadlines.erase(d);
        return;
      }
    }
  }

  // ---- delivering (no lock held) ----

  // Replies first: the leases' cancels are a transaction of their own, which a taker woken by a
  // write need not wait for (a crash between the two leaves the same leases either way).
  void deliver(Deliveries& d) {
    for (auto& [done, result] : d.replies) done(std::move(result));
    for (auto& [seqs, done] : d.takes) post_delete(std::move(seqs), std::move(done));
    if (!d.cancel.empty()) landlord.cancel_batch(d.cancel);
    d = Deliveries{};
  }

  // ---- reads and takes ----

  // A read or take in progress: where its walk got to and what it has taken so far.
  struct Match {
    MatchRequest request;
    MatchDone reply;
    std::optional<TxnId> txn;
    Clock::time_point arrived;
    uint64_t after = 0;          // the last candidate walked
    uint64_t revived_at_start = 0;
    int restarts = 0;            // walks started over because more entries came back than are kept
    std::vector<uint64_t> held;  // taken so far, outside a transaction (kTaking)
    size_t held_bytes = 0;
    MatchDone answer() { return std::exchange(reply, nullptr); }
    ~Match() {
      if (reply) answer()(unavailable(std::string("the space stopped before the ") + (request.take ? "take" : "read") + " was done"));
    }
  };

  // What a step of a call found: a read's first match, or a take's matches within what is left
  // of its count and bytes (counting what it holds).
  struct Found {
    std::vector<uint64_t> seqs;
    std::optional<Entry> entry;
    size_t bytes = 0;
    bool capped = false;     // a take's next match would pass the reply's byte bound
    uint64_t capped_at = 0;  // that match, walked but not collected
  };

  static bool enough(const Match& x, const Found& f) {
    return x.request.take ? f.capped || x.held.size() + f.seqs.size() >= x.request.max : f.entry.has_value();
  }

  // Adds the visible match `seq` to `f`; false once the call has enough.
  static bool collect(const Match& x, Found& f, uint64_t seq, const Stored& s) {
    if (!x.request.take) {
      f.entry = s.entry.decode();
      return false;
    }
    size_t bytes = s.entry.bytes().size();
    if ((!x.held.empty() || !f.seqs.empty()) && f.bytes + bytes > kMaxEntriesReplyBytes) {
      f.capped = true;
      f.capped_at = seq;
      return false;
    }
    f.bytes += bytes;
    f.seqs.push_back(seq);
    return x.held.size() + f.seqs.size() < x.request.max;
  }

  // Collects the matches that came back since `x` started walking, behind where it walked (mu
  // held). False when more came back than are kept: the walk must start over.
  bool behind_locked(const Match& x, Found& f) const {
    const uint64_t since = revived - x.revived_at_start;
    if (since == 0) return true;
    if (since > revived_log.size()) return false;
    const int64_t now = landlord.now_ns();
    for (auto it = revived_log.end() - static_cast<std::ptrdiff_t>(since); it != revived_log.end(); ++it) {
      const uint64_t seq = it->second;
      if (seq > x.after) continue;  // ahead: the walk gets there
      auto e = entries.find(seq);
      if (e == entries.end() || !visible(e->second, x.txn, now) || !e->second.entry.matches(x.request.tmpl)) continue;
      if (std::find(f.seqs.begin(), f.seqs.end(), seq) != f.seqs.end()) continue;  // found by the walk too
      if (!collect(x, f, seq, e->second)) break;
    }
    return true;
  }

  void restart_locked(Match& x) const {
    x.after = 0;
    x.revived_at_start = revived;
    ++x.restarts;
  }

  // Holds for `x` what a step found (mu exclusive): under a transaction for it, otherwise for
  // durable removal. What was found under an earlier, shared hold (`found_before`) is checked
  // again: a match taken or ended since is skipped; then what the step counted on is short, and
  // false says the walk must go on (from before the match it stopped at for the byte bound, which
  // it did not collect). What was found in this same hold is held as found.
  bool hold_found_locked(Match& x, Found& f, bool found_before) {
    const int64_t now = landlord.now_ns();
    bool all = true;
    for (uint64_t seq : f.seqs) {
      auto e = entries.find(seq);
      if (e == entries.end() ||
          (found_before && (!visible(e->second, x.txn, now) || !e->second.entry.matches(x.request.tmpl)))) {
        all = false;
        continue;
      }
      hold_locked(seq, x.txn);
      x.held.push_back(seq);
      x.held_bytes += e->second.entry.bytes().size();
    }
    f.seqs.clear();
    f.bytes = x.held_bytes;
    if (!all && f.capped) {
      x.after = std::min(x.after, f.capped_at - 1);
      f.capped = false;
    }
    return all;
  }

  // Past its caller's deadline, `x` frees what it holds and is answered DEADLINE_EXCEEDED.
  bool give_up_if_late(Match& x) {
    if (Clock::now() < x.request.deadline) return false;
    Deliveries d;
    if (!x.held.empty()) {
      std::unique_lock lock(mu);
      release_held_locked(x, d);
    }
    d.replies.emplace_back(x.answer(), deadline_exceeded(std::string(x.request.take ? "take" : "read") +
                                                         ": the caller's deadline passed during its walk"));
    deliver(d);
    return true;
  }

  // Frees what `x` holds outside a transaction (mu exclusive): a call given up before its answer.
  void release_held_locked(Match& x, Deliveries& d) {
    std::vector<uint64_t> ended_rows;
    for (uint64_t seq : x.held) untake_locked(seq, d, ended_rows);
    x.held.clear();
    x.held_bytes = 0;
    if (!ended_rows.empty()) delete_rows_later(ended_rows);
  }

  // Answers `x` with what it holds or found (mu exclusive); false when it has nothing.
  bool answer_found_locked(Match& x, Found& f, Deliveries& d) {
    if (f.entry) {
      d.replies.emplace_back(x.answer(), just(std::move(*f.entry)));
      return true;
    }
    if (x.held.empty()) return false;
    if (x.txn) {
      std::vector<Entry> out;
      for (uint64_t seq : x.held) out.push_back(entries.at(seq).entry.decode());
      d.replies.emplace_back(x.answer(), std::move(out));
    } else {
      d.takes.emplace_back(std::exchange(x.held, {}), x.answer());
    }
    return true;
  }

  // Nothing matched: `x` waits for a match until its timeout (from its arrival), or is answered
  // empty (mu exclusive).
  void wait_or_answer_locked(Match& x, Deliveries& d) {
    const MatchRequest& r = x.request;
    const Clock::time_point deadline = x.arrived + r.timeout;
    if (r.timeout.count() == 0 || deadline <= Clock::now()) {
      d.replies.emplace_back(x.answer(), std::vector<Entry>{});
    } else if (waiters.size() >= options.max_waiters) {
      d.replies.emplace_back(x.answer(), resource_exhausted("space " + options.name + " has " + std::to_string(waiters.size()) +
                                                            " blocking reads and takes waiting, its maximum"));
    } else {
      uint64_t id = next_waiter++;
      Waiter w{r.tmpl, r.take, r.max, x.txn, deadline, x.answer()};
      bool first = deadlines.empty() || w.deadline < deadlines.begin()->first;
      deadlines.emplace(deadline, id);
      waiters.emplace(id, std::move(w));
      if (first) timer_cv.notify_one();
    }
  }

  // A call admitted under a transaction that has voted or ended since: answered ABORTED, true
  // (mu held, shared or exclusive).
  bool refused_txn_locked(Match& x, Deliveries& d) const {
    if (!x.txn) return false;
    auto t = txns.find(*x.txn);
    if (t != txns.end() && t->second.phase == Phase::kActive) return false;
    d.replies.emplace_back(x.answer(), aborted("transaction " + x.txn->to_string() + " ended or is voting"));
    return true;
  }

  // The whole call in one hold of mu, walking at most `budget` candidates: true when answered (or
  // waiting as a waiter). On the thread the call arrived on (`arrived`), a walk that runs out
  // takes nothing, and a scan thread starts it over (a readIfExists outside a transaction goes on
  // from where it got to).
  bool whole_step(Match& x, size_t budget, bool arrived) {
    const MatchRequest& r = x.request;
    Deliveries d;
    const bool answered = [&] {
      Found f;
      if (!r.take && r.timeout.count() == 0) {  // nothing to hold, nothing to wait for
        std::shared_lock lock(mu);
        if (arrived) x.revived_at_start = revived;
        if (refused_txn_locked(x, d)) return true;
        uint64_t last = x.after;
        bool walked = scan_locked(r.tmpl, x.after, x.txn, [&](uint64_t seq, const Stored& s) { return collect(x, f, seq, s); },
                                  budget, &last);
        if (!walked && !f.entry) {
          if (!x.txn) x.after = last;
          return false;
        }
        d.replies.emplace_back(x.answer(), f.entry ? just(std::move(*f.entry)) : std::vector<Entry>{});
        return true;
      }
      std::unique_lock lock(mu);
      if (arrived) x.revived_at_start = revived;
      if (refused_txn_locked(x, d)) return true;
      f.bytes = x.held_bytes;
      bool walked = scan_locked(r.tmpl, 0, x.txn, [&](uint64_t seq, const Stored& s) { return collect(x, f, seq, s); }, budget);
      if (!walked && !enough(x, f)) return false;
      hold_found_locked(x, f, /*found_before=*/false);
      if (!answer_found_locked(x, f, d)) wait_or_answer_locked(x, d);
      return true;
    }();
    deliver(d);
    return answered;
  }

  // One slice of a call outside a transaction, on a scan thread: true when answered (or waiting).
  bool slice_step(Match& x) {
    const MatchRequest& r = x.request;
    Deliveries d;
    const bool answered = [&] {
      Found f;
      f.bytes = x.held_bytes;
      bool walked = false;
      {
        std::shared_lock lock(mu);
        walked = scan_locked(r.tmpl, x.after, std::nullopt, [&](uint64_t seq, const Stored& s) { return collect(x, f, seq, s); },
                             kScanSlice, &x.after);
        // An IfExists call answers from what it saw: with what came back behind it, if anything.
        if (walked && !enough(x, f) && r.timeout.count() == 0 && !behind_locked(x, f)) {
          restart_locked(x);
          walked = false;
        }
      }
      if (!r.take) {
        if (f.entry) {
          d.replies.emplace_back(x.answer(), just(std::move(*f.entry)));
          return true;
        }
        if (!walked) return false;
        if (r.timeout.count() == 0) {
          d.replies.emplace_back(x.answer(), std::vector<Entry>{});
          return true;
        }
      } else if (f.seqs.empty() && !walked) {
        return false;
      }
      // A take holds what it found; a walk at its end is decided; both in an exclusive hold.
      if (!f.seqs.empty()) DJINN_CRASH_POINT("space.match.found");
      std::unique_lock lock(mu);
      if (!hold_found_locked(x, f, /*found_before=*/true)) return false;  // a match went meanwhile: not decided on it
      if (!enough(x, f) && !walked) return false;
      if (!enough(x, f) && r.timeout.count() > 0) {
        // Before it waits: what was written since its last slice, and what came back behind it,
        // which no offer brings it once it waits.
        bool rest = scan_locked(r.tmpl, x.after, std::nullopt, [&](uint64_t seq, const Stored& s) { return collect(x, f, seq, s); },
                                kScanSlice, &x.after);
        bool overflowed = rest && !behind_locked(x, f);
        hold_found_locked(x, f, /*found_before=*/false);
        if (!enough(x, f)) {
          if (overflowed) restart_locked(x);
          if (overflowed || !rest) return false;
        }
      }
      if (!answer_found_locked(x, f, d)) wait_or_answer_locked(x, d);
      return true;
    }();
    deliver(d);
    return answered;
  }

  // Runs a read or take: where it arrived if that is quick, else on a scan thread.
  void match(std::shared_ptr<Match> x) {
    if (whole_step(*x, kScanSlice, /*arrived=*/true)) return;
    bool queued = scans->post([this, x] {
      on_scan_thread = true;
      DJINN_CRASH_POINT("space.match.long");
      if (give_up_if_late(*x)) return;
      if (x->txn) {
        whole_step(*x, SIZE_MAX, /*arrived=*/false);
        return;
      }
      // The third walk of a call whose walks were started over (entries coming back faster than
      // they are kept) goes whole.
      while (!(x->restarts >= 2 ? whole_step(*x, SIZE_MAX, /*arrived=*/false) : slice_step(*x))) {
        DJINN_CRASH_POINT("space.match.between_slices");
        if (give_up_if_late(*x)) return;
      }
    });
    if (!queued) {
      x->answer()(unavailable("space " + options.name + " is busy: " + std::to_string(kMaxQueuedScans) +
                              " reads and takes that walk long lists wait already; retry"));
    }
  }

  void post_delete(std::vector<uint64_t> seqs, MatchDone done) {
    DJINN_CRASH_POINT("space.take.before_commit");
    Op op;
    op.write = false;
    op.seqs = std::move(seqs);
    // Never refused as busy: the entries are the taker's already, hidden from everyone else.
    commit->post({std::move(op)}, [done = std::move(done)](std::vector<OpOutcome> out) {
      OpOutcome& o = out.front();
      if (!o.status.ok()) return done(o.status);
      done(std::move(o.taken));
    }, 0, false);
  }

  // ---- the group commit's batch ----

  // Moves each written entry out of its op into the space.
  std::vector<OpOutcome> run_batch(std::span<Op> ops) {
    std::vector<OpOutcome> outcomes(ops.size());
    std::vector<size_t> write_index;  // ops index of each grant
    std::vector<lease::GrantRequest> grants;
    for (size_t i = 0; i < ops.size(); ++i) {
      if (!ops[i].write) continue;
      write_index.push_back(i);
      grants.push_back(lease::GrantRequest{std::string(kEntryResource),
                                           ops[i].holder.empty() ? ops[i].entry.type : ops[i].holder,
                                           lease::Kind::kShared, ops[i].duration_ms, {}});
    }
    std::vector<uint64_t> seq_of(ops.size(), 0);
    // Takers waiting when the batch is written get its entries directly: such an entry is written
    // and taken in the same transaction, so it never needs a row of its own.
    std::vector<std::optional<Waiter>> consumer(ops.size());
    bool rows_written = false;
    // `granting` is empty when every grant was refused before the landlord wrote anything; the
    // batch's takes are then written alone.
    auto write_rows = [&](sqlite::Database* db, std::span<const Result<lease::Lease>> granting) -> Status {
      rows_written = true;
      auto granted = [&](size_t k) { return k < granting.size() && granting[k].ok(); };
      {
        std::unique_lock lock(mu);
        for (size_t k = 0; k < write_index.size(); ++k) {
          size_t i = write_index[k];
          if (!granted(k)) continue;
          seq_of[i] = next_seq++;
          if (ops[i].txn) continue;  // staged until prepare
          consumer[i] = claim_taker_locked(ops[i].entry);
        }
      }
      if (!db) return Status::Ok();
      for (size_t k = 0; k < write_index.size(); ++k) {
        size_t i = write_index[k];
        if (!granted(k) || ops[i].txn || consumer[i]) continue;
        Result<sqlite::Statement*> st = db->cached(kInsertEntry);
        if (!st.ok()) return st.status();
        std::optional<std::string_view> key;
        if (!ops[i].key.empty()) key = ops[i].key;
        DJINN_RETURN_IF_ERROR((*st)->bind_all(seq_of[i], granting[k]->id, nullptr, as_bytes(ops[i].encoded), key));
        DJINN_RETURN_IF_ERROR((*st)->run());
      }
      for (const Op& op : ops) {
        if (op.write) continue;
        for (uint64_t seq : op.seqs) {
          Result<sqlite::Statement*> st = db->cached(kDeleteEntry);
          if (!st.ok()) return st.status();
          DJINN_RETURN_IF_ERROR((*st)->bind_all(seq));
          DJINN_RETURN_IF_ERROR((*st)->run());
        }
      }
      if (DJINN_FAIL_POINT("space.batch.write_failed")) return internal_error("space.batch.write_failed (injected)");
      DJINN_CRASH_POINT("space.batch.before_commit");
      return Status::Ok();
    };
    std::vector<Result<lease::Lease>> leases;
    Status written;
    if (!grants.empty()) {
      leases = landlord.grant_batch(grants, [&](sqlite::Database& db, std::span<const Result<lease::Lease>> g) {
        return write_rows(&db, g);
      });
      if (!has_store && !rows_written) {
        // An in-memory landlord runs no transaction: the writer is still called for its claims.
        (void)write_rows(nullptr, leases);
      }
    }
    bool any_delete = std::any_of(ops.begin(), ops.end(), [](const Op& op) { return !op.write; });
    if (!rows_written) {
      // Every grant failed (or there were none): the deletes still need their transaction.
      written = any_delete ? landlord.transact(sqlite::Sync::kFull, [&](sqlite::Database& db) {
        return write_rows(&db, {});
      }) : Status::Ok();
    } else {
      // The grant transaction failed as a whole when a granted lease reports its error.
      for (size_t k = 0; k < leases.size(); ++k) {
        if (!leases[k].ok() && seq_of[write_index[k]] != 0) written = leases[k].status();
      }
    }
    if (rows_written && has_store) DJINN_CRASH_POINT("space.batch.after_commit");

    Deliveries d;
    std::vector<uint64_t> ended_rows;
    std::vector<std::pair<uint64_t, uint64_t>> inserted;  // (seq, lease) of the entries this batch put in
    {
      std::unique_lock lock(mu);
      // Deletes: the entries were marked kTaking when they were matched.
      for (size_t i = 0; i < ops.size(); ++i) {
        if (ops[i].write) continue;
        if (!written.ok()) {
          outcomes[i].status = Status(written.code(), "take: " + written.message());
          for (uint64_t seq : ops[i].seqs) untake_locked(seq, d, ended_rows);
          continue;
        }
        for (uint64_t seq : ops[i].seqs) {
          auto it = entries.find(seq);
          if (it == entries.end()) continue;
          outcomes[i].taken.push_back(it->second.entry.decode());
          if (uint64_t l = erase_locked(seq, &outcomes[i].taken.back())) d.cancel.push_back(l);
        }
      }
      for (size_t k = 0; k < write_index.size(); ++k) {
        size_t i = write_index[k];
        Op& op = ops[i];
        if (!leases[k].ok()) {
          outcomes[i].status = leases[k].status();
          if (consumer[i]) d.replies.emplace_back(std::move(consumer[i]->done), leases[k].status());
          continue;
        }
        const lease::Lease& l = *leases[k];
        outcomes[i].written = Written{l.id, l.expiration_ms, l.granted_ms};
        uint64_t seq = seq_of[i];
        if (consumer[i]) {
          d.replies.emplace_back(std::move(consumer[i]->done), std::vector<Entry>{op.entry});
          d.cancel.push_back(l.id);
          publish_locked(op.entry);
          offer_readers_locked(op.entry, d);
          continue;
        }
        Stored s;
        s.entry = StoredEntry(op.encoded);
        s.lease = l.id;
        s.expiration_ms = l.expiration_ms;
        s.deadline_ns = l.deadline_ns;
        s.has_row = has_store && !op.txn;
        if (op.txn) {
          auto t = txns.find(*op.txn);
          if (t == txns.end() || t->second.phase != Phase::kActive) {
            outcomes[i].status = aborted("write: transaction " + op.txn->to_string() +
                                         (t == txns.end() ? " ended" : " is already voting") + " before the write");
            d.cancel.push_back(l.id);
            continue;
          }
          s.written_by = *op.txn;
          t->second.written.push_back(seq);
          inserted.emplace_back(seq, l.id);
          insert_locked(seq, std::move(s), op.entry);
          offer_locked(seq, d);  // to waiters under the same transaction, the only ones it is visible to
          continue;
        }
        inserted.emplace_back(seq, l.id);
        insert_locked(seq, std::move(s), op.entry);
        remember_key_locked(op.key, seq);
        publish_locked(op.entry);
        offer_locked(seq, d);
      }
    }
    deliver(d);
    // A lease that ended between its grant's commit and its entry's insertion (one shorter than the
    // fsync, a cancelHolder racing the write) had its event find no entry; the landlord says which
    // it no longer holds. Asked outside the lock, which its events take.
    std::vector<std::pair<uint64_t, uint64_t>> gone;
    for (const auto& [seq, lease] : inserted) {
      if (!landlord.find(lease)) gone.emplace_back(seq, lease);
    }
    if (!gone.empty()) {
      std::unique_lock lock(mu);
      for (const auto& [seq, lease] : gone) {
        auto it = entries.find(seq);
        if (it != entries.end() && it->second.lease == lease) end_entry_locked(seq, ended_rows);
      }
    }
    if (!ended_rows.empty()) delete_rows_later(ended_rows);
    return outcomes;
  }

  // An entry whose lease ended: removed, its row queued in `rows`; or, while a take holds it, left
  // to the take, which removes it whether it succeeds or fails (mu exclusive).
  void end_entry_locked(uint64_t seq, std::vector<uint64_t>& rows) {
    Stored& s = entries.at(seq);
    if (s.hold == Hold::kTaking) {
      s.lease_ended = true;
      return;
    }
    if (s.has_row) rows.push_back(seq);
    erase_locked(seq);
  }

  // A notify registration whose lease ended: forgotten, its row queued for deletion.
  void end_watch(uint64_t id) {
    {
      std::unique_lock lock(mu);
      auto it = watches.find(id);
      if (it == watches.end()) return;
      if (options.publisher) options.publisher->forget(it->second.kind);
      watches.erase(it);
    }
    std::lock_guard lock(ended_mu);
    dead_watches.push_back(id);
    ended_cv.notify_one();
  }

  // Rows of entries whose leases ended, for the remover thread.
  void delete_rows_later(std::span<const uint64_t> seqs) {
    std::lock_guard lock(ended_mu);
    dead_rows.insert(dead_rows.end(), seqs.begin(), seqs.end());
    ended_cv.notify_one();
  }

  // The first waiting taker (outside any transaction) that `e` would satisfy, removed from the
  // waiters (mu exclusive).
  std::optional<Waiter> claim_taker_locked(const Entry& e) {
    for (auto it = waiters.begin(); it != waiters.end(); ++it) {
      Waiter& w = it->second;
      if (!w.take || w.txn || !matches(w.tmpl, e)) continue;
      remove_deadline_locked(it->first, w.deadline);
      Waiter out = std::move(w);
      waiters.erase(it);
      return out;
    }
    return std::nullopt;
  }

  // Readers waiting for an entry that a taker consumed in the same batch still see it.
  void offer_readers_locked(const Entry& e, Deliveries& d) {
    for (auto it = waiters.begin(); it != waiters.end();) {
      Waiter& w = it->second;
      if (w.take || w.txn || !matches(w.tmpl, e)) {
        ++it;
        continue;
      }
      remove_deadline_locked(it->first, w.deadline);
      d.replies.emplace_back(std::move(w.done), std::vector<Entry>{e});
      it = waiters.erase(it);
    }
  }

  bool watched_locked() const { return options.publisher && !watches.empty(); }

  // The event is encoded once and shared by every registration it goes to (its kind names the
  // registration), so a write matching many costs a send to each, not an encoding.
  void publish_locked(const Entry& e) {
    if (!watched_locked()) return;
    std::optional<events::SharedPayload> payload;
    for (const auto& [id, w] : watches) {
      if (!matches(w.tmpl, e)) continue;
      if (!payload) {
        capnp::MallocMessageBuilder message(rpc::kSmallMessageWords);
        to_capnp(e, message.initRoot<proto::SpaceNotifyEvent>().initEntry());
        payload.emplace(message);
      }
      options.publisher->publish(w.kind, e.type, *payload);
    }
  }

  // ---- transactions ----

  void remember_ended_locked(const TxnId& id) {
    if (ended.insert(id).second) ended_order.push_back(id);
    while (ended_order.size() > kRememberEnded) {
      ended.erase(ended_order.front());
      ended_order.pop_front();
    }
  }

  // ABORTED for a transaction that ended here, or that this space abandoned (mu held, either way).
  Status no_rejoin_locked(const TxnId& id) const {
    if (ended.count(id)) return aborted("transaction " + id.to_string() + " has ended");
    if (abandoned.count(id)) return aborted("transaction " + id.to_string() + " was aborted here: its manager did not answer");
    return Status::Ok();
  }
  // Notes that this space aborted `id` because its manager did not answer: a day at most, the
  // oldest going first past kMaxAbandoned.
  void remember_abandoned_locked(const TxnId& id, Clock::time_point now) {
    if (abandoned.insert(id).second) abandoned_order.emplace_back(now, id);
    while (!abandoned_order.empty() && (abandoned_order.size() > kMaxAbandoned ||
                                        now - abandoned_order.front().first > kRememberAbandoned)) {
      abandoned.erase(abandoned_order.front().second);
      abandoned_order.pop_front();
    }
  }
  static constexpr auto kRememberAbandoned = std::chrono::hours(24);
  static constexpr size_t kMaxAbandoned = 65'536;

  // Why no operation may join a transaction that is no longer kActive.
  static Status closed_to_operations(const TxnId& id, Phase phase) {
    if (phase == Phase::kFinishing) return aborted("transaction " + id.to_string() + " has ended");
    return failed_precondition("transaction " + id.to_string() + " is already voting");
  }

  // Waits (mu held through `lock`) while another call is writing `id`'s state: a prepare
  // (kPreparing), and with `finishing` also a finish (kFinishing). Returns where `id` stands then,
  // or txns.end() once it is over.
  std::map<TxnId, TxnState>::iterator settled_locked(std::unique_lock<SharedMutex>& lock, const TxnId& id,
                                                     bool finishing) {
    bool announced = false;
    for (;;) {
      auto t = txns.find(id);
      if (t == txns.end()) return t;
      const Phase p = t->second.phase;
      if (p != Phase::kPreparing && !(finishing && p == Phase::kFinishing)) return t;
      if (!announced) {  // tests land a call here; the point is passed without the lock
        announced = true;
        lock.unlock();
        DJINN_CRASH_POINT("space.txn.waiting");
        lock.lock();
        continue;
      }
      txn_cv.wait(lock);
    }
  }

  // Whether an operation under `ref` must first join it: false when the space takes part already;
  // an error when it cannot (voting, ended, no manager client).
  Result<bool> join_needed(const TxnRef& ref) {
    if (ref.id.is_nil()) return invalid_argument("transaction id is nil");
    std::shared_lock lock(mu);
    if (auto t = txns.find(ref.id); t != txns.end()) {
      if (t->second.phase != Phase::kActive) return closed_to_operations(ref.id, t->second.phase);
      return false;
    }
    DJINN_RETURN_IF_ERROR(no_rejoin_locked(ref.id));
    if (!options.join) {
      return failed_precondition("space " + options.name + " takes part in no transactions (no transaction manager client)");
    }
    return true;
  }

  // Records the manager's answer to a join of `ref`.
  Status joined_now(const TxnRef& ref, const Status& joined) {
    if (!joined.ok()) {
      return Status(joined.code(), "transaction " + ref.id.to_string() + " at " + ref.manager + ": " + joined.message());
    }
    std::unique_lock lock(mu);
    DJINN_RETURN_IF_ERROR(no_rejoin_locked(ref.id));
    auto [t, fresh] = txns.try_emplace(ref.id);
    if (fresh) {
      t->second.manager = ref.manager;
      t->second.joined_at = Clock::now();
    }
    if (t->second.phase != Phase::kActive) return closed_to_operations(ref.id, t->second.phase);
    return Status::Ok();
  }

  ContentsPage contents_page(const Template& tmpl, uint64_t cursor, size_t max, const std::optional<TxnId>& txn);

  // Joins `ref` if need be and waits for the answer (contents, which answers on its caller's thread).
  Status ensure_joined(const TxnRef& ref) {
    Result<bool> needed = join_needed(ref);
    if (!needed.ok()) return needed.status();
    if (!*needed) return Status::Ok();
    if (std::this_thread::get_id() == joiner.get_id()) {  // it would wait for itself
      return failed_precondition("transaction " + ref.id.to_string() +
                                 ": its first operation here cannot run inside a space callback; call it from "
                                 "another thread");
    }
    auto answer = std::make_shared<std::promise<Status>>();
    auto joined = answer->get_future();
    joins->push({[this, ref, answer] {
                   start_join(ref, [answer] { answer->set_value(Status::Ok()); },
                              [answer](Status st) { answer->set_value(std::move(st)); });
                 },
                 [answer](Status st) { answer->set_value(std::move(st)); }});
    return joined.get();
  }

  // ---- lease ends and the remover thread ----

  void remover_loop() {
    std::unique_lock lock(ended_mu);
    for (;;) {
      ended_cv.wait(lock, [&] { return remover_stop || !dead_rows.empty() || !dead_watches.empty(); });
      if (remover_stop) return;
      std::vector<uint64_t> rows, watch_ids;
      rows.swap(dead_rows);
      watch_ids.swap(dead_watches);
      lock.unlock();
      Status st = landlord.transact(sqlite::Sync::kNormal, [&](sqlite::Database& db) -> Status {
        for (uint64_t seq : rows) {
          Result<sqlite::Statement*> s = db.cached(kDeleteEntry);
          if (!s.ok()) return s.status();
          DJINN_RETURN_IF_ERROR((*s)->bind_all(seq));
          DJINN_RETURN_IF_ERROR((*s)->run());
        }
        for (uint64_t id : watch_ids) {
          Result<sqlite::Statement*> s = db.cached(kDeleteWatch);
          if (!s.ok()) return s.status();
          DJINN_RETURN_IF_ERROR((*s)->bind_all(id));
          DJINN_RETURN_IF_ERROR((*s)->run());
        }
        return Status::Ok();
      });
      if (!st.ok()) DJINN_LOG(kWarn, "space") << options.name << ": deleting ended entries: " << st.to_string();
      lock.lock();
    }
  }

  // ---- transactions whose manager must be asked ----

  // Asks the outcome of what the last run left prepared, every in_doubt_retry until nothing is in
  // doubt; and, every txn_check_interval, that of transactions joined longer ago than that and not
  // yet voting (check_active). A thread of its own: a manager that does not answer costs the asking
  // call's timeout, and must hold up neither the deletion of ended entries nor other managers.
  void txn_watch_loop(bool doubts) {
    const bool checks = options.txn_check_interval.count() > 0;
    auto next_doubt = Clock::now() + options.in_doubt_retry;
    auto next_check = Clock::now() + options.txn_check_interval;
    std::unique_lock lock(ended_mu);
    for (;;) {
      if (!doubts && !checks) return;
      auto wake = !doubts ? next_check : !checks ? next_doubt : std::min(next_doubt, next_check);
      if (watch_cv.wait_until(lock, wake, [&] { return watch_stop; })) return;
      lock.unlock();
      if (doubts && Clock::now() >= next_doubt) {
        Result<size_t> still = resolve();
        if (still.ok() && *still == 0) {
          DJINN_LOG(kInfo, "space") << options.name << ": no transaction left in doubt";
          doubts = false;
        }
        next_doubt = Clock::now() + options.in_doubt_retry;
      }
      if (checks && Clock::now() >= next_check) {
        check_active();
        next_check = Clock::now() + options.txn_check_interval;
      }
      lock.lock();
    }
  }

  // Asks the outcome of each transaction of `by_manager` (keyed by the endpoint to ask), each
  // manager's in turn on a thread of its own, up to kAskAtOnce managers at once. A manager that
  // gives no answer (kUnknown: unreachable, or silent past the call's timeout) is asked nothing
  // more this round, and `answer` gets kUnknown for its other transactions: a round costs at most
  // one timeout however many transactions a lost manager has here. `answer` runs on those threads.
  void ask_outcomes(const std::map<std::string, std::vector<TxnId>>& by_manager,
                    const std::function<void(const TxnId&, txn::Outcome)>& answer) {
    auto ask_group = [&](const std::string& manager, const std::vector<TxnId>& ids) {
      txn::Outcome outcome = txn::Outcome::kActive;
      for (const TxnId& id : ids) {
        if (outcome != txn::Outcome::kUnknown && stopping_watch()) outcome = txn::Outcome::kUnknown;
        if (outcome != txn::Outcome::kUnknown) outcome = options.ask_outcome(txn::InDoubt{id, manager, {}});
        answer(id, outcome);
      }
    };
    constexpr size_t kAskAtOnce = 8;
    auto it = by_manager.begin();
    while (it != by_manager.end()) {
      std::vector<std::future<void>> asking;
      for (; it != by_manager.end() && asking.size() < kAskAtOnce; ++it) {
        asking.push_back(std::async(std::launch::async, ask_group, std::cref(it->first), std::cref(it->second)));
      }
      for (auto& f : asking) f.get();
    }
  }

  void check_active();
  // FAILED_PRECONDITION for a blocking call made on a thread of the space's own (a completion's)
  // that the call would have to wait for.
  Status may_wait(std::string_view what) const;

  bool stopping_watch() {
    std::lock_guard lock(ended_mu);
    return watch_stop;
  }

  Result<size_t> resolve();
  // `unvoted_only`: an abort decided here, which must not touch a transaction that has voted
  // since (its manager may commit it now).
  Status finish(const TxnId& id, bool commit, bool unvoted_only = false);
  void apply_outcome_locked(const TxnId& id, const TxnState& st, bool commit_it, Deliveries& d);

  // ---- the timer: blocking reads and takes that time out ----

  void timer_loop() {
    std::unique_lock lock(mu);
    for (;;) {
      if (stopping) return;
      if (deadlines.empty()) {
        timer_cv.wait(lock);
        continue;
      }
      auto first = deadlines.begin()->first;
      if (Clock::now() < first) {
        timer_cv.wait_until(lock, first);
        continue;
      }
      Deliveries d;
      auto now = Clock::now();
      while (!deadlines.empty() && deadlines.begin()->first <= now) {
        uint64_t id = deadlines.begin()->second;
        deadlines.erase(deadlines.begin());
        auto w = waiters.find(id);
        if (w == waiters.end()) continue;
        d.replies.emplace_back(std::move(w->second.done), std::vector<Entry>{});
        waiters.erase(w);
      }
      lock.unlock();
      deliver(d);
      lock.lock();
    }
  }

  // ---- open ----

  Status load_store(sqlite::Database& db);
  void cancel_orphan_leases();
};

}  // namespace djinn::space

namespace djinn::space {

// ---- open ----

namespace {

// An entry row as the loading thread read it.
struct LoadedRow {
  uint64_t seq = 0;
  uint64_t lease = 0;
  Status error;      // the entry did not decode
  std::string data;  // as stored, which the space keeps
  uint32_t keys_at = 0, keys_count = 0;  // its index keys in the block's keys
  std::vector<ContentHash> refs;        // the values it refers to
  std::optional<TxnId> txn;
  std::optional<std::string> key;
};

// Rows and their index keys, worked out by the loading thread: the decoded entries never leave it.
struct LoadedBlock {
  std::vector<LoadedRow> rows;
  std::vector<IndexKey> keys;
};

// Steps `select` (seq, lease, txn, data, ikey) on a thread of its own, decoding each entry for its
// index keys (`keys`) and value references (`with_refs`), and hands the rows over in blocks; at
// most a few blocks wait, so memory stays bounded. Says how far it has got every kLoadProgressRows
// rows.
class RowLoader {
 public:
  RowLoader(sqlite::Statement& select, size_t rows, const IndexKeys& keys, bool with_refs, const std::string& name)
      : select_(select), rows_(rows), keys_(keys), with_refs_(with_refs), name_(name), thread_([this] { run(); }) {}
  ~RowLoader() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  RowLoader(const RowLoader&) = delete;
  RowLoader& operator=(const RowLoader&) = delete;

  // The next block into `out`; false once every row has been handed over (or reading failed).
  bool next(LoadedBlock& out) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !ready_.empty() || done_; });
    if (ready_.empty()) return false;
    out = std::move(ready_.front());
    ready_.pop_front();
    cv_.notify_all();
    return true;
  }
  Status status() {
    std::lock_guard lock(mu_);
    return status_;
  }

 private:
  static constexpr size_t kBlockRows = 1024;
  static constexpr size_t kMaxBlocksWaiting = 8;

  void run() {
    name_this_thread("space-load");
    const auto started = Clock::now();
    Status failed;
    LoadedBlock block;
    for (size_t read = 0;; ++read) {
      Result<bool> row = select_.step();
      if (!row.ok()) {
        failed = row.status();
        break;
      }
      if (!*row) break;
      if (read > 0 && read % kLoadProgressRows == 0) {
        DJINN_LOG(kInfo, "space") << name_ << ": loading entries, " << read << " of " << rows_ << " after "
                                  << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count()
                                  << " ms";
      }
      LoadedRow r;
      r.seq = static_cast<uint64_t>(select_.column_int64(0));
      r.lease = static_cast<uint64_t>(select_.column_int64(1));
      if (!select_.column_is_null(2)) {
        std::vector<uint8_t> id = select_.column_blob(2);
        if (id.size() == 16) r.txn = TxnId::from_bytes(std::span<const uint8_t, 16>(id.data(), 16));
      }
      std::vector<uint8_t> data = select_.column_blob(3);
      Result<Entry> entry = from_stored<Entry, proto::Entry>(data);
      if (entry.ok()) {
        r.keys_at = static_cast<uint32_t>(block.keys.size());
        keys_.of(*entry, block.keys);
        r.keys_count = static_cast<uint32_t>(block.keys.size() - r.keys_at);
        if (with_refs_) r.refs = value_refs_of(*entry);
        r.data.assign(data.begin(), data.end());
      } else {
        r.error = entry.status();
      }
      if (!select_.column_is_null(4)) r.key = select_.column_text(4);
      block.rows.push_back(std::move(r));
      if (block.rows.size() == kBlockRows && !hand_over(block)) return;
    }
    if (!block.rows.empty()) (void)hand_over(block);
    std::lock_guard lock(mu_);
    status_ = failed;
    done_ = true;
    cv_.notify_all();
  }

  // False when the consumer went away.
  bool hand_over(LoadedBlock& block) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return ready_.size() < kMaxBlocksWaiting || stop_; });
    if (stop_) return false;
    ready_.push_back(std::move(block));
    block = LoadedBlock{};
    cv_.notify_all();
    return true;
  }

  sqlite::Statement& select_;
  const size_t rows_;
  const IndexKeys& keys_;
  const bool with_refs_;
  const std::string name_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<LoadedBlock> ready_;
  bool done_ = false;
  bool stop_ = false;
  Status status_;
  std::thread thread_;  // last: started once the rest exists
};

}  // namespace

Status Space::Impl::load_store(sqlite::Database& db) {
  has_store = true;
  DJINN_RETURN_IF_ERROR(db.exec(kCreateSchema));
  {
    Result<sqlite::Statement> get = db.prepare("SELECT value FROM space_meta WHERE key = 'schema'");
    if (!get.ok()) return get.status();
    Result<bool> row = get->step();
    if (!row.ok()) return row.status();
    int64_t version = *row ? get->column_int64(0) : 0;
    get->reset();
    if (version > kSchemaVersion) {
      return failed_precondition("the space's tables have schema version " + std::to_string(version) +
                                 ", newer than this build's " + std::to_string(kSchemaVersion) + " (use a newer djinn)");
    }
    if (version < 2) DJINN_RETURN_IF_ERROR(db.exec(kUpgradeV1ToV2));
    Result<sqlite::Statement> put = db.prepare("INSERT OR REPLACE INTO space_meta(key, value) VALUES ('schema', ?1)");
    if (!put.ok()) return put.status();
    DJINN_RETURN_IF_ERROR(put->bind_all(kSchemaVersion));
    DJINN_RETURN_IF_ERROR(put->run());
  }
  std::vector<uint64_t> lapsed;
  std::unique_lock lock(mu);
  {
    // Tables sized once for what the file holds, rather than rehashed at every doubling.
    Result<sqlite::Statement> count = db.prepare("SELECT count(*) FROM space_entry");
    if (!count.ok()) return count.status();
    Result<bool> counted = count->step();
    if (!counted.ok()) return counted.status();
    size_t rows = *counted ? static_cast<size_t>(count->column_int64(0)) : 0;
    entries.reserve(rows);
    by_lease.reserve(rows);
    by_field.reserve(rows);
    Result<sqlite::Statement> select = db.prepare("SELECT seq, lease, txn, data, ikey FROM space_entry ORDER BY seq");
    if (!select.ok()) return select.status();
    // A second thread reads and decodes the rows while this one files them: the two halves of
    // loading cost about the same, and a restart is waited for.
    RowLoader loader(*select, rows, keys, options.values != nullptr, options.name);
    for (LoadedBlock block; loader.next(block);) {
      for (LoadedRow& r : block.rows) {
        next_seq = std::max(next_seq, r.seq + 1);
        std::optional<lease::Lease> held = r.lease ? landlord.find(r.lease) : std::nullopt;
        if (!r.error.ok() || !held) {
          if (!r.error.ok()) {
            DJINN_LOG(kWarn, "space") << options.name << ": dropping an unreadable entry row: " << r.error.to_string();
          }
          lapsed.push_back(r.seq);
          continue;
        }
        Stored s;
        s.entry = StoredEntry(r.data);
        s.lease = r.lease;
        s.expiration_ms = held->expiration_ms;
        s.deadline_ns = held->deadline_ns;
        s.has_row = true;
        if (r.txn) {
          s.written_by = *r.txn;
          TxnState& st = txns[*r.txn];
          st.written.push_back(r.seq);
          st.phase = Phase::kPrepared;
          st.recovered = true;
        }
        insert_keyed_locked(r.seq, std::move(s), std::span<const IndexKey>(block.keys).subspan(r.keys_at, r.keys_count),
                            r.refs);
        if (r.key) remember_key_locked(*r.key, r.seq);
      }
    }
    DJINN_RETURN_IF_ERROR(loader.status());
  }
  {
    Result<sqlite::Statement> select = db.prepare("SELECT id, template, by_ref FROM space_watch");
    if (!select.ok()) return select.status();
    std::vector<uint64_t> dead;
    for (;;) {
      Result<bool> row = select->step();
      if (!row.ok()) return row.status();
      if (!*row) break;
      uint64_t id = static_cast<uint64_t>(select->column_int64(0));
      Result<Template> tmpl = from_stored<Template, proto::Template>(select->column_blob(1));
      if (!tmpl.ok() || !landlord.find(id)) {
        dead.push_back(id);
        continue;
      }
      watches[id] = Watch{std::move(*tmpl), select->column_int64(2) ? notify_event_kind(id) : id_notify_event_kind(id)};
      if (options.publisher) options.publisher->declare(watches[id].kind);
    }
    for (uint64_t id : dead) {
      Result<sqlite::Statement*> st = db.cached(kDeleteWatch);
      if (!st.ok()) return st.status();
      DJINN_RETURN_IF_ERROR((*st)->bind_all(id));
      DJINN_RETURN_IF_ERROR((*st)->run());
    }
  }
  Result<txn::ParticipantLog> log = txn::ParticipantLog::open(db);
  if (!log.ok()) return log.status();
  Result<std::vector<txn::InDoubt>> doubts = log->in_doubt();
  if (!doubts.ok()) return doubts.status();
  for (const txn::InDoubt& d : *doubts) {
    TxnState& st = txns[d.txn];
    st.phase = Phase::kPrepared;
    st.recovered = true;
    st.coordinator = d.coordinator;
    for (const TakenRef& taken : decode_taken(d.state)) {
      // No entry written from here on gets a sequence the state names, even once the taken
      // entry's row is gone (its lease ended while the transaction is in doubt).
      next_seq = std::max(next_seq, taken.seq + 1);
      auto it = entries.find(taken.seq);
      if (it == entries.end() || (taken.lease != 0 && it->second.lease != taken.lease)) continue;
      it->second.hold = Hold::kTxn;
      it->second.held_by = d.txn;
      st.taken.push_back(taken.seq);
    }
  }
  // Rows of a transaction without a prepared record cannot exist (both are written in one SQLite
  // transaction); rows that do are dropped as aborted.
  for (auto it = txns.begin(); it != txns.end();) {
    if (!it->second.coordinator.empty()) {
      ++it;
      continue;
    }
    for (uint64_t seq : it->second.written) {
      erase_locked(seq);
      lapsed.push_back(seq);
    }
    it = txns.erase(it);
  }
  for (uint64_t seq : lapsed) {
    Result<sqlite::Statement*> st = db.cached(kDeleteEntry);
    if (!st.ok()) return st.status();
    DJINN_RETURN_IF_ERROR((*st)->bind_all(seq));
    DJINN_RETURN_IF_ERROR((*st)->run());
  }
  if (!lapsed.empty()) DJINN_LOG(kInfo, "space") << options.name << ": " << lapsed.size() << " entries lapsed while closed";
  return Status::Ok();
}

// Leases of entries that never committed (granted with a transaction's write that was lost, or by
// a batch whose rows a crash cut off) are cancelled: nothing holds them.
void Space::Impl::cancel_orphan_leases() {
  size_t cancelled = landlord.cancel_unheld(kEntryResource, [&](lease::LeaseId id) {
    std::shared_lock lock(mu);
    return by_lease.count(id) > 0;
  });
  cancelled += landlord.cancel_unheld(kNotifyResource, [&](lease::LeaseId id) {
    std::shared_lock lock(mu);
    return watches.count(id) > 0;
  });
  if (cancelled) {
    DJINN_LOG(kInfo, "space") << options.name << ": cancelled " << cancelled << " leases of entries that never committed";
  }
}

Result<size_t> Space::Impl::resolve() {
  std::map<std::string, std::vector<TxnId>> by_coordinator;
  {
    std::shared_lock lock(mu);
    for (const auto& [id, t] : txns) {
      if (t.recovered) by_coordinator[t.coordinator].push_back(id);
    }
  }
  std::atomic<size_t> still{0};
  if (!options.ask_outcome) {
    for (const auto& [c, ids] : by_coordinator) still += ids.size();
    return still.load();
  }
  ask_outcomes(by_coordinator, [&](const TxnId& id, txn::Outcome outcome) {
    bool decided = outcome == txn::Outcome::kCommitted || outcome == txn::Outcome::kAborted;
    if (!decided || !finish(id, outcome == txn::Outcome::kCommitted).ok()) ++still;
  });
  return still.load();
}

// A transaction this space joined and that has not voted is aborted here when its manager says it
// aborted (a manager answers so for a transaction it does not know: one it lost, or forgot after
// deciding while this space was unreachable), or when the manager has not answered for
// abandon_txn_after. Either is safe: without this space's PREPARED vote the transaction cannot
// commit, and a prepare that comes later finds nothing and votes ABORTED. Without it, what such a
// transaction took would stay hidden until a restart.
//
// One that voted PREPARED a txn_check_interval ago and has heard no outcome is finished as its
// manager says, committed or aborted (and only then: the vote binds this space to the manager's
// decision). Its phase 2 may have been lost, or its manager may have lost it (killed before its
// records of the transaction were durable, or its log failed), and would then answer ABORTED for
// ever without telling anyone: without asking, what it took would stay hidden until a restart.
void Space::Impl::check_active() {
  const auto now = Clock::now();
  std::map<std::string, std::vector<TxnId>> by_manager;
  {
    std::shared_lock lock(mu);
    for (const auto& [id, t] : txns) {
      if (t.phase == Phase::kActive && !t.manager.empty() && now - t.joined_at >= options.txn_check_interval) {
        by_manager[t.manager].push_back(id);
      } else if (t.phase == Phase::kPrepared && !t.recovered && !t.coordinator.empty() &&
                 now - t.prepared_at >= options.txn_check_interval) {
        by_manager[t.coordinator].push_back(id);  // a recovered one, resolve() asks
      }
    }
  }
  if (by_manager.empty()) return;
  std::mutex abort_mu;
  struct Abort {
    TxnId id;
    std::string why;
    bool silent;  // its manager did not answer (rather than said ABORTED)
  };
  std::vector<Abort> to_abort;
  std::vector<std::pair<TxnId, bool>> to_finish;  // voted PREPARED: (id, committed)
  ask_outcomes(by_manager, [&](const TxnId& id, txn::Outcome outcome) {
    std::string why;
    {
      std::unique_lock lock(mu);
      auto t = txns.find(id);
      if (t == txns.end()) return;
      if (t->second.phase == Phase::kPrepared) {
        if (outcome != txn::Outcome::kCommitted && outcome != txn::Outcome::kAborted) return;
        lock.unlock();
        std::lock_guard l(abort_mu);
        to_finish.emplace_back(id, outcome == txn::Outcome::kCommitted);
        return;
      }
      if (t->second.phase != Phase::kActive) return;
      if (outcome == txn::Outcome::kAborted) {
        why = "its manager " + t->second.manager + " says it aborted";
      } else if (outcome != txn::Outcome::kUnknown) {
        t->second.silent_since.reset();
        return;
      } else if (!t->second.silent_since) {
        t->second.silent_since = now;
        return;
      } else if (now - *t->second.silent_since >= options.abandon_txn_after) {
        why = "its manager " + t->second.manager + " has not answered for " +
              std::to_string(std::chrono::duration_cast<std::chrono::seconds>(now - *t->second.silent_since).count()) + " s";
      } else {
        return;
      }
    }
    std::lock_guard lock(abort_mu);
    to_abort.push_back(Abort{id, std::move(why), outcome != txn::Outcome::kAborted});
  });
  for (const auto& [id, committed] : to_finish) {
    Status st = finish(id, committed);
    const char* outcome = committed ? "committed" : "aborted";
    if (st.ok()) {
      DJINN_LOG(kInfo, "space") << options.name << ": transaction " << id.to_string() << ", prepared here, " << outcome
                                << " as its manager says; its outcome had not come";
    } else {
      DJINN_LOG(kWarn, "space") << options.name << ": finishing transaction " << id.to_string() << " (" << outcome
                                << " by its manager): " << st.to_string();
    }
  }
  for (const auto& [id, why, silent] : to_abort) {
    Status st = finish(id, false, /*unvoted_only=*/true);
    if (st.ok() && silent) {
      std::unique_lock lock(mu);
      remember_abandoned_locked(id, now);
    }
    if (st.ok()) {
      DJINN_LOG(kInfo, "space") << options.name << ": transaction " << id.to_string() << " aborted here, before its vote: " << why;
    } else {
      DJINN_LOG(kWarn, "space") << options.name << ": aborting transaction " << id.to_string() << " (" << why
                                << "): " << st.to_string();
    }
  }
}

// ---- Space ----

Space::Space(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Space::~Space() {
  Impl& m = *impl_;
  {
    std::lock_guard lock(m.ended_mu);
    m.watch_stop = true;
  }
  m.watch_cv.notify_all();
  if (m.txn_watch.joinable()) m.txn_watch.join();  // waits out a call to a manager in flight
  {
    std::lock_guard lock(m.joins->mu);
    m.joins->stopped = true;
  }
  m.joins->cv.notify_all();
  if (m.joiner.joinable()) m.joiner.join();
  // After the joiner, which hands them calls: the walk under way ends (a take it finishes is
  // posted to the group commit, still running); calls still queued are answered UNAVAILABLE.
  m.scans.reset();
  // Stopped, and kept until the Impl goes: the batch being written may still post (a take of the
  // entry it hands to a waiting taker), and that post must find it. Writes and takes not written
  // by then are answered UNAVAILABLE.
  m.commit->stop();
  Impl::Deliveries d;
  {
    std::unique_lock lock(m.mu);
    m.stopping = true;
    for (auto& [id, w] : m.waiters) d.replies.emplace_back(std::move(w.done), unavailable("space " + m.options.name + " is stopping"));
    m.waiters.clear();
    m.deadlines.clear();
  }
  m.timer_cv.notify_all();
  if (m.timer.joinable()) m.timer.join();
  for (auto& [done, result] : d.replies) done(std::move(result));
  {
    std::lock_guard lock(m.ended_mu);
    m.remover_stop = true;
  }
  m.ended_cv.notify_all();
  if (m.remover.joinable()) m.remover.join();
}

Result<std::unique_ptr<Space>> Space::open(SpaceOptions options) {
  if (!options.landlord) return invalid_argument("space: a landlord is required");
  if (options.max_batch == 0) return invalid_argument("space: max_batch must be > 0");
  auto impl = std::make_unique<Impl>(std::move(options));
  Impl* m = impl.get();
  const auto started = Clock::now();
  DJINN_CRASH_POINT("space.open.before_load");
  if (Status st = m->landlord.transact(sqlite::Sync::kFull, [m](sqlite::Database& db) { return m->load_store(db); });
      !st.ok()) {
    return Status(st.code(), "space " + m->options.name + ": " + st.message());
  }
  m->cancel_orphan_leases();
  DJINN_CRASH_POINT("space.open.after_load");
  m->commit = std::make_unique<GroupCommit<Impl::Op, Impl::OpOutcome>>(
      m->options.max_batch, [m](std::span<Impl::Op> ops) { return m->run_batch(ops); }, "space-commit");
  m->scans = std::make_unique<JobThreads>(2, "space-scan", Impl::kMaxQueuedScans);
  m->timer = std::thread([m] {
    name_this_thread("space-timer");
    m->timer_loop();
  });
  m->remover = std::thread([m] {
    name_this_thread("space-remover");
    m->remover_loop();
  });
  m->joiner = std::thread([m] {
    name_this_thread("space-joiner");
    m->joiner_loop();
  });
  size_t doubt = 0;
  for (const auto& [id, t] : m->txns) doubt += t.recovered;
  if (m->options.ask_outcome) {
    m->txn_watch = std::thread([m, doubts = doubt > 0] {
      name_this_thread("space-txn-watch");
      m->txn_watch_loop(doubts);
    });
  }
  DJINN_LOG(kInfo, "space") << m->options.name << ": open" << (m->has_store ? "" : " in memory") << ", "
                            << m->entries.size() << " entries, " << m->watches.size() << " notify registrations, "
                            << doubt << " transactions in doubt, in "
                            << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count()
                            << " ms";
  return std::unique_ptr<Space>(new Space(std::move(impl)));
}

namespace {

// A holder as a write or notify names it (empty: the space picks one). It becomes a lease's
// holder, which holderLeases and cancelHolder look up as plain text.
Status check_holder(std::string_view holder, size_t max_bytes, std::string_view what) {
  if (holder.size() > max_bytes) {
    return invalid_argument(std::string(what) + ": holder of " + std::to_string(holder.size()) + " bytes: at most " +
                            std::to_string(max_bytes));
  }
  if (holder.find('\0') != std::string_view::npos) {
    return invalid_argument(std::string(what) + ": holder contains a NUL byte: it must be plain text");
  }
  return Status::Ok();
}

}  // namespace

// A write checked and encoded into its op; or its answer already: an error, or the first reply
// of a keyed write seen before. `pending`: writes of the same batch, not in the space yet.
std::variant<Space::Impl::Op, Result<Written>> Space::Impl::prepare_write(WriteRequest& request, size_t pending) {
  if (Status bad = validate(request.entry); !bad.ok()) return Status(bad.code(), "write: " + bad.message());
  if (request.entry.type.empty()) return invalid_argument("write: the entry has no type; give it a dotted type name");
  int64_t d = request.duration_ms;
  if (!(d > 0 || d == lease::kDurationAny || d == lease::kDurationForever)) {
    return invalid_argument("write: lease duration " + std::to_string(d) + " ms: must be > 0, ANY (-1) or FOREVER (-2)");
  }
  Op op;
  op.encoded = encode_entry(request.entry);
  if (op.encoded.size() > options.max_entry_bytes) {
    return invalid_argument("write: entry of " + std::to_string(op.encoded.size()) + " bytes (encoded): at most " +
                            std::to_string(options.max_entry_bytes) +
                            " allowed; store large content as a value and refer to it");
  }
  for (const ContentHash& v : value_refs_of(request.entry)) {
    if (!options.values) return invalid_argument("write: the entry refers to a value but this space stores none");
    if (!op.pins) op.pins = std::make_shared<ValuePins>(options.values);
    if (!options.values->ref_if_stored(v)) {
      return not_found("write: the entry refers to value " + to_hex(v) + ", which is not stored (put it first)");
    }
    op.pins->pinned.push_back(v);
  }
  size_t stored = 0;
  {
    std::shared_lock lock(mu);
    stored = entries.size();
  }
  if (stored + pending >= options.max_entries) {
    return resource_exhausted("write: space " + options.name + " holds " + std::to_string(stored) +
                              " entries, its maximum");
  }
  if (!request.txn && !request.idempotency_key.empty()) {
    std::optional<Written> again;
    {
      std::shared_lock lock(mu);
      again = keyed_write_locked(request.idempotency_key);
    }
    if (again) return *again;
    if (request.idempotency_key.size() > 256) return invalid_argument("write: idempotency key over 256 bytes");
    op.key = std::move(request.idempotency_key);
  }
  DJINN_RETURN_IF_ERROR(check_holder(request.holder, landlord.policy().max_holder_bytes, "write"));
  op.holder = std::move(request.holder);
  op.entry = std::move(request.entry);
  op.duration_ms = d;
  if (request.txn) op.txn = request.txn->id;
  return op;
}

void Space::write_async(WriteRequest request, WriteDone done) {
  Impl& m = *impl_;
  std::optional<TxnRef> txn = request.txn;
  auto prepared = m.prepare_write(request, 0);
  if (auto* answer = std::get_if<Result<Written>>(&prepared)) return done(std::move(*answer));
  auto shared_done = std::make_shared<WriteDone>(std::move(done));
  const size_t bytes = std::get<Impl::Op>(prepared).encoded.size();
  m.with_txn(
      txn,
      [&m, op = std::move(std::get<Impl::Op>(prepared)), shared_done, bytes]() mutable {
        m.commit->post({std::move(op)}, [shared_done](std::vector<Impl::OpOutcome> out) {
          Impl::OpOutcome& o = out.front();
          if (!o.status.ok()) return (*shared_done)(Status(o.status.code(), o.status.message()));
          (*shared_done)(o.written);
        }, bytes);
      },
      [shared_done](Status st) { (*shared_done)(Status(st.code(), "write: " + st.message())); }, bytes);
}

void Space::write_many_async(std::vector<WriteRequest> requests, WriteManyDone done) {
  Impl& m = *impl_;
  std::vector<Result<Written>> results(requests.size(), Result<Written>(internal_error("write: not decided")));
  std::optional<TxnRef> txn = requests.empty() ? std::nullopt : requests.front().txn;
  for (const WriteRequest& r : requests) {
    if (r.txn.has_value() != txn.has_value() || (txn && !(r.txn->id == txn->id))) {
      for (auto& result : results) result = invalid_argument("write: the writes of one call must share one transaction");
      return done(std::move(results));
    }
  }
  std::vector<Impl::Op> ops;
  std::vector<size_t> positions;  // of each op among the requests
  for (size_t i = 0; i < requests.size(); ++i) {
    auto prepared = m.prepare_write(requests[i], ops.size());
    if (auto* answer = std::get_if<Result<Written>>(&prepared)) {
      results[i] = std::move(*answer);
      continue;
    }
    ops.push_back(std::move(std::get<Impl::Op>(prepared)));
    positions.push_back(i);
  }
  if (ops.empty()) return done(std::move(results));
  struct Call {
    std::vector<Result<Written>> results;
    std::vector<size_t> positions;
    WriteManyDone done;
  };
  auto call = std::make_shared<Call>(Call{std::move(results), std::move(positions), std::move(done)});
  size_t bytes = 0;
  for (const Impl::Op& op : ops) bytes += op.encoded.size();
  m.with_txn(
      txn,
      [&m, ops = std::move(ops), call, bytes]() mutable {
        // One group: written in one transaction, never split.
        m.commit->post(std::move(ops), [call](std::vector<Impl::OpOutcome> out) {
          for (size_t k = 0; k < out.size(); ++k) {
            Impl::OpOutcome& o = out[k];
            call->results[call->positions[k]] = o.status.ok() ? Result<Written>(o.written) : Result<Written>(o.status);
          }
          call->done(std::move(call->results));
        }, bytes);
      },
      [call](Status st) {
        for (size_t p : call->positions) call->results[p] = Status(st.code(), "write: " + st.message());
        call->done(std::move(call->results));
      },
      bytes);
}

std::vector<Result<Written>> Space::write_many(std::vector<WriteRequest> requests) {
  if (Status refused = impl_->may_wait("write"); !refused.ok()) {
    return std::vector<Result<Written>>(requests.size(), refused);
  }
  std::promise<std::vector<Result<Written>>> p;
  auto f = p.get_future();
  write_many_async(std::move(requests), [&p](std::vector<Result<Written>> r) { p.set_value(std::move(r)); });
  return f.get();
}

Result<Written> Space::write(WriteRequest request) {
  DJINN_RETURN_IF_ERROR(impl_->may_wait("write"));
  std::promise<Result<Written>> p;
  auto f = p.get_future();
  write_async(std::move(request), [&p](Result<Written> r) { p.set_value(std::move(r)); });
  return f.get();
}

void Space::match_async(MatchRequest request, MatchDone done) {
  Impl& m = *impl_;
  const char* what = request.take ? "take" : "read";
  if (Status bad = validate(request.tmpl); !bad.ok()) return done(Status(bad.code(), std::string(what) + ": " + bad.message()));
  if (request.max == 0 || request.max > kMaxTakeMany) {
    return done(invalid_argument(std::string(what) + ": at most " + std::to_string(request.max) +
                                 " entries: must be 1.." + std::to_string(kMaxTakeMany)));
  }
  if (request.timeout.count() < 0 || request.timeout > kMaxWait) {
    return done(invalid_argument(std::string(what) + ": timeout " + std::to_string(request.timeout.count()) +
                                 " ms: must be 0.." + std::to_string(kMaxWait.count())));
  }
  if (request.txn && request.txn->id.is_nil()) return done(invalid_argument(std::string(what) + ": transaction id is nil"));
  auto x = std::make_shared<Impl::Match>();
  x->arrived = Clock::now();
  if (request.txn) x->txn = request.txn->id;
  x->request = std::move(request);
  x->reply = std::move(done);
  m.with_txn(
      x->request.txn, [&m, x] { m.match(x); },
      [x, what](Status st) { x->answer()(Status(st.code(), std::string(what) + ": " + st.message())); });
}

Status Space::Impl::may_wait(std::string_view what) const {
  const char* thread = on_scan_thread ? "scan" : commit->on_commit_thread() ? "group-commit" : nullptr;
  if (!thread) return Status::Ok();
  return failed_precondition(std::string(what) + ": called from a completion on the space's " + thread +
                             " thread, which it would wait for; use the _async call");
}

namespace {
Result<std::vector<Entry>> wait_match(Space& space, MatchRequest request) {
  std::promise<Result<std::vector<Entry>>> p;
  auto f = p.get_future();
  space.match_async(std::move(request), [&p](Result<std::vector<Entry>> r) { p.set_value(std::move(r)); });
  return f.get();
}
Result<std::optional<Entry>> first_of(Result<std::vector<Entry>> r) {
  if (!r.ok()) return r.status();
  if (r->empty()) return std::optional<Entry>();
  return std::optional<Entry>(std::move(r->front()));
}
}  // namespace

Result<std::optional<Entry>> Space::read(const Template& tmpl, std::chrono::milliseconds timeout, std::optional<TxnRef> txn) {
  DJINN_RETURN_IF_ERROR(impl_->may_wait("read"));
  return first_of(wait_match(*this, MatchRequest{tmpl, false, 1, timeout, std::move(txn)}));
}

Result<std::optional<Entry>> Space::take(const Template& tmpl, std::chrono::milliseconds timeout, std::optional<TxnRef> txn) {
  DJINN_RETURN_IF_ERROR(impl_->may_wait("take"));
  return first_of(wait_match(*this, MatchRequest{tmpl, true, 1, timeout, std::move(txn)}));
}

Result<std::vector<Entry>> Space::take_many(const Template& tmpl, size_t max, std::chrono::milliseconds timeout,
                                            std::optional<TxnRef> txn) {
  DJINN_RETURN_IF_ERROR(impl_->may_wait("take"));
  return wait_match(*this, MatchRequest{tmpl, true, max, timeout, std::move(txn)});
}

namespace {

Status check_page(const Template& tmpl, size_t max) {
  DJINN_RETURN_IF_ERROR(validate(tmpl));
  if (max == 0 || max > kMaxTakeMany) {
    return invalid_argument("contents: page of " + std::to_string(max) + " entries: must be 1.." + std::to_string(kMaxTakeMany));
  }
  return Status::Ok();
}

}  // namespace

ContentsPage Space::Impl::contents_page(const Template& tmpl, uint64_t cursor, size_t max, const std::optional<TxnId>& txn) {
  ContentsPage page;
  page.cursor = cursor;
  page.done = true;
  size_t bytes = 0;
  std::shared_lock lock(mu);
  uint64_t walked_to = cursor;
  bool walked = scan_locked(tmpl, cursor, txn, [&](uint64_t seq, const Stored& s) {
    bytes += s.entry.bytes().size();
    if (page.entries.size() == max || (!page.entries.empty() && bytes > kMaxEntriesReplyBytes)) {
      page.done = false;
      return false;
    }
    page.entries.push_back(s.entry.decode());
    page.cursor = seq;
    return true;
  }, kScanSlice, &walked_to);
  if (!walked) {  // a page of what the walk found (perhaps nothing); the next goes on after it
    page.done = false;
    page.cursor = walked_to;
  }
  return page;
}

Result<ContentsPage> Space::contents(const Template& tmpl, uint64_t cursor, size_t max, std::optional<TxnRef> txn) {
  Impl& m = *impl_;
  DJINN_RETURN_IF_ERROR(check_page(tmpl, max));
  std::optional<TxnId> id;
  if (txn) {
    DJINN_RETURN_IF_ERROR(m.ensure_joined(*txn));
    id = txn->id;
  }
  return m.contents_page(tmpl, cursor, max, id);
}

void Space::contents_async(const Template& tmpl, uint64_t cursor, size_t max, std::optional<TxnRef> txn, ContentsDone done) {
  Impl& m = *impl_;
  if (Status bad = check_page(tmpl, max); !bad.ok()) return done(bad);
  auto shared_done = std::make_shared<ContentsDone>(std::move(done));
  std::optional<TxnId> id;
  if (txn) id = txn->id;
  m.with_txn(txn, [&m, tmpl, cursor, max, id, shared_done] { (*shared_done)(m.contents_page(tmpl, cursor, max, id)); },
             [shared_done](Status st) { (*shared_done)(std::move(st)); });
}

Result<NotifyRegistration> Space::notify(const Template& tmpl, int64_t duration_ms, std::string holder) {
  Impl& m = *impl_;
  DJINN_RETURN_IF_ERROR(validate(tmpl));
  if (!(duration_ms > 0 || duration_ms == lease::kDurationAny)) {
    return invalid_argument("notify: lease duration " + std::to_string(duration_ms) + " ms: must be > 0 or ANY (-1)");
  }
  DJINN_RETURN_IF_ERROR(check_holder(holder, m.landlord.policy().max_holder_bytes, "notify"));
  if (holder.empty()) holder = "anonymous";
  {
    std::shared_lock lock(m.mu);
    if (m.watches.size() >= m.options.max_notify) {
      return resource_exhausted("notify: space " + m.options.name + " holds " + std::to_string(m.watches.size()) +
                                " notify registrations, its maximum");
    }
  }
  std::string encoded = encode_template(tmpl);
  lease::GrantRequest grant{std::string(kNotifyResource), holder, lease::Kind::kShared, duration_ms, {}};
  std::vector<Result<lease::Lease>> leases = m.landlord.grant_batch(
      std::span<const lease::GrantRequest>(&grant, 1),
      [&](sqlite::Database& db, std::span<const Result<lease::Lease>> granting) -> Status {
        if (!granting[0].ok()) return Status::Ok();
        Result<sqlite::Statement*> st = db.cached(kInsertWatch);
        if (!st.ok()) return st.status();
        DJINN_RETURN_IF_ERROR((*st)->bind_all(granting[0]->id, as_bytes(encoded)));
        return (*st)->run();
      });
  if (!leases[0].ok()) return Status(leases[0].status().code(), "notify: " + leases[0].status().message());
  const lease::Lease& l = *leases[0];
  {
    std::unique_lock lock(m.mu);
    m.watches[l.id] = Impl::Watch{tmpl, notify_event_kind(l.id)};
    if (m.options.publisher) m.options.publisher->declare(m.watches[l.id].kind);
  }
  // As for entries (run_batch): a lease that ended before the watch was in had its event find none.
  if (!m.landlord.find(l.id)) m.end_watch(l.id);
  return NotifyRegistration{l.id, l.expiration_ms, notify_event_kind(l.id)};
}

// ---- transactions ----

Result<txn::Vote> Space::prepare(const txn::TxnId& id, std::string_view coordinator) {
  Impl& m = *impl_;
  struct Row {
    uint64_t seq;
    uint64_t lease;
    std::string data;
  };
  std::vector<Row> rows;
  std::vector<TakenRef> taken_rows;
  Impl::Deliveries d;
  {
    std::unique_lock lock(m.mu);
    // A prepare sent again while the first still writes (the RPC client resends on reconnect)
    // waits for that write and answers as it does: PREPARED only once the state is durable.
    auto t = m.settled_locked(lock, id, /*finishing=*/false);
    if (t == m.txns.end()) {
      m.remember_ended_locked(id);
      return txn::Vote::kAborted;  // lost in a crash before prepare, never joined here, or its prepare failed
    }
    Impl::TxnState& st = t->second;
    if (st.phase == Impl::Phase::kPrepared) return txn::Vote::kPrepared;
    // Its outcome is being applied already: an abort this space decided on its own (check_active),
    // which drops what it did here, so it must not be voted PREPARED.
    if (st.phase == Impl::Phase::kFinishing) return txn::Vote::kAborted;
    std::vector<uint64_t> own_taken;  // written and taken by this transaction: they never were
    for (uint64_t seq : st.written) {
      auto e = m.entries.find(seq);
      if (e == m.entries.end() || e->second.written_by != id) continue;
      if (e->second.hold == Impl::Hold::kTxn && e->second.held_by == id) {
        own_taken.push_back(seq);
        continue;
      }
      rows.push_back(Row{seq, e->second.lease, std::string(e->second.entry.bytes())});
    }
    size_t taken_alive = 0;
    for (uint64_t seq : st.taken) {
      auto e = m.entries.find(seq);
      if (e == m.entries.end() || e->second.hold != Impl::Hold::kTxn || e->second.held_by != id) continue;
      if (e->second.written_by) continue;  // counted above
      ++taken_alive;
      if (e->second.has_row) taken_rows.push_back(TakenRef{seq, e->second.lease});
    }
    m.end_waiters_of_locked(id, d);
    if (rows.empty() && taken_alive == 0) {
      for (uint64_t seq : own_taken) {
        if (uint64_t l = m.erase_locked(seq)) d.cancel.push_back(l);
      }
      m.txns.erase(t);
      m.remember_ended_locked(id);
      lock.unlock();
      m.deliver(d);
      return txn::Vote::kNotChanged;
    }
    st.phase = Impl::Phase::kPreparing;  // from here no operation joins it
    st.coordinator = std::string(coordinator);
  }
  DJINN_CRASH_POINT("space.prepare.before_write");
  std::vector<uint8_t> state = encode_taken(taken_rows);
  std::array<uint8_t, 16> id_bytes = id.bytes();
  Status written = m.landlord.transact(sqlite::Sync::kFull, [&](sqlite::Database& db) -> Status {
    for (const Row& r : rows) {
      Result<sqlite::Statement*> st = db.cached(kInsertEntry);
      if (!st.ok()) return st.status();
      DJINN_RETURN_IF_ERROR((*st)->bind_all(r.seq, r.lease, std::span<const uint8_t>(id_bytes), as_bytes(r.data), nullptr));
      DJINN_RETURN_IF_ERROR((*st)->run());
    }
    Result<txn::ParticipantLog> log = txn::ParticipantLog::open(db);
    if (!log.ok()) return log.status();
    DJINN_RETURN_IF_ERROR(log->prepared(id, coordinator, state));
    if (DJINN_FAIL_POINT("space.prepare.write_failed")) return internal_error("space.prepare.write_failed (injected)");
    return Status::Ok();
  });
  DJINN_CRASH_POINT("space.prepare.after_commit");
  txn::Vote vote = txn::Vote::kPrepared;
  std::vector<uint64_t> ended_rows;
  {
    std::unique_lock lock(m.mu);
    // Still kPreparing: only this call moves it on (finish waits for it), so an abort cannot have
    // ended it meanwhile and left the record just written behind.
    auto t = m.txns.find(id);
    if (!written.ok()) {
      // Rolled back: nothing of it is durable, so it is aborted here and the vote is ABORTED. (Had
      // the record reached the disk after all, a restart finds it in doubt and its manager, told
      // ABORTED, answers so.)
      DJINN_LOG(kWarn, "space") << m.options.name << ": prepare " << id.to_string() << " failed, voting ABORTED: "
                                << written.to_string();
      vote = txn::Vote::kAborted;
      if (t != m.txns.end()) {
        Impl::TxnState st = std::move(t->second);
        m.txns.erase(t);
        m.apply_outcome_locked(id, st, /*commit_it=*/false, d);
      }
      m.remember_ended_locked(id);
    } else if (t != m.txns.end()) {
      if (m.has_store) {
        for (const Row& r : rows) {
          auto e = m.entries.find(r.seq);
          if (e != m.entries.end()) {
            e->second.has_row = true;
          } else {
            ended_rows.push_back(r.seq);  // its lease ended while the row was being written
          }
        }
      }
      t->second.phase = Impl::Phase::kPrepared;
      t->second.prepared_at = Clock::now();
    }
  }
  if (!ended_rows.empty()) m.delete_rows_later(ended_rows);
  m.txn_cv.notify_all();
  m.deliver(d);
  return vote;
}

// Phase 2 (txn.h step 3), or the outcome of a transaction recovered in doubt: durable first, then
// applied in memory. Idempotent: an unknown transaction is done already.
Status Space::Impl::finish(const TxnId& id, bool commit_it, bool unvoted_only) {
  std::vector<std::pair<uint64_t, std::pair<uint64_t, std::string>>> inserts;  // written, never prepared
  std::vector<uint64_t> deletes;
  bool prepared = false;
  Phase was = Phase::kActive;
  Deliveries d;  // delivered once it is over, so no callback runs while it is kFinishing
  {
    std::unique_lock lock(mu);
    // Phase 2 arriving while the prepare still writes waits for it: applied earlier, an abort
    // would leave the prepared record that write then commits behind it. A second finish (the
    // manager's, beside the space's own) waits for the first.
    auto t = unvoted_only ? txns.find(id) : settled_locked(lock, id, /*finishing=*/true);
    if (t == txns.end()) {
      remember_ended_locked(id);
      return Status::Ok();
    }
    TxnState& st = t->second;
    if (unvoted_only && st.phase != Phase::kActive) {
      return failed_precondition("transaction " + id.to_string() + " is voting or ending");
    }
    was = st.phase;
    prepared = was == Phase::kPrepared;
    st.phase = Phase::kFinishing;  // no operation joins it, and a prepare votes ABORTED
    end_waiters_of_locked(id, d);
    if (commit_it) {
      for (uint64_t seq : st.written) {
        auto e = entries.find(seq);
        if (e == entries.end() || e->second.written_by != id || e->second.has_row) continue;
        if (e->second.hold == Hold::kTxn && e->second.held_by == id) continue;
        inserts.push_back({seq, {e->second.lease, std::string(e->second.entry.bytes())}});
      }
      for (uint64_t seq : st.taken) {
        auto e = entries.find(seq);
        if (e != entries.end() && e->second.hold == Hold::kTxn && e->second.held_by == id && e->second.has_row) {
          deletes.push_back(seq);
        }
      }
    }
  }
  DJINN_CRASH_POINT("space.finish.before_write");
  std::array<uint8_t, 16> id_bytes = id.bytes();
  Status written = Status::Ok();
  if (commit_it || prepared) {
    written = landlord.transact(sqlite::Sync::kFull, [&](sqlite::Database& db) -> Status {
      auto run = [&](std::string_view sql, auto&&... args) -> Status {
        Result<sqlite::Statement*> st = db.cached(sql);
        if (!st.ok()) return st.status();
        DJINN_RETURN_IF_ERROR((*st)->bind_all(args...));
        return (*st)->run();
      };
      if (commit_it) {
        if (prepared) DJINN_RETURN_IF_ERROR(run(kCommitEntries, std::span<const uint8_t>(id_bytes)));
        for (const auto& [seq, row] : inserts) {
          DJINN_RETURN_IF_ERROR(run(kInsertEntry, seq, row.first, nullptr, as_bytes(row.second), nullptr));
        }
        for (uint64_t seq : deletes) DJINN_RETURN_IF_ERROR(run(kDeleteEntry, seq));
      } else {
        DJINN_RETURN_IF_ERROR(run(kAbortEntries, std::span<const uint8_t>(id_bytes)));
      }
      if (!prepared) return Status::Ok();
      Result<txn::ParticipantLog> log = txn::ParticipantLog::open(db);
      if (!log.ok()) return log.status();
      return log->resolved(id);
    });
  }
  {
    std::unique_lock lock(mu);
    auto t = txns.find(id);  // still kFinishing: only this call moves it on
    if (!written.ok()) {
      if (t != txns.end()) t->second.phase = was;
    } else if (t != txns.end()) {
      TxnState st = std::move(t->second);
      txns.erase(t);
      apply_outcome_locked(id, st, commit_it, d);
    }
    if (written.ok()) remember_ended_locked(id);
  }
  txn_cv.notify_all();
  deliver(d);
  if (!written.ok()) {
    return Status(written.code(), std::string(commit_it ? "commit " : "abort ") + id.to_string() + ": " + written.message());
  }
  return Status::Ok();
}

// Applies `id`'s outcome in memory, its state `st` already out of txns (mu exclusive): what it
// took goes (commit) or comes back (abort), what it wrote becomes visible or goes.
void Space::Impl::apply_outcome_locked(const TxnId& id, const TxnState& st, bool commit_it, Deliveries& d) {
  for (uint64_t seq : st.taken) {
    auto e = entries.find(seq);
    if (e == entries.end() || e->second.hold != Hold::kTxn || e->second.held_by != id) continue;
    if (commit_it || e->second.written_by == id) {
      if (uint64_t l = erase_locked(seq)) d.cancel.push_back(l);
    } else {
      e->second.hold = Hold::kFree;
      revive_locked(seq, d);
    }
  }
  for (uint64_t seq : st.written) {
    auto e = entries.find(seq);
    if (e == entries.end() || e->second.written_by != id) continue;
    if (!commit_it) {
      if (uint64_t l = erase_locked(seq)) d.cancel.push_back(l);
      continue;
    }
    e->second.written_by.reset();
    e->second.has_row = has_store;
    if (watched_locked()) publish_locked(e->second.entry.decode());  // decoded only for watchers
    revive_locked(seq, d);
  }
}

Status Space::commit(const txn::TxnId& id) { return impl_->finish(id, true); }
Status Space::abort(const txn::TxnId& id) { return impl_->finish(id, false); }
Result<size_t> Space::resolve_in_doubt() { return impl_->resolve(); }

size_t Space::drop_lapsed() {
  Impl& m = *impl_;
  std::vector<uint64_t> rows;
  size_t dropped = 0;
  {
    std::unique_lock lock(m.mu);
    const int64_t now = m.landlord.now_ns();
    for (auto it = m.entries.begin(); it != m.entries.end();) {
      uint64_t seq = it->first;
      bool lapsed = it->second.deadline_ns <= now;
      ++it;  // erase_locked invalidates the entry's iterator only
      if (!lapsed) continue;
      m.end_entry_locked(seq, rows);
      ++dropped;
    }
  }
  if (!rows.empty()) m.delete_rows_later(rows);
  // Notify registrations keep no deadline: the landlord says which leases it no longer holds.
  std::vector<uint64_t> watch_ids;
  {
    std::shared_lock lock(m.mu);
    for (const auto& [id, w] : m.watches) watch_ids.push_back(id);
  }
  for (uint64_t id : watch_ids) {
    if (m.landlord.find(id)) continue;
    m.end_watch(id);
    ++dropped;
  }
  if (dropped > 0) {
    DJINN_LOG(kInfo, "space") << m.options.name << ": dropped " << dropped
                              << " entries and notify registrations whose leases ended while it opened";
  }
  return dropped;
}

void Space::on_lease_event(const lease::LeaseEvent& event) {
  Impl& m = *impl_;
  const lease::Lease& l = event.lease;
  if (l.resource == kEntryResource) {
    if (event.type == lease::EventType::kRenewed) {
      // Two renewals' events may come in either order: the landlord's current word is kept.
      std::optional<lease::Lease> current = m.landlord.find(l.id);
      if (!current) return;
      std::unique_lock lock(m.mu);
      auto it = m.by_lease.find(l.id);
      if (it != m.by_lease.end()) {
        Impl::Stored& s = m.entries.at(it->second);
        s.expiration_ms = current->expiration_ms;
        s.deadline_ns = current->deadline_ns;
      }
      return;
    }
    if (event.type != lease::EventType::kExpired && event.type != lease::EventType::kCancelled) return;
    std::vector<uint64_t> rows;
    {
      std::unique_lock lock(m.mu);
      auto it = m.by_lease.find(l.id);
      if (it == m.by_lease.end()) return;  // taken, not yet in (run_batch asks the landlord), or never committed
      m.end_entry_locked(it->second, rows);
    }
    if (!rows.empty()) m.delete_rows_later(rows);
    return;
  }
  if (l.resource == kNotifyResource &&
      (event.type == lease::EventType::kExpired || event.type == lease::EventType::kCancelled)) {
    m.end_watch(l.id);
  }
}

void Space::set_participant_name(std::string name) {
  std::unique_lock lock(impl_->mu);
  impl_->options.participant_name = std::move(name);
}

SpaceStats Space::stats() const {
  const Impl& m = *impl_;
  std::shared_lock lock(m.mu);
  SpaceStats s;
  s.entries = m.entries.size();
  s.waiters = m.waiters.size();
  s.transactions = m.txns.size();
  for (const auto& [id, t] : m.txns) s.in_doubt += t.recovered;
  return s;
}

size_t Space::size() const {
  std::shared_lock lock(impl_->mu);
  return impl_->entries.size();
}

}  // namespace djinn::space
