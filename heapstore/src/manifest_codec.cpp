// Encoding, checked decoding and merging of stored manifests (see manifest_codec.h).
#include "manifest_codec.h"

#include "store_core.h"

#include <cstring>
#include <string>

namespace djinn::heapstore::internal {

void put_varint(std::vector<uint8_t>& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<uint8_t>(v | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<uint8_t>(v));
}

namespace {

constexpr uint8_t kFull = 'F';
constexpr uint8_t kDelta = 'D';
constexpr uint8_t kFormat = 1;
constexpr uint8_t kTagZero = 0;
constexpr uint8_t kTagPage = 1;

void put_hash(std::vector<uint8_t>& out, const PageHash& h) { out.insert(out.end(), h.bytes.begin(), h.bytes.end()); }

// The next entry's index from the gap after `next` (the previous index + 1), or false when it
// would pass `capacity`.
bool next_index(uint64_t& next, uint64_t gap, uint64_t capacity, uint64_t& index) {
  if (gap >= capacity || next > capacity - 1 - gap) return false;
  index = next + gap;
  next = index + 1;
  return true;
}

}  // namespace

std::vector<uint8_t> encode_full(std::span<const PageRef> pages) {
  std::vector<uint8_t> out;
  out.reserve(12 + pages.size() * 34);
  out.push_back(kFull);
  out.push_back(kFormat);
  put_varint(out, pages.size());
  uint64_t next = 0;
  for (const PageRef& p : pages) {
    put_varint(out, p.index - next);
    next = p.index + 1;
    put_hash(out, p.hash);
  }
  return out;
}

std::vector<uint8_t> encode_delta(std::span<const DeltaEntry> delta) {
  std::vector<uint8_t> out;
  out.reserve(12 + delta.size() * 35);
  out.push_back(kDelta);
  out.push_back(kFormat);
  put_varint(out, delta.size());
  uint64_t next = 0;
  for (const DeltaEntry& e : delta) {
    put_varint(out, e.index - next);
    next = e.index + 1;
    out.push_back(e.zero ? kTagZero : kTagPage);
    if (!e.zero) put_hash(out, e.hash);
  }
  return out;
}

Result<DecodedManifest> decode_manifest(std::span<const uint8_t> blob, uint64_t capacity, std::string_view what) {
  auto corrupt = [&](const std::string& why) {
    return data_loss("the stored manifest of " + std::string(what) + " is corrupt: " + why);
  };
  Reader in(blob);
  uint8_t kind = 0, format = 0;
  if (!in.byte(kind) || !in.byte(format)) return corrupt("it is shorter than its header");
  if ((kind != kFull && kind != kDelta) || format != kFormat) return corrupt("unknown format");
  uint64_t count = 0;
  if (!in.varint(count)) return corrupt("no entry count");
  // Each entry takes at least its gap and its hash (full) or its gap and tag (delta), so a count
  // beyond that is corrupt, not an allocation.
  const size_t min_entry = kind == kFull ? 1 + sizeof(PageHash::bytes) : 2;
  if (count > in.left() / min_entry || count > capacity) return corrupt(std::to_string(count) + " entries cannot fit");
  DecodedManifest out;
  out.full = kind == kFull;
  if (out.full) {
    out.pages.reserve(count);
  } else {
    out.delta.reserve(count);
  }
  uint64_t next = 0;
  for (uint64_t i = 0; i < count; ++i) {
    uint64_t gap = 0, index = 0;
    if (!in.varint(gap)) return corrupt("entry " + std::to_string(i) + " is cut short");
    if (!next_index(next, gap, capacity, index)) {
      return corrupt("entry " + std::to_string(i) + " lies beyond the capacity of " + std::to_string(capacity) + " pages");
    }
    if (out.full) {
      PageRef ref{index, {}};
      if (!in.hash(ref.hash)) return corrupt("entry " + std::to_string(i) + " is cut short");
      out.pages.push_back(ref);
    } else {
      DeltaEntry e{index, false, {}};
      uint8_t tag = 0;
      if (!in.byte(tag) || (tag != kTagZero && tag != kTagPage)) return corrupt("entry " + std::to_string(i) + " has no valid tag");
      e.zero = tag == kTagZero;
      if (!e.zero && !in.hash(e.hash)) return corrupt("entry " + std::to_string(i) + " is cut short");
      out.delta.push_back(e);
    }
  }
  if (in.left() != 0) return corrupt(std::to_string(in.left()) + " bytes follow the last entry");
  return out;
}

PageList apply_delta(const PageList& base, std::span<const DeltaEntry> delta) {
  PageList out;
  out.reserve(base.size() + delta.size());
  size_t i = 0, j = 0;
  while (i < base.size() || j < delta.size()) {
    if (j == delta.size() || (i < base.size() && base[i].index < delta[j].index)) {
      out.push_back(base[i++]);
      continue;
    }
    const DeltaEntry& e = delta[j++];
    if (i < base.size() && base[i].index == e.index) ++i;
    if (!e.zero) out.push_back(PageRef{e.index, e.hash});
  }
  return out;
}

std::vector<DeltaEntry> merge_deltas(std::span<const DeltaEntry> older, std::span<const DeltaEntry> newer) {
  std::vector<DeltaEntry> out;
  out.reserve(older.size() + newer.size());
  size_t i = 0, j = 0;
  while (i < older.size() || j < newer.size()) {
    if (j == newer.size() || (i < older.size() && older[i].index < newer[j].index)) {
      out.push_back(older[i++]);
    } else {
      if (i < older.size() && older[i].index == newer[j].index) ++i;
      out.push_back(newer[j++]);
    }
  }
  return out;
}

}  // namespace djinn::heapstore::internal

