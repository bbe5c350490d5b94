// The heap of DESIGN §7: a reserved range of virtual memory split into fixed pages, demand-paged
// from a PageStore, dirty-tracked by the MMU, evicted under a resident budget far smaller than its
// capacity, and checkpointed atomically as a version of the store.
//
//   auto store = PageStore::open(dir);
//   auto heap = Heap::open(**store, 0, {.capacity_bytes = 1 << 30, .budget_bytes = 64 << 20});
//   std::memcpy((*heap)->base() + 4096, "hello", 5);   // plain loads and stores
//   auto v1 = (*heap)->checkpoint(runtime_record);      // the pages written since the last one
//   ...
//   auto again = Heap::open(**store, v1->version);      // restore, at any base address
//
// How it works: the range is registered with a userfaultfd. A missing page faults to the heap's
// fault thread, which loads it (and a run of its neighbours) from the store, write-protected. On kernels with UFFD_FEATURE_WP_ASYNC (Linux 6.7) the first write to a
// protected page is resolved by the kernel itself and PAGEMAP_SCAN later reports the written pages
// and protects them again; elsewhere each first write is a synchronous write-protect fault served
// by the fault thread. Over budget, the fault thread evicts pages with a CLOCK sweep (a dirty
// victim is put in the store first) and unmaps them, so they fault in again. On Linux 6.8 and
// later the unmapped pages are kept in a page pool (UFFDIO_MOVE) and page-ins reuse them rather
// than have the kernel allocate pages: resident and pooled pages together stay within the budget.
//
// One mutator at a time (DESIGN §8: an app's handlers run one at a time). Evictions and page-ins
// happen inside faults, while the faulting thread waits; a write made by another thread (or a
// signal handler) at that moment could be lost. Threads that only read, or that write while no other thread can
// fault, are fine. checkpoint(), pin() and trim() run at a safe point: no thread is writing the
// heap while they run.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "djinn/core/status.h"
#include "djinn/heapstore/page_store.h"

