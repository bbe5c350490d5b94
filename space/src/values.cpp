// The value store: chunks (small ones appended to pack files, others a file each) and manifest
// files named by their BLAKE2b-256 hashes, reference counts in memory (rebuilt from the manifests
// and the entries at open), and the collector.
#include "djinn/space/values.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "djinn/core/fault.h"
#include "djinn/core/files.h"
#include "djinn/core/little_endian.h"
#include "djinn/core/log.h"

namespace djinn::space {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr char kManifestMagic[4] = {'D', 'J', 'V', 'M'};
// Up to this many unsynced chunk files are synced one by one at put_value; more, with one syncfs.
constexpr size_t kSyncEachUpTo = 64;

// Chunks up to this size (a heap's pages) are records appended to pack files: one costs an append
// where a file of its own cost an inode, and creating many small files was most of a checkpoint's
// push. A pack takes appends until it holds kPackRollBytes.
constexpr size_t kPackedChunkMax = 64u << 10;
constexpr uint64_t kPackRollBytes = 64ull << 20;
// A record: magic, the chunk's size (little-endian u32), its hash, an XXH3-64 of its bytes
// (little-endian), then its bytes. Reads check the XXH3, a fifteenth of a BLAKE2b's cost: the
// client checks the name itself, end to end.
constexpr char kPackMagic[4] = {'D', 'J', 'P', 'K'};
constexpr size_t kPackHeaderBytes = 4 + 4 + 32 + 8;

// A pack takes appends while named so. One whose sync failed is renamed NNNNNNNN-OFFSET.sealed,
// OFFSET being how far it was synced: no later start appends to it, nor reads records past that.
constexpr const char* kPackSuffix = ".pack";
constexpr const char* kSealedSuffix = ".sealed";
// A pack of at least kCompactFrom bytes whose live records fill less than kCompactBelow of it is
// compacted: its live records are appended anew and it is deleted. (A smaller one goes only when
// nothing in it is live: compacting it would cost more than the space it wastes.)
constexpr double kCompactBelow = 0.5;
constexpr uint64_t kCompactFrom = 1u << 20;
// A collection looks at this many hash buckets of a table each time it takes the store's lock, so
// puts and asks wait for a slice (well under a millisecond), not for a scan of every chunk (150 ms
// at a million).
constexpr size_t kSweepBuckets = 4096;

uint64_t record_bytes(uint64_t chunk_size) { return kPackHeaderBytes + chunk_size; }

// A sync call's result, or EIO when a test armed `fail_point` (a write-back the disk lost).
template <class Sync>
int sync_unless_failed(std::string_view fail_point, Sync sync) {
  if (DJINN_FAIL_POINT(fail_point)) {
    errno = EIO;
    return -1;
  }
  return sync();
}

// Moves all of `n` bytes at `offset` with ::pread or ::pwrite; false at an error or the end of the
// file.
template <class Io, class Byte>
bool positioned_all(Io io, int fd, Byte* data, size_t n, uint64_t offset) {
  while (n > 0) {
    ssize_t done = io(fd, data, n, static_cast<off_t>(offset));
    if (done < 0 && errno == EINTR) continue;
    if (done <= 0) return false;
    data += done;
    n -= static_cast<size_t>(done);
    offset += static_cast<uint64_t>(done);
  }
  return true;
}
bool pwrite_all(int fd, const uint8_t* data, size_t n, uint64_t offset) {
  return positioned_all(::pwrite, fd, data, n, offset);
}
bool pread_all(int fd, uint8_t* out, size_t n, uint64_t offset) {
  return positioned_all(::pread, fd, out, n, offset);
}

struct HashOf {
  size_t operator()(const ContentHash& h) const {
    size_t v;
    std::memcpy(&v, h.data(), sizeof v);
    return v;
  }
};

std::optional<ContentHash> from_hex(std::string_view text) {
  if (text.size() != 64) return std::nullopt;
  ContentHash h{};
  for (size_t i = 0; i < 32; ++i) {
    auto nib = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    };
    int a = nib(text[2 * i]), b = nib(text[2 * i + 1]);
    if (a < 0 || b < 0) return std::nullopt;
    h[i] = static_cast<uint8_t>(a << 4 | b);
  }
  return h;
}

Status errno_status(const std::string& what) {
  return internal_error(what + ": " + std::strerror(errno));
}

// Writes `data` to a temporary file beside `path` and returns its name; with `sync` the content is
// fdatasync'd. Renamed to `path`, the file is there whole or not at all.
Result<fs::path> write_temp(const fs::path& path, std::span<const uint8_t> data, bool sync) {
  fs::path dir = path.parent_path();
  thread_local std::mt19937_64 rng{std::random_device{}()};
  fs::path tmp = dir / (".tmp-" + std::to_string(rng()));
  // The fan-out directories are made (and synced into their parents) when the store opens.
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return errno_status("create " + tmp.string());
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      Status st = errno_status("write " + tmp.string());
      ::close(fd);
      ::unlink(tmp.c_str());
      return st;
    }
    off += static_cast<size_t>(n);
  }
  // Unsynced (a chunk): its write-back starts now, so the value's sync finds it done (the sync of a
  // 64 MiB value's chunks went from 47 to 9 ms).
  if (!sync) (void)::sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
  if (sync && ::fdatasync(fd) != 0) {
    Status st = errno_status("fdatasync " + tmp.string());
    ::close(fd);
    ::unlink(tmp.c_str());
    return st;
  }
  // Checked: on some file systems close reports (and so consumes) a write-back error.
  if (::close(fd) != 0) {
    Status st = errno_status("close " + tmp.string());
    ::unlink(tmp.c_str());
    return st;
  }
  DJINN_CRASH_POINT("space.values.before_rename");
  return tmp;
}

// The fan-out directories of chunk files and manifests: "00" to "ff".
const std::vector<std::string>& fan_out_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (int i = 0; i < 256; ++i) {
      char hex[3];
      std::snprintf(hex, sizeof hex, "%02x", i);
      out.emplace_back(hex);
    }
    return out;
  }();
  return names;
}

// Whether the running kernel is at least major.minor.
bool kernel_at_least(int major, int minor) {
  struct utsname u {};
  if (::uname(&u) != 0) return false;
  int got_major = 0, got_minor = 0;
  if (std::sscanf(u.release, "%d.%d", &got_major, &got_minor) != 2) return false;
  return got_major > major || (got_major == major && got_minor >= minor);
}

Status rename_into_place(const fs::path& tmp, const fs::path& path) {
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    Status st = errno_status("rename " + tmp.string());
    ::unlink(tmp.c_str());
    return st;
  }
  return Status::Ok();
}

Status read_whole(const fs::path& path, const std::function<uint8_t*(size_t)>& sink, const std::string& what) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return not_found(what + " is not stored");
    return errno_status("open " + path.string());
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    Status s = errno_status("stat " + path.string());
    ::close(fd);
    return s;
  }
  size_t size = static_cast<size_t>(st.st_size);
  uint8_t* out = sink(size);
  size_t off = 0;
  while (off < size) {
    ssize_t n = ::read(fd, out + off, size - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      Status s = n < 0 ? errno_status("read " + path.string()) : data_loss(path.string() + " is shorter than its size");
      ::close(fd);
      return s;
    }
    off += static_cast<size_t>(n);
  }
  ::close(fd);
  return Status::Ok();
}

constexpr uint64_t manifest_size(size_t chunks) { return 4 + 4 + 8 + chunks * 36; }

std::vector<uint8_t> encode_manifest(uint64_t size, std::span<const ContentHash> chunks, std::span<const uint32_t> sizes) {
  std::vector<uint8_t> out(manifest_size(chunks.size()));
  std::memcpy(out.data(), kManifestMagic, 4);
  uint32_t n = static_cast<uint32_t>(chunks.size());
  std::memcpy(out.data() + 4, &n, 4);
  std::memcpy(out.data() + 8, &size, 8);
  for (size_t i = 0; i < chunks.size(); ++i) {
    std::memcpy(out.data() + 16 + i * 36, chunks[i].data(), 32);
    std::memcpy(out.data() + 16 + i * 36 + 32, &sizes[i], 4);
  }
  return out;
}

