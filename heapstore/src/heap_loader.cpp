// PageLoader: a run of page loads shared between the calling thread and a few helpers.
#include "heap_loader.h"

#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>

namespace djinn::heapstore::internal {

PageLoader::PageLoader(const PageStore& store, Mmu& mmu, PagePool* pool, uint32_t page_size, unsigned helpers,
                       uint32_t spin_us, uint32_t min_shared_pages)
    : store_(store),
      mmu_(mmu),
      pool_(pool),
      page_size_(page_size),
      spin_us_(spin_us),
      min_shared_pages_(min_shared_pages) {
  for (unsigned i = 0; i < helpers; ++i) helpers_.emplace_back([this] { helper_loop(); });
}

PageLoader::~PageLoader() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  generation_.fetch_add(1);
  cv_.notify_all();
  for (auto& t : helpers_) t.join();
}

void PageLoader::fail(Job& job, size_t at, Status st) {
  std::lock_guard lock(job.error_mu);
  if (at < job.first_error) {
    job.first_error = at;
    job.error = std::move(st);
  }
}

void PageLoader::work(Job& job) {
  for (;;) {
    size_t k = job.next.fetch_add(job.chunk, std::memory_order_relaxed);
    if (k >= job.n) return;
    size_t n = std::min(job.chunk, job.n - k);
    // Each run of pages is mapped straight from the store's view of its pack file where it has
    // one: the page cache's bytes go into the heap in one copy.
    Status st;
    size_t handed = 0;
    try {
      handed = store_.visit_pages(
          std::span<const PageHash>(job.hashes + k, n), page_size_,
          std::span<std::byte>(job.buffer + k * page_size_, n * page_size_),
          [&](size_t first, std::span<const std::byte> pages) {
            size_t count = pages.size() / page_size_;
            Status mapped = map(job, k + first, pages.data(), count);
            if (!mapped.ok()) {
              std::lock_guard lock(job.error_mu);
              if (job.broken.ok()) job.broken = mapped;
              return mapped;
            }
            std::fill_n(job.mapped + k + first, count, uint8_t{1});
            return Status();
          },
          &st);
    } catch (const std::exception& e) {
      // A read that throws (out of memory, say) fails its pages like any failed read. Let through,
      // it would end a helper thread with std::terminate, or leave the run's other threads
      // working on a job whose owner's stack is gone.
      handed = static_cast<size_t>(std::find(job.mapped + k, job.mapped + k + n, uint8_t{0}) - (job.mapped + k));
      st = internal_error(std::string("loading pages: ") + e.what());
    }
    if (handed < n) fail(job, k + handed, std::move(st));
    job.finished.fetch_add(n, std::memory_order_release);
  }
}

Status PageLoader::map(Job& job, size_t at, const std::byte* pages, size_t count) {
  const uintptr_t dst = job.dst + at * page_size_;
  const size_t pooled = at < job.pool_pages ? std::min(count, job.pool_pages - at) : 0;
  size_t done = 0;  // bytes mapped
  if (pooled > 0) {
    bool all_moved = true;
    Status placed = pool_->place(dst, job.slots + at * page_size_, pages, pooled * page_size_, job.wp, &all_moved);
    if (!all_moved) job.leftovers.store(true, std::memory_order_relaxed);
    DJINN_RETURN_IF_ERROR(placed);
    done = pooled * page_size_;
  }
  if (done < count * page_size_) {
    DJINN_RETURN_IF_ERROR(mmu_.copy(dst + done, pages + done, count * page_size_ - done, job.wp, false));
  }
  return Status();
}

size_t PageLoader::load(const PageHash* hashes, size_t n, std::byte* buffer, uintptr_t dst, bool wp,
                        std::span<uint8_t> mapped, Status* error, size_t pool_pages) {
  Job job;
  if (pool_ && pool_pages > 0) {
    job.pool_pages = std::min({pool_pages, n, static_cast<size_t>(pool_->size())});
    job.slots = pool_->take(job.pool_pages);
  }
  job.hashes = hashes;
  job.buffer = buffer;
  job.dst = dst;
  job.wp = wp;
  job.mapped = mapped.data();
  job.n = n;
  std::fill_n(job.mapped, n, uint8_t{0});
  const bool shared = n >= std::max<size_t>(min_shared_pages_, 2) && !helpers_.empty();
  // Shared: a part for each thread; alone: the whole run in one visit_pages.
  job.chunk = shared ? (n + helpers_.size()) / (helpers_.size() + 1) : n;
  if (shared) {
    {
      std::lock_guard lock(mu_);
      job_ = &job;
    }
    generation_.fetch_add(1, std::memory_order_release);
    cv_.notify_all();
  }
  work(job);
  if (shared) {
    // The job lives on this stack: no helper may hold it once this returns.
    std::unique_lock lock(mu_);
    job_ = nullptr;
    cv_.wait(lock, [&] { return users_ == 0; });
  }
  while (job.finished.load(std::memory_order_acquire) < n) std::this_thread::yield();
  // Slots whose pages did not move out (a failed page, or one the kernel copied from) are freed;
  // the moved ones are holes already.
  if (job.pool_pages > 0 && (job.leftovers.load() || job.first_error != SIZE_MAX || !job.broken.ok())) {
    pool_->discard(job.slots, job.pool_pages);
  }
  if (!job.broken.ok()) throw std::runtime_error(job.broken.to_string());
  if (job.first_error == SIZE_MAX) return n;
  if (error) *error = job.error;
  return job.first_error;
}

void PageLoader::helper_loop() {
  pthread_setname_np(pthread_self(), "heap-loader");
  uint64_t seen = generation_.load();
  for (;;) {
    // Poll a little after the last job (faults come in bursts), then sleep.
    auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us_);
    while (generation_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < until) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    Job* job;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || generation_.load() != seen; });
      if (stopping_) return;
      seen = generation_.load();
      job = job_;
      if (!job) continue;  // finished before this helper got to it
      ++users_;
    }
    work(*job);
    {
      std::lock_guard lock(mu_);
      --users_;
    }
    cv_.notify_all();
  }
}

}  // namespace djinn::heapstore::internal
