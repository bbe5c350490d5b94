// A thin RAII wrapper over SQLite shared by every part that keeps state in a file (txn, lease,
// lookup, space): a Database per file, prepared Statements, and Transactions that roll back unless
// committed. Every failure comes back as a djinn::Status naming what was being done.
//
//   auto db = sqlite::Database::open(path);                       // WAL, synchronous=FULL
//   auto tx = sqlite::Transaction::begin(*db);                     // BEGIN IMMEDIATE
//   auto st = db->prepare("INSERT INTO kv(key, value) VALUES (?, ?)");
//   DJINN_RETURN_IF_ERROR(st->bind_all(key, value));
//   DJINN_RETURN_IF_ERROR(st->run());
//   DJINN_RETURN_IF_ERROR(tx->commit());
//
// A Database and its Statements are used by one thread at a time: the owner guards them with the
// mutex that guards the rest of its state (connections are opened in SQLite's multi-thread mode).
#pragma once

#include <chrono>
#include <concepts>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "djinn/core/status.h"

struct sqlite3;
struct sqlite3_stmt;

namespace djinn::sqlite {

// PRAGMA synchronous. In WAL mode kNormal survives a process crash but may lose the last
// transactions on power loss; kFull fsyncs the WAL at every commit.
enum class Sync { kOff, kNormal, kFull };

struct OpenOptions {
  bool create = true;      // create the file when missing
  bool read_only = false;
  bool wal = true;         // journal_mode=WAL: readers never block the writer
  Sync sync = Sync::kFull;
  // Holds the file's lock for the connection's life, so a second process (or connection) cannot
  // open the same file: for logs that must have exactly one owner, like a 2PC coordinator's.
  bool exclusive = false;
  std::chrono::milliseconds busy_timeout{5000};
  // Page size of a file created here (0: SQLite's default, 4096). Small pages suit stores whose
  // transactions touch many scattered small rows: each dirty page is written whole to the WAL.
  int page_size = 0;
  // Page cache of the connection, in KiB (0: SQLite's default, about 2 MiB). A store whose writes
  // land anywhere in a large table reads its pages back from the OS otherwise.
  int cache_kib = 0;
  // WAL pages after which a commit copies the WAL back into the database (0: SQLite's 1000). Each
  // checkpoint writes every page again and syncs the file: fewer, larger ones cost less per write.
  int wal_autocheckpoint = 0;
};

// The Status for SQLite result code `rc` (extended codes understood), with `what` and SQLite's own
// message: "insert lease: UNIQUE constraint failed: lease.id [SQLITE 1555]".
Status error_status(int rc, sqlite3* db, std::string_view what);

class Statement {
 public:
  Statement() = default;
  Statement(Statement&&) noexcept = default;
  Statement& operator=(Statement&&) noexcept = default;

  // Parameters are numbered from 1, as in SQLite. Text and blobs are copied.
  Status bind_int64(int index, int64_t value);
  Status bind_double(int index, double value);
  Status bind_text(int index, std::string_view text);
  Status bind_blob(int index, std::span<const uint8_t> bytes);  // empty binds an empty blob, not NULL
  Status bind_null(int index);

  // Integers (bool and uint64_t too, the latter as the same 64 bits), floating point, text,
  // blobs, nullptr, and optionals of those (nullopt binds NULL).
  template <std::integral T>
  Status bind(int index, T value) { return bind_int64(index, static_cast<int64_t>(value)); }
  template <std::floating_point T>
  Status bind(int index, T value) { return bind_double(index, static_cast<double>(value)); }
  Status bind(int index, std::string_view text) { return bind_text(index, text); }
  Status bind(int index, const char* text) { return bind_text(index, text); }
  Status bind(int index, const std::string& text) { return bind_text(index, text); }
  Status bind(int index, std::span<const uint8_t> bytes) { return bind_blob(index, bytes); }
  Status bind(int index, const std::vector<uint8_t>& bytes) { return bind_blob(index, bytes); }
  Status bind(int index, std::nullptr_t) { return bind_null(index); }
  template <class T>
  Status bind(int index, const std::optional<T>& value) {
    return value ? bind(index, *value) : bind_null(index);
  }
  // Binds the arguments to parameters 1..N.
  template <class... Args>
  Status bind_all(const Args&... args) {
    Status status;
    int index = 0;
    ((status.ok() ? (status = bind(++index, args), 0) : 0), ...);
    return status;
  }

