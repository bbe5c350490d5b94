// PagePool: a stack of unmapped pages, moved in and out with UFFDIO_MOVE.
#include "heap_pool.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace djinn::heapstore::internal {

Result<std::unique_ptr<PagePool>> PagePool::create(Mmu& mmu, uint32_t page_size, uint64_t capacity_pages) {
  const size_t length = capacity_pages * page_size;
  void* p = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    return resource_exhausted("reserving " + std::to_string(length) + " bytes for the heap's page pool: " +
                              std::strerror(errno));
  }
  // Like the heap: no huge pages (a move takes single pages), and not shared with forked
  // children, which would make every page copy-on-write and unmovable.
  ::madvise(p, length, MADV_NOHUGEPAGE);
  ::madvise(p, length, MADV_DONTFORK);
  Status st = mmu.register_pool(reinterpret_cast<uintptr_t>(p), length);
  if (!st.ok()) {
    ::munmap(p, length);
    return st;
  }
  return std::unique_ptr<PagePool>(new PagePool(mmu, static_cast<std::byte*>(p), page_size, capacity_pages));
}

PagePool::~PagePool() { ::munmap(base_, capacity_ * page_size_); }

Status PagePool::fill(uint64_t pages) {
  pages = std::min(pages, capacity_);
  if (pages <= held_) return Status();
  if (::madvise(slot(held_), (pages - held_) * page_size_, MADV_POPULATE_WRITE) != 0) {
    int e = errno;
    // Whatever it did allocate goes back: slots past size() must stay holes.
    discard(slot(held_), pages - held_);
    return resource_exhausted("allocating " + std::to_string(pages - held_) + " pages for the heap's page pool: " +
                              std::strerror(e));
  }
  held_ = pages;
  return Status();
}

std::byte* PagePool::take(uint64_t n) {
  held_ -= std::min(n, held_);
  return slot(held_);
}

Status PagePool::place(uintptr_t dst, std::byte* slots, const std::byte* src, size_t bytes, bool wp,
                       bool* all_moved) {
  if (src) {
    std::memcpy(slots, src, bytes);
  } else {
    std::memset(slots, 0, bytes);
  }
  size_t moved = mmu_.move(dst, reinterpret_cast<uintptr_t>(slots), bytes);
  if (moved > 0 && wp) DJINN_RETURN_IF_ERROR(mmu_.protect(dst, moved, true, false));
  if (moved == bytes) return Status();
  *all_moved = false;
  return mmu_.copy(dst + moved, slots + moved, bytes - moved, wp, false);
}

void PagePool::discard(std::byte* first, uint64_t n) {
  if (n > 0) ::madvise(first, n * page_size_, MADV_DONTNEED);
}

uint64_t PagePool::put(uintptr_t src, uint64_t n) {
  n = std::min(n, capacity_ - held_);
  if (n == 0) return 0;
  std::byte* first = slot(held_);
  size_t bytes = mmu_.move(reinterpret_cast<uintptr_t>(first), src, n * page_size_);
  uint64_t moved = bytes / page_size_;
  // Part of a heap page larger than 4 KiB moved: those pieces are freed (the caller drops the
  // rest of it), so the slot stays a hole.
  if (bytes % page_size_ != 0) discard(slot(held_ + moved), 1);
  // A present page arrives writable, but one swapped out moves as its swap entry, write-protect
  // bit included, and the next copy into it would fault: nothing in the pool stays protected.
  // Pages that cannot be un-protected are freed (they were victims: nothing of theirs is lost).
  if (moved > 0 && !mmu_.protect(reinterpret_cast<uintptr_t>(first), moved * page_size_, false, false).ok()) {
    discard(first, moved);
    return 0;
  }
  held_ += moved;
  return moved;
}

void PagePool::shrink(uint64_t keep) {
  if (keep >= held_) return;
  discard(slot(keep), held_ - keep);
  held_ = keep;
}

}  // namespace djinn::heapstore::internal
