#include "djinn/core/digest.h"

#include <sodium.h>
#include <xxhash.h>

#include <array>
#include <cstring>

namespace djinn {

Digest128 digest128(std::string_view bytes) {
  XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
  return Digest128{h.low64, h.high64};
}

namespace {
constexpr char kDigits[] = "0123456789abcdef";
}  // namespace

std::string to_hex(const Digest128& d) {
  std::string out(32, '0');
  for (int i = 0; i < 16; ++i) {
    out[15 - i] = kDigits[(d.hi >> (4 * i)) & 0xf];
    out[31 - i] = kDigits[(d.lo >> (4 * i)) & 0xf];
  }
  return out;
}

uint64_t public_ref(uint64_t secret) {
  // Personalisation, not a key: it costs no extra compression (a key is hashed as a block of its own).
  static constexpr std::array<unsigned char, crypto_generichash_blake2b_PERSONALBYTES> kPersonal = {
      'd', 'j', 'i', 'n', 'n', '.', 'p', 'u', 'b', 'l', 'i', 'c', '.', 'r', 'e', 'f'};
  std::array<unsigned char, 8> in;
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<unsigned char>(secret >> (8 * i));
  std::array<unsigned char, 8> out{};
  crypto_generichash_blake2b_salt_personal(out.data(), out.size(), in.data(), in.size(), nullptr, 0, nullptr,
                                           kPersonal.data());
  uint64_t ref = 0;
  for (size_t i = 0; i < out.size(); ++i) ref |= static_cast<uint64_t>(out[i]) << (8 * i);
  return ref;
}

uint64_t random_secret_id() {
  for (;;) {
    uint64_t id = 0;
    randombytes_buf(&id, sizeof id);
    id &= static_cast<uint64_t>(INT64_MAX);
    if (id != 0) return id;
  }
}

std::string public_ref_hex(uint64_t secret) {
  uint64_t ref = public_ref(secret);
  std::string out(16, '0');
  for (int i = 0; i < 16; ++i) out[15 - i] = kDigits[(ref >> (4 * i)) & 0xf];
  return out;
}

}  // namespace djinn
