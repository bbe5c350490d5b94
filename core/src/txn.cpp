// Two-phase commit: the coordinator (its decision log, phase 1, the commit point, phase 2,
// recovery and expiry) and the participant-side log. The protocol is summarized in txn.h.
#include "djinn/core/txn.h"

#include <algorithm>
#include <cstdio>
#include <deque>
#include <future>
#include <ostream>
#include <random>

#include "djinn/core/fault.h"
#include "djinn/core/group_commit.h"
#include "djinn/core/log.h"

namespace djinn::txn {
namespace {

constexpr int64_t kSchemaVersion = 1;
// How many forgotten transactions the coordinator still remembers, so that a repeated commit()
// or a late outcome() gets the true answer rather than "unknown". Beyond this an unknown id is
// presumed aborted, which only participants that never acknowledged may ask about.
constexpr size_t kRememberFinished = 4096;

constexpr std::string_view kCoordinatorSchema = R"sql(
CREATE TABLE IF NOT EXISTS txn_log (
  id BLOB PRIMARY KEY,         -- TxnId, 16 bytes big-endian
  state INTEGER NOT NULL       -- 0 active, 1 committed (the commit point), 2 aborted
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS txn_member (
  txn BLOB NOT NULL,
  name TEXT NOT NULL,          -- resolved through the ParticipantResolver, also after a restart
  seq INTEGER NOT NULL,        -- join order: both phases run in it
  done INTEGER NOT NULL DEFAULT 0,  -- 1: acknowledged phase 2, or owes none (voted NOTCHANGED or ABORTED)
  PRIMARY KEY (txn, name)
) WITHOUT ROWID;
)sql";

constexpr std::string_view kParticipantSchema = R"sql(
CREATE TABLE IF NOT EXISTS txn_participant_log (
  txn BLOB PRIMARY KEY,        -- TxnId, 16 bytes big-endian
  coordinator TEXT NOT NULL,   -- whom to ask for the outcome after a restart
  state BLOB NOT NULL          -- the participant's own record of what to commit
) WITHOUT ROWID;
)sql";

// The log's states, plus kVoting, which lives only in memory: a crash while voting leaves
// kActive in the log, which the next open presumes aborted.
enum class State { kActive = 0, kCommitted = 1, kAborted = 2, kVoting = 3 };

constexpr const char* kDuringPhase2 = "txn.coordinator.during_phase2";
constexpr const char* kDuringRecovery = "txn.coordinator.during_recovery";

struct Member {
  std::string name;
  std::optional<Vote> vote;
  bool done = false;
  uint64_t incarnation = 0;  // in memory: a transaction with no decision does not outlive a restart
};

struct Txn {
  State state = State::kActive;
  Clock::time_point expires;
  std::vector<Member> members;
  bool driving = false;  // a thread is delivering phase 2 outside the lock
};

template <class... Args>
Status run_sql(sqlite::Database& db, std::string_view sql, const Args&... args) {
  Result<sqlite::Statement*> statement = db.cached(sql);
  if (!statement.ok()) return statement.status();
  DJINN_RETURN_IF_ERROR((*statement)->bind_all(args...));
  return (*statement)->run();
}

TxnId id_column(const sqlite::Statement& statement, int column) {
  std::vector<uint8_t> blob = statement.column_blob(column);
  if (blob.size() != 16) return TxnId{};
  return TxnId::from_bytes(std::span<const uint8_t, 16>(blob.data(), 16));
}

bool decided(State state) { return state == State::kCommitted || state == State::kAborted; }

}  // namespace

// ---- TxnId, names ----

TxnId TxnId::random() {
  thread_local std::random_device device;
  auto word = [] { return (uint64_t{device()} << 32) | uint64_t{device()}; };
  TxnId id{word(), word()};
  id.hi = (id.hi & ~uint64_t{0xF000}) | uint64_t{0x4000};                     // version 4
  id.lo = (id.lo & ~(uint64_t{3} << 62)) | (uint64_t{2} << 62);              // variant 10
  return id;
}

std::array<uint8_t, 16> TxnId::bytes() const {
  std::array<uint8_t, 16> out{};
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<uint8_t>(hi >> (56 - 8 * i));
    out[8 + i] = static_cast<uint8_t>(lo >> (56 - 8 * i));
  }
  return out;
}

TxnId TxnId::from_bytes(std::span<const uint8_t, 16> bytes) {
  TxnId id;
  for (int i = 0; i < 8; ++i) {
    id.hi = (id.hi << 8) | bytes[i];
    id.lo = (id.lo << 8) | bytes[8 + i];
  }
  return id;
}

std::string TxnId::to_string() const {
  auto b = bytes();
  char text[37];
  std::snprintf(text, sizeof text,
                "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
                b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
                b[15]);
  return text;
}

