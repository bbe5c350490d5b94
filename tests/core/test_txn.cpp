// Tests of two-phase commit: the coordinator, its decision log and recovery, the participant log,
// driven by in-process key-value participants (each on its own SQLite file) and by crash points,
// in-process (thrown) and in a real child process (SIGKILL).
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <future>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "djinn/core/fault.h"
#include "djinn/core/sqlite.h"
#include "djinn/core/txn.h"
#include "support/test_support.h"

namespace djinn::txn {
namespace {

using namespace std::chrono_literals;

// A key-value store that takes part in transactions: writes are staged in memory under a txn,
// written to its ParticipantLog at prepare (the log's state bytes are the staged writes) and
// applied to its table at commit, in one SQLite transaction with the log's resolution.
// A crash point hit inside it "crashes" it: it answers UNAVAILABLE until the test reopens it
// from its file, as a restarted process would be.
// Its own crash points: txn.participant.before_vote, .before_commit, .after_commit_applied,
// .after_abort_applied.
class KvParticipant final : public Participant {
 public:
  static Result<std::shared_ptr<KvParticipant>> open(const std::string& path) {
    Result<sqlite::Database> db = sqlite::Database::open(path);
    if (!db.ok()) return db.status();
    auto p = std::shared_ptr<KvParticipant>(new KvParticipant(std::move(*db)));
    DJINN_RETURN_IF_ERROR(
        p->db_.exec("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)"));
    Result<ParticipantLog> log = ParticipantLog::open(p->db_);
    if (!log.ok()) return log.status();
    p->log_.emplace(std::move(*log));
    return p;
  }

  void stage(const TxnId& txn, std::string key, std::string value) {
    std::lock_guard lock(mu_);
    staged_[txn].emplace_back(std::move(key), std::move(value));
  }

  std::optional<std::string> get(const std::string& key) {
    std::lock_guard lock(mu_);
    auto st = db_.cached("SELECT value FROM kv WHERE key = ?");
    REQUIRE(st.ok());
    REQUIRE((*st)->bind_all(key).ok());
    auto row = (*st)->step();
    REQUIRE(row.ok());
    if (!*row) return std::nullopt;
    std::string value = (*st)->column_text(0);
    (*st)->reset();
    return value;
  }

  size_t staged_count() {
    std::lock_guard lock(mu_);
    return staged_.size();
  }
  size_t in_doubt_count() {
    std::lock_guard lock(mu_);
    auto doubts = log_->in_doubt();
    REQUIRE(doubts.ok());
    return doubts->size();
  }

  // A restarted participant's recovery: asks the coordinator about each in-doubt transaction.
  Result<size_t> recover(const std::function<Outcome(std::string_view, const TxnId&)>& ask) {
    return guarded<Result<size_t>>([&]() -> Result<size_t> {
      return log_->resolve_in_doubt(
          [&](const InDoubt& d) { return ask(d.coordinator, d.txn); },
          [&](const InDoubt& d, Outcome outcome) {
            return outcome == Outcome::kCommitted ? apply_locked(d) : resolve_locked(d.txn);
          });
    });
  }

  Result<Vote> prepare(const TxnId& txn, std::string_view coordinator) override {
    ++prepares;
    return guarded<Result<Vote>>([&]() -> Result<Vote> {
      if (vote_no) {
        staged_.erase(txn);
        return Vote::kAborted;
      }
      auto it = staged_.find(txn);
      if (it == staged_.end()) return Vote::kNotChanged;
      DJINN_RETURN_IF_ERROR(log_->prepared(txn, coordinator, encode(it->second)));
      DJINN_CRASH_POINT("txn.participant.before_vote");
      return Vote::kPrepared;
    });
  }

  Status commit(const TxnId& txn) override {
    ++commits;
    return guarded<Status>([&]() -> Status {
      DJINN_CRASH_POINT("txn.participant.before_commit");
      if (fail_commits > 0) {
        --fail_commits;
        return unavailable("injected commit failure");
      }
      staged_.erase(txn);
      auto record = log_->find(txn);
      if (!record.ok()) return record.status();
      if (!*record) return Status();  // resolved already: commit is idempotent
      DJINN_RETURN_IF_ERROR(apply_locked(**record));
      DJINN_CRASH_POINT("txn.participant.after_commit_applied");
      return Status();
    });
  }

  Status abort(const TxnId& txn) override {
    ++aborts;
    return guarded<Status>([&]() -> Status {
      staged_.erase(txn);
      DJINN_RETURN_IF_ERROR(resolve_locked(txn));
      DJINN_CRASH_POINT("txn.participant.after_abort_applied");
      return Status();
    });
  }

  bool crashed() {
    std::lock_guard lock(mu_);
    return crashed_;
  }

  // Knobs and counters for the tests.
  std::atomic<bool> vote_no{false};
  std::atomic<int> fail_commits{0};
  std::atomic<int> prepares{0}, commits{0}, aborts{0};

 private:
  explicit KvParticipant(sqlite::Database db) : db_(std::move(db)) {}

