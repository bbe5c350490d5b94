// Unit tests of the heap (heapstore/include/djinn/heapstore/heap.h), each run in every dirty
// tracking mode this kernel has (asynchronous write-protect and the synchronous fallback):
// reopening, restoring any kept version bit-exact, incremental checkpoints writing exactly the
// pages touched, a workload eight times its budget, dirty evictions and the copies they leave in
// the store given back, pinning, zero pages, larger pages, a checkpoint that fails and the retry
// that follows, a corrupt page in a run shared by load threads, a read that throws, read-ahead of
// sequential scans, the page pool, and bad options.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <new>
#include <set>
#include <thread>

#include <pthread.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include "djinn/core/fault.h"
#include "heap_test_util.h"

using namespace djinn;
using namespace djinn::heapstore;
using namespace djinn::heapstore::heaptest;

namespace {

constexpr size_t kPage = 4096;

}  // namespace

TEST_CASE("the kernel's dirty-tracking support is reported") {
  MESSAGE("auto tracking: ", tracking_name(Heap::auto_tracking()), " (", Heap::tracking_support(), ")");
  CHECK(!tracking_name(Heap::auto_tracking()).empty());
}

TEST_CASE("a new heap reads as zero, keeps what is written, and survives close and reopen") {
  for (DirtyTracking mode : tracking_modes()) {
    INFO("mode ", tracking_name(mode));
    StoreDir s;
    Image image(4 << 20);
    uint64_t version = 0;
    {
      auto heap = must(Heap::open(*s.store, 0, small_heap(mode)));
      CHECK(heap->tracking() == mode);
      CHECK(heap->version() == 0);
      CHECK(heap->size() == (4u << 20));
      CHECK(heap->page_size() == kPage);
      CHECK_HEAP_MATCHES(image, *heap);  // all zero, every page faulted in
      image.write(*heap, 10, 100, 1);
      image.write(*heap, kPage * 7 + 4000, 200, 2);  // across a page boundary
      image.write(*heap, (4 << 20) - 64, 64, 3);    // the last bytes
      CHECK_HEAP_MATCHES(image, *heap);
      VersionInfo v = must(heap->checkpoint("record one"));
      CHECK(v.version > 0);
      CHECK(v.pages == 4);
      CHECK(heap->version() == v.version);
      CHECK(heap->record() == "record one");
      version = v.version;
    }
    s.reopen();
    auto heap = must(Heap::open(*s.store, version, small_heap(mode)));
    CHECK(heap->version() == version);
    CHECK(heap->record() == "record one");
    CHECK_HEAP_MATCHES(image, *heap);
    HeapStats st = heap->stats();
    CHECK(st.pages_loaded == 4);
    CHECK(st.faults > 0);
  }
}

TEST_CASE("every kept version restores bit-exact") {
  for (DirtyTracking mode : tracking_modes()) {
    INFO("mode ", tracking_name(mode));
    StoreDir s;
    auto& rng = test::rng();
    const size_t size = 2 << 20;
    Image image(size);
    std::map<uint64_t, std::vector<std::byte>> kept;
    {
      auto heap = must(Heap::open(*s.store, 0, small_heap(mode, size, 256 << 10)));
      for (int round = 0; round < 6; ++round) {
        for (int w = 0; w < 40; ++w) {
          size_t len = 1 + rng() % 9000;
          size_t off = rng() % (size - len);
          if (rng() % 5 == 0) {
            image.zero(*heap, off, len);
          } else {
            image.write(*heap, off, len, rng());
          }
        }
        VersionInfo v = must(heap->checkpoint("round " + std::to_string(round)));
        kept[v.version] = image.bytes;
      }
    }
    for (const auto& [version, bytes] : kept) {
      INFO("version ", version);
      auto heap = must(Heap::open(*s.store, version, small_heap(mode, size, 256 << 10)));
      Image expected(size);
      expected.bytes = bytes;
      CHECK_HEAP_MATCHES(expected, *heap);
    }
    // A restored version is a base for new versions, like any other.
    uint64_t old = kept.begin()->first;
    auto heap = must(Heap::open(*s.store, old, small_heap(mode, size, 256 << 10)));
    Image branch(size);
    branch.bytes = kept.begin()->second;
    branch.write(*heap, 12345, 777, 99);
    VersionInfo v = must(heap->checkpoint("branch"));
    CHECK(v.parent == old);
    heap.reset();
    heap = must(Heap::open(*s.store, v.version, small_heap(mode, size, 256 << 10)));
    CHECK_HEAP_MATCHES(branch, *heap);
  }
}

TEST_CASE("an incremental checkpoint after touching k pages writes k pages") {
  for (DirtyTracking mode : tracking_modes()) {
    INFO("mode ", tracking_name(mode));
    StoreDir s;
    const size_t pages = 1024;
    auto heap = must(Heap::open(*s.store, 0, small_heap(mode, pages * kPage, pages * kPage)));
    Image image(pages * kPage);
    for (size_t p = 0; p < pages; ++p) image.write(*heap, p * kPage, kPage, 1000 + p);
    VersionInfo full = must(heap->checkpoint("full"));
    CHECK(full.pages == pages);
    CHECK(full.pages_written == pages);
    for (size_t k : {size_t{0}, size_t{1}, size_t{10}, size_t{100}}) {
      INFO("k = ", k);
      std::set<size_t> touched;
      while (touched.size() < k) touched.insert(test::rng()() % pages);
      for (size_t p : touched) image.write(*heap, p * kPage + test::rng()() % 4000, 8, test::rng()());
      std::vector<uint64_t> dirty = must(heap->dirty_pages());
      CHECK(dirty.size() == k);
      HeapStats before = heap->stats();
      VersionInfo v = must(heap->checkpoint("k"));
      HeapStats after = heap->stats();
      CHECK(after.pages_checkpointed - before.pages_checkpointed == k);
      CHECK(v.pages_written == k);
      CHECK(v.pages == pages);
      CHECK(must(heap->dirty_pages()).empty());
    }
    CHECK_HEAP_MATCHES(image, *heap);
  }
}

