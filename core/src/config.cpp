#include "djinn/core/config.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "djinn/core/log.h"

namespace djinn {
namespace {

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}

bool parse_int(const std::string& s, int64_t* out) {
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno != 0 || *end != '\0') return false;
  *out = v;
  return true;
}

bool parse_bool(const std::string& s, bool* out) {
  if (s == "true" || s == "yes" || s == "on" || s == "1") *out = true;
  else if (s == "false" || s == "no" || s == "off" || s == "0") *out = false;
  else return false;
  return true;
}

}  // namespace

Result<std::chrono::milliseconds> parse_duration(const std::string& text) {
  std::string t = trim(text);
  size_t digits = 0;
  while (digits < t.size() && t[digits] >= '0' && t[digits] <= '9') ++digits;
  if (digits == 0) return invalid_argument("duration '" + text + "': expected a number with ms, s, m or h");
  int64_t n = 0;
  if (!parse_int(t.substr(0, digits), &n)) return invalid_argument("duration '" + text + "': number out of range");
  std::string unit = t.substr(digits);
  int64_t mult = 0;
  if (unit.empty() || unit == "ms") mult = 1;
  else if (unit == "s") mult = 1000;
  else if (unit == "m") mult = 60'000;
  else if (unit == "h") mult = 3'600'000;
  else return invalid_argument("duration '" + text + "': unit '" + unit + "' is not one of ms, s, m, h");
  if (n > INT64_MAX / mult) return invalid_argument("duration '" + text + "': too large");
  return std::chrono::milliseconds(n * mult);
}

Config::Config(std::string program, std::string summary)
    : program_(std::move(program)), summary_(std::move(summary)) {
  add_string("config", "", "read options from this file (name = value per line) before the flags");
  add_string("log-level", "info", "one of debug, info, warn, error, off");
}

void Config::add_string(const std::string& name, std::string def, std::string help) {
  options_[name] = Option{Type::kString, def, def, std::move(help)};
  order_.push_back(name);
}

void Config::add_int(const std::string& name, int64_t def, std::string help, int64_t min, int64_t max) {
  options_[name] = Option{Type::kInt, std::to_string(def), std::to_string(def), std::move(help), min, max};
  order_.push_back(name);
}

void Config::add_bool(const std::string& name, bool def, std::string help) {
  const char* d = def ? "true" : "false";
  options_[name] = Option{Type::kBool, d, d, std::move(help)};
  order_.push_back(name);
}

void Config::add_duration(const std::string& name, std::chrono::milliseconds def, std::string help) {
  std::string d = std::to_string(def.count()) + "ms";
  options_[name] = Option{Type::kDuration, d, d, std::move(help)};
  order_.push_back(name);
}

Status Config::set(const std::string& name, const std::string& value, const std::string& origin) {
  auto it = options_.find(name);
  if (it == options_.end()) {
    return invalid_argument(origin + ": unknown option '" + name + "' (see " + program_ + " --help)");
  }
  Option& o = it->second;
  switch (o.type) {
    case Type::kString:
      break;
    case Type::kInt: {
      int64_t v = 0;
      if (!parse_int(value, &v)) return invalid_argument(origin + ": --" + name + " '" + value + "' is not an integer");
      if (v < o.min || v > o.max) {
        return invalid_argument(origin + ": --" + name + " " + value + " is out of range [" +
                                std::to_string(o.min) + ", " + std::to_string(o.max) + "]");
      }
      break;
    }
    case Type::kBool: {
      bool b = false;
      if (!parse_bool(value, &b)) return invalid_argument(origin + ": --" + name + " '" + value + "' is not true or false");
      break;
    }
    case Type::kDuration: {
      auto d = parse_duration(value);
      if (!d.ok()) return invalid_argument(origin + ": --" + name + ": " + d.status().message());
      break;
    }
  }
  o.value = value;
  o.set = true;
  if (name == "log-level") {
    log::Level l;
    if (!log::parse_level(value, &l)) return invalid_argument(origin + ": --log-level '" + value + "' is not one of debug, info, warn, error, off");
    log::set_level(l);
  }
  return Status::Ok();
}