  // One step: true when a row is ready to be read with column_*, false when the statement is
  // done. A done or failed statement is reset at once, so it holds no lock afterwards.
  Result<bool> step();
  // Steps to the end, for statements that return no rows.
  Status run();
  // Resets and clears the bindings, releasing any read lock of an unfinished query.
  void reset();

  int column_count() const;
  bool column_is_null(int column) const;
  int64_t column_int64(int column) const;
  double column_double(int column) const;
  std::string column_text(int column) const;
  std::vector<uint8_t> column_blob(int column) const;

  // The SQL text, for messages.
  std::string sql() const;

 private:
  friend class Database;
  struct Finalizer {
    void operator()(sqlite3_stmt* stmt) const;
  };
  Statement(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}

  sqlite3* db_ = nullptr;
  std::unique_ptr<sqlite3_stmt, Finalizer> stmt_;
};

class Database {
 public:
  // Opens (by default creates) the file and applies the options; ":memory:" is a private
  // in-memory database.
  static Result<Database> open(const std::string& path, const OpenOptions& options = {});

  Database(Database&&) noexcept = default;
  Database& operator=(Database&&) noexcept = default;

  // Runs one or more statements that return no rows (schemas, pragmas).
  Status exec(std::string_view sql);
  Result<Statement> prepare(std::string_view sql);
  // A statement prepared once per Database and kept: returned reset with no bindings. The
  // pointer stays valid as long as the Database; do not hold it across another cached() of
  // the same text.
  Result<Statement*> cached(std::string_view sql);

  Status set_sync(Sync sync);
  int64_t last_insert_rowid() const;
  // Rows changed by the most recent INSERT, UPDATE or DELETE.
  int64_t changes() const;
  bool in_transaction() const;
  // PRAGMA user_version: the schema version a part keeps in its file.
  Result<int64_t> user_version();
  Status set_user_version(int64_t version);
  // Brings a store to schema `version` (kept in user_version): a newer one is refused
  // (FAILED_PRECONDITION naming `what`), an older one (0: a new file) gets `create_sql` (written
  // with CREATE ... IF NOT EXISTS, so it also adds what a later version added) in one transaction.
  Status ensure_schema(int64_t version, std::string_view create_sql, std::string_view what);

  const std::string& path() const { return path_; }
  sqlite3* handle() const { return db_.get(); }

 private:
  struct Closer {
    void operator()(sqlite3* db) const;
  };
  Database(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}

  // Declared first so it is destroyed last, after the cached statements.
  std::unique_ptr<sqlite3, Closer> db_;
  std::string path_;
  std::map<std::string, std::unique_ptr<Statement>, std::less<>> cache_;
};

// A write (by default) transaction: BEGIN IMMEDIATE takes the write lock at once, so a
// transaction never fails half-way with SQLITE_BUSY on its first write. Rolls back when destroyed
// uncommitted; a failed commit rolls back too.
class Transaction {
 public:
  enum class Mode { kDeferred, kImmediate, kExclusive };

  static Result<Transaction> begin(Database& db, Mode mode = Mode::kImmediate);

  Transaction(Transaction&& other) noexcept : db_(std::exchange(other.db_, nullptr)) {}
  Transaction& operator=(Transaction&& other) noexcept;
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  ~Transaction();

  Status commit();
  Status rollback();
  bool active() const { return db_ != nullptr; }

 private:
  explicit Transaction(Database* db) : db_(db) {}
  Database* db_ = nullptr;  // null once committed or rolled back
};

}  // namespace djinn::sqlite
