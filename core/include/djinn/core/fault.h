// Named crash points (fault injection). Every protocol step that could be interrupted by a crash
// calls DJINN_CRASH_POINT("part.step"); tests arm points by name:
//  - in a child process, through the environment: DJINN_CRASH_AT="txn.after_decision" or
//    "txn.after_decision@3" (the third hit): the process dies by SIGKILL there, like kill -9;
//  - in-process, with arm(name, Action::kThrow): the hit throws CrashPointHit, and the test
//    abandons the object as a crashed process would and reopens its files.
// Where an operation can fail without a crash (a disk's write-back), DJINN_FAIL_POINT("part.step")
// is true at the hit a test armed with Action::kFail, and the code takes its failure path.
// arm_call makes a point run a test's function at its hit instead: another thread's call lands in
// exactly the instant between two steps.
// An unarmed point costs one relaxed atomic load.
#pragma once

#include <atomic>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace djinn::fault {

enum class Action { kKill, kThrow, kFail, kCall };

struct CrashPointHit : std::runtime_error {
  explicit CrashPointHit(const std::string& point) : std::runtime_error("crash point " + point) {}
};

void arm(std::string_view point, Action action, int hit = 1);
// Runs `fn` on the thread passing the point, at its `hit`th pass.
void arm_call(std::string_view point, std::function<void()> fn, int hit = 1);
void disarm_all();
// How many times the point has been passed since it was armed (armed points only).
int hits(std::string_view point);

namespace internal {
extern std::atomic<bool> g_any_armed;
void check(std::string_view point);
bool fails(std::string_view point);
}  // namespace internal

inline void crash_point(std::string_view point) {
  if (internal::g_any_armed.load(std::memory_order_relaxed)) internal::check(point);
}

inline bool fail_point(std::string_view point) {
  return internal::g_any_armed.load(std::memory_order_relaxed) && internal::fails(point);
}

}  // namespace djinn::fault

#define DJINN_CRASH_POINT(name) ::djinn::fault::crash_point(name)
#define DJINN_FAIL_POINT(name) ::djinn::fault::fail_point(name)
