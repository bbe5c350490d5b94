// Small pieces of the page store: the lock that keeps a directory to one open store, the threads
// that hash and write a version's pages, and the filter that answers "is this page new?" without
// asking SQLite.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "djinn/core/sqlite.h"
#include "djinn/core/status.h"
#include "djinn/heapstore/page_store.h"

namespace djinn::heapstore::internal {

// Holds a directory for one PageStore: an flock on its LOCK file (other processes) and an entry in
// a registry of this process's open directories (flock would also refuse a second open in the
// same process, but the registry says so plainly and survives a forked child's inherited lock).
class DirLock {
 public:
  static Result<DirLock> acquire(const std::filesystem::path& dir);
  DirLock(DirLock&& other) noexcept;
  DirLock& operator=(DirLock&&) = delete;
  DirLock(const DirLock&) = delete;
  ~DirLock();

 private:
  DirLock(std::string key, int fd) : key_(std::move(key)), fd_(fd) {}
  std::string key_;
  int fd_ = -1;
};

// A fixed set of threads running queued jobs in order of submission.
class WorkerPool {
 public:
  WorkerPool(unsigned threads, const char* name);
  ~WorkerPool();  // runs what is queued, then joins
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  void submit(std::function<void()> job);
  unsigned size() const { return static_cast<unsigned>(threads_.size()); }

 private:
  void run();

  std::mutex mu_;  // guards jobs_, stopping_
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

// Copies the index's WAL back into the database on a thread of its own, with a connection of its
// own (a PASSIVE checkpoint never blocks the writer), so no commit waits for a checkpoint: with
// SQLite's automatic checkpoint, the commit that crosses the threshold does it, fsync included.
class Checkpointer {
 public:
  // Takes over checkpointing from `writer`'s automatic checkpoint.
  static Result<std::unique_ptr<Checkpointer>> start(sqlite::Database& writer, const std::string& path,
                                                     sqlite::Sync sync);
  ~Checkpointer();  // stops the thread; call detach() on the writer's connection first
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  // Gives `writer` back its own checkpoints.
  void detach(sqlite::Database& writer);

 private:
  explicit Checkpointer(sqlite::Database db) : db_(std::move(db)) {}
  static int on_commit(void* self, struct sqlite3*, const char*, int wal_pages);
  void run();

  sqlite::Database db_;  // the checkpointing thread's
  std::mutex mu_;        // guards wanted_, stopping_
  std::condition_variable cv_;
  bool wanted_ = false;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace djinn::heapstore::internal
