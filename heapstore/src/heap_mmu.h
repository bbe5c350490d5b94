// The MMU barriers of a heap (DESIGN §7): a userfaultfd registered for missing pages and for
// write-protection over the heap's range, and PAGEMAP_SCAN on /proc/self/pagemap to collect the
// written pages. A thin wrapper: every call is one ioctl or madvise, with errors as Status.
#pragma once

#include <linux/userfaultfd.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "djinn/core/status.h"

namespace djinn::heapstore::internal {

// What the running kernel offers (probed once per process).
struct MmuSupport {
  bool userfaultfd = false;   // userfaultfd(2) or /dev/userfaultfd works here
  bool write_protect = false;  // UFFD_FEATURE_PAGEFAULT_FLAG_WP: synchronous write-protect faults
  bool wp_async = false;       // UFFD_FEATURE_WP_ASYNC and PAGEMAP_SCAN both work
  bool poison = false;         // UFFDIO_POISON
  bool move = false;           // UFFDIO_MOVE (Linux 6.8): the heap's page pool
  std::string why;             // what is missing, when something is
};
const MmuSupport& mmu_support();

class Mmu {
 public:
  // Registers [base, base + length) for missing and write-protect faults; with `async_wp` the
  // kernel resolves write faults on protected pages itself and PAGEMAP_SCAN reports them.
  static Result<std::unique_ptr<Mmu>> create(std::byte* base, size_t length, bool async_wp);
  ~Mmu();
  Mmu(const Mmu&) = delete;
  Mmu& operator=(const Mmu&) = delete;

  int fd() const { return uffd_; }
  bool async_wp() const { return async_wp_; }

  // Reads pending fault messages without blocking; returns how many (0: none, -1: error).
  int read_faults(uffd_msg* out, int max);

  // Maps `len` bytes from `src` at `dst` (UFFDIO_COPY), write-protected when `wp`. Pages already
  // mapped in the range are skipped.
  Status copy(uintptr_t dst, const void* src, size_t len, bool wp, bool wake);
  // Registers a range of private anonymous memory for write-protection only (no missing faults,
  // nothing protected), so pages can be moved into it (UFFDIO_MOVE needs its destination
  // registered). Needs `move` support.
  Status register_pool(uintptr_t start, size_t len);
  // Moves the present, unshared pages of [src, src + len) to [dst, dst + len), which must be holes
  // (UFFDIO_MOVE: no page allocated or copied; the pages arrive writable), without waking. Returns
  // the bytes moved before the first page that could not be (a destination that is not a hole, a
  // page shared with another process): the caller copies or drops the rest.
  size_t move(uintptr_t dst, uintptr_t src, size_t len);
  // Write-protects (or un-protects) mapped pages (UFFDIO_WRITEPROTECT).
  Status protect(uintptr_t start, size_t len, bool wp, bool wake);
  Status wake(uintptr_t start, size_t len);
  // Any later access to the range raises SIGBUS (UFFDIO_POISON); for pages that cannot be loaded.
  Status poison(uintptr_t start, size_t len);
  // Drops the pages (MADV_DONTNEED): the next access faults as missing again.
  static Status drop(uintptr_t start, size_t len);

  // Async mode only: calls `region(start, end)` for each run of pages in [start, end) that is
  // present and written since it was last write-protected, write-protecting them again when
  // `reprotect` (one PAGEMAP_SCAN per batch of runs).
  Status scan_written(uintptr_t start, uintptr_t end, bool reprotect,
                      const std::function<void(uintptr_t, uintptr_t)>& region);

 private:
  Mmu(int uffd, int pagemap, std::byte* base, size_t length, bool async_wp)
      : uffd_(uffd), pagemap_(pagemap), base_(base), length_(length), async_wp_(async_wp) {}
  int uffd_;
  int pagemap_;
  std::byte* base_;
  size_t length_;
  bool async_wp_;
};

}  // namespace djinn::heapstore::internal