std::optional<TxnId> TxnId::parse(std::string_view text) {
  if (text.size() != 36) return std::nullopt;
  std::array<uint8_t, 16> b{};
  size_t n = 0;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < text.size();) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (text[i] != '-') return std::nullopt;
      ++i;
      continue;
    }
    int high = nibble(text[i]), low = nibble(text[i + 1]);
    if (high < 0 || low < 0) return std::nullopt;
    b[n++] = static_cast<uint8_t>(high << 4 | low);
    i += 2;
  }
  return from_bytes(b);
}

std::ostream& operator<<(std::ostream& out, const TxnId& id) { return out << id.to_string(); }

std::string_view vote_name(Vote vote) {
  switch (vote) {
    case Vote::kPrepared: return "PREPARED";
    case Vote::kNotChanged: return "NOTCHANGED";
    case Vote::kAborted: return "ABORTED";
  }
  return "?";
}

std::string_view outcome_name(Outcome outcome) {
  switch (outcome) {
    case Outcome::kActive: return "ACTIVE";
    case Outcome::kCommitted: return "COMMITTED";
    case Outcome::kAborted: return "ABORTED";
    case Outcome::kUnknown: return "UNKNOWN";
  }
  return "?";
}

std::ostream& operator<<(std::ostream& out, Vote vote) { return out << vote_name(vote); }
std::ostream& operator<<(std::ostream& out, Outcome outcome) { return out << outcome_name(outcome); }

// ---- ParticipantRegistry ----

void ParticipantRegistry::add(std::string name, std::shared_ptr<Participant> participant) {
  std::lock_guard lock(mu_);
  participants_[std::move(name)] = std::move(participant);
}

void ParticipantRegistry::add_unowned(std::string name, Participant& participant) {
  add(std::move(name), std::shared_ptr<Participant>(&participant, [](Participant*) {}));
}

void ParticipantRegistry::remove(std::string_view name) {
  std::lock_guard lock(mu_);
  if (auto it = participants_.find(name); it != participants_.end()) participants_.erase(it);
}

std::shared_ptr<Participant> ParticipantRegistry::resolve(std::string_view name) {
  std::lock_guard lock(mu_);
  auto it = participants_.find(name);
  return it == participants_.end() ? nullptr : it->second;
}

// ---- Coordinator ----

struct Coordinator::Impl {
  Impl(CoordinatorOptions o, ParticipantResolver& r, sqlite::Database d)
      : options(std::move(o)), resolver(r), db(std::move(d)) {}
  ~Impl() { stop_log(); }

  const CoordinatorOptions options;
  ParticipantResolver& resolver;

  mutable std::mutex mu;  // guards txns, finished, finished_order; the log is queued to under it
  sqlite::Database db;    // load() before the writer starts, then the writer thread alone
  std::map<TxnId, Txn> txns;
  std::map<TxnId, Outcome> finished;  // forgotten recently: see kRememberFinished
  std::deque<TxnId> finished_order;

  // The log's writer, a group commit. Records are posted under mu, so they reach SQLite in the
  // order of the changes they record, a batch at a time in one SQLite transaction. A batch holding
  // a commit decision is fsync'd (synchronous=FULL) before the decisions in it are answered:
  // decisions made together share one fsync, and no lock is held across it. Other records
  // (begins, joins, aborts, acknowledgements, forgetting) are not waited for: one lost in a crash
  // is what presumed abort and redelivery cover already, and a decision is queued after every
  // record it needs. A batch that fails leaves the log failed: every later decision fails, and
  // begins and joins are refused, until the coordinator is reopened and recovers from what the
  // log holds. Closing writes what was queued first.
  struct LogRecord {
    std::function<Status(sqlite::Database&)> write;
    bool forced = false;  // a decision's: answered once durable
  };
  static constexpr size_t kLogBatch = 4096;
  std::unique_ptr<GroupCommit<LogRecord, Status>> log;
  std::vector<LogRecord> before_start;  // queued by load(), which has the database to itself
  std::mutex log_mu;  // guards log_failed; after mu, never before
  std::optional<Status> log_failed;
  std::optional<Status> failed_log() {
    std::lock_guard lock(log_mu);
    return log_failed;
  }

