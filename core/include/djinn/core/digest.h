// A 128-bit digest (XXH3) for keying tables by strings that may be long, such as idempotency
// keys: a lookup hashes and compares 16 bytes, and two different keys share a digest about as
// often as two random 128-bit values are equal. Not a cryptographic hash: use it only where a
// caller gains nothing by making two keys collide.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace djinn {

struct Digest128 {
  uint64_t lo = 0;
  uint64_t hi = 0;
  bool operator==(const Digest128&) const = default;
};

struct Digest128Hash {
  size_t operator()(const Digest128& d) const { return static_cast<size_t>(d.lo); }
};

Digest128 digest128(std::string_view bytes);
// 32 lowercase hex digits, high half first.
std::string to_hex(const Digest128& d);

}  // namespace djinn