std::optional<Manifest> decode_manifest(const std::vector<uint8_t>& bytes) {
  if (bytes.size() < 16 || std::memcmp(bytes.data(), kManifestMagic, 4) != 0) return std::nullopt;
  uint32_t n;
  Manifest m;
  std::memcpy(&n, bytes.data() + 4, 4);
  std::memcpy(&m.size, bytes.data() + 8, 8);
  if (bytes.size() != 16 + size_t{n} * 36) return std::nullopt;
  m.chunks.resize(n);
  m.chunk_sizes.resize(n);
  for (size_t i = 0; i < n; ++i) {
    std::memcpy(m.chunks[i].data(), bytes.data() + 16 + i * 36, 32);
    std::memcpy(&m.chunk_sizes[i], bytes.data() + 16 + i * 36 + 32, 4);
  }
  return m;
}

}  // namespace

ContentHash value_id_of(const Manifest& manifest) {
  return hash_bytes(encode_manifest(manifest.size, manifest.chunks, manifest.chunk_sizes));
}

ContentHash hash_bytes(std::span<const uint8_t> data) {
  ContentHash h{};
  crypto_generichash(h.data(), h.size(), data.data(), data.size(), nullptr, 0);
  return h;
}

std::string to_hex(const ContentHash& hash) {
  static const char* kDigits = "0123456789abcdef";
  std::string out(64, '0');
  for (size_t i = 0; i < 32; ++i) {
    out[2 * i] = kDigits[hash[i] >> 4];
    out[2 * i + 1] = kDigits[hash[i] & 15];
  }
  return out;
}

std::optional<ContentHash> hash_from_bytes(std::span<const uint8_t> bytes) {
  if (bytes.size() != 32) return std::nullopt;
  ContentHash h;
  std::copy(bytes.begin(), bytes.end(), h.begin());
  return h;
}

Value value_ref(const ContentHash& value_id) {
  Value::Bytes b(kValueRefMagic.begin(), kValueRefMagic.end());
  b.insert(b.end(), value_id.begin(), value_id.end());
  return Value(std::move(b));
}

std::optional<ContentHash> value_ref_of(const Value& field) {
  if (field.type() != ValueType::kBytes) return std::nullopt;
  const Value::Bytes& b = field.as_bytes();
  if (b.size() != kValueRefMagic.size() + 32 || !std::equal(kValueRefMagic.begin(), kValueRefMagic.end(), b.begin())) {
    return std::nullopt;
  }
  ContentHash h;
  std::copy(b.begin() + kValueRefMagic.size(), b.end(), h.begin());
  return h;
}

std::vector<ContentHash> value_refs_of(const Entry& entry) {
  std::vector<ContentHash> out;
  for (const auto& [name, value] : entry.fields) {
    if (auto h = value_ref_of(value); h && std::find(out.begin(), out.end(), *h) == out.end()) out.push_back(*h);
  }
  return out;
}

struct ValueStore::Impl {
  struct ChunkInfo {
    uint32_t refs = 0;  // manifests naming it (a manifest naming it twice counts twice)
    uint64_t size = 0;
    Clock::time_point touched;
    bool synced = true;    // a chunk file's content has been fdatasync'd (one in a pack: see synced_locked)
    uint64_t written = 0;  // which write of its file this is (a sync counts for the file it synced only)
    // false: absent until put again (found at open named by no manifest, so maybe torn by a crash;
    // unsynced in a failed sync; damaged; or a placeholder a manifest names but no disk holds)
    bool verified = true;
    uint32_t pack = 0;     // the pack holding its record (0: a file of its own)
    uint64_t offset = 0;   // where its record starts in that pack
  };
  // An open pack file; readers hold it while they read, so a pack deleted meanwhile stays readable.
  struct PackFile {
    int fd = -1;
    fs::path path;  // guarded by mu (a pack whose sync failed is renamed)
    // One sync at a time: a write-back error is reported to one fdatasync of the descriptor only,
    // so a second caller must find the pack failed rather than a clean return.
    std::mutex sync_mu;
    ~PackFile() {
      if (fd >= 0) ::close(fd);
    }
  };
  struct PackInfo {
    std::shared_ptr<PackFile> file;
    uint64_t size = 0;       // bytes appended (records of chunks gone or put twice included)
    uint64_t live = 0;       // bytes of the records chunks are read from
    uint64_t synced_to = 0;  // records starting below this offset have been fdatasync'd
    bool failed = false;     // a sync failed: no appends, no more syncs; its unsynced chunks must be put again
  };
  struct ValueInfo {
    uint32_t refs = 0;  // entries referring to it
    Clock::time_point touched;
    std::vector<ContentHash> chunks;
  };

  ValueStoreOptions options;
  fs::path chunk_dir, value_dir;
  mutable std::mutex mu;  // guards chunks, values, the byte counts, packs, appending, PackFile::path, gc_stop
  std::unordered_map<ContentHash, ChunkInfo, HashOf> chunks;
  std::unordered_map<ContentHash, ValueInfo, HashOf> values;
  uint64_t chunk_bytes = 0;
  uint64_t manifest_bytes = 0;
  uint64_t reserved_bytes = 0;  // of puts under way, counted against options.max_bytes
  fs::path pack_dir;
  std::map<uint32_t, PackInfo> packs;
  uint32_t appending = 0;  // the pack taking appends (0: none yet; the next append opens one)
  uint32_t next_pack = 1;
  // Serialises appends (and compaction's), so a pack holds no hole before a record a value's sync
  // made durable: a crash leaves at most a torn tail, which open stops at.
  std::mutex append_mu;
  // Serialises syncs of chunk files, each with the marking of its outcome: a write-back error is
  // reported to one sync only, so a second one must find the chunk absent rather than a clean
  // return.
  std::mutex file_sync_mu;
  uint64_t file_writes = 0;  // numbers chunk files' writes (ChunkInfo::written)
  // Failed syncs that may have reported any chunk file's error (a syncfs, a directory's): a chunk
  // file written across one must be written again.
  uint64_t syncfs_failures = 0;
  int syncfs_fd = -1;  // chunk_dir, for syncfs
  bool syncfs_reports_errors = false;  // Linux 5.8 on; before, chunk files are synced one by one
  // Bytes a put is about to store, counted against options.max_bytes from the check until the
  // put has counted them itself (settle_locked, in the same hold of the lock) or failed, so
  // concurrent puts cannot pass the limit together, nor be refused for bytes counted twice.
  class Reservation {
   public:
    Reservation() = default;
    Reservation(const Reservation&) = delete;
    Reservation& operator=(const Reservation&) = delete;
    ~Reservation() {
      if (!m_) return;
      std::lock_guard lock(m_->mu);
      settle_locked();
    }
    void settle_locked() {
      if (!m_) return;
      m_->reserved_bytes -= bytes_;
      m_ = nullptr;
    }
    Status take_locked(Impl& m, uint64_t bytes, std::string_view what) {
      uint64_t held = m.chunk_bytes + m.manifest_bytes + m.reserved_bytes;
      if (m.options.max_bytes > 0 && bytes > 0 && held + bytes > m.options.max_bytes) {
        return resource_exhausted(std::string(what) + " of " + std::to_string(bytes) +
                                  " bytes would take the value store past its limit of " +
                                  std::to_string(m.options.max_bytes) + " bytes (--max-value-bytes; " +
                                  std::to_string(held) + " held): values no entry refers to are collected "
                                  "after --value-grace; end the entries naming values no longer needed, or "
                                  "raise the limit");
      }
      m.reserved_bytes += bytes;
      m_ = &m;
      bytes_ = bytes;
      return Status::Ok();
    }

   private:
    Impl* m_ = nullptr;
    uint64_t bytes_ = 0;
  };

  ~Impl() {
    if (syncfs_fd >= 0) ::close(syncfs_fd);
  }
  // Chunk files and manifests a collection chose, until it has unlinked them: a put of one waits,
  // so the unlink cannot take the file it writes.
  std::unordered_set<ContentHash, HashOf> unlinking_chunks, unlinking_values;
  std::condition_variable unlinked_cv;
  std::mutex collect_mu;  // one collection at a time
  std::array<std::mutex, 256> manifest_dir_mu;  // one per fan-out directory of manifests: see write_manifest
  std::condition_variable gc_cv;
  bool gc_stop = false;
  std::thread gc;