TEST_CASE("a workload eight times its budget runs correctly, evicting and reloading pages") {
  for (DirtyTracking mode : tracking_modes()) {
    INFO("mode ", tracking_name(mode));
    StoreDir s;
    const size_t budget = 512 << 10;  // 128 pages
    const size_t size = 8 * budget;
    auto heap = must(Heap::open(*s.store, 0, small_heap(mode, size, budget)));
    Image image(size);
    auto& rng = test::rng();
    // Three passes: sequential writes, random writes, random reads checked against the image.
    for (size_t off = 0; off < size; off += kPage) image.write(*heap, off, 64, off);
    for (int i = 0; i < 3000; ++i) {
      size_t off = (rng() % (size / 8)) * 8;
      image.write(*heap, off, 8, rng());
      HeapStats st = heap->stats();
      REQUIRE(st.resident_pages <= st.budget_pages);
    }
    CHECK_HEAP_MATCHES(image, *heap);
    HeapStats st = heap->stats();
    CHECK(st.evictions > 0);
    CHECK(st.dirty_evictions > 0);
    CHECK(st.flushes > 0);
    CHECK(st.resident_pages <= budget / kPage);
    CHECK(st.over_budget_loads == 0);
    MESSAGE(tracking_name(mode), ": ", st.faults, " faults, ", st.pages_loaded, " pages loaded, ", st.evictions,
            " evictions (", st.dirty_evictions, " dirty)");
    // What was evicted dirty reaches the version by hash.
    VersionInfo v = must(heap->checkpoint("8x"));
    heap.reset();
    heap = must(Heap::open(*s.store, v.version, small_heap(mode, size, budget)));
    CHECK_HEAP_MATCHES(image, *heap);
    CHECK(heap->stats().evictions > 0);
  }
}

TEST_CASE("dirty pages evicted before a checkpoint, then reloaded and evicted clean, are all in it") {
  for (DirtyTracking mode : tracking_modes()) {
    INFO("mode ", tracking_name(mode));
    StoreDir s;
    const size_t size = 1 << 20;
    auto heap = must(Heap::open(*s.store, 0, small_heap(mode, size, 64 * kPage)));
    Image image(size);
    for (size_t p = 0; p < 40; ++p) image.write(*heap, p * kPage, kPage, p + 1);
    VersionInfo v1 = must(heap->checkpoint("v1"));
    // Rewrite some, zero one, then push everything out.
    image.write(*heap, 3 * kPage, 100, 77);
    image.zero(*heap, 5 * kPage, kPage);
    image.write(*heap, 100 * kPage, 10, 78);  // a page never written before
    must_ok(heap->trim(0));
    CHECK(heap->stats().resident_pages == 0);
    std::vector<uint64_t> dirty = must(heap->dirty_pages());
    CHECK(dirty == std::vector<uint64_t>{3, 5, 100});
    // Reading them back (clean now, still pending) and evicting them again changes nothing.
    CHECK_HEAP_MATCHES(image, *heap);
    must_ok(heap->trim(0));
    VersionInfo v2 = must(heap->checkpoint("v2"));
    CHECK(v2.parent == v1.version);
    CHECK(v2.pages == 40);  // page 5 became zero, page 100 appeared
    heap.reset();
    heap = must(Heap::open(*s.store, v2.version, small_heap(mode, size, 64 * kPage)));
    CHECK_HEAP_MATCHES(image, *heap);
  }
}

TEST_CASE("copies of pages evicted dirty are given back once rewritten or checkpointed: garbage collection reclaims them") {
  for (DirtyTracking mode : tracking_modes()) {
    INFO("mode ", tracking_name(mode));
    StoreDir s;
    const size_t pages = 256;
    const size_t size = pages * kPage;
    auto heap = must(Heap::open(*s.store, 0, small_heap(mode, size, 16 * kPage)));
    Image image(size);
    uint64_t dirty_evictions = 0;
    for (uint64_t round = 0; round < 5; ++round) {
      INFO("round ", round);
      // Every page rewritten five times through a budget of 16: each rewrite is evicted dirty
      // (held in the store) and loaded again for the next.
      for (uint64_t pass = 0; pass < 5; ++pass) {
        for (size_t p = 0; p < pages; ++p) image.write(*heap, p * kPage, 64, (round * 5 + pass) * pages + p + 1);
      }
      // Until the checkpoint, the store keeps one copy a page: the last one evicted.
      CHECK(s.store->stats().pages_pending <= pages);
      must(heap->checkpoint("round"));
      CHECK(heap->stats().dirty_evictions - dirty_evictions >= 4 * pages);
      dirty_evictions = heap->stats().dirty_evictions;
      // The version holds the last copy of each page; the four before it are gone.
      CHECK(s.store->stats().pages_pending == 0);
      CHECK(must(s.store->remove_by_policy({.keep_last = 1})) == (round == 0 ? 0u : 1u));
      must(s.store->collect_garbage());
      CHECK(s.store->stats().pages_stored == pages);
      CHECK(s.store->stats().bytes_stored == size);
      uint64_t allocated = 0;
      for (const auto& e : std::filesystem::directory_iterator(s.dir.path() / "store" / "packs")) {
        struct stat st {};
        if (::stat(e.path().c_str(), &st) == 0) allocated += static_cast<uint64_t>(st.st_blocks) * 512;
      }
      CHECK(allocated <= 2 * size);
    }
    CHECK_HEAP_MATCHES(image, *heap);
    const uint64_t version = heap->version();
    heap.reset();
    heap = must(Heap::open(*s.store, version, small_heap(mode, size, 16 * kPage)));
    CHECK_HEAP_MATCHES(image, *heap);
    // A heap closed without a checkpoint gives back what its evictions held.
    for (size_t p = 0; p < pages; ++p) std::memset(heap->base() + p * kPage, 0x5a, 64);
    CHECK(s.store->stats().pages_pending > 0);
    heap.reset();
    CHECK(s.store->stats().pages_pending == 0);
  }
}

TEST_CASE("a page written back to zero is recorded as zero") {
  for (DirtyTracking mode : tracking_modes()) {
    INFO("mode ", tracking_name(mode));
    StoreDir s;
    auto heap = must(Heap::open(*s.store, 0, small_heap(mode)));
    Image image(4 << 20);
    image.write(*heap, 0, 3 * kPage, 5);
    VersionInfo v1 = must(heap->checkpoint("a"));
    CHECK(v1.pages == 3);
    image.zero(*heap, kPage, kPage);
    VersionInfo v2 = must(heap->checkpoint("b"));
    CHECK(v2.pages == 2);
    Manifest m = must(s.store->manifest(v2.version));
    REQUIRE(m.pages.size() == 2);
    CHECK(m.pages[0].index == 0);
    CHECK(m.pages[1].index == 2);
  }
}

