// Pack files: where the page store keeps page contents. Pages are appended (compressed or raw, no
// per-page header: the SQLite index says where each page is and the page's hash checks it) and
// never rewritten; space of pages no longer referenced is returned by punching holes, and a pack
// file holding no referenced page is deleted. Appends beyond the length the index last recorded
// as committed are a torn tail after a crash and are cut off when the store opens.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "djinn/core/status.h"

namespace djinn::heapstore::internal {

inline constexpr uint32_t kFlagZstd = 1;
// `check` holds the checksum of the stored bytes (pages stored before checksums were kept have
// none and are checked against their BLAKE2b hash instead).
inline constexpr uint32_t kFlagChecked = 2;
// Pack files are numbered 1, 2, 3 … up to this (the index keeps the number in 32 bits).
inline constexpr uint64_t kMaxPackId = UINT32_MAX;

// Where a stored page lives and how to read it back.
struct Location {
  uint64_t pack = 0;
  uint64_t offset = 0;
  uint32_t length = 0;  // bytes in the pack
  uint32_t size = 0;    // bytes of the page once decoded
  uint32_t flags = 0;   // kFlagZstd, kFlagChecked
  uint64_t check = 0;   // stored_checksum of the bytes in the pack, with kFlagChecked
  uint64_t end() const { return offset + length; }
  // The same bytes in the same pack (another copy of a page is elsewhere).
  bool same_place(const Location& other) const { return pack == other.pack && offset == other.offset; }
};

// What a read checks stored bytes against: XXH3-64, computed when the page is appended. A page's
// BLAKE2b hash proves its content to anyone (imports check it) but costs about 4 us per 4 KiB
// here; on the way back from this store's own disk the checksum catches what the hash would (a
// torn, stale or misplaced block) in a twentieth of the time.
uint64_t stored_checksum(std::span<const std::byte> stored);

// Appends `page` to `out` as it is stored: zstd at `level` when that makes it smaller, raw
// otherwise (and always with level 0). Returns the stored length and flags.
struct Encoded {
  uint32_t length = 0;
  uint32_t flags = 0;
};
Encoded encode_page(std::span<const std::byte> page, int level, std::vector<std::byte>& out);
// Decodes stored bytes into `out` (exactly the page's size). DATA_LOSS when they do not decode.
Status decode_page(const Location& where, std::span<const std::byte> stored, std::span<std::byte> out);
// The most bytes a page of `size` bytes can take in a pack stored with `flags`: its size raw,
// zstd's bound for that size compressed. A location that claims more is corrupt, and reading it
// would allocate what it claims.
uint64_t max_stored_length(uint32_t size, uint32_t flags);

class PackFile {
 public:
  // `view_bytes`: how much of the file a view maps (the longest a pack grows), at least its size.
  PackFile(uint64_t id, int fd, std::filesystem::path path, uint64_t view_bytes = 0)
      : id_(id), fd_(fd), path_(std::move(path)), view_bytes_(view_bytes) {}
  ~PackFile();
  PackFile(const PackFile&) = delete;
  PackFile& operator=(const PackFile&) = delete;

  uint64_t id() const { return id_; }
  const std::filesystem::path& path() const { return path_; }
  Status write_at(uint64_t offset, std::span<const std::byte> bytes);
  // Writes `parts` one after the other from `offset` (pwritev: no copy into one buffer first).
  Status write_parts_at(uint64_t offset, std::span<const std::span<const std::byte>> parts);
  Status read_at(uint64_t offset, std::span<std::byte> out) const;  // DATA_LOSS when short
  // [offset, offset + length) of the file as read-only memory shared with the page cache, for
  // reads that hand bytes on without a copy (UFFDIO_COPY straight from it); null when those bytes
  // are not all in the file or the file cannot be mapped (read_at then says why). The file is
  // mapped once, at its first view, and the mapping lives as long as this object: a pack is
  // removed only under the store's exclusive reclaim lock, while views are used under its shared
  // one. A file cut shorter behind the store's back makes a later access raise SIGBUS.
  const std::byte* view(uint64_t offset, uint64_t length) const;
  // Makes every byte written so far durable. Syncs run one at a time, and a failed one fails the
  // pack for good: Linux reports a lost write-back to one fdatasync only, so a later one would
  // return 0 with pages lost. A failed pack takes no more appends.
  Status sync();
  bool failed() const { return failed_.load(); }
  // Starts writing back [offset, offset + length) without waiting, so the commit's fdatasync
  // finds less to do; appends under 256 KiB wait to be started with the next ones, until a
  // megabyte has gathered.
  void start_writeback(uint64_t offset, uint64_t length);
  // Frees the file system blocks of [offset, offset + length) (block-aligned); best effort.
  void punch_hole(uint64_t offset, uint64_t length);

