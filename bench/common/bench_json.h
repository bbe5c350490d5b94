// The output every benchmark prints (DESIGN §11): one JSON object on stdout with its figures, each
// beside the same figure for a peer and the physical limit measured in the same run, plus the
// percentiles benchmarks compute from latency samples.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <vector>

namespace djinn::bench {

// The peer's or the limit's value of a figure, and what it is.
struct Reference {
  std::string name;
  double value = 0;
};

// An issue's target for a figure: on value ÷ peer.value, value ÷ limit.value, or the value itself.
struct Target {
  enum class Of { kPeer, kLimit, kValue };
  Of of = Of::kPeer;
  std::optional<double> min;
  std::optional<double> max;

  static Target at_least(Of of, double min) { return Target{of, min, std::nullopt}; }
  static Target at_most(Of of, double max) { return Target{of, std::nullopt, max}; }
};

struct Result {
  std::string name;
  double value = 0;
  std::string unit;
  std::optional<Reference> peer;
  std::optional<Reference> limit;
  std::optional<Target> target;
};

// The number the target bounds (value, or value over the peer's or the limit's); nullopt without
// a target or when the divisor is missing or zero.
std::optional<double> target_measure(const Result& result);
// Whether the figure meets its target; nullopt when it has none or it cannot be judged.
std::optional<bool> meets_target(const Result& result);

class Report {
 public:
  explicit Report(std::string bench) : bench_(std::move(bench)) {}

  Result& add(Result result);
  // Free-text notes on how the run was made, printed as a top-level "notes" array.
  void note(std::string text);
  const std::vector<Result>& results() const { return results_; }

  // The object of DESIGN §11; a value that is not finite is written as null, since JSON has no NaN.
  std::string json() const;
  // json() on stdout, flushed.
  void print() const;

 private:
  std::string bench_;
  std::vector<Result> results_;
  std::vector<std::string> notes_;
};

// Nearest-rank percentile (p in [0, 100]) of samples sorted ascending; NaN when there are none.
double percentile_sorted(std::span<const double> sorted, double p);

struct Summary {
  size_t count = 0;
  double mean = 0;
  double p50 = 0;
  double p90 = 0;
  double p99 = 0;
  double max = 0;
};
// Sorts the samples in place and summarises all of them.
Summary summarize(std::vector<double>& samples);
// The middle sample (the mean of the two middle ones for an even count); NaN when there are none.
// Rounds of a figure interleaved with rounds of its limit compare by their medians.
double median(std::vector<double> samples);

// `value` rounded to `decimals` places, so the JSON does not carry measurement noise as digits.
double round_to(double value, int decimals);

}  // namespace djinn::bench
