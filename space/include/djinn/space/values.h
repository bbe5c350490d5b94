// Large values of the space (DESIGN §2, §6): content-addressed chunks (BLAKE2b-256), a manifest per
// value (its chunks in order and its size) named by the hash of the manifest, reference counts from
// entries, and garbage collection of what nothing refers to. This is where checkpoints and plugin
// binaries live.
//
// Storage: a chunk of up to 64 KiB (a heap's page) is a record appended to a pack file under
// <dir>/chunks/packs/; a larger one is a file <dir>/chunks/<2 hex>/<64 hex>; a manifest is a file
// <dir>/values/<2 hex>/<64 hex>. Files are written to a temporary name and renamed; a chunk is
// stored once whatever refers to it. A value is durable when put_value returns: it fdatasyncs the
// packs and chunk files holding chunks it names that are not yet synced (many files: one syncfs),
// then writes its manifest the same way. A chunk found at open that no manifest names may have been
// torn by a crash and counts as absent until it is put again; a pack's torn tail is ignored. The
// collector unlinks chunk files, deletes packs nothing is read from, and compacts packs mostly dead.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "djinn/core/model.h"
#include "djinn/core/status.h"

namespace djinn::space {

using ContentHash = std::array<uint8_t, 32>;

inline constexpr size_t kMaxChunkBytes = 4u << 20;
inline constexpr size_t kDefaultChunkBytes = 1u << 20;
// Chunks a value names: as many hashes as fit in one space.putValue call (kMaxCallBytes, at 40
// bytes a hash). 120 GiB of 1 MiB chunks, or 480 MiB of 4 KiB pages.
inline constexpr size_t kMaxValueChunks = 120'000;
// space.hasChunks and space.getChunks answer for at most this many hashes a call.
inline constexpr size_t kMaxHashesPerCall = 10'000;
// The largest call djinn-space takes: a whole chunk and room for the rest of its message.
inline constexpr size_t kMaxCallBytes = kMaxChunkBytes + (1u << 20);
// space.getChunks answers with at most this many bytes of chunks a call (at least one chunk).
inline constexpr size_t kMaxChunksReplyBytes = kMaxPageReplyBytes;
// An entry field of type bytes holding kValueRefMagic + a 32-byte value id refers to that value.
inline constexpr std::string_view kValueRefMagic = "DJV1";

ContentHash hash_bytes(std::span<const uint8_t> data);
std::string to_hex(const ContentHash& hash);
std::optional<ContentHash> hash_from_bytes(std::span<const uint8_t> bytes);  // exactly 32 bytes

// The field value that refers to a value, and the value id a field refers to (nullopt: an
// ordinary field).
Value value_ref(const ContentHash& value_id);
std::optional<ContentHash> value_ref_of(const Value& field);
// Every value an entry refers to, each once.
std::vector<ContentHash> value_refs_of(const Entry& entry);

struct Manifest {
  uint64_t size = 0;
  std::vector<ContentHash> chunks;
  std::vector<uint32_t> chunk_sizes;
};

// A value's id: the hash of its manifest's encoding, so a reader can check a manifest it was given
// against the id it asked for.
ContentHash value_id_of(const Manifest& manifest);

struct ValueStoreOptions {
  std::string dir;  // created if missing
  // How long an unreferenced value or chunk is kept (an upload in progress, a value written just
  // before the entry that refers to it).
  std::chrono::milliseconds grace{std::chrono::minutes(10)};
  std::chrono::milliseconds gc_interval{std::chrono::seconds(30)};  // 0: no collector thread
  // The most bytes of chunks and manifests held (0: no limit); a put past it is refused with
  // RESOURCE_EXHAUSTED and stores nothing. What collection and compaction free counts at once.
  uint64_t max_bytes = 0;
  // False: the collector thread starts only at start_collector(), once the owner has taken its
  // references (a space loading its entries); until then every value looks unreferenced.
  bool start_collector = true;
  // Runs before each collection, which is skipped when it fails: makes durable what dropped
  // references so far. An owner whose references end in commits made without an fsync (a space's
  // lease cancels) syncs them here, or a power loss could bring back an entry naming a value
  // already collected.
  std::function<Status()> before_collect;
};

struct ValueStats {
  uint64_t values = 0;
  uint64_t chunks = 0;
  uint64_t chunk_bytes = 0;
  uint64_t manifest_bytes = 0;
  uint64_t max_bytes = 0;  // ValueStoreOptions::max_bytes
};

// Thread-safe. Writes of chunk files run concurrently; appends to packs one at a time; the
// bookkeeping is under one mutex.
class ValueStore {
 public:
  static Result<std::unique_ptr<ValueStore>> open(ValueStoreOptions options);
  ~ValueStore();
  ValueStore(const ValueStore&) = delete;
  ValueStore& operator=(const ValueStore&) = delete;

  // Stores `data` under `hash` (durable once a value names it: put_value);
  // INVALID_ARGUMENT when the hash is not the data's or the size is out of 1..kMaxChunkBytes;
  // RESOURCE_EXHAUSTED when it would take the store past max_bytes.
  // Returns false when it was stored already.
  Result<bool> put_chunk(const ContentHash& hash, std::span<const uint8_t> data);
  // The same for data whose hash the caller computed itself just now (nothing to check).
  Result<bool> put_chunk_hashed(const ContentHash& hash, std::span<const uint8_t> data);
  bool has_chunk(const ContentHash& hash) const;
  // Its size, when stored (as has_chunk).
  std::optional<uint64_t> chunk_size(const ContentHash& hash) const;
  // Reads a chunk into `out` (resized); NOT_FOUND when unknown; DATA_LOSS when its file no longer
  // matches its hash.
  Status get_chunk(const ContentHash& hash, std::vector<uint8_t>& out) const;
  // Reads a chunk through `sink`, which is given its size first and returns where to put it.
  Status read_chunk(const ContentHash& hash, const std::function<uint8_t*(size_t size)>& sink) const;

  // Stores a manifest of stored chunks; NOT_FOUND naming the first missing chunk, INVALID_ARGUMENT
  // when the size does not add up, RESOURCE_EXHAUSTED past max_bytes. Returns the value id.
  Result<ContentHash> put_value(uint64_t size, std::span<const ContentHash> chunks);
  Result<Manifest> get_value(const ContentHash& value_id) const;
  bool has_value(const ContentHash& value_id) const;

  // Starts the collector thread (every gc_interval) if it is not running.
  void start_collector();

  // References from entries: a value with references is never collected.
  void ref(const ContentHash& value_id);
  void unref(const ContentHash& value_id);
  // A reference taken if the value is stored (true), in one step: what a write checks it keeps
  // until its entry holds its own (unref then), however long it waits to be written.
  bool ref_if_stored(const ContentHash& value_id);

  // Deletes values and chunks unreferenced for longer than the grace period, and compacts packs
  // mostly dead; returns how many values, chunks and emptied packs went. The collector thread calls
  // it every gc_interval.
  size_t collect();
  // For tests: collect with no grace period.
  size_t collect_now(std::chrono::milliseconds grace);
  ValueStats stats() const;

 private:
  struct Impl;
  explicit ValueStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace djinn::space
