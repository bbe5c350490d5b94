// The SQLite wrapper: result codes to Status, connection set-up (WAL, synchronous, busy timeout,
// exclusive locking), statements and transactions.
#include "djinn/core/sqlite.h"

#include <sqlite3.h>

#include <string>

namespace djinn::sqlite {
namespace {

Code code_for(int rc) {
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_IOERR:
    case SQLITE_CANTOPEN:
    case SQLITE_PROTOCOL:
      return Code::kUnavailable;
    case SQLITE_CONSTRAINT:
      return rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY
                 ? Code::kAlreadyExists
                 : Code::kFailedPrecondition;
    case SQLITE_FULL:
    case SQLITE_NOMEM:
    case SQLITE_TOOBIG:
      return Code::kResourceExhausted;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return Code::kDataLoss;
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_AUTH:
      return Code::kPermissionDenied;
    case SQLITE_INTERRUPT:
    case SQLITE_ABORT:
      return Code::kAborted;
    case SQLITE_NOTFOUND:
      return Code::kNotFound;
    default:
      return Code::kInternal;
  }
}

const char* sync_pragma(Sync sync) {
  switch (sync) {
    case Sync::kOff: return "PRAGMA synchronous=OFF";
    case Sync::kNormal: return "PRAGMA synchronous=NORMAL";
    case Sync::kFull: return "PRAGMA synchronous=FULL";
  }
  return "PRAGMA synchronous=FULL";
}

}  // namespace

Status error_status(int rc, sqlite3* db, std::string_view what) {
  std::string message(what);
  message += ": ";
  // errmsg describes the connection's last failure; without a connection only the code is known.
  message += db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  message += " [SQLITE " + std::to_string(rc) + "]";
  return Status(code_for(rc), std::move(message));
}

// ---- Statement ----

void Statement::Finalizer::operator()(sqlite3_stmt* stmt) const { sqlite3_finalize(stmt); }

Status Statement::bind_int64(int index, int64_t value) {
  int rc = sqlite3_bind_int64(stmt_.get(), index, value);
  return rc == SQLITE_OK ? Status() : error_status(rc, db_, "bind " + sql());
}

Status Statement::bind_double(int index, double value) {
  int rc = sqlite3_bind_double(stmt_.get(), index, value);
  return rc == SQLITE_OK ? Status() : error_status(rc, db_, "bind " + sql());
}

Status Statement::bind_text(int index, std::string_view text) {
  int rc = sqlite3_bind_text64(stmt_.get(), index, text.data(), text.size(), SQLITE_TRANSIENT,
                               SQLITE_UTF8);
  return rc == SQLITE_OK ? Status() : error_status(rc, db_, "bind " + sql());
}

Status Statement::bind_blob(int index, std::span<const uint8_t> bytes) {
  // sqlite3_bind_blob with a null pointer would bind NULL; an empty blob is a value.
  int rc = bytes.empty() ? sqlite3_bind_zeroblob(stmt_.get(), index, 0)
                         : sqlite3_bind_blob64(stmt_.get(), index, bytes.data(), bytes.size(),
                                               SQLITE_TRANSIENT);
  return rc == SQLITE_OK ? Status() : error_status(rc, db_, "bind " + sql());
}

Status Statement::bind_null(int index) {
  int rc = sqlite3_bind_null(stmt_.get(), index);
  return rc == SQLITE_OK ? Status() : error_status(rc, db_, "bind " + sql());
}

Result<bool> Statement::step() {
  int rc = sqlite3_step(stmt_.get());
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) {
    sqlite3_reset(stmt_.get());
    return false;
  }
  Status status = error_status(rc, db_, sql());
  sqlite3_reset(stmt_.get());
  return status;
}

Status Statement::run() {
  for (;;) {
    Result<bool> row = step();
    if (!row.ok()) return row.status();
    if (!*row) return Status();
  }
}

void Statement::reset() {
  sqlite3_reset(stmt_.get());
  sqlite3_clear_bindings(stmt_.get());
}

int Statement::column_count() const { return sqlite3_column_count(stmt_.get()); }

