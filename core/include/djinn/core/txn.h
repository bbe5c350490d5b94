// Two-phase commit, modelled on Jini's TransactionManager and TransactionParticipant: a
// Coordinator with a durable decision log (SQLite), the Participant interface it drives, and a
// ParticipantLog with which a participant survives its own crash between prepare and the outcome.
// The space is a participant (DESIGN §6); a migration is one transaction between S, D and the
// space (DESIGN §9): before the commit point any failure aborts, after it the commit always
// completes, through crashes, from the logs.
//
// The protocol (Coordinator::commit, step by step):
//   1. Phase 1: every participant that joined is asked to prepare, in join order. A vote of
//      ABORTED, an error (unreachable) or the commit's deadline passing aborts the transaction.
//      A participant voting NOTCHANGED (read-only) drops out: it gets no phase 2.
//   2. The commit point: the COMMIT decision is written to the log and fsynced. Only commit
//      decisions are forced (presumed abort): a transaction the log does not show committed is
//      aborted, so nothing else needs to survive a power loss. The log has a writer thread of its
//      own: records are queued in the order of the changes they record and written a batch at a
//      time, so no lock is held across the fsync, and decisions queued while one is written share
//      the next fsync. Begins, joins, aborts and acknowledgements are not waited for; a decision
//      is queued after every record it needs. A batch that fails leaves the log failed: later
//      decisions fail (in doubt) and begins and joins are refused until the coordinator is
//      reopened.
//   3. Phase 2: commit (or abort) is sent to every participant that voted PREPARED (or, for an
//      abort, that may hold state). A participant that fails is retried later (retry_pending(),
//      recover()); the decision stands. The transaction is forgotten once all acknowledged.
//   Recovery: at open, transactions of the previous run with no decision are aborted (presumed
//   abort); recover() then re-drives the logged decisions to participants that never acknowledged.
//   A participant restarted after voting PREPARED finds the transaction in its ParticipantLog's
//   in_doubt() and asks the coordinator's outcome(): an id it does not know is aborted.
//
// Crash points (fault.h), in protocol order:
//   txn.coordinator.after_begin          begin() queued the transaction's record, id not yet returned
//   txn.coordinator.after_join           join() queued a participant's record
//   txn.coordinator.during_prepare       the first participant voted, the others not yet asked
//   txn.coordinator.after_prepare_votes  every vote is in, nothing decided
//   txn.coordinator.before_decision      all voted to commit, the decision not yet logged
//   txn.coordinator.logging_decision     the decision queued, no lock held, maybe not yet written
//   txn.coordinator.writing_log          the log's writer took a batch, nothing of it written
//   txn.coordinator.writing_decisions    the batch holds decisions: its fsync is next
//   txn.coordinator.after_decision       the COMMIT decision is durable (the commit point)
//   txn.coordinator.after_abort_decision an abort is decided, no participant told yet
//   txn.coordinator.during_phase2        the first participant got its commit/abort
//   txn.coordinator.after_phase2         every participant was sent phase 2, acks not yet logged
//   txn.coordinator.during_recovery      recover() re-drove its first participant
//   txn.participant.after_prepare_logged ParticipantLog::prepared() wrote its record
//   txn.participant.before_resolved      ParticipantLog::resolved() about to clear its record
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "djinn/core/sqlite.h"
#include "djinn/core/status.h"

namespace djinn::txn {

// A transaction's id: 128 random bits (a version-4 UUID). Random rather than a counter because a
// participant (the space) serves many coordinators and keys its staged state by id alone, and
// because an id must never be reused, even by a coordinator whose log was lost: a reused id could
// make a participant apply another transaction's decision.
struct TxnId {
  uint64_t hi = 0;
  uint64_t lo = 0;