  fs::path chunk_path(const ContentHash& h) const {
    std::string hex = to_hex(h);
    return chunk_dir / hex.substr(0, 2) / hex;
  }
  fs::path value_path(const ContentHash& h) const {
    std::string hex = to_hex(h);
    return value_dir / hex.substr(0, 2) / hex;
  }

  // Writes a value's manifest durably: content synced, renamed, its directory synced. Renames and
  // syncs into one directory run one at a time: a directory's write-back error is reported to one
  // sync, so a second manifest synced into it at once could be told 0 while its name was lost.
  Status write_manifest(const ContentHash& id, std::span<const uint8_t> manifest) {
    fs::path path = value_path(id);
    Result<fs::path> tmp = write_temp(path, manifest, true);
    if (!tmp.ok()) return tmp.status();
    std::lock_guard one_at_a_time(manifest_dir_mu[id[0]]);
    DJINN_RETURN_IF_ERROR(rename_into_place(*tmp, path));
    if (DJINN_FAIL_POINT("space.values.manifest_dir_sync")) return internal_error("space.values.manifest_dir_sync (injected)");
    return files::sync_directory(path.parent_path());
  }
  // NNNNNNNN.pack, or NNNNNNNN-OFFSET.sealed for a pack sealed after a failed sync at OFFSET.
  fs::path pack_path(uint32_t id, std::optional<uint64_t> sealed_at = std::nullopt) const {
    char name[64];
    if (sealed_at) {
      std::snprintf(name, sizeof name, "%08u-%llu%s", id, static_cast<unsigned long long>(*sealed_at), kSealedSuffix);
    } else {
      std::snprintf(name, sizeof name, "%08u%s", id, kPackSuffix);
    }
    return pack_dir / name;
  }

  bool synced_locked(const ChunkInfo& c) const {
    return c.pack == 0 ? c.synced : c.offset < packs.at(c.pack).synced_to;
  }

