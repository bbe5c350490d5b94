// bench-heapstore: the heap's MMU barriers and checkpoints beside the kernel's own costs, measured
// in the same run: the first write to a clean page beside a minor fault, demand page-in (random
// and sequential) beside a minor fault plus a pread of a cached page and beside a raw read of the
// same bytes, dirty-set collection at 1% and 100% dirty, an incremental checkpoint against a full
// one; then the page store's figures (store_figures.h). Prints the JSON of DESIGN §11 on stdout;
// progress goes to stderr.
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench_json.h"
#include "bench_run.h"
#include "djinn/core/config.h"
#include "djinn/core/log.h"
#include "djinn/heapstore/heap.h"
#include "djinn/heapstore/page_store.h"
#include "peer_process.h"
#include "store_figures.h"
#include "uffd_abi.h"

using namespace djinn;
using djinn::bench::median;
using djinn::bench::Plan;
using heapstore::DirtyTracking;
using heapstore::Heap;
using heapstore::HeapOptions;
using heapstore::HeapStats;
using heapstore::kDefaultPageSize;
using heapstore::Manifest;
using heapstore::PageHash;
using heapstore::PageSource;
using heapstore::PageStore;
using heapstore::tracking_name;
using heapstore::VersionInfo;

namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kSystemPage = 4096;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void progress(const std::string& text) { std::fprintf(stderr, "bench-heapstore: %s\n", text.c_str()); }

std::string fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

[[noreturn]] void die(const std::string& what, const Status& st) {
  std::fprintf(stderr, "bench-heapstore: %s: %s\n", what.c_str(), st.to_string().c_str());
  std::exit(1);
}

void must_ok(const Status& st, const std::string& what) {
  if (!st.ok()) die(what, st);
}

template <class T>
T must(Result<T> r, const std::string& what) {
  if (!r.ok()) die(what, r.status());
  return std::move(r).value();
}

// Fills `len` bytes with a sequence derived from `key`: distinct for every key, never all zero.
void fill(std::byte* p, size_t len, uint64_t key) {
  uint64_t x = key * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  for (size_t i = 0; i + 8 <= len; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(p + i, &x, 8);
  }
}

// ---------------------------------------------------------------------------------------------
// The kernel's limits

// A minor fault: the first write to each 4 KiB page of a fresh anonymous mapping; µs per page.
double minor_fault_us(uint64_t bytes) {
  void* m = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return NAN;
  ::madvise(m, bytes, MADV_NOHUGEPAGE);  // the heap's pages are 4 KiB too
  auto* p = static_cast<volatile char*>(m);
  auto t0 = Clock::now();
  for (uint64_t off = 0; off < bytes; off += kSystemPage) p[off] = 1;
  double s = seconds_since(t0);
  ::munmap(m, bytes);
  return s * 1e6 / static_cast<double>(bytes / kSystemPage);
}

// A file of `bytes` in the page cache: 4 KiB preads at random offsets (µs each) and a sequential
// read of the whole file in 1 MiB reads (MB/s).
struct FileLimits {
  double pread_us = NAN;
  double read_MBps = NAN;
};
FileLimits file_limits(const std::string& dir, uint64_t bytes, int rounds) {
  FileLimits out;
  std::string path = dir + "/page-cache-probe";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return out;
  ::unlink(path.c_str());
  std::vector<std::byte> chunk(1 << 20);
  for (uint64_t off = 0; off < bytes; off += chunk.size()) {
    fill(chunk.data(), chunk.size(), off);
    if (::pwrite(fd, chunk.data(), chunk.size(), static_cast<off_t>(off)) != static_cast<ssize_t>(chunk.size())) {
      ::close(fd);
      return out;
    }
  }
  std::vector<double> pread_us, read_MBps;
  std::mt19937_64 gen(7);
  const uint64_t pages = bytes / kSystemPage;
  std::vector<std::byte> page(kSystemPage);
  for (int r = 0; r < rounds; ++r) {
    const uint64_t n = std::min<uint64_t>(pages, 65536);
    auto t0 = Clock::now();
    for (uint64_t i = 0; i < n; ++i) {
      off_t off = static_cast<off_t>((gen() % pages) * kSystemPage);
      if (::pread(fd, page.data(), kSystemPage, off) != static_cast<ssize_t>(kSystemPage)) break;
    }
    pread_us.push_back(seconds_since(t0) * 1e6 / static_cast<double>(n));
    t0 = Clock::now();
    for (uint64_t off = 0; off < bytes; off += chunk.size()) {
      if (::pread(fd, chunk.data(), chunk.size(), static_cast<off_t>(off)) <= 0) break;
    }
    read_MBps.push_back(static_cast<double>(bytes) / 1e6 / seconds_since(t0));
  }
  ::close(fd);
  out.pread_us = median(pread_us);
  out.read_MBps = median(read_MBps);
  return out;
}

