// The heap's page pool: pages it holds without mapping them, so that loading a page need not
// allocate one (the kernel's page allocation is most of what UFFDIO_COPY costs here). Evictions
// move their victims into the pool (UFFDIO_MOVE) rather than dropping them; page-ins copy the
// store's bytes into pool pages and move them into place; Heap::reserve allocates pages into it
// ahead of need. The pages held are always the slots [0, size()) of the pool's range: a stack, so
// a run goes out or in with one ioctl.
//
// A moved page arrives writable, not write-protected as UFFDIO_COPY can map it: the heap protects
// it after the move, and only moves in pages that the faulting thread cannot reach before they
// are protected (heap.cpp, load_run_locked).
// The heap keeps its resident pages and the pool's together within its budget. Not thread-safe:
// used under the heap's lock, or on slots the lock holder handed out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "djinn/core/status.h"
#include "heap_mmu.h"

namespace djinn::heapstore::internal {

class PagePool {
 public:
  // A pool of up to `capacity_pages` pages, registered with `mmu`'s userfaultfd (a move's
  // destination must be). Unavailable when the kernel has no UFFDIO_MOVE (before Linux 6.8).
  static Result<std::unique_ptr<PagePool>> create(Mmu& mmu, uint32_t page_size, uint64_t capacity_pages);
  ~PagePool();
  PagePool(const PagePool&) = delete;
  PagePool& operator=(const PagePool&) = delete;

  uint64_t size() const { return held_; }

  // Allocates pages until `pages` are held (at most the capacity).
  Status fill(uint64_t pages);
  // Takes the top `n` held pages (n <= size()) and returns the first one's address: the caller
  // fills them and moves them out, and gives back to discard() any it did not move.
  std::byte* take(uint64_t n);
  // Fills `bytes` of taken pages at `slots` from `src` (zeros when null) and moves them to `dst`,
  // write-protected when `wp`, waking nobody. A page the kernel will not move (a destination not a
  // hole) is copied into place from its slot instead, and `*all_moved` turns false: the caller
  // then discards the slots.
  Status place(uintptr_t dst, std::byte* slots, const std::byte* src, size_t bytes, bool wp, bool* all_moved);
  // Frees [first, first + n pages), pages taken and not moved out (holes are left as they are).
  void discard(std::byte* first, uint64_t n);
  // Moves `n` pages at `src` into the pool, as many as there is room for; returns how many it
  // keeps. The others stay where they were (no room, a page the kernel refuses to move) or are
  // freed (moved but not to be un-protected): the caller drops the whole range's remainder.
  uint64_t put(uintptr_t src, uint64_t n);
  // Frees every held page beyond the first `keep`.
  void shrink(uint64_t keep);

 private:
  PagePool(Mmu& mmu, std::byte* base, uint32_t page_size, uint64_t capacity)
      : mmu_(mmu), base_(base), page_size_(page_size), capacity_(capacity) {}
  std::byte* slot(uint64_t k) const { return base_ + k * page_size_; }

  Mmu& mmu_;
  std::byte* base_;
  const uint32_t page_size_;
  const uint64_t capacity_;
  uint64_t held_ = 0;
};

}  // namespace djinn::heapstore::internal