Status Config::apply_file_text(const std::string& text, const std::string& origin) {
  std::istringstream in(text);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    auto hash = line.find('#');
    if (hash != std::string::npos) line.resize(hash);
    line = trim(line);
    if (line.empty()) continue;
    auto eq = line.find('=');
    std::string where = origin + ":" + std::to_string(n);
    if (eq == std::string::npos) return invalid_argument(where + ": expected 'name = value'");
    std::string name = trim(line.substr(0, eq));
    std::string value = trim(line.substr(eq + 1));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
    if (name == "config") return invalid_argument(where + ": a config file cannot include another");
    DJINN_RETURN_IF_ERROR(set(name, value, where));
  }
  return Status::Ok();
}

Status Config::parse(int argc, const char* const* argv) {
  // Pass 1: --help and --config, so the file applies before the flags override it.
  std::vector<std::pair<std::string, std::string>> flags;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(usage().c_str(), stdout);
      return Status(Code::kCancelled, "help printed");
    }
    if (a == "--") {
      for (++i; i < argc; ++i) positional_.push_back(argv[i]);
      break;
    }
    if (a.rfind("--", 0) != 0) {
      positional_.push_back(a);
      continue;
    }
    std::string name = a.substr(2), value;
    auto eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    } else {
      auto it = options_.find(name);
      if (it == options_.end() && name.rfind("no-", 0) == 0) {
        auto neg = options_.find(name.substr(3));
        if (neg != options_.end() && neg->second.type == Type::kBool) {
          flags.emplace_back(name.substr(3), "false");
          continue;
        }
      }
      if (it == options_.end()) return invalid_argument("unknown option '--" + name + "' (see " + program_ + " --help)");
      if (it->second.type == Type::kBool) {
        value = "true";
      } else {
        if (i + 1 >= argc) return invalid_argument("option '--" + name + "' needs a value");
        value = argv[++i];
      }
    }
    flags.emplace_back(name, value);
  }
  for (const auto& [name, value] : flags) {
    if (name != "config") continue;
    std::ifstream f(value);
    if (!f) return invalid_argument("cannot read config file '" + value + "'");
    std::stringstream ss;
    ss << f.rdbuf();
    DJINN_RETURN_IF_ERROR(apply_file_text(ss.str(), value));
    DJINN_RETURN_IF_ERROR(set("config", value, "command line"));
  }
  for (const auto& [name, value] : flags) {
    if (name == "config") continue;
    DJINN_RETURN_IF_ERROR(set(name, value, "command line"));
  }
  return Status::Ok();
}

const Config::Option& Config::find(const std::string& name, Type type) const {
  auto it = options_.find(name);
  if (it == options_.end() || it->second.type != type) {
    throw std::logic_error("config option '" + name + "' not declared with this type");
  }
  return it->second;
}

const std::string& Config::get_string(const std::string& name) const { return find(name, Type::kString).value; }
int64_t Config::get_int(const std::string& name) const {
  int64_t v = 0;
  parse_int(find(name, Type::kInt).value, &v);
  return v;
}
bool Config::get_bool(const std::string& name) const {
  bool b = false;
  parse_bool(find(name, Type::kBool).value, &b);
  return b;
}
std::chrono::milliseconds Config::get_duration(const std::string& name) const {
  auto d = parse_duration(find(name, Type::kDuration).value);
  return d.ok() ? *d : std::chrono::milliseconds(0);
}
bool Config::was_set(const std::string& name) const {
  auto it = options_.find(name);
  return it != options_.end() && it->second.set;
}

std::string Config::usage() const {
  std::ostringstream o;
  o << "usage: " << program_ << " [options]\n\n" << summary_ << "\n\noptions:\n";
  for (const auto& name : order_) {
    const Option& opt = options_.at(name);
    std::string left = "  --" + name;
    switch (opt.type) {
      case Type::kString: left += " TEXT"; break;
      case Type::kInt: left += " N"; break;
      case Type::kDuration: left += " DURATION"; break;
      case Type::kBool: break;
    }
    o << left;
    if (left.size() < 28) o << std::string(28 - left.size(), ' ');
    else o << "\n" << std::string(28, ' ');
    o << opt.help;
    if (!opt.def.empty()) o << " (default: " << opt.def << ")";
    o << "\n";
  }
  o << "\nEvery option can also be set in the --config file as `name = value`; flags win.\n";
  return o.str();
}

int Config::fail(const std::string& message, int code) const {
  std::fprintf(stderr, "%s: %s\n", program_.c_str(), message.c_str());
  return code;
}

int Config::exit_code(const Status& st) const {
  if (st.code() == Code::kCancelled) return 0;
  std::fprintf(stderr, "%s: %s\n", program_.c_str(), st.message().c_str());
  return 2;
}

}  // namespace djinn
