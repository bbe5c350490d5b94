#include "djinn/core/fault.h"

#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <mutex>

#include "djinn/core/log.h"

namespace djinn::fault {
namespace internal {
std::atomic<bool> g_any_armed{false};
}

namespace {
struct Armed {
  Action action;
  int fire_at;
  int seen = 0;
  std::function<void()> call;  // kCall
};

std::mutex g_mu;  // guards g_points
std::map<std::string, Armed, std::less<>>& points() {
  static std::map<std::string, Armed, std::less<>> p;
  return p;
}

// Arms the point named in DJINN_CRASH_AT before main() runs, so every executable honours it.
struct EnvArm {
  EnvArm() {
    const char* spec = std::getenv("DJINN_CRASH_AT");
    if (!spec || !*spec) return;
    std::string s = spec;
    int hit = 1;
    auto at = s.find('@');
    if (at != std::string::npos) {
      hit = std::atoi(s.c_str() + at + 1);
      s.resize(at);
      if (hit < 1) hit = 1;
    }
    arm(s, Action::kKill, hit);
  }
} g_env_arm;
}  // namespace

void arm(std::string_view point, Action action, int hit) {
  std::lock_guard lock(g_mu);
  points()[std::string(point)] = Armed{action, hit};
  internal::g_any_armed.store(true);
}

void arm_call(std::string_view point, std::function<void()> fn, int hit) {
  std::lock_guard lock(g_mu);
  points()[std::string(point)] = Armed{Action::kCall, hit, 0, std::move(fn)};
  internal::g_any_armed.store(true);
}

void disarm_all() {
  std::lock_guard lock(g_mu);
  points().clear();
  internal::g_any_armed.store(false);
}

int hits(std::string_view point) {
  std::lock_guard lock(g_mu);
  auto it = points().find(point);
  return it == points().end() ? 0 : it->second.seen;
}

void internal::check(std::string_view point) {
  Action action;
  std::function<void()> call;
  {
    std::lock_guard lock(g_mu);
    auto it = points().find(point);
    if (it == points().end()) return;
    if (it->second.action == Action::kFail) return;  // counted by fails()
    if (++it->second.seen != it->second.fire_at) return;
    action = it->second.action;
    call = it->second.call;
  }
  if (action == Action::kCall) {
    if (call) call();  // outside the lock: the function may pass points itself
    return;
  }
  if (action == Action::kKill) {
    DJINN_LOG(kWarn, "fault") << "crash point " << point << " reached: killing this process";
    ::kill(::getpid(), SIGKILL);
    _exit(137);
  }
  throw CrashPointHit(std::string(point));
}

bool internal::fails(std::string_view point) {
  std::lock_guard lock(g_mu);
  auto it = points().find(point);
  if (it == points().end() || it->second.action != Action::kFail) return false;
  return ++it->second.seen == it->second.fire_at;
}

}  // namespace djinn::fault