// What a pager that never allocates reaches: `bytes` of a file in the page cache copied, 4 MiB at a
// time, into anonymous pages already resident, which UFFDIO_MOVE then moves into a registered range
// (no page allocated, none copied by the kernel). MB/s, median of `rounds`; NAN when the kernel has
// no UFFDIO_MOVE (before 6.8). What the heap's page pool does with the pages it holds; without
// them the heap has the kernel allocate each page it maps (UFFDIO_COPY).
double warm_page_move_MBps(const std::string& dir, uint64_t bytes, int rounds) {
  namespace abi = djinn::heapstore::internal::abi;
  constexpr uint64_t kRun = uint64_t{4} << 20;
  std::string path = dir + "/page-move-probe";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return NAN;
  ::unlink(path.c_str());
  std::vector<std::byte> chunk(kRun);
  bool written = true;
  for (uint64_t off = 0; off < bytes && written; off += kRun) {
    fill(chunk.data(), chunk.size(), off);
    written = ::pwrite(fd, chunk.data(), kRun, static_cast<off_t>(off)) == static_cast<ssize_t>(kRun);
  }
  void* file = written ? ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
  ::close(fd);
  if (file == MAP_FAILED) return NAN;
  const auto* src = static_cast<const std::byte*>(file);
  ::madvise(file, bytes, MADV_POPULATE_READ);  // cached and mapped before the clock starts
  std::vector<double> rates;
  for (int r = 0; r < rounds; ++r) {
    int uffd = static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
    if (uffd < 0) break;
    uffdio_api api{.api = UFFD_API, .features = abi::kFeatureMove, .ioctls = 0};
    auto map = [&] {
      void* m = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m != MAP_FAILED) ::madvise(m, bytes, MADV_NOHUGEPAGE);
      return m;
    };
    void* pool = map();
    void* dst = map();
    bool ok = ::ioctl(uffd, UFFDIO_API, &api) == 0 && pool != MAP_FAILED && dst != MAP_FAILED &&
              ::madvise(pool, bytes, MADV_POPULATE_WRITE) == 0;
    uffdio_register reg{.range = {reinterpret_cast<uint64_t>(dst), bytes}, .mode = UFFDIO_REGISTER_MODE_MISSING,
                        .ioctls = 0};
    ok = ok && ::ioctl(uffd, UFFDIO_REGISTER, &reg) == 0;
    auto t0 = Clock::now();
    for (uint64_t off = 0; ok && off < bytes; off += kRun) {
      std::memcpy(static_cast<std::byte*>(pool) + off, src + off, kRun);
      abi::UffdioMove move{.dst = reinterpret_cast<uint64_t>(dst) + off,
                           .src = reinterpret_cast<uint64_t>(pool) + off,
                           .len = kRun,
                           .mode = abi::kMoveModeDontWake,
                           .move = 0};
      ok = ::ioctl(uffd, abi::kUffdioMove, &move) == 0;
    }
    if (ok) rates.push_back(static_cast<double>(bytes) / 1e6 / seconds_since(t0));
    if (pool != MAP_FAILED) ::munmap(pool, bytes);
    if (dst != MAP_FAILED) ::munmap(dst, bytes);
    ::close(uffd);
    if (!ok) break;
  }
  ::munmap(file, bytes);
  return rates.empty() ? NAN : median(rates);
}

// ---------------------------------------------------------------------------------------------
// The heap's figures

struct Setup {
  uint64_t heap_bytes;
  uint32_t page_size;
  DirtyTracking tracking;
  uint32_t fault_around;
  uint32_t fault_around_max;
  uint32_t fault_spin_us;
  uint32_t load_threads;
  int rounds;
};

HeapOptions heap_options(const Setup& s, uint64_t budget_bytes, DirtyTracking tracking) {
  HeapOptions o;
  o.capacity_bytes = s.heap_bytes;
  o.page_size = s.page_size;
  o.budget_bytes = budget_bytes;
  o.tracking = tracking;
  o.fault_around_pages = s.fault_around;
  o.fault_around_max_pages = s.fault_around_max;
  o.fault_spin_us = s.fault_spin_us;
  o.load_threads = s.load_threads;
  return o;
}

struct HeapFigures {
  double checkpoint_full_ms = NAN;
  double checkpoint_incremental_ms = NAN;
  double incremental_fraction = NAN;
  uint64_t incremental_pages = 0;
  double collect_1pct_ms = NAN;
  double collect_100pct_ms = NAN;
  double first_write_us = NAN;      // per page
  double first_write_sync_us = NAN;  // per page, synchronous write-protect faults
  double page_in_random_us = NAN;    // per page touched
  double page_in_random_fault_us = NAN;  // per fault served
  double page_in_random_pages_per_fault = NAN;
  double page_in_sequential_MBps = NAN;
  double page_in_sequential_pages_per_fault = NAN;
  // The same with the heap's page pool filled when it opens (Heap::reserve), and that filling.
  double page_in_random_reserved_us = NAN;
  double page_in_sequential_reserved_MBps = NAN;
  double pool_reserve_MBps = NAN;
  // A heap four times its budget scanned in order twice: the second scan's rate, every page-in
  // evicting (into the pool where the kernel has one).
  double page_in_sequential_evicting_MBps = NAN;
  double page_in_sequential_evicting_no_pool_MBps = NAN;
  double zero_fault_us = NAN;  // per fault, random order, zero pages (no store read)
  double read_page_us = NAN;   // PageStore::read_page alone, per page
  // Post-copy: a heap opened on the manifest of another store's version (Heap::open_incoming),
  // its pages fetched from that store through a PageSource in this process: touched in random
  // order (per page), and fetch_rest() of all of them.
  double post_copy_random_us = NAN;
  double post_copy_fetch_rest_MBps = NAN;
};

