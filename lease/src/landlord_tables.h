// Compact in-memory tables of the landlord engine: an open-addressing index of uint32 slots and a
// pool of interned strings. A landlord may hold millions of leases; these keep each one to a few
// dozen bytes (a std::unordered_map node alone costs about as much as a whole lease here).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace djinn::lease::internal {

inline constexpr uint32_t kNone = UINT32_MAX;

// splitmix64's finalizer: ids arrive random, but rows loaded from a file or a test may not be.
inline uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// A set of uint32 indices into an owner's array, found by the hash of the key they stand for.
// Linear probing with backward-shift deletion (no tombstones); the owner answers the hash and the
// equality of an index, so a cell costs 4 bytes. Load factor at most 0.7.
class IndexTable {
 public:
  size_t size() const { return count_; }

  template <class Match>
  uint32_t find(uint64_t hash, Match&& match) const {
    if (cells_.empty()) return kNone;
    for (size_t i = hash & mask_;; i = (i + 1) & mask_) {
      uint32_t cell = cells_[i];
      if (cell == kNone) return kNone;
      if (match(cell)) return cell;
    }
  }

  template <class HashOf>
  void insert(uint64_t hash, uint32_t index, HashOf&& hash_of) {
    if ((count_ + 1) * 10 > cells_.size() * 7) grow(hash_of);
    size_t i = hash & mask_;
    while (cells_[i] != kNone) i = (i + 1) & mask_;
    cells_[i] = index;
    ++count_;
  }

  template <class Match, class HashOf>
  bool erase(uint64_t hash, Match&& match, HashOf&& hash_of) {
    if (cells_.empty()) return false;
    size_t i = hash & mask_;
    for (;; i = (i + 1) & mask_) {
      if (cells_[i] == kNone) return false;
      if (match(cells_[i])) break;
    }
    cells_[i] = kNone;
    --count_;
    // Shift back every later cell of the run that may no longer be reachable from its home.
    for (size_t j = (i + 1) & mask_; cells_[j] != kNone; j = (j + 1) & mask_) {
      size_t home = hash_of(cells_[j]) & mask_;
      bool reachable = i <= j ? (i < home && home <= j) : (i < home || home <= j);
      if (reachable) continue;
      cells_[i] = cells_[j];
      cells_[j] = kNone;
      i = j;
    }
    return true;
  }

 private:
  template <class HashOf>
  void grow(HashOf&& hash_of) {
    std::vector<uint32_t> old = std::move(cells_);
    size_t capacity = old.empty() ? 16 : old.size() * 2;
    cells_.assign(capacity, kNone);
    mask_ = capacity - 1;
    for (uint32_t cell : old) {
      if (cell == kNone) continue;
      size_t i = hash_of(cell) & mask_;
      while (cells_[i] != kNone) i = (i + 1) & mask_;
      cells_[i] = cell;
    }
  }

  std::vector<uint32_t> cells_;
  size_t mask_ = 0;
  size_t count_ = 0;
};

// Holder and resource names, stored once however many leases share them. An entry lives while
// leases refer to it; it heads the list of those leases and counts them by kind.
class StringPool {
 public:
  struct Entry {
    std::string text;
    uint32_t head = kNone;                // first lease slot in this entry's list
    // Leases per compact level (interest, shared, exclusive): enough to see at once that a
    // request conflicts with nothing held, without walking the list.
    std::array<uint32_t, 3> by_level{};
    uint32_t count() const { return by_level[0] + by_level[1] + by_level[2]; }
  };

  uint32_t find(std::string_view text) const {
    return table_.find(hash(text), [&](uint32_t i) { return entries_[i].text == text; });
  }

  uint32_t intern(std::string_view text) {
    uint32_t found = find(text);
    if (found != kNone) return found;
    uint32_t index;
    if (!free_.empty()) {
      index = free_.back();
      free_.pop_back();
      entries_[index].text.assign(text);
    } else {
      index = static_cast<uint32_t>(entries_.size());
      entries_.push_back(Entry{std::string(text), kNone, {}});
    }
    table_.insert(hash(text), index, [&](uint32_t i) { return hash(entries_[i].text); });
    return index;
  }

  // Frees an entry no lease refers to any more.
  void release(uint32_t index) {
    Entry& entry = entries_[index];
    table_.erase(
        hash(entry.text), [&](uint32_t i) { return i == index; },
        [&](uint32_t i) { return hash(entries_[i].text); });
    std::string().swap(entry.text);
    entry.head = kNone;
    entry.by_level = {};
    free_.push_back(index);
  }

  Entry& operator[](uint32_t index) { return entries_[index]; }
  const Entry& operator[](uint32_t index) const { return entries_[index]; }

 private:
  static uint64_t hash(std::string_view text) { return mix64(std::hash<std::string_view>{}(text)); }

  std::vector<Entry> entries_;
  std::vector<uint32_t> free_;
  IndexTable table_;
};

}  // namespace djinn::lease::internal
