// Logging: levels, one line per event, to stderr, written with one write(2) so lines from
// several threads never interleave.
//   DJINN_LOG(kInfo, "rpc") << "listening on " << endpoint;
#pragma once

#include <sstream>
#include <string_view>

namespace djinn::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3, kOff = 4 };

void set_level(Level level);
Level level();
// Parses "debug", "info", "warn", "error", "off".
bool parse_level(std::string_view text, Level* out);
// Prefixes every line with this program name (default: none).
void set_program(std::string_view name);

class Line {
 public:
  Line(Level level, std::string_view component);
  ~Line();
  Line(const Line&) = delete;
  Line& operator=(const Line&) = delete;
  template <class T>
  Line& operator<<(const T& v) {
    out_ << v;
    return *this;
  }

 private:
  std::ostringstream out_;
};

inline bool enabled(Level l) { return static_cast<int>(l) >= static_cast<int>(level()); }

// Voidify makes the whole expression void, so the macro is one expression and nests safely
// inside an unbraced if/else (the glog idiom).
struct Voidify {
  void operator&(const Line&) {}
};

}  // namespace djinn::log

#define DJINN_LOG(lvl, component)                                    \
  !::djinn::log::enabled(::djinn::log::Level::lvl)                   \
      ? (void)0                                                      \
      : ::djinn::log::Voidify() & ::djinn::log::Line(::djinn::log::Level::lvl, component)