  void start_log() {
    log = std::make_unique<GroupCommit<LogRecord, Status>>(
        kLogBatch, [this](std::span<LogRecord> batch) { return write_log(batch); }, "txn-log");
    std::lock_guard lock(mu);
    if (!before_start.empty()) log->post(std::move(before_start), [](std::vector<Status>) {}, 0, /*bounded=*/false);
    before_start.clear();
  }
  void stop_log() {
    if (log) log->finish();
  }
  // mu held. Refused (and nothing queued) once the log has failed.
  Status queue_locked(LogRecord record, std::function<void(std::vector<Status>)> done) {
    if (std::optional<Status> failed = failed_log()) return *failed;
    if (!log) {  // no decision is made before the writer starts: nobody waits for these
      before_start.push_back(std::move(record));
      return Status::Ok();
    }
    log->post({std::move(record)}, std::move(done), 0, /*bounded=*/false);
    return Status::Ok();
  }
  Status log_locked(std::function<Status(sqlite::Database&)> write) {
    return queue_locked({std::move(write), false}, [](std::vector<Status>) {});
  }
  // The future is answered once the record is durable (or could not be written).
  std::future<Status> log_forced_locked(std::function<Status(sqlite::Database&)> write) {
    auto done = std::make_shared<std::promise<Status>>();
    std::future<Status> durable = done->get_future();
    Status queued = queue_locked({std::move(write), true},
                                 [done](std::vector<Status> written) { done->set_value(written.front()); });
    if (!queued.ok()) done->set_value(queued);
    return durable;
  }
  // On the log's thread: one batch, every record answered with the batch's outcome.
  std::vector<Status> write_log(std::span<LogRecord> batch) {
    std::optional<Status> failed = failed_log();
    Status written = Status::Ok();
    try {
      written = failed ? *failed : write_batch(batch);
    } catch (const fault::CrashPointHit& hit) {  // a test's crash here: nothing more is written
      written = unavailable(hit.what());
    }
    if (!written.ok()) {
      std::lock_guard lock(log_mu);
      if (!log_failed) {
        log_failed = Status(written.code(), "the coordinator's log " + options.path + " failed (" + written.message() +
                                                "); reopen the coordinator to recover from what it holds");
        DJINN_LOG(kError, "txn") << log_failed->message();
      }
      written = *log_failed;
    }
    return std::vector<Status>(batch.size(), written);
  }
  Status write_batch(std::span<LogRecord> batch) {
    DJINN_CRASH_POINT("txn.coordinator.writing_log");
    bool forced = std::any_of(batch.begin(), batch.end(), [](const LogRecord& r) { return r.forced; });
    if (forced) {
      DJINN_CRASH_POINT("txn.coordinator.writing_decisions");
      DJINN_RETURN_IF_ERROR(db.set_sync(sqlite::Sync::kFull));
    }
    Status written = [&]() -> Status {
      auto tx = sqlite::Transaction::begin(db);
      if (!tx.ok()) return tx.status();
      for (LogRecord& r : batch) DJINN_RETURN_IF_ERROR(r.write(db));
      return tx->commit();
    }();
    if (forced) {
      Status relaxed = db.set_sync(sqlite::Sync::kNormal);
      if (!relaxed.ok()) DJINN_LOG(kWarn, "txn") << "synchronous=NORMAL: " << relaxed.to_string();
    }
    return written;
  }

  Clock::time_point now() const { return options.clock ? options.clock() : Clock::now(); }
  std::string describe(const TxnId& id) const {
    return "transaction " + id.to_string() + " of coordinator " + options.name;
  }

  Status load();
  bool expired_locked(const Txn& t) const { return t.state == State::kActive && now() >= t.expires; }
  void decide_abort_locked(const TxnId& id, Txn& t, const std::string& reason);
  std::future<Status> log_commit_decision_locked(const TxnId& id, const Txn& t);
  void mark_done_locked(const TxnId& id, Txn& t, const std::vector<std::string>& names);
  void forget_locked(const TxnId& id, Outcome outcome);
  // Delivers the decision of `id` to every participant that has not acknowledged it. Returns
  // true when some participant still has not (or another thread is delivering).
  bool drive(const TxnId& id, const char* during_point);
  std::vector<TxnId> decided_ids() const;
};

Status Coordinator::Impl::load() {
  Result<int64_t> version = db.user_version();
  if (!version.ok()) return version.status();
  if (*version != 0 && *version != kSchemaVersion) {
    return failed_precondition("coordinator log " + options.path + " has schema version " +
                               std::to_string(*version) + ", expected " +
                               std::to_string(kSchemaVersion));
  }
  DJINN_RETURN_IF_ERROR(db.exec(kCoordinatorSchema));
  DJINN_RETURN_IF_ERROR(db.set_user_version(kSchemaVersion));

  // Presumed abort: a transaction of the previous run that reached no decision can never commit.
  DJINN_RETURN_IF_ERROR(run_sql(db, "UPDATE txn_log SET state = 2 WHERE state = 0"));
  int64_t presumed = db.changes();

  Result<sqlite::Statement*> rows = db.cached("SELECT id, state FROM txn_log");
  if (!rows.ok()) return rows.status();
  for (;;) {
    Result<bool> row = (*rows)->step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    Txn& t = txns[id_column(**rows, 0)];
    t.state = (*rows)->column_int64(1) == 1 ? State::kCommitted : State::kAborted;
  }
  rows = db.cached("SELECT txn, name, done FROM txn_member ORDER BY txn, seq");
  if (!rows.ok()) return rows.status();
  for (;;) {
    Result<bool> row = (*rows)->step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    auto it = txns.find(id_column(**rows, 0));
    if (it == txns.end()) continue;  // a member row outlived its forgotten transaction
    it->second.members.push_back(
        Member{(*rows)->column_text(1), std::nullopt, (*rows)->column_int64(2) != 0});
  }

  size_t to_finish = 0;
  std::vector<std::pair<TxnId, Outcome>> done;
  for (const auto& [id, t] : txns) {
    bool pending = std::any_of(t.members.begin(), t.members.end(),
                               [](const Member& m) { return !m.done; });
    if (pending) {
      ++to_finish;
    } else {
      done.emplace_back(id, t.state == State::kCommitted ? Outcome::kCommitted : Outcome::kAborted);
    }
  }
  for (const auto& [id, outcome] : done) forget_locked(id, outcome);
  DJINN_LOG(kInfo, "txn") << "coordinator " << options.name << " opened " << options.path << ": "
                          << to_finish << " decided transactions to finish, " << presumed
                          << " presumed aborted";
  return Status();
}

