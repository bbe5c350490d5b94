// Objects in a heap (heap_objects.h): named roots, Boost containers and strings in the heap across
// checkpoints, reopenings and evictions; position independence, checked in another process that
// maps the heap at another address and changes it; the compile-time rules on what may live in a
// heap; and the scratch arena.
#include <doctest/doctest.h>
#include <limits.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <memory_resource>
#include <string>

#include "djinn/heapstore/heap_objects.h"
#include "djinn/heapstore/scratch_arena.h"
#include "heap_test_util.h"

using namespace djinn;
using namespace djinn::heapstore;
using namespace djinn::heapstore::heaptest;

namespace {

struct Node {
  int64_t value = 0;
  HeapPtr<Node> next;
};

// An application's state, as a plugin would declare it.
struct AppState {
  explicit AppState(const HeapAllocator<char>& a) : orders(a), log(a), title(a) {}
  HeapMap<int64_t, HeapString> orders;
  HeapVector<int64_t> log;
  HeapString title;
  HeapPtr<Node> list;  // a linked list of anonymous objects
  uint64_t counter = 0;
};

// What the state must hold after `steps` steps of mutate(): the same function drives the heap
// and this model.
struct Model {
  std::map<int64_t, std::string> orders;
  std::vector<int64_t> log;
  std::string title;
  std::vector<int64_t> list;  // head first
  uint64_t counter = 0;
};

std::string text_of(uint64_t x) { return "order-" + std::to_string(x) + std::string(x % 97, 'x'); }

// Applies `steps` random steps to the state in a heap (when `objects` is given) and to the model.
void mutate(Objects* objects, AppState* s, Model& m, uint64_t seed, int steps) {
  std::mt19937_64 gen(seed);
  for (int i = 0; i < steps; ++i) {
    uint64_t r = gen();
    int64_t key = static_cast<int64_t>(r % 500);
    switch (r % 5) {
      case 0:
      case 1: {
        std::string t = text_of(r);
        if (s) s->orders.insert_or_assign(key, HeapString(t.c_str(), objects->allocator<char>()));
        m.orders[key] = t;
        break;
      }
      case 2:
        if (s) s->orders.erase(key);
        m.orders.erase(key);
        break;
      case 3:
        if (s) s->log.push_back(key);
        m.log.push_back(key);
        break;
      case 4: {
        if (s) {
          HeapPtr<Node> n = objects->make<Node>();
          n->value = key;
          n->next = s->list;
          s->list = n;
        }
        m.list.insert(m.list.begin(), key);
        break;
      }
    }
    if (s) ++s->counter;
    ++m.counter;
  }
  if (s) s->title = HeapString(("title after " + std::to_string(s->counter)).c_str(), objects->allocator<char>());
  m.title = "title after " + std::to_string(m.counter);
}

void check_state(const AppState& s, const Model& m) {
  REQUIRE(s.orders.size() == m.orders.size());
  auto it = m.orders.begin();
  for (const auto& [k, v] : s.orders) {
    REQUIRE(k == it->first);
    REQUIRE(std::string(v.c_str(), v.size()) == it->second);
    ++it;
  }
  REQUIRE(std::vector<int64_t>(s.log.begin(), s.log.end()) == m.log);
  CHECK(std::string(s.title.c_str()) == m.title);
  std::vector<int64_t> list;
  for (HeapPtr<Node> n = s.list; n; n = n->next) list.push_back(n->value);
  CHECK(list == m.list);
  CHECK(s.counter == m.counter);
}

std::string self_exe() {
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  REQUIRE(n > 0);
  return std::string(buf, static_cast<size_t>(n));
}

const char* env(const char* name) { return std::getenv(name); }

}  // namespace

