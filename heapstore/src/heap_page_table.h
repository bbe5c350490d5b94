// The heap's page table (DESIGN §7): one entry per page, kept in chunks allocated on first use, so
// a heap of tens of GiB of capacity pays only for the parts it has used. Guarded by the heap's
// mutex; never touched from a signal handler.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "djinn/heapstore/heap.h"
#include "djinn/heapstore/page_store.h"

namespace djinn::heapstore::internal {

struct PageEntry {
  PageState state = PageState::kEmpty;
  PageType type = PageType::kUser;
  uint8_t flags = 0;
  // The hash of the last persisted copy; meaningful with kHashKnown. A page written by a
  // checkpoint has a persisted copy whose hash the store computed: it is learnt again (by hashing
  // the clean page) only when needed.
  PageHash hash;

  static constexpr uint8_t kPinned = 1;
  static constexpr uint8_t kAccessed = 2;
  static constexpr uint8_t kHashKnown = 4;
  // The page differs from the heap's base version in a way only this table knows (dirty, or its
  // new content was put in the store by an eviction): it is in Impl::pending.
  static constexpr uint8_t kPending = 8;
  // Chosen by the sweep under way (a second turn of the hand must not choose it again).
  static constexpr uint8_t kVictim = 16;
  // `hash` is the copy its last dirty eviction holds in the store (PageStore::hold_page), needed
  // until a checkpoint holds the page or an eviction holds a newer copy; then given back.
  static constexpr uint8_t kHeld = 32;

  bool has(uint8_t f) const { return (flags & f) != 0; }
  void set(uint8_t f) { flags |= f; }
  void clear(uint8_t f) { flags &= static_cast<uint8_t>(~f); }
  bool resident() const {
    return state == PageState::kResident || state == PageState::kDirty || state == PageState::kFlushing;
  }
};

class PageTable {
 public:
  static constexpr uint64_t kChunkPages = 4096;

  explicit PageTable(uint64_t pages) : pages_(pages), chunks_((pages + kChunkPages - 1) / kChunkPages) {}

  uint64_t pages() const { return pages_; }
  // The entry, or nullptr when its chunk was never used (the page is empty).
  const PageEntry* find(uint64_t i) const {
    const Chunk* c = chunks_[i / kChunkPages].get();
    return c ? &c->entries[i % kChunkPages] : nullptr;
  }
  PageEntry* find(uint64_t i) {
    Chunk* c = chunks_[i / kChunkPages].get();
    return c ? &c->entries[i % kChunkPages] : nullptr;
  }
  PageEntry& at(uint64_t i) {
    auto& c = chunks_[i / kChunkPages];
    if (!c) c = std::make_unique<Chunk>();
    return c->entries[i % kChunkPages];
  }
  bool resident(uint64_t i) const {
    const PageEntry* e = find(i);
    return e && e->resident();
  }
  // Resident pages counted per chunk, so sweeps skip chunks that hold none.
  void add_resident(uint64_t i, int64_t delta) {
    at(i);
    chunks_[i / kChunkPages]->resident += delta;
  }
  int64_t chunk_resident(uint64_t chunk) const { return chunks_[chunk] ? chunks_[chunk]->resident : 0; }
  uint64_t chunks() const { return chunks_.size(); }

 private:
  struct Chunk {
    std::array<PageEntry, kChunkPages> entries{};
    int64_t resident = 0;
  };
  uint64_t pages_;
  std::vector<std::unique_ptr<Chunk>> chunks_;
};

}  // namespace djinn::heapstore::internal