void Coordinator::Impl::decide_abort_locked(const TxnId& id, Txn& t, const std::string& reason) {
  t.state = State::kAborted;
  std::vector<std::string> dropped_out;
  for (Member& m : t.members) {
    if (m.vote == Vote::kNotChanged || m.vote == Vote::kAborted) {
      m.done = true;
      dropped_out.push_back(m.name);
    }
  }
  // Not forced to disk: under presumed abort a lost abort record reads as "no decision", which
  // the next open aborts just the same.
  Status logged = log_locked([id, dropped_out](sqlite::Database& log) -> Status {
    DJINN_RETURN_IF_ERROR(run_sql(log, "UPDATE txn_log SET state = 2 WHERE id = ?", id.bytes()));
    for (const auto& name : dropped_out) {
      DJINN_RETURN_IF_ERROR(
          run_sql(log, "UPDATE txn_member SET done = 1 WHERE txn = ? AND name = ?", id.bytes(), name));
    }
    return Status::Ok();
  });
  if (!logged.ok()) {
    DJINN_LOG(kWarn, "txn") << "could not log the abort of " << id << " (presumed anyway): "
                            << logged.to_string();
  }
  DJINN_LOG(kInfo, "txn") << describe(id) << " aborted: " << reason;
}

std::future<Status> Coordinator::Impl::log_commit_decision_locked(const TxnId& id, const Txn& t) {
  // The only forced write of the protocol: its batch is written with synchronous=FULL, which
  // fsyncs the WAL at its commit.
  std::vector<std::string> owe_none;
  for (const Member& m : t.members) {
    if (m.vote != Vote::kPrepared) owe_none.push_back(m.name);
  }
  return log_forced_locked([id, owe_none, what = describe(id)](sqlite::Database& log) -> Status {
    DJINN_RETURN_IF_ERROR(run_sql(log, "UPDATE txn_log SET state = 1 WHERE id = ?", id.bytes()));
    if (log.changes() != 1) return internal_error("the log has no row for " + what);
    for (const auto& name : owe_none) {
      DJINN_RETURN_IF_ERROR(
          run_sql(log, "UPDATE txn_member SET done = 1 WHERE txn = ? AND name = ?", id.bytes(), name));
    }
    return Status::Ok();
  });
}

void Coordinator::Impl::mark_done_locked(const TxnId& id, Txn& t,
                                         const std::vector<std::string>& names) {
  for (Member& m : t.members) {
    if (std::find(names.begin(), names.end(), m.name) != names.end()) m.done = true;
  }
  // Not forced: a lost acknowledgement only means phase 2 is sent again, which is idempotent.
  Status logged = log_locked([id, names](sqlite::Database& log) -> Status {
    for (const auto& name : names) {
      DJINN_RETURN_IF_ERROR(
          run_sql(log, "UPDATE txn_member SET done = 1 WHERE txn = ? AND name = ?", id.bytes(), name));
    }
    return Status::Ok();
  });
  if (!logged.ok()) {
    DJINN_LOG(kWarn, "txn") << "could not log phase 2 acknowledgements of " << id << ": "
                            << logged.to_string();
  }
}

void Coordinator::Impl::forget_locked(const TxnId& id, Outcome outcome) {
  Status logged = log_locked([id](sqlite::Database& log) -> Status {
    DJINN_RETURN_IF_ERROR(run_sql(log, "DELETE FROM txn_member WHERE txn = ?", id.bytes()));
    return run_sql(log, "DELETE FROM txn_log WHERE id = ?", id.bytes());
  });
  if (!logged.ok()) {
    // The rows stay; the next open finds every participant done and forgets them then.
    DJINN_LOG(kWarn, "txn") << "could not forget " << id << ": " << logged.to_string();
  }
  txns.erase(id);
  if (finished.emplace(id, outcome).second) finished_order.push_back(id);
  while (finished_order.size() > kRememberFinished) {
    finished.erase(finished_order.front());
    finished_order.pop_front();
  }
}