  // Appends a record of `data` to the pack taking appends (append_mu held); returns where it went.
  Result<std::pair<uint32_t, uint64_t>> append_locked(const ContentHash& hash, std::span<const uint8_t> data) {
    uint32_t id = 0;
    uint64_t at = 0;
    std::shared_ptr<PackFile> file;
    {
      std::lock_guard lock(mu);
      if (appending != 0 && packs[appending].size < kPackRollBytes) {
        id = appending;
        at = packs[id].size;
        file = packs[id].file;
      }
    }
    if (!file) {
      id = next_pack++;
      file = std::make_shared<PackFile>();
      file->path = pack_path(id);
      file->fd = ::open(file->path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (file->fd < 0) return errno_status("create " + file->path.string());
      // The pack's name must outlive a crash before any value relies on its records.
      DJINN_RETURN_IF_ERROR(files::sync_directory(pack_dir));
      std::lock_guard lock(mu);
      packs[id].file = file;
      appending = id;
    }
    thread_local std::vector<uint8_t> record;
    record.resize(record_bytes(data.size()));
    uint32_t size = static_cast<uint32_t>(data.size());
    std::memcpy(record.data(), kPackMagic, 4);
    put_le(record.data() + 4, size, 4);
    std::memcpy(record.data() + 8, hash.data(), hash.size());
    put_le(record.data() + 40, XXH3_64bits(data.data(), data.size()), 8);
    std::memcpy(record.data() + kPackHeaderBytes, data.data(), data.size());
    if (!pwrite_all(file->fd, record.data(), record.size(), at)) return errno_status("write " + path_of(*file).string());
    std::lock_guard lock(mu);
    packs.at(id).size = at + record.size();
    return std::make_pair(id, at);
  }

  // Files a chunk's new record at (pack, at) (mu held): the chunk now reads from it, unless a
  // verified copy was stored meanwhile. Returns a file to delete: a torn copy's, found at open.
  // UNAVAILABLE when the pack's sync failed since the append (the record is not to be trusted).
  Result<std::optional<fs::path>> file_record_locked(const ContentHash& hash, uint64_t size, uint32_t pack,
                                                     uint64_t at, bool* fresh) {
    if (packs.at(pack).failed) {
      return unavailable("a sync of " + packs.at(pack).file->path.string() + " failed meanwhile; put the chunk again");
    }
    auto [it, inserted] = chunks.try_emplace(hash);
    ChunkInfo& c = it->second;
    c.touched = Clock::now();
    *fresh = inserted || !c.verified;
    if (!*fresh) return std::optional<fs::path>();  // stored twice at once: this record is dead weight
    std::optional<fs::path> stale;
    if (!inserted) {
      chunk_bytes -= c.size;
      if (c.pack != 0) {
        packs[c.pack].live -= record_bytes(c.size);
      } else {
        stale = chunk_path(hash);
      }
    }
    c.size = size;
    c.pack = pack;
    c.offset = at;
    c.verified = true;
    chunk_bytes += size;
    packs[pack].live += record_bytes(size);
    return stale;
  }

  // Reads the record of a `size`-byte chunk named `hash` at `at` in `file`: its bytes into `out`.
  // kMismatch when the record is not whole or not that chunk's (a write a crash cut short, a
  // changed byte); kUnread when the read itself failed (an I/O error, a file shorter than the
  // record), which says nothing of what is on disk.
  enum class Record { kIntact, kMismatch, kUnread };
  static Record read_record(const PackFile& file, uint64_t at, uint64_t size, const ContentHash& hash, uint8_t* out) {
    uint8_t header[kPackHeaderBytes];
    iovec parts[2] = {{header, kPackHeaderBytes}, {out, size}};
    size_t want = kPackHeaderBytes + size;
    ssize_t got;
    do {
      got = ::preadv(file.fd, parts, 2, static_cast<off_t>(at));
    } while (got < 0 && errno == EINTR);
    if (got < 0 || static_cast<size_t>(got) < want) {
      // A short read is rare (signals, huge records): finish it plainly.
      if (got < 0 || !pread_all(file.fd, header, kPackHeaderBytes, at) ||
          !pread_all(file.fd, out, size, at + kPackHeaderBytes)) {
        return Record::kUnread;
      }
    }
    bool intact = std::memcmp(header, kPackMagic, 4) == 0 && get_le(header + 4, 4) == size &&
                  std::memcmp(header + 8, hash.data(), hash.size()) == 0 && get_le(header + 40, 8) == XXH3_64bits(out, size);
    return intact ? Record::kIntact : Record::kMismatch;
  }
  static bool record_holds(const PackFile& file, uint64_t at, uint64_t size, const ContentHash& hash) {
    std::vector<uint8_t> data(size);
    return read_record(file, at, size, hash, data.data()) == Record::kIntact;
  }

  fs::path path_of(const PackFile& file) const {
    std::lock_guard lock(mu);
    return file.path;
  }

  // Reads the records of one pack at open: every whole record up to the first that is not (a
  // tail a crash cut short). A chunk recorded more than once (put again after a crash or a
  // collection, or copied by a compaction cut short) reads from the first record whose bytes match
  // its name: a record a crash cut short can look whole, and only the copy a value's sync covered
  // is sure to be intact. `checked`: chunks whose record was found intact so; `damaged`: chunks
  // none of whose records is (they count as absent until put again). `trusted`: how far a sealed
  // pack is read (its synced part); others are read whole. Returns whether the pack ends with a
  // whole record (so appends may go on after it).
  Result<bool> load_pack(uint32_t id, const fs::path& path, std::optional<uint64_t> trusted, Clock::time_point now,
                         std::unordered_set<ContentHash, HashOf>& checked,
                         std::unordered_set<ContentHash, HashOf>& damaged) {
    auto file = std::make_shared<PackFile>();
    file->path = path;
    file->fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (file->fd < 0) return errno_status("open " + path.string());
    // What a killed process appended may still be only in the page cache: it is made durable
    // now, since what is loaded counts as synced.
    if (!trusted && ::fdatasync(file->fd) != 0) {
      return errno_status("fdatasync " + path.string() + " at open (the disk lost writes to it: move it aside "
                          "and put its chunks again)");
    }
    struct stat st {};
    if (::fstat(file->fd, &st) != 0) return errno_status("stat " + path.string());
    uint64_t end = static_cast<uint64_t>(st.st_size);
    if (trusted) end = std::min(end, *trusted);
    PackInfo& info = packs[id];
    info.file = file;
    uint64_t at = 0;
    uint8_t header[kPackHeaderBytes];
    while (at + kPackHeaderBytes <= end) {
      if (!pread_all(file->fd, header, kPackHeaderBytes, at)) return errno_status("read " + path.string());
      uint32_t size = static_cast<uint32_t>(get_le(header + 4, 4));
      if (std::memcmp(header, kPackMagic, 4) != 0 || size == 0 || size > kPackedChunkMax ||
          at + record_bytes(size) > end) {
        break;
      }
      ContentHash h;
      std::memcpy(h.data(), header + 8, h.size());
      auto [it, inserted] = chunks.try_emplace(h);
      ChunkInfo& c = it->second;
      bool take = inserted;
      if (!inserted && !checked.count(h)) {
        if (record_holds(*packs.at(c.pack).file, c.offset, c.size, h)) {
          checked.insert(h);
        } else if (record_holds(*file, at, size, h)) {
          checked.insert(h);
          damaged.erase(h);
          packs.at(c.pack).live -= record_bytes(c.size);
          chunk_bytes -= c.size;
          take = true;
        } else {
          damaged.insert(h);
        }
      }
      if (take) {
        c.size = size;
        c.touched = now;
        c.pack = id;
        c.offset = at;
        chunk_bytes += size;
        info.live += record_bytes(size);
      }
      at += record_bytes(size);
    }
    if (at < end) {
      DJINN_LOG(kWarn, "space") << path.string() << ": " << (end - at) << " bytes after its last whole record "
                                << "(a write cut short, or a write-back the disk lost); they are ignored";
    }
    info.size = static_cast<uint64_t>(st.st_size);
    info.synced_to = end;
    if (trusted) info.failed = true;
    next_pack = std::max(next_pack, id + 1);
    return at == end;
  }

  // Copies the live records of pack `id` to another pack (a new one when `id` was taking appends),
  // syncs them, and deletes `id`.
  // Runs on the collector's thread; chunks removed meanwhile leave their copies as dead weight.
  Status compact(uint32_t id) {
    std::lock_guard append(append_mu);
    std::vector<std::pair<ContentHash, ChunkInfo>> live;
    std::shared_ptr<PackFile> from;
    {
      std::lock_guard lock(mu);
      auto p = packs.find(id);
      if (p == packs.end()) return Status::Ok();
      if (id == appending) appending = 0;  // its copies go to a new pack
      from = p->second.file;
      for (auto it = chunks.begin(); it != chunks.end();) {
        if (it->second.pack != id) {
          ++it;
        } else if (!it->second.verified) {
          // Maybe torn (found at open and named by nothing, or in a pack whose sync failed):
          // absent until put again, so not copied.
          it = lose_record_locked(it, p->second);
        } else {
          live.emplace_back(it->first, it->second);
          ++it;
        }
      }
    }
    // Every live record is read and checked before anything is appended, so a damaged one is
    // not spread (nor re-copied at each collection): its chunk counts as absent until put again.
    std::vector<std::vector<uint8_t>> data(live.size());
    std::vector<bool> intact(live.size());
    for (size_t i = 0; i < live.size(); ++i) {
      data[i].resize(live[i].second.size);
      intact[i] = read_record(*from, live[i].second.offset, live[i].second.size, live[i].first, data[i].data()) ==
                  Record::kIntact;
    }
    std::vector<std::pair<uint32_t, uint64_t>> moved(live.size());
    for (size_t i = 0; i < live.size(); ++i) {
      if (!intact[i]) continue;
      Result<std::pair<uint32_t, uint64_t>> at = append_locked(live[i].first, data[i]);
      if (!at.ok()) return at.status();
      moved[i] = *at;
    }
    std::set<uint32_t> targets;
    for (size_t i = 0; i < live.size(); ++i) {
      if (intact[i]) targets.insert(moved[i].first);
    }
    for (uint32_t t : targets) DJINN_RETURN_IF_ERROR(sync_pack(t));
    fs::path old_path;
    size_t damaged = 0;
    {
      std::lock_guard lock(mu);
      PackInfo& old = packs.at(id);
      for (size_t i = 0; i < live.size(); ++i) {
        auto it = chunks.find(live[i].first);
        if (it == chunks.end() || it->second.pack != id || it->second.offset != live[i].second.offset) continue;
        if (!intact[i]) {
          ++damaged;
          lose_record_locked(it, old);
          continue;
        }
        uint64_t bytes = record_bytes(it->second.size);
        it->second.pack = moved[i].first;
        it->second.offset = moved[i].second;
        packs.at(moved[i].first).live += bytes;
      }
      old_path = from->path;
      packs.erase(id);
    }
    if (damaged > 0) {
      DJINN_LOG(kError, "space") << old_path.string() << ": " << damaged << " records damaged on disk; their chunks "
                                 << "count as absent until put again";
    }
    if (::unlink(old_path.c_str()) != 0) return errno_status("unlink " + old_path.string());
    DJINN_LOG(kInfo, "space") << "compacted " << old_path.filename().string() << ": " << (live.size() - damaged)
                              << " chunks moved";
    return Status::Ok();
  }

  // A chunk's record in `pack` is not to be read (mu held): the chunk is dropped, or, when a
  // manifest names it, kept absent (no bytes, not verified) so that a put restores it with its
  // references. Returns the next chunk.
  std::unordered_map<ContentHash, ChunkInfo, HashOf>::iterator lose_record_locked(
      std::unordered_map<ContentHash, ChunkInfo, HashOf>::iterator it, PackInfo& pack) {
    ChunkInfo& c = it->second;
    chunk_bytes -= c.size;
    pack.live -= record_bytes(c.size);
    if (c.refs == 0) return chunks.erase(it);
    c.size = 0;
    c.pack = 0;
    c.offset = 0;
    c.verified = false;
    return std::next(it);
  }

  // Makes chunk files durable: their content, then their directories (many files: one syncfs of
  // the file system, where a fdatasync each would cost a device flush each), and marks them
  // synced. A chunk absent meanwhile fails the call with NOT_FOUND.
  //
  // Linux reports a write-back error once to each open file, and never to a file opened after
  // the error was reported to another: a sync that fails cannot be retried (a second would
  // return 0 with the data lost), and two syncs of one file at once could see one error between
  // them and one clean return. So syncs run one at a time, each marking what it covered before
  // the next starts: a failed fdatasync leaves its chunk absent until put again, and a failed
  // syncfs or directory sync (which may have reported any file's error) every chunk file not yet
  // synced.
  Status sync_files(const std::vector<ContentHash>& files) {
    if (files.empty()) return Status::Ok();
    std::vector<std::pair<ContentHash, uint64_t>> todo;  // chunk, which write of its file
    auto check = [&]() -> Status {
      todo.clear();
      std::lock_guard lock(mu);
      for (const ContentHash& c : files) {
        auto it = chunks.find(c);
        if (it == chunks.end() || !it->second.verified) {
          return not_found("chunk " + to_hex(c) + " is not stored (collected, or lost in a failed sync meanwhile); put it again");
        }
        if (it->second.pack == 0 && !it->second.synced) todo.emplace_back(c, it->second.written);
      }
      return Status::Ok();
    };
    DJINN_RETURN_IF_ERROR(check());
    if (todo.empty()) return Status::Ok();  // synced meanwhile by another value's call
    std::lock_guard one_at_a_time(file_sync_mu);
    DJINN_RETURN_IF_ERROR(check());
    if (todo.empty()) return Status::Ok();
    // Makes absent what a failed sync may have lost: chunk `failed` as it is now (whichever write
    // of it the sync met), or with none named every chunk file not yet synced. The others of the
    // call stay as they are: their data was either synced or not tried, and nobody saw an error
    // of theirs.
    auto fail = [&](const std::string& what, const std::optional<ContentHash>& failed) {
      DJINN_CRASH_POINT("space.values.file_sync_failed");
      std::lock_guard lock(mu);
      if (failed) {
        if (auto it = chunks.find(*failed); it != chunks.end() && it->second.pack == 0 && !it->second.synced) {
          it->second.verified = false;
        }
        return internal_error(what + "; the chunk counts as absent until put again");
      }
      ++syncfs_failures;
      for (auto& [h, c] : chunks) {
        if (c.pack == 0 && !c.synced) c.verified = false;
      }
      return internal_error(what + "; every chunk file not yet synced counts as absent until put again");
    };
    if (todo.size() > kSyncEachUpTo && syncfs_reports_errors) {
      int rc = sync_unless_failed("space.values.file_sync", [&] { return ::syncfs(syncfs_fd); });
      if (rc != 0) {
        int err = errno;
        return fail("syncfs " + chunk_dir.string() + ": " + std::strerror(err), std::nullopt);
      }
    } else {
      for (const auto& [c, written] : todo) {
        fs::path path = chunk_path(c);
        int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
          int err = errno;
          if (err != ENOENT) return internal_error("open " + path.string() + ": " + std::strerror(err));
          {
            // Collected (or lost and not put again) since the check: absent, not an I/O error.
            std::lock_guard lock(mu);
            auto it = chunks.find(c);
            if (it == chunks.end() || !it->second.verified || it->second.written != written) {
              return not_found("chunk " + to_hex(c) + " is not stored (collected meanwhile); put it again");
            }
          }
          return fail("open " + path.string() + ": " + std::strerror(err), c);
        }
        int rc = sync_unless_failed("space.values.file_sync", [&] { return ::fdatasync(fd); });
        int err = errno;
        ::close(fd);
        if (rc != 0) return fail("fdatasync " + path.string() + ": " + std::strerror(err), c);
      }
      std::set<std::string> dirs;
      for (const auto& [c, written] : todo) dirs.insert(to_hex(c).substr(0, 2));
      for (const std::string& d : dirs) {
        if (Status st = files::sync_directory(chunk_dir / d); !st.ok()) return fail(st.message(), std::nullopt);
      }
    }
    std::lock_guard lock(mu);
    for (const auto& [c, written] : todo) {
      auto it = chunks.find(c);
      if (it != chunks.end() && it->second.pack == 0 && it->second.written == written) it->second.synced = true;
    }
    return Status::Ok();
  }