namespace djinn::heapstore {

// How first writes to clean pages are noticed.
enum class DirtyTracking {
  kAuto,              // asynchronous when the kernel has it, else synchronous
  kAsync,             // UFFD_FEATURE_WP_ASYNC + PAGEMAP_SCAN (Linux >= 6.7)
  kSyncWriteProtect,  // a userfaultfd write-protect fault per first write (Linux >= 5.7)
};
std::string_view tracking_name(DirtyTracking tracking);

// Measured (bench-heapstore --compare-page-sizes, docs/heapstore.md "Page size"): with 4 KiB pages
// a random touch loads 2.3x (16 KiB) to 7x (64 KiB) less and sparse writes checkpoint 4x to 15x
// fewer bytes; larger pages only speed up sequential page-in, which fault-around batches anyway.
// The MMU tracks writes per 4 KiB whatever the heap's page size.
inline constexpr uint32_t kDefaultPageSize = 4096;

struct HeapOptions {
  // A new heap's capacity (rounded up to whole pages) and page size (a power of two, 4 KiB to
  // 2 MiB). A heap opened from a version has that version's, whatever these say.
  uint64_t capacity_bytes = 256ull << 20;
  uint32_t page_size = kDefaultPageSize;
  // Pages resident at once (rounded down to whole pages, at least 16 pages). Pinned pages count.
  uint64_t budget_bytes = 64ull << 20;
  DirtyTracking tracking = DirtyTracking::kAuto;
  // Where to map the heap; nullptr: wherever the kernel likes. Objects in a heap do not care.
  void* base_address = nullptr;
  // A fault loads a run of up to this many pages, its own and the non-resident ones after it;
  // while faults keep landing where the previous run ended (sequential access) the run doubles,
  // up to the maximum (at most a quarter of the budget and 4 MiB), and a scan at the maximum gets
  // the next run read ahead. 8: the cheapest random page-in per page touched of 4, 8 and 16 here;
  // 1024: sequential page-in about 4,300 -> 4,900 MB/s against 512 (each run costs a fault round
  // trip), and 1,700 -> 2,100 MB/s for 512 against 64 before; 2048 (8 MiB runs) gained nothing
  // measurable, with the page pool or without (bench-heapstore --fault-around-max).
  uint32_t fault_around_pages = 8;
  uint32_t fault_around_max_pages = 1024;
  // After serving a fault, the fault thread polls for the next one this long before it sleeps:
  // a fault that finds it awake costs half as much (bench-heapstore). 0: sleep at once.
  uint32_t fault_spin_us = 50;
  // Threads that load long runs (sequential faults, 64 pages or more) beside the fault thread,
  // each mapping its part straight from the store's views of its packs (0: none). Mapping costs
  // most, the kernel allocating every page, and it scales with threads: one took sequential
  // page-in from 2,240 to 3,300 MB/s on two cores when pages were still read into a buffer first
  // (bench-heapstore --load-threads); two did worse. Random faults stay on the fault thread.
  uint32_t load_threads = 1;
  // The page pool (Linux 6.8 and later): evicted pages are kept and page-ins reuse them rather
  // than have the kernel allocate pages. false: evictions give pages back to the kernel.
  bool page_pool = true;
  // Pages allocated into the pool when the heap opens (as by reserve(), within the budget).
  uint64_t reserve_bytes = 0;
};

// DESIGN §7's page states. A page is empty (all zero, never stored, not resident), resident
// (clean: the same as its persisted copy, or zero), dirty (written since it was last persisted),
// flushing (being written by a checkpoint) or persistent (not resident; its content is in the
// store under its hash).
enum class PageState : uint8_t { kEmpty, kResident, kDirty, kFlushing, kPersistent };
// System pages hold the heap's own structures (the object segment's header); user pages the
// application's data. Both are paged alike; system pages are pinned by whoever marks them.
enum class PageType : uint8_t { kUser, kSystem };
std::string_view page_state_name(PageState state);

struct PageInfo {
  uint64_t index = 0;
  PageState state = PageState::kEmpty;
  PageType type = PageType::kUser;
  bool pinned = false;
  bool accessed = false;  // the CLOCK's reference bit
  // The hash of the page's last persisted copy (none for a zero page, or when a resident page's
  // hash is not asked for).
  std::optional<PageHash> hash;
  // The page differs from the heap's version and the next checkpoint writes it.
  bool pending = false;
};

struct HeapStats {
  uint64_t capacity_pages = 0;
  uint64_t budget_pages = 0;
  uint64_t resident_pages = 0;
  uint64_t pinned_pages = 0;
  uint64_t pending_pages = 0;  // known to differ from the version (dirty ones as of the last scan)
  uint64_t pool_pages = 0;     // held in the page pool, not mapped (resident + pool <= budget)
  uint64_t faults = 0;           // missing-page faults served
  uint64_t pages_loaded = 0;     // pages read from the store (faulting ones and their neighbours)
  uint64_t pages_zero_filled = 0;
  uint64_t pages_read_ahead = 0;  // mapped ahead of a sequential scan (loaded or zero-filled)
  uint64_t pages_from_pool = 0;   // taken from the pool to be mapped (loaded or zero-filled; a
                                  // failed load gives its pages back to the kernel)
  uint64_t pages_to_pool = 0;     // evicted into the pool rather than dropped
  uint64_t write_faults = 0;     // synchronous write-protect faults (kSyncWriteProtect)
  uint64_t evictions = 0;        // pages dropped to stay within the budget (or kept in the pool)
  uint64_t dirty_evictions = 0;  // of which dirty, written first
  uint64_t flushes = 0;          // pages put in the store by evictions
  uint64_t over_budget_loads = 0;  // faults served with the budget already full of pinned pages
  uint64_t load_errors = 0;      // pages the store could not give (the faulting thread got SIGBUS)
  uint64_t pages_fetched = 0;    // incoming pages fetched from the PageSource (faults and fetch_rest)
  uint64_t dirty_scans = 0;      // PAGEMAP_SCAN collections (kAsync)
  uint64_t checkpoints = 0;
  uint64_t pages_checkpointed = 0;  // pages staged by checkpoints (content or hash or zero)
};

// Where a heap opened before its pages all arrived gets the rest (DESIGN §9, post-copy): the
// node's own cache, the space, or the node the application came from. Called on the heap's fault
// thread (one page run at a time, the faulting thread waiting) and on whichever thread runs
// fetch_rest(); it must be safe to call from both at once.
//
// On the fault thread, fetch runs while the heap's lock is held: until it returns, no other fault
// on the heap is served, no call that takes the lock (checkpoint, pin, trim, stats) proceeds, and
// the heap's destruction waits for the fault thread. A source must therefore bound its own time,
// with a timeout of its own on every network or disk wait, and answer an error when it runs out
// rather than block: a fetch that never returns stalls every thread that faults on the heap and
// whoever destroys it.
class PageSource {
 public:
  virtual ~PageSource() = default;
  using Deliver = std::function<Status(const PageHash& hash, std::span<const std::byte> page)>;
  // Fetches the pages named `hashes` and hands each to `deliver`, in any order; an error (or
  // one from `deliver`) ends the fetch. A page not delivered counts as not fetched. Returns
  // within a time the source bounds itself (above): an error when it cannot have them by then.
  virtual Status fetch(std::span<const PageHash> hashes, const Deliver& deliver) = 0;
};

class Heap {
 public:
  // Opens the heap of `version` of `store` (0: a new, all-zero heap). Pages are loaded on first
  // touch. The store must outlive the heap. The heap pins the version it runs on (a VersionPin,
  // taken here, moved to each version a checkpoint commits, given back when the heap closes), so
  // no removal or retention on the store, by this heap's owner or another heap's, takes the
  // version or its pages from under it: remove_version of it is FAILED_PRECONDITION while the
  // heap is open.
  static Result<std::unique_ptr<Heap>> open(PageStore& store, uint64_t version, HeapOptions options = {});
  // Post-copy (DESIGN §9): opens the heap of `manifest`, a version of another store (received as
  // bytes: manifest_from_bytes), before its pages are all in `store`. The application may run at
  // once: a page the store lacks is fetched from `source` when it is first touched (with the run
  // of neighbours a fault loads), checked against its hash and kept in `store`; fetch_rest()
  // brings the others. Until then an import session holds in `store` the manifest's pages it
  // already had, version() is 0 and incoming() is true; once all are here the manifest becomes a
  // version of `store`, pinned as it commits as Heap::open's version is, and version() names it.
  // A page the source cannot give when it is touched is a page that cannot be loaded: the
  // touching thread gets SIGBUS.
  // INVALID_ARGUMENT for a malformed manifest (as import_begin). `source` must outlive the heap's
  // incoming phase.
  static Result<std::unique_ptr<Heap>> open_incoming(PageStore& store, const Manifest& manifest, PageSource& source,
                                                     HeapOptions options = {});
  // Fetches every page of the incoming manifest still missing, `batch` pages a call to the
  // source, in manifest order, and commits the manifest as a version of the store; returns it
  // (the heap's version from then on). Safe from another thread while the application runs, but
  // the heap must not be destroyed until it returns, and neither `progress(done, total)` (after
  // each batch) nor the source may call back into the heap. After the first success it returns
  // the version again. checkpoint() calls it first on an incoming heap.
  Result<VersionInfo> fetch_rest(size_t batch = 256,
                                 const std::function<void(uint64_t done, uint64_t total)>& progress = {});
  bool incoming() const;
  // What kAuto would choose on this machine, and why not the other when it cannot.
  static DirtyTracking auto_tracking();
  static std::string tracking_support();

