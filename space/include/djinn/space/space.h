// The object space engine (DESIGN §6): typed entries under leases from an embedded landlord,
// matched by template through indexes on type (with supertypes) and field values, taken by exactly
// one taker, waited for by blocking reads and takes, watched by notify registrations, and changed
// under transactions as a 2PC participant (txn.h).
//
// Durability: entries live in the landlord's SQLite file (Landlord::grant_batch / transact), so an
// entry and its lease commit together. Writes and takes from all callers go through one group
// commit: a batch is one SQLite transaction and one fsync, acknowledged only after it. A take
// removes its entry durably before it is answered.
//
// Threading: all methods are thread-safe. Callbacks (MatchDone, WriteDone) run on the space's own
// threads, never under its locks, and must not block for long.
//
// Crash points (fault.h):
//   space.open.before_load      a space is opening, its entries (and their values' references) not loaded
//   space.open.after_load       its entries are loaded; the owner has not wired on_lease_event yet
//   space.take.before_commit    a take matched its entries (held for it), not yet queued to be written
//   space.batch.write_failed    (fail point) a group's SQLite transaction fails and rolls back
//   space.batch.before_commit   a group's rows are written, its transaction not committed
//   space.batch.after_commit    a group is durable, nobody answered yet
//   space.prepare.before_write  a prepare marked its transaction voting, its prepared state not written
//   space.prepare.write_failed  (fail point) a prepare's SQLite transaction fails and rolls back
//   space.prepare.after_commit  a transaction's prepared state is durable, the vote not sent
//   space.finish.before_write   a commit or abort marked its transaction ending, its outcome not written
//   space.txn.waiting           a prepare, commit or abort is about to wait for another's write of
//                               the same transaction
//   space.values.before_rename  a chunk or manifest is written under its temporary name
//   space.values.collect_unlink a collection chose its files and is about to unlink them
//   space.values.file_sync_failed  a sync of chunk files failed, the chunks not yet marked absent
// (and core's txn.participant.* points, passed in prepare and commit).
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
#include "djinn/core/txn.h"
#include "djinn/lease/landlord.h"
#include "djinn/space/values.h"