TEST_CASE("objects in a heap survive checkpoints, evictions and reopening") {
  for (DirtyTracking mode : tracking_modes()) {
    INFO("mode ", tracking_name(mode));
    StoreDir s;
    Model model;
    uint64_t version;
    HeapOptions o = small_heap(mode, 16 << 20, 64 << 10);  // 16 resident pages of 4096
    {
      auto heap = must(Heap::open(*s.store, 0, o));
      auto objects = must(Objects::attach(*heap));
      AppState& state = objects->root<AppState>("state", objects->allocator<char>());
      mutate(objects.get(), &state, model, 1, 3000);
      check_state(state, model);
      version = must(heap->checkpoint("one")).version;
      mutate(objects.get(), &state, model, 2, 3000);
      version = must(heap->checkpoint("two")).version;
      CHECK(heap->stats().evictions > 0);
      auto table = must(heap->page_table(0, 1));
      REQUIRE(table.size() == 1);
      CHECK(table[0].type == PageType::kSystem);
      CHECK(table[0].pinned);
    }
    s.reopen();
    auto heap = must(Heap::open(*s.store, version, o));
    auto objects = must(Objects::attach(*heap));
    AppState* state = objects->find<AppState>("state");
    REQUIRE(state != nullptr);
    check_state(*state, model);
    CHECK(objects->find<AppState>("absent") == nullptr);
    // Roots come and go.
    objects->root<uint64_t>("answer", uint64_t{42});
    CHECK(*objects->find<uint64_t>("answer") == 42);
    CHECK(objects->destroy<uint64_t>("answer"));
    CHECK(objects->find<uint64_t>("answer") == nullptr);
  }
}

TEST_CASE("a heap that holds something else is not taken for an object segment") {
  StoreDir s;
  auto heap = must(Heap::open(*s.store, 0, small_heap(Heap::auto_tracking())));
  std::memcpy(heap->base(), "not a segment", 13);
  CHECK(Objects::attach(*heap).status().code() == Code::kFailedPrecondition);
}

// The child half of the next test: run as this same program, in a fresh process, with the store
// and the expected state given in the environment. Does nothing in an ordinary run.
TEST_CASE("position independence child") {
  const char* dir = env("DJINN_HEAP_CHILD_STORE");
  if (!dir) return;
  uint64_t version = std::strtoull(env("DJINN_HEAP_CHILD_VERSION"), nullptr, 10);
  auto base = static_cast<uintptr_t>(std::strtoull(env("DJINN_HEAP_CHILD_BASE"), nullptr, 16));
  auto mode = static_cast<DirtyTracking>(std::atoi(env("DJINN_HEAP_CHILD_MODE")));
  auto store = must(PageStore::open(dir, {.compression_level = 0, .durable = false}));
  HeapOptions o = small_heap(mode, 16 << 20, 256 << 10);
  o.base_address = reinterpret_cast<void*>(base);
  auto heap = must(Heap::open(*store, version, o));
  REQUIRE(reinterpret_cast<uintptr_t>(heap->base()) == base);
  auto objects = must(Objects::attach(*heap));
  AppState* state = objects->find<AppState>("state");
  REQUIRE(state != nullptr);
  Model model;
  mutate(nullptr, nullptr, model, 7, 2000);  // what the parent wrote
  check_state(*state, model);
  mutate(objects.get(), state, model, 8, 2000);
  check_state(*state, model);
  must(heap->checkpoint("from the child"));
}

TEST_CASE("a heap checkpointed in one process opens at another address in another and agrees") {
  for (DirtyTracking mode : tracking_modes()) {
    INFO("mode ", tracking_name(mode));
    test::TempDir dir;
    const auto store_dir = dir.path() / "store";
    HeapOptions o = small_heap(mode, 16 << 20, 256 << 10);
    o.base_address = reinterpret_cast<void*>(uintptr_t{0x5e0000000000});
    const uintptr_t child_base = 0x3c0000000000;
    Model model;
    uint64_t version;
    {
      auto store = must(PageStore::open(store_dir, {.compression_level = 0, .durable = false}));
      auto heap = must(Heap::open(*store, 0, o));
      auto objects = must(Objects::attach(*heap));
      AppState& state = objects->root<AppState>("state", objects->allocator<char>());
      mutate(objects.get(), &state, model, 7, 2000);
      version = must(heap->checkpoint("from the parent")).version;
    }  // the store is closed: the child opens it
    char base_hex[32];
    std::snprintf(base_hex, sizeof base_hex, "%lx", static_cast<unsigned long>(child_base));
    test::ChildProcess child(self_exe(), {"-tc=position independence child", "--no-version"},
                             {"DJINN_HEAP_CHILD_STORE=" + store_dir.string(),
                              "DJINN_HEAP_CHILD_VERSION=" + std::to_string(version),
                              std::string("DJINN_HEAP_CHILD_BASE=") + base_hex,
                              "DJINN_HEAP_CHILD_MODE=" + std::to_string(static_cast<int>(mode))});
    int status = child.wait(60000);
    REQUIRE_MESSAGE(status != -1, "the child did not finish");
    REQUIRE_MESSAGE((WIFEXITED(status) && WEXITSTATUS(status) == 0), "the child failed, wait status ", status);
    // The child's version, back here at the parent's address.
    auto store = must(PageStore::open(store_dir, {.compression_level = 0, .durable = false}));
    VersionInfo latest = *store->latest();
    CHECK(latest.parent == version);
    auto heap = must(Heap::open(*store, latest.version, o));
    CHECK(heap->record() == "from the child");
    auto objects = must(Objects::attach(*heap));
    AppState* state = objects->find<AppState>("state");
    REQUIRE(state != nullptr);
    Model expected;
    mutate(nullptr, nullptr, expected, 7, 2000);
    mutate(nullptr, nullptr, expected, 8, 2000);
    check_state(*state, expected);
  }
}

