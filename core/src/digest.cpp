#include "djinn/core/digest.h"

#include <xxhash.h>

namespace djinn {

Digest128 digest128(std::string_view bytes) {
  XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
  return Digest128{h.low64, h.high64};
}

}  // namespace djinn
