// The heap (heap.h): its region, its page table, the fault thread that loads pages and evicts them
// under the budget, and the checkpoint. Every piece of mutable state is guarded by Impl::mu, taken
// by the fault thread for each batch of faults and by the API calls. A thread holding `mu` never
// touches a page that is not resident, so it never waits for the fault thread, which needs `mu`.
#include "djinn/heapstore/heap.h"

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_set>

#include "djinn/core/fault.h"
#include "djinn/core/log.h"
#include "heap_loader.h"
#include "heap_mmu.h"
#include "heap_page_table.h"
#include "heap_pool.h"
#include "uffd_abi.h"

namespace djinn::heapstore {

using internal::PageEntry;

namespace {

constexpr uint64_t kSystemPageSize = 4096;
constexpr uint64_t kMinBudgetPages = 16;
// Pages the CLOCK hand examines per PAGEMAP_SCAN when it looks for victims (asynchronous mode):
// one scan refreshes the dirty and reference bits of a window before the hand passes over it.
constexpr uint64_t kSweepWindow = 512;
// The largest reservation accepted: 2^46 bytes, a quarter of the user address space.
constexpr uint64_t kMaxHeapBytes = uint64_t{1} << 46;
// Runs from this many pages on are loaded by the fault thread and the load threads together;
// shorter ones (random faults) by the fault thread alone, which is quicker than waking a helper.
constexpr uint32_t kMinSharedRunPages = 64;
// Runs from this many pages on take their pages from the pool, as do a sequential scan's
// (serve_missing_locked).
constexpr uint32_t kMinPooledRunPages = 64;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

}  // namespace

std::string_view tracking_name(DirtyTracking tracking) {
  switch (tracking) {
    case DirtyTracking::kAuto: return "auto";
    case DirtyTracking::kAsync: return "async-wp";
    case DirtyTracking::kSyncWriteProtect: return "sync-wp";
  }
  return "?";
}

std::string_view page_state_name(PageState state) {
  switch (state) {
    case PageState::kEmpty: return "empty";
    case PageState::kResident: return "resident";
    case PageState::kDirty: return "dirty";
    case PageState::kFlushing: return "flushing";
    case PageState::kPersistent: return "persistent";
  }
  return "?";
}

struct Heap::Impl {
  Impl(PageStore& s, uint32_t page, uint64_t capacity, uint64_t budget, const HeapOptions& o)
      : store(&s), page_size(page), capacity_pages(capacity), budget_pages(budget), options(o), table(capacity) {}
  ~Impl();

  PageStore* store;
  const uint32_t page_size;
  const uint64_t capacity_pages;
  const uint64_t budget_pages;
  const HeapOptions options;
  DirtyTracking mode = DirtyTracking::kAsync;
  std::byte* base = nullptr;
  uint64_t length = 0;
  std::unique_ptr<internal::Mmu> mmu;

  mutable std::mutex mu;  // guards everything below
  internal::PageTable table;
  std::vector<uint64_t> pending;  // pages with PageEntry::kPending, in no order
  uint64_t resident = 0;
  uint64_t pinned = 0;
  uint64_t version = 0;
  // Keeps `version` in the store (none for 0): the heap's non-resident pages load from it, and a
  // store shared with other heaps would otherwise let their retention remove it.
  VersionPin pin;
  std::string record;
  uint64_t hand = 0;  // the CLOCK hand: the next page the sweep examines
  HeapStats counters;
  // Fault-around: where the last run ended and how long it was.
  uint64_t last_run_end = UINT64_MAX;
  uint64_t window = 0;
  // Read-ahead: the run loaded ahead of a sequential scan, [ahead_begin, last_run_end); none when
  // ahead_begin is UINT64_MAX.
  uint64_t ahead_begin = UINT64_MAX;
  // The fault thread's buffers, a run long each: pages the store decodes or reads rather than
  // views, the run's hashes, and the source of zero pages. Allocated untouched (calloc of this
  // size maps fresh memory): most heaps never write the first, and the second is only read, so
  // neither costs a page until used.
  struct FreeDeleter {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::unique_ptr<std::byte, FreeDeleter> staging;
  std::vector<PageHash> hashes;
  std::unique_ptr<std::byte, FreeDeleter> zeros;
  std::vector<uint8_t> mapped;  // which pages of a run the loader mapped
  std::unique_ptr<internal::PagePool> pool;  // null on kernels without UFFDIO_MOVE
  std::unique_ptr<internal::PageLoader> loader;
  // Post-copy: the manifest being received, where its missing pages come from, and an import
  // session holding against garbage collection the pages the store had when the heap opened;
  // until fetch_rest() commits it (then `version` names it and `completed` is its info).
  struct Incoming {
    Manifest manifest;
    PageSource* source;
    std::unique_ptr<PageStore::Import> holding;
  };
  std::optional<Incoming> incoming;
  std::optional<VersionInfo> completed;
  std::mutex fetch_mu;  // one fetch_rest() at a time
  // The source's error for the run being loaded (load_run_locked's prefetch): the run's pages
  // are not asked for again.
  Status run_fetch_error;

  std::thread fault_thread;
  int stop_fd = -1;
  std::atomic<bool> stopping{false};

  uintptr_t addr(uint64_t page) const { return reinterpret_cast<uintptr_t>(base) + page * page_size; }
  std::span<std::byte> page_span(uint64_t page) const { return {base + page * page_size, page_size}; }
  bool async() const { return mode == DirtyTracking::kAsync; }