// --- What may live in a heap (compile time).

struct Plain {
  int a;
  double b;
  char name[16];
};
struct WithHeapContainers {
  HeapVector<int> v;
  HeapMap<int, HeapString> m;
};
struct Polymorphic {
  virtual ~Polymorphic() = default;
};
struct Derived : Polymorphic {};

static_assert(HeapStorable<int>);
static_assert(HeapStorable<Plain>);
static_assert(HeapStorable<Plain[4]>);
static_assert(HeapStorable<WithHeapContainers>);
static_assert(HeapStorable<HeapString>);
static_assert(HeapStorable<HeapVector<HeapString>>);
static_assert(HeapStorable<HeapMap<int64_t, HeapVector<HeapString>>>);
static_assert(HeapStorable<HeapPtr<Node>>);
static_assert(HeapStorable<std::pair<int, HeapString>>);
static_assert(HeapStorable<std::optional<Plain>>);
static_assert(HeapStorable<std::array<HeapString, 3>>);
static_assert(HeapStorable<AppState>);

static_assert(!HeapStorable<int*>);
static_assert(!HeapStorable<const char*>);
static_assert(!HeapStorable<int&>);
static_assert(!HeapStorable<void (*)()>);
static_assert(!HeapStorable<void (Plain::*)()>);
static_assert(!HeapStorable<Polymorphic>);
static_assert(!HeapStorable<Derived>);
static_assert(!HeapStorable<std::vector<int>>);
static_assert(!HeapStorable<std::string>);
static_assert(!HeapStorable<std::map<int, int>>);
static_assert(!HeapStorable<std::pmr::vector<int>>);
static_assert(!HeapStorable<boost::container::vector<int>>);  // the default allocator: raw pointers
static_assert(!HeapStorable<HeapVector<int*>>);              // heap memory, but raw pointers in it
static_assert(!HeapStorable<HeapMap<int, std::string>>);
static_assert(!HeapStorable<std::unique_ptr<int>>);
static_assert(!HeapStorable<std::shared_ptr<Plain>>);
static_assert(!HeapStorable<std::function<void()>>);
static_assert(!HeapStorable<std::string_view>);
static_assert(!HeapStorable<std::span<int>>);
static_assert(!HeapStorable<std::pair<int, int*>>);
static_assert(!HeapStorable<std::optional<std::string>>);
static_assert(!HeapStorable<std::array<int*, 2>>);
static_assert(!HeapStorable<Polymorphic[2]>);

TEST_CASE("the rules on what may live in a heap hold at compile time") {
  // The static_asserts above are the test; this records that they compiled.
  CHECK(is_heap_storable_v<Plain>);
  CHECK(!is_heap_storable_v<std::vector<int>>);
}

// --- The scratch arena.

TEST_CASE("the scratch arena hands out memory per call, releases it at the end, and grows to fit") {
  ScratchArena arena(8192);
  CHECK(arena.capacity() == 8192);
  {
    ScratchArena::Scope call(arena);
    std::pmr::vector<int> v(arena.resource());
    for (int i = 0; i < 100; ++i) v.push_back(i);
    CHECK(arena.used() > 0);
    std::pmr::string s("a string too long for the small-string buffer, so it allocates", arena.resource());
    CHECK(s.size() > 40);
  }
  CHECK(arena.used() == 0);
  CHECK(arena.capacity() == 8192);
  size_t big = 0;
  {
    ScratchArena::Scope call(arena);
    std::pmr::vector<char> v(100000, 'x', arena.allocator<char>());
    big = arena.used();
    CHECK(big >= 100000);
  }
  CHECK(arena.capacity() >= big);  // the next call this size is served from the buffer
  {
    ScratchArena::Scope call(arena);
    std::pmr::vector<char> v(100000, 'y', arena.allocator<char>());
    CHECK(v.back() == 'y');
  }
}