  static TxnId random();
  // The canonical 8-4-4-4-12 form, as printed by to_string().
  static std::optional<TxnId> parse(std::string_view text);
  static TxnId from_bytes(std::span<const uint8_t, 16> bytes);
  std::array<uint8_t, 16> bytes() const;  // big-endian, as stored in logs
  std::string to_string() const;
  bool is_nil() const { return hi == 0 && lo == 0; }
  auto operator<=>(const TxnId&) const = default;
};
std::ostream& operator<<(std::ostream& out, const TxnId& id);

// A participant's answer to prepare.
enum class Vote {
  kPrepared,    // its changes are durable and it will commit or abort as told
  kNotChanged,  // it has nothing to commit (read-only); it drops out and gets no phase 2
  kAborted,     // it cannot commit; it has already dropped its changes
};

enum class Outcome {
  kActive,     // not decided yet (running, or voting)
  kCommitted,
  kAborted,    // also the answer for an id the coordinator does not know (presumed abort)
  kUnknown,    // the asker could not learn it (coordinator unreachable): stay in doubt, ask again
};

std::string_view vote_name(Vote vote);
std::string_view outcome_name(Outcome outcome);
std::ostream& operator<<(std::ostream& out, Vote vote);
std::ostream& operator<<(std::ostream& out, Outcome outcome);

// What a coordinator drives. commit and abort must be idempotent and succeed for a transaction
// the participant no longer knows (already resolved): they are repeated after crashes.
class Participant {
 public:
  virtual ~Participant() = default;
  // Phase 1. Before answering kPrepared the participant makes its changes durable with the
  // coordinator's name (ParticipantLog::prepared), so it can finish after its own crash.
  // A non-ok Status counts as a no vote.
  virtual Result<Vote> prepare(const TxnId& txn, std::string_view coordinator) = 0;
  // Phase 2. A non-ok Status means "not done, ask again later"; the decision stands.
  virtual Status commit(const TxnId& txn) = 0;
  virtual Status abort(const TxnId& txn) = 0;
};

// Maps the durable name a participant joined under to a live Participant, so that a coordinator
// restarted from its log can reach the participants again (remote ones through RPC proxies).
class ParticipantResolver {
 public:
  virtual ~ParticipantResolver() = default;
  // nullptr when the participant cannot be reached now; the coordinator treats that as a failed
  // call (a no vote in phase 1, a retry later in phase 2).
  virtual std::shared_ptr<Participant> resolve(std::string_view name) = 0;
};

// In-process participants by name; a later add() under the same name replaces the earlier one
// (a participant restarted after a crash).
class ParticipantRegistry final : public ParticipantResolver {
 public:
  void add(std::string name, std::shared_ptr<Participant> participant);
  // Registers a participant the caller owns and keeps alive while it is registered.
  void add_unowned(std::string name, Participant& participant);
  void remove(std::string_view name);
  std::shared_ptr<Participant> resolve(std::string_view name) override;

 private:
  std::mutex mu_;  // guards participants_
  std::map<std::string, std::shared_ptr<Participant>, std::less<>> participants_;
};

using Clock = std::chrono::steady_clock;

struct CoordinatorOptions {
  std::string path;  // the decision log, a SQLite file owned by this coordinator alone
  std::string name;  // the durable name participants record and later ask outcome() of
  // Transaction leases are granted up to this; an active transaction not committed by its
  // expiry is aborted.
  std::chrono::milliseconds max_lease = std::chrono::minutes(10);
  // Transactions not yet ended (each a row of the log, looked at by every expiry pass): begin()
  // beyond this many gets RESOURCE_EXHAUSTED.
  size_t max_transactions = 100'000;
  // The time source for leases and deadlines; tests inject one. Default: Clock::now.
  std::function<Clock::time_point()> clock;
};

// Participants one transaction may have: each is called in turn at commit, so each one that does
// not answer adds its call timeout to the commit.
inline constexpr size_t kMaxParticipants = 256;

// The transaction manager. Thread-safe; participants are called without any lock held, so a
// participant may call outcome() or join() from inside prepare/commit/abort.
class Coordinator {
 public:
  // Opens (or creates) the log. Transactions of a previous run that have no decision are
  // aborted here (presumed abort); call recover() to deliver the logged decisions.
  static Result<std::unique_ptr<Coordinator>> open(CoordinatorOptions options,
                                                   ParticipantResolver& resolver);
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  const std::string& name() const;