TEST_CASE("pinned pages are never evicted; unpinned they are") {
  for (DirtyTracking mode : tracking_modes()) {
    INFO("mode ", tracking_name(mode));
    StoreDir s;
    const size_t size = 2 << 20;
    auto heap = must(Heap::open(*s.store, 0, small_heap(mode, size, 32 * kPage)));
    Image image(size);
    image.write(*heap, 0, 4 * kPage, 1);
    must_ok(heap->pin(0, 4 * kPage, PageType::kSystem));
    CHECK(heap->stats().pinned_pages == 4);
    for (size_t off = 4 * kPage; off < size; off += kPage) image.write(*heap, off, 16, off);
    auto table = must(heap->page_table(0, 4));
    REQUIRE(table.size() == 4);
    for (const PageInfo& p : table) {
      CHECK(p.pinned);
      CHECK(p.type == PageType::kSystem);
      CHECK((p.state == PageState::kResident || p.state == PageState::kDirty));
    }
    must_ok(heap->trim(0));
    CHECK(heap->stats().resident_pages == 4);
    must_ok(heap->unpin(0, 4 * kPage));
    must_ok(heap->trim(0));
    CHECK(heap->stats().resident_pages == 0);
    CHECK_HEAP_MATCHES(image, *heap);
    CHECK(heap->pin(size, 1).code() == Code::kOutOfRange);
  }
}

TEST_CASE("the page table shows states and the hashes of persisted copies") {
  for (DirtyTracking mode : tracking_modes()) {
    INFO("mode ", tracking_name(mode));
    StoreDir s;
    auto heap = must(Heap::open(*s.store, 0, small_heap(mode)));
    Image image(4 << 20);
    image.write(*heap, 0, kPage, 1);
    image.write(*heap, 2 * kPage, kPage, 2);
    VersionInfo v = must(heap->checkpoint("t"));
    image.write(*heap, 2 * kPage, 8, 3);  // dirty again
    auto table = must(heap->page_table(0, UINT64_MAX, true));
    Manifest m = must(s.store->manifest(v.version));
    std::map<uint64_t, PageInfo> by_index;
    for (const PageInfo& p : table) by_index[p.index] = p;
    REQUIRE(by_index.count(0));
    REQUIRE(by_index.count(2));
    CHECK(by_index[0].state == PageState::kResident);
    CHECK(!by_index[0].pending);
    REQUIRE(by_index[0].hash.has_value());
    CHECK(*by_index[0].hash == m.pages[0].hash);
    CHECK(by_index[2].state == PageState::kDirty);
    CHECK(by_index[2].pending);
    must_ok(heap->trim(0));
    table = must(heap->page_table());
    for (const PageInfo& p : table) {
      if (p.index == 0) {
        CHECK(p.state == PageState::kPersistent);
        CHECK(p.hash == m.pages[0].hash);
      }
      if (p.index == 2) {
        CHECK(p.state == PageState::kPersistent);
        CHECK(p.pending);
        CHECK(p.hash != m.pages[1].hash);  // its new content, put in the store by the eviction
      }
    }
  }
}

TEST_CASE("larger pages: 16 KiB and 64 KiB heaps track and restore the same way") {
  for (uint32_t page : {16u << 10, 64u << 10}) {
    for (DirtyTracking mode : tracking_modes()) {
      INFO("page ", page, " mode ", tracking_name(mode));
      StoreDir s;
      HeapOptions o = small_heap(mode, 4 << 20, 32 * page);
      o.page_size = page;
      auto heap = must(Heap::open(*s.store, 0, o));
      CHECK(heap->page_size() == page);
      CHECK(reinterpret_cast<uintptr_t>(heap->base()) % page == 0);
      Image image(4 << 20);
      auto& rng = test::rng();
      for (int i = 0; i < 500; ++i) image.write(*heap, (rng() % ((4 << 20) / 8)) * 8, 8, rng());
      VersionInfo v1 = must(heap->checkpoint("one"));
      CHECK(v1.page_size == page);
      // One byte in the last 4 KiB of a page dirties that whole page, and only it.
      image.write(*heap, 3 * page + page - 8, 8, 42);
      CHECK(must(heap->dirty_pages()) == std::vector<uint64_t>{3});
      VersionInfo v2 = must(heap->checkpoint("two"));
      CHECK(v2.pages_written == 1);
      heap.reset();
      heap = must(Heap::open(*s.store, v2.version, o));
      CHECK_HEAP_MATCHES(image, *heap);
      CHECK(heap->stats().evictions > 0);
    }
  }
}

TEST_CASE("a checkpoint that fails leaves its pages dirty, and the next one writes them") {
  for (DirtyTracking mode : tracking_modes()) {
    INFO("mode ", tracking_name(mode));
    StoreDir s;
    auto heap = must(Heap::open(*s.store, 0, small_heap(mode)));
    Image image(4 << 20);
    image.write(*heap, 0, 5 * kPage, 1);
    VersionInfo v1 = must(heap->checkpoint("one"));
    image.write(*heap, kPage, 8, 2);
    image.write(*heap, 3 * kPage, 8, 3);
    for (const char* point : {"heapstore.heap.checkpoint.collected", "heapstore.heap.checkpoint.staged",
                              "heapstore.commit.begin"}) {
      INFO("crash point ", point);
      fault::arm(point, fault::Action::kThrow);
      CHECK_THROWS_AS((void)heap->checkpoint("lost"), fault::CrashPointHit);
      fault::disarm_all();
      CHECK(heap->version() == v1.version);
      CHECK(heap->record() == "one");
      CHECK(must(heap->dirty_pages()) == std::vector<uint64_t>{1, 3});
      CHECK(s.store->latest()->version == v1.version);
    }
    VersionInfo v2 = must(heap->checkpoint("two"));
    CHECK(v2.pages_written == 2);
    heap.reset();
    heap = must(Heap::open(*s.store, v2.version, small_heap(mode)));
    CHECK_HEAP_MATCHES(image, *heap);
  }
}

TEST_CASE("a heap opens at the base address asked for, and refuses bad options") {
  StoreDir s;
  HeapOptions o = small_heap(Heap::auto_tracking());
  o.base_address = reinterpret_cast<void*>(uintptr_t{0x5a0000000000});
  {
    auto heap = must(Heap::open(*s.store, 0, o));
    CHECK(heap->base() == static_cast<std::byte*>(o.base_address));
    // The same address again, while it is taken, is refused.
    CHECK(Heap::open(*s.store, 0, o).status().code() == Code::kResourceExhausted);
  }
  HeapOptions bad = small_heap(Heap::auto_tracking());
  bad.page_size = 3000;
  CHECK(Heap::open(*s.store, 0, bad).status().code() == Code::kInvalidArgument);
  bad = small_heap(Heap::auto_tracking());
  bad.budget_bytes = 4 * kPage;
  CHECK(Heap::open(*s.store, 0, bad).status().code() == Code::kInvalidArgument);
  bad = small_heap(Heap::auto_tracking());
  bad.capacity_bytes = 0;
  CHECK(Heap::open(*s.store, 0, bad).status().code() == Code::kInvalidArgument);
  bad = small_heap(Heap::auto_tracking());
  bad.base_address = reinterpret_cast<void*>(uintptr_t{0x5a0000000100});
  CHECK(Heap::open(*s.store, 0, bad).status().code() == Code::kInvalidArgument);
  CHECK(Heap::open(*s.store, 12345, small_heap(Heap::auto_tracking())).status().code() == Code::kNotFound);
}

