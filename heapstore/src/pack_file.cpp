// Pack files: appends, reads, syncs, hole punching, and the cut of a torn tail at open.
#include "pack_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "djinn/core/fault.h"
#include "djinn/core/files.h"
#include "djinn/core/log.h"

namespace djinn::heapstore::internal {
namespace {

Status errno_status(const std::string& what, int err) {
  std::string message = what + ": " + std::strerror(err);
  if (err == ENOSPC || err == EDQUOT) return resource_exhausted(message);
  return unavailable(message);
}

// A compression context per thread: creating one per page would cost more than compressing.
struct ZstdContexts {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ZSTD_DCtx* d = ZSTD_createDCtx();
  ~ZstdContexts() {
    ZSTD_freeCCtx(c);
    ZSTD_freeDCtx(d);
  }
};
ZstdContexts& zstd() {
  thread_local ZstdContexts contexts;
  return contexts;
}

constexpr uint64_t kBlock = 4096;  // the granularity hole punching frees

}  // namespace

std::filesystem::path pack_path(const std::filesystem::path& dir, uint64_t id) {
  char name[32];
  std::snprintf(name, sizeof name, "pack-%08llu.dat", static_cast<unsigned long long>(id));
  return dir / name;
}

uint64_t stored_checksum(std::span<const std::byte> stored) { return XXH3_64bits(stored.data(), stored.size()); }

Encoded encode_page(std::span<const std::byte> page, int level, std::vector<std::byte>& out) {
  size_t start = out.size();
  if (level != 0) {
    size_t bound = ZSTD_compressBound(page.size());
    out.resize(start + bound);
    size_t n = ZSTD_compressCCtx(zstd().c, out.data() + start, bound, page.data(), page.size(), level);
    if (!ZSTD_isError(n) && n < page.size()) {
      out.resize(start + n);
      return {static_cast<uint32_t>(n), kFlagZstd};
    }
    out.resize(start);  // did not shrink: stored raw
  }
  out.insert(out.end(), page.begin(), page.end());
  return {static_cast<uint32_t>(page.size()), 0};
}

Status decode_page(const Location& where, std::span<const std::byte> stored, std::span<std::byte> out) {
  if (out.size() != where.size) {
    return internal_error("decode page: buffer of " + std::to_string(out.size()) + " bytes for a page of " +
                          std::to_string(where.size));
  }
  if (where.flags & kFlagZstd) {
    size_t n = ZSTD_decompressDCtx(zstd().d, out.data(), out.size(), stored.data(), stored.size());
    if (ZSTD_isError(n) || n != out.size()) {
      return data_loss("page in pack " + std::to_string(where.pack) + " at offset " + std::to_string(where.offset) +
                       " does not decompress" + (ZSTD_isError(n) ? std::string(": ") + ZSTD_getErrorName(n) : ""));
    }
    return Status();
  }
  if (stored.size() != out.size()) {
    return data_loss("page in pack " + std::to_string(where.pack) + " at offset " + std::to_string(where.offset) +
                     " has " + std::to_string(stored.size()) + " bytes, expected " + std::to_string(out.size()));
  }
  std::memcpy(out.data(), stored.data(), out.size());
  return Status();
}

uint64_t max_stored_length(uint32_t size, uint32_t flags) {
  return (flags & kFlagZstd) ? ZSTD_compressBound(size) : size;
}

// ---- PackFile ----

PackFile::~PackFile() {
  if (const std::byte* v = view_.load()) ::munmap(const_cast<std::byte*>(v), view_length_);
  ::close(fd_);
}

const std::byte* PackFile::view(uint64_t offset, uint64_t length) const {
  const uint64_t end = offset + length;
  if (end < offset) return nullptr;
  if (end > known_size_.load(std::memory_order_acquire)) {
    // Appends since the last look, or bytes the file does not have: ask the file system.
    struct stat st {};
    if (::fstat(fd_, &st) != 0) return nullptr;
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    uint64_t known = known_size_.load();
    while (known < size && !known_size_.compare_exchange_weak(known, size)) {
    }
    if (end > size) return nullptr;
  }
  const std::byte* base = view_.load(std::memory_order_acquire);
  if (!base) {
    std::lock_guard lock(view_mu_);
    base = view_.load();
    if (!base) {
      if (view_failed_) return nullptr;
      const uint64_t want = std::max(view_bytes_, known_size_.load());
      void* m = ::mmap(nullptr, want, PROT_READ, MAP_SHARED, fd_, 0);
      if (m == MAP_FAILED) {
        view_failed_ = true;
        DJINN_LOG(kWarn, "heapstore") << "mapping " << path_.string() << ": " << std::strerror(errno)
                                      << "; its pages are read with pread";
        return nullptr;
      }
      view_length_ = want;
      base = static_cast<const std::byte*>(m);
      view_.store(base, std::memory_order_release);
    }
  }
  return end <= view_length_ ? base + offset : nullptr;
}

Status PackFile::write_at(uint64_t offset, std::span<const std::byte> bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::pwrite(fd_, bytes.data() + done, bytes.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status("write " + path_.string(), errno);
    }
    done += static_cast<size_t>(n);
  }
  return Status();
}

