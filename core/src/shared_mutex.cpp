#include "djinn/core/shared_mutex.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <system_error>

namespace djinn {

namespace {

void check(int rc, const char* what) {
  if (rc != 0) throw std::system_error(rc, std::generic_category(), what);
}

#ifndef NDEBUG
// The locks this thread holds, shared or not: enough for the few a thread nests.
struct Held {
  static constexpr int kMax = 32;
  const SharedMutex* locks[kMax];
  int n = 0;
};
thread_local Held held;
#endif

}  // namespace

SharedMutex::SharedMutex() {
  pthread_rwlockattr_t attr;
  check(pthread_rwlockattr_init(&attr), "pthread_rwlockattr_init");
  check(pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP), "pthread_rwlockattr_setkind_np");
  int rc = pthread_rwlock_init(&lock_, &attr);
  pthread_rwlockattr_destroy(&attr);
  check(rc, "pthread_rwlock_init");
}

SharedMutex::~SharedMutex() { pthread_rwlock_destroy(&lock_); }

void SharedMutex::lock() {
  note_acquired();
  check(pthread_rwlock_wrlock(&lock_), "SharedMutex::lock");
}

bool SharedMutex::try_lock() {
  int rc = pthread_rwlock_trywrlock(&lock_);
  if (rc == EBUSY || rc == EDEADLK) return false;
  check(rc, "SharedMutex::try_lock");
  note_acquired(/*blocking=*/false);
  return true;
}

void SharedMutex::unlock() {
  note_released();
  pthread_rwlock_unlock(&lock_);
}

void SharedMutex::lock_shared() {
  note_acquired();
  for (;;) {
    int rc = pthread_rwlock_rdlock(&lock_);
    if (rc != EAGAIN) {  // EAGAIN: the reader count is at its maximum for a moment
      check(rc, "SharedMutex::lock_shared");
      return;
    }
  }
}

bool SharedMutex::try_lock_shared() {
  int rc = pthread_rwlock_tryrdlock(&lock_);
  if (rc == EBUSY || rc == EAGAIN || rc == EDEADLK) return false;
  check(rc, "SharedMutex::try_lock_shared");
  note_acquired(/*blocking=*/false);
  return true;
}

void SharedMutex::unlock_shared() {
  note_released();
  pthread_rwlock_unlock(&lock_);
}

#ifndef NDEBUG
void SharedMutex::note_acquired(bool blocking) {
  for (int i = 0; blocking && i < held.n; ++i) {
    if (held.locks[i] == this) {
      // Taken again by a thread that holds it: with a writer waiting in between, never granted.
      std::fprintf(stderr, "djinn::SharedMutex %p taken again by a thread that holds it (deadlock)\n",
                   static_cast<const void*>(this));
      std::abort();
    }
  }
  if (held.n < Held::kMax) held.locks[held.n++] = this;
}

void SharedMutex::note_released() {
  for (int i = held.n - 1; i >= 0; --i) {
    if (held.locks[i] == this) {
      held.locks[i] = held.locks[--held.n];
      return;
    }
  }
}
#else
void SharedMutex::note_acquired(bool) {}
void SharedMutex::note_released() {}
#endif

}  // namespace djinn