  // Fetches from `from` those of `hashes` the store lacks and keeps them in the store (pending
  // until a version holds them), each checked against its name, appended a few MiB at a time;
  // returns how many arrived. What arrived before an error is kept. Needs no lock of the heap.
  Result<uint64_t> fetch_missing(PageSource& from, std::span<const PageHash> hashes) const {
    std::vector<PageHash> lacking = store->missing(hashes);
    // Asked once each: pages of the same content share a name, and a source answers each name
    // it is given.
    std::sort(lacking.begin(), lacking.end());
    lacking.erase(std::unique(lacking.begin(), lacking.end()), lacking.end());
    if (lacking.empty()) return uint64_t{0};
    constexpr size_t kAppendBytes = size_t{4} << 20;
    std::vector<std::byte> arrived;
    std::vector<PageHash> names;
    uint64_t got = 0;
    auto keep = [&]() -> Status {
      if (names.empty()) return Status();
      Result<std::vector<PageHash>> kept = store->put_pages(arrived, page_size, names);
      if (!kept.ok()) return Status(kept.status().code(), "incoming pages: " + kept.status().message());
      got += names.size();
      arrived.clear();
      names.clear();
      return Status();
    };
    // Only what was asked, once: a source that sent more would fill the store with pages nothing
    // holds.
    std::unordered_set<PageHash, PageHashHasher> asked(lacking.begin(), lacking.end());
    Status st = from.fetch(lacking, [&](const PageHash& hash, std::span<const std::byte> page) -> Status {
      if (asked.erase(hash) == 0) {
        return data_loss("incoming page " + hash.hex() + ": the source sent a page that was not asked for, or sent it twice");
      }
      if (page.size() != page_size) {
        return data_loss("incoming page " + hash.hex() + ": the source sent " + std::to_string(page.size()) +
                         " bytes for a page of " + std::to_string(page_size));
      }
      arrived.insert(arrived.end(), page.begin(), page.end());
      names.push_back(hash);
      return arrived.size() >= kAppendBytes ? keep() : Status();
    });
    Status kept = keep();
    if (!st.ok()) return st;
    if (!kept.ok()) return kept;
    return got;
  }

  // An incoming heap's pages `names` that the store lacks, from its source, counted. Within a run
  // whose prefetch failed, the source is not asked again: its error is the answer.
  Status fetch_locked(std::span<const PageHash> names) {
    if (!incoming || !run_fetch_error.ok()) return run_fetch_error;
    Result<uint64_t> got = fetch_missing(*incoming->source, names);
    if (!got.ok()) return got.status();
    counters.pages_fetched += *got;
    return Status();
  }

  // An incoming heap's run [first, first + n): its pages the store lacks, in one fetch, so that
  // the faulting page and its neighbours cost one round trip. A failure is left to the loads.
  void prefetch_locked(uint64_t first, uint64_t n) {
    hashes.clear();
    for (uint64_t p = first; p < first + n; ++p) {
      const PageEntry* e = table.find(p);
      if (e && e->state == PageState::kPersistent) hashes.push_back(e->hash);
    }
    if (!hashes.empty()) run_fetch_error = fetch_locked(hashes);
  }

  void mark_pending(uint64_t i, PageEntry& e) {
    if (!e.has(PageEntry::kPending)) {
      e.set(PageEntry::kPending);
      pending.push_back(i);
    }
  }
  void mark_dirty(uint64_t i, PageEntry& e) {
    if (e.state == PageState::kResident) e.state = PageState::kDirty;
    e.set(PageEntry::kAccessed);
    mark_pending(i, e);
  }

  void fault_loop();
  void serve_locked(const uffd_msg& msg);
  void serve_missing_locked(uint64_t i, bool write);
  void read_ahead_locked();
  void serve_write_protect_locked(uint64_t i);
  // Loads pages [i, i + n) (non-resident), the faulting page i writable when `write`. Returns
  // false when page i itself could not be loaded.
  bool load_run_locked(uint64_t i, uint64_t n, bool write, bool pooled);
  // Maps pages [first, first + count) (non-resident) with their content from the store, or zero;
  // returns how many from `first` were mapped before a page the store could not give (`error`).
  // Each part is woken as it is mapped; `from_pool`: as many as the pool holds go through its
  // pages, and nothing is woken (the caller wakes the run once it is all protected).
  uint64_t install_locked(uint64_t first, uint64_t count, bool writable_first, Status* error,
                          bool from_pool = false);
  // Maps pages [first, first + n) as zero pages, write-protected when `wp`.
  Status map_zero_locked(uint64_t first, uint64_t n, bool wp, bool from_pool);
  uint64_t pool_size() const { return pool ? pool->size() : 0; }
  // Pages that may still be allocated or kept: the budget less the resident and pooled ones.
  uint64_t budget_room() const {
    uint64_t used = resident + pool_size();
    return budget_pages > used ? budget_pages - used : 0;
  }
  // Before the kernel allocates `pages`: when they do not fit in the budget beside the pool's,
  // the pool shrinks until they do, with `spare` pages to go.
  void make_room_locked(uint64_t pages, uint64_t spare) {
    if (pages <= budget_room()) return;
    uint64_t need = resident + pages + spare;
    pool->shrink(budget_pages > need ? budget_pages - need : 0);
  }
  // Allocates pool pages up to `pages`, within what the budget leaves beside the resident ones.
  Status reserve_locked(uint64_t pages);
  void fail_page_locked(uint64_t i, const Status& why);