Status PackFile::write_parts_at(uint64_t offset, std::span<const std::span<const std::byte>> parts) {
  constexpr size_t kMaxIov = 1024;  // IOV_MAX on Linux
  size_t i = 0;
  while (i < parts.size()) {
    iovec iov[kMaxIov];
    size_t n = 0;
    size_t bytes = 0;
    for (; n < kMaxIov && i + n < parts.size(); ++n) {
      iov[n].iov_base = const_cast<std::byte*>(parts[i + n].data());
      iov[n].iov_len = parts[i + n].size();
      bytes += parts[i + n].size();
    }
    ssize_t written = ::pwritev(fd_, iov, static_cast<int>(n), static_cast<off_t>(offset));
    if (written < 0 && errno != EINTR) return errno_status("write " + path_.string(), errno);
    if (written == static_cast<ssize_t>(bytes)) {
      offset += bytes;
      i += n;
      continue;
    }
    // Short (or interrupted): finish these parts one by one from where it stopped.
    size_t done = written > 0 ? static_cast<size_t>(written) : 0;
    for (size_t k = 0; k < n; ++k) {
      size_t len = parts[i + k].size();
      if (done >= len) {
        done -= len;
        offset += len;
        continue;
      }
      DJINN_RETURN_IF_ERROR(write_at(offset + done, parts[i + k].subspan(done)));
      offset += len;
      done = 0;
    }
    i += n;
  }
  return Status();
}

Status PackFile::read_at(uint64_t offset, std::span<std::byte> out) const {
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::pread(fd_, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status("read " + path_.string(), errno);
    }
    if (n == 0) {
      return data_loss(path_.string() + " ends before offset " + std::to_string(offset + out.size()) +
                       ": a committed page is missing");
    }
    done += static_cast<size_t>(n);
  }
  return Status();
}

Status PackFile::sync() {
  std::lock_guard one_at_a_time(sync_mu_);
  if (failed_.load()) {
    return data_loss("an earlier fdatasync of " + path_.string() +
                     " failed: pages written to it since its last good sync may be lost (reopen the store; "
                     "versions not committed must be written again)");
  }
  int rc = DJINN_FAIL_POINT("heapstore.pack_sync") ? (errno = EIO, -1) : ::fdatasync(fd_);
  if (rc != 0) {
    int err = errno;
    failed_.store(true);
    DJINN_LOG(kError, "heapstore") << "fdatasync " << path_.string() << ": " << std::strerror(err)
                                   << ": no version that needs its unsynced pages will commit; new pages go to another pack";
    return errno_status("fdatasync " + path_.string(), err);
  }
  return Status();
}