TEST_CASE("several threads may read a heap at once, faulting the same pages") {
  for (DirtyTracking mode : tracking_modes()) {
    INFO("mode ", tracking_name(mode));
    StoreDir s;
    const size_t size = 4 << 20;
    Image image(size);
    uint64_t version;
    {
      auto heap = must(Heap::open(*s.store, 0, small_heap(mode, size, size)));
      for (size_t off = 0; off < size; off += kPage) image.write(*heap, off, 32, off + 1);
      version = must(heap->checkpoint("r")).version;
    }
    auto heap = must(Heap::open(*s.store, version, small_heap(mode, size, 64 * kPage)));
    std::atomic<int> bad{0};
    std::vector<std::thread> readers;
    for (int t = 0; t < 4; ++t) {
      readers.emplace_back([&, t] {
        std::mt19937_64 gen(t);
        for (int i = 0; i < 2000; ++i) {
          size_t off = (gen() % (size / kPage)) * kPage;
          if (std::memcmp(heap->base() + off, image.bytes.data() + off, 32) != 0) bad++;
        }
      });
    }
    for (auto& r : readers) r.join();
    CHECK(bad.load() == 0);
    CHECK(heap->stats().evictions > 0);
  }
}

TEST_CASE("a run shared by load threads: a corrupt page ends it, pages mapped past it stay resident") {
  for (DirtyTracking mode : tracking_modes()) {
    INFO("mode ", tracking_name(mode));
    StoreDir s;
    const size_t size = 4 << 20;
    const uint64_t bad = 30;
    Image image(size);
    const uint64_t version = marked_version(*s.store, mode, image, 1);
    // Flip a byte of page `bad` where the pack stores it (raw: the store does not compress here).
    {
      std::filesystem::path pack;
      for (const auto& e : std::filesystem::directory_iterator(s.dir.path() / "store" / "packs")) pack = e.path();
      std::fstream f(pack, std::ios::in | std::ios::out | std::ios::binary);
      std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      size_t at = bytes.find(std::string(reinterpret_cast<const char*>(image.bytes.data() + bad * kPage), 64));
      REQUIRE(at != std::string::npos);
      f.clear();
      f.seekp(static_cast<std::streamoff>(at));
      f.put(static_cast<char>(bytes[at] ^ 0x5a));
    }
    // Twice: pages allocated by the kernel, then pages of a pool filled at open (a run of 128 is
    // long enough to use it): the part that stops gives its pool pages back.
    for (uint64_t reserve : {uint64_t{0}, uint64_t{size}}) {
      INFO("reserved ", reserve);
      HeapOptions o = small_heap(mode, size, size);
      o.fault_around_pages = 128;
      o.fault_around_max_pages = 256;  // runs of 128 stay short of the longest: no read-ahead here
      o.load_threads = 1;
      o.reserve_bytes = reserve;
      auto heap = must(Heap::open(*s.store, version, o));
      const bool pooled = heap->stats().pool_pages > 0;
      auto same = [&](uint64_t p) { return std::memcmp(heap->base() + p * kPage, image.bytes.data() + p * kPage, 64) == 0; };
      // One fault loads page 0, then pages 1..127 in two parts; the part holding the bad page stops
      // there, the other is mapped whole.
      CHECK(same(0));
      HeapStats st = heap->stats();
      CHECK(st.faults == 1);
      // The run's 127 neighbours took pool pages, those of the stopped part freed, none returned.
      if (pooled) CHECK(st.pool_pages == size / kPage - 127);
      const uint64_t second_part = 1 + (127 + 1) / 2;
      CHECK(st.pages_loaded == 1 + (bad - 1) + (128 - second_part));
      CHECK(st.resident_pages == st.pages_loaded);
      for (uint64_t p = 0; p < bad; ++p) CHECK(same(p));
      for (uint64_t p = second_part; p < 128; ++p) CHECK(same(p));
      CHECK(heap->stats().faults == 1);
      // The pages between load on their own fault, up to the resident ones.
      for (uint64_t p = bad + 1; p < second_part; ++p) CHECK(same(p));
      st = heap->stats();
      CHECK(st.faults == 2);
      CHECK(st.resident_pages == 127);
      CHECK(st.load_errors == 0);
      CHECK(st.resident_pages + st.pool_pages <= st.budget_pages);
      if (pooled) {
        CHECK(st.pages_from_pool == 127);
        CHECK(st.pool_pages == size / kPage - 127);
      }
      CHECK(must(heap->checkpoint("after")).pages_written == 0);
    }
  }
}