bool Coordinator::Impl::drive(const TxnId& id, const char* during_point) {
  bool commit = false;
  std::vector<std::string> targets;
  {
    std::lock_guard lock(mu);
    auto it = txns.find(id);
    if (it == txns.end()) return false;
    Txn& t = it->second;
    if (!decided(t.state)) return false;
    if (t.driving) return true;  // another thread is delivering it
    commit = t.state == State::kCommitted;
    for (const Member& m : t.members) {
      if (!m.done) targets.push_back(m.name);
    }
    if (targets.empty()) {
      forget_locked(id, commit ? Outcome::kCommitted : Outcome::kAborted);
      return false;
    }
    t.driving = true;
  }
  // Clears `driving` if a participant's call or a crash point throws, so the transaction is
  // not stuck for this object's remaining life.
  struct DrivingGuard {
    Impl* impl;
    const TxnId* id;
    ~DrivingGuard() {
      if (!impl) return;
      std::lock_guard lock(impl->mu);
      if (auto it = impl->txns.find(*id); it != impl->txns.end()) it->second.driving = false;
    }
  } guard{this, &id};

  std::vector<std::string> acked;
  for (size_t i = 0; i < targets.size(); ++i) {
    std::shared_ptr<Participant> participant = resolver.resolve(targets[i]);
    Status status = !participant ? unavailable("participant " + targets[i] + " is unreachable")
                    : commit     ? participant->commit(id)
                                 : participant->abort(id);
    if (status.ok()) {
      acked.push_back(targets[i]);
    } else {
      DJINN_LOG(kWarn, "txn") << (commit ? "commit" : "abort") << " of " << id << " at "
                              << targets[i] << " failed, will retry: " << status.to_string();
    }
    if (i == 0) DJINN_CRASH_POINT(during_point);
  }
  DJINN_CRASH_POINT("txn.coordinator.after_phase2");

  guard.impl = nullptr;
  std::lock_guard lock(mu);
  auto it = txns.find(id);
  if (it == txns.end()) return false;
  Txn& t = it->second;
  t.driving = false;
  mark_done_locked(id, t, acked);
  bool pending = std::any_of(t.members.begin(), t.members.end(),
                             [](const Member& m) { return !m.done; });
  if (!pending) forget_locked(id, commit ? Outcome::kCommitted : Outcome::kAborted);
  return pending;
}

std::vector<TxnId> Coordinator::Impl::decided_ids() const {
  std::lock_guard lock(mu);
  std::vector<TxnId> ids;
  for (const auto& [id, t] : txns) {
    if (decided(t.state)) ids.push_back(id);
  }
  return ids;
}

Result<std::unique_ptr<Coordinator>> Coordinator::open(CoordinatorOptions options,
                                                       ParticipantResolver& resolver) {
  if (options.name.empty()) return invalid_argument("coordinator name is empty: participants ask it for outcomes");
  if (options.max_lease <= std::chrono::milliseconds::zero()) {
    return invalid_argument("max_lease " + std::to_string(options.max_lease.count()) +
                            " ms: must be > 0");
  }
  sqlite::OpenOptions db_options;
  db_options.exclusive = true;  // two coordinators on one log would presume each other's work aborted
  db_options.sync = sqlite::Sync::kNormal;  // raised to FULL for commit decisions only
  db_options.busy_timeout = std::chrono::milliseconds(200);  // only another owner ever holds it
  Result<sqlite::Database> db = sqlite::Database::open(options.path, db_options);
  if (!db.ok()) return db.status();
  auto impl = std::make_unique<Impl>(std::move(options), resolver, std::move(*db));
  {
    std::lock_guard lock(impl->mu);
    DJINN_RETURN_IF_ERROR(impl->load());
  }
  impl->start_log();
  return std::unique_ptr<Coordinator>(new Coordinator(std::move(impl)));
}

Coordinator::Coordinator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Coordinator::~Coordinator() = default;

const std::string& Coordinator::name() const { return impl_->options.name; }

Result<TxnId> Coordinator::begin(std::chrono::milliseconds lease) {
  Impl& s = *impl_;
  if (lease <= std::chrono::milliseconds::zero()) {
    return invalid_argument("transaction lease " + std::to_string(lease.count()) +
                            " ms: must be > 0");
  }
  lease = std::min(lease, s.options.max_lease);
  TxnId id = TxnId::random();
  {
    std::lock_guard lock(s.mu);
    if (s.txns.size() >= s.options.max_transactions) {
      return resource_exhausted("begin: " + std::to_string(s.txns.size()) +
                                " transactions are not ended yet, the limit; commit or abort some first");
    }
    DJINN_RETURN_IF_ERROR(s.log_locked([id](sqlite::Database& log) {
      return run_sql(log, "INSERT INTO txn_log (id, state) VALUES (?, 0)", id.bytes());
    }));
    Txn& t = s.txns[id];
    t.expires = s.now() + lease;
  }
  DJINN_CRASH_POINT("txn.coordinator.after_begin");
  return id;
}

