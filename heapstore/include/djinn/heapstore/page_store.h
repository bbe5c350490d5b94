// The page store of DESIGN §7: content-addressed pages (BLAKE2b-256, zero pages never stored),
// manifests per version, and versions written atomically. A heap loads its pages from here on
// demand and checkpoints its dirty pages here; migration exports a version as the manifest plus the
// pages a receiver lacks (DESIGN §9 step 7).
//
//   auto store = PageStore::open(dir);
//   auto w = store.value()->begin_version(parent, page_size, capacity_pages);
//   w->put(index, bytes);  w->zero(other_index);
//   auto v = w->commit(record);           // atomic: the whole version or nothing
//
// A PageStore is safe to use from several threads; one VersionWriter is used by one thread.
#pragma once

#include <array>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "djinn/core/status.h"

namespace djinn::heapstore {

// BLAKE2b-256 of a page's bytes (DESIGN §2 ContentHash). All-zero pages are never hashed or
// stored: a manifest simply leaves them out.
struct PageHash {
  std::array<uint8_t, 32> bytes{};

  static PageHash of(std::span<const std::byte> page);
  std::string hex() const;
  static std::optional<PageHash> from_hex(std::string_view hex);
  auto operator<=>(const PageHash&) const = default;
  // Four word compares, no call: the page index compares a key on every lookup.
  bool operator==(const PageHash& other) const noexcept {
    uint64_t a[4], b[4];
    std::memcpy(a, bytes.data(), sizeof a);
    std::memcpy(b, other.bytes.data(), sizeof b);
    return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])) == 0;
  }
};

struct PageHashHasher {
  size_t operator()(const PageHash& h) const noexcept {  // the first 8 bytes: already uniform
    size_t v;
    std::memcpy(&v, h.bytes.data(), sizeof v);
    return v;
  }
};

// True when every byte of `page` is zero (such pages are elided everywhere).
bool is_zero_page(std::span<const std::byte> page);

struct PageStoreOptions {
  // zstd level for stored pages; 0 stores them raw. A page that does not shrink is stored raw.
  int compression_level = 0;
  // fsync at every commit (a committed version survives a power cut). Off only for tests and
  // benchmarks that say so.
  bool durable = true;
  // A pack file (where page contents are appended) is closed for appends past this size and a new
  // one started; garbage collection deletes a pack file once no page in it is referenced.
  uint64_t pack_file_bytes = uint64_t{1} << 30;
  // Threads that hash, compress and write the pages a VersionWriter is given (0: one per core, at
  // most 8). Hashing (BLAKE2b, about 0.9 GB/s per core here) is what bounds a checkpoint.
  unsigned writer_threads = 0;
};

// One page of a version: its index in the heap and the hash of its content.
struct PageRef {
  uint64_t index = 0;
  PageHash hash;
  bool operator==(const PageRef&) const = default;
};

struct VersionInfo {
  uint64_t version = 0;        // 1, 2, 3 … in commit order; never reused
  uint64_t parent = 0;         // the version this one was written on top of (0: none)
  uint32_t page_size = 0;
  uint64_t capacity_pages = 0;
  uint64_t pages = 0;          // non-zero pages in the version
  uint64_t pages_written = 0;  // pages whose content was new to the store when it committed
  int64_t created_unix_ms = 0;
};

// A whole version: every non-zero page (ascending index) and the caller's opaque runtime record.
struct Manifest {
  VersionInfo info;
  std::vector<PageRef> pages;
  std::string record;
};

// Which versions remove_by_policy keeps: the newest keep_last, and any newer than keep_within_ms.
// The newest version is always kept.
struct RetentionPolicy {
  uint64_t keep_last = 8;
  int64_t keep_within_ms = 0;
};

struct GcStats {
  uint64_t pages_removed = 0;
  uint64_t bytes_reclaimed = 0;
};

class PageStore;
class VersionPin;
namespace internal {
struct StoreCore;
}

// The atomic write of a set of pages (DESIGN §7's store API): stage puts and deletes on top of a
// parent version, then commit them together with the runtime record, or abort. Destroyed without
// commit, it aborts. Nothing a writer stages is visible in any version until commit returns.
class VersionWriter {
 public:
  VersionWriter(VersionWriter&&) noexcept;
  VersionWriter& operator=(VersionWriter&&) noexcept;
  ~VersionWriter();

