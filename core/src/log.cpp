#include "djinn/core/log.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <string>

namespace djinn::log {
namespace {
std::atomic<int> g_level{static_cast<int>(Level::kInfo)};
std::mutex g_program_mu;  // guards g_program
std::string g_program;

const char* level_name(Level l) {
  switch (l) {
    case Level::kDebug: return "DEBUG";
    case Level::kInfo: return "INFO";
    case Level::kWarn: return "WARN";
    case Level::kError: return "ERROR";
    case Level::kOff: return "OFF";
  }
  return "?";
}
}  // namespace

void set_level(Level l) { g_level.store(static_cast<int>(l)); }
Level level() { return static_cast<Level>(g_level.load(std::memory_order_relaxed)); }

bool parse_level(std::string_view t, Level* out) {
  if (t == "debug") *out = Level::kDebug;
  else if (t == "info") *out = Level::kInfo;
  else if (t == "warn") *out = Level::kWarn;
  else if (t == "error") *out = Level::kError;
  else if (t == "off") *out = Level::kOff;
  else return false;
  return true;
}

void set_program(std::string_view name) {
  std::lock_guard lock(g_program_mu);
  g_program = name;
}

Line::Line(Level l, std::string_view component) {
  auto now = std::chrono::system_clock::now();
  auto secs = std::chrono::system_clock::to_time_t(now);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char stamp[96];
  std::snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  out_ << stamp << ' ' << level_name(l) << ' ';
  {
    std::lock_guard lock(g_program_mu);
    if (!g_program.empty()) out_ << g_program << ' ';
  }
  out_ << component << ": ";
}

Line::~Line() {
  out_ << '\n';
  std::string s = out_.str();
  ssize_t ignored = ::write(STDERR_FILENO, s.data(), s.size());
  (void)ignored;
}

}  // namespace djinn::log