Status Coordinator::renew(const TxnId& id, std::chrono::milliseconds lease) {
  Impl& s = *impl_;
  if (lease <= std::chrono::milliseconds::zero()) {
    return invalid_argument("transaction lease " + std::to_string(lease.count()) +
                            " ms: must be > 0");
  }
  std::lock_guard lock(s.mu);
  auto it = s.txns.find(id);
  if (it == s.txns.end()) return not_found("renew: " + s.describe(id) + " is not known");
  Txn& t = it->second;
  if (s.expired_locked(t)) {
    s.decide_abort_locked(id, t, "lease expired");
    return aborted("renew: " + s.describe(id) + " expired");
  }
  if (t.state != State::kActive) return failed_precondition("renew: " + s.describe(id) + " is no longer active");
  t.expires = s.now() + std::min(lease, s.options.max_lease);
  return Status();
}

Status Coordinator::join(const TxnId& id, std::string_view participant, uint64_t incarnation) {
  Impl& s = *impl_;
  if (participant.empty()) return invalid_argument("join: participant name is empty");
  {
    std::lock_guard lock(s.mu);
    auto it = s.txns.find(id);
    if (it == s.txns.end()) {
      auto f = s.finished.find(id);
      if (f != s.finished.end() && f->second == Outcome::kCommitted) {
        return failed_precondition("join: " + s.describe(id) + " has committed");
      }
      return f != s.finished.end() ? aborted("join: " + s.describe(id) + " aborted")
                                   : not_found("join: " + s.describe(id) + " is not known");
    }
    Txn& t = it->second;
    if (s.expired_locked(t)) {
      s.decide_abort_locked(id, t, "lease expired");
      return aborted("join: " + s.describe(id) + " expired");
    }
    switch (t.state) {
      case State::kActive: break;
      case State::kVoting: return failed_precondition("join: " + s.describe(id) + " is already voting");
      case State::kCommitted: return failed_precondition("join: " + s.describe(id) + " has committed");
      case State::kAborted: return aborted("join: " + s.describe(id) + " aborted");
    }
    for (Member& m : t.members) {
      if (m.name != participant) continue;
      if (incarnation != 0 && m.incarnation != 0 && m.incarnation != incarnation) {
        std::string why = "participant " + std::string(participant) + " restarted since it joined";
        s.decide_abort_locked(id, t, why);
        return aborted("join: " + s.describe(id) + " aborted: " + why + ", losing what it did under it");
      }
      if (m.incarnation == 0) m.incarnation = incarnation;
      return Status();
    }
    if (t.members.size() >= kMaxParticipants) {
      return resource_exhausted("join: " + s.describe(id) + " has " + std::to_string(t.members.size()) +
                                " participants, the most a transaction may have");
    }
    DJINN_RETURN_IF_ERROR(s.log_locked([id, name = std::string(participant), seq = t.members.size()](sqlite::Database& log) {
      return run_sql(log, "INSERT INTO txn_member (txn, name, seq) VALUES (?, ?, ?)", id.bytes(), name, seq);
    }));
    t.members.push_back(Member{std::string(participant), std::nullopt, false, incarnation});
  }
  DJINN_CRASH_POINT("txn.coordinator.after_join");
  return Status();
}