  // Page `index` takes this content (stored once however many versions hold it; an all-zero
  // page is recorded as a delete). The page is copied before put returns, then hashed and written
  // by the store's writer threads while the caller goes on; a failure to store it is returned by
  // a later put or by commit.
  Status put(uint64_t index, std::span<const std::byte> page);
  // Page `index` takes content already in the store (a page put earlier with put_page).
  Status put_hash(uint64_t index, const PageHash& hash);
  // Page `index` becomes zero.
  Status zero(uint64_t index);
  // Commits every staged change, in one transaction, with `record`. After a crash at any moment
  // the store holds either the parent's versions alone or this version whole. With `pin`, the
  // new version is pinned as it becomes visible, so no removal can come between, and `*pin`
  // holds that pin (what it held before is released after).
  Result<VersionInfo> commit(std::string_view record, VersionPin* pin = nullptr);
  void abort();

 private:
  friend class PageStore;
  struct State;
  explicit VersionWriter(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// Receives an exported version (see PageStore::export_version): the manifest first, then pages.
// A manifest as bytes, to travel or be kept elsewhere (a checkpoint's manifest as a value in the
// space, fetched by the node it migrates to: DESIGN §9 step 7): "DJHM", the version's numbers as
// varints, the runtime record, then the pages as the store keeps them (index gaps as varints,
// 32-byte hashes). manifest_from_bytes checks all of it (a power-of-two page size, ascending
// indexes below the capacity, the page count, nothing left over): INVALID_ARGUMENT saying what
// is wrong.
std::vector<uint8_t> manifest_to_bytes(const Manifest& manifest);
Result<Manifest> manifest_from_bytes(std::span<const uint8_t> bytes);

// Keeps a version in its store while it lives (PageStore::pin_version): remove_version of it is
// FAILED_PRECONDITION, remove_by_policy passes it by, and so garbage collection keeps its pages.
// A heap pins the version it runs on, whose pages it loads on demand. Pins are counted: several
// may hold one version, which may go once none is left. Movable; a default-constructed or
// moved-from pin holds nothing. A pin must not outlive its store (a store closed with pins held
// says so in its log, and debug builds stop there).
class VersionPin {
 public:
  VersionPin() = default;
  VersionPin(VersionPin&& other) noexcept;
  VersionPin& operator=(VersionPin&& other) noexcept;
  ~VersionPin();

  uint64_t version() const { return version_; }  // 0: holds nothing
  explicit operator bool() const { return store_ != nullptr; }
  void reset();  // releases it now

 private:
  friend class PageStore;
  friend struct internal::StoreCore;
  VersionPin(internal::StoreCore* store, uint64_t version) : store_(store), version_(version) {}
  internal::StoreCore* store_ = nullptr;
  uint64_t version_ = 0;
};

struct ExportSink {
  std::function<Status(const Manifest&)> manifest;
  std::function<Status(const PageHash&, std::span<const std::byte> page)> page;
};

class PageStore {
 public:
  // Opens (creating when missing) the store in directory `dir`. A second open of the same
  // directory, in this process or another, is refused with FAILED_PRECONDITION saying so.
  static Result<std::unique_ptr<PageStore>> open(const std::filesystem::path& dir,
                                                 PageStoreOptions options = {});
  ~PageStore();  // closes; an open VersionWriter must not outlive its store

  // --- content-addressed pages
  bool contains(const PageHash& hash) const;
  // The hashes of `hashes` that the store lacks, in their order (what a receiver asks for).
  std::vector<PageHash> missing(std::span<const PageHash> hashes) const;
  // Fills `out` (the page's size) with the page's content; NOT_FOUND when absent, DATA_LOSS when
  // the stored bytes are not what was written (their checksum, or for pages stored before
  // checksums their hash, disagrees).
  Status read_page(const PageHash& hash, std::span<std::byte> out) const;
  // Reads pages `hashes` into `out` (one page size each, one after the other), with one read
  // for each run of them that lies in order in a pack (a heap's sequential page-in). Returns how
  // many leading pages were read; the error of the first that failed goes to `error`.
  size_t read_pages(std::span<const PageHash> hashes, uint32_t page_size, std::span<std::byte> out,
                    Status* error) const;
  // The same without a copy where the store can: `use(first, pages)` gets pages [first, first +
  // pages.size() / page_size) of `hashes`, in order and checked, as a view of the store's files
  // (raw pages that lie in order in a pack come as one view) or, for compressed pages and where
  // a file cannot be viewed, read into `scratch` (room for every page, page k at k * page_size).
  // A view is valid only until `use` returns; `use` must not call back into the store. Returns
  // how many leading pages were handed over; the error of the first that could not be (or that
  // `use` returned) goes to `error`. A heap maps pages straight from the views (UFFDIO_COPY).
  using PageVisitor = std::function<Status(size_t first, std::span<const std::byte> pages)>;
  size_t visit_pages(std::span<const PageHash> hashes, uint32_t page_size, std::span<std::byte> scratch,
                     const PageVisitor& use, Status* error) const;
  // Stores content outside any version (an evicted dirty page, an imported page) and returns its
  // hash. Such a page is kept until this store is closed or a committed version refers to it.
  Result<PageHash> put_page(std::span<const std::byte> page);
  // The same for the pages of `page_size` bytes at `pages`, appended together (one write, one
  // write-back started): pages arriving in runs. Returns their hashes, in order. With `expected`
  // (one hash a page: pages received as those), a page that is not what its name says refuses
  // the whole run with DATA_LOSS, nothing kept, and a page the store already holds is left as it
  // is (the version arriving holds it once committed) rather than pinned.
  Result<std::vector<PageHash>> put_pages(std::span<const std::byte> pages, uint32_t page_size,
                                          std::span<const PageHash> expected = {});
  // The same for a caller that says when it no longer needs the page: each call holds it once
  // more, and it is kept until release_pages gives every hold back (or the store is closed),
  // whatever versions take it or are removed meanwhile. A heap's evicted dirty page, needed until
  // a checkpoint holds it.
  Result<PageHash> hold_page(std::span<const std::byte> page);
  // Gives back one hold of each of `hashes` (a hash may come more than once). A page left with no
  // hold, no put_page waiting for a version and no open writer or import that staged it, is
  // deleted unless a version holds it. FAILED_PRECONDITION, nothing given back, for a page
  // released more times than it is held.
  Status release_pages(std::span<const PageHash> hashes);

  // --- versions
  // Starts a version on top of `parent` (0: an empty heap): unstaged pages keep the parent's
  // content. The page size and capacity are the heap's; they must equal the parent's.
  Result<VersionWriter> begin_version(uint64_t parent, uint32_t page_size, uint64_t capacity_pages);
  std::vector<VersionInfo> versions() const;  // ascending
  std::optional<VersionInfo> latest() const;
  Result<Manifest> manifest(uint64_t version) const;
  // Keeps `version` in the store while the pin lives (VersionPin); NOT_FOUND for a version the
  // store lacks. An open heap pins the version it runs on.
  Result<VersionPin> pin_version(uint64_t version);
  // Removes a version (its pages stay while another version, a pending put_page or a hold holds
  // them). FAILED_PRECONDITION, nothing removed, while a VersionPin holds it or an open
  // VersionWriter is written on top of it.
  Status remove_version(uint64_t version);
  // Removes the versions the policy does not keep (never a pinned version nor the parent of an
  // open VersionWriter: those it keeps, logging the pinned ones it would have removed); returns
  // how many it removed.
  Result<uint64_t> remove_by_policy(const RetentionPolicy& policy);
  // Deletes pages no version, no pending put_page and no hold refers to.
  Result<GcStats> collect_garbage();

  // --- migration (DESIGN §9 step 7)
  // Streams version `version` to `sink`: its manifest, then the content of every page whose hash
  // is not in `receiver_has`, each page once, read in runs of at most 1 MiB (memory bounded by one).
  Status export_version(uint64_t version, std::span<const PageHash> receiver_has,
                        const ExportSink& sink) const;
  // The receiving side: `import_begin` takes the sender's manifest, the pages follow through
  // `import_page` (each checked against its hash), `import_commit` checks that every page of the
  // manifest is now present and commits the version here (a new local version number, parent 0)
  // atomically. An Import destroyed without commit leaves nothing behind; it must not outlive the
  // store.
  // A malformed manifest (a bad page size or capacity, an index beyond the capacity, indexes not
  // strictly ascending, a page count that disagrees with its list) is INVALID_ARGUMENT.
  class Import;
  Result<std::unique_ptr<Import>> import_begin(const Manifest& manifest);

  const std::filesystem::path& dir() const;
  struct Stats {
    uint64_t pages_stored = 0;   // pages in the index (committed by some version or import)
    uint64_t bytes_stored = 0;   // their bytes on disk, after compression
    uint64_t pages_pending = 0;  // pages put (put_page, hold_page) that no committed version holds yet
    uint64_t pack_files = 0;
  };
  Stats stats() const;

 private:
  struct Impl;
  explicit PageStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class PageStore::Import {
 public:
  virtual ~Import() = default;
  // Pages the store still needs for this manifest (ask the sender for these).
  virtual std::vector<PageHash> needed() const = 0;
  // INVALID_ARGUMENT for a page the import does not need or of the wrong size, DATA_LOSS for
  // content that does not hash to `hash` (refused, nothing stored).
  virtual Status import_page(const PageHash& hash, std::span<const std::byte> page) = 0;
  // FAILED_PRECONDITION while some needed page has not arrived. With `pin`, the new version is
  // pinned as it becomes visible (as VersionWriter::commit does).
  virtual Result<VersionInfo> import_commit(VersionPin* pin = nullptr) = 0;
};

}  // namespace djinn::heapstore
