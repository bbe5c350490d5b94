// The sequence numbers of the entries filed under one index key, ascending.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <memory>
#include <vector>

#include <boost/container/small_vector.hpp>

namespace djinn::space {

// Most keys name one entry (a unique field value): those stay inline in a short vector. A key that
// gathers many entries (a type, a field with few values) keeps them in sorted chunks of up to
// kChunkMax sequences, indexed by a map: new entries carry the highest sequence and are appended
// to the last chunk, a removal shifts at most one chunk, and a sequence costs about eight bytes
// rather than a tree node of its own (chunks emptied by takes go; chunks thinned by takes out of
// write order keep their capacity).
class Posting {
 public:
  static constexpr size_t kSmallMax = 32;
  static constexpr size_t kChunkMax = 256;

  size_t size() const { return chunks_ ? chunks_->size : small_.size(); }
  bool empty() const { return size() == 0; }

  void insert(uint64_t seq) {
    if (chunks_) {
      chunks_->insert(seq);
      return;
    }
    auto at = std::lower_bound(small_.begin(), small_.end(), seq);
    if (at != small_.end() && *at == seq) return;
    small_.insert(at, seq);
    if (small_.size() > kSmallMax) {
      chunks_ = std::make_unique<Chunks>();
      chunks_->map.emplace(small_.front(), std::vector<uint64_t>(small_.begin(), small_.end()));
      chunks_->size = small_.size();
      Small().swap(small_);
    }
  }

  void erase(uint64_t seq) {
    if (chunks_) {
      chunks_->erase(seq);
      if (chunks_->size <= kSmallMax / 2) {  // back inline, with room to grow before chunking again
        for (const auto& [key, v] : chunks_->map) small_.insert(small_.end(), v.begin(), v.end());
        chunks_.reset();
      }
      return;
    }
    auto at = std::lower_bound(small_.begin(), small_.end(), seq);
    if (at != small_.end() && *at == seq) small_.erase(at);
  }

  // For tests: how many chunks hold the sequences (0 while inline), and whether the layout is as
  // described below.
  size_t chunk_count() const { return chunks_ ? chunks_->map.size() : 0; }
  bool well_formed() const {
    if (!chunks_) return small_.size() <= kSmallMax && std::is_sorted(small_.begin(), small_.end());
    if (!small_.empty() || chunks_->map.empty() || chunks_->size <= kSmallMax / 2) return false;
    size_t total = 0;
    const std::vector<uint64_t>* previous = nullptr;
    for (const auto& [key, v] : chunks_->map) {
      if (v.empty() || v.size() > kChunkMax || !std::is_sorted(v.begin(), v.end())) return false;
      if (std::adjacent_find(v.begin(), v.end()) != v.end() || v.front() < key) return false;
      if (previous && previous->back() >= key) return false;
      previous = &v;
      total += v.size();
    }
    return total == chunks_->size;
  }

  // Calls f(seq) for the sequences after `after`, ascending, until f returns false. f must not
  // change the posting.
  template <class F>
  void for_each_after(uint64_t after, F&& f) const {
    if (chunks_) {
      for (auto c = chunks_->holding(after); c != chunks_->map.end(); ++c) {
        const std::vector<uint64_t>& v = c->second;
        for (auto it = std::upper_bound(v.begin(), v.end(), after); it != v.end(); ++it) {
          if (!f(*it)) return;
        }
      }
      return;
    }
    for (auto it = std::upper_bound(small_.begin(), small_.end(), after); it != small_.end(); ++it) {
      if (!f(*it)) return;
    }
  }

 private:
  using Small = boost::container::small_vector<uint64_t, 1>;

  // Each chunk is keyed by a lower bound of its sequences that lies above every sequence of the
  // chunks before it. Chunks are never empty, and there is at least one (a posting that shrinks
  // to kSmallMax / 2 goes back inline).
  struct Chunks {
    using Map = std::map<uint64_t, std::vector<uint64_t>>;
    Map map;
    size_t size = 0;

    // The chunk whose range holds `seq`: the last keyed at or below it, else the first.
    Map::iterator holding(uint64_t seq) {
      auto c = map.upper_bound(seq);
      return c == map.begin() ? c : std::prev(c);
    }
    Map::const_iterator holding(uint64_t seq) const {
      auto c = map.upper_bound(seq);
      return c == map.begin() ? c : std::prev(c);
    }

    void insert(uint64_t seq) {
      auto last = std::prev(map.end());
      if (seq > last->second.back()) {  // the common case: a new entry
        if (last->second.size() < kChunkMax) {
          last->second.push_back(seq);
        } else {
          map.emplace_hint(map.end(), seq, std::vector<uint64_t>{seq})->second.reserve(kChunkMax);
        }
        ++size;
        return;
      }
      auto c = holding(seq);
      std::vector<uint64_t>& v = c->second;
      auto at = std::lower_bound(v.begin(), v.end(), seq);
      if (at != v.end() && *at == seq) return;
      v.insert(at, seq);
      ++size;
      if (seq < c->first) {  // below the first chunk's key: lower the key
        auto node = map.extract(c);
        node.key() = seq;
        c = map.insert(std::move(node)).position;
      }
      if (c->second.size() > kChunkMax) {  // split in two halves
        std::vector<uint64_t>& full = c->second;
        auto mid = full.begin() + static_cast<std::ptrdiff_t>(full.size() / 2);
        std::vector<uint64_t> upper(mid, full.end());
        full.erase(mid, full.end());
        uint64_t key = upper.front();
        map.emplace_hint(std::next(c), key, std::move(upper));
      }
    }

    void erase(uint64_t seq) {
      auto c = holding(seq);
      if (c == map.end()) return;
      std::vector<uint64_t>& v = c->second;
      auto at = std::lower_bound(v.begin(), v.end(), seq);
      if (at == v.end() || *at != seq) return;
      v.erase(at);
      --size;
      if (v.empty()) map.erase(c);
    }
  };

  Small small_;
  std::unique_ptr<Chunks> chunks_;
};

}  // namespace djinn::space
