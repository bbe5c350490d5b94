// Config shared by every executable: declared options, set by a config file and by flags (flags
// win), with --help generated from the declarations.
//
//   Config cfg("djinn-lease", "The federation's lease manager.");
//   cfg.add_string("data-dir", "./.djinn/lease", "where the SQLite file lives");
//   cfg.add_int("port", 0, "RPC port (0: any free port)");
//   if (auto st = cfg.parse(argc, argv); !st.ok()) return cfg.exit_code(st);
//
// The config file has one `name = value` per line, `#` starts a comment; names are the flag names.
// Every executable also accepts --config FILE, --log-level LEVEL and --help.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "djinn/core/status.h"

namespace djinn {

class Config {
 public:
  Config(std::string program, std::string summary);

  void add_string(const std::string& name, std::string def, std::string help);
  void add_int(const std::string& name, int64_t def, std::string help, int64_t min = INT64_MIN,
               int64_t max = INT64_MAX);
  void add_bool(const std::string& name, bool def, std::string help);
  // A duration written as 250ms, 5s, 2m, 1h or a plain number of milliseconds.
  void add_duration(const std::string& name, std::chrono::milliseconds def, std::string help);

  // Parses argv: --name=value, --name value, --flag / --no-flag for booleans; positional
  // arguments are kept in positional(). Reads --config FILE first, then applies the flags.
  // Returns kCancelled after printing usage for --help (the caller exits 0).
  Status parse(int argc, const char* const* argv);
  // Applies a config file's text (for tests and for parse()).
  Status apply_file_text(const std::string& text, const std::string& origin);
  Status set(const std::string& name, const std::string& value, const std::string& origin);

  const std::string& get_string(const std::string& name) const;
  int64_t get_int(const std::string& name) const;
  bool get_bool(const std::string& name) const;
  std::chrono::milliseconds get_duration(const std::string& name) const;
  bool was_set(const std::string& name) const;
  const std::vector<std::string>& positional() const { return positional_; }

  std::string usage() const;
  // For main(): 0 after --help, 2 (with the error and a hint printed) otherwise.
  int exit_code(const Status& parse_status) const;
  // For main(): prints "<program>: <message>" on stderr and returns `code` (2: bad usage).
  int fail(const std::string& message, int code = 1) const;

 private:
  enum class Type { kString, kInt, kBool, kDuration };
  struct Option {
    Type type;
    std::string value;
    std::string def;
    std::string help;
    int64_t min = INT64_MIN;
    int64_t max = INT64_MAX;
    bool set = false;
  };
  const Option& find(const std::string& name, Type type) const;

  std::string program_;
  std::string summary_;
  std::map<std::string, Option> options_;
  std::vector<std::string> order_;
  std::vector<std::string> positional_;
};

// Parses "250ms", "5s", "2m", "1h", "1500" (ms). Rejects negatives and garbage.
Result<std::chrono::milliseconds> parse_duration(const std::string& text);

}  // namespace djinn