Result<Outcome> Coordinator::commit(const TxnId& id, Clock::time_point deadline) {
  Impl& s = *impl_;
  std::vector<std::string> names;
  bool aborted_first = false;  // expired, or the log failed: aborted before phase 1
  {
    std::lock_guard lock(s.mu);
    auto it = s.txns.find(id);
    if (it == s.txns.end()) {
      if (auto f = s.finished.find(id); f != s.finished.end()) return f->second;
      return not_found("commit: " + s.describe(id) +
                       " is not known (never begun, or finished and forgotten)");
    }
    Txn& t = it->second;
    switch (t.state) {
      case State::kCommitted: return Outcome::kCommitted;
      case State::kAborted: return Outcome::kAborted;
      case State::kVoting: return failed_precondition("commit: " + s.describe(id) + " is already committing");
      case State::kActive: break;
    }
    std::optional<Status> log_failed = s.failed_log();
    if (s.expired_locked(t)) {
      s.decide_abort_locked(id, t, "lease expired before commit");
      aborted_first = true;
    } else if (log_failed) {
      // Its records may never have reached the log, nor would the decision: no participant is
      // asked to prepare for a commit that could not be decided.
      s.decide_abort_locked(id, t, log_failed->message());
      aborted_first = true;
    } else {
      t.state = State::kVoting;  // from here no join, renew, abort or expiry
      for (const Member& m : t.members) names.push_back(m.name);
    }
  }
  if (aborted_first) {
    s.drive(id, kDuringPhase2);
    return Outcome::kAborted;
  }

  // Step 1, phase 1: ask every participant to prepare, in join order; the first no ends it.
  std::vector<std::optional<Vote>> votes(names.size());
  std::string no_reason;
  for (size_t i = 0; i < names.size() && no_reason.empty(); ++i) {
    if (s.now() > deadline) {
      no_reason = "the commit deadline passed in phase 1";
      break;
    }
    std::shared_ptr<Participant> participant = s.resolver.resolve(names[i]);
    if (!participant) {
      no_reason = "participant " + names[i] + " is unreachable";
      break;
    }
    Result<Vote> vote = participant->prepare(id, s.options.name);
    if (!vote.ok()) {
      no_reason = "participant " + names[i] + " failed to prepare: " + vote.status().to_string();
    } else {
      votes[i] = *vote;
      if (*vote == Vote::kAborted) no_reason = "participant " + names[i] + " voted ABORTED";
    }
    if (i == 0) DJINN_CRASH_POINT("txn.coordinator.during_prepare");
  }
  DJINN_CRASH_POINT("txn.coordinator.after_prepare_votes");

  auto record_votes = [&](Txn& t) {
    for (size_t i = 0; i < names.size(); ++i) t.members[i].vote = votes[i];
  };
  if (!no_reason.empty()) {
    {
      std::lock_guard lock(s.mu);
      Txn& t = s.txns.at(id);
      record_votes(t);
      s.decide_abort_locked(id, t, no_reason);
    }
    DJINN_CRASH_POINT("txn.coordinator.after_abort_decision");
    s.drive(id, kDuringPhase2);
    return Outcome::kAborted;
  }
  if (std::none_of(votes.begin(), votes.end(), [](auto v) { return v == Vote::kPrepared; })) {
    // Read-only: nobody has anything to commit, so there is no decision to log or deliver.
    std::lock_guard lock(s.mu);
    s.forget_locked(id, Outcome::kCommitted);
    return Outcome::kCommitted;
  }

  // Step 2, the commit point: once this write is durable the transaction commits, whatever
  // crashes next.
  DJINN_CRASH_POINT("txn.coordinator.before_decision");
  std::future<Status> decision;
  {
    std::lock_guard lock(s.mu);
    Txn& t = s.txns.at(id);
    record_votes(t);
    decision = s.log_commit_decision_locked(id, t);
  }
  // No lock is held while the decision is written: the coordinator's other calls go on, and
  // decisions queued meanwhile share its fsync.
  DJINN_CRASH_POINT("txn.coordinator.logging_decision");
  Status logged = decision.get();
  {
    std::lock_guard lock(s.mu);
    Txn& t = s.txns.at(id);
    if (!logged.ok()) {
      // The write may or may not have reached the disk, so neither outcome can be announced:
      // the transaction stays in doubt (voting) until a reopen reads the log and settles it.
      DJINN_LOG(kError, "txn") << "commit decision of " << id << " not logged: " << logged.to_string();
      return Status(logged.code(), "commit: the decision of " + s.describe(id) +
                                       " could not be logged (" + logged.message() +
                                       "); it stays in doubt until the coordinator recovers");
    }
    t.state = State::kCommitted;
    for (Member& m : t.members) {
      if (m.vote != Vote::kPrepared) m.done = true;  // NOTCHANGED: no phase 2
    }
  }
  DJINN_CRASH_POINT("txn.coordinator.after_decision");

  // Step 3, phase 2: tell every participant that voted PREPARED; failures are retried later.
  s.drive(id, kDuringPhase2);
  return Outcome::kCommitted;
}

Status Coordinator::abort(const TxnId& id) {
  Impl& s = *impl_;
  {
    std::lock_guard lock(s.mu);
    auto it = s.txns.find(id);
    if (it == s.txns.end()) {
      auto f = s.finished.find(id);
      if (f != s.finished.end() && f->second == Outcome::kCommitted) {
        return failed_precondition("abort: " + s.describe(id) + " has committed");
      }
      return Status();  // aborted already, or unknown: presumed aborted
    }
    Txn& t = it->second;
    switch (t.state) {
      case State::kCommitted: return failed_precondition("abort: " + s.describe(id) + " has committed");
      case State::kVoting: return failed_precondition("abort: " + s.describe(id) + " is committing");
      case State::kAborted: break;  // deliver what is still pending below
      case State::kActive: s.decide_abort_locked(id, t, "aborted by its client"); break;
    }
  }
  DJINN_CRASH_POINT("txn.coordinator.after_abort_decision");
  s.drive(id, kDuringPhase2);
  return Status();
}

Outcome Coordinator::outcome(const TxnId& id) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mu);
  auto it = s.txns.find(id);
  if (it == s.txns.end()) {
    auto f = s.finished.find(id);
    return f != s.finished.end() ? f->second : Outcome::kAborted;  // presumed abort
  }
  Txn& t = it->second;
  if (s.expired_locked(t)) {
    // Decided here, delivered by expire_due() or retry_pending(): the asker may be a participant
    // inside its own lock, so no participant is called from here.
    s.decide_abort_locked(id, t, "lease expired");
  }
  switch (t.state) {
    case State::kActive:
    case State::kVoting: return Outcome::kActive;
    case State::kCommitted: return Outcome::kCommitted;
    case State::kAborted: return Outcome::kAborted;
  }
  return Outcome::kActive;
}