namespace djinn::heapstore {

namespace {
constexpr std::string_view kManifestMagic = "DJHM";
}  // namespace

std::vector<uint8_t> manifest_to_bytes(const Manifest& manifest) {
  std::vector<uint8_t> out(kManifestMagic.begin(), kManifestMagic.end());
  const VersionInfo& v = manifest.info;
  for (uint64_t n : {v.version, v.parent, uint64_t{v.page_size}, v.capacity_pages, v.pages, v.pages_written,
                     static_cast<uint64_t>(v.created_unix_ms), uint64_t{manifest.record.size()}}) {
    internal::put_varint(out, n);
  }
  out.insert(out.end(), manifest.record.begin(), manifest.record.end());
  std::vector<uint8_t> pages = internal::encode_full(manifest.pages);
  out.insert(out.end(), pages.begin(), pages.end());
  return out;
}

Result<Manifest> manifest_from_bytes(std::span<const uint8_t> bytes) {
  auto bad = [](const std::string& why) { return invalid_argument("not a heap manifest: " + why); };
  if (bytes.size() < kManifestMagic.size() ||
      !std::equal(kManifestMagic.begin(), kManifestMagic.end(), bytes.begin())) {
    return bad("it does not start with \"DJHM\"");
  }
  internal::Reader in(bytes.subspan(kManifestMagic.size()));
  uint64_t n[8];
  for (uint64_t& x : n) {
    if (!in.varint(x)) return bad("its header is cut short");
  }
  // The store's own limits, so that nothing sized from these numbers can be made huge.
  for (const Status& st : {internal::check_page_size(n[2]), internal::check_capacity(n[3])}) {
    if (!st.ok()) return bad(st.message());
  }
  Manifest m;
  m.info = VersionInfo{n[0], n[1], static_cast<uint32_t>(n[2]), n[3], n[4], n[5], static_cast<int64_t>(n[6])};
  if (n[7] > in.left()) return bad("its record of " + std::to_string(n[7]) + " bytes is cut short");
  std::span<const uint8_t> record = bytes.subspan(bytes.size() - in.left(), n[7]);
  m.record.assign(record.begin(), record.end());
  Result<internal::DecodedManifest> pages = internal::decode_manifest(
      bytes.subspan(bytes.size() - in.left() + n[7]), m.info.capacity_pages, "a received manifest");
  if (!pages.ok()) return bad(pages.status().message());
  if (!pages->full) return bad("its pages are a delta, not a whole version");
  if (pages->pages.size() != m.info.pages) {
    return bad("it lists " + std::to_string(pages->pages.size()) + " pages and says it has " + std::to_string(m.info.pages));
  }
  m.pages = std::move(pages->pages);
  return m;
}

}  // namespace djinn::heapstore