  // Makes every record appended to pack `id` so far durable. NOT_FOUND when the pack is gone (its
  // records were collected, or compacted into another pack, which compaction synced). A failed
  // sync fails the pack for good: it takes no more appends, is renamed so no later start appends
  // to it, and its chunks not synced before count as absent until put again.
  Status sync_pack(uint32_t id) {
    std::shared_ptr<PackFile> file;
    {
      std::lock_guard lock(mu);
      auto p = packs.find(id);
      if (p == packs.end()) return not_found("pack " + std::to_string(id) + " is gone");
      file = p->second.file;
    }
    std::lock_guard one_at_a_time(file->sync_mu);
    uint64_t size_at = 0;
    {
      std::lock_guard lock(mu);
      auto p = packs.find(id);
      if (p == packs.end()) return not_found("pack " + std::to_string(id) + " is gone");
      if (p->second.failed) return data_loss("a sync of " + file->path.string() + " failed; put its chunks again");
      size_at = p->second.size;
    }
    int rc = sync_unless_failed("space.values.pack_sync", [&] { return ::fdatasync(file->fd); });
    if (rc == 0) {
      std::lock_guard lock(mu);
      if (auto p = packs.find(id); p != packs.end()) p->second.synced_to = std::max(p->second.synced_to, size_at);
      return Status::Ok();
    }
    int err = errno;
    std::lock_guard lock(mu);
    Status st = internal_error("fdatasync " + file->path.string() + ": " + std::strerror(err));
    auto p = packs.find(id);
    if (p == packs.end()) return st;
    PackInfo& pack = p->second;
    pack.failed = true;
    if (appending == id) appending = 0;
    for (auto& [h, c] : chunks) {
      if (c.pack == id && c.offset >= pack.synced_to) c.verified = false;
    }
    fs::path sealed = pack_path(id, pack.synced_to);
    Status renamed = ::rename(file->path.c_str(), sealed.c_str()) == 0 ? Status::Ok()
                                                                        : errno_status("rename " + file->path.string());
    if (renamed.ok()) {
      file->path = sealed;
      renamed = files::sync_directory(pack_dir);
    }
    if (!renamed.ok()) {
      DJINN_LOG(kError, "space") << renamed.to_string() << ": a restart may append to " << file->path.string()
                                 << " again; move it aside by hand";
    }
    DJINN_LOG(kError, "space") << st.to_string() << ": its chunks not synced before must be put again";
    return st;
  }

  Status load() {
    std::error_code ec;
    // Made with their parents, each new name synced into its parent.
    for (const fs::path& d : {chunk_dir, value_dir, pack_dir}) {
      DJINN_RETURN_IF_ERROR(files::create_directories_synced(d));
    }
    // Every fan-out directory is made now, and synced into its parent with the rest, so a file
    // written later needs only its own directory synced.
    for (const std::string& hex : fan_out_names()) {
      fs::create_directory(chunk_dir / hex, ec);
      if (!ec) fs::create_directory(value_dir / hex, ec);
      if (ec) return failed_precondition("cannot create " + (value_dir / hex).string() + ": " + ec.message());
    }
    for (const fs::path& d : {fs::path(options.dir), chunk_dir, value_dir}) {
      DJINN_RETURN_IF_ERROR(files::sync_directory(d));
    }
    // Kept open for the store's life: syncfs reports to a descriptor every write-back error since
    // its last call (Linux 5.8 on), whoever else saw it first; one opened anew misses an error
    // another syncfs (of any process on the file system) already reported.
    syncfs_fd = ::open(chunk_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (syncfs_fd < 0) return errno_status("open " + chunk_dir.string());
    syncfs_reports_errors = kernel_at_least(5, 8);
    auto now = Clock::now();
    std::map<uint32_t, std::pair<fs::path, std::optional<uint64_t>>> pack_files;  // id -> path, sealed at
    for (auto it = fs::directory_iterator(pack_dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
      std::string name = it->path().filename().string();
      const char* last = name.data() + name.size();
      uint32_t id = 0;
      auto [end, err] = std::from_chars(name.data(), last, id);
      if (err == std::errc() && id > 0 && std::string_view(end) == kPackSuffix) {
        pack_files[id] = {it->path(), std::nullopt};
        continue;
      }
      uint64_t synced = 0;
      if (err == std::errc() && id > 0 && *end == '-') {
        auto [rest, err2] = std::from_chars(end + 1, last, synced);
        if (err2 == std::errc() && std::string_view(rest) == kSealedSuffix) {
          pack_files[id] = {it->path(), synced};
          continue;
        }
      }
      DJINN_LOG(kWarn, "space") << it->path().string() << ": not a pack of this store; left alone";
    }
    if (ec) return failed_precondition("reading " + pack_dir.string() + ": " + ec.message());
    std::unordered_set<ContentHash, HashOf> checked, damaged;
    for (const auto& [id, file] : pack_files) {
      const auto& [path, sealed_at] = file;
      Result<bool> whole = load_pack(id, path, sealed_at, now, checked, damaged);
      if (!whole.ok()) return whole.status();
      // Appends go on in the last pack when it ends with a whole record, so restarts do not each
      // leave a pack (and an open file) behind; after a torn tail they start a new one.
      appending = *whole && !sealed_at && packs[id].size < kPackRollBytes ? id : 0;
    }
    for (const fs::path& dir : {chunk_dir, value_dir}) {
      for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
           it.increment(ec)) {
        if (it->is_directory() && it->path() == pack_dir) {
          it.disable_recursion_pending();
          continue;
        }
        if (!it->is_regular_file()) continue;
        std::string name = it->path().filename().string();
        if (name.rfind(".tmp-", 0) == 0) {  // a write cut off by a crash
          fs::remove(it->path(), ec);
          continue;
        }
        std::optional<ContentHash> h = from_hex(name);
        if (!h) continue;
        if (dir == chunk_dir) {
          auto [ci, inserted] = chunks.try_emplace(*h);
          if (!inserted) continue;  // also in a pack, which it is read from
          ChunkInfo& c = ci->second;
          c.size = it->file_size();
          c.touched = now;
          chunk_bytes += c.size;
        } else {
          std::vector<uint8_t> bytes;
          Status st = read_whole(it->path(), [&](size_t n) { bytes.resize(n); return bytes.data(); }, "value");
          if (st.ok() && DJINN_FAIL_POINT("space.values.manifest_read")) st = internal_error("space.values.manifest_read (injected)");
          if (st.code() == Code::kNotFound) continue;  // gone since it was listed
          // A manifest that could not be read is no reason to let its chunks go: the next open may
          // read it (an I/O error, no descriptor left), so this one is refused.
          if (!st.ok() && st.code() != Code::kDataLoss) {
            return failed_precondition("cannot read value manifest " + it->path().string() + ": " + st.to_string() +
                                       "; nothing was changed: check the disk (and the limit on open files, "
                                       "ulimit -n) before opening the store again, or move that file out "
                                       "of the store to open it without that value");
          }
          std::optional<Manifest> m = st.ok() ? decode_manifest(bytes) : std::nullopt;
          if (!m) {
            DJINN_LOG(kError, "space") << "value manifest " << it->path().string()
                                       << " is damaged (it does not decode): its value is lost, and the chunks "
                                          "only it names will be collected";
            continue;
          }
          ValueInfo& v = values[*h];
          v.touched = now;
          v.chunks = std::move(m->chunks);
          manifest_bytes += manifest_size(v.chunks.size());
        }
      }
    }
    if (ec) return failed_precondition("reading " + options.dir + ": " + ec.message());
    for (const auto& [id, v] : values) {
      for (const ContentHash& c : v.chunks) chunks[c].refs++;
    }
    // A chunk no manifest names was never synced for sure: it counts as absent until put again.
    // A chunk a manifest names but that is on no disk (size 0) stays as an absent placeholder,
    // keeping its references until it is put again.
    for (auto& [h, c] : chunks) c.verified = c.refs > 0 && c.size > 0 && !damaged.count(h);
    return sync_loaded();
  }

  // What is loaded counts as synced, but a killed daemon may have left files only in the page
  // cache (a manifest renamed, its directory not yet synced; a chunk file put again, its sync not
  // done): made durable now, or the open fails.
  Status sync_loaded() {
    if (syncfs_reports_errors) {
      if (sync_unless_failed("space.values.open_sync", [&] { return ::syncfs(syncfs_fd); }) != 0) {
        int err = errno;
        return failed_precondition("syncfs " + chunk_dir.string() + ": " + std::strerror(err) +
                                   ": the disk did not take what the store holds; check it before opening the store again");
      }
      return Status::Ok();
    }
    auto sync_file = [](const fs::path& path) -> Status {
      int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) return errno_status("open " + path.string());
      int rc = sync_unless_failed("space.values.open_sync", [&] { return ::fdatasync(fd); });
      int err = errno;
      ::close(fd);
      return rc == 0 ? Status::Ok()
                     : failed_precondition("fdatasync " + path.string() + ": " + std::strerror(err) +
                                           ": the disk did not take what the store holds; check it before opening the store again");
    };
    for (const auto& [h, c] : chunks) {
      if (c.pack == 0 && c.size > 0) DJINN_RETURN_IF_ERROR(sync_file(chunk_path(h)));
    }
    for (const auto& [id, v] : values) DJINN_RETURN_IF_ERROR(sync_file(value_path(id)));
    for (const std::string& hex : fan_out_names()) {
      DJINN_RETURN_IF_ERROR(files::sync_directory(chunk_dir / hex));
      DJINN_RETURN_IF_ERROR(files::sync_directory(value_dir / hex));
    }
    return Status::Ok();
  }

