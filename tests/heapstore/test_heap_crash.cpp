// Crashes during checkpoints never leave a torn version. A child process (forked) opens the latest
// version and runs numbered steps, each a deterministic batch of writes followed by a checkpoint
// whose record names the step; it is killed with SIGKILL at a random moment, or at a crash point
// of the heap's or the page store's checkpoint path armed at a random hit. Afterwards the latest
// version, and a few older kept ones, restore bit-exact to what replaying their steps gives. The
// next child continues from there, so versions pile up across crashes. Seeded; the seed and each
// round's choices are printed.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "djinn/core/fault.h"
#include "heap_test_util.h"

using namespace djinn;
using namespace djinn::heapstore;
using namespace djinn::heapstore::heaptest;

namespace {

constexpr size_t kHeapBytes = 1 << 20;  // 256 pages of 4 KiB
constexpr size_t kBudget = 48 * 4096;    // so steps evict, and dirty pages reach versions by hash

HeapOptions crash_heap(DirtyTracking mode) { return small_heap(mode, kHeapBytes, kBudget); }

// Step k's writes, a function of (seed, k) alone, applied to `bytes` (the heap, or an image).
void apply_step(std::byte* bytes, uint64_t seed, uint64_t k) {
  std::mt19937_64 gen(seed * 0x9E3779B97F4A7C15ull + k);
  int writes = 1 + static_cast<int>(gen() % 24);
  for (int w = 0; w < writes; ++w) {
    size_t len = 1 + gen() % 6000;
    size_t off = gen() % (kHeapBytes - len);
    if (gen() % 8 == 0) {
      std::memset(bytes + off, 0, len);
      continue;
    }
    uint64_t value = gen();
    for (size_t i = 0; i < len; i += 8) {
      std::memcpy(bytes + off + i, &value, std::min<size_t>(8, len - i));
      value += k;
    }
  }
}

std::vector<std::byte> replay(uint64_t seed, uint64_t steps) {
  std::vector<std::byte> image(kHeapBytes);
  for (uint64_t k = 1; k <= steps; ++k) apply_step(image.data(), seed, k);
  return image;
}

uint64_t step_of(const std::string& record) {
  REQUIRE_MESSAGE(record.rfind("step=", 0) == 0, "unexpected record ", record);
  return std::stoull(record.substr(5));
}

// The child: never returns.
[[noreturn]] void child(const std::filesystem::path& dir, uint64_t seed, DirtyTracking mode, const char* point,
                        int hit) {
  try {
    if (point) fault::arm(point, fault::Action::kKill, hit);
    auto store = PageStore::open(dir);  // durable: fsync at every commit
    if (!store.ok()) _exit(3);
    std::optional<VersionInfo> latest = (*store)->latest();
    uint64_t k = 0;
    if (latest) {
      auto m = (*store)->manifest(latest->version);
      if (!m.ok()) _exit(4);
      k = std::stoull(m->record.substr(5));
    }
    auto heap = Heap::open(**store, latest ? latest->version : 0, crash_heap(mode));
    if (!heap.ok()) _exit(5);
    for (;;) {
      ++k;
      apply_step((*heap)->base(), seed, k);
      if (!(*heap)->checkpoint("step=" + std::to_string(k)).ok()) _exit(6);
    }
  } catch (...) {
    _exit(7);
  }
}

const char* const kPoints[] = {
    "heapstore.heap.checkpoint.collected",  "heapstore.heap.checkpoint.staged",
    "heapstore.heap.checkpoint.committed",  "heapstore.commit.begin",
    "heapstore.commit.after_pack",          "heapstore.commit.before_index_commit",
    "heapstore.commit.after_index_commit",
};

}  // namespace

TEST_CASE("kill -9 at random moments during checkpoints never leaves a torn version") {
  test::TempDir dir;
  const auto store_dir = dir.path() / "store";
  auto& rng = test::rng();
  const uint64_t seed = rng();
  const std::vector<DirtyTracking> modes = tracking_modes();
  uint64_t last_step = 0;
  const int rounds = 24;
  for (int round = 0; round < rounds; ++round) {
    DirtyTracking mode = modes[static_cast<size_t>(round) % modes.size()];
    const char* point = nullptr;
    int hit = 0;
    int delay_ms = 0;
    if (round % 2 == 0) {
      point = kPoints[rng() % std::size(kPoints)];
      hit = 1 + static_cast<int>(rng() % 6);
    } else {
      delay_ms = 5 + static_cast<int>(rng() % 120);
    }
    INFO("round ", round, ": mode ", tracking_name(mode), ", ",
         point ? std::string("crash point ") + point + " hit " + std::to_string(hit)
               : "kill after " + std::to_string(delay_ms) + " ms");
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) child(store_dir, seed, mode, point, hit);
    int status = 0;
    if (point) {
      // It kills itself at the point; give up (and kill it) if it never gets there.
      auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
      while (waitpid(pid, &status, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() > until) {
          ::kill(pid, SIGKILL);
          waitpid(pid, &status, 0);
          FAIL("the child never reached ", point);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
      ::kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
    }
    REQUIRE_MESSAGE((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL), "the child ended otherwise: status ",
                    status);

    // The last committed version restores bit-exact, and so do some older ones.
    auto store = must(PageStore::open(store_dir));
    std::vector<VersionInfo> versions = store->versions();
    if (versions.empty()) continue;  // killed before its first commit
    std::vector<uint64_t> check = {versions.back().version};
    for (int i = 0; i < 2 && versions.size() > 1; ++i) check.push_back(versions[rng() % (versions.size() - 1)].version);
    for (uint64_t v : check) {
      auto heap = must(Heap::open(*store, v, crash_heap(mode)));
      uint64_t k = step_of(heap->record());
      if (v == versions.back().version) {
        CHECK(k >= last_step);  // never behind what an earlier round saw committed
        last_step = k;
      }
      Image expected(kHeapBytes);
      expected.bytes = replay(seed, k);
      INFO("version ", v, " = step ", k);
      CHECK_HEAP_MATCHES(expected, *heap);
    }
  }
  MESSAGE("versions survived ", rounds, " crashes; last step committed ", last_step);
  CHECK(last_step > 0);
}
