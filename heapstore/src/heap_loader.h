// Reading a fault's run of pages from the page store, on the fault thread alone or shared with
// helper threads (each takes a part of the run: one read_pages, so pages in order in a pack still
// come in one read). Helpers poll for work a little while after each run, like the fault thread,
// then sleep.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "djinn/heapstore/page_store.h"

namespace djinn::heapstore::internal {

class PageLoader {
 public:
  PageLoader(const PageStore& store, uint32_t page_size, unsigned helpers, uint32_t spin_us);
  ~PageLoader();
  PageLoader(const PageLoader&) = delete;
  PageLoader& operator=(const PageLoader&) = delete;

  // Reads pages `hashes[0, n)` into `out` (n pages). Returns how many leading pages were read:
  // n, or the index of the first page that failed, whose error goes to `error`.
  size_t read(const PageHash* hashes, size_t n, std::byte* out, Status* error);

 private:
  struct Job {
    const PageHash* hashes = nullptr;
    std::byte* out = nullptr;
    size_t n = 0;
    size_t chunk = 1;  // pages a thread takes at a time
    std::atomic<size_t> next{0};
    std::atomic<size_t> finished{0};
    std::mutex error_mu;  // guards first_error and error
    size_t first_error = SIZE_MAX;
    Status error;
  };
  void work(Job& job);
  void helper_loop();

  const PageStore& store_;
  const uint32_t page_size_;
  const uint32_t spin_us_;
  std::mutex mu_;  // guards job_, users_, stopping_
  std::condition_variable cv_;
  Job* job_ = nullptr;
  int users_ = 0;  // helpers working on job_
  bool stopping_ = false;
  std::atomic<uint64_t> generation_{0};  // bumped for every job, so helpers can poll without mu_
  std::vector<std::thread> helpers_;
};

}  // namespace djinn::heapstore::internal