namespace djinn::space {

// The landlord resources of the two kinds of lease a space grants.
inline constexpr std::string_view kEntryResource = "space.entry";
inline constexpr std::string_view kNotifyResource = "space.notify";
// The interface type of every space's item in lookup.
inline constexpr std::string_view kSpaceType = "djinn.space.JavaSpace";

inline constexpr size_t kMaxTakeMany = 10'000;
// takeMany and a contents page stop short of this many encoded bytes of entries (one entry at
// least), so that the reply stays within what a client reads (16 MiB frames): what is taken is
// always answered.
inline constexpr size_t kMaxEntriesReplyBytes = kMaxPageReplyBytes;
// space.writeMany takes at most this many entries a call.
inline constexpr size_t kMaxWriteMany = 1'000;
inline constexpr std::chrono::milliseconds kMaxWait = std::chrono::hours(24);

// A transaction an operation runs under: its id and where its manager is (an RPC endpoint, or any
// name the space's join function understands).
struct TxnRef {
  txn::TxnId id;
  std::string manager;
};

struct SpaceOptions {
  // The landlord of entry and notify leases; it must send its events to Space::on_lease_event and
  // outlive the Space. Entries are kept in its SQLite file (in memory when it has none).
  lease::Landlord* landlord = nullptr;
  events::Publisher* publisher = nullptr;  // notify events (notify_event_kind); may be null
  ValueStore* values = nullptr;            // large values entries refer to; null: none accepted
  size_t max_entry_bytes = 64 * 1024;      // encoded size of one entry
  size_t max_entries = 10'000'000;
  size_t max_waiters = 100'000;
  size_t max_notify = 100'000;
  size_t max_batch = 1000;  // writes and takes in one durable transaction
  std::string name = "space";
  // The name coordinators reach this space by (a participant name: "space:<id>@<endpoint>").
  std::string participant_name = "space";
  // Joins this space to a transaction at its manager on the first operation under it, calling
  // `done` once with the outcome, from any thread. A failure (unknown or ended transaction, manager
  // unreachable) fails the operation, nothing changed. Asynchronous, so that a manager that does
  // not answer holds up only the operations under its own transactions. Null: operations under a
  // transaction are refused.
  std::function<void(const TxnRef& txn, const std::string& participant, std::function<void(Status)> done)> join;
  // Asks a transaction's outcome (kUnknown: no answer; ask again later) of InDoubt::coordinator:
  // after a restart, that of each prepared transaction, every in_doubt_retry until none is in
  // doubt; and that of transactions that have not voted (txn_check_interval below). From a thread
  // of the space's own; several managers are asked at once, so it must be thread-safe; a manager
  // that answers kUnknown is asked nothing more until the next round.
  std::function<txn::Outcome(const txn::InDoubt&)> ask_outcome;
  std::chrono::milliseconds in_doubt_retry{1000};
  // A transaction joined longer ago than this and not yet voting has its manager asked, every
  // this often, whether it still runs (0: never): one its manager says aborted is aborted here,
  // and so is one whose manager has not answered for abandon_txn_after. One prepared here longer
  // ago than this, its outcome not come, is finished as its manager says (committed or aborted;
  // never on silence). All through ask_outcome.
  std::chrono::milliseconds txn_check_interval{std::chrono::seconds(30)};
  std::chrono::milliseconds abandon_txn_after{std::chrono::minutes(10)};
};

struct Written {
  uint64_t lease_id = 0;
  int64_t expiration_ms = 0;
  int64_t granted_ms = 0;  // the lease's granted duration; 0 when not known (a keyed write sent again)
};

struct WriteRequest {
  Entry entry;
  int64_t duration_ms = lease::kDurationAny;
  std::optional<TxnRef> txn;
  // The holder of the entry's lease, so that lease queries find an application's entries and a
  // migration can end or keep them with the rest of its leases; empty: the entry's type.
  std::string holder;
  // The client's idempotency key, kept with the entry: a write resent to a restarted space after
  // its first reply was lost to a crash answers with the first write's lease instead of storing
  // the entry again (while the entry is still there, among the last 65,536 keyed writes).
  std::string idempotency_key;
};

// read, take, readIfExists, takeIfExists, takeMany.
struct MatchRequest {
  Template tmpl;
  bool take = false;
  size_t max = 1;                            // entries at most (takeMany)
  std::chrono::milliseconds timeout{0};      // 0: answer at once
  std::optional<TxnRef> txn;
  // When the caller stops listening (an RPC call's deadline): a call still walking then is
  // answered DEADLINE_EXCEEDED, having taken nothing.
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
};

struct ContentsPage {
  std::vector<Entry> entries;
  uint64_t cursor = 0;
  bool done = false;
};

struct NotifyRegistration {
  uint64_t id = 0;  // = its lease id
  int64_t expiration_ms = 0;
  std::string event_kind;
};

struct SpaceStats {
  uint64_t entries = 0;
  uint64_t waiters = 0;
  uint64_t in_doubt = 0;
  uint64_t transactions = 0;
};

using WriteDone = std::function<void(Result<Written>)>;
using WriteManyDone = std::function<void(std::vector<Result<Written>>)>;
using MatchDone = std::function<void(Result<std::vector<Entry>>)>;
using ContentsDone = std::function<void(Result<ContentsPage>)>;

class Space final : public txn::Participant {
 public:
  static Result<std::unique_ptr<Space>> open(SpaceOptions options);
  ~Space() override;
  Space(const Space&) = delete;
  Space& operator=(const Space&) = delete;

