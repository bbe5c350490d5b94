// The page store under crashes: crash points armed in-process at every step of a commit (and of
// removal and garbage collection), a torn pack tail, and a child process killed with SIGKILL at
// random moments of a stream of commits. After each, the store reopens with the previous version
// (or the new one, once its index commit is past) whole, every version bit-exact, and it goes on.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "djinn/core/fault.h"
#include "page_store_test_util.h"
#include "support/test_support.h"

using namespace djinn;
using namespace djinn::heapstore;
using namespace djinn::heapstore::testing;

namespace {

constexpr uint32_t kPage = 4096;
constexpr uint64_t kCapacity = 512;

std::unique_ptr<PageStore> open_store(const std::filesystem::path& dir, PageStoreOptions options = {}) {
  return must(PageStore::open(dir, options));
}

// The two versions every in-process crash starts from: a full one and an incremental one.
struct Baseline {
  Model v1, v2;
};

Baseline write_baseline(PageStore& store) {
  Baseline b;
  VersionWriter w1 = must(store.begin_version(0, kPage, kCapacity));
  for (uint64_t i = 0; i < 300; ++i) {
    b.v1[i] = page_of(i, kPage, i % 3 == 0);
    must_ok(w1.put(i, b.v1[i]));
  }
  REQUIRE(must(w1.commit("one")).version == 1);
  b.v2 = b.v1;
  VersionWriter w2 = must(store.begin_version(1, kPage, kCapacity));
  for (uint64_t i = 0; i < 40; ++i) {
    b.v2[i * 7] = page_of(1000 + i, kPage);
    must_ok(w2.put(i * 7, b.v2[i * 7]));
  }
  must_ok(w2.zero(299));
  b.v2.erase(299);
  REQUIRE(must(w2.commit("two")).version == 2);
  return b;
}

// Version 3's changes on top of version 2, staged into `w`: new pages, an evicted page taken by
// hash, zeroes.
Model stage_third(PageStore& store, VersionWriter& w, const Model& v2) {
  Model v3 = v2;
  for (uint64_t i = 0; i < 60; ++i) {
    v3[i * 5 + 1] = page_of(2000 + i, kPage);
    must_ok(w.put(i * 5 + 1, v3[i * 5 + 1]));
  }
  Bytes evicted = page_of(3000, kPage);
  PageHash h = must(store.put_page(evicted));
  must_ok(w.put_hash(450, h));
  v3[450] = evicted;
  must_ok(w.zero(0));
  v3.erase(0);
  return v3;
}

// The store works after the crash: a version on top of the latest commits and reads back, garbage
// collection leaves every version whole, and so does one more reopen.
void check_goes_on(const std::filesystem::path& dir, std::map<uint64_t, Model> models) {
  auto store = open_store(dir);
  uint64_t latest = store->latest()->version;
  {
    Model next = models[latest];
    VersionWriter w = must(store->begin_version(latest, kPage, kCapacity));
    for (uint64_t i = 0; i < 10; ++i) {
      next[i + 100] = page_of(9000 + i, kPage);
      must_ok(w.put(i + 100, next[i + 100]));
    }
    VersionInfo v = must(w.commit("after"));
    CHECK(v.version > latest);
    models[v.version] = next;
  }
  must(store->collect_garbage());
  for (const auto& [version, model] : models) check_version(*store, version, model);
  store.reset();
  store = open_store(dir);
  for (const auto& [version, model] : models) check_version(*store, version, model);
  CHECK(must(store->collect_garbage()).pages_removed == 0);
}

}  // namespace

TEST_CASE("a crash at every step of a commit leaves the previous version whole") {
  struct Point {
    const char* name;
    bool committed;  // whether version 3 exists after the crash
  };
  for (Point point : {Point{"heapstore.commit.begin", false}, Point{"heapstore.commit.after_pack", false},
                      Point{"heapstore.commit.before_index_commit", false},
                      Point{"heapstore.commit.after_index_commit", true}}) {
    for (int compression : {0, 3}) {
      std::string point_name = point.name;
      CAPTURE(point_name);
      CAPTURE(compression);
      test::TempDir dir;
      Baseline base;
      Model v3;
      {
        auto store = open_store(dir.path(), {.compression_level = compression});
        base = write_baseline(*store);
        VersionWriter w = must(store->begin_version(2, kPage, kCapacity));
        v3 = stage_third(*store, w, base.v2);
        fault::arm(point.name, fault::Action::kThrow);
        CHECK_THROWS_AS((void)w.commit("three"), fault::CrashPointHit);
        fault::disarm_all();
        // Abandoned here: the writer and the store go as a crashed process's would.
      }
      std::map<uint64_t, Model> models{{1, base.v1}, {2, base.v2}};
      {
        auto store = open_store(dir.path());
        REQUIRE(store->latest().has_value());
        if (point.committed) {
          CHECK(store->latest()->version == 3);
          models[3] = v3;
          CHECK(must(store->manifest(3)).record == "three");
        } else {
          CHECK(store->latest()->version == 2);
          CHECK(store->versions().size() == 2);
          CHECK(!store->contains(PageHash::of(page_of(2000, kPage))));
        }
        for (const auto& [version, model] : models) check_version(*store, version, model);
      }
      check_goes_on(dir.path(), models);
    }
  }
}