  // Stops the fault thread and unmaps the heap. Nothing is written: what was not checkpointed is
  // lost, as after a crash. No thread may be touching the heap.
  ~Heap();
  Heap(const Heap&) = delete;
  Heap& operator=(const Heap&) = delete;

  std::byte* base() const;
  uint64_t size() const;  // capacity in bytes
  uint32_t page_size() const;
  uint64_t capacity_pages() const;
  uint64_t budget_pages() const;
  DirtyTracking tracking() const;
  PageStore& store() const;
  // The version the heap's content is based on (0: none yet), and that version's runtime record.
  uint64_t version() const;
  std::string record() const;

  // DESIGN §7's checkpoint, at a safe point: collects the pages written since the last checkpoint,
  // writes them (and the content of dirty pages evicted since, by hash) as a new version on top
  // of version(), with `record`, atomically. On failure the heap is as before: its pages stay
  // dirty and the next checkpoint writes them.
  Result<VersionInfo> checkpoint(std::string_view record);
  // The pages that differ from version() now (what the next checkpoint writes), ascending.
  Result<std::vector<uint64_t>> dirty_pages();

  // Marks the pages covering [offset, offset + length) pinned (never evicted) and of `type`, and
  // loads them. Pinned pages count against the budget. At a safe point.
  Status pin(uint64_t offset, uint64_t length, PageType type = PageType::kUser);
  Status unpin(uint64_t offset, uint64_t length);
  // Evicts until at most `max_resident_pages` are resident (pinned pages stay) and frees the
  // page pool. At a safe point.
  Status trim(uint64_t max_resident_pages);
  // Allocates pages into the page pool until it holds `bytes` (at most what the budget leaves
  // beside the resident pages), so that as many page-ins allocate nothing: a node receiving an
  // application reserves while its pages are on their way. Does nothing on kernels without
  // UFFDIO_MOVE (before Linux 6.8). At a safe point.
  Status reserve(uint64_t bytes);

  // The page table for pages [first, first + count) that are not empty (migration exports the
  // pages a receiver lacks from it). With `hashes`, resident clean pages whose hash is not known
  // are hashed (at a safe point); without, only known hashes are given.
  Result<std::vector<PageInfo>> page_table(uint64_t first = 0, uint64_t count = UINT64_MAX, bool hashes = false);
  HeapStats stats() const;

  struct Impl;

 private:
  explicit Heap(std::unique_ptr<Impl> impl);
  static Result<std::unique_ptr<Heap>> open_with(PageStore& store, std::optional<Manifest> manifest, uint64_t version,
                                                 HeapOptions options);
  std::unique_ptr<Impl> impl_;
};

}  // namespace djinn::heapstore
