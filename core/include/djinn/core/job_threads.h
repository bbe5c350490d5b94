// A few threads of a service's own for the deferred calls it must not carry out on the RPC
// server's I/O thread (a grant's fsync, a lookup that walks a long list): the server's worker
// pool runs only methods registered as blocking, and a deferred call holds only its Responder.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "djinn/core/thread_name.h"

namespace djinn {

class JobThreads {
 public:
  // `max_queued` jobs may wait (0: no bound); `name` names the threads.
  JobThreads(int count, std::string name, size_t max_queued = 0) : max_queued_(max_queued) {
    for (int i = 0; i < std::max(count, 1); ++i) {
      threads_.emplace_back([this, name] {
        name_this_thread(name);
        run();
      });
    }
  }
  ~JobThreads() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
    // Jobs never run are destroyed with what they hold (a Responder answers CANCELLED).
  }
  JobThreads(const JobThreads&) = delete;
  JobThreads& operator=(const JobThreads&) = delete;

  // False, and `job` dropped unrun, when max_queued jobs wait already.
  bool post(std::function<void()> job) {
    {
      std::lock_guard lock(mu_);
      if (max_queued_ && jobs_.size() >= max_queued_) return false;
      jobs_.push_back(std::move(job));
    }
    cv_.notify_one();
    return true;
  }
  size_t queued() const {
    std::lock_guard lock(mu_);
    return jobs_.size();
  }

 private:
  void run() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
      if (stop_) return;
      auto job = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      job();
      lock.lock();
    }
  }

  const size_t max_queued_;
  mutable std::mutex mu_;  // guards jobs_, stop_
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace djinn
