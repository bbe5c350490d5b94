// Content hashes of pages (DESIGN §2 ContentHash: BLAKE2b-256) and the zero-page test that decides
// which pages are elided.
#include <sodium.h>

#include <cstring>

#include "djinn/heapstore/page_store.h"

namespace djinn::heapstore {

PageHash PageHash::of(std::span<const std::byte> page) {
  // libsodium must be initialised before its first use; sodium_init is idempotent and thread-safe.
  static const bool initialised = sodium_init() >= 0;
  (void)initialised;
  PageHash hash;
  crypto_generichash(hash.bytes.data(), hash.bytes.size(),
                     reinterpret_cast<const unsigned char*>(page.data()), page.size(), nullptr, 0);
  return hash;
}

std::string PageHash::hex() const {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(bytes.size() * 2, '0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = kDigits[bytes[i] >> 4];
    out[2 * i + 1] = kDigits[bytes[i] & 0xf];
  }
  return out;
}

std::optional<PageHash> PageHash::from_hex(std::string_view hex) {
  PageHash hash;
  if (hex.size() != hash.bytes.size() * 2) return std::nullopt;
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < hash.bytes.size(); ++i) {
    int hi = digit(hex[2 * i]);
    int lo = digit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    hash.bytes[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return hash;
}

bool is_zero_page(std::span<const std::byte> page) {
  const std::byte* p = page.data();
  size_t n = page.size();
  // Word at a time; most non-zero pages differ within the first word, most zero pages are long.
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    uint64_t w[4];
    std::memcpy(w, p + i, sizeof w);
    if ((w[0] | w[1] | w[2] | w[3]) != 0) return false;
  }
  for (; i < n; ++i) {
    if (p[i] != std::byte{0}) return false;
  }
  return true;
}

}  // namespace djinn::heapstore