// Another store's pages, as a node's PageSource gets them from wherever they are kept: here a
// store of this process, so the figures are the heap's and the stores' own cost, no network.
struct StoreSource : PageSource {
  explicit StoreSource(const PageStore& from, uint32_t page_size) : from(from), page(page_size) {}
  Status fetch(std::span<const PageHash> hashes, const Deliver& deliver) override {
    std::lock_guard lock(mu);
    for (const PageHash& h : hashes) {
      DJINN_RETURN_IF_ERROR(from.read_page(h, page));
      DJINN_RETURN_IF_ERROR(deliver(h, page));
    }
    return Status();
  }
  const PageStore& from;
  std::mutex mu;  // guards page
  std::vector<std::byte> page;
};

// Writes each page of the heap once (distinct content).
void write_all(Heap& heap, uint64_t key) {
  for (uint64_t p = 0; p < heap.capacity_pages(); ++p) fill(heap.base() + p * heap.page_size(), heap.page_size(), key + p);
}

// Writes 8 bytes in each of `count` distinct random 4 KiB blocks of the heap: 1% of the blocks
// dirties 1% of 4 KiB pages, and up to 4 or 16 times the bytes with 16 or 64 KiB pages.
void write_some(Heap& heap, uint64_t count, std::mt19937_64& gen) {
  std::vector<uint64_t> blocks(heap.size() / kSystemPage);
  std::iota(blocks.begin(), blocks.end(), 0);
  std::shuffle(blocks.begin(), blocks.end(), gen);
  for (uint64_t i = 0; i < count && i < blocks.size(); ++i) {
    uint64_t v = gen() | 1;
    std::memcpy(heap.base() + blocks[i] * kSystemPage + (gen() % (kSystemPage / 8)) * 8, &v, 8);
  }
}

