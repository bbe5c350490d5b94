// Both of a landlord's clocks under a test's control (lease::Clocks), for tests of expiry and of
// what owners hide at a deadline. The monotonic clock starts at an arbitrary point.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

#include "djinn/lease/landlord.h"

namespace djinn::test {

struct FakeClocks {
  std::atomic<int64_t> mono_ns{1'000'000'000'000};
  std::atomic<int64_t> wall{1'700'000'000'000};  // Unix ms

  lease::Clocks clocks() {
    return lease::Clocks{
        [this] { return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(mono_ns.load())); },
        [this] { return wall.load(); }};
  }
  // Both clocks move together, as when nothing steps the wall clock.
  void advance(int64_t ms) {
    mono_ns += ms * 1'000'000;
    wall += ms;
  }
};

}  // namespace djinn::test
