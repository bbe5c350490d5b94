// A reader-writer lock that lets a waiting writer in before readers that come after it.
//
// std::shared_mutex (glibc's default rwlock) admits a new reader while a writer waits, so readers
// whose holds overlap (queries on several threads) can keep a writer out for as long as they keep
// coming: a registrar answering a stream of long lookups would never take a registration. This one
// queues new readers behind a waiting writer. The price: a thread must not take it shared again
// while it holds it shared (a writer waiting in between would deadlock both). Debug builds check
// that and abort with a message; release builds do not pay for the check.
//
// Meets the SharedMutex requirements, so std::shared_lock, std::unique_lock and std::lock_guard
// work on it.
#pragma once

#include <pthread.h>

namespace djinn {

class SharedMutex {
 public:
  SharedMutex();
  ~SharedMutex();
  SharedMutex(const SharedMutex&) = delete;
  SharedMutex& operator=(const SharedMutex&) = delete;

  void lock();
  bool try_lock();
  void unlock();

  void lock_shared();
  bool try_lock_shared();
  void unlock_shared();

 private:
  // Debug builds: what this thread holds, to catch a blocking take of a lock it holds already.
  void note_acquired(bool blocking = true);
  void note_released();

  pthread_rwlock_t lock_;
};

}  // namespace djinn