  // Starts a transaction that expires after `lease` (at most options.max_lease) unless
  // committed or renewed before.
  Result<TxnId> begin(std::chrono::milliseconds lease);
  Status renew(const TxnId& txn, std::chrono::milliseconds lease);
  // Adds a participant by its resolvable name; joining twice is a no-op. Only an active
  // transaction can be joined (kAborted once it expired or aborted, kFailedPrecondition once
  // voting has begun); kResourceExhausted beyond kMaxParticipants.
  // `incarnation` names the participant's run (Jini's crash count; 0: not given). A participant
  // that joins again under another incarnation restarted since its first join and lost what it
  // did under the transaction before its prepare: the transaction is aborted, and so is the join.
  Status join(const TxnId& txn, std::string_view participant, uint64_t incarnation = 0);
  // Runs phase 1, logs the decision, runs phase 2 (see the protocol above). Returns the outcome:
  // kCommitted once the decision is logged even if some participant has not been told yet
  // (retry_pending() tells it), kAborted otherwise. Phase 1 must finish by `deadline` (the
  // injected clock's time). Committing a decided transaction returns its outcome again.
  // An error means the decision could not be logged: the transaction stays in doubt (outcome()
  // says kActive) until the coordinator is reopened, and recovery settles it from the log.
  Result<Outcome> commit(const TxnId& txn, Clock::time_point deadline = Clock::time_point::max());
  // Aborts an active transaction and tells its participants; aborting an aborted or unknown
  // transaction is ok (presumed abort); kFailedPrecondition once committed or while voting.
  Status abort(const TxnId& txn);
  // What a participant in doubt asks. Never kUnknown; an id not in the log is kAborted.
  Outcome outcome(const TxnId& txn);

  // After open: re-drives phase 2 of every decided transaction to the participants that have not
  // acknowledged. Returns how many transactions still wait for some participant.
  Result<size_t> recover();
  // The same, later: for participants that failed phase 2 (call it periodically).
  Result<size_t> retry_pending();
  // Aborts every active transaction past its expiry and tells its participants. Returns how many
  // expired. (expiry is also noticed lazily by join, commit and outcome.)
  Result<size_t> expire_due();

  size_t active_count() const;   // begun, not decided
  size_t pending_count() const;  // decided, some participant has not acknowledged phase 2

 private:
  struct Impl;
  explicit Coordinator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A transaction a participant prepared and has not resolved yet.
struct InDoubt {
  TxnId txn;
  std::string coordinator;     // whom to ask for the outcome
  std::vector<uint8_t> state;  // the participant's own record of what to commit
};

// The participant side's durable record: prepared(txn) before voting PREPARED, resolved(txn) once
// the outcome is applied. It lives in the participant's own SQLite file so a participant can write
// its prepared record (and apply a commit) in the same SQLite transaction as its data.
// Not synchronized: the participant guards it with the mutex that guards its Database.
class ParticipantLog {
 public:
  // Creates the log's table in `db` if needed. `db` must outlive the log and be opened with
  // Sync::kFull (the default) so a prepared record is durable before the vote.
  static Result<ParticipantLog> open(sqlite::Database& db);

  // Records (or replaces) the prepared state of `txn`. Inside a caller's sqlite::Transaction it
  // becomes durable with that transaction's commit.
  Status prepared(const TxnId& txn, std::string_view coordinator, std::span<const uint8_t> state);
  // Clears the record; resolving an unknown txn is ok (phase 2 may be repeated).
  Status resolved(const TxnId& txn);
  Result<std::optional<InDoubt>> find(const TxnId& txn);
  Result<std::vector<InDoubt>> in_doubt();

  using AskOutcome = std::function<Outcome(const InDoubt&)>;
  // Applies `outcome` (kCommitted or kAborted) and calls resolved(), in one SQLite transaction
  // with the participant's data when it can.
  using Finish = std::function<Status(const InDoubt&, Outcome outcome)>;
  // A restarted participant's recovery: asks the outcome of every in-doubt transaction and
  // finishes those decided. Returns how many stay in doubt (still active or coordinator
  // unreachable); ask again later.
  Result<size_t> resolve_in_doubt(const AskOutcome& ask, const Finish& finish);

 private:
  explicit ParticipantLog(sqlite::Database* db) : db_(db) {}
  sqlite::Database* db_;
};

}  // namespace djinn::txn