Result<size_t> Coordinator::recover() {
  Impl& s = *impl_;
  std::vector<TxnId> ids = s.decided_ids();
  if (!ids.empty()) {
    DJINN_LOG(kInfo, "txn") << "coordinator " << s.options.name << " recovering " << ids.size()
                            << " decided transactions";
  }
  size_t pending = 0;
  for (const TxnId& id : ids) pending += s.drive(id, kDuringRecovery) ? 1 : 0;
  return pending;
}

Result<size_t> Coordinator::retry_pending() {
  Impl& s = *impl_;
  size_t pending = 0;
  for (const TxnId& id : s.decided_ids()) pending += s.drive(id, kDuringPhase2) ? 1 : 0;
  return pending;
}

Result<size_t> Coordinator::expire_due() {
  Impl& s = *impl_;
  std::vector<TxnId> ids;
  {
    std::lock_guard lock(s.mu);
    for (auto& [id, t] : s.txns) {
      if (s.expired_locked(t)) {
        s.decide_abort_locked(id, t, "lease expired");
        ids.push_back(id);
      }
    }
  }
  for (const TxnId& id : ids) s.drive(id, kDuringPhase2);
  return ids.size();
}

size_t Coordinator::active_count() const {
  std::lock_guard lock(impl_->mu);
  return static_cast<size_t>(std::count_if(impl_->txns.begin(), impl_->txns.end(), [](const auto& e) {
    return !decided(e.second.state);
  }));
}

size_t Coordinator::pending_count() const {
  std::lock_guard lock(impl_->mu);
  return static_cast<size_t>(std::count_if(impl_->txns.begin(), impl_->txns.end(), [](const auto& e) {
    return decided(e.second.state);
  }));
}

// ---- ParticipantLog ----

Result<ParticipantLog> ParticipantLog::open(sqlite::Database& db) {
  DJINN_RETURN_IF_ERROR(db.exec(kParticipantSchema));
  return ParticipantLog(&db);
}

Status ParticipantLog::prepared(const TxnId& txn, std::string_view coordinator,
                                std::span<const uint8_t> state) {
  if (coordinator.empty()) return invalid_argument("prepared " + txn.to_string() + ": coordinator name is empty");
  DJINN_RETURN_IF_ERROR(run_sql(
      *db_, "INSERT OR REPLACE INTO txn_participant_log (txn, coordinator, state) VALUES (?, ?, ?)",
      txn.bytes(), coordinator, state));
  DJINN_CRASH_POINT("txn.participant.after_prepare_logged");
  return Status();
}

Status ParticipantLog::resolved(const TxnId& txn) {
  DJINN_CRASH_POINT("txn.participant.before_resolved");
  return run_sql(*db_, "DELETE FROM txn_participant_log WHERE txn = ?", txn.bytes());
}

Result<std::optional<InDoubt>> ParticipantLog::find(const TxnId& txn) {
  Result<sqlite::Statement*> statement =
      db_->cached("SELECT coordinator, state FROM txn_participant_log WHERE txn = ?");
  if (!statement.ok()) return statement.status();
  sqlite::Statement& st = **statement;
  DJINN_RETURN_IF_ERROR(st.bind_all(txn.bytes()));
  Result<bool> row = st.step();
  if (!row.ok()) return row.status();
  if (!*row) return std::optional<InDoubt>();
  InDoubt found{txn, st.column_text(0), st.column_blob(1)};
  st.reset();  // releases the read
  return std::optional<InDoubt>(std::move(found));
}

Result<std::vector<InDoubt>> ParticipantLog::in_doubt() {
  Result<sqlite::Statement*> statement =
      db_->cached("SELECT txn, coordinator, state FROM txn_participant_log");
  if (!statement.ok()) return statement.status();
  sqlite::Statement& st = **statement;
  std::vector<InDoubt> out;
  for (;;) {
    Result<bool> row = st.step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    out.push_back(InDoubt{id_column(st, 0), st.column_text(1), st.column_blob(2)});
  }
  return out;
}

Result<size_t> ParticipantLog::resolve_in_doubt(const AskOutcome& ask, const Finish& finish) {
  Result<std::vector<InDoubt>> doubts = in_doubt();
  if (!doubts.ok()) return doubts.status();
  size_t still = 0;
  for (const InDoubt& d : *doubts) {
    Outcome outcome = ask(d);
    if (outcome == Outcome::kCommitted || outcome == Outcome::kAborted) {
      DJINN_RETURN_IF_ERROR(finish(d, outcome));
    } else {
      ++still;
    }
  }
  return still;
}

}  // namespace djinn::txn
