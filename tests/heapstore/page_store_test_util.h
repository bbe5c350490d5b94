// Helpers for the page store's tests: deterministic page contents, a model of a heap's pages to
// check manifests and contents against, and unwrapping of Results with their Status in the message.
#pragma once

#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "djinn/heapstore/page_store.h"

namespace djinn::heapstore::testing {

using Bytes = std::vector<std::byte>;

// A page whose content is a function of `key` alone; `compressible` pages repeat a short pattern.
inline Bytes page_of(uint64_t key, uint32_t size, bool compressible = false) {
  Bytes out(size);
  std::mt19937_64 gen(key * 0x9E3779B97F4A7C15ull + 1);
  if (compressible) {
    uint64_t word = gen() | 1;
    for (size_t i = 0; i < size; i += 8) std::memcpy(out.data() + i, &word, std::min<size_t>(8, size - i));
    out[0] = std::byte{static_cast<uint8_t>(key)};
  } else {
    for (size_t i = 0; i < size; i += 8) {
      uint64_t word = gen() | 1;  // never a zero page
      std::memcpy(out.data() + i, &word, std::min<size_t>(8, size - i));
    }
  }
  return out;
}

template <class T>
T must(Result<T> r) {
  REQUIRE_MESSAGE(r.ok(), r.status().to_string());
  return std::move(r).value();
}

inline void must_ok(const Status& s) { REQUIRE_MESSAGE(s.ok(), s.to_string()); }

// What a heap holds: index → content (zero pages absent).
using Model = std::map<uint64_t, Bytes>;

// Checks that `version` holds exactly `model`: the manifest lists its pages ascending with their
// hashes, and every page reads back bit-exact.
inline void check_version(const PageStore& store, uint64_t version, const Model& model) {
  Manifest m = must(store.manifest(version));
  REQUIRE(m.pages.size() == model.size());
  CHECK(m.info.pages == model.size());
  size_t i = 0;
  for (const auto& [index, content] : model) {
    const PageRef& ref = m.pages[i++];
    REQUIRE(ref.index == index);
    REQUIRE(ref.hash == PageHash::of(content));
    Bytes out(content.size());
    must_ok(store.read_page(ref.hash, out));
    REQUIRE(out == content);
  }
}

}  // namespace djinn::heapstore::testing
