// Digests: a 128-bit one (XXH3) for keying tables by strings that may be long, and the public
// reference of a secret number.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace djinn {

// A 128-bit digest (XXH3) for keying tables by strings that may be long, such as idempotency
// keys: a lookup hashes and compares 16 bytes, and two different keys share a digest about as
// often as two random 128-bit values are equal. Not a cryptographic hash: use it only where a
// caller gains nothing by making two keys collide.
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

// The public reference of a secret 64-bit number, such as a lease id, which lets whoever knows it
// renew or cancel the lease: BLAKE2b of its 8 little-endian bytes (personal "djinn.public.ref"),
// cut to 64 bits. One-way, so events and topics that anyone on the bus may read name a lease by
// its reference, and its holder, who knows the id, recognises it; the id cannot be recovered.
uint64_t public_ref(uint64_t secret);
// public_ref as 16 lowercase hex digits, for event kinds and keys.
std::string public_ref_hex(uint64_t secret);

// A fresh secret id (a capability: whoever knows it may use what it names), drawn at random so
// that ids cannot be guessed from one another: nonzero, and below 2^63 so SQLite keeps it as is.
uint64_t random_secret_id();

}  // namespace djinn