bool Statement::column_is_null(int column) const {
  return sqlite3_column_type(stmt_.get(), column) == SQLITE_NULL;
}

int64_t Statement::column_int64(int column) const {
  return sqlite3_column_int64(stmt_.get(), column);
}

double Statement::column_double(int column) const {
  return sqlite3_column_double(stmt_.get(), column);
}

std::string Statement::column_text(int column) const {
  const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt_.get(), column));
  int size = sqlite3_column_bytes(stmt_.get(), column);  // after _text, as SQLite requires
  return text ? std::string(text, static_cast<size_t>(size)) : std::string();
}

std::vector<uint8_t> Statement::column_blob(int column) const {
  const auto* data = static_cast<const uint8_t*>(sqlite3_column_blob(stmt_.get(), column));
  int size = sqlite3_column_bytes(stmt_.get(), column);
  return data ? std::vector<uint8_t>(data, data + size) : std::vector<uint8_t>();
}

std::string Statement::sql() const {
  const char* text = stmt_ ? sqlite3_sql(stmt_.get()) : nullptr;
  return text ? text : "(no statement)";
}

// ---- Database ----

void Database::Closer::operator()(sqlite3* db) const {
  // close_v2 defers the close until every statement is finalized, whatever the order of
  // destruction.
  sqlite3_close_v2(db);
}

Result<Database> Database::open(const std::string& path, const OpenOptions& options) {
  int flags = options.read_only ? SQLITE_OPEN_READONLY
                                : SQLITE_OPEN_READWRITE | (options.create ? SQLITE_OPEN_CREATE : 0);
  flags |= SQLITE_OPEN_NOMUTEX;  // the owner's mutex serializes use of a connection
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
  Database db(raw, path);  // owns the handle even when the open failed
  if (rc != SQLITE_OK) return error_status(rc, raw, "open " + path);
  sqlite3_extended_result_codes(raw, 1);
  sqlite3_busy_timeout(raw, static_cast<int>(options.busy_timeout.count()));

  // Only takes effect on a file not yet written, so before WAL mode writes the header.
  if (options.page_size > 0 && !options.read_only) {
    DJINN_RETURN_IF_ERROR(db.exec("PRAGMA page_size=" + std::to_string(options.page_size)));
  }
  // Exclusive locking is set before WAL so the WAL index lives in heap memory, not a shared file.
  if (options.exclusive) DJINN_RETURN_IF_ERROR(db.exec("PRAGMA locking_mode=EXCLUSIVE"));
  if (options.wal && !options.read_only) {
    Result<Statement> mode = db.prepare("PRAGMA journal_mode=WAL");
    if (!mode.ok()) return mode.status();
    Result<bool> row = mode->step();
    if (!row.ok()) return row.status();
    std::string got = *row ? mode->column_text(0) : "";
    mode->reset();
    if (got != "wal" && got != "memory") {
      return failed_precondition("open " + path + ": journal_mode is '" + got +
                                 "', expected 'wal'");
    }
  }
  if (options.cache_kib > 0) DJINN_RETURN_IF_ERROR(db.exec("PRAGMA cache_size=-" + std::to_string(options.cache_kib)));
  if (options.wal_autocheckpoint > 0 && !options.read_only) {
    DJINN_RETURN_IF_ERROR(db.exec("PRAGMA wal_autocheckpoint=" + std::to_string(options.wal_autocheckpoint)));
  }
  if (!options.read_only) DJINN_RETURN_IF_ERROR(db.set_sync(options.sync));
  if (options.exclusive && !options.read_only) {
    // Takes the lock now rather than at the first write, so a second owner fails at open.
    auto tx = Transaction::begin(db, Transaction::Mode::kExclusive);
    if (!tx.ok()) {
      return Status(tx.status().code(),
                    "open " + path + ": the file is in use by another owner (" +
                        tx.status().message() + ")");
    }
    DJINN_RETURN_IF_ERROR(tx->commit());
  }
  return db;
}

