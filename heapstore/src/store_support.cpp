// DirLock, WorkerPool and Checkpointer (see store_support.h).
#include "store_support.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <pthread.h>
#include <sys/file.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <set>

namespace djinn::heapstore::internal {
namespace {

std::mutex g_open_mu;  // guards open_dirs()
std::set<std::string>& open_dirs() {
  static std::set<std::string> dirs;
  return dirs;
}

}  // namespace

// ---- DirLock ----

Result<DirLock> DirLock::acquire(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::path canonical = std::filesystem::canonical(dir, ec);
  if (ec) return unavailable("page store " + dir.string() + ": " + ec.message());
  std::string key = canonical.string();
  {
    std::lock_guard lock(g_open_mu);
    if (!open_dirs().insert(key).second) {
      return failed_precondition("page store " + key + " is already open in this process");
    }
  }
  auto release = [&] {
    std::lock_guard lock(g_open_mu);
    open_dirs().erase(key);
  };
  std::filesystem::path lock_path = canonical / "LOCK";
  int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    int err = errno;
    release();
    return unavailable("open " + lock_path.string() + ": " + std::strerror(err));
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    ::close(fd);
    release();
    if (err == EWOULDBLOCK) {
      return failed_precondition("page store " + key + " is already open in another process (" +
                                 lock_path.string() + " is locked)");
    }
    return unavailable("lock " + lock_path.string() + ": " + std::strerror(err));
  }
  return DirLock(std::move(key), fd);
}

DirLock::DirLock(DirLock&& other) noexcept : key_(std::move(other.key_)), fd_(std::exchange(other.fd_, -1)) {}

DirLock::~DirLock() {
  if (fd_ < 0) return;
  ::close(fd_);  // releases the flock
  std::lock_guard lock(g_open_mu);
  open_dirs().erase(key_);
}

// ---- WorkerPool ----

WorkerPool::WorkerPool(unsigned threads, const char* name) {
  for (unsigned i = 0; i < threads; ++i) {
    threads_.emplace_back([this] { run(); });
    pthread_setname_np(threads_.back().native_handle(), name);
  }
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void WorkerPool::submit(std::function<void()> job) {
  {
    std::lock_guard lock(mu_);
    jobs_.push_back(std::move(job));
  }
  cv_.notify_one();
}

void WorkerPool::run() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
      if (jobs_.empty()) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

// ---- Checkpointer ----

namespace {
// WAL pages (of 4 KiB) after which the thread checkpoints: SQLite's own default threshold.
constexpr int kCheckpointPages = 1000;
}  // namespace

Result<std::unique_ptr<Checkpointer>> Checkpointer::start(sqlite::Database& writer, const std::string& path,
                                                          sqlite::Sync sync) {
  sqlite::OpenOptions options;
  options.create = false;
  options.sync = sync;
  Result<sqlite::Database> db = sqlite::Database::open(path, options);
  if (!db.ok()) return db.status();
  std::unique_ptr<Checkpointer> c(new Checkpointer(std::move(*db)));
  c->thread_ = std::thread([p = c.get()] { p->run(); });
  pthread_setname_np(c->thread_.native_handle(), "index-checkpoint");
  // Replaces the automatic checkpoint, which is itself a WAL hook.
  sqlite3_wal_hook(writer.handle(), &Checkpointer::on_commit, c.get());
  return c;
}

void Checkpointer::detach(sqlite::Database& writer) {
  sqlite3_wal_autocheckpoint(writer.handle(), kCheckpointPages);
}

Checkpointer::~Checkpointer() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

int Checkpointer::on_commit(void* self, sqlite3*, const char*, int wal_pages) {
  auto* c = static_cast<Checkpointer*>(self);
  if (wal_pages >= kCheckpointPages) {
    {
      std::lock_guard lock(c->mu_);
      c->wanted_ = true;
    }
    c->cv_.notify_one();
  }
  return SQLITE_OK;
}

void Checkpointer::run() {
  for (;;) {
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return wanted_ || stopping_; });
      if (stopping_) return;
      wanted_ = false;
    }
    // Best effort: what a checkpoint cannot copy now stays in the WAL, as valid as in the file.
    (void)db_.exec("PRAGMA wal_checkpoint(PASSIVE)");
  }
}

}  // namespace djinn::heapstore::internal