  template <class R, class F>
  R guarded(F&& body) {
    std::lock_guard lock(mu_);
    if (crashed_) return unavailable("participant crashed");
    try {
      return body();
    } catch (const fault::CrashPointHit& hit) {
      crashed_ = true;
      return unavailable(hit.what());
    }
  }

  static std::vector<uint8_t> encode(const std::vector<std::pair<std::string, std::string>>& writes) {
    std::vector<uint8_t> out;
    auto put = [&](const std::string& s) {
      uint32_t n = static_cast<uint32_t>(s.size());
      out.insert(out.end(), reinterpret_cast<uint8_t*>(&n), reinterpret_cast<uint8_t*>(&n) + 4);
      out.insert(out.end(), s.begin(), s.end());
    };
    for (const auto& [k, v] : writes) {
      put(k);
      put(v);
    }
    return out;
  }

  static std::vector<std::pair<std::string, std::string>> decode(const std::vector<uint8_t>& in) {
    std::vector<std::pair<std::string, std::string>> out;
    size_t at = 0;
    auto get = [&] {
      uint32_t n;
      std::memcpy(&n, in.data() + at, 4);
      std::string s(reinterpret_cast<const char*>(in.data()) + at + 4, n);
      at += 4 + n;
      return s;
    };
    while (at < in.size()) {
      std::string k = get();
      out.emplace_back(std::move(k), get());
    }
    return out;
  }

  // Applies a prepared record and resolves it, atomically.
  Status apply_locked(const InDoubt& record) {
    auto tx = sqlite::Transaction::begin(db_);
    if (!tx.ok()) return tx.status();
    auto st = db_.cached("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)");
    if (!st.ok()) return st.status();
    for (const auto& [k, v] : decode(record.state)) {
      (*st)->reset();
      DJINN_RETURN_IF_ERROR((*st)->bind_all(k, v));
      DJINN_RETURN_IF_ERROR((*st)->run());
    }
    DJINN_RETURN_IF_ERROR(log_->resolved(record.txn));
    return tx->commit();
  }

  Status resolve_locked(const TxnId& txn) { return log_->resolved(txn); }

  std::mutex mu_;  // guards db_, log_, staged_, crashed_
  sqlite::Database db_;
  std::optional<ParticipantLog> log_;
  std::map<TxnId, std::vector<std::pair<std::string, std::string>>> staged_;
  bool crashed_ = false;
};

constexpr const char* kCoordinatorName = "coordinator-1";

std::string participant_name(size_t i) { return "kv-" + std::to_string(i); }

// A coordinator and n participants on files in one temporary directory, each reopenable as after
// a crash, with a test clock.
struct Federation {
  explicit Federation(size_t n) : parts(n) {
    fault::disarm_all();
    for (size_t i = 0; i < n; ++i) reopen_participant(i);
    reopen_coordinator();
  }
  ~Federation() { fault::disarm_all(); }

  void reopen_participant(size_t i) {
    registry.remove(participant_name(i));
    parts[i].reset();
    auto p = KvParticipant::open(dir.file(participant_name(i) + ".db"));
    REQUIRE_MESSAGE(p.ok(), p.status().to_string());
    parts[i] = *p;
    registry.add(participant_name(i), parts[i]);
  }

  void reopen_coordinator(size_t max_transactions = CoordinatorOptions{}.max_transactions) {
    coord.reset();  // a crashed coordinator's object is dropped, as its process would be
    CoordinatorOptions options;
    options.path = dir.file("coordinator.db");
    options.name = kCoordinatorName;
    options.max_transactions = max_transactions;
    options.clock = [this] { return Clock::time_point(std::chrono::milliseconds(now_ms.load())); };
    auto c = Coordinator::open(std::move(options), registry);
    REQUIRE_MESSAGE(c.ok(), c.status().to_string());
    coord = std::move(*c);
  }

  Outcome ask(std::string_view coordinator, const TxnId& txn) {
    return coordinator == kCoordinatorName && coord ? coord->outcome(txn) : Outcome::kUnknown;
  }

  Result<size_t> recover_participant(size_t i) {
    return parts[i]->recover([this](std::string_view c, const TxnId& t) { return ask(c, t); });
  }

  // Begins a transaction, joins every participant and stages key "k<i>" = value at each.
  TxnId start(const std::string& value, std::chrono::milliseconds lease = 10s) {
    auto txn = coord->begin(lease);
    REQUIRE_MESSAGE(txn.ok(), txn.status().to_string());
    for (size_t i = 0; i < parts.size(); ++i) {
      REQUIRE(coord->join(*txn, participant_name(i)).ok());
      parts[i]->stage(*txn, "k" + std::to_string(i), value);
    }
    return *txn;
  }

  void check_all(const std::optional<std::string>& expected) {
    for (size_t i = 0; i < parts.size(); ++i) {
      CAPTURE(i);
      CHECK(parts[i]->get("k" + std::to_string(i)) == expected);
      CHECK(parts[i]->in_doubt_count() == 0);
      CHECK(parts[i]->staged_count() == 0);
    }
  }