TEST_CASE("a read that throws fails its pages, on the fault thread or a load thread, and the process goes on") {
  const size_t size = 4 << 20;
  for (DirtyTracking mode : tracking_modes()) {
    INFO("mode ", tracking_name(mode));
    StoreDir s;
    Image image(size);
    const uint64_t version = marked_version(*s.store, mode, image, 9);
    s.store.reset();  // the child opens it
    for (bool on_load_thread : {false, true}) {
      INFO("on a load thread: ", on_load_thread);
      // In a child: a failed page is SIGBUS to the thread touching it, and an exception let out
      // of a loading thread would end the process.
      constexpr int kGotSigbus = 77, kNeverThrown = 5, kWrongContent = 4;
      pid_t child = ::fork();
      REQUIRE(child >= 0);
      if (child == 0) {
        struct sigaction on_bus {};
        on_bus.sa_handler = [](int) { ::_exit(kGotSigbus); };
        ::sigaction(SIGBUS, &on_bus, nullptr);
        auto store = PageStore::open(s.dir.path() / "store", s.options);
        if (!store.ok()) ::_exit(3);
        static std::atomic<bool> thrown{false};
        if (on_load_thread) {
          // The first read a load thread makes throws. A read on the fault thread passes, once
          // the load thread has taken the other part of the run (the fault thread could
          // otherwise take both).
          static std::function<void()> throw_on_loader = [] {
            char name[16] = {};
            pthread_getname_np(pthread_self(), name, sizeof name);
            if (std::string_view(name) != "heap-loader") {
              fault::arm_call("heapstore.visit_pages", throw_on_loader);
              auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
              while (!thrown && std::chrono::steady_clock::now() < until) std::this_thread::yield();
              return;
            }
            thrown = true;
            throw std::bad_alloc();
          };
          fault::arm_call("heapstore.visit_pages", throw_on_loader);
        } else {
          thrown = true;  // by the first read, which is the fault thread's: no load threads
          fault::arm("heapstore.visit_pages", fault::Action::kThrow);
        }
        HeapOptions o = small_heap(mode, size, size);
        o.fault_around_pages = 128;
        o.fault_around_max_pages = 256;
        o.load_threads = on_load_thread ? 1 : 0;
        auto heap = Heap::open(**store, version, o);
        if (!heap.ok()) ::_exit(2);
        for (size_t off = 0; off < size; off += kPage) {
          if (std::memcmp((*heap)->base() + off, image.bytes.data() + off, 64) != 0) ::_exit(kWrongContent);
        }
        ::_exit(thrown ? 0 : kNeverThrown);
      }
      int status = 0;
      REQUIRE(::waitpid(child, &status, 0) == child);
      REQUIRE_MESSAGE(WIFEXITED(status), "the child died of signal ", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
      // The part that threw failed: SIGBUS when the touched page was in it; otherwise its pages
      // load on their own faults later, whole.
      if (on_load_thread) {
        CHECK((WEXITSTATUS(status) == kGotSigbus || WEXITSTATUS(status) == 0));
      } else {
        CHECK(WEXITSTATUS(status) == kGotSigbus);
      }
    }
  }
}

TEST_CASE("a sequential scan gets runs read ahead, within the budget only") {
  for (DirtyTracking mode : tracking_modes()) {
    INFO("mode ", tracking_name(mode));
    StoreDir s;
    const size_t size = 4 << 20;
    const uint64_t pages = size / kPage;
    Image image(size);
    const uint64_t version = marked_version(*s.store, mode, image, 7);
    auto scan = [&](uint64_t budget_pages) {
      HeapOptions o = small_heap(mode, size, budget_pages * kPage);
      o.fault_around_pages = 8;
      o.fault_around_max_pages = 64;
      auto heap = must(Heap::open(*s.store, version, o));
      for (uint64_t p = 0; p < pages; ++p) {
        REQUIRE(std::memcmp(heap->base() + p * kPage, image.bytes.data() + p * kPage, 64) == 0);
        REQUIRE(heap->stats().resident_pages <= budget_pages);
      }
      return heap->stats();
    };
    // Room for everything: once the runs are 64 pages long, every fault loads one and reads the
    // next ahead, so about one fault per 128 pages.
    HeapStats all = scan(pages);
    CHECK(all.pages_loaded == pages);
    CHECK(all.pages_read_ahead >= pages / 2 - 64);
    CHECK(all.faults <= pages / 128 + 8);
    CHECK(all.evictions == 0);
    // A budget of a quarter: read-ahead never evicts, the scan still sees every page right.
    HeapStats tight = scan(pages / 4);
    CHECK(tight.evictions > 0);
    CHECK(tight.pages_read_ahead < all.pages_read_ahead);
    // A fault that does not continue a scan reads nothing ahead, even when its first run is as
    // long as the longest.
    HeapOptions o = small_heap(mode, size, size);
    o.fault_around_pages = 64;
    o.fault_around_max_pages = 64;
    auto heap = must(Heap::open(*s.store, version, o));
    for (uint64_t p : {uint64_t{500}, uint64_t{100}, uint64_t{900}}) {
      CHECK(std::memcmp(heap->base() + p * kPage, image.bytes.data() + p * kPage, 64) == 0);
    }
    CHECK(heap->stats().pages_loaded == 3 * 64);
    CHECK(heap->stats().pages_read_ahead == 0);
  }
}

TEST_CASE("the page pool: scans reuse evicted or reserved pages, which arrive clean, within the budget") {
  for (DirtyTracking mode : tracking_modes()) {
    INFO("mode ", tracking_name(mode));
    StoreDir s;
    const size_t size = 4 << 20;
    const uint64_t pages = size / kPage;
    Image image(size);
    const uint64_t version = marked_version(*s.store, mode, image, 3);
    auto within_budget = [](const Heap& heap) {
      HeapStats st = heap.stats();
      return st.resident_pages + st.pool_pages <= st.budget_pages;
    };
    bool has_pool;
    {
      HeapOptions o = small_heap(mode, size, size);
      o.reserve_bytes = size;
      has_pool = must(Heap::open(*s.store, version, o))->stats().pool_pages == pages;
    }
    if (!has_pool) MESSAGE("no UFFDIO_MOVE on this kernel: the heap runs without its page pool");

    // A heap four times its budget scanned twice: the second scan's pages come from the first's
    // evictions, and none of them reads as written.
    HeapOptions o = small_heap(mode, size, size / 4);
    o.fault_around_max_pages = 64;
    auto heap = must(Heap::open(*s.store, version, o));
    for (int pass = 0; pass < 2; ++pass) {
      for (uint64_t p = 0; p < pages; ++p) {
        REQUIRE(std::memcmp(heap->base() + p * kPage, image.bytes.data() + p * kPage, 64) == 0);
        REQUIRE(within_budget(*heap));
      }
    }
    HeapStats st = heap->stats();
    CHECK(st.evictions > pages);
    if (has_pool) {
      CHECK(st.pages_to_pool > pages / 2);
      CHECK(st.pages_from_pool > pages / 2);
    }
    CHECK(must(heap->dirty_pages()).empty());
    // Writes in order, every other page: write faults and writes to pages that runs brought, from
    // the pool or not: exactly those pages are dirty, and checkpointed.
    std::vector<uint64_t> written;
    for (uint64_t p = 0; p < pages; p += 2) {
      image.write(*heap, p * kPage + 100, 8, p + 11);
      written.push_back(p);
      REQUIRE(within_budget(*heap));
    }
    CHECK(must(heap->dirty_pages()) == written);
    VersionInfo v = must(heap->checkpoint("written"));
    heap.reset();

    // Reserved at open: a scan maps the pool's pages, clean; trim frees the pool, reserve fills it.
    o = small_heap(mode, size, size);
    o.reserve_bytes = size;
    heap = must(Heap::open(*s.store, v.version, o));
    CHECK_HEAP_MATCHES(image, *heap);
    st = heap->stats();
    CHECK(st.resident_pages + st.pool_pages <= st.budget_pages);
    if (has_pool) CHECK(st.pages_from_pool > pages / 2);
    CHECK(must(heap->dirty_pages()).empty());
    image.write(*heap, 700 * kPage, 16, 99);
    CHECK(must(heap->dirty_pages()) == std::vector<uint64_t>{700});
    must_ok(heap->trim(0));
    CHECK(heap->stats().resident_pages == 0);
    CHECK(heap->stats().pool_pages == 0);
    must_ok(heap->reserve(64 * kPage));
    CHECK(heap->stats().pool_pages == (has_pool ? 64u : 0u));
    CHECK_HEAP_MATCHES(image, *heap);
    CHECK(must(heap->dirty_pages()) == std::vector<uint64_t>{700});
    v = must(heap->checkpoint("700"));
    heap.reset();

    // A new heap's zero pages come from the pool too, and read as zero.
    heap = must(Heap::open(*s.store, 0, o));
    Image zeros(size);
    CHECK_HEAP_MATCHES(zeros, *heap);
    if (has_pool) CHECK(heap->stats().pages_from_pool > pages / 2);
    zeros.write(*heap, 9 * kPage, 8, 5);
    CHECK(must(heap->dirty_pages()) == std::vector<uint64_t>{9});
    heap.reset();

    // Without the pool: evictions give pages back, nothing is reserved.
    o.page_pool = false;
    heap = must(Heap::open(*s.store, v.version, o));
    CHECK(heap->stats().pool_pages == 0);
    CHECK_HEAP_MATCHES(image, *heap);
    CHECK(heap->stats().pages_from_pool == 0);
  }
}

TEST_CASE("a heap's version survives the retention and garbage collection another heap runs on their store") {
  for (DirtyTracking mode : tracking_modes()) {
    INFO("mode ", tracking_name(mode));
    StoreDir s;  // one store for the node's applications (DESIGN §9)
    const size_t size = 1 << 20;  // 256 pages, every one marked
    Image image(size);
    const uint64_t va = marked_version(*s.store, mode, image, 11);
    // Heap A runs on va with nothing resident yet: every page it touches loads from va.
    auto a = must(Heap::open(*s.store, va, small_heap(mode, size, 128 << 10)));
    // Heap B, another application, checkpoints eight times and its runtime applies retention and
    // collects garbage after each: by the policy alone, va goes at the eighth.
    Image other(size);
    auto b = must(Heap::open(*s.store, 0, small_heap(mode, size, 128 << 10)));
    for (int round = 0; round < 8; ++round) {
      other.write(*b, round * 8 * kPage, 8 * kPage, 1000 + round);
      must(b->checkpoint("b " + std::to_string(round)));
      must(s.store->remove_by_policy({.keep_last = 8}));
      must(s.store->collect_garbage());
    }
    REQUIRE_MESSAGE(s.store->manifest(va).ok(), "version ", va, " was removed from under the heap running on it");
    // A faults its pages in from va and checkpoints on top of it.
    CHECK_HEAP_MATCHES(image, *a);
    CHECK(a->stats().load_errors == 0);
    image.write(*a, 5 * kPage, 100, 42);
    VersionInfo next = must(a->checkpoint("a, after"));
    CHECK(next.parent == va);
    // A runs on its new version now: va is unpinned, and retention lets it go (with B's oldest).
    CHECK(must(s.store->remove_by_policy({.keep_last = 8})) == 2);
    CHECK(s.store->manifest(va).status().code() == Code::kNotFound);
    must(s.store->collect_garbage());
    must_ok(a->trim(0));
    must_ok(b->trim(0));
    CHECK_HEAP_MATCHES(image, *a);
    CHECK_HEAP_MATCHES(other, *b);
    CHECK(a->stats().load_errors == 0);
  }
}

TEST_CASE("an open heap's version cannot be removed; a checkpoint moves the pin on, and a closed heap lets it go") {
  for (DirtyTracking mode : tracking_modes()) {
    INFO("mode ", tracking_name(mode));
    StoreDir s;
    const size_t size = 1 << 20;
    Image image(size);
    const uint64_t v1 = marked_version(*s.store, mode, image, 21);
    auto heap = must(Heap::open(*s.store, v1, small_heap(mode, size, size)));
    Status refused = s.store->remove_version(v1);
    CHECK(refused.code() == Code::kFailedPrecondition);
    CHECK_MESSAGE(refused.message().find("pinned") != std::string::npos, refused.message());
    CHECK(s.store->versions().size() == 1);
    CHECK_HEAP_MATCHES(image, *heap);

    // A checkpoint moves the pin to its version: the old one may go, the new one may not.
    image.write(*heap, 3 * kPage, 10, 5);
    VersionInfo v2 = must(heap->checkpoint("two"));
    must_ok(s.store->remove_version(v1));
    CHECK(s.store->remove_version(v2.version).code() == Code::kFailedPrecondition);
    must(s.store->collect_garbage());
    must_ok(heap->trim(0));
    CHECK_HEAP_MATCHES(image, *heap);

    // A checkpoint that fails after its version committed leaves the heap on (and pinning) the
    // version it had; the one committed is nobody's and may go.
    image.write(*heap, 4 * kPage, 10, 6);
    fault::arm("heapstore.heap.checkpoint.committed", fault::Action::kThrow);
    CHECK_THROWS_AS((void)heap->checkpoint("lost"), fault::CrashPointHit);
    fault::disarm_all();
    CHECK(heap->version() == v2.version);
    const uint64_t orphan = s.store->latest()->version;
    CHECK(orphan > v2.version);
    CHECK(s.store->remove_version(v2.version).code() == Code::kFailedPrecondition);
    must_ok(s.store->remove_version(orphan));
    VersionInfo v3 = must(heap->checkpoint("three"));
    CHECK(v3.parent == v2.version);
    {
      // The page the failed checkpoint was writing is written by the next (it stayed flushing and
      // was never written again before).
      auto reopened = must(Heap::open(*s.store, v3.version, small_heap(mode, size, size)));
      CHECK_HEAP_MATCHES(image, *reopened);
    }

    // A new heap pins the version its first checkpoint commits.
    auto fresh = must(Heap::open(*s.store, 0, small_heap(mode, size, size)));
    Image fresh_image(size);
    fresh_image.write(*fresh, 0, 100, 7);
    VersionInfo f1 = must(fresh->checkpoint("fresh"));
    CHECK(s.store->remove_version(f1.version).code() == Code::kFailedPrecondition);
    CHECK(must(s.store->remove_by_policy({.keep_last = 0})) == 1);  // v2; v3 and f1 are pinned

    // Closed, a heap lets its version go.
    heap.reset();
    fresh.reset();
    must_ok(s.store->remove_version(v3.version));
    must_ok(s.store->remove_version(f1.version));
    CHECK(s.store->versions().empty());
  }
}

TEST_CASE("pins are counted: a version two heaps run on stays until both are closed") {
  for (DirtyTracking mode : tracking_modes()) {
    INFO("mode ", tracking_name(mode));
    StoreDir s;
    const size_t size = 1 << 20;
    Image image(size);
    const uint64_t v = marked_version(*s.store, mode, image, 31);
    auto first = must(Heap::open(*s.store, v, small_heap(mode, size, 128 << 10)));
    auto second = must(Heap::open(*s.store, v, small_heap(mode, size, 128 << 10)));
    CHECK(s.store->remove_version(v).code() == Code::kFailedPrecondition);
    first.reset();
    CHECK(s.store->remove_version(v).code() == Code::kFailedPrecondition);
    must(s.store->collect_garbage());
    REQUIRE(s.store->manifest(v).ok());
    CHECK_HEAP_MATCHES(image, *second);
    CHECK(second->stats().load_errors == 0);
    second.reset();
    must_ok(s.store->remove_version(v));
    CHECK(Heap::open(*s.store, v, small_heap(mode, size, size)).status().code() == Code::kNotFound);
  }
}

namespace {

// The pages of another store (the node an application left, or the space), counted, and failing
// on demand.
struct StoreSource : PageSource {
  explicit StoreSource(const PageStore& from) : from(from) {}
  Status fetch(std::span<const PageHash> hashes, const Deliver& deliver) override {
    ++calls;
    if (broken) return unavailable("the source is gone");
    std::vector<std::byte> page(kPage);
    for (const PageHash& h : hashes) {
      DJINN_RETURN_IF_ERROR(from.read_page(h, page));
      DJINN_RETURN_IF_ERROR(deliver(h, page));
      ++pages;
    }
    return Status();
  }
  const PageStore& from;
  std::atomic<uint64_t> calls{0}, pages{0};
  std::atomic<bool> broken{false};
};

}  // namespace

TEST_CASE("post-copy: a heap runs on a manifest from elsewhere, fetching pages as touched, then the rest") {
  for (DirtyTracking mode : tracking_modes()) {
    INFO("mode ", tracking_name(mode));
    const size_t size = 4 << 20;  // 1,024 pages, every one marked
    StoreDir a, b;
    Image image(size);
    const uint64_t version = marked_version(*a.store, mode, image, 7);
    // The receiver already holds the first 100 of those pages (an earlier stay of the app).
    {
      auto earlier = must(Heap::open(*b.store, 0, small_heap(mode, size, size)));
      for (uint64_t p = 0; p < 100; ++p) std::memcpy(earlier->base() + p * kPage, image.bytes.data() + p * kPage, kPage);
      must(earlier->checkpoint("earlier"));
    }
    // The manifest travels as bytes.
    Manifest manifest = must(manifest_from_bytes(manifest_to_bytes(must(a.store->manifest(version)))));
    StoreSource source(*a.store);
    HeapOptions o = small_heap(mode, size, 1 << 20);  // a quarter of it resident at most
    o.fault_around_pages = 4;
    o.fault_around_max_pages = 16;
    auto heap = must(Heap::open_incoming(*b.store, manifest, source, o));
    CHECK(heap->incoming());
    CHECK(heap->version() == 0);
    CHECK(heap->record() == "marked");
    // Touched pages arrive with their run: one fetch each, none for pages the receiver had.
    auto same = [&](uint64_t p) { return std::memcmp(heap->base() + p * kPage, image.bytes.data() + p * kPage, kPage) == 0; };
    CHECK(same(500));
    CHECK(source.calls == 1);
    CHECK(source.pages == 4);
    CHECK(same(10));
    CHECK(source.calls == 1);
    CHECK(same(501));  // in the run already
    CHECK(source.calls == 1);
    CHECK(heap->stats().pages_fetched == 4);
    // Written while incoming: the write is kept through the rest's arrival and the checkpoint.
    image.write(*heap, 700 * kPage + 8, 100, 99);
    // The rest arrives while the application reads on.
    std::atomic<uint64_t> last_done{0};
    std::thread reader([&] {
      for (uint64_t p = 0; p < 1024; p += 37) CHECK(same(p));
    });
    VersionInfo arrived = must(heap->fetch_rest(64, [&](uint64_t done, uint64_t total) {
      CHECK(total == 1024);
      last_done = done;
    }));
    reader.join();
    CHECK(last_done == 1024);
    CHECK_FALSE(heap->incoming());
    CHECK(heap->version() == arrived.version);
    CHECK(arrived.pages == 1024);
    // Each missing page arrived, a few twice: a fault and the rest's fetch may both ask for a
    // page neither has yet (the reader's runs are at most 16 pages).
    CHECK(source.pages >= 1024 - 100);
    CHECK(source.pages <= 1024 - 100 + 28 * 16);
    CHECK(heap->stats().pages_fetched == source.pages);
    CHECK(must(heap->fetch_rest()).version == arrived.version);  // done: the same again
    CHECK_HEAP_MATCHES(image, *heap);
    VersionInfo next = must(heap->checkpoint("after the move"));
    CHECK(next.parent == arrived.version);
    CHECK(next.pages_written == 1);
    heap.reset();
    // All of it is the receiver's own now, across a reopen of its store.
    b.reopen();
    auto again = must(Heap::open(*b.store, next.version, small_heap(mode, size, size)));
    CHECK_HEAP_MATCHES(image, *again);
    CHECK(again->record() == "after the move");
  }
}

TEST_CASE("post-copy: pages of the same content are asked for once, and a source that answers each name once is enough") {
  const DirtyTracking mode = tracking_modes().front();
  const size_t size = 256 << 10;  // 64 pages
  StoreDir a, b;
  Image image(size);
  {
    auto heap = must(Heap::open(*a.store, 0, small_heap(mode, size, size)));
    for (size_t p = 0; p < 64; ++p) image.write(*heap, p * kPage, 64, p % 8 + 1);  // eight contents, eight times each
    must(heap->checkpoint("repeated"));
  }
  Manifest manifest = must(a.store->manifest(a.store->latest()->version));
  StoreSource source(*a.store);
  auto heap = must(Heap::open_incoming(*b.store, manifest, source, small_heap(mode, size, size)));
  VersionInfo v = must(heap->fetch_rest());  // refused the second delivery of a repeated name before
  CHECK(source.pages == 8);
  CHECK_FALSE(heap->incoming());
  CHECK(v.version == heap->version());
  CHECK_HEAP_MATCHES(image, *heap);
}

TEST_CASE("post-copy: a checkpoint fetches the rest first; a source that fails is an error, a touch SIGBUS") {
  const DirtyTracking mode = tracking_modes().front();
  const size_t size = 1 << 20;
  StoreDir a, b;
  Image image(size);
  const uint64_t version = marked_version(*a.store, mode, image, 3);
  Manifest manifest = must(a.store->manifest(version));
  StoreSource source(*a.store);
  {
    auto heap = must(Heap::open_incoming(*b.store, manifest, source, small_heap(mode, size, size)));
    image.write(*heap, 3 * kPage, 10, 5);
    VersionInfo v = must(heap->checkpoint("moved"));
    CHECK_FALSE(heap->incoming());
    CHECK(v.pages_written == 1);
    CHECK_HEAP_MATCHES(image, *heap);
  }
  // A malformed manifest is refused before anything is mapped.
  Manifest bad = manifest;
  std::swap(bad.pages[0], bad.pages[1]);
  CHECK(Heap::open_incoming(*b.store, bad, source, small_heap(mode, size, size)).status().code() ==
        Code::kInvalidArgument);
  // A source that sends the wrong content: refused, nothing kept, the heap stays incoming.
  struct LyingSource : PageSource {
    Status fetch(std::span<const PageHash> hashes, const Deliver& deliver) override {
      std::vector<std::byte> page(kPage, std::byte{0x5a});
      for (const PageHash& h : hashes) DJINN_RETURN_IF_ERROR(deliver(h, page));
      return Status();
    }
  } liar;
  {
    StoreDir d;
    auto lied_to = must(Heap::open_incoming(*d.store, manifest, liar, small_heap(mode, size, size)));
    Result<VersionInfo> refused = lied_to->fetch_rest();
    CHECK(refused.status().code() == Code::kDataLoss);
    CHECK(lied_to->incoming());
    CHECK(lied_to->stats().pages_fetched == 0);
    CHECK(d.store->stats().pages_pending == 0);
  }
  // A source that sends what was not asked for besides what was (or a page twice): refused before
  // it is kept, so it cannot fill the store with pages nothing holds.
  struct PaddingSource : PageSource {
    explicit PaddingSource(const PageStore& from, bool twice) : from(from), twice(twice) {}
    Status fetch(std::span<const PageHash> hashes, const Deliver& deliver) override {
      std::vector<std::byte> page(kPage);
      if (twice) {
        DJINN_RETURN_IF_ERROR(from.read_page(hashes[0], page));
        DJINN_RETURN_IF_ERROR(deliver(hashes[0], page));
        return deliver(hashes[0], page);
      }
      std::vector<std::byte> extra(kPage, std::byte{0x33});
      return deliver(PageHash::of(extra), extra);
    }
    const PageStore& from;
    bool twice;
  };
  for (bool twice : {false, true}) {
    CAPTURE(twice);
    StoreDir d;
    PaddingSource padder(*a.store, twice);
    auto padded = must(Heap::open_incoming(*d.store, manifest, padder, small_heap(mode, size, size)));
    Result<VersionInfo> refused = padded->fetch_rest();
    CHECK(refused.status().code() == Code::kDataLoss);
    CHECK(refused.status().message().find("not asked for") != std::string::npos);
    CHECK(padded->incoming());
    CHECK(d.store->stats().pages_pending == (twice ? 1u : 0u));  // what arrived as asked is kept
  }
  // A source that cannot give the rest: fetch_rest says so and the heap stays incoming.
  StoreDir c;
  source.broken = true;
  auto heap = must(Heap::open_incoming(*c.store, manifest, source, small_heap(mode, size, size)));
  Result<VersionInfo> failed = heap->fetch_rest();
  CHECK(failed.status().code() == Code::kUnavailable);
  CHECK(failed.status().message().find("the source is gone") != std::string::npos);
  CHECK(heap->incoming());
  heap.reset();
  // Touching a page that cannot arrive is a page that cannot be loaded: SIGBUS, as for a corrupt
  // page. In a child, with a store and a heap of its own (nothing of the parent's is touched
  // there but the manifest and the source that fails).
  const std::filesystem::path child_store = c.dir.path() / "child-store";
  pid_t child = ::fork();
  REQUIRE(child >= 0);
  constexpr int kGotSigbus = 77;
  if (child == 0) {
    // Its own handler, so that a sanitizer's does not report it as a crash.
    struct sigaction on_bus {};
    on_bus.sa_handler = [](int) { ::_exit(kGotSigbus); };
    ::sigaction(SIGBUS, &on_bus, nullptr);
    auto store = PageStore::open(child_store, {.compression_level = 0, .durable = false});
    if (!store.ok()) ::_exit(3);
    auto own = Heap::open_incoming(**store, manifest, source, small_heap(mode, size, size));
    if (!own.ok()) ::_exit(2);
    volatile std::byte b0 = (*own)->base()[5 * kPage];
    (void)b0;
    ::_exit(0);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status));
  if (WIFEXITED(status)) CHECK(WEXITSTATUS(status) == kGotSigbus);
}

