// Group commit: every request answered with its own outcome, groups never split, batches within
// their size and never overlapping, groups written in the order posted, on the commit thread.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "djinn/core/fault.h"
#include "djinn/core/group_commit.h"
#include "support/test_support.h"

using namespace djinn;

namespace {

// Records what each batch held and on which thread it ran.
struct Recorder {
  std::mutex mu;
  std::vector<std::vector<int>> batches;
  std::vector<std::thread::id> threads;
  std::atomic<int> inside{0};
  std::atomic<bool> overlapped{false};

  std::vector<int> run(std::span<int> requests) {
    if (inside.fetch_add(1) != 0) overlapped = true;
    {
      std::lock_guard lock(mu);
      batches.emplace_back(requests.begin(), requests.end());
      threads.push_back(std::this_thread::get_id());
    }
    std::vector<int> out;
    for (int r : requests) out.push_back(r * 10);
    inside.fetch_sub(1);
    return out;
  }
};

}  // namespace

TEST_CASE("many posting threads: each request gets its own outcome, groups whole, batches bounded and serial") {
  Recorder rec;
  constexpr size_t kMax = 16;
  GroupCommit<int, int> gc(kMax, [&](std::span<int> r) { return rec.run(r); });
  constexpr int kThreads = 8, kPosts = 200;
  std::atomic<int> wrong{0}, answered{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPosts; ++i) {
        int base = (t * kPosts + i) * 100;
        int n = i % 7 == 0 ? 20 : 1 + i % 3;  // now and then a group larger than the batch size
        std::vector<int> group;
        for (int k = 0; k < n; ++k) group.push_back(base + k);
        std::promise<void> done;
        gc.post(group, [&, group](std::vector<int> out) {
          if (out.size() != group.size()) wrong++;
          for (size_t k = 0; k < out.size() && k < group.size(); ++k) {
            if (out[k] != group[k] * 10) wrong++;
          }
          answered++;
          done.set_value();
        });
        done.get_future().wait();
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(wrong == 0);
  CHECK(answered == kThreads * kPosts);
  CHECK_FALSE(rec.overlapped);
  for (const auto& b : rec.batches) {
    // A group of 20 goes alone; otherwise a batch stays within kMax.
    CHECK((b.size() <= kMax || b.size() == 20));
    // Groups are whole: the requests of one group (same base) are consecutive and complete.
    for (size_t k = 0; k < b.size();) {
      int base = b[k] / 100 * 100;
      size_t start = k;
      while (k < b.size() && b[k] / 100 * 100 == base) {
        CHECK(b[k] == base + static_cast<int>(k - start));
        ++k;
      }
    }
  }
}

TEST_CASE("groups are written in the order posted") {
  Recorder rec;
  GroupCommit<int, int> gc(4, [&](std::span<int> r) { return rec.run(r); });
  std::atomic<int> answered{0};
  for (int i = 0; i < 500; ++i) gc.post({i}, [&](std::vector<int>) { answered++; });
  auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (answered < 500 && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
  REQUIRE(answered == 500);
  std::vector<int> order;
  for (const auto& b : rec.batches) order.insert(order.end(), b.begin(), b.end());
  REQUIRE(order.size() == 500);
  for (int i = 0; i < 500; ++i) CHECK(order[static_cast<size_t>(i)] == i);
  for (std::thread::id id : rec.threads) CHECK(id == rec.threads.front());  // the commit thread's
  CHECK(rec.threads.front() != std::this_thread::get_id());
}

TEST_CASE("groups posted while a batch is written go together in the next one") {
  std::mutex mu;
  std::vector<size_t> sizes;
  std::promise<void> first_started, release_first;
  std::shared_future<void> released = release_first.get_future().share();
  bool first = true;
  GroupCommit<int, int> gc(64, [&](std::span<int> r) {
    bool was_first;
    {
      std::lock_guard lock(mu);
      was_first = first;
      first = false;
      sizes.push_back(r.size());
    }
    if (was_first) {
      first_started.set_value();
      released.wait();
    }
    return std::vector<int>(r.size(), 0);
  });
  std::atomic<int> answered{0};
  gc.post({0}, [&](std::vector<int>) { answered++; });
  first_started.get_future().wait();
  for (int i = 1; i <= 10; ++i) gc.post({i}, [&](std::vector<int>) { answered++; });
  release_first.set_value();
  auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (answered < 11 && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
  REQUIRE(answered == 11);
  std::lock_guard lock(mu);
  CHECK(sizes == std::vector<size_t>{1, 10});
}

TEST_CASE("stop: the batch being written is answered and may post; what is not written is answered UNAVAILABLE") {
  std::promise<void> started, release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> batches{0};
  GroupCommit<int, Status> gc(64, [&](std::span<int> r) {
    if (batches++ == 0) {
      started.set_value();
      released.wait();
    }
    return std::vector<Status>(r.size(), Status::Ok());
  });
  std::vector<Status> queued_answer, posted_from_completion, posted_after;
  std::vector<Status> first_answer;
  gc.post({1}, [&](std::vector<Status> out) {
    first_answer = std::move(out);
    // A completion of the batch being written posts more while stop() waits for it.
    gc.post({3}, [&](std::vector<Status> again) { posted_from_completion = std::move(again); });
  });
  started.get_future().wait();
  gc.post({2}, [&](std::vector<Status> out) { queued_answer = std::move(out); });
  // The batch goes on once stop() has asked the thread to stop.
  fault::arm_call("group_commit.stopping", [&] { release.set_value(); });
  gc.stop();
  fault::disarm_all();
  gc.post({4, 5}, [&](std::vector<Status> out) { posted_after = std::move(out); });  // answered at once
  CHECK(batches == 1);
  REQUIRE(first_answer.size() == 1);
  CHECK(first_answer[0].ok());
  for (const auto* answer : {&queued_answer, &posted_from_completion}) {
    REQUIRE(answer->size() == 1);
    CHECK(answer->front().code() == Code::kUnavailable);
  }
  REQUIRE(posted_after.size() == 2);
  CHECK(posted_after[1].code() == Code::kUnavailable);
}

TEST_CASE("a queue past its bounds refuses posts as busy, except those told to wait whatever the bounds") {
  std::promise<void> started, release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> batches{0};
  GroupCommit<int, Status> gc(
      64,
      [&](std::span<int> r) {
        if (batches++ == 0) {
          started.set_value();
          released.wait();
        }
        return std::vector<Status>(r.size(), Status::Ok());
      },
      "test-commit", GroupCommitLimits{.max_queued_requests = 3, .max_queued_bytes = 1000});
  std::mutex mu;
  std::vector<Status> answers(8, internal_error("not answered"));
  auto answer = [&](size_t i) {
    return [&, i](std::vector<Status> out) {
      std::lock_guard lock(mu);
      answers[i] = out.front();
    };
  };
  gc.post({0}, answer(0));  // being written, held
  started.get_future().wait();
  gc.post({1}, answer(1), 600);
  gc.post({2}, answer(2), 600);  // 1,200 bytes queued: over the bound
  gc.post({3}, answer(3), 100);
  gc.post({4}, answer(4));
  gc.post({5}, answer(5));       // four requests queued: over the bound
  gc.post({6}, answer(6), 5000, false);  // queued whatever the bounds
  {
    std::lock_guard lock(mu);
    CHECK(answers[2].code() == Code::kUnavailable);
    CHECK(answers[2].message().find("busy") != std::string::npos);
    CHECK(answers[5].code() == Code::kUnavailable);
  }
  release.set_value();
  REQUIRE(test::eventually([&] {
    std::lock_guard lock(mu);
    return answers[6].ok();
  }));
  std::lock_guard lock(mu);
  for (size_t i : {0, 1, 3, 4, 6}) CHECK(answers[i].ok());
}

TEST_CASE("finish writes and answers every group queued before it stops; stop answers them UNAVAILABLE") {
  for (bool drain : {true, false}) {
    CAPTURE(drain);
    std::promise<void> release;
    std::shared_future<void> released = release.get_future().share();
    std::atomic<int> written{0};
    GroupCommit<int, Status> gc(4, [&](std::span<int> r) {
      released.wait();  // the first batch holds the thread while the rest queue up
      written += static_cast<int>(r.size());
      return std::vector<Status>(r.size(), Status::Ok());
    });
    std::atomic<int> ok{0}, refused{0};
    for (int i = 0; i < 20; ++i) {
      gc.post({i}, [&](std::vector<Status> out) { (out.front().ok() ? ok : refused)++; });
    }
    std::thread stopper([&] { drain ? gc.finish() : gc.stop(); });
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    release.set_value();
    stopper.join();
    if (drain) {
      CHECK(written.load() == 20);
      CHECK(ok.load() == 20);
    } else {
      CHECK(written.load() < 20);
      CHECK(ok.load() + refused.load() == 20);
      CHECK(refused.load() > 0);
    }
    // Posted after either: refused at once.
    Status late;
    gc.post({99}, [&](std::vector<Status> out) { late = out.front(); });
    CHECK(late.code() == Code::kUnavailable);
  }
}
