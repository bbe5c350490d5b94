// The index's posting lists (space/src/posting.h) against a std::set: appends in write order,
// removals from the front (takes), the middle and the end, re-insertions below and inside the
// chunks (an aborted take files its entry again), across the inline form, chunk splits and the way
// back inline.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

#include "posting.h"

using djinn::space::Posting;

namespace {

std::vector<uint64_t> after(const Posting& p, uint64_t from, size_t max = SIZE_MAX) {
  std::vector<uint64_t> out;
  p.for_each_after(from, [&](uint64_t s) {
    out.push_back(s);
    return out.size() < max;
  });
  return out;
}

std::vector<uint64_t> after(const std::set<uint64_t>& model, uint64_t from, size_t max = SIZE_MAX) {
  std::vector<uint64_t> out;
  for (auto it = model.upper_bound(from); it != model.end() && out.size() < max; ++it) out.push_back(*it);
  return out;
}

void check_same(const Posting& p, const std::set<uint64_t>& model) {
  REQUIRE(p.well_formed());
  REQUIRE(p.size() == model.size());
  REQUIRE(p.empty() == model.empty());
  REQUIRE(after(p, 0) == after(model, 0));
}

}  // namespace

TEST_CASE("a posting appended in write order, then taken from the front, lists what a set holds") {
  Posting p;
  std::set<uint64_t> model;
  for (uint64_t s = 1; s <= 10 * Posting::kChunkMax; ++s) {
    p.insert(s);
    model.insert(s);
  }
  check_same(p, model);
  CHECK(p.chunk_count() == 10);
  CHECK(after(p, 5 * Posting::kChunkMax - 1, 3) == after(model, 5 * Posting::kChunkMax - 1, 3));
  while (!model.empty()) {
    uint64_t first = *model.begin();
    p.erase(first);
    model.erase(first);
    if (model.size() % 97 == 0) check_same(p, model);
  }
  check_same(p, model);
  p.insert(7);  // usable again once empty
  CHECK(after(p, 0) == std::vector<uint64_t>{7});
}

TEST_CASE("a posting under random inserts, erases and cursors agrees with a set") {
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    CAPTURE(seed);
    std::mt19937_64 rng(seed);
    Posting p;
    std::set<uint64_t> model;
    uint64_t next = 1000;  // new entries come above every sequence so far; re-filed ones below
    size_t most_chunks = 0, times_inline_again = 0;
    const int ops = 6000 + static_cast<int>(rng() % 4000);
    for (int i = 0; i < ops; ++i) {
      uint64_t r = rng() % 100;
      if (r < 55) {
        uint64_t s = next;
        next += 1 + rng() % 3;
        p.insert(s);
        model.insert(s);
      } else if (r < 65) {
        uint64_t s = rng() % next;  // below the first chunk, inside one, or already there
        p.insert(s);
        model.insert(s);
      } else if (r < 85 && !model.empty()) {
        auto it = model.begin();
        std::advance(it, static_cast<long>(rng() % model.size()));
        p.erase(*it);
        model.erase(it);
      } else if (r < 90) {
        uint64_t s = rng() % (next + 10);  // mostly absent: nothing changes
        p.erase(s);
        model.erase(s);
      }
      if (i % 3000 == 2999) {
        // Shrink far enough to go back inline, then grow again (past chunk splits: about 0.4 more
        // sequences per operation).
        while (model.size() > Posting::kSmallMax / 2) {
          auto it = model.begin();
          std::advance(it, static_cast<long>(rng() % model.size()));
          p.erase(*it);
          model.erase(it);
        }
      }
      uint64_t from = rng() % (next + 1);
      size_t max = 1 + rng() % 50;
      REQUIRE(after(p, from, max) == after(model, from, max));
      REQUIRE(p.well_formed());
      most_chunks = std::max(most_chunks, p.chunk_count());
      if (i % 3000 == 2999 && p.chunk_count() == 0) ++times_inline_again;
      if (i % 500 == 0) check_same(p, model);
    }
    check_same(p, model);
    // The paths under test were taken: several chunks (so splits of full ones by re-filed
    // sequences), and the way back inline.
    CHECK(most_chunks >= 3);
    CHECK(times_inline_again >= 1);
  }
}

TEST_CASE("a sequence re-filed inside a full chunk splits it; one below them all goes first") {
  Posting p;
  std::set<uint64_t> model;
  for (uint64_t s = 10; s < 10 + 2 * 3 * Posting::kChunkMax; s += 2) {  // three full chunks of even numbers
    p.insert(s);
    model.insert(s);
  }
  REQUIRE(p.chunk_count() == 3);
  p.insert(10 + 3 * Posting::kChunkMax + 1);  // odd, inside the second chunk
  model.insert(10 + 3 * Posting::kChunkMax + 1);
  CHECK(p.chunk_count() == 4);
  check_same(p, model);
  p.insert(3);  // below every sequence, into the full first chunk
  model.insert(3);
  CHECK(p.chunk_count() == 5);
  check_same(p, model);
  CHECK(after(p, 0, 2) == std::vector<uint64_t>{3, 10});
}
