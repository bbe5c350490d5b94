// Little-endian integers in byte buffers, for the on-disk records of the stores.
#pragma once

#include <cstdint>

namespace djinn {

// Writes the low `bytes` bytes of `v` at `out`, least significant first.
inline void put_le(uint8_t* out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}

// Reads `bytes` bytes at `in`, least significant first.
inline uint64_t get_le(const uint8_t* in, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t{in[i]} << (8 * i);
  return v;
}

}  // namespace djinn
