// Loading a fault's run of pages: mapped into the heap from the page store's views of its pack
// files (PageStore::visit_pages: no copy into a buffer first), on the fault thread alone or shared
// with helper threads. Each thread takes a part of the run: pages in order in a pack go in one
// copy. A page goes in one of two ways: copied into a page of the heap's pool and moved into place
// (UFFDIO_MOVE, then write-protected), or copied by the kernel (UFFDIO_COPY), which allocates the
// page it maps and costs more. Either scales with threads.
// Helpers poll for work a little while after each run, like the fault thread, then sleep.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "djinn/heapstore/page_store.h"
#include "heap_mmu.h"
#include "heap_pool.h"

namespace djinn::heapstore::internal {

class PageLoader {
 public:
  // Runs shorter than `min_shared_pages` stay on the calling thread: waking a helper costs more
  // than it saves on a few pages.
  // `pool` (may be null) gives the pages of load()'s `pool_pages`.
  PageLoader(const PageStore& store, Mmu& mmu, PagePool* pool, uint32_t page_size, unsigned helpers,
             uint32_t spin_us, uint32_t min_shared_pages);
  ~PageLoader();
  PageLoader(const PageLoader&) = delete;
  PageLoader& operator=(const PageLoader&) = delete;

  // Maps pages `hashes[0, n)` at `dst` onward, write-protected when `wp`, without waking the
  // faulting threads (the caller wakes the run); `buffer` (n pages) holds pages the store decodes
  // or reads rather than views. The first `pool_pages` (at most the pool's size) go through pages
  // of the pool: the caller makes sure no thread can write them before the run is woken (a moved
  // page is writable until it is protected). Sets `mapped[k]` for each page mapped. Returns how
  // many leading pages were mapped: n, or the index of the first page that failed, whose error
  // goes to `error`; pages after it may be mapped too. Throws std::runtime_error when the kernel
  // refuses a copy or a protection (as the fault thread's own would).
  size_t load(const PageHash* hashes, size_t n, std::byte* buffer, uintptr_t dst, bool wp,
              std::span<uint8_t> mapped, Status* error, size_t pool_pages = 0);

 private:
  struct Job {
    const PageHash* hashes = nullptr;
    std::byte* buffer = nullptr;
    uintptr_t dst = 0;
    bool wp = true;
    uint8_t* mapped = nullptr;
    size_t n = 0;
    std::byte* slots = nullptr;  // the pool pages of the run's first pool_pages pages
    size_t pool_pages = 0;
    std::atomic<bool> leftovers{false};  // a pool page was not moved out: the run's slots are freed
    size_t chunk = 1;  // pages a thread takes at a time
    std::atomic<size_t> next{0};
    std::atomic<size_t> finished{0};
    std::mutex error_mu;  // guards first_error, error and broken
    size_t first_error = SIZE_MAX;
    Status error;
    Status broken;  // a copy the kernel refused: the heap cannot go on
  };
  void work(Job& job);
  // Maps `count` pages of `pages` as the run's pages from `at` on.
  Status map(Job& job, size_t at, const std::byte* pages, size_t count);
  void fail(Job& job, size_t at, Status st);
  void helper_loop();

  const PageStore& store_;
  Mmu& mmu_;
  PagePool* pool_;
  const uint32_t page_size_;
  const uint32_t spin_us_;
  const uint32_t min_shared_pages_;
  std::mutex mu_;  // guards job_, users_, stopping_
  std::condition_variable cv_;
  Job* job_ = nullptr;
  int users_ = 0;  // helpers working on job_
  bool stopping_ = false;
  std::atomic<uint64_t> generation_{0};  // bumped for every job, so helpers can poll without mu_
  std::vector<std::thread> helpers_;
};

}  // namespace djinn::heapstore::internal