HeapFigures heap_figures(const Setup& s, const std::string& dir, const std::string& tag) {
  HeapFigures f;
  std::mt19937_64 gen(42);
  std::string store_dir = dir + "/store-" + tag;
  auto store = must(PageStore::open(store_dir), "opening the page store");
  const uint64_t pages = s.heap_bytes / s.page_size;
  const uint64_t one_percent = std::max<uint64_t>(1, s.heap_bytes / kSystemPage / 100);  // 4 KiB blocks

  // Checkpoints: full (every page new) and incremental (1% of the pages), on a durable store.
  progress(tag + ": full and 1% incremental checkpoints, " + std::to_string(pages) + " pages of " +
           std::to_string(s.page_size) + " bytes");
  auto heap = must(Heap::open(*store, 0, heap_options(s, s.heap_bytes, s.tracking)), "opening a heap");
  std::vector<double> full_ms, inc_ms;
  for (int r = 0; r < s.rounds; ++r) {
    write_all(*heap, uint64_t(r) << 32);
    auto t0 = Clock::now();
    VersionInfo v = must(heap->checkpoint("full"), "full checkpoint");
    full_ms.push_back(seconds_since(t0) * 1e3);
    if (v.pages_written != pages) progress("  (full checkpoint wrote " + std::to_string(v.pages_written) + " pages)");
    for (int i = 0; i < 3; ++i) {
      write_some(*heap, one_percent, gen);
      t0 = Clock::now();
      VersionInfo inc = must(heap->checkpoint("incremental"), "incremental checkpoint");
      inc_ms.push_back(seconds_since(t0) * 1e3);
      f.incremental_pages = inc.pages_written;
    }
  }
  f.checkpoint_full_ms = median(full_ms);
  f.checkpoint_incremental_ms = median(inc_ms);
  f.incremental_fraction = f.checkpoint_incremental_ms / f.checkpoint_full_ms;
  progress("  full " + fixed(f.checkpoint_full_ms, 1) + " ms, incremental " + fixed(f.checkpoint_incremental_ms, 2) +
           " ms (" + std::to_string(f.incremental_pages) + " pages)");

  // Dirty-set collection: every page resident and clean; 1% (then all) written; one collection.
  {
    std::vector<double> ms1, ms100;
    for (int r = 0; r < s.rounds; ++r) {
      for (int i = 0; i < 3; ++i) {
        write_some(*heap, one_percent, gen);
        auto t0 = Clock::now();
        auto dirty = must(heap->dirty_pages(), "collecting the dirty set");
        ms1.push_back(seconds_since(t0) * 1e3);
        must(heap->checkpoint("after 1%"), "checkpoint");
      }
      write_all(*heap, (uint64_t(r) << 32) + 7);
      auto t0 = Clock::now();
      auto dirty = must(heap->dirty_pages(), "collecting the dirty set");
      ms100.push_back(seconds_since(t0) * 1e3);
      if (dirty.size() != pages) progress("  (100% collection found " + std::to_string(dirty.size()) + " pages)");
      must(heap->checkpoint("after 100%"), "checkpoint");
    }
    f.collect_1pct_ms = median(ms1);
    f.collect_100pct_ms = median(ms100);
    progress("  dirty-set collection: 1% " + fixed(f.collect_1pct_ms, 3) + " ms, 100% " +
             fixed(f.collect_100pct_ms, 3) + " ms");
  }

  // First writes: every page resident, clean and write-protected (just checkpointed).
  {
    std::vector<double> us;
    for (int r = 0; r < s.rounds; ++r) {
      auto t0 = Clock::now();
      for (uint64_t p = 0; p < pages; ++p) heap->base()[p * s.page_size + 8 * (r + 1)] = std::byte{1};
      us.push_back(seconds_since(t0) * 1e6 / static_cast<double>(pages));
      must(heap->dirty_pages(), "re-protecting");  // clean again for the next round
    }
    f.first_write_us = median(us);
  }
  uint64_t version = must(heap->checkpoint("page-in source"), "checkpoint").version;
  heap.reset();

  // The same through synchronous write-protect faults (the fallback), for comparison.
  {
    std::vector<double> us;
    auto sync = must(Heap::open(*store, version, heap_options(s, s.heap_bytes, DirtyTracking::kSyncWriteProtect)),
                     "opening a heap in sync mode");
    for (uint64_t p = 0; p < pages; ++p) (void)*static_cast<volatile std::byte*>(sync->base() + p * s.page_size);
    for (int r = 0; r < s.rounds; ++r) {
      auto t0 = Clock::now();
      for (uint64_t p = 0; p < pages; ++p) sync->base()[p * s.page_size + 8 * (r + 1)] = std::byte{2};
      us.push_back(seconds_since(t0) * 1e6 / static_cast<double>(pages));
      must(sync->dirty_pages(), "re-protecting");
    }
    f.first_write_sync_us = median(us);
  }
  progress("  first write: " + fixed(f.first_write_us, 3) + " us/page (sync write-protect: " +
           fixed(f.first_write_sync_us, 2) + " us/page)");

  // Demand page-in from the store into a fresh heap (budget = capacity: no eviction).
  {
    std::vector<double> rnd, rnd_fault, rnd_ppf, seq, seq_ppf, rsv, rnd_rsv, seq_rsv, seq_evict, seq_evict_drop;
    std::vector<uint64_t> order(pages);
    std::iota(order.begin(), order.end(), 0);
    // One byte read from every page, in `order` or in page order; seconds.
    auto touch_in = [&](const Heap& h, const std::vector<uint64_t>& pages_in) {
      auto t0 = Clock::now();
      for (uint64_t p : pages_in) (void)*static_cast<volatile std::byte*>(h.base() + p * s.page_size);
      return seconds_since(t0);
    };
    auto touch_all = [&](const Heap& h) {
      auto t0 = Clock::now();
      for (uint64_t p = 0; p < pages; ++p) (void)*static_cast<volatile std::byte*>(h.base() + p * s.page_size);
      return seconds_since(t0);
    };
    for (int r = 0; r < s.rounds; ++r) {
      std::shuffle(order.begin(), order.end(), gen);
      auto h = must(Heap::open(*store, version, heap_options(s, s.heap_bytes, s.tracking)), "opening a heap");
      double secs = touch_in(*h, order);
      HeapStats st = h->stats();
      rnd.push_back(secs * 1e6 / static_cast<double>(pages));
      rnd_fault.push_back(secs * 1e6 / static_cast<double>(st.faults));
      rnd_ppf.push_back(static_cast<double>(st.pages_loaded) / static_cast<double>(st.faults));
      h.reset();
      h = must(Heap::open(*store, version, heap_options(s, s.heap_bytes, s.tracking)), "opening a heap");
      secs = touch_all(*h);
      st = h->stats();
      seq.push_back(static_cast<double>(s.heap_bytes) / 1e6 / secs);
      seq_ppf.push_back(static_cast<double>(st.pages_loaded) / static_cast<double>(st.faults));
      h.reset();
      // Reserved: the pool filled at open (timed apart), then the same two scans.
      HeapOptions reserved = heap_options(s, s.heap_bytes, s.tracking);
      reserved.reserve_bytes = s.heap_bytes;
      auto t0 = Clock::now();
      h = must(Heap::open(*store, version, reserved), "opening a heap");
      secs = seconds_since(t0);
      if (h->stats().pool_pages > 0) {
        rsv.push_back(static_cast<double>(h->stats().pool_pages * s.page_size) / 1e6 / secs);
        rnd_rsv.push_back(touch_in(*h, order) * 1e6 / static_cast<double>(pages));
        h.reset();
        h = must(Heap::open(*store, version, reserved), "opening a heap");
        seq_rsv.push_back(static_cast<double>(s.heap_bytes) / 1e6 / touch_all(*h));
      }
      h.reset();
      for (bool with_pool : {true, false}) {
        HeapOptions small = heap_options(s, s.heap_bytes / 4, s.tracking);
        small.page_pool = with_pool;
        h = must(Heap::open(*store, version, small), "opening a heap");
        touch_all(*h);
        double second = touch_all(*h);
        (with_pool ? seq_evict : seq_evict_drop).push_back(static_cast<double>(s.heap_bytes) / 1e6 / second);
        h.reset();
      }
    }
    // The same random order over a heap never written: every fault maps zero pages, no store read,
    // so this is the fault path's own cost.
    std::vector<double> zero;
    for (int r = 0; r < s.rounds; ++r) {
      auto h = must(Heap::open(*store, 0, heap_options(s, s.heap_bytes, s.tracking)), "opening a heap");
      zero.push_back(touch_in(*h, order) * 1e6 / static_cast<double>(h->stats().faults));
    }
    f.zero_fault_us = median(zero);
    // The page store's own read of each page (what every load above includes), in random order.
    Manifest m = must(store->manifest(version), "reading the manifest");
    std::vector<std::byte> buf(s.page_size);
    std::vector<double> reads;
    for (int r = 0; r < s.rounds; ++r) {
      std::shuffle(m.pages.begin(), m.pages.end(), gen);
      auto t0 = Clock::now();
      for (const heapstore::PageRef& ref : m.pages) must_ok(store->read_page(ref.hash, buf), "read_page");
      reads.push_back(seconds_since(t0) * 1e6 / static_cast<double>(m.pages.size()));
    }
    f.read_page_us = median(reads);
    // Post-copy, into an empty store each round.
    {
      std::vector<double> post_rnd, post_rest;
      Manifest whole = must(store->manifest(version), "reading the manifest");
      StoreSource source(*store, s.page_size);
      for (int r = 0; r < s.rounds; ++r) {
        for (bool rest : {false, true}) {
          std::string receiver_dir = dir + "/receiver-" + tag;
          std::filesystem::remove_all(receiver_dir);
          auto receiver = must(PageStore::open(receiver_dir), "opening the receiving store");
          auto h = must(Heap::open_incoming(*receiver, whole, source, heap_options(s, s.heap_bytes, s.tracking)),
                        "opening an incoming heap");
          if (rest) {
            auto t0 = Clock::now();
            must(h->fetch_rest(), "fetching the rest");
            post_rest.push_back(static_cast<double>(s.heap_bytes) / 1e6 / seconds_since(t0));
          } else {
            std::shuffle(order.begin(), order.end(), gen);
            post_rnd.push_back(touch_in(*h, order) * 1e6 / static_cast<double>(pages));
          }
          h.reset();
          receiver.reset();
          std::filesystem::remove_all(receiver_dir);
        }
      }
      f.post_copy_random_us = median(post_rnd);
      f.post_copy_fetch_rest_MBps = median(post_rest);
      progress("  post-copy: random touches " + fixed(f.post_copy_random_us, 2) + " us/page, fetch_rest " +
               fixed(f.post_copy_fetch_rest_MBps, 0) + " MB/s");
    }
    f.page_in_random_us = median(rnd);
    f.page_in_random_fault_us = median(rnd_fault);
    f.page_in_random_pages_per_fault = median(rnd_ppf);
    f.page_in_sequential_MBps = median(seq);
    f.page_in_sequential_pages_per_fault = median(seq_ppf);
    if (!rsv.empty()) {
      f.pool_reserve_MBps = median(rsv);
      f.page_in_random_reserved_us = median(rnd_rsv);
      f.page_in_sequential_reserved_MBps = median(seq_rsv);
    }
    f.page_in_sequential_evicting_MBps = median(seq_evict);
    f.page_in_sequential_evicting_no_pool_MBps = median(seq_evict_drop);
    progress("  page-in with the pool reserved (" + fixed(f.pool_reserve_MBps, 0) + " MB/s to reserve): random " +
             fixed(f.page_in_random_reserved_us, 2) + " us/page, sequential " +
             fixed(f.page_in_sequential_reserved_MBps, 0) + " MB/s; sequential over a heap 4x its budget " +
             fixed(f.page_in_sequential_evicting_MBps, 0) + " MB/s (without the pool " +
             fixed(f.page_in_sequential_evicting_no_pool_MBps, 0) + " MB/s)");
    progress("  page-in: random " + fixed(f.page_in_random_us, 2) + " us/page (" + fixed(f.page_in_random_fault_us, 2) +
             " us/fault, " + fixed(f.page_in_random_pages_per_fault, 2) + " pages/fault), sequential " +
             fixed(f.page_in_sequential_MBps, 0) + " MB/s; zero-page fault " + fixed(f.zero_fault_us, 2) +
             " us; PageStore::read_page " + fixed(f.read_page_us, 2) + " us/page");
  }
  store.reset();
  std::error_code ec;
  std::filesystem::remove_all(store_dir, ec);
  return f;
}

