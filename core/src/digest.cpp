#include "djinn/core/digest.h"

#include <xxhash.h>

namespace djinn {

Digest128 digest128(std::string_view bytes) {
  XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
  return Digest128{h.low64, h.high64};
}

std::string to_hex(const Digest128& d) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(32, '0');
  for (int i = 0; i < 16; ++i) {
    out[15 - i] = kDigits[(d.hi >> (4 * i)) & 0xf];
    out[31 - i] = kDigits[(d.lo >> (4 * i)) & 0xf];
  }
  return out;
}

}  // namespace djinn
