// SharedMutex: readers share it, a writer excludes them, and a reader that comes while a writer
// waits queues behind the writer (so overlapping readers cannot keep a writer out).
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <mutex>
#include <shared_mutex>
#include <thread>

#include "djinn/core/shared_mutex.h"
#include "support/test_support.h"

using namespace djinn;
using namespace std::chrono_literals;

TEST_CASE("readers share the lock; a writer excludes readers and writers") {
  SharedMutex mu;
  {
    std::shared_lock a(mu);
    std::shared_lock b(mu, std::try_to_lock);
    CHECK(b.owns_lock());
    CHECK_FALSE(mu.try_lock());
  }
  {
    std::unique_lock w(mu);
    std::thread other([&] {
      CHECK_FALSE(mu.try_lock_shared());
      CHECK_FALSE(mu.try_lock());
    });
    other.join();
  }
  CHECK(mu.try_lock());
  mu.unlock();
}

TEST_CASE("a reader that comes while a writer waits goes after the writer") {
  SharedMutex mu;
  std::shared_lock first(mu);
  std::atomic<bool> writing{false}, wrote{false};
  std::thread writer([&] {
    std::unique_lock w(mu);
    writing = true;
    std::this_thread::sleep_for(50ms);
    writing = false;
    wrote = true;
  });
  // The writer is queued once a new reader can no longer get in; until the first reader lets go
  // it cannot write.
  REQUIRE(test::eventually([&] {
    if (!mu.try_lock_shared()) return true;
    mu.unlock_shared();
    return false;
  }, 5000));
  CHECK_FALSE(writing);
  std::atomic<bool> read_during_write{false};
  std::thread reader([&] {
    std::shared_lock r(mu);
    if (writing) read_during_write = true;
    CHECK(wrote);
  });
  std::this_thread::sleep_for(20ms);
  first.unlock();
  writer.join();
  reader.join();
  CHECK_FALSE(read_during_write);
}

TEST_CASE("a writer gets in while readers' holds overlap without a break") {
  SharedMutex mu;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> reads{0};
  std::vector<std::thread> readers;
  for (int i = 0; i < 4; ++i) {
    readers.emplace_back([&] {
      while (!stop) {
        std::shared_lock r(mu);
        std::this_thread::sleep_for(2ms);
        reads++;
      }
    });
  }
  REQUIRE(test::eventually([&] { return reads.load() >= 8; }, 5000));
  auto t0 = std::chrono::steady_clock::now();
  std::atomic<bool> wrote{false};
  std::thread writer([&] {
    std::unique_lock w(mu);
    wrote = true;
  });
  bool in_time = test::eventually([&] { return wrote.load(); }, 3000);
  stop = true;
  writer.join();
  for (auto& t : readers) t.join();
  CHECK(in_time);
  CHECK(std::chrono::steady_clock::now() - t0 < 3s);
}

#ifndef NDEBUG
TEST_CASE("debug builds: a thread that takes the lock again while holding it aborts instead of hanging") {
  for (bool second_shared : {true, false}) {
    CAPTURE(second_shared);
    pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      SharedMutex mu;
      mu.lock_shared();
      if (second_shared) {
        mu.lock_shared();
      } else {
        mu.lock();
      }
      _exit(0);
    }
    int status = 0;
    REQUIRE(waitpid(child, &status, 0) == child);
    CHECK(WIFSIGNALED(status));
    if (WIFSIGNALED(status)) CHECK(WTERMSIG(status) == SIGABRT);
  }
}
#endif
