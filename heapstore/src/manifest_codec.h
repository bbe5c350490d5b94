// How manifests are stored: a version is either a full manifest (every non-zero page, ascending
// index, with its hash) or a delta against another stored version (the indexes whose content
// changed: a new hash, or zero). Both are compact blobs: index gaps as varints, then 32-byte hashes.
// A 65,536-page manifest is about 2.2 MB full; a version that changed 1% of its pages stores 1% of it.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

#include "djinn/core/status.h"
#include "djinn/heapstore/page_store.h"

namespace djinn::heapstore::internal {

using PageList = std::vector<PageRef>;

void put_varint(std::vector<uint8_t>& out, uint64_t v);

// Reads varints, bytes and hashes from a blob, each false when the blob ends first.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> in) : in_(in) {}
  bool varint(uint64_t& v) {
    v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= in_.size()) return false;
      uint8_t b = in_[pos_++];
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  }
  bool byte(uint8_t& b) {
    if (pos_ >= in_.size()) return false;
    b = in_[pos_++];
    return true;
  }
  bool hash(PageHash& h) {
    if (in_.size() - pos_ < h.bytes.size()) return false;
    std::memcpy(h.bytes.data(), in_.data() + pos_, h.bytes.size());
    pos_ += h.bytes.size();
    return true;
  }
  size_t left() const { return in_.size() - pos_; }

 private:
  std::span<const uint8_t> in_;
  size_t pos_ = 0;
};

struct DeltaEntry {
  uint64_t index = 0;
  bool zero = false;  // the page becomes zero (hash unused)
  PageHash hash;
};

std::vector<uint8_t> encode_full(std::span<const PageRef> pages);
std::vector<uint8_t> encode_delta(std::span<const DeltaEntry> delta);

struct DecodedManifest {
  bool full = false;
  PageList pages;                 // when full
  std::vector<DeltaEntry> delta;  // when not
};
// Decodes and checks a stored blob (ascending indexes below `capacity`, nothing left over);
// DATA_LOSS naming `what` when it is not a valid manifest.
Result<DecodedManifest> decode_manifest(std::span<const uint8_t> blob, uint64_t capacity, std::string_view what);

// `base` with `delta` applied (both ascending).
PageList apply_delta(const PageList& base, std::span<const DeltaEntry> delta);
// One delta equivalent to applying `older` then `newer`.
std::vector<DeltaEntry> merge_deltas(std::span<const DeltaEntry> older, std::span<const DeltaEntry> newer);

}  // namespace djinn::heapstore::internal
