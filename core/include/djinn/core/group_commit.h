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
#include <string_view>
#include <thread>
#include <vector>

#include "djinn/core/reply_batch.h"
#include "djinn/core/thread_name.h"

namespace djinn {

// Where a batch may run. kCommitThread: always on the group commit's own thread. kCallerWhenIdle:
// a post that finds nothing queued and no batch running writes its group at once on the posting
// thread (which then waits for the batch and runs the completion itself); otherwise it queues as
// usual. For batches that cost a few microseconds (no fsync), this saves two thread hand-offs per
// call when calls arrive one at a time, and batches still form under load.
enum class GroupCommitMode { kCommitThread, kCallerWhenIdle };

// One thread drains the queue and hands up to `max_batch` requests at a time to the batch
// function, which returns one outcome per request in order and may move from the requests (they
// are the batch's own). A posted group (one call's requests) is never split, so a group larger
// than max_batch goes alone. Batches never overlap, and groups are written in the order posted.
// Completions run on the thread that ran the batch.
template <class Request, class Outcome>
class GroupCommit {
 public:
  using Batch = std::function<std::vector<Outcome>(std::span<Request>)>;
  using Done = std::function<void(std::vector<Outcome>)>;

  // `thread_name` names the committing thread (15 bytes are kept).
  GroupCommit(size_t max_batch, Batch batch, std::string_view thread_name = "group-commit",
              GroupCommitMode mode = GroupCommitMode::kCommitThread)
      : max_batch_(max_batch), batch_(std::move(batch)), mode_(mode), thread_([this, thread_name] {
          name_this_thread(thread_name);
          run();
        }) {}
  ~GroupCommit() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
    // Groups never written drop their completions (an RPC Responder dropped answers CANCELLED).
  }
  GroupCommit(const GroupCommit&) = delete;
  GroupCommit& operator=(const GroupCommit&) = delete;

  void post(std::vector<Request> requests, Done done) {
    std::unique_lock lock(mu_);
    if (mode_ == GroupCommitMode::kCallerWhenIdle && !busy_ && queue_.empty() && !stop_) {
      busy_ = true;
      lock.unlock();
      std::vector<Group> groups;
      groups.push_back(Group{std::move(requests), std::move(done)});
      std::vector<Request> all;
      commit(groups, all);
      lock.lock();
      busy_ = false;
      bool queued = !queue_.empty();
      lock.unlock();
      if (queued) cv_.notify_one();  // posted while this batch ran: the thread takes them
      return;
    }
    queue_.push_back(Group{std::move(requests), std::move(done)});
    lock.unlock();
    cv_.notify_one();
  }

 private:
  struct Group {
    std::vector<Request> requests;
    Done done;
  };

  // Writes `groups` as one batch and runs their completions; `all` is scratch space.
  void commit(std::vector<Group>& groups, std::vector<Request>& all) {
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
  }

  void run() {
    std::vector<Group> groups;
    std::vector<Request> all;
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || (!queue_.empty() && !busy_); });
      if (stop_) return;
      size_t total = 0;
      while (!queue_.empty() && (groups.empty() || total + queue_.front().requests.size() <= max_batch_)) {
        total += queue_.front().requests.size();
        groups.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      busy_ = true;
      lock.unlock();
      commit(groups, all);
      lock.lock();
      busy_ = false;
    }
  }

  const size_t max_batch_;
  Batch batch_;
  const GroupCommitMode mode_;
  std::mutex mu_;  // guards queue_, busy_, stop_
  std::condition_variable cv_;
  std::deque<Group> queue_;
  bool busy_ = false;  // a batch is being written, by the thread or by a caller
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace djinn