djinn::bench::Reference ref(const std::string& name, double value, int decimals) {
  return djinn::bench::Reference{name, djinn::bench::round_to(value, decimals)};
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg("bench-heapstore",
             "The heap's costs beside the kernel's, measured in the same run: first write to a clean page (vs a minor\n"
             "fault), demand page-in random and sequential (vs a minor fault + a 4 KiB pread of a cached page, and a\n"
             "raw read of the same bytes), dirty-set collection at 1% and 100% dirty, an incremental checkpoint of\n"
             "1% of the pages against a full one; then the page store's checkpoint throughput (vs a raw write +\n"
             "fsync and LMDB). Prints one JSON object (DESIGN §11) on stdout.");
  cfg.add_bool("quick", false, "small sizes: a 32 MiB heap, one round, under a minute in all");
  const Plan quick_plan{std::chrono::milliseconds(0), std::chrono::milliseconds(0), 1};
  const Plan full_plan{std::chrono::milliseconds(0), std::chrono::milliseconds(0), 3};
  djinn::bench::add_plan_flags(cfg, quick_plan, full_plan);
  cfg.add_int("heap-mb", 0, "heap size in MiB (0: 32 with --quick, else 256)", 0, 1 << 20);
  cfg.add_int("page-size", kDefaultPageSize, "heap page size in bytes", 4096, 1 << 21);
  cfg.add_string("tracking", "auto", "dirty tracking: auto, async or sync");
  cfg.add_int("fault-around", HeapOptions{}.fault_around_pages, "pages loaded by a non-sequential fault", 1, 1024);
  cfg.add_int("fault-around-max", HeapOptions{}.fault_around_max_pages,
              "the longest run a sequential scan's faults load (at most 4 MiB and a quarter of the budget)", 1, 65536);
  cfg.add_int("fault-spin-us", HeapOptions{}.fault_spin_us, "how long the fault thread polls before it sleeps", 0,
              100000);
  cfg.add_int("load-threads", HeapOptions{}.load_threads, "threads loading long runs beside the fault thread", 0,
              64);
  cfg.add_bool("compare-page-sizes", false, "also measure 16 KiB and 64 KiB pages (figures cmp_*)");
  cfg.add_bool("store-figures", true, "add the page store's figures (checkpoint throughput vs raw disk and LMDB)");
  if (Status st = cfg.parse(argc, argv); !st.ok()) return cfg.exit_code(st);
  log::set_level(log::Level::kWarn);

  const bool quick = cfg.get_bool("quick");
  const Plan plan = djinn::bench::plan_from_flags(cfg, quick_plan, full_plan);
  Setup setup;
  setup.heap_bytes = uint64_t(cfg.get_int("heap-mb") > 0 ? cfg.get_int("heap-mb") : quick ? 32 : 256) << 20;
  setup.page_size = static_cast<uint32_t>(cfg.get_int("page-size"));
  std::string tracking = cfg.get_string("tracking");
  setup.tracking = tracking == "async"  ? DirtyTracking::kAsync
                   : tracking == "sync" ? DirtyTracking::kSyncWriteProtect
                                        : DirtyTracking::kAuto;
  if (setup.tracking == DirtyTracking::kAuto) setup.tracking = Heap::auto_tracking();
  setup.fault_around = static_cast<uint32_t>(cfg.get_int("fault-around"));
  setup.fault_around_max = static_cast<uint32_t>(cfg.get_int("fault-around-max"));
  setup.fault_spin_us = static_cast<uint32_t>(cfg.get_int("fault-spin-us"));
  setup.load_threads = static_cast<uint32_t>(cfg.get_int("load-threads"));
  setup.rounds = plan.rounds;

  djinn::bench::Report report("heapstore");
  auto dir = must(djinn::bench::TempDir::create("djinn-bench-heapstore-"), "temporary directory");
  progress("heap " + std::to_string(setup.heap_bytes >> 20) + " MiB, pages of " + std::to_string(setup.page_size) +
           " bytes, dirty tracking " + std::string(tracking_name(setup.tracking)) + ", " +
           std::to_string(setup.rounds) + " round(s); in " + dir.path());

  // The kernel's limits, in this run.
  std::vector<double> minor;
  for (int r = 0; r < std::max(3, setup.rounds); ++r) minor.push_back(minor_fault_us(setup.heap_bytes));
  const double minor_us = median(minor);
  const FileLimits file = file_limits(dir.path(), setup.heap_bytes, std::max(3, setup.rounds));
  const double move_MBps = warm_page_move_MBps(dir.path(), setup.heap_bytes, std::max(3, setup.rounds));
  progress("limits: minor fault " + fixed(minor_us, 3) + " us/page, 4 KiB pread of a cached page " +
           fixed(file.pread_us, 3) + " us, sequential read " + fixed(file.read_MBps, 0) + " MB/s, copy into resident "
           "pages + UFFDIO_MOVE " + fixed(move_MBps, 0) + " MB/s");

  HeapFigures f = heap_figures(setup, dir.path(), "main");
  const double page_kib = setup.page_size / 1024.0;
  const std::string per_page = setup.page_size == kSystemPage ? "us/page" : "us/page (" + fixed(page_kib, 0) + " KiB)";

  report.add({"first_write_us", djinn::bench::round_to(f.first_write_us, 3), per_page, std::nullopt,
              ref("kernel_minor_fault_us", minor_us, 3), djinn::bench::Target::at_most(djinn::bench::Target::Of::kLimit, 2)});
  report.add({"first_write_sync_wp_us", djinn::bench::round_to(f.first_write_sync_us, 3), per_page, std::nullopt,
              ref("kernel_minor_fault_us", minor_us, 3), std::nullopt});
  report.add({"page_in_random_us", djinn::bench::round_to(f.page_in_random_us, 2), per_page, std::nullopt,
              ref("minor_fault_plus_pread_4k_us", minor_us + file.pread_us, 3),
              djinn::bench::Target::at_most(djinn::bench::Target::Of::kLimit, 5)});
  report.add({"page_in_random_per_fault_us", djinn::bench::round_to(f.page_in_random_fault_us, 2), "us/fault", std::nullopt,
              ref("minor_fault_plus_pread_4k_us", minor_us + file.pread_us, 3), std::nullopt});
  report.add({"page_store_read_page_us", djinn::bench::round_to(f.read_page_us, 2), per_page, std::nullopt,
              ref("pread_4k_cached_us", file.pread_us, 3), std::nullopt});
  report.add({"zero_fill_fault_us", djinn::bench::round_to(f.zero_fault_us, 2), "us/fault", std::nullopt,
              ref("kernel_minor_fault_us", minor_us, 3), std::nullopt});
  report.add({"page_in_sequential_MBps", djinn::bench::round_to(f.page_in_sequential_MBps, 0), "MB/s", std::nullopt,
              ref("raw_sequential_read_MBps", file.read_MBps, 0),
              djinn::bench::Target::at_least(djinn::bench::Target::Of::kLimit, 0.5)});
  // Every page a demand pager maps into anonymous memory is allocated and filled by the kernel:
  // its own minor fault rate bounds sequential page-in from below any raw read.
  report.add({"page_in_sequential_vs_page_install_MBps", djinn::bench::round_to(f.page_in_sequential_MBps, 0), "MB/s",
              std::nullopt, ref("kernel_minor_fault_MBps", static_cast<double>(kSystemPage) / minor_us, 0),
              std::nullopt});
  // A pager that never allocates (it reuses resident pages, moved in with UFFDIO_MOVE) meets this
  // rate instead: what the heap's page pool does with pages reserved or evicted.
  if (!std::isnan(move_MBps)) {
    report.add({"page_in_sequential_vs_warm_page_move_MBps", djinn::bench::round_to(f.page_in_sequential_MBps, 0),
                "MB/s", std::nullopt, ref("copy_into_resident_pages_and_uffdio_move_MBps", move_MBps, 0), std::nullopt});
  }
  // The page pool's figures (none on kernels without UFFDIO_MOVE).
  if (!std::isnan(f.page_in_sequential_reserved_MBps)) {
    report.add({"page_in_sequential_reserved_MBps", djinn::bench::round_to(f.page_in_sequential_reserved_MBps, 0),
                "MB/s", std::nullopt, ref("raw_sequential_read_MBps", file.read_MBps, 0),
                djinn::bench::Target::at_least(djinn::bench::Target::Of::kLimit, 0.5)});
    report.add({"page_in_random_reserved_us", djinn::bench::round_to(f.page_in_random_reserved_us, 2), per_page,
                std::nullopt, ref("minor_fault_plus_pread_4k_us", minor_us + file.pread_us, 3),
                djinn::bench::Target::at_most(djinn::bench::Target::Of::kLimit, 5)});
    report.add({"pool_reserve_MBps", djinn::bench::round_to(f.pool_reserve_MBps, 0), "MB/s", std::nullopt,
                ref("kernel_minor_fault_MBps", static_cast<double>(kSystemPage) / minor_us, 0), std::nullopt});
  }
  report.add({"post_copy_page_in_random_us", djinn::bench::round_to(f.post_copy_random_us, 2), per_page, std::nullopt,
              ref("page_in_random_us_local", f.page_in_random_us, 2), std::nullopt});
  report.add({"post_copy_fetch_rest_MBps", djinn::bench::round_to(f.post_copy_fetch_rest_MBps, 0), "MB/s",
              std::nullopt, ref("raw_sequential_read_MBps", file.read_MBps, 0), std::nullopt});
  report.add({"page_in_sequential_evicting_MBps", djinn::bench::round_to(f.page_in_sequential_evicting_MBps, 0), "MB/s",
              std::nullopt, ref("page_pool_off_MBps", f.page_in_sequential_evicting_no_pool_MBps, 0), std::nullopt});
  report.add({"dirty_collect_1pct_ms", djinn::bench::round_to(f.collect_1pct_ms, 3), "ms", std::nullopt, std::nullopt,
              djinn::bench::Target::at_most(djinn::bench::Target::Of::kValue, 1.0)});
  report.add({"dirty_collect_100pct_ms", djinn::bench::round_to(f.collect_100pct_ms, 3), "ms", std::nullopt, std::nullopt,
              std::nullopt});
  report.add({"checkpoint_full_ms", djinn::bench::round_to(f.checkpoint_full_ms, 1), "ms", std::nullopt, std::nullopt,
              std::nullopt});
  report.add({"checkpoint_incremental_1pct_ms", djinn::bench::round_to(f.checkpoint_incremental_ms, 2), "ms", std::nullopt,
              std::nullopt, std::nullopt});
  report.add({"checkpoint_incremental_1pct_fraction", djinn::bench::round_to(f.incremental_fraction, 4), "of full",
              std::nullopt, std::nullopt, djinn::bench::Target::at_most(djinn::bench::Target::Of::kValue, 0.02)});

  if (cfg.get_bool("compare-page-sizes")) {
    for (uint32_t size : {16384u, 65536u}) {
      Setup other = setup;
      other.page_size = size;
      HeapFigures g = heap_figures(other, dir.path(), "page" + std::to_string(size));
      std::string p = "cmp_page" + std::to_string(size / 1024) + "k_";
      double per_4k = static_cast<double>(kSystemPage) / size;
      report.add({p + "first_write_us_per_4k", djinn::bench::round_to(g.first_write_us * per_4k, 3), "us/4KiB",
                  std::nullopt, ref("page4k_first_write_us", f.first_write_us, 3), std::nullopt});
      report.add({p + "page_in_random_us_per_4k", djinn::bench::round_to(g.page_in_random_us * per_4k, 2), "us/4KiB",
                  std::nullopt, ref("page4k_page_in_random_us", f.page_in_random_us, 2), std::nullopt});
      report.add({p + "page_in_sequential_MBps", djinn::bench::round_to(g.page_in_sequential_MBps, 0), "MB/s", std::nullopt,
                  ref("page4k_page_in_sequential_MBps", f.page_in_sequential_MBps, 0), std::nullopt});
      report.add({p + "checkpoint_incremental_1pct_ms", djinn::bench::round_to(g.checkpoint_incremental_ms, 2), "ms",
                  std::nullopt, ref("page4k_checkpoint_incremental_1pct_ms", f.checkpoint_incremental_ms, 2),
                  std::nullopt});
      report.add({p + "checkpoint_incremental_1pct_MB", djinn::bench::round_to(g.incremental_pages * size / 1e6, 2),
                  "MB", std::nullopt,
                  ref("page4k_checkpoint_incremental_1pct_MB", f.incremental_pages * 4096 / 1e6, 2), std::nullopt});
      report.add({p + "dirty_collect_1pct_ms", djinn::bench::round_to(g.collect_1pct_ms, 3), "ms", std::nullopt,
                  ref("page4k_dirty_collect_1pct_ms", f.collect_1pct_ms, 3), std::nullopt});
    }
    report.note("cmp_*: the same figures with larger heap pages, per 4 KiB of heap where a figure is per page; the "
                "incremental checkpoint makes the same writes (8 bytes in 1% of the 4 KiB blocks), which dirty up to "
                "4 or 16 times the bytes; the first write is one byte per heap page (a dense writer still takes one "
                "write-protect fault per 4 KiB: the MMU's granule)");
  }

  if (cfg.get_bool("store-figures")) {
    progress("page store figures");
    djinn::heapstore::bench::add_store_figures(report, quick, dir.path());
  }

  report.note("one machine, " + std::to_string(std::thread::hardware_concurrency()) +
              " hardware threads, shared with whatever else runs; heap " + std::to_string(setup.heap_bytes >> 20) +
              " MiB in pages of " + std::to_string(setup.page_size) + " bytes, dirty tracking " +
              std::string(tracking_name(setup.tracking)) + "; medians of " + std::to_string(setup.rounds) +
              " round(s); page store in " + dir.path() + " (durable: fsync at every commit)");
  report.note("first_write: one byte written to every page of a heap whose pages are all resident, clean and "
              "write-protected (just checkpointed or re-collected), per page; the kernel resolves it (async "
              "write-protect) or the fault thread does (sync, the fallback). Limit: the first write to each page "
              "of a fresh anonymous mapping (a minor fault), measured just before");
  report.note("page_in: a fresh heap opened on a version holding every page, budget = capacity; one byte read from "
              "every page, in a random order (random) or in order (sequential); each fault loads its page and "
              "following non-resident ones (" + std::to_string(setup.fault_around) +
              " after a non-sequential fault, doubling while faults continue runs); page_in_random_per_fault_us is "
              "the same time per fault served. Pages come from the page store (read_pages: the in-memory index, one "
              "pread per run of pages in pack order, an XXH3 check per page); each run is mapped with "
              "UFFDIO_COPY, runs of 64 pages or more in parts, by the fault thread and the load threads (" +
              std::to_string(setup.load_threads) + ") at once. Limits: the minor fault above plus a 4 KiB pread at a random offset of a file in the "
              "page cache; a sequential read of the same number of bytes from that file in 1 MiB preads; the "
              "kernel's minor fault rate in MB/s (allocating and mapping a page, which every page-in also pays)");
  report.note("page pool: *_reserved: the same scans of a heap whose page pool was filled when it opened "
              "(HeapOptions::reserve_bytes = the heap's size, as a node receiving an application reserves while its "
              "pages are on their way); a scan's runs copy each page into a pool page and move it into place "
              "(UFFDIO_MOVE) before write-protecting the run, no page allocated; random faults do not use the pool. "
              "pool_reserve_MBps: that filling (MADV_POPULATE_WRITE), timed apart. page_in_sequential_evicting: a "
              "heap of four times its budget scanned in order twice, the second scan timed (every run evicts as "
              "many pages: into the pool, whose pages the next runs take); beside it the same with the pool off "
              "(HeapOptions::page_pool = false: evicted pages given back, every page-in allocating)");
  report.note("dirty_collect: every page resident and clean, then 1% of the pages (or all) written; one "
              "Heap::dirty_pages() (PAGEMAP_SCAN with PM_SCAN_WP_MATCHING over the heap, page-table update, sorted "
              "list)");
  report.note("checkpoint: Heap::checkpoint on a durable page store: full = every page rewritten with new content, "
              "incremental = 8 bytes written in 1% of the 4 KiB blocks (" + std::to_string(f.incremental_pages) +
              " pages written); fraction = incremental / full");
  if (quick) report.note("--quick: a 32 MiB heap and one round; the targets are the issue's, for 256 MiB");
  djinn::bench::print_verdicts(report, "bench-heapstore", 10, "cannot judge");
  report.print();
  return 0;
}