Status Database::exec(std::string_view sql) {
  std::string text(sql);
  char* error = nullptr;
  int rc = sqlite3_exec(db_.get(), text.c_str(), nullptr, nullptr, &error);
  if (rc == SQLITE_OK) return Status();
  std::string message = error ? error : sqlite3_errstr(rc);
  sqlite3_free(error);
  return Status(code_for(rc), text + ": " + message + " [SQLITE " + std::to_string(rc) + "]");
}

Result<Statement> Database::prepare(std::string_view sql) {
  sqlite3_stmt* raw = nullptr;
  int rc = sqlite3_prepare_v3(db_.get(), sql.data(), static_cast<int>(sql.size()),
                              SQLITE_PREPARE_PERSISTENT, &raw, nullptr);
  Statement statement(db_.get(), raw);
  if (rc != SQLITE_OK) return error_status(rc, db_.get(), "prepare " + std::string(sql));
  if (!raw) return invalid_argument("prepare: no statement in '" + std::string(sql) + "'");
  return statement;
}

Result<Statement*> Database::cached(std::string_view sql) {
  auto it = cache_.find(sql);
  if (it == cache_.end()) {
    Result<Statement> statement = prepare(sql);
    if (!statement.ok()) return statement.status();
    it = cache_.emplace(std::string(sql), std::make_unique<Statement>(std::move(*statement))).first;
  } else {
    it->second->reset();
  }
  return it->second.get();
}

Status Database::set_sync(Sync sync) { return exec(sync_pragma(sync)); }

int64_t Database::last_insert_rowid() const { return sqlite3_last_insert_rowid(db_.get()); }

int64_t Database::changes() const { return sqlite3_changes64(db_.get()); }

bool Database::in_transaction() const { return sqlite3_get_autocommit(db_.get()) == 0; }

Result<int64_t> Database::user_version() {
  Result<Statement> statement = prepare("PRAGMA user_version");
  if (!statement.ok()) return statement.status();
  Result<bool> row = statement->step();
  if (!row.ok()) return row.status();
  int64_t version = *row ? statement->column_int64(0) : 0;
  statement->reset();
  return version;
}

Status Database::set_user_version(int64_t version) {
  return exec("PRAGMA user_version=" + std::to_string(version));
}

Status Database::ensure_schema(int64_t version, std::string_view create_sql, std::string_view what) {
  Result<int64_t> current = user_version();
  if (!current.ok()) return current.status();
  if (*current > version) {
    return failed_precondition(std::string(what) + " has schema version " + std::to_string(*current) +
                               ", newer than this build's " + std::to_string(version) + " (use a newer djinn)");
  }
  if (*current == version) return Status::Ok();
  Result<Transaction> tx = Transaction::begin(*this);
  if (!tx.ok()) return tx.status();
  DJINN_RETURN_IF_ERROR(exec(create_sql));
  DJINN_RETURN_IF_ERROR(set_user_version(version));
  return tx->commit();
}

// ---- Transaction ----

Result<Transaction> Transaction::begin(Database& db, Mode mode) {
  const char* sql = mode == Mode::kImmediate   ? "BEGIN IMMEDIATE"
                    : mode == Mode::kExclusive ? "BEGIN EXCLUSIVE"
                                               : "BEGIN";
  DJINN_RETURN_IF_ERROR(db.exec(sql));
  return Transaction(&db);
}

Transaction& Transaction::operator=(Transaction&& other) noexcept {
  if (this != &other) {
    if (db_) (void)rollback();
    db_ = std::exchange(other.db_, nullptr);
  }
  return *this;
}

Transaction::~Transaction() {
  if (db_) (void)rollback();
}

Status Transaction::commit() {
  if (!db_) return failed_precondition("commit: the transaction is already over");
  Status status = db_->exec("COMMIT");
  if (!status.ok() && db_->in_transaction()) (void)db_->exec("ROLLBACK");
  db_ = nullptr;
  return status;
}

Status Transaction::rollback() {
  if (!db_) return failed_precondition("rollback: the transaction is already over");
  Database* db = std::exchange(db_, nullptr);
  // SQLite may already have rolled back by itself (after some I/O errors); nothing left to undo.
  if (!db->in_transaction()) return Status();
  return db->exec("ROLLBACK");
}

}  // namespace djinn::sqlite