  // Calls take(it) for every element of `table` that pick(element) chooses, under the lock, a
  // slice of buckets at a time. An element a rehash moves between slices may be looked at twice
  // (it is gone, or picked again only if still doomed) or not at all (the next collection does).
  template <class Table, class Pick, class Take>
  void sweep(Table& table, const Pick& pick, const Take& take) {
    std::vector<typename Table::key_type> picked;
    // Between slices the sweep sleeps a moment: a call blocked on the lock is woken by the unlock but
    // would find it taken again before it runs.
    for (size_t bucket = 0;; std::this_thread::sleep_for(std::chrono::microseconds(20))) {
      std::lock_guard lock(mu);
      size_t buckets = table.bucket_count();
      if (bucket >= buckets) return;
      size_t end = std::min(buckets, bucket + kSweepBuckets);
      picked.clear();
      for (; bucket < end; ++bucket) {
        for (auto it = table.begin(bucket); it != table.end(bucket); ++it) {
          if (pick(it->second)) picked.push_back(it->first);
        }
      }
      for (const auto& key : picked) take(table.find(key));
    }
  }

  size_t collect(std::chrono::milliseconds grace) {
    std::lock_guard one_at_a_time(collect_mu);  // each empties the unlinking sets it filled
    // A value is collected a grace after its last reference ended: what ended it happened
    // before this, and is durable once it returns.
    if (options.before_collect) {
      if (Status st = options.before_collect(); !st.ok()) {
        DJINN_LOG(kWarn, "space") << "value collection skipped: " << st.to_string();
        return 0;
      }
    }
    // A file to unlink, and what a put of it waits for (none for a pack).
    struct Doomed {
      fs::path path;
      std::unordered_set<ContentHash, HashOf>* set = nullptr;
      ContentHash hash{};
    };
    std::vector<Doomed> doomed;
    size_t packed_gone = 0;
    std::vector<uint32_t> to_compact;
    // However this ends, no put waits for an unlink any more.
    struct Unlinked {
      Impl& m;
      ~Unlinked() {
        {
          std::lock_guard lock(m.mu);
          m.unlinking_chunks.clear();
          m.unlinking_values.clear();
        }
        m.unlinked_cv.notify_all();
      }
    } unlinked{*this};
    const auto now = Clock::now();
    // Values first, so the chunks of a value collected now are collected with it.
    sweep(values, [&](const ValueInfo& v) { return v.refs == 0 && now - v.touched >= grace; },
          [&](auto it) {
            // A chunk it named keeps its own time: one put or asked about (has_chunk) within the
            // grace period is about to be named again and stays.
            for (const ContentHash& c : it->second.chunks) {
              auto ci = chunks.find(c);
              if (ci != chunks.end() && ci->second.refs > 0) --ci->second.refs;
            }
            doomed.push_back({value_path(it->first), &unlinking_values, it->first});
            unlinking_values.insert(it->first);
            manifest_bytes -= manifest_size(it->second.chunks.size());
            values.erase(it);
          });
    sweep(chunks, [&](const ChunkInfo& c) { return c.refs == 0 && now - c.touched >= grace; },
          [&](auto it) {
            if (it->second.pack != 0) {
              packs[it->second.pack].live -= record_bytes(it->second.size);
              ++packed_gone;
            } else {
              doomed.push_back({chunk_path(it->first), &unlinking_chunks, it->first});
              unlinking_chunks.insert(it->first);
            }
            chunk_bytes -= it->second.size;
            chunks.erase(it);
          });
    {
      std::lock_guard append(append_mu);  // no append is under way in a pack deleted here
      std::lock_guard lock(mu);
      // A pack nothing is read from goes (the one taking appends too: the next append opens
      // another); one mostly dead is compacted below. Packs of under a MiB are left to grow.
      for (auto it = packs.begin(); it != packs.end();) {
        if (it->second.live == 0) {
          doomed.push_back({it->second.file->path});
          if (it->first == appending) appending = 0;
          it = packs.erase(it);
          continue;
        }
        const PackInfo& pack = it->second;
        if (pack.size >= kCompactFrom && pack.live < kCompactBelow * static_cast<double>(pack.size)) {
          to_compact.push_back(it->first);
        }
        ++it;
      }
    }
    DJINN_CRASH_POINT("space.values.collect_unlink");
    for (const Doomed& d : doomed) {
      ::unlink(d.path.c_str());
      if (!d.set) continue;
      {
        std::lock_guard lock(mu);
        d.set->erase(d.hash);
      }
      unlinked_cv.notify_all();  // a put of this file goes on
    }
    for (uint32_t id : to_compact) {
      Status st = compact(id);
      if (!st.ok()) DJINN_LOG(kWarn, "space") << "compacting pack " << id << ": " << st.to_string();
    }
    size_t gone = doomed.size() + packed_gone;
    if (gone > 0) {
      DJINN_LOG(kInfo, "space") << "collected " << gone << " unreferenced values, chunks and emptied packs";
    }
    return gone;
  }