void PackFile::start_writeback(uint64_t offset, uint64_t length) {
  // Small appends (an evicted page, a run of pages arriving) are gathered until a megabyte is
  // written: one request to the device then, rather than one for every few KiB. A checkpoint's
  // batches start at once, as they come.
  constexpr uint64_t kSmallAppendBytes = uint64_t{256} << 10;
  constexpr uint64_t kWritebackBytes = uint64_t{1} << 20;
  uint64_t from = offset, to = offset + length;
  {
    std::lock_guard lock(writeback_mu_);
    if (writeback_to_ > writeback_from_) {
      from = std::min(from, writeback_from_);
      to = std::max(to, writeback_to_);
    }
    if (length < kSmallAppendBytes && to - from < kWritebackBytes) {
      writeback_from_ = from;
      writeback_to_ = to;
      return;
    }
    writeback_from_ = writeback_to_ = 0;
  }
  (void)::sync_file_range(fd_, static_cast<off_t>(from), static_cast<off_t>(to - from), SYNC_FILE_RANGE_WRITE);
}

void PackFile::punch_hole(uint64_t offset, uint64_t length) {
  (void)::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                    static_cast<off_t>(length));
}

// ---- PackSet ----

Result<std::map<uint64_t, std::filesystem::path>> find_pack_files(const std::filesystem::path& dir) {
  std::map<uint64_t, std::filesystem::path> found;
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) {
    if (ec) return unavailable("list " + dir.string() + ": " + ec.message());
    return found;
  }
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    unsigned long long id = 0;
    char tail = 0;
    if (std::sscanf(name.c_str(), "pack-%llu.da%c", &id, &tail) != 2 || tail != 't') continue;
    found[id] = it->path();
  }
  if (ec) return unavailable("list " + dir.string() + ": " + ec.message());
  return found;
}

Result<std::unique_ptr<PackSet>> PackSet::open(const std::filesystem::path& dir,
                                               const std::map<uint64_t, uint64_t>& committed,
                                               uint64_t max_file_bytes) {
  std::unique_ptr<PackSet> set(new PackSet(dir, std::max<uint64_t>(max_file_bytes, kBlock)));
  Result<std::map<uint64_t, std::filesystem::path>> found = find_pack_files(dir);
  if (!found.ok()) return found.status();
  for (const auto& [id, path] : *found) {
    // Created, maybe written, but no commit ever recorded it: nothing refers to it.
    if (!committed.contains(id)) set->leftovers_.push_back(path);
  }

  for (const auto& [id, length] : committed) {
    std::filesystem::path path = pack_path(dir, id);
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) {
      // The index refers to it but it is gone: its pages read as DATA_LOSS.
      DJINN_LOG(kError, "heapstore") << "pack file " << path.string() << " is missing: " << std::strerror(errno);
      continue;
    }
    struct stat st {};
    if (::fstat(fd, &st) == 0 && static_cast<uint64_t>(st.st_size) > length) {
      // A torn tail: appends after the last commit that recorded this pack.
      set->torn_.emplace_back(id, length);
    } else if (static_cast<uint64_t>(st.st_size) < length) {
      DJINN_LOG(kError, "heapstore") << "pack file " << path.string() << " has " << st.st_size
                                     << " bytes, the index committed " << length;
    }
    set->files_[id] = std::make_shared<PackFile>(id, fd, path, set->max_file_bytes_);
  }
  if (!committed.empty()) {
    set->current_ = committed.rbegin()->first;
    set->end_ = committed.rbegin()->second;
    if (!set->files_.contains(set->current_)) set->end_ = set->max_file_bytes_;  // start a new pack
  }
  return set;
}