TEST_CASE("a crash while removing versions or collecting garbage loses nothing that is kept") {
  for (const char* point : {"heapstore.remove.before_commit", "heapstore.gc.before_commit"}) {
    std::string point_name = point;
    CAPTURE(point_name);
    test::TempDir dir;
    Baseline base;
    {
      auto store = open_store(dir.path());
      base = write_baseline(*store);
      if (std::string_view(point) == "heapstore.gc.before_commit") must_ok(store->remove_version(1));
      fault::arm(point, fault::Action::kThrow);
      if (std::string_view(point) == "heapstore.remove.before_commit") {
        CHECK_THROWS_AS((void)store->remove_version(1), fault::CrashPointHit);
      } else {
        CHECK_THROWS_AS((void)store->collect_garbage(), fault::CrashPointHit);
      }
      fault::disarm_all();
    }
    std::map<uint64_t, Model> models{{2, base.v2}};
    auto store = open_store(dir.path());
    if (std::string_view(point) == "heapstore.remove.before_commit") {
      REQUIRE(store->versions().size() == 2);  // the removal never committed
      models[1] = base.v1;
    }
    for (const auto& [version, model] : models) check_version(*store, version, model);
    store.reset();
    check_goes_on(dir.path(), models);
  }
}

TEST_CASE("a torn pack tail and an uncommitted pack file are cut away at open") {
  test::TempDir dir;
  Baseline base;
  {
    auto store = open_store(dir.path());
    base = write_baseline(*store);
  }
  std::filesystem::path pack = dir.path() / "packs" / "pack-00000001.dat";
  REQUIRE(std::filesystem::exists(pack));
  uint64_t committed = std::filesystem::file_size(pack);
  {
    // What a crash between the pack write and the index commit leaves: bytes past the end.
    std::ofstream tail(pack, std::ios::app | std::ios::binary);
    Bytes junk = page_of(5, kPage);
    tail.write(reinterpret_cast<const char*>(junk.data()), 1000);
  }
  {
    std::ofstream stray(dir.path() / "packs" / "pack-00000002.dat", std::ios::binary);
    stray << "pages no index ever referred to";
  }
  {
    auto store = open_store(dir.path());
    CHECK(std::filesystem::file_size(pack) == committed);
    CHECK(!std::filesystem::exists(dir.path() / "packs" / "pack-00000002.dat"));
    check_version(*store, 1, base.v1);
    check_version(*store, 2, base.v2);
  }
  check_goes_on(dir.path(), {{1, base.v1}, {2, base.v2}});
}