  void gc_loop() {
    std::unique_lock lock(mu);
    for (;;) {
      gc_cv.wait_for(lock, options.gc_interval, [&] { return gc_stop; });
      if (gc_stop) return;
      lock.unlock();
      collect(options.grace);
      lock.lock();
    }
  }
};

ValueStore::ValueStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ValueStore::~ValueStore() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->gc_stop = true;
  }
  impl_->gc_cv.notify_all();
  if (impl_->gc.joinable()) impl_->gc.join();
}

Result<std::unique_ptr<ValueStore>> ValueStore::open(ValueStoreOptions options) {
  if (sodium_init() < 0) return internal_error("libsodium failed to initialise");
  if (options.dir.empty()) return invalid_argument("value store: a directory is required");
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->chunk_dir = fs::path(options.dir) / "chunks";
  impl->value_dir = fs::path(options.dir) / "values";
  impl->pack_dir = impl->chunk_dir / "packs";
  DJINN_RETURN_IF_ERROR(impl->load());
  auto store = std::unique_ptr<ValueStore>(new ValueStore(std::move(impl)));
  if (options.start_collector) store->start_collector();
  return store;
}

void ValueStore::start_collector() {
  Impl* m = impl_.get();
  std::lock_guard lock(m->mu);
  if (m->options.gc_interval.count() <= 0 || m->gc.joinable() || m->gc_stop) return;
  m->gc = std::thread([m] { m->gc_loop(); });
}

Result<bool> ValueStore::put_chunk(const ContentHash& hash, std::span<const uint8_t> data) {
  if (data.empty() || data.size() > kMaxChunkBytes) {
    return invalid_argument("chunk of " + std::to_string(data.size()) + " bytes: must be 1.." + std::to_string(kMaxChunkBytes));
  }
  if (hash_bytes(data) != hash) {
    return invalid_argument("chunk content does not match its hash " + to_hex(hash) + " (BLAKE2b-256 of the data expected)");
  }
  return put_chunk_hashed(hash, data);
}

Result<bool> ValueStore::put_chunk_hashed(const ContentHash& hash, std::span<const uint8_t> data) {
  Impl& m = *impl_;
  if (data.empty() || data.size() > kMaxChunkBytes) {
    return invalid_argument("chunk of " + std::to_string(data.size()) + " bytes: must be 1.." + std::to_string(kMaxChunkBytes));
  }
  uint64_t syncfs_failures = 0;
  Impl::Reservation room;
  {
    std::lock_guard lock(m.mu);
    auto it = m.chunks.find(hash);
    if (it != m.chunks.end() && it->second.verified) {
      it->second.touched = Clock::now();
      return false;
    }
    // A chunk absent until put again (found at open unnamed, damaged, lost) may be counted already.
    uint64_t counted = it != m.chunks.end() ? it->second.size : 0;
    DJINN_RETURN_IF_ERROR(room.take_locked(m, data.size() > counted ? data.size() - counted : 0, "chunk " + to_hex(hash)));
    syncfs_failures = m.syncfs_failures;
  }
  // Not synced here: put_value syncs a value's chunks together, which lets the disk write them as
  // one stream (one fdatasync per 1 MiB chunk measured at a third of the disk's rate). A chunk a
  // stored value already names (lost, and put again) is synced at once: no put_value may follow.
  bool named = false;
  if (data.size() <= kPackedChunkMax) {
    uint32_t pack = 0;
    {
      std::lock_guard append(m.append_mu);
      Result<std::pair<uint32_t, uint64_t>> at = m.append_locked(hash, data);
      if (!at.ok()) return at.status();
      bool fresh = false;
      Result<std::optional<fs::path>> stale = std::optional<fs::path>();
      {
        std::lock_guard lock(m.mu);
        stale = m.file_record_locked(hash, data.size(), at->first, at->second, &fresh);
        named = fresh && m.chunks.at(hash).refs > 0;
        room.settle_locked();
      }
      if (!stale.ok()) return stale.status();
      if (*stale) ::unlink((*stale)->c_str());
      if (!fresh) return false;
      pack = at->first;
    }
    if (named) DJINN_RETURN_IF_ERROR(m.sync_pack(pack));
    return true;
  }
  const fs::path path = m.chunk_path(hash);
  Result<fs::path> tmp = write_temp(path, data, false);
  if (!tmp.ok()) return tmp.status();
  {
    // Renamed under the lock, so the file at `path` is always the one its ChunkInfo describes: a
    // put that lost a race never replaces a file already synced with one that is not.
    std::unique_lock lock(m.mu);
    m.unlinked_cv.wait(lock, [&] { return !m.unlinking_chunks.count(hash); });
    auto [it, fresh] = m.chunks.try_emplace(hash);
    it->second.touched = Clock::now();
    if (!fresh && it->second.verified) {
      ::unlink(tmp->c_str());
      return false;
    }
    if (Status renamed = rename_into_place(*tmp, path); !renamed.ok()) {
      if (fresh) m.chunks.erase(it);
      return renamed;
    }
    // New, or absent until now (found at open unverified, lost): the size is what was written.
    m.chunk_bytes -= it->second.size;
    it->second.size = data.size();
    m.chunk_bytes += data.size();
    room.settle_locked();
    it->second.synced = false;
    it->second.written = ++m.file_writes;
    // A syncfs that failed while this file was written may have lost its write-back and told
    // nobody else (the file system's error is reported once): written again, it will be sound.
    it->second.verified = m.syncfs_failures == syncfs_failures;
    if (!it->second.verified) {
      return unavailable("chunk " + to_hex(hash) + ": a sync of the file system failed while it was written; put it again");
    }
    named = it->second.refs > 0;
  }
  if (named) DJINN_RETURN_IF_ERROR(m.sync_files({hash}));
  return true;
}

bool ValueStore::has_chunk(const ContentHash& hash) const {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->chunks.find(hash);
  if (it == impl_->chunks.end() || !it->second.verified) return false;
  it->second.touched = Clock::now();  // about to be named by a manifest: keep it
  return true;
}

std::optional<uint64_t> ValueStore::chunk_size(const ContentHash& hash) const {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->chunks.find(hash);
  if (it == impl_->chunks.end() || !it->second.verified) return std::nullopt;
  return it->second.size;
}

Status ValueStore::read_chunk(const ContentHash& hash, const std::function<uint8_t*(size_t)>& sink) const {
  Impl& m = *impl_;
  uint8_t* data = nullptr;
  size_t size = 0;
  std::shared_ptr<Impl::PackFile> pack;
  uint32_t pack_id = 0;
  uint64_t at = 0;
  uint64_t written = 0;
  {
    std::lock_guard lock(m.mu);
    auto it = m.chunks.find(hash);
    if (it != m.chunks.end() && !it->second.verified) {
      return not_found("chunk " + to_hex(hash) + " is not stored (lost to a crash or a disk error): put it again");
    }
    if (it != m.chunks.end()) {
      pack_id = it->second.pack;
      written = it->second.written;
    }
    if (pack_id != 0) {
      pack = m.packs.at(pack_id).file;
      at = it->second.offset;
      size = it->second.size;
    }
  }
  // Found damaged, the copy read is absent from then on (unless it was moved or written again
  // meanwhile): a put stores the chunk again, which repairs every value naming it.
  auto damaged = [&](std::string why) {
    std::lock_guard lock(m.mu);
    auto it = m.chunks.find(hash);
    if (it != m.chunks.end() && it->second.verified && it->second.pack == pack_id) {
      if (pack_id != 0 && it->second.offset == at) {
        m.lose_record_locked(it, m.packs.at(pack_id));
      } else if (pack_id == 0 && it->second.written == written) {
        it->second.verified = false;
      }
    }
    DJINN_LOG(kError, "space") << why << "; it counts as absent until put again";
    return data_loss(std::move(why));
  };
  if (pack) {
    switch (Impl::read_record(*pack, at, size, hash, sink(size))) {
      case Impl::Record::kIntact: return Status::Ok();
      case Impl::Record::kUnread:
        return internal_error("chunk " + to_hex(hash) + ": reading its record in " + m.path_of(*pack).string() +
                              " failed; try again, and check the disk if it goes on");
      case Impl::Record::kMismatch: break;
    }
    return damaged("chunk " + to_hex(hash) + ": its record in " + m.path_of(*pack).string() +
                   " is damaged (no longer what was written)");
  }
  DJINN_RETURN_IF_ERROR(read_whole(m.chunk_path(hash), [&](size_t n) {
    size = n;
    data = sink(n);
    return data;
  }, "chunk " + to_hex(hash)));
  if (hash_bytes(std::span<const uint8_t>(data, size)) != hash) {
    return damaged("chunk " + to_hex(hash) + " no longer matches its hash on disk");
  }
  return Status::Ok();
}