Status PackSet::clean_up() {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) return unavailable("create " + dir_.string() + ": " + ec.message());
  for (const auto& [id, length] : torn_) {
    std::filesystem::path path = pack_path(dir_, id);
    if (::truncate(path.c_str(), static_cast<off_t>(length)) != 0) {
      return errno_status("truncate " + path.string(), errno);
    }
  }
  torn_.clear();
  for (const std::filesystem::path& path : leftovers_) {
    std::filesystem::remove(path, ec);
    if (ec) return unavailable("remove " + path.string() + ": " + ec.message());
  }
  const bool removed_any = !leftovers_.empty();
  leftovers_.clear();
  if (removed_any) DJINN_RETURN_IF_ERROR(files::sync_directory(dir_));
  return Status();
}

Result<std::shared_ptr<PackFile>> PackSet::create_locked(uint64_t id) {
  std::filesystem::path path = pack_path(dir_, id);
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return errno_status("create " + path.string(), errno);
  // The directory entry must be durable before any commit refers to the file.
  Status synced = files::sync_directory(dir_);
  if (!synced.ok()) {
    ::close(fd);
    return synced;
  }
  auto file = std::make_shared<PackFile>(id, fd, path, max_file_bytes_);
  files_[id] = file;
  return file;
}

Result<PackSet::Reservation> PackSet::reserve(uint64_t length) {
  std::lock_guard lock(mu_);
  auto current = files_.find(current_);
  if (current_ == 0 || (end_ > 0 && end_ + length > max_file_bytes_) || current == files_.end() ||
      current->second->failed()) {
    uint64_t id = files_.empty() ? current_ + 1 : std::max(current_, files_.rbegin()->first) + 1;
    if (id > kMaxPackId) {
      return resource_exhausted("pack file number " + std::to_string(id) + " is beyond the index's limit of " +
                                std::to_string(kMaxPackId) + " (raise pack_file_bytes)");
    }
    Result<std::shared_ptr<PackFile>> file = create_locked(id);
    if (!file.ok()) return file.status();
    current_ = id;
    end_ = 0;
  }
  auto it = files_.find(current_);
  Reservation r{it->second, end_};
  end_ += length;
  return r;
}

std::shared_ptr<PackFile> PackSet::get(uint64_t id) const {
  std::lock_guard lock(mu_);
  auto it = files_.find(id);
  return it == files_.end() ? nullptr : it->second;
}

uint64_t PackSet::current() const {
  std::lock_guard lock(mu_);
  return current_;
}

std::vector<uint64_t> PackSet::ids() const {
  std::lock_guard lock(mu_);
  std::vector<uint64_t> out;
  for (const auto& [id, file] : files_) out.push_back(id);
  return out;
}

void PackSet::punch(std::vector<Range> ranges) {
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return a.pack != b.pack ? a.pack < b.pack : a.offset < b.offset;
  });
  size_t i = 0;
  while (i < ranges.size()) {
    // Coalesce touching ranges so pages smaller than a block still free the blocks they fill.
    Range r = ranges[i++];
    while (i < ranges.size() && ranges[i].pack == r.pack && ranges[i].offset <= r.offset + r.length) {
      r.length = std::max(r.offset + r.length, ranges[i].offset + ranges[i].length) - r.offset;
      ++i;
    }
    uint64_t begin = (r.offset + kBlock - 1) / kBlock * kBlock;
    uint64_t end = (r.offset + r.length) / kBlock * kBlock;
    if (end <= begin) continue;
    if (std::shared_ptr<PackFile> file = get(r.pack)) file->punch_hole(begin, end - begin);
  }
}

void PackSet::remove(uint64_t id) {
  std::shared_ptr<PackFile> file;
  {
    std::lock_guard lock(mu_);
    if (id == current_) return;
    auto it = files_.find(id);
    if (it == files_.end()) return;
    file = it->second;
    files_.erase(it);
  }
  std::error_code ec;
  std::filesystem::remove(file->path(), ec);
}

}  // namespace djinn::heapstore::internal
