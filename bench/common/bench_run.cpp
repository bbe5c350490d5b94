// Plans, windows and verdicts shared by the benchmarks.
#include "bench_run.h"

#include <cmath>
#include <cstdio>

namespace djinn::bench {

namespace {

// "700ms", or "2s" for whole seconds, as the flags' help spells a default.
std::string duration_text(Clock::duration d) {
  int64_t ms = ms_of(d);
  return ms % 1000 == 0 ? std::to_string(ms / 1000) + "s" : std::to_string(ms) + "ms";
}

}  // namespace

void add_plan_flags(Config& cfg, const Plan& quick, const Plan& full) {
  cfg.add_int("rounds", 0,
              "rounds per figure, contenders interleaved (0: " + std::to_string(quick.rounds) + " with --quick, else " +
                  std::to_string(full.rounds) + ")",
              0, 100);
  cfg.add_duration("measure", std::chrono::milliseconds(0),
                   "time measured per figure and round (0: " + duration_text(quick.measure) + " with --quick, else " +
                       duration_text(full.measure) + ")");
}

Plan plan_from_flags(const Config& cfg, const Plan& quick, const Plan& full) {
  Plan plan = cfg.get_bool("quick") ? quick : full;
  if (cfg.get_duration("measure").count() > 0) plan.measure = cfg.get_duration("measure");
  if (cfg.get_int("rounds") > 0) plan.rounds = static_cast<int>(cfg.get_int("rounds"));
  return plan;
}

double seconds_of(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
int64_t ms_of(Clock::duration d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); }

std::string clients_tag(int clients) { return clients == 1 ? "1client" : std::to_string(clients) + "clients"; }

Window Window::from_now(const Plan& plan) {
  Clock::time_point start = Clock::now();
  return Window{start, start + plan.warmup, start + plan.warmup + plan.measure};
}

void print_round(const RoundProgress& style, const std::string& label, int round, int rounds, double rate,
                 const std::string& remarks) {
  std::fprintf(stderr, "%.*s:   %-*s round %d/%d: %10.0f %.*s%s\n", static_cast<int>(style.program.size()),
               style.program.data(), style.label_width, label.c_str(), round + 1, rounds, rate,
               static_cast<int>(style.rate_unit.size()), style.rate_unit.data(), remarks.c_str());
}

void print_verdicts(const Report& report, std::string_view program, int unit_width, std::string_view unjudged) {
  const std::string unjudged_text(unjudged);
  for (const auto& r : report.results()) {
    if (!r.target) continue;
    auto measure = target_measure(r);
    auto met = meets_target(r);
    const char* of = r.target->of == Target::Of::kPeer    ? "of peer"
                     : r.target->of == Target::Of::kLimit ? "of limit"
                                                          : "";
    std::fprintf(stderr, "%.*s: %-34s %12.2f %-*s %8.2f %-8s: %s\n", static_cast<int>(program.size()), program.data(),
                 r.name.c_str(), r.value, unit_width, r.unit.c_str(), measure.value_or(NAN), of,
                 !met ? unjudged_text.c_str() : *met ? "target met" : "TARGET MISSED");
  }
}

}  // namespace djinn::bench
