// Group commit: requests that arrive while a batch is being written wait and go together in the
// next one, so N clients writing at once cost one durable transaction (one fsync) and one turn of
// a store's lock, not N. Every landlord's renewals and cancels, lookup's registrations and the
// space's writes go through one.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <iterator>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <vector>

#include "djinn/core/fault.h"
#include "djinn/core/reply_batch.h"
#include "djinn/core/status.h"
#include "djinn/core/thread_name.h"

namespace djinn {

// One thread drains the queue and hands up to `max_batch` requests at a time to the batch
// function, which returns one outcome per request in order and may move from the requests (they
// are the batch's own). A posted group (one call's requests) is never split, so a group larger
// than max_batch goes alone. Groups are written in the order posted. Completions run on that
// thread. The queue is bounded (GroupCommitLimits): past either bound a post is refused at once with
// UNAVAILABLE outcomes ("busy", retry), so callers faster than the disk get back-pressure rather
// than the process's memory.
//
// Crash points (fault.h): group_commit.stopping  stop() was called; the batch being written (if
// any) is not done yet.
struct GroupCommitLimits {
  size_t max_queued_requests = 100'000;
  size_t max_queued_bytes = 256u << 20;  // as the posters count them (post's `bytes`)
};

template <class Request, class Outcome>
class GroupCommit {
 public:
  using Batch = std::function<std::vector<Outcome>(std::span<Request>)>;
  using Done = std::function<void(std::vector<Outcome>)>;

  // `thread_name` names the committing thread (15 bytes are kept).
  GroupCommit(size_t max_batch, Batch batch, std::string_view thread_name = "group-commit", GroupCommitLimits limits = {})
      : max_batch_(max_batch), limits_(limits), batch_(std::move(batch)), thread_([this, name = std::string(thread_name)] {
          name_this_thread(name);
          run();
        }) {}
  ~GroupCommit() {
    halt();
    // Groups never written drop their completions (an RPC Responder dropped answers CANCELLED).
  }
  GroupCommit(const GroupCommit&) = delete;
  GroupCommit& operator=(const GroupCommit&) = delete;

  // Waits for the batch being written, if any, to be written and answered, and writes nothing
  // more. Groups still queued then, and any posted afterwards, get their `done` at once, on the
  // caller's thread, with UNAVAILABLE outcomes (dropped, as at destruction, when an Outcome cannot
  // be made from a Status). An owner stops it before it lets go of it: that batch's completions
  // may post more (a write that hands its entry to a waiting taker), and must find it there.
  // Called once, not from a completion.
  void stop() {
    halt("group_commit.stopping");
    std::deque<Group> left;
    {
      std::lock_guard lock(mu_);
      stopped_ = true;
      left.swap(queue_);
    }
    for (Group& g : left) refuse(g, "stopped before it was written");
  }

  // As stop(), but every group queued by then is written and answered first: for a log whose
  // records nobody waits for, which a clean close should not lose. Called once, not from a
  // completion.
  void finish() {
    {
      std::lock_guard lock(mu_);
      draining_ = true;
    }
    stop();
  }

  // Whether the caller runs on the committing thread, as completions do: a call made there that
  // waits for a later batch waits for its own thread.
  bool on_commit_thread() const { return std::this_thread::get_id() == thread_.get_id(); }

  // `bytes`: what the requests hold, counted against Limits::max_queued_bytes. `bounded` false:
  // queued whatever the bounds (a request that finishes what was already promised, such as the
  // removal of an entry a taker has been handed, must not be refused).
  void post(std::vector<Request> requests, Done done, size_t bytes = 0, bool bounded = true) {
    Group g{std::move(requests), std::move(done), bytes};
    bool queued = false;
    std::string busy;
    {
      std::lock_guard lock(mu_);
      if (!stopped_) {
        // An empty queue takes any group, so one larger than the bounds is written, alone.
        if (bounded && !queue_.empty() &&
            (queued_requests_ + g.requests.size() > limits_.max_queued_requests ||
             queued_bytes_ + bytes > limits_.max_queued_bytes)) {
          busy = "busy: " + std::to_string(queued_requests_) + " requests (" + std::to_string(queued_bytes_) +
                 " bytes) wait to be written; retry";
        } else {
          queued_requests_ += g.requests.size();
          queued_bytes_ += bytes;
          queue_.push_back(std::move(g));
          queued = true;
        }
      }
    }
    if (queued) {
      cv_.notify_one();
    } else {
      refuse(g, busy.empty() ? "stopped before it was written" : busy);
    }
  }

 private:
  // Asks the thread to stop and joins it once the batch being written is answered.
  void halt(const char* crash_point = nullptr) {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (crash_point) DJINN_CRASH_POINT(crash_point);
    if (thread_.joinable()) thread_.join();
  }

  struct Group {
    std::vector<Request> requests;
    Done done;
    size_t bytes = 0;
  };

  void run() {
    std::vector<Group> groups;
    std::vector<Request> all;
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_ && (!draining_ || queue_.empty())) return;
      size_t total = 0;
      while (!queue_.empty() && (groups.empty() || total + queue_.front().requests.size() <= max_batch_)) {
        total += queue_.front().requests.size();
        queued_requests_ -= queue_.front().requests.size();
        queued_bytes_ -= queue_.front().bytes;
        groups.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      lock.unlock();
      for (Group& g : groups) {
        all.insert(all.end(), std::make_move_iterator(g.requests.begin()), std::make_move_iterator(g.requests.end()));
      }
      std::vector<Outcome> outcomes = all.empty() ? std::vector<Outcome>{} : batch_(all);
      {
        rpc::ReplyBatch replies;  // the batch's callers are answered together
        size_t at = 0;
        for (Group& g : groups) {
          std::vector<Outcome> mine;
          mine.reserve(g.requests.size());
          for (size_t i = 0; i < g.requests.size(); ++i) mine.push_back(std::move(outcomes[at++]));
          g.done(std::move(mine));
        }
      }
      groups.clear();
      all.clear();
      lock.lock();
    }
  }

  static void refuse(Group& g, const std::string& why) {
    if constexpr (std::is_constructible_v<Outcome, Status>) {
      std::vector<Outcome> out;
      out.reserve(g.requests.size());
      for (size_t i = 0; i < g.requests.size(); ++i) out.emplace_back(unavailable(why));
      g.done(std::move(out));
    }
  }

  const size_t max_batch_;
  const GroupCommitLimits limits_;
  Batch batch_;
  std::mutex mu_;  // guards queue_, its counts, stop_, draining_, stopped_
  std::condition_variable cv_;
  std::deque<Group> queue_;
  size_t queued_requests_ = 0;
  size_t queued_bytes_ = 0;
  bool stop_ = false;
  bool draining_ = false;  // finish(): the thread writes what is queued before it returns
  bool stopped_ = false;  // stop() joined the thread: nothing is queued any more
  std::thread thread_;
};

}  // namespace djinn
