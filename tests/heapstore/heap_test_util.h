// Helpers for the heap's tests: a page store in a temporary directory, the dirty-tracking modes
// this kernel can run (every core test runs in each), and an in-memory image of what a heap must
// hold, written in step with it and compared bit for bit.
#pragma once

#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "djinn/heapstore/heap.h"
#include "djinn/heapstore/page_store.h"
#include "support/test_support.h"

namespace djinn::heapstore::heaptest {

template <class T>
T must(Result<T> r) {
  REQUIRE_MESSAGE(r.ok(), r.status().to_string());
  return std::move(r).value();
}

inline void must_ok(const Status& s) { REQUIRE_MESSAGE(s.ok(), s.to_string()); }

// Asynchronous write-protect when the kernel has it, and always the synchronous fallback.
inline std::vector<DirtyTracking> tracking_modes() {
  std::vector<DirtyTracking> modes;
  if (Heap::auto_tracking() == DirtyTracking::kAsync) modes.push_back(DirtyTracking::kAsync);
  modes.push_back(DirtyTracking::kSyncWriteProtect);
  return modes;
}

// A page store in its own temporary directory; reopen() closes and opens it again.
struct StoreDir {
  explicit StoreDir(PageStoreOptions o = {.compression_level = 0, .durable = false}) : options(o) { reopen(); }
  void reopen() {
    store.reset();
    store = must(PageStore::open(dir.path() / "store", options));
  }
  test::TempDir dir;
  PageStoreOptions options;
  std::unique_ptr<PageStore> store;
};

inline HeapOptions small_heap(DirtyTracking mode, uint64_t capacity = 4 << 20, uint64_t budget = 1 << 20) {
  HeapOptions o;
  o.capacity_bytes = capacity;
  o.budget_bytes = budget;
  o.tracking = mode;
  return o;
}

// The bytes a heap must hold, next to it.
struct Image {
  explicit Image(size_t size) : bytes(size) {}
  std::vector<std::byte> bytes;

  // Writes `len` bytes derived from `key` at `offset`, into the heap and into the image.
  void write(Heap& heap, size_t offset, size_t len, uint64_t key) {
    std::mt19937_64 gen(key);
    for (size_t i = 0; i < len; i += 8) {
      uint64_t w = gen();
      size_t n = std::min<size_t>(8, len - i);
      std::memcpy(heap.base() + offset + i, &w, n);
      std::memcpy(bytes.data() + offset + i, &w, n);
    }
  }
  void zero(Heap& heap, size_t offset, size_t len) {
    std::memset(heap.base() + offset, 0, len);
    std::memset(bytes.data() + offset, 0, len);
  }
  // The first offset where the heap differs, or -1. Reads every page (faulting them in).
  int64_t first_difference(const Heap& heap) const {
    const size_t n = std::min<size_t>(bytes.size(), heap.size());
    for (size_t off = 0; off < n; off += 4096) {
      size_t len = std::min<size_t>(4096, n - off);
      if (std::memcmp(heap.base() + off, bytes.data() + off, len) != 0) {
        for (size_t i = 0; i < len; ++i) {
          if (heap.base()[off + i] != bytes[off + i]) return static_cast<int64_t>(off + i);
        }
      }
    }
    return -1;
  }
};

// A version of a new heap of the image's size whose every page starts with 64 bytes derived from
// its offset and `salt` (the image holds them too).
inline uint64_t marked_version(PageStore& store, DirtyTracking mode, Image& image, uint64_t salt) {
  const size_t size = image.bytes.size();
  auto heap = must(Heap::open(store, 0, small_heap(mode, size, size)));
  for (size_t off = 0; off < size; off += 4096) image.write(*heap, off, 64, off + salt);
  return must(heap->checkpoint("marked")).version;
}

#define CHECK_HEAP_MATCHES(image, heap)                                                   \
  do {                                                                                    \
    int64_t diff_ = (image).first_difference(heap);                                       \
    CHECK_MESSAGE(diff_ == -1, "the heap differs from its image at byte offset ", diff_); \
  } while (0)

}  // namespace djinn::heapstore::heaptest