  test::TempDir dir;
  ParticipantRegistry registry;
  std::vector<std::shared_ptr<KvParticipant>> parts;
  std::unique_ptr<Coordinator> coord;
  std::atomic<int64_t> now_ms{1'000'000};
};

TEST_CASE("sqlite wrapper: binds, reads, rolls back an uncommitted transaction") {
  test::TempDir dir;
  auto db = sqlite::Database::open(dir.file("t.db"));
  REQUIRE(db.ok());
  REQUIRE(db->exec("CREATE TABLE t (i INTEGER, d REAL, s TEXT, b BLOB, n INTEGER)").ok());
  {
    auto tx = sqlite::Transaction::begin(*db);
    REQUIRE(tx.ok());
    auto st = db->prepare("INSERT INTO t VALUES (?, ?, ?, ?, ?)");
    REQUIRE(st.ok());
    std::vector<uint8_t> blob{1, 2, 0, 3};
    REQUIRE(st->bind_all(uint64_t{0xFFFF'FFFF'FFFF'FFFFull}, 2.5, "text", blob, nullptr).ok());
    REQUIRE(st->run().ok());
    REQUIRE(tx->commit().ok());
  }
  {
    auto tx = sqlite::Transaction::begin(*db);
    REQUIRE(tx.ok());
    REQUIRE(db->exec("DELETE FROM t").ok());
  }  // dropped uncommitted: rolled back
  auto st = db->cached("SELECT i, d, s, b, n FROM t");
  REQUIRE(st.ok());
  auto row = (*st)->step();
  REQUIRE(row.ok());
  REQUIRE(*row);
  CHECK(static_cast<uint64_t>((*st)->column_int64(0)) == 0xFFFF'FFFF'FFFF'FFFFull);
  CHECK((*st)->column_double(1) == 2.5);
  CHECK((*st)->column_text(2) == "text");
  CHECK((*st)->column_blob(3) == std::vector<uint8_t>{1, 2, 0, 3});
  CHECK((*st)->column_is_null(4));
  (*st)->reset();
  auto bad = db->prepare("SELEKT 1");
  CHECK_FALSE(bad.ok());
  CHECK(bad.status().message().find("SELEKT") != std::string::npos);
}

TEST_CASE("TxnId: random, printed and parsed in the canonical form") {
  TxnId a = TxnId::random(), b = TxnId::random();
  CHECK(a != b);
  std::string text = a.to_string();
  CHECK(text.size() == 36);
  CHECK(text[14] == '4');  // version 4
  CHECK(TxnId::parse(text) == a);
  CHECK(TxnId::from_bytes(a.bytes()) == a);
  CHECK_FALSE(TxnId::parse("not-an-id").has_value());
}

TEST_CASE("ParticipantLog: prepared records survive a reopen until resolved") {
  test::TempDir dir;
  TxnId t1 = TxnId::random(), t2 = TxnId::random();
  {
    auto db = sqlite::Database::open(dir.file("p.db"));
    REQUIRE(db.ok());
    auto log = ParticipantLog::open(*db);
    REQUIRE(log.ok());
    std::vector<uint8_t> state{9, 8, 7};
    REQUIRE(log->prepared(t1, "c", state).ok());
    REQUIRE(log->prepared(t2, "c", std::vector<uint8_t>{}).ok());
    REQUIRE(log->resolved(t2).ok());
    REQUIRE(log->resolved(t2).ok());  // idempotent
  }
  auto db = sqlite::Database::open(dir.file("p.db"));
  REQUIRE(db.ok());
  auto log = ParticipantLog::open(*db);
  REQUIRE(log.ok());
  auto doubts = log->in_doubt();
  REQUIRE(doubts.ok());
  REQUIRE(doubts->size() == 1);
  CHECK((*doubts)[0].txn == t1);
  CHECK((*doubts)[0].coordinator == "c");
  CHECK((*doubts)[0].state == std::vector<uint8_t>{9, 8, 7});
  auto found = log->find(t2);
  REQUIRE(found.ok());
  CHECK_FALSE(found->has_value());
}

TEST_CASE("commit with three participants") {
  Federation f(3);
  TxnId txn = f.start("v1");
  auto outcome = f.coord->commit(txn);
  REQUIRE(outcome.ok());
  CHECK(*outcome == Outcome::kCommitted);
  f.check_all("v1");
  CHECK(f.coord->outcome(txn) == Outcome::kCommitted);
  CHECK(f.coord->pending_count() == 0);
  CHECK(f.coord->active_count() == 0);
  for (auto& p : f.parts) {
    CHECK(p->prepares == 1);
    CHECK(p->commits == 1);
    CHECK(p->aborts == 0);
  }
}

TEST_CASE("transactions not yet ended are bounded: begin past the limit is refused until one ends") {
  Federation f(1);
  f.reopen_coordinator(3);
  std::vector<TxnId> open;
  for (int i = 0; i < 3; ++i) open.push_back(*f.coord->begin(10s));
  auto refused = f.coord->begin(10s);
  CHECK(refused.status().code() == Code::kResourceExhausted);
  CHECK(refused.status().message().find("commit or abort some first") != std::string::npos);
  CHECK(f.coord->active_count() == 3);
  REQUIRE(f.coord->abort(open[0]).ok());
  CHECK(f.coord->begin(10s).ok());
}

TEST_CASE("abort before commit tells every participant") {
  Federation f(3);
  TxnId txn = f.start("v1");
  REQUIRE(f.coord->abort(txn).ok());
  f.check_all(std::nullopt);
  CHECK(f.coord->outcome(txn) == Outcome::kAborted);
  auto outcome = f.coord->commit(txn);
  REQUIRE(outcome.ok());
  CHECK(*outcome == Outcome::kAborted);
  for (auto& p : f.parts) {
    CHECK(p->prepares == 0);
    CHECK(p->aborts == 1);
  }
  CHECK_FALSE(f.coord->join(txn, "late").ok());
}

TEST_CASE("a participant joining again under another incarnation aborts the transaction") {
  Federation f(2);
  auto txn = f.coord->begin(10s);
  REQUIRE(txn.ok());
  REQUIRE(f.coord->join(*txn, participant_name(0), 7).ok());
  REQUIRE(f.coord->join(*txn, participant_name(1)).ok());
  CHECK(f.coord->join(*txn, participant_name(0), 7).ok());  // the same run: a no-op
  CHECK(f.coord->join(*txn, participant_name(0)).ok());     // not given: a no-op
  CHECK(f.coord->join(*txn, participant_name(1), 3).ok());  // first given now: recorded
  CHECK(f.coord->outcome(*txn) == Outcome::kActive);
  Status again = f.coord->join(*txn, participant_name(0), 8);  // restarted since
  CHECK(again.code() == Code::kAborted);
  CHECK(again.message().find("restarted") != std::string::npos);
  CHECK(f.coord->outcome(*txn) == Outcome::kAborted);
  auto outcome = f.coord->commit(*txn);
  REQUIRE(outcome.ok());
  CHECK(*outcome == Outcome::kAborted);
}

TEST_CASE("one participant voting no aborts everyone") {
  Federation f(3);
  TxnId txn = f.start("v1");
  f.parts[1]->vote_no = true;
  auto outcome = f.coord->commit(txn);
  REQUIRE(outcome.ok());
  CHECK(*outcome == Outcome::kAborted);
  f.check_all(std::nullopt);
  CHECK(f.parts[0]->aborts == 1);  // prepared, then told to abort
  CHECK(f.parts[1]->aborts == 0);  // voted ABORTED: dropped out already
  CHECK(f.parts[2]->prepares == 0);  // never asked once the outcome was known
  CHECK(f.parts[2]->aborts == 1);
  CHECK(f.coord->pending_count() == 0);
}

TEST_CASE("an unreachable participant counts as a no vote") {
  Federation f(3);
  TxnId txn = f.start("v1");
  f.registry.remove(participant_name(2));
  auto outcome = f.coord->commit(txn);
  REQUIRE(outcome.ok());
  CHECK(*outcome == Outcome::kAborted);
  CHECK(f.coord->pending_count() == 1);  // kv-2 still owes its abort
  f.registry.add(participant_name(2), f.parts[2]);
  auto pending = f.coord->retry_pending();
  REQUIRE(pending.ok());
  CHECK(*pending == 0);
  f.check_all(std::nullopt);
}

TEST_CASE("a NOTCHANGED participant is not sent phase 2") {
  Federation f(3);
  auto txn = f.coord->begin(10s);
  REQUIRE(txn.ok());
  for (size_t i = 0; i < 3; ++i) REQUIRE(f.coord->join(*txn, participant_name(i)).ok());
  f.parts[0]->stage(*txn, "k0", "v");
  f.parts[1]->stage(*txn, "k1", "v");  // kv-2 only reads
  auto outcome = f.coord->commit(*txn);
  REQUIRE(outcome.ok());
  CHECK(*outcome == Outcome::kCommitted);
  CHECK(f.parts[2]->prepares == 1);
  CHECK(f.parts[2]->commits == 0);
  CHECK(f.parts[2]->aborts == 0);
  CHECK(f.parts[0]->commits == 1);
  CHECK(f.parts[0]->get("k0") == "v");
  CHECK(f.parts[1]->get("k1") == "v");
  CHECK(f.coord->pending_count() == 0);

  // All read-only: committed with nothing logged or delivered.
  auto ro = f.coord->begin(10s);
  REQUIRE(ro.ok());
  REQUIRE(f.coord->join(*ro, participant_name(2)).ok());
  outcome = f.coord->commit(*ro);
  REQUIRE(outcome.ok());
  CHECK(*outcome == Outcome::kCommitted);
  CHECK(f.parts[2]->commits == 0);
}

TEST_CASE("a decision being written holds up none of the coordinator's calls, and decisions made meanwhile share one fsync") {
  Federation f(2);
  TxnId a = f.start("v1");
  auto b = f.coord->begin(10s);
  REQUIRE(b.ok());
  for (size_t i = 0; i < f.parts.size(); ++i) {
    REQUIRE(f.coord->join(*b, participant_name(i)).ok());
    f.parts[i]->stage(*b, "other" + std::to_string(i), "v2");
  }
  // The log's writer is held up in its next batch (a begin's) while both commits decide.
  std::atomic<bool> held{false};
  fault::arm_call("txn.coordinator.writing_log", [&] {
    held = true;
    std::this_thread::sleep_for(500ms);
  });
  fault::arm_call("txn.coordinator.writing_decisions", [] {}, 1000);  // counts the fsync'd batches
  REQUIRE(f.coord->begin(10s).ok());
  REQUIRE(test::eventually([&] { return held.load(); }));
  auto commit_a = std::async(std::launch::async, [&] { return f.coord->commit(a); });
  auto commit_b = std::async(std::launch::async, [&] { return f.coord->commit(*b); });
  std::this_thread::sleep_for(100ms);  // both prepared, their decisions queued
  // Meanwhile the coordinator answers at once.
  auto started = std::chrono::steady_clock::now();
  CHECK(f.coord->outcome(a) == Outcome::kActive);
  auto c = f.coord->begin(10s);
  REQUIRE(c.ok());
  CHECK(f.coord->join(*c, participant_name(0)).ok());
  CHECK(f.coord->renew(*c, 10s).ok());
  CHECK(std::chrono::steady_clock::now() - started < 200ms);
  REQUIRE(commit_a.get().value() == Outcome::kCommitted);
  REQUIRE(commit_b.get().value() == Outcome::kCommitted);
  CHECK(fault::hits("txn.coordinator.writing_decisions") == 1);
  fault::disarm_all();
  f.check_all("v1");
  CHECK(f.parts[0]->get("other0") == "v2");
  REQUIRE(f.coord->abort(*c).ok());
  f.reopen_coordinator();  // the writer drains its queue first; nothing is left to finish
  CHECK(f.coord->pending_count() == 0);
}

TEST_CASE("once the coordinator's log has failed, a commit aborts without asking anyone to prepare") {
  Federation f(2);
  TxnId txn = f.start("v1");
  fault::arm("txn.coordinator.writing_log", fault::Action::kThrow);
  (void)f.coord->begin(10s);  // its record's batch fails: the log is failed from then on
  REQUIRE(test::eventually([&] { return f.coord->begin(10s).status().code() != Code::kOk; }));
  fault::disarm_all();
  // Its records may never have reached the log, and no decision could: no participant prepares
  // (one prepared would wait, in doubt, for an outcome nobody will send).
  auto outcome = f.coord->commit(txn);
  REQUIRE_MESSAGE(outcome.ok(), outcome.status().to_string());
  CHECK(*outcome == Outcome::kAborted);
  f.check_all(std::nullopt);
  for (auto& p : f.parts) {
    CHECK(p->prepares == 0);
    CHECK(p->aborts == 1);
  }
}

TEST_CASE("coordinator crash after the decision: recovery commits everywhere") {
  Federation f(3);
  TxnId txn = f.start("v1");
  fault::arm("txn.coordinator.after_decision", fault::Action::kThrow);
  CHECK_THROWS_AS((void)f.coord->commit(txn), fault::CrashPointHit);
  fault::disarm_all();
  for (auto& p : f.parts) CHECK(p->in_doubt_count() == 1);  // all prepared, none told

  f.reopen_coordinator();
  CHECK(f.coord->outcome(txn) == Outcome::kCommitted);  // the log kept the decision
  CHECK(f.coord->pending_count() == 1);
  auto pending = f.coord->recover();
  REQUIRE(pending.ok());
  CHECK(*pending == 0);
  f.check_all("v1");
  CHECK(f.coord->pending_count() == 0);
  // A repeated commit from the client learns the outcome.
  auto outcome = f.coord->commit(txn);
  REQUIRE(outcome.ok());
  CHECK(*outcome == Outcome::kCommitted);
}

TEST_CASE("coordinator crash before the decision: recovery aborts everywhere") {
  Federation f(3);
  TxnId txn = f.start("v1");
  fault::arm("txn.coordinator.before_decision", fault::Action::kThrow);
  CHECK_THROWS_AS((void)f.coord->commit(txn), fault::CrashPointHit);
  fault::disarm_all();
  for (auto& p : f.parts) CHECK(p->in_doubt_count() == 1);

  f.reopen_coordinator();
  CHECK(f.coord->outcome(txn) == Outcome::kAborted);  // presumed abort
  auto pending = f.coord->recover();
  REQUIRE(pending.ok());
  CHECK(*pending == 0);
  f.check_all(std::nullopt);
  for (auto& p : f.parts) CHECK(p->aborts == 1);
}

TEST_CASE("participant crash after prepare: it asks the coordinator and applies the outcome") {
  SUBCASE("crashed before hearing the commit: commits from its log") {
    Federation f(3);
    TxnId txn = f.start("v1");
    fault::arm("txn.participant.before_commit", fault::Action::kThrow, 3);  // the third commit: kv-2
    auto outcome = f.coord->commit(txn);
    REQUIRE(outcome.ok());
    CHECK(*outcome == Outcome::kCommitted);
    fault::disarm_all();
    CHECK(f.parts[2]->crashed());
    CHECK(f.coord->pending_count() == 1);

    f.reopen_participant(2);
    CHECK(f.parts[2]->get("k2") == std::nullopt);
    CHECK(f.parts[2]->in_doubt_count() == 1);
    auto still = f.recover_participant(2);
    REQUIRE(still.ok());
    CHECK(*still == 0);
    CHECK(f.parts[2]->get("k2") == "v1");
    auto pending = f.coord->retry_pending();  // the repeated commit finds nothing left to do
    REQUIRE(pending.ok());
    CHECK(*pending == 0);
    f.check_all("v1");
  }
  SUBCASE("crashed while voting: the transaction aborts and so does it") {
    Federation f(3);
    TxnId txn = f.start("v1");
    fault::arm("txn.participant.after_prepare_logged", fault::Action::kThrow, 2);  // kv-1
    auto outcome = f.coord->commit(txn);
    REQUIRE(outcome.ok());
    CHECK(*outcome == Outcome::kAborted);
    fault::disarm_all();
    f.reopen_participant(1);
    CHECK(f.parts[1]->in_doubt_count() == 1);
    auto still = f.recover_participant(1);
    REQUIRE(still.ok());
    CHECK(*still == 0);
    auto pending = f.coord->retry_pending();
    REQUIRE(pending.ok());
    CHECK(*pending == 0);
    f.check_all(std::nullopt);
  }
}

TEST_CASE("a participant failing commit once succeeds on retry") {
  Federation f(3);
  TxnId txn = f.start("v1");
  f.parts[1]->fail_commits = 1;
  auto outcome = f.coord->commit(txn);
  REQUIRE(outcome.ok());
  CHECK(*outcome == Outcome::kCommitted);  // the decision stands
  CHECK(f.parts[0]->get("k0") == "v1");
  CHECK(f.parts[1]->get("k1") == std::nullopt);
  CHECK(f.coord->pending_count() == 1);
  CHECK(f.coord->outcome(txn) == Outcome::kCommitted);

  auto pending = f.coord->retry_pending();
  REQUIRE(pending.ok());
  CHECK(*pending == 0);
  f.check_all("v1");
  CHECK(f.parts[0]->commits == 1);  // acknowledged ones are not asked again
  CHECK(f.parts[1]->commits == 2);
}

TEST_CASE("an expired transaction is aborted") {
  Federation f(3);
  TxnId txn = f.start("v1", 100ms);
  TxnId renewed = f.start("v2", 100ms);
  f.now_ms += 60;
  REQUIRE(f.coord->renew(renewed, 1s).ok());
  f.now_ms += 60;  // past the first lease, not the renewed one
  auto expired = f.coord->expire_due();
  REQUIRE(expired.ok());
  CHECK(*expired == 1);
  CHECK(f.coord->outcome(txn) == Outcome::kAborted);
  CHECK(f.coord->outcome(renewed) == Outcome::kActive);
  for (auto& p : f.parts) CHECK(p->aborts == 1);
  auto outcome = f.coord->commit(txn);
  REQUIRE(outcome.ok());
  CHECK(*outcome == Outcome::kAborted);
  CHECK(f.coord->join(txn, "late").code() == Code::kAborted);

  // Expiry noticed lazily by commit.
  f.now_ms += 2000;
  outcome = f.coord->commit(renewed);
  REQUIRE(outcome.ok());
  CHECK(*outcome == Outcome::kAborted);
  f.check_all(std::nullopt);
  CHECK(f.coord->begin(0ms).status().code() == Code::kInvalidArgument);
}

TEST_CASE("repeated commit and abort are idempotent") {
  Federation f(3);
  TxnId txn = f.start("v1");
  for (int i = 0; i < 2; ++i) {
    auto outcome = f.coord->commit(txn);
    REQUIRE(outcome.ok());
    CHECK(*outcome == Outcome::kCommitted);
  }
  CHECK(f.coord->abort(txn).code() == Code::kFailedPrecondition);
  for (auto& p : f.parts) {
    REQUIRE(p->commit(txn).ok());  // repeated phase 2, as after a crash
    REQUIRE(p->commit(txn).ok());
  }
  f.check_all("v1");

  TxnId other = f.start("v2");
  REQUIRE(f.coord->abort(other).ok());
  REQUIRE(f.coord->abort(other).ok());
  for (auto& p : f.parts) REQUIRE(p->abort(other).ok());
  f.check_all("v1");
  CHECK(f.coord->abort(TxnId::random()).ok());  // unknown: presumed aborted
  CHECK(f.coord->commit(TxnId::random()).status().code() == Code::kNotFound);
}

TEST_CASE("concurrent transactions from several threads all finish") {
  Federation f(3);
  constexpr int kThreads = 4, kPerThread = 15;
  std::atomic<int> committed{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int n = 0; n < kPerThread; ++n) {
        auto txn = f.coord->begin(10s);
        if (!txn.ok()) {
          ++failures;
          continue;
        }
        for (size_t i = 0; i < 3; ++i) {
          if (!f.coord->join(*txn, participant_name(i)).ok()) ++failures;
          f.parts[i]->stage(*txn, "t" + std::to_string(t) + "-" + std::to_string(n), "v");
        }
        auto outcome = f.coord->commit(*txn);
        if (outcome.ok() && *outcome == Outcome::kCommitted) {
          ++committed;
        } else {
          ++failures;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(failures == 0);
  CHECK(committed == kThreads * kPerThread);
  CHECK(f.coord->pending_count() == 0);
  CHECK(f.coord->active_count() == 0);
  for (auto& p : f.parts) {
    CHECK(p->in_doubt_count() == 0);
    CHECK(p->get("t3-14") == "v");
  }
}

TEST_CASE("only one coordinator can own a log") {
  Federation f(1);
  CoordinatorOptions options;
  options.path = f.dir.file("coordinator.db");
  options.name = "intruder";
  auto second = Coordinator::open(std::move(options), f.registry);
  CHECK_FALSE(second.ok());
}

// Property: whatever crash point fires (coordinator or participant, at any of its hits), after
// restarts and recovery every participant agrees, and the outcome is commit iff the log shows the
// decision. Points and behaviours come from the seeded generator.
TEST_CASE("property: random crash point, then recovery: all agree, commit iff decision logged") {
  const std::vector<std::pair<const char*, int>> points = {
      {"", 1},
      {"txn.coordinator.after_begin", 1},
      {"txn.coordinator.after_join", 3},
      {"txn.coordinator.during_prepare", 1},
      {"txn.coordinator.after_prepare_votes", 1},
      {"txn.coordinator.before_decision", 1},
      {"txn.coordinator.after_decision", 1},
      {"txn.coordinator.after_abort_decision", 1},
      {"txn.coordinator.during_phase2", 1},
      {"txn.coordinator.after_phase2", 1},
      {"txn.participant.after_prepare_logged", 3},
      {"txn.participant.before_vote", 3},
      {"txn.participant.before_commit", 3},
      {"txn.participant.after_commit_applied", 3},
      {"txn.participant.before_resolved", 3},
      {"txn.participant.after_abort_applied", 3},
  };
  auto& rng = test::rng();
  constexpr int kRounds = 60;
  for (int round = 0; round < kRounds; ++round) {
    const auto& [point, max_hit] = points[rng() % points.size()];
    int hit = 1 + static_cast<int>(rng() % max_hit);
    bool vote_no = rng() % 4 == 0;
    bool read_only = rng() % 4 == 0;  // kv-2 stages nothing
    // Recovery itself may crash too: a second point, hit only while recovering.
    bool crash_recovery = rng() % 3 == 0;
    CAPTURE(round);
    CAPTURE(std::string(point));
    CAPTURE(hit);
    CAPTURE(vote_no);
    CAPTURE(read_only);
    CAPTURE(crash_recovery);

    Federation f(3);
    if (*point) fault::arm(point, fault::Action::kThrow, hit);
    if (crash_recovery) fault::arm("txn.coordinator.during_recovery", fault::Action::kThrow);
    std::optional<TxnId> txn;
    std::optional<Outcome> reply;
    bool coordinator_crashed = false;
    try {
      // Calls that may hit a crash point stay outside REQUIRE, which would catch the throw.
      auto begun = f.coord->begin(10s);
      REQUIRE(begun.ok());
      txn = *begun;
      for (size_t i = 0; i < 3; ++i) {
        Status joined = f.coord->join(*txn, participant_name(i));
        REQUIRE(joined.ok());
        if (!(read_only && i == 2)) f.parts[i]->stage(*txn, "k" + std::to_string(i), "v");
      }
      f.parts[1]->vote_no = vote_no;
      auto outcome = f.coord->commit(*txn);
      REQUIRE(outcome.ok());
      reply = *outcome;
    } catch (const fault::CrashPointHit&) {
      coordinator_crashed = true;
    }

    bool decision_logged;
    bool restarted = coordinator_crashed;
    // recover() runs first in any case: on a live coordinator it is the same as retry_pending().
    bool need_recover = true;
    if (coordinator_crashed) {
      f.reopen_coordinator();
      decision_logged = txn && f.coord->outcome(*txn) == Outcome::kCommitted;
    } else {
      decision_logged = reply == Outcome::kCommitted;
    }
    if (vote_no) CHECK_FALSE(decision_logged);

    // Restart whatever crashed and recover until nothing is left in doubt. A crash point left
    // armed (during_recovery, or a participant point's later hit) may fire during this too.
    bool settled = false;
    for (int attempt = 0; attempt < 10 && !settled; ++attempt) {
      for (size_t i = 0; i < 3; ++i) {
        if (f.parts[i]->crashed()) f.reopen_participant(i);
      }
      try {
        auto pending = need_recover ? f.coord->recover() : f.coord->retry_pending();
        REQUIRE(pending.ok());
        need_recover = false;
      } catch (const fault::CrashPointHit&) {
        f.reopen_coordinator();
        restarted = true;
        continue;
      }
      for (size_t i = 0; i < 3; ++i) {
        auto still = f.recover_participant(i);
        if (!f.parts[i]->crashed()) REQUIRE(still.ok());
      }
      settled = f.coord->pending_count() == 0 && f.coord->active_count() == 0;
      for (auto& p : f.parts) {
        settled = settled && !p->crashed() && p->in_doubt_count() == 0 && p->staged_count() == 0;
      }
    }
    fault::disarm_all();
    REQUIRE(settled);
    for (size_t i = 0; i < 3; ++i) {
      CAPTURE(i);
      bool wrote = !(read_only && i == 2);
      std::optional<std::string> expected;
      if (wrote && decision_logged) expected = "v";
      CHECK(f.parts[i]->get("k" + std::to_string(i)) == expected);
    }
    if (txn && !restarted) {
      // A transaction forgotten before a restart reads as aborted (presumed abort; no participant
      // is left to ask), so the coordinator's own answer is checked only when it never restarted.
      CHECK(f.coord->outcome(*txn) == (decision_logged ? Outcome::kCommitted : Outcome::kAborted));
    }
  }
}

// The child process runs the coordinator and its participants and dies by SIGKILL at the commit
// point; the parent reopens every file and recovers.
TEST_CASE("real process crash after the decision: recovery from the logs commits") {
  test::TempDir dir;
  const std::string coordinator_path = dir.file("coordinator.db");
  auto part_path = [&](size_t i) { return dir.file(participant_name(i) + ".db"); };

  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // Child: no doctest assertions here; its exit code says how far it got.
    int code = 3;  // the crash point never fired
    try {
      fault::arm("txn.coordinator.after_decision", fault::Action::kKill);
      ParticipantRegistry registry;
      std::vector<std::shared_ptr<KvParticipant>> parts;
      for (size_t i = 0; i < 3; ++i) {
        auto p = KvParticipant::open(part_path(i));
        if (!p.ok()) _exit(4);
        parts.push_back(*p);
        registry.add(participant_name(i), *p);
      }
      CoordinatorOptions options;
      options.path = coordinator_path;
      options.name = kCoordinatorName;
      auto coord = Coordinator::open(std::move(options), registry);
      if (!coord.ok()) _exit(5);
      auto txn = (*coord)->begin(10s);
      if (!txn.ok()) _exit(6);
      for (size_t i = 0; i < 3; ++i) {
        if (!(*coord)->join(*txn, participant_name(i)).ok()) _exit(7);
        parts[i]->stage(*txn, "k" + std::to_string(i), "from-child");
      }
      (void)(*coord)->commit(*txn);
    } catch (...) {
      code = 8;
    }
    _exit(code);
  }
  // Reaps the child even if an assertion below fails.
  struct Reaper {
    pid_t pid;
    int status = 0;
    bool reaped = false;
    int wait() {
      if (!reaped) {
        ::waitpid(pid, &status, 0);
        reaped = true;
      }
      return status;
    }
    ~Reaper() {
      if (!reaped) {
        ::kill(pid, SIGKILL);
        wait();
      }
    }
  } child{pid};
  int status = child.wait();
  REQUIRE_MESSAGE(WIFSIGNALED(status), "child exited with code ", WEXITSTATUS(status));
  CHECK(WTERMSIG(status) == SIGKILL);

  ParticipantRegistry registry;
  std::vector<std::shared_ptr<KvParticipant>> parts;
  for (size_t i = 0; i < 3; ++i) {
    auto p = KvParticipant::open(part_path(i));
    REQUIRE(p.ok());
    CHECK((*p)->in_doubt_count() == 1);  // prepared in the child, never told
    parts.push_back(*p);
    registry.add(participant_name(i), *p);
  }
  CoordinatorOptions options;
  options.path = coordinator_path;
  options.name = kCoordinatorName;
  auto coord = Coordinator::open(std::move(options), registry);
  REQUIRE_MESSAGE(coord.ok(), coord.status().to_string());
  CHECK((*coord)->pending_count() == 1);
  auto pending = (*coord)->recover();
  REQUIRE(pending.ok());
  CHECK(*pending == 0);
  for (size_t i = 0; i < 3; ++i) {
    CHECK(parts[i]->get("k" + std::to_string(i)) == "from-child");
    CHECK(parts[i]->in_doubt_count() == 0);
  }
}

}  // namespace
}  // namespace djinn::txn

namespace djinn::txn {

TEST_CASE("a transaction takes at most kMaxParticipants participants") {
  using namespace std::chrono_literals;
  Federation f(1);
  auto txn = f.coord->begin(10s);
  REQUIRE(txn.ok());
  for (size_t i = 0; i < kMaxParticipants; ++i) REQUIRE(f.coord->join(*txn, "p" + std::to_string(i)).ok());
  CHECK(f.coord->join(*txn, "p0").ok());  // joining again is still a no-op
  Status over = f.coord->join(*txn, "one-more");
  CHECK(over.code() == Code::kResourceExhausted);
  CHECK_MESSAGE(over.message().find("the most a transaction may have") != std::string::npos, over.message());
  CHECK(f.coord->join(*txn, "one-more").code() == Code::kResourceExhausted);  // still not a member
  REQUIRE(f.coord->abort(*txn).ok());
}
}  // namespace djinn::txn
