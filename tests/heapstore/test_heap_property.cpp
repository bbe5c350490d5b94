// Property test of the heap: random operations on a map and a vector living in a heap and on an
// ordinary in-memory model, with checkpoints, restores of random kept versions, reopenings (which
// drop what was not checkpointed, like a crash), evictions under a small budget and trims, at
// random; after every step that changes where the heap comes from, and every few operations, the
// two agree. Seeded (DJINN_TEST_SEED replays a run).
#include <doctest/doctest.h>

#include <map>
#include <string>
#include <vector>

#include "djinn/heapstore/heap_objects.h"
#include "heap_test_util.h"

using namespace djinn;
using namespace djinn::heapstore;
using namespace djinn::heapstore::heaptest;

namespace {

struct Model {
  std::map<int64_t, std::string> map;
  std::vector<int64_t> vec;
  bool operator==(const Model&) const = default;
};

using Map = HeapMap<int64_t, HeapString>;
using Vec = HeapVector<int64_t>;

// The heap side: a store, a heap opened from some version, and its two roots.
struct Side {
  Side(StoreDir& s, HeapOptions o) : dir(s), options(o) {}
  void open(uint64_t version) {
    close();
    heap = must(Heap::open(*dir.store, version, options));
    objects = must(Objects::attach(*heap));
    map = &objects->root<Map>("map", objects->allocator<char>());
    vec = &objects->root<Vec>("vec", objects->allocator<char>());
  }
  // Closes the heap, adding its counters to the totals.
  void close() {
    objects.reset();
    if (heap) {
      HeapStats st = heap->stats();
      faults += st.faults;
      evictions += st.evictions;
      dirty_evictions += st.dirty_evictions;
    }
    heap.reset();
  }
  Model read() const {
    Model m;
    for (const auto& [k, v] : *map) m.map.emplace(k, std::string(v.c_str(), v.size()));
    m.vec.assign(vec->begin(), vec->end());
    return m;
  }
  StoreDir& dir;
  HeapOptions options;
  std::unique_ptr<Heap> heap;
  std::unique_ptr<Objects> objects;
  Map* map = nullptr;
  Vec* vec = nullptr;
  uint64_t faults = 0, evictions = 0, dirty_evictions = 0;
};

std::string value_of(std::mt19937_64& gen) {
  // Mostly short values; some span several pages.
  size_t len = gen() % 10 == 0 ? 4000 + gen() % 12000 : gen() % 200;
  std::string s(len, ' ');
  char c = static_cast<char>('a' + gen() % 26);
  for (size_t i = 0; i < len; ++i) s[i] = static_cast<char>(c + (i % 7));
  return s;
}

void run(DirtyTracking mode, uint32_t page_size, uint64_t seed, int operations) {
  INFO("mode ", tracking_name(mode), ", page ", page_size, ", seed ", seed);
  std::mt19937_64 gen(seed);
  StoreDir dir;
  HeapOptions o = small_heap(mode, 32 << 20, 24 * page_size);
  o.page_size = page_size;
  Side side(dir, o);
  side.open(0);
  Model model;
  std::map<uint64_t, Model> kept;  // version -> what it holds
  int checkpoints = 0, restores = 0, reopens = 0, trims = 0;
  for (int op = 0; op < operations; ++op) {
    uint64_t r = gen() % 1000;
    int64_t key = static_cast<int64_t>(gen() % 300);
    if (r < 350) {
      std::string v = value_of(gen);
      side.map->insert_or_assign(key, HeapString(v.c_str(), v.size(), side.objects->allocator<char>()));
      model.map[key] = v;
    } else if (r < 550) {
      side.map->erase(key);
      model.map.erase(key);
    } else if (r < 750) {
      side.vec->push_back(key);
      model.vec.push_back(key);
    } else if (r < 820) {
      if (!model.vec.empty()) {
        side.vec->pop_back();
        model.vec.pop_back();
      }
    } else if (r < 900) {
      if (!model.vec.empty()) {
        size_t i = gen() % model.vec.size();
        (*side.vec)[i] = key;
        model.vec[i] = key;
      }
    } else if (r < 950) {
      VersionInfo v = must(side.heap->checkpoint("op " + std::to_string(op)));
      kept[v.version] = model;
      ++checkpoints;
    } else if (r < 965) {
      must_ok(side.heap->trim(gen() % 8));
      ++trims;
    } else if (r < 985) {
      if (!kept.empty()) {
        auto it = kept.begin();
        std::advance(it, static_cast<long>(gen() % kept.size()));
        side.open(it->first);
        model = it->second;
        ++restores;
        REQUIRE(side.read() == model);
      }
    } else {
      // Close and reopen (the store too, now and then): what was not checkpointed is gone.
      uint64_t v = side.heap->version();
      side.close();
      if (gen() % 2 == 0) dir.reopen();
      side.open(v);
      model = v ? kept.at(v) : Model{};
      ++reopens;
      REQUIRE(side.read() == model);
    }
    if (op % 97 == 0) REQUIRE_MESSAGE(side.read() == model, "after operation ", op);
  }
  REQUIRE(side.read() == model);
  side.close();
  MESSAGE(tracking_name(mode), " page ", page_size, ": ", checkpoints, " checkpoints, ", restores, " restores, ",
          reopens, " reopens, ", trims, " trims; ", side.faults, " faults, ", side.evictions, " evictions (",
          side.dirty_evictions, " dirty)");
  CHECK(checkpoints > 0);
  CHECK(side.evictions > 0);
}

}  // namespace

TEST_CASE("heap containers agree with an in-memory model through checkpoints, restores, evictions and reopens") {
  uint64_t seed = test::rng()();
  for (DirtyTracking mode : tracking_modes()) {
    run(mode, 4096, seed, 4000);
    run(mode, 16384, seed + 1, 2000);
  }
}