 private:
  uint64_t id_;
  int fd_;
  std::filesystem::path path_;
  uint64_t view_bytes_;
  mutable std::atomic<uint64_t> known_size_{0};  // the file is at least this long
  mutable std::mutex view_mu_;                   // guards mapping the file
  mutable std::atomic<const std::byte*> view_{nullptr};
  mutable uint64_t view_length_ = 0;  // set before view_ is published
  mutable bool view_failed_ = false;  // view_mu_
  std::mutex sync_mu_;                   // one sync at a time
  std::atomic<bool> failed_{false};      // a sync failed
  std::mutex writeback_mu_;              // guards the two below
  uint64_t writeback_from_ = 0, writeback_to_ = 0;  // written, write-back not started yet
};

struct Range {
  uint64_t pack = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
};

// The pack files of one store: appends at the end of the current one, reads from any.
class PackSet {
 public:
  // Opens the pack files in `dir` that `committed` (the index's record of each pack's committed
  // length) lists. A file the index does not know is an uncommitted leftover and a longer file
  // has a torn tail, but open changes nothing on disk (nor creates `dir`): the index they were
  // judged by may yet turn out corrupt. clean_up deletes the one and cuts the other.
  static Result<std::unique_ptr<PackSet>> open(const std::filesystem::path& dir,
                                               const std::map<uint64_t, uint64_t>& committed,
                                               uint64_t max_file_bytes);
  // Once the index has been checked: deletes the leftovers, cuts the torn tails to their
  // committed length, and creates `dir` when missing. Before any append.
  Status clean_up();

  struct Reservation {
    std::shared_ptr<PackFile> file;
    uint64_t offset = 0;
  };
  // Reserves `length` bytes at the end of the current pack (starting a new pack when the current
  // one is full). The caller writes them with PackFile::write_at.
  Result<Reservation> reserve(uint64_t length);
  std::shared_ptr<PackFile> get(uint64_t id) const;
  // The pack new appends go to (0 before the first append of a new store).
  uint64_t current() const;
  std::vector<uint64_t> ids() const;
  // Returns the space of `ranges` to the file system (whole blocks inside each coalesced range);
  // best effort: space that cannot be punched is only lost, never read.
  void punch(std::vector<Range> ranges);
  // Deletes a pack file (never the current one).
  void remove(uint64_t id);

 private:
  PackSet(std::filesystem::path dir, uint64_t max_file_bytes) : dir_(std::move(dir)), max_file_bytes_(max_file_bytes) {}
  Result<std::shared_ptr<PackFile>> create_locked(uint64_t id);

  std::filesystem::path dir_;
  uint64_t max_file_bytes_;
  std::vector<std::filesystem::path> leftovers_;          // for clean_up
  std::vector<std::pair<uint64_t, uint64_t>> torn_;       // pack, committed length; for clean_up
  mutable std::mutex mu_;  // guards files_, current_, end_
  std::map<uint64_t, std::shared_ptr<PackFile>> files_;
  uint64_t current_ = 0;
  uint64_t end_ = 0;  // the end of the current pack's reserved bytes
};

std::filesystem::path pack_path(const std::filesystem::path& dir, uint64_t id);
// The pack files (pack-N.dat) in `dir` by number, whatever any index says; none when `dir` is
// missing.
Result<std::map<uint64_t, std::filesystem::path>> find_pack_files(const std::filesystem::path& dir);

}  // namespace djinn::heapstore::internal