  // Durable (with its lease) before `done` runs; under a transaction, visible only to it.
  // Completions of writes and takes outside a transaction run on the space's group-commit thread:
  // the blocking calls (write, write_many, read, take, take_many) made from one, or from the scan
  // thread of a match_async completion, would wait for their own thread and answer
  // FAILED_PRECONDITION instead.
  void write_async(WriteRequest request, WriteDone done);
  Result<Written> write(WriteRequest request);
  // Several writes in one durable transaction (one fsync for all), each written or refused on its
  // own; `done` gets their outcomes in order. All must be under the same transaction (or none):
  // otherwise each is refused with INVALID_ARGUMENT.
  void write_many_async(std::vector<WriteRequest> requests, WriteManyDone done);
  std::vector<Result<Written>> write_many(std::vector<WriteRequest> requests);

  // Answers with up to request.max matches, waiting up to the timeout (from now) for the first;
  // `done` runs exactly once. A take is durable before `done` runs. A template whose smallest
  // posting is long is walked on the space's scan threads, 4,096 candidates per hold of its lock
  // outside a transaction: `done` may run there, and must not wait for another call of this space.
  void match_async(MatchRequest request, MatchDone done);
  Result<std::optional<Entry>> read(const Template& tmpl, std::chrono::milliseconds timeout = {},
                                    std::optional<TxnRef> txn = std::nullopt);
  Result<std::optional<Entry>> take(const Template& tmpl, std::chrono::milliseconds timeout = {},
                                    std::optional<TxnRef> txn = std::nullopt);
  Result<std::vector<Entry>> take_many(const Template& tmpl, size_t max, std::chrono::milliseconds timeout = {},
                                       std::optional<TxnRef> txn = std::nullopt);

  // Matches in write order after `cursor` (0: from the start), at most `max`, from a walk of at
  // most 4,096 candidates: a page may be short, even empty, before `done`.
  Result<ContentsPage> contents(const Template& tmpl, uint64_t cursor, size_t max,
                                std::optional<TxnRef> txn = std::nullopt);
  // The same; `done` runs on this thread, or, when the space must first join `txn`, on the joiner
  // thread once its manager has answered: the caller's thread does not wait for the manager.
  void contents_async(const Template& tmpl, uint64_t cursor, size_t max, std::optional<TxnRef> txn, ContentsDone done);

  Result<NotifyRegistration> notify(const Template& tmpl, int64_t duration_ms, std::string holder);

  // txn::Participant. A transaction the space does not know (lost in a crash before prepare)
  // votes ABORTED; commit and abort of an unknown transaction succeed.
  Result<txn::Vote> prepare(const txn::TxnId& txn, std::string_view coordinator) override;
  Status commit(const txn::TxnId& txn) override;
  Status abort(const txn::TxnId& txn) override;
  // Asks the outcome of every prepared transaction left by a crash (the space retries on its own
  // every in_doubt_retry); returns how many stay in doubt.
  Result<size_t> resolve_in_doubt();

  // Wire as the landlord's on_event: expired or cancelled entry leases remove their entries at
  // once, notify leases their registrations.
  void on_lease_event(const lease::LeaseEvent& event);
  // Removes the entries and notify registrations whose leases ended while the space was opening,
  // before on_lease_event was wired (their events went nowhere); returns how many. Call once,
  // after wiring.
  size_t drop_lapsed();

  // The name it joins transactions under, once its endpoint is known (before it serves).
  void set_participant_name(std::string name);

  SpaceStats stats() const;
  size_t size() const;

 private:
  struct Impl;
  explicit Space(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// "space.notify.<ref>": the event kind of notify registration `notify_id`, named by its lease's ref
// (lease::lease_ref in 16 hex digits), since every subscriber sees every kind and the id would let
// any of them cancel the registration. One made before schema version 2 keeps "space.notify.<id>".
std::string notify_event_kind(uint64_t notify_id);

}  // namespace djinn::space
