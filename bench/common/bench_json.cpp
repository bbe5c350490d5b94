// Writes the benchmark JSON of DESIGN §11 and computes percentiles for every bench-<name>.
#include "bench_json.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <numeric>

namespace djinn::bench {
namespace {

void append_string(std::string& out, std::string_view s) {
  out += '"';
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

void append_number(std::string& out, double v) {
  if (!std::isfinite(v)) {
    out += "null";
    return;
  }
  // Shortest form that reads back as the same double: no spurious digits, always valid JSON.
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, ec == std::errc() ? end : buf);
}

void append_reference(std::string& out, const std::optional<Reference>& r) {
  if (!r) {
    out += "null";
    return;
  }
  out += "{\"name\": ";
  append_string(out, r->name);
  out += ", \"value\": ";
  append_number(out, r->value);
  out += '}';
}

std::string_view of_name(Target::Of of) {
  switch (of) {
    case Target::Of::kPeer: return "peer";
    case Target::Of::kLimit: return "limit";
    case Target::Of::kValue: return "value";
  }
  return "value";
}

}  // namespace

std::optional<double> target_measure(const Result& r) {
  if (!r.target) return std::nullopt;
  switch (r.target->of) {
    case Target::Of::kValue:
      return r.value;
    case Target::Of::kPeer:
      if (!r.peer || r.peer->value == 0) return std::nullopt;
      return r.value / r.peer->value;
    case Target::Of::kLimit:
      if (!r.limit || r.limit->value == 0) return std::nullopt;
      return r.value / r.limit->value;
  }
  return std::nullopt;
}

std::optional<bool> meets_target(const Result& r) {
  auto m = target_measure(r);
  if (!m || !std::isfinite(*m)) return std::nullopt;
  if (r.target->min && *m < *r.target->min) return false;
  if (r.target->max && *m > *r.target->max) return false;
  return true;
}

Result& Report::add(Result result) {
  results_.push_back(std::move(result));
  return results_.back();
}

void Report::note(std::string text) { notes_.push_back(std::move(text)); }

std::string Report::json() const {
  std::string out = "{\"bench\": ";
  append_string(out, bench_);
  out += ",\n \"results\": [";
  for (size_t i = 0; i < results_.size(); ++i) {
    const Result& r = results_[i];
    out += i ? ",\n  " : "\n  ";
    out += "{\"name\": ";
    append_string(out, r.name);
    out += ", \"value\": ";
    append_number(out, r.value);
    out += ", \"unit\": ";
    append_string(out, r.unit);
    out += ", \"peer\": ";
    append_reference(out, r.peer);
    out += ", \"limit\": ";
    append_reference(out, r.limit);
    if (r.target) {
      out += ", \"target\": {\"of\": ";
      append_string(out, of_name(r.target->of));
      if (r.target->min) {
        out += ", \"min\": ";
        append_number(out, *r.target->min);
      }
      if (r.target->max) {
        out += ", \"max\": ";
        append_number(out, *r.target->max);
      }
      out += '}';
    }
    out += '}';
  }
  out += "\n ]";
  if (!notes_.empty()) {
    out += ",\n \"notes\": [";
    for (size_t i = 0; i < notes_.size(); ++i) {
      out += i ? ",\n  " : "\n  ";
      append_string(out, notes_[i]);
    }
    out += "\n ]";
  }
  out += "\n}\n";
  return out;
}

void Report::print() const {
  std::string text = json();
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

double percentile_sorted(std::span<const double> sorted, double p) {
  if (sorted.empty()) return NAN;
  p = std::clamp(p, 0.0, 100.0);
  // Nearest rank: the smallest sample with at least p% of all samples at or below it.
  auto rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

Summary summarize(std::vector<double>& samples) {
  Summary s;
  s.count = samples.size();
  if (samples.empty()) {
    s.mean = s.p50 = s.p90 = s.p99 = s.max = NAN;
    return s;
  }
  std::sort(samples.begin(), samples.end());
  s.mean = std::accumulate(samples.begin(), samples.end(), 0.0) / static_cast<double>(samples.size());
  s.p50 = percentile_sorted(samples, 50);
  s.p90 = percentile_sorted(samples, 90);
  s.p99 = percentile_sorted(samples, 99);
  s.max = samples.back();
  return s;
}

double median(std::vector<double> samples) {
  if (samples.empty()) return NAN;
  std::sort(samples.begin(), samples.end());
  const size_t n = samples.size();
  return n % 2 ? samples[n / 2] : (samples[n / 2 - 1] + samples[n / 2]) / 2;
}

double round_to(double value, int decimals) {
  if (!std::isfinite(value)) return value;
  double scale = std::pow(10.0, decimals);
  return std::round(value * scale) / scale;
}

}  // namespace djinn::bench