TEST_CASE("post-copy: the incoming heap's pages are held until the manifest is a version, which it then pins") {
  for (DirtyTracking mode : tracking_modes()) {
    INFO("mode ", tracking_name(mode));
    const size_t size = 1 << 20;  // 256 pages, every one marked
    StoreDir a, b;
    Image image(size);
    const uint64_t version = marked_version(*a.store, mode, image, 13);
    // The receiver holds the first 64 of those pages, in a version of its own.
    uint64_t earlier = 0;
    {
      auto heap = must(Heap::open(*b.store, 0, small_heap(mode, size, size)));
      std::memcpy(heap->base(), image.bytes.data(), 64 * kPage);
      earlier = must(heap->checkpoint("earlier")).version;
    }
    StoreSource source(*a.store);
    auto heap = must(Heap::open_incoming(*b.store, must(a.store->manifest(version)), source,
                                         small_heap(mode, size, 128 << 10)));
    // While it is incoming, the receiver's retention takes its own old version: the pages the
    // heap counts on stay, held by its import session.
    must_ok(b.store->remove_version(earlier));
    must(b.store->collect_garbage());
    VersionInfo arrived = must(heap->fetch_rest());
    CHECK(source.pages == 256 - 64);
    // The version it became is pinned: removal refused, retention and collection pass it by.
    CHECK(b.store->remove_version(arrived.version).code() == Code::kFailedPrecondition);
    {
      auto other = must(Heap::open(*b.store, 0, small_heap(mode, size, size)));
      Image scratch(size);
      for (int round = 0; round < 3; ++round) {
        scratch.write(*other, round * kPage, 64, 500 + round);
        must(other->checkpoint("other"));
      }
    }
    CHECK(must(b.store->remove_by_policy({.keep_last = 1})) == 2);
    REQUIRE(b.store->manifest(arrived.version).ok());
    must(b.store->collect_garbage());
    must_ok(heap->trim(0));
    CHECK_HEAP_MATCHES(image, *heap);
    CHECK(heap->stats().load_errors == 0);
    // Its checkpoints move the pin on as for any heap.
    image.write(*heap, 9 * kPage, 8, 77);
    VersionInfo next = must(heap->checkpoint("after the move"));
    must_ok(b.store->remove_version(arrived.version));
    CHECK(b.store->remove_version(next.version).code() == Code::kFailedPrecondition);
    heap.reset();
    must_ok(b.store->remove_version(next.version));
  }
}
