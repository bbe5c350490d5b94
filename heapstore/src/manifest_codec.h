// How manifests are stored: a version is either a full manifest (every non-zero page, ascending
// index, with its hash) or a delta against another stored version (the indexes whose content
// changed: a new hash, or zero). Both are compact blobs: index gaps as varints, then 32-byte hashes.
// A 65,536-page manifest is about 2.2 MB full; a version that changed 1% of its pages stores 1% of it.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "djinn/core/status.h"
#include "djinn/heapstore/page_store.h"

namespace djinn::heapstore::internal {

using PageList = std::vector<PageRef>;

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