  // Asynchronous mode: marks dirty the resident pages in [first, end) written since they were
  // last protected, and protects them again.
  Status refresh_written_locked(uint64_t first, uint64_t end);
  // DESIGN §7's dirty set: every page written since the last checkpoint is kDirty and pending
  // afterwards, and write-protected again.
  Status collect_dirty_locked();
  // Frees at least `want` resident pages by the CLOCK (fewer when the rest are pinned), into the
  // pool when `to_pool` and there is one.
  uint64_t evict_locked(uint64_t want, bool to_pool = false);
  // Unmaps the victims (ascending): a dirty one is put in the store first.
  uint64_t drop_locked(std::vector<uint64_t>& victims, bool to_pool);
  // The hash of a clean resident page, learnt by hashing it; nullopt for a zero page.
  std::optional<PageHash> clean_hash_locked(uint64_t i, PageEntry& e);
  // The copies dirty evictions hold in the store for pages still pending (kHeld), no longer held
  // by them: a checkpoint holds those pages now, or the heap is closing.
  std::vector<PageHash> take_held_locked() {
    std::vector<PageHash> out;
    for (uint64_t p : pending) {
      PageEntry& e = table.at(p);
      if (!e.has(PageEntry::kHeld)) continue;
      out.push_back(e.hash);
      e.clear(PageEntry::kHeld);
    }
    return out;
  }
  // Gives the store back copies that evictions held. Put for good instead, every dirty eviction's
  // copy would stay until the store closed, each rewrite of a page one more.
  void give_back(std::span<const PageHash> hashes) {
    if (hashes.empty()) return;
    if (Status st = store->release_pages(hashes); !st.ok()) {
      DJINN_LOG(kError, "heapstore") << "giving back pages evicted from a heap: " << st.to_string();
    }
  }
};

Heap::Impl::~Impl() {
  if (fault_thread.joinable()) {
    stopping.store(true);
    uint64_t one = 1;
    (void)!::write(stop_fd, &one, sizeof one);
    fault_thread.join();
  }
  if (stop_fd >= 0) ::close(stop_fd);
  give_back(take_held_locked());  // what was not checkpointed is lost, as after a crash
  loader.reset();
  pool.reset();
  mmu.reset();  // unregisters before the range goes away
  if (base) ::munmap(base, length);
}

// ---------------------------------------------------------------------------------------------
// The fault thread

void Heap::Impl::fault_loop() {
  pthread_setname_np(pthread_self(), "heap-faults");
  constexpr int kBatch = 32;
  uffd_msg msgs[kBatch];
  pollfd fds[2] = {{mmu->fd(), POLLIN, 0}, {stop_fd, POLLIN, 0}};
  const auto spin = std::chrono::microseconds(options.fault_spin_us);
  auto last = std::chrono::steady_clock::now();
  try {
    while (!stopping.load(std::memory_order_relaxed)) {
      int n = mmu->read_faults(msgs, kBatch);
      if (n < 0) {
        DJINN_LOG(kError, "heapstore") << "heap fault thread: reading the userfaultfd failed: " << std::strerror(errno);
        std::abort();  // the faulting threads would wait forever
      }
      if (n > 0) {
        std::lock_guard lock(mu);
        for (int k = 0; k < n; ++k) serve_locked(msgs[k]);
        last = std::chrono::steady_clock::now();
        continue;
      }
      if (spin.count() > 0 && std::chrono::steady_clock::now() - last < spin) {
        cpu_relax();
        continue;
      }
      if (::poll(fds, 2, -1) < 0 && errno != EINTR) {
        DJINN_LOG(kError, "heapstore") << "heap fault thread: poll failed: " << std::strerror(errno);
        std::abort();
      }
    }
  } catch (const std::exception& e) {
    DJINN_LOG(kError, "heapstore") << "heap fault thread: " << e.what();
    std::abort();
  }
}

void Heap::Impl::serve_locked(const uffd_msg& msg) {
  if (msg.event != internal::abi::kEventPagefault) return;
  uint64_t address = msg.arg.pagefault.address;
  uint64_t i = (address - reinterpret_cast<uintptr_t>(base)) / page_size;
  if (address < reinterpret_cast<uintptr_t>(base) || i >= capacity_pages) return;
  if (msg.arg.pagefault.flags & internal::abi::kPagefaultFlagWp) {
    serve_write_protect_locked(i);
  } else {
    serve_missing_locked(i, (msg.arg.pagefault.flags & internal::abi::kPagefaultFlagWrite) != 0);
  }
}

void Heap::Impl::serve_missing_locked(uint64_t i, bool write) {
  if (table.resident(i)) {
    // Loaded meanwhile (by another thread's fault-around, a read-ahead, or a second fault on the
    // same page).
    (void)mmu->wake(addr(i), page_size);
    // The scan reached the run read ahead for it: the next one loads while it goes through this.
    if (i >= ahead_begin && i < last_run_end) read_ahead_locked();
    return;
  }
  ++counters.faults;
  // Fault-around: a fault right where the last run ended continues a sequential scan; the run
  // doubles up to the maximum. Any other fault starts again from the initial run.
  const bool sequential = i == last_run_end;
  window = sequential ? std::min<uint64_t>(window * 2, options.fault_around_max_pages) : options.fault_around_pages;
  uint64_t n = 1;
  while (n < window && i + n < capacity_pages && !table.resident(i + n)) ++n;
  // A scan's runs (and any long run) go through the pool and evict into it; random faults' runs
  // do neither: each move, and each protection of moved pages, flushes the TLB of every core
  // running the process (an interrupt of 5-10 us in this virtual machine), which a long run pays
  // once and a random fault's few pages would pay for more than the allocation it saves.
  const bool pooled = pool && (sequential || n >= kMinPooledRunPages);
  if (resident + n > budget_pages) {
    // Evict a little more than needed, so the next faults do not each start a sweep.
    uint64_t slack = std::clamp<uint64_t>(budget_pages / 32, 1, 64);
    evict_locked(resident + n - budget_pages + slack, pooled);
    if (resident + n > budget_pages) {
      if (resident >= budget_pages) ++counters.over_budget_loads;
      n = resident < budget_pages ? budget_pages - resident : 1;
    }
  }
  ahead_begin = UINT64_MAX;
  if (!load_run_locked(i, n, write, pooled)) return;
  last_run_end = i + n;
  // A scan that kept to the longest runs gets the run after this one too, before it gets there:
  // the faulting thread is woken first and goes through this run meanwhile. (A random fault may
  // load a run of the longest length too, where the first run is as long as the longest.)
  if (sequential && window == options.fault_around_max_pages && n == window) read_ahead_locked();
}

void Heap::Impl::read_ahead_locked() {
  ahead_begin = UINT64_MAX;
  const uint64_t from = last_run_end;
  uint64_t n = 0;
  while (n < window && from + n < capacity_pages && !table.resident(from + n)) ++n;
  // Never evicts: pages that may not be touched must not push out ones that were. Never takes
  // pool pages either (they would be writable while the scan runs on): pages it allocates must
  // fit in the budget beside the pool's.
  if (n == 0 || n > budget_room()) return;
  Status error;
  uint64_t loaded = install_locked(from, n, false, &error);
  if (loaded == 0) return;  // the page that failed faults on its own if it is touched
  counters.pages_read_ahead += loaded;
  ahead_begin = from;
  last_run_end = from + loaded;
}

bool Heap::Impl::load_run_locked(uint64_t i, uint64_t n, bool write, bool pooled) {
  Status error;
  if (incoming) prefetch_locked(i, n);
  struct ClearFetchError {
    Status& error;
    ~ClearFetchError() { error = Status(); }
  } clear_fetch_error{run_fetch_error};
  if (pooled && pool->size() > 0) {
    // A moved page is writable until it is protected, so the faulting thread must not get past
    // its page before the run is protected: not only until it is woken, since a signal sends it
    // back to retry the access. So the neighbours first, from the pool, each part protected
    // before the next step; the faulting page last, with UFFDIO_COPY, which maps it protected
    // (or writable and dirty) at once and wakes it.
    uint64_t after = n > 1 ? install_locked(i + 1, n - 1, false, &error, true) : 0;
    if (after > 0) {
      Status st = mmu->wake(addr(i + 1), after * page_size);  // readers blocked on a neighbour
      if (!st.ok()) throw std::runtime_error(st.to_string());
    }
    make_room_locked(1, 0);  // the faulting page is allocated by the kernel
    if (install_locked(i, 1, write, &error) == 0) {
      fail_page_locked(i, error);
      return false;
    }
    if (write) mark_dirty(i, table.at(i));
    return true;
  }
  // The kernel allocates the pages: the pool gives up as many, so both stay within the budget,
  // and a few more, so that the next random faults do not each pay a TLB flush for it.
  if (pool) make_room_locked(n, std::min<uint64_t>(kMinPooledRunPages * 4, budget_pages / 8));
  // The faulting page first, so its thread goes on while the neighbours load; a thread that
  // touches a neighbour meanwhile is woken by the copy that maps it.
  if (install_locked(i, 1, write, &error) == 0) {
    fail_page_locked(i, error);
    return false;
  }
  if (write) mark_dirty(i, table.at(i));
  // A neighbour the store cannot give ends the run; it faults on its own if it is touched.
  if (n > 1) install_locked(i + 1, n - 1, false, &error);
  return true;
}

uint64_t Heap::Impl::install_locked(uint64_t first, uint64_t count, bool writable_first, Status* error,
                                    bool from_pool) {
  uint64_t end = first + count;
  uint64_t j = first;
  auto stored = [&](uint64_t p) {
    const PageEntry* e = table.find(p);
    return e && e->state == PageState::kPersistent;
  };
  auto make_resident = [&](uint64_t p) {
    PageEntry& e = table.at(p);
    e.state = PageState::kResident;
    e.set(PageEntry::kAccessed);
    table.add_resident(p, 1);
    ++resident;
  };
  // Clean pages are mapped write-protected, so their first write is seen; a page whose fault was
  // a write is mapped writable (it would fault again at once) and is dirty.
  while (j < end) {
    const bool from_store = stored(j);
    uint64_t k = j + 1;
    while (k < end && stored(k) == from_store) ++k;
    const bool wp = !(writable_first && j == first);
    if (!wp) k = j + 1;  // the writable page alone; its neighbours go write-protected
    if (from_store) {
      hashes.clear();
      for (uint64_t p = j; p < k; ++p) hashes.push_back(table.find(p)->hash);
      Status fetch_error = fetch_locked(hashes);
      std::span<uint8_t> done(mapped.data(), k - j);
      const uint64_t pool_before = pool_size();
      uint64_t loaded = loader->load(hashes.data(), hashes.size(), staging.get(), addr(j), wp, done, error,
                                     from_pool ? k - j : 0);
      counters.pages_from_pool += pool_before - pool_size();
      // A page after a failed one may be mapped already (another thread's part): it is resident,
      // and a thread waiting on it is woken when its queued fault finds it so.
      for (uint64_t p = j; p < k; ++p) {
        if (!done[p - j]) continue;
        make_resident(p);
        ++counters.pages_loaded;
      }
      if (loaded > 0 && !from_pool) {
        Status st = mmu->wake(addr(j), loaded * page_size);
        if (!st.ok()) throw std::runtime_error(st.to_string());
      }
      if (loaded < k - j) {
        // A page the source could not give: say why rather than that the store lacks it.
        if (error && !fetch_error.ok()) *error = fetch_error;
        return j + loaded - first;
      }
    } else {
      Status st = map_zero_locked(j, k - j, wp, from_pool);
      if (!st.ok()) throw std::runtime_error(st.to_string());
      for (uint64_t p = j; p < k; ++p) make_resident(p);
      counters.pages_zero_filled += k - j;
    }
    j = k;
  }
  return j - first;
}

Status Heap::Impl::map_zero_locked(uint64_t first, uint64_t n, bool wp, bool from_pool) {
  const uint64_t pooled = from_pool ? std::min(pool_size(), n) : 0;
  if (pooled > 0) {
    std::byte* slots = pool->take(pooled);
    bool all_moved = true;
    Status placed = pool->place(addr(first), slots, nullptr, pooled * page_size, wp, &all_moved);
    if (!all_moved) pool->discard(slots, pooled);
    DJINN_RETURN_IF_ERROR(placed);
    counters.pages_from_pool += pooled;
  }
  if (pooled == n) return Status();
  return mmu->copy(addr(first + pooled), zeros.get(), (n - pooled) * page_size, wp, !from_pool);
}

void Heap::Impl::fail_page_locked(uint64_t i, const Status& why) {
  ++counters.load_errors;
  DJINN_LOG(kError, "heapstore") << "heap page " << i << " cannot be loaded: " << why.to_string()
                                 << "; the thread touching it gets SIGBUS";
  if (!mmu->poison(addr(i), page_size).ok()) {
    DJINN_LOG(kError, "heapstore") << "no UFFDIO_POISON on this kernel: aborting";
    std::abort();
  }
}

void Heap::Impl::serve_write_protect_locked(uint64_t i) {
  PageEntry* e = table.find(i);
  if (e && e->resident()) {
    ++counters.write_faults;
    mark_dirty(i, *e);
  }
  // Un-protects the whole page and wakes the writer; a page evicted since the fault was queued
  // has nothing to un-protect and the retried write faults as missing.
  Status st = mmu->protect(addr(i), page_size, false, true);
  if (!st.ok()) throw std::runtime_error(st.to_string());
}

// ---------------------------------------------------------------------------------------------
// Dirty set and eviction

Status Heap::Impl::refresh_written_locked(uint64_t first, uint64_t end) {
  return mmu->scan_written(addr(first), addr(end), true, [&](uintptr_t from, uintptr_t to) {
    uint64_t p0 = (from - reinterpret_cast<uintptr_t>(base)) / page_size;
    uint64_t p1 = (to - reinterpret_cast<uintptr_t>(base) + page_size - 1) / page_size;
    for (uint64_t p = p0; p < p1 && p < capacity_pages; ++p) {
      PageEntry* e = table.find(p);
      if (e && e->resident()) mark_dirty(p, *e);
    }
  });
}

Status Heap::Impl::collect_dirty_locked() {
  if (async()) {
    ++counters.dirty_scans;
    return refresh_written_locked(0, capacity_pages);
  }
  // Synchronous mode: the table knows every dirty page; protect them again, in runs.
  std::sort(pending.begin(), pending.end());
  size_t k = 0;
  while (k < pending.size()) {
    if (table.at(pending[k]).state != PageState::kDirty) {
      ++k;
      continue;
    }
    size_t r = k + 1;
    while (r < pending.size() && pending[r] == pending[r - 1] + 1 && table.at(pending[r]).state == PageState::kDirty) ++r;
    DJINN_RETURN_IF_ERROR(mmu->protect(addr(pending[k]), (pending[r - 1] - pending[k] + 1) * page_size, true, false));
    k = r;
  }
  return Status();
}

std::optional<PageHash> Heap::Impl::clean_hash_locked(uint64_t i, PageEntry& e) {
  if (e.has(PageEntry::kHashKnown)) return e.hash;
  std::span<const std::byte> page = page_span(i);
  if (is_zero_page(page)) return std::nullopt;
  e.hash = PageHash::of(page);
  e.set(PageEntry::kHashKnown);
  return e.hash;
}

uint64_t Heap::Impl::evict_locked(uint64_t want, bool to_pool) {
  std::vector<uint64_t> victims;
  // Two turns of the hand at most: the first may only clear reference bits.
  const uint64_t limit = 2 * capacity_pages + kSweepWindow;
  uint64_t walked = 0;
  while (victims.size() < want && walked < limit && resident > pinned) {
    uint64_t chunk = hand / internal::PageTable::kChunkPages;
    uint64_t chunk_end = std::min((chunk + 1) * internal::PageTable::kChunkPages, capacity_pages);
    if (table.chunk_resident(chunk) == 0) {
      walked += chunk_end - hand;
      hand = chunk_end >= capacity_pages ? 0 : chunk_end;
      continue;
    }
    uint64_t end = std::min(hand + kSweepWindow, chunk_end);
    if (async()) {
      Status st = refresh_written_locked(hand, end);
      if (!st.ok()) {
        DJINN_LOG(kError, "heapstore") << "eviction: " << st.to_string();
        break;
      }
    }
    uint64_t i = hand;
    for (; i < end && victims.size() < want; ++i) {
      PageEntry* e = table.find(i);
      if (!e || !e->resident() || e->has(PageEntry::kPinned | PageEntry::kVictim) || e->state == PageState::kFlushing) {
        continue;
      }
      if (e->has(PageEntry::kAccessed)) {
        e->clear(PageEntry::kAccessed);
        continue;
      }
      e->set(PageEntry::kVictim);
      victims.push_back(i);
    }
    walked += i - hand;
    hand = i >= capacity_pages ? 0 : i;
  }
  std::sort(victims.begin(), victims.end());
  return drop_locked(victims, to_pool);
}

uint64_t Heap::Impl::drop_locked(std::vector<uint64_t>& victims, bool to_pool) {
  uint64_t dropped = 0;
  size_t out = 0;  // victims[0, out) are dropped; one that could not be written stays resident
  std::vector<PageHash> superseded;  // copies an earlier eviction held, of pages since rewritten
  for (uint64_t i : victims) {
    PageEntry& e = table.at(i);
    e.clear(PageEntry::kVictim);
    std::span<const std::byte> page = page_span(i);
    PageState next;
    if (e.state == PageState::kDirty) {
      if (is_zero_page(page)) {
        if (e.has(PageEntry::kHeld)) superseded.push_back(e.hash);
        e.clear(PageEntry::kHashKnown | PageEntry::kHeld);
        next = PageState::kEmpty;
      } else {
        Result<PageHash> h = store->hold_page(page);
        if (!h.ok()) {
          DJINN_LOG(kWarn, "heapstore") << "evicting dirty page " << i << ": " << h.status().to_string()
                                        << "; it stays resident";
          continue;
        }
        if (e.has(PageEntry::kHeld)) superseded.push_back(e.hash);
        e.hash = *h;
        e.set(PageEntry::kHashKnown | PageEntry::kHeld);
        next = PageState::kPersistent;
        ++counters.flushes;
      }
      ++counters.dirty_evictions;
      mark_pending(i, e);
    } else {
      next = clean_hash_locked(i, e) ? PageState::kPersistent : PageState::kEmpty;
    }
    e.state = next;
    e.clear(PageEntry::kAccessed);
    table.add_resident(i, -1);
    --resident;
    ++counters.evictions;
    ++dropped;
    victims[out++] = i;
  }
  victims.resize(out);
  give_back(superseded);
  size_t run_start = 0;
  for (size_t k = 1; k <= victims.size(); ++k) {
    if (k == victims.size() || victims[k] != victims[k - 1] + 1) {
      uint64_t first = victims[run_start];
      uint64_t n = victims[k - 1] - first + 1;
      // Kept in the pool for the next page-in while resident and pool pages fit in the budget (not
      // so with the budget full of pinned pages); dropped otherwise.
      uint64_t kept = pool && to_pool ? pool->put(addr(first), std::min(n, budget_room())) : 0;
      counters.pages_to_pool += kept;
      if (kept < n) {
        Status st = internal::Mmu::drop(addr(first + kept), (n - kept) * page_size);
        if (!st.ok()) throw std::runtime_error(st.to_string());
      }
      run_start = k;
    }
  }
  return dropped;
}

// ---------------------------------------------------------------------------------------------
// Heap

Heap::Heap(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Heap::~Heap() = default;

DirtyTracking Heap::auto_tracking() {
  return internal::mmu_support().wp_async ? DirtyTracking::kAsync : DirtyTracking::kSyncWriteProtect;
}

std::string Heap::tracking_support() {
  const internal::MmuSupport& s = internal::mmu_support();
  if (s.wp_async) return "async-wp: UFFD_FEATURE_WP_ASYNC and PAGEMAP_SCAN";
  return s.why;
}

Result<std::unique_ptr<Heap>> Heap::open(PageStore& store, uint64_t version, HeapOptions o) {
  std::optional<Manifest> manifest;
  VersionPin pin;
  if (version != 0) {
    // Pinned before its manifest is read, so that no removal comes between.
    Result<VersionPin> pinned = store.pin_version(version);
    if (!pinned.ok()) return pinned.status();
    pin = std::move(*pinned);
    Result<Manifest> m = store.manifest(version);
    if (!m.ok()) return m.status();
    manifest = std::move(*m);
  }
  Result<std::unique_ptr<Heap>> heap = open_with(store, std::move(manifest), version, o);
  if (!heap.ok()) return heap.status();
  std::lock_guard lock((*heap)->impl_->mu);
  (*heap)->impl_->pin = std::move(pin);
  return heap;
}

Result<std::unique_ptr<Heap>> Heap::open_incoming(PageStore& store, const Manifest& manifest, PageSource& source,
                                                  HeapOptions o) {
  // The store checks the manifest as it would a migration's (and holds nothing once this goes).
  Result<std::unique_ptr<PageStore::Import>> checked = store.import_begin(manifest);
  if (!checked.ok()) return checked.status();
  Result<std::unique_ptr<Heap>> heap = open_with(store, manifest, 0, o);
  if (!heap.ok()) return heap.status();
  Impl& m = *(*heap)->impl_;
  std::lock_guard lock(m.mu);
  m.incoming = Impl::Incoming{manifest, &source, std::move(*checked)};
  return heap;
}

Result<std::unique_ptr<Heap>> Heap::open_with(PageStore& store, std::optional<Manifest> manifest, uint64_t version,
                                              HeapOptions o) {
  uint32_t page_size = o.page_size;
  uint64_t capacity_pages = 0;
  if (manifest) {
    page_size = manifest->info.page_size;
    capacity_pages = manifest->info.capacity_pages;
  }
  if (page_size < kSystemPageSize || page_size > (1u << 21) || (page_size & (page_size - 1)) != 0) {
    return invalid_argument("heap page size " + std::to_string(page_size) +
                            ": must be a power of two from 4096 to 2097152 bytes");
  }
  if (!manifest) {
    if (o.capacity_bytes == 0 || o.capacity_bytes > kMaxHeapBytes) {
      return invalid_argument("heap capacity of " + std::to_string(o.capacity_bytes) +
                              " bytes: must be from 1 byte to 64 TiB");
    }
    capacity_pages = (o.capacity_bytes + page_size - 1) / page_size;
  } else if (capacity_pages * page_size > kMaxHeapBytes) {
    return invalid_argument("version " + std::to_string(version) + " has a capacity beyond 64 TiB");
  }
  uint64_t budget_pages = std::min(o.budget_bytes / page_size, capacity_pages);
  if (budget_pages < std::min(kMinBudgetPages, capacity_pages)) {
    return invalid_argument("heap budget of " + std::to_string(o.budget_bytes) + " bytes: must hold at least " +
                            std::to_string(kMinBudgetPages) + " pages of " + std::to_string(page_size) + " bytes");
  }
  if (o.load_threads > 16) {
    return invalid_argument("load_threads " + std::to_string(o.load_threads) + ": must be at most 16");
  }
  if (o.fault_around_pages == 0 || o.fault_around_max_pages < o.fault_around_pages) {
    return invalid_argument("fault-around of " + std::to_string(o.fault_around_pages) + " to " +
                            std::to_string(o.fault_around_max_pages) +
                            " pages: the initial run must be at least 1 and at most the maximum");
  }
  // A run never takes more than a quarter of the budget, so eviction always has room to work, nor
  // more than 4 MiB (the fault thread keeps two buffers of a run: 2 GiB with 2 MiB pages otherwise).
  constexpr uint64_t kMaxRunBytes = uint64_t{4} << 20;
  o.fault_around_max_pages = static_cast<uint32_t>(std::clamp<uint64_t>(
      std::min<uint64_t>(budget_pages / 4, kMaxRunBytes / page_size), 1, o.fault_around_max_pages));
  o.fault_around_pages = std::min(o.fault_around_pages, o.fault_around_max_pages);

  DirtyTracking mode = o.tracking == DirtyTracking::kAuto ? auto_tracking() : o.tracking;
  if (mode == DirtyTracking::kAsync && !internal::mmu_support().wp_async) {
    return unavailable("asynchronous dirty tracking asked for, but " + internal::mmu_support().why);
  }

  auto impl = std::make_unique<Impl>(store, page_size, capacity_pages, budget_pages, o);
  impl->mode = mode;
  impl->length = capacity_pages * page_size;
  // The reservation: private anonymous memory, no swap reserved for it. Aligned to the heap's
  // page size, so a heap page is never split across huge-page or page-table boundaries oddly.
  if (o.base_address) {
    if (reinterpret_cast<uintptr_t>(o.base_address) % page_size != 0) {
      return invalid_argument("heap base address must be aligned to the page size of " + std::to_string(page_size));
    }
    void* p = ::mmap(o.base_address, impl->length, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (p == MAP_FAILED) {
      return resource_exhausted("mapping the heap at " + std::to_string(reinterpret_cast<uintptr_t>(o.base_address)) +
                                ": " + std::strerror(errno));
    }
    if (p != o.base_address) {
      ::munmap(p, impl->length);
      return resource_exhausted("the heap could not be mapped at the address asked for");
    }
    impl->base = static_cast<std::byte*>(p);
  } else {
    uint64_t extra = page_size > kSystemPageSize ? page_size : 0;
    void* p = ::mmap(nullptr, impl->length + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
    if (p == MAP_FAILED) {
      return resource_exhausted("reserving " + std::to_string(impl->length) + " bytes for the heap: " +
                                std::strerror(errno));
    }
    auto start = reinterpret_cast<uintptr_t>(p);
    uintptr_t aligned = (start + page_size - 1) & ~(uintptr_t{page_size} - 1);
    if (aligned > start) ::munmap(p, aligned - start);
    uintptr_t tail = start + impl->length + extra - (aligned + impl->length);
    if (tail > 0) ::munmap(reinterpret_cast<void*>(aligned + impl->length), tail);
    impl->base = reinterpret_cast<std::byte*>(aligned);
  }
  // Children forked by the application do not inherit the heap (their copy would be neither paged
  // nor tracked), and transparent huge pages would defeat per-page tracking.
  ::madvise(impl->base, impl->length, MADV_DONTFORK);
  ::madvise(impl->base, impl->length, MADV_NOHUGEPAGE);

  Result<std::unique_ptr<internal::Mmu>> mmu =
      internal::Mmu::create(impl->base, impl->length, mode == DirtyTracking::kAsync);
  if (!mmu.ok()) return mmu.status();
  impl->mmu = std::move(*mmu);

  if (manifest) {
    for (const PageRef& ref : manifest->pages) {
      if (ref.index >= capacity_pages) {
        return data_loss("version " + std::to_string(version) + " names page " + std::to_string(ref.index) +
                         " beyond its capacity of " + std::to_string(capacity_pages) + " pages");
      }
      PageEntry& e = impl->table.at(ref.index);
      e.state = PageState::kPersistent;
      e.hash = ref.hash;
      e.set(PageEntry::kHashKnown);
    }
    impl->version = version;
    impl->record = std::move(manifest->record);
  }
  const uint64_t run_bytes = uint64_t{o.fault_around_max_pages} * page_size;
  impl->staging.reset(static_cast<std::byte*>(std::calloc(run_bytes, 1)));
  impl->zeros.reset(static_cast<std::byte*>(std::calloc(run_bytes, 1)));
  if (!impl->staging || !impl->zeros) return resource_exhausted("heap: no memory for its fault buffers");
  impl->mapped.resize(o.fault_around_max_pages);
  if (o.page_pool && internal::mmu_support().move) {
    Result<std::unique_ptr<internal::PagePool>> pool = internal::PagePool::create(*impl->mmu, page_size, budget_pages);
    if (pool.ok()) {
      impl->pool = std::move(*pool);
      Status reserved = impl->reserve_locked(o.reserve_bytes / page_size);
      if (!reserved.ok()) DJINN_LOG(kWarn, "heapstore") << "the heap's page pool stays empty: " << reserved.to_string();
    } else {
      DJINN_LOG(kWarn, "heapstore") << "the heap runs without its page pool: " << pool.status().to_string();
    }
  }
  impl->loader = std::make_unique<internal::PageLoader>(store, *impl->mmu, impl->pool.get(), page_size, o.load_threads,
                                                        o.fault_spin_us, kMinSharedRunPages);
  impl->stop_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (impl->stop_fd < 0) return internal_error(std::string("eventfd: ") + std::strerror(errno));
  Impl* raw = impl.get();
  impl->fault_thread = std::thread([raw] { raw->fault_loop(); });
  return std::unique_ptr<Heap>(new Heap(std::move(impl)));
}

std::byte* Heap::base() const { return impl_->base; }
uint64_t Heap::size() const { return impl_->length; }
uint32_t Heap::page_size() const { return impl_->page_size; }
uint64_t Heap::capacity_pages() const { return impl_->capacity_pages; }
uint64_t Heap::budget_pages() const { return impl_->budget_pages; }
DirtyTracking Heap::tracking() const { return impl_->mode; }
PageStore& Heap::store() const { return *impl_->store; }

uint64_t Heap::version() const {
  std::lock_guard lock(impl_->mu);
  return impl_->version;
}

bool Heap::incoming() const {
  std::lock_guard lock(impl_->mu);
  return impl_->incoming.has_value();
}

Result<VersionInfo> Heap::fetch_rest(size_t batch, const std::function<void(uint64_t, uint64_t)>& progress) {
  Impl& m = *impl_;
  std::lock_guard serial(m.fetch_mu);
  std::vector<PageHash> names;
  PageSource* source = nullptr;
  {
    std::lock_guard lock(m.mu);
    if (!m.incoming) {
      if (m.completed) return *m.completed;
      return failed_precondition("fetch_rest: this heap was not opened with open_incoming");
    }
    source = m.incoming->source;
    names.reserve(m.incoming->manifest.pages.size());
    for (const PageRef& p : m.incoming->manifest.pages) names.push_back(p.hash);
  }
  batch = std::clamp<size_t>(batch, 1, 65'536);
  uint64_t fetched = 0;
  for (size_t at = 0; at < names.size(); at += batch) {
    std::span<const PageHash> part(names.data() + at, std::min(batch, names.size() - at));
    Result<uint64_t> got = m.fetch_missing(*source, part);
    if (!got.ok()) {
      std::lock_guard lock(m.mu);
      m.counters.pages_fetched += fetched;
      return Status(got.status().code(), "fetch_rest: " + got.status().message());
    }
    fetched += *got;
    if (progress) progress(at + part.size(), names.size());
  }
  // Every page is in the store now (pending): the manifest becomes one of its versions.
  Manifest manifest;
  {
    std::lock_guard lock(m.mu);
    m.counters.pages_fetched += fetched;
    manifest = m.incoming->manifest;
  }
  Result<std::unique_ptr<PageStore::Import>> import = m.store->import_begin(manifest);
  if (!import.ok()) return import.status();
  size_t lacking = (*import)->needed().size();
  if (lacking > 0) {
    return unavailable("fetch_rest: the source did not deliver " + std::to_string(lacking) +
                       " of the pages it was asked for; call again");
  }
  // Pinned as it is committed, like a checkpoint's version.
  VersionPin pin;
  Result<VersionInfo> committed = (*import)->import_commit(&pin);
  if (!committed.ok()) return committed.status();
  std::lock_guard lock(m.mu);
  m.version = committed->version;
  m.pin = std::move(pin);
  m.completed = *committed;
  m.incoming.reset();  // the version holds its pages now
  return *committed;
}

std::string Heap::record() const {
  std::lock_guard lock(impl_->mu);
  return impl_->record;
}

// DESIGN §7's checkpoint, step by step.
Result<VersionInfo> Heap::checkpoint(std::string_view record) {
  Impl& m = *impl_;
  // An incoming heap's pages are all here first, and the version it came as is its parent.
  if (incoming()) {
    Result<VersionInfo> arrived = fetch_rest();
    if (!arrived.ok()) return arrived.status();
  }
  std::lock_guard lock(m.mu);

  // 1. The dirty set: pages written since the last checkpoint become kDirty (and pending) and are
  //    write-protected again, so writes after this checkpoint are seen by the next one.
  DJINN_RETURN_IF_ERROR(m.collect_dirty_locked());
  DJINN_CRASH_POINT("heapstore.heap.checkpoint.collected");

  // 2. Stage every pending page on top of the heap's version: a dirty page's content, an evicted
  //    page's hash (already in the store), or zero.
  std::sort(m.pending.begin(), m.pending.end());
  Result<VersionWriter> writer = m.store->begin_version(m.version, m.page_size, m.capacity_pages);
  if (!writer.ok()) return writer.status();
  std::vector<uint64_t> flushing;
  struct Revert {  // a failure leaves the flushing pages dirty, for the next checkpoint
    Impl& m;
    std::vector<uint64_t>& pages;
    bool committed = false;
    ~Revert() {
      if (committed) return;
      for (uint64_t p : pages) m.table.at(p).state = PageState::kDirty;
    }
  } revert{m, flushing};
  for (uint64_t p : m.pending) {
    PageEntry& e = m.table.at(p);
    if (e.state == PageState::kDirty) {
      e.state = PageState::kFlushing;
      flushing.push_back(p);
      DJINN_RETURN_IF_ERROR(writer->put(p, m.page_span(p)));
    } else if (e.has(PageEntry::kHashKnown)) {
      DJINN_RETURN_IF_ERROR(writer->put_hash(p, e.hash));
    } else {
      DJINN_RETURN_IF_ERROR(writer->zero(p));
    }
  }
  DJINN_CRASH_POINT("heapstore.heap.checkpoint.staged");

  // 3. Commit with the runtime record: the whole version or nothing. The new version is pinned as
  //    it commits; the heap's pin moves to it in step 4 (until then the old version stays pinned).
  VersionPin next_pin;
  Result<VersionInfo> info = writer->commit(record, &next_pin);
  if (!info.ok()) return info.status();
  // A failure even now (a crash point's throw) leaves the heap on its old version with these
  // pages dirty again: the next checkpoint writes them (left kFlushing, they were never again).
  DJINN_CRASH_POINT("heapstore.heap.checkpoint.committed");
  revert.committed = true;

  // 4. The new version is the heap's: written pages are clean (their hash, computed by the store,
  //    is learnt again when needed), nothing is pending, and the copies evictions held in the
  //    store are given back: the version holds every page the heap needs.
  const std::vector<PageHash> held = m.take_held_locked();
  for (uint64_t p : flushing) {
    PageEntry& e = m.table.at(p);
    e.state = PageState::kResident;
    e.clear(PageEntry::kHashKnown);
  }
  for (uint64_t p : m.pending) m.table.at(p).clear(PageEntry::kPending);
  m.counters.pages_checkpointed += m.pending.size();
  ++m.counters.checkpoints;
  m.give_back(held);
  m.pending.clear();
  m.version = info->version;
  m.pin = std::move(next_pin);  // the old version's pin given back: the new one has every page
  m.record = std::string(record);
  return info;
}

Result<std::vector<uint64_t>> Heap::dirty_pages() {
  std::lock_guard lock(impl_->mu);
  DJINN_RETURN_IF_ERROR(impl_->collect_dirty_locked());
  std::vector<uint64_t> out = impl_->pending;
  std::sort(out.begin(), out.end());
  return out;
}

namespace {
Status check_range(const Heap& heap, uint64_t offset, uint64_t length) {
  if (length == 0 || offset >= heap.size() || length > heap.size() - offset) {
    return out_of_range("heap range [" + std::to_string(offset) + ", +" + std::to_string(length) +
                        ") is not inside the heap's " + std::to_string(heap.size()) + " bytes");
  }
  return Status();
}
}  // namespace

Status Heap::pin(uint64_t offset, uint64_t length, PageType type) {
  DJINN_RETURN_IF_ERROR(check_range(*this, offset, length));
  Impl& m = *impl_;
  uint64_t first = offset / m.page_size;
  uint64_t end = (offset + length + m.page_size - 1) / m.page_size;
  {
    std::lock_guard lock(m.mu);
    for (uint64_t p = first; p < end; ++p) {
      PageEntry& e = m.table.at(p);
      if (!e.has(PageEntry::kPinned)) {
        e.set(PageEntry::kPinned);
        ++m.pinned;
      }
      e.type = type;
    }
  }
  // Loads them: touched from this thread, like any access (the lock is not held: the fault
  // thread needs it).
  for (uint64_t p = first; p < end; ++p) {
    volatile std::byte* b = m.base + p * m.page_size;
    (void)*b;
  }
  return Status();
}

Status Heap::unpin(uint64_t offset, uint64_t length) {
  DJINN_RETURN_IF_ERROR(check_range(*this, offset, length));
  Impl& m = *impl_;
  std::lock_guard lock(m.mu);
  for (uint64_t p = offset / m.page_size; p < (offset + length + m.page_size - 1) / m.page_size; ++p) {
    PageEntry* e = m.table.find(p);
    if (e && e->has(PageEntry::kPinned)) {
      e->clear(PageEntry::kPinned);
      --m.pinned;
    }
  }
  return Status();
}

Status Heap::trim(uint64_t max_resident_pages) {
  Impl& m = *impl_;
  std::lock_guard lock(m.mu);
  if (m.resident > max_resident_pages) m.evict_locked(m.resident - max_resident_pages);
  if (m.pool) m.pool->shrink(0);
  return Status();
}

Status Heap::reserve(uint64_t bytes) {
  Impl& m = *impl_;
  std::lock_guard lock(m.mu);
  return m.reserve_locked(bytes / m.page_size);
}

Status Heap::Impl::reserve_locked(uint64_t pages) {
  if (!pool || pages == 0) return Status();
  uint64_t room = budget_pages > resident ? budget_pages - resident : 0;
  return pool->fill(std::min(pages, room));
}

Result<std::vector<PageInfo>> Heap::page_table(uint64_t first, uint64_t count, bool hashes) {
  Impl& m = *impl_;
  std::lock_guard lock(m.mu);
  uint64_t end = count >= m.capacity_pages ? m.capacity_pages : std::min(m.capacity_pages, first + count);
  std::vector<PageInfo> out;
  if (first >= end) return out;
  // A clean page must really be clean before its content is hashed as its persisted copy.
  if (hashes && m.async()) DJINN_RETURN_IF_ERROR(m.refresh_written_locked(first, end));
  for (uint64_t p = first; p < end; ++p) {
    if (p % internal::PageTable::kChunkPages == 0 || p == first) {
      if (!m.table.find(p)) {  // an unused chunk: every page in it is empty
        p = (p / internal::PageTable::kChunkPages + 1) * internal::PageTable::kChunkPages - 1;
        continue;
      }
    }
    PageEntry& e = m.table.at(p);
    if (e.state == PageState::kEmpty && !e.has(PageEntry::kPending)) continue;
    PageInfo info;
    info.index = p;
    info.state = e.state;
    info.type = e.type;
    info.pinned = e.has(PageEntry::kPinned);
    info.accessed = e.has(PageEntry::kAccessed);
    info.pending = e.has(PageEntry::kPending);
    if (e.has(PageEntry::kHashKnown)) {
      info.hash = e.hash;
    } else if (hashes && e.state == PageState::kResident) {
      info.hash = m.clean_hash_locked(p, e);
    }
    out.push_back(info);
  }
  return out;
}

HeapStats Heap::stats() const {
  const Impl& m = *impl_;
  std::lock_guard lock(m.mu);
  HeapStats s = m.counters;
  s.capacity_pages = m.capacity_pages;
  s.budget_pages = m.budget_pages;
  s.resident_pages = m.resident;
  s.pinned_pages = m.pinned;
  s.pending_pages = m.pending.size();
  s.pool_pages = m.pool_size();
  return s;
}

}  // namespace djinn::heapstore