Status ValueStore::get_chunk(const ContentHash& hash, std::vector<uint8_t>& out) const {
  return read_chunk(hash, [&](size_t n) {
    out.resize(n);
    return out.data();
  });
}

Result<ContentHash> ValueStore::put_value(uint64_t size, std::span<const ContentHash> chunk_list) {
  Impl& m = *impl_;
  if (chunk_list.size() > kMaxValueChunks) {
    return invalid_argument("value of " + std::to_string(chunk_list.size()) + " chunks: at most " + std::to_string(kMaxValueChunks));
  }
  std::vector<uint32_t> sizes(chunk_list.size());
  std::vector<ContentHash> unsynced;  // chunk files
  uint64_t total = 0;
  {
    std::lock_guard lock(m.mu);
    for (size_t i = 0; i < chunk_list.size(); ++i) {
      auto it = m.chunks.find(chunk_list[i]);
      if (it != m.chunks.end() && it->second.pack == 0 && !it->second.synced) unsynced.push_back(chunk_list[i]);
      if (it == m.chunks.end() || !it->second.verified) {
        return not_found("value: chunk " + std::to_string(i) + " (" + to_hex(chunk_list[i]) + ") is not stored; put it first");
      }
      it->second.touched = Clock::now();
      sizes[i] = static_cast<uint32_t>(it->second.size);
      total += it->second.size;
    }
  }
  if (total != size) {
    return invalid_argument("value: its chunks hold " + std::to_string(total) + " bytes, not the " + std::to_string(size) + " given");
  }
  // A chunk's rename is durable once its directory is synced: done here, once per directory, before
  // the manifest that makes the chunks part of a value. A chunk whose rename a crash undid is simply
  // not there (and was never part of a value).
  std::sort(unsynced.begin(), unsynced.end());
  unsynced.erase(std::unique(unsynced.begin(), unsynced.end()), unsynced.end());
  // Chunks in packs: one fdatasync per pack holding some not yet synced (their names were synced at
  // creation). A compaction may move chunks to another pack meanwhile (synced there), so the
  // packs are looked up again until none is left.
  for (int round = 0;; ++round) {
    std::set<uint32_t> need;
    {
      std::lock_guard lock(m.mu);
      for (size_t i = 0; i < chunk_list.size(); ++i) {
        auto it = m.chunks.find(chunk_list[i]);
        if (it == m.chunks.end() || !it->second.verified) {
          return not_found("value: chunk " + std::to_string(i) + " (" + to_hex(chunk_list[i]) +
                           ") is not stored (collected or lost meanwhile); put it again");
        }
        if (it->second.pack != 0 && !m.synced_locked(it->second)) need.insert(it->second.pack);
      }
    }
    if (need.empty()) break;
    if (round == 8) return unavailable("value: its chunks kept moving between packs; try again");
    for (uint32_t id : need) {
      Status st = m.sync_pack(id);
      if (!st.ok() && st.code() != Code::kNotFound) return st;
    }
  }
  // Linux reports a lost write-back to one sync only, and a later one of the same file returns 0:
  // a failed sync leaves the chunks absent, to be written again, not synced again.
  DJINN_RETURN_IF_ERROR(m.sync_files(unsynced));
  std::vector<uint8_t> manifest = encode_manifest(size, chunk_list, sizes);
  ContentHash id = hash_bytes(manifest);
  Impl::Reservation room;
  {
    // The chunks are referenced before the manifest is written, so no collection takes one
    // meanwhile; every one is still there (a collection or a failed sync since the check above
    // would have made it absent). A manifest a collection is unlinking is waited for.
    std::unique_lock lock(m.mu);
    m.unlinked_cv.wait(lock, [&] { return !m.unlinking_values.count(id); });
    if (auto it = m.values.find(id); it != m.values.end()) {
      it->second.touched = Clock::now();
      return id;
    }
    DJINN_RETURN_IF_ERROR(room.take_locked(m, manifest.size(), "value " + to_hex(id) + ": its manifest"));
    for (size_t i = 0; i < chunk_list.size(); ++i) {
      auto it = m.chunks.find(chunk_list[i]);
      if (it == m.chunks.end() || !it->second.verified) {
        return not_found("value: chunk " + std::to_string(i) + " (" + to_hex(chunk_list[i]) +
                         ") is not stored (collected or lost meanwhile); put it again");
      }
      if (!m.synced_locked(it->second)) {
        return unavailable("value: chunk " + std::to_string(i) + " (" + to_hex(chunk_list[i]) +
                           ") was written again meanwhile; store the value again");
      }
    }
    for (const ContentHash& c : chunk_list) m.chunks.at(c).refs++;
  }
  Status written = m.write_manifest(id, manifest);
  std::lock_guard lock(m.mu);
  auto unref_chunks = [&] {
    for (const ContentHash& c : chunk_list) {
      if (auto it = m.chunks.find(c); it != m.chunks.end() && it->second.refs > 0) --it->second.refs;
    }
  };
  if (!written.ok()) {
    unref_chunks();
    return written;
  }
  auto [it, fresh] = m.values.try_emplace(id);
  it->second.touched = Clock::now();
  if (fresh) {
    it->second.chunks.assign(chunk_list.begin(), chunk_list.end());
    m.manifest_bytes += manifest.size();
    room.settle_locked();
  } else {
    unref_chunks();  // stored meanwhile by another call, which counted its references
  }
  return id;
}

Result<Manifest> ValueStore::get_value(const ContentHash& value_id) const {
  // Only a value this store holds: a manifest file whose put failed after its rename (its
  // directory's sync) is no value, and its chunks may be collected. Reading one does not keep it
  // (nor did it before): only references and puts do.
  {
    std::lock_guard lock(impl_->mu);
    if (!impl_->values.count(value_id)) return not_found("value " + to_hex(value_id) + " is not stored");
  }
  std::vector<uint8_t> bytes;
  DJINN_RETURN_IF_ERROR(read_whole(impl_->value_path(value_id), [&](size_t n) {
    bytes.resize(n);
    return bytes.data();
  }, "value " + to_hex(value_id)));
  std::optional<Manifest> m = decode_manifest(bytes);
  if (!m || hash_bytes(bytes) != value_id) return data_loss("value " + to_hex(value_id) + ": its manifest is damaged");
  return std::move(*m);
}

bool ValueStore::has_value(const ContentHash& value_id) const {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->values.find(value_id);
  if (it == impl_->values.end()) return false;
  it->second.touched = Clock::now();
  return true;
}

void ValueStore::ref(const ContentHash& value_id) {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->values.find(value_id);
  if (it != impl_->values.end()) it->second.refs++;
}

bool ValueStore::ref_if_stored(const ContentHash& value_id) {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->values.find(value_id);
  if (it == impl_->values.end()) return false;
  it->second.refs++;
  it->second.touched = Clock::now();
  return true;
}

void ValueStore::unref(const ContentHash& value_id) {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->values.find(value_id);
  if (it != impl_->values.end() && it->second.refs > 0 && --it->second.refs == 0) it->second.touched = Clock::now();
}

size_t ValueStore::collect() { return impl_->collect(impl_->options.grace); }
size_t ValueStore::collect_now(std::chrono::milliseconds grace) { return impl_->collect(grace); }

ValueStats ValueStore::stats() const {
  std::lock_guard lock(impl_->mu);
  return ValueStats{impl_->values.size(), impl_->chunks.size(), impl_->chunk_bytes, impl_->manifest_bytes,
                    impl_->options.max_bytes};
}

}  // namespace djinn::space