namespace {

// The child's stream of commits, a function of (seed, version) alone so the parent can check
// every version it finds. Version n is written on top of version n - 1.
struct Change {
  uint64_t index;
  std::optional<uint64_t> key;  // content page_of(key); nullopt: zero
};

std::vector<Change> changes_of(uint64_t seed, uint64_t version) {
  std::mt19937_64 gen(seed * 1000003 + version);
  std::vector<Change> out;
  // Mostly small versions, sometimes a large one, so kills land in every step of a commit.
  size_t count = gen() % 8 == 0 ? 200 + gen() % 300 : 1 + gen() % 64;
  for (size_t i = 0; i < count; ++i) {
    uint64_t index = gen() % kCapacity;
    if (gen() % 10 == 0) {
      out.push_back({index, std::nullopt});
    } else {
      // Some contents repeat across versions (dedup), most are new.
      uint64_t key = gen() % 4 == 0 ? gen() % 50 : seed * 7919 + version * 100003 + index;
      out.push_back({index, key});
    }
  }
  return out;
}

Bytes content_of(uint64_t key) { return page_of(key, kPage, key % 5 == 0); }

[[noreturn]] void child_main(const std::filesystem::path& dir, uint64_t seed, int report_fd, const char* crash_point,
                             int crash_hit) {
  if (crash_point) fault::arm(crash_point, fault::Action::kKill, crash_hit);
  auto opened = PageStore::open(dir, {.compression_level = static_cast<int>(seed % 2)});
  if (!opened.ok()) ::_exit(2);
  PageStore& store = **opened;
  uint64_t n = store.latest() ? store.latest()->version : 0;
  for (;;) {
    auto w = store.begin_version(n, kPage, kCapacity);
    if (!w.ok()) ::_exit(3);
    for (const Change& c : changes_of(seed, n + 1)) {
      Status s = c.key ? w->put(c.index, content_of(*c.key)) : w->zero(c.index);
      if (!s.ok()) ::_exit(4);
    }
    auto v = w->commit("v" + std::to_string(n + 1));
    if (!v.ok() || v->version != n + 1) ::_exit(5);
    n = v->version;
    if (::write(report_fd, &n, sizeof n) != sizeof n) ::_exit(6);
    if (n % 5 == 0) {
      if (!store.remove_by_policy({.keep_last = 4}).ok()) ::_exit(7);
      if (!store.collect_garbage().ok()) ::_exit(8);
    }
  }
}

}  // namespace

TEST_CASE("kill -9 at random moments of a stream of commits: the last reported version or a later one is there, all bit-exact") {
  uint64_t seed = test::rng()();
  MESSAGE("kill -9 stream seed: " << seed << " (from the test seed " << test::seed() << ")");
  std::mt19937_64 rng(seed);
  test::TempDir dir;
  std::map<uint64_t, Model> expected{{0, Model{}}};
  auto model_of = [&](uint64_t version) -> const Model& {
    for (uint64_t v = expected.rbegin()->first + 1; v <= version; ++v) {
      Model m = expected[v - 1];
      for (const Change& c : changes_of(seed, v)) {
        if (c.key) {
          m[c.index] = content_of(*c.key);
        } else {
          m.erase(c.index);
        }
      }
      expected[v] = std::move(m);
    }
    return expected.at(version);
  };
  const char* points[] = {"heapstore.commit.begin", "heapstore.commit.after_pack",
                          "heapstore.commit.before_index_commit", "heapstore.commit.after_index_commit",
                          "heapstore.remove.before_commit", "heapstore.gc.before_commit"};

  uint64_t last_reported = 0;
  constexpr int kRounds = 10;
  for (int round = 0; round < kRounds; ++round) {
    CAPTURE(round);
    // Half the rounds also arm a crash point in the child, BUGGIFY style, so the kill lands
    // exactly between two steps of a commit, removal or collection.
    const char* point = round % 2 == 1 ? points[rng() % std::size(points)] : nullptr;
    int hit = 1 + static_cast<int>(rng() % 4);
    int pipe_fds[2];
    REQUIRE(::pipe(pipe_fds) == 0);
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      ::close(pipe_fds[0]);
      child_main(dir.path(), seed, pipe_fds[1], point, hit);
    }
    ::close(pipe_fds[1]);
    uint64_t wanted = 1 + rng() % 8;
    uint64_t reported = 0;
    uint64_t n = 0;
    while (reported < wanted && ::read(pipe_fds[0], &n, sizeof n) == sizeof n) {
      ++reported;
      CHECK(n > last_reported);
      last_reported = n;
    }
    // Somewhere in the next commit(s).
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 20000));
    ::kill(child, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    CHECK_MESSAGE(WIFSIGNALED(status), "the child exited with status ", WEXITSTATUS(status));
    while (::read(pipe_fds[0], &n, sizeof n) == sizeof n) last_reported = n;
    ::close(pipe_fds[0]);

    auto store = open_store(dir.path());
    REQUIRE(store->latest().has_value());
    CHECK(store->latest()->version >= last_reported);
    for (const VersionInfo& v : store->versions()) {
      CAPTURE(v.version);
      CHECK(must(store->manifest(v.version)).record == "v" + std::to_string(v.version));
      check_version(*store, v.version, model_of(v.version));
    }
    // A later version may have committed after the last report; the next child goes on from it.
    last_reported = store->latest()->version;
  }
  CHECK(last_reported >= static_cast<uint64_t>(kRounds / 2));
}
