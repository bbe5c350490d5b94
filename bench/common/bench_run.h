// How benchmarks run their contenders: a plan of warm-up, measured time and rounds (set by the
// common --rounds and --measure flags), client threads started together on one measured window,
// contenders interleaved round by round, and the verdicts on the targets.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <latch>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "bench_json.h"
#include "djinn/core/config.h"

namespace djinn::bench {

using Clock = std::chrono::steady_clock;

struct Plan {
  Clock::duration warmup;
  Clock::duration measure;  // per round
  int rounds;
};

// Declares --rounds and --measure, whose 0 stands for `quick`'s value with --quick and `full`'s
// without; the program declares --quick itself.
void add_plan_flags(Config& cfg, const Plan& quick, const Plan& full);
// The plan the parsed flags ask for.
Plan plan_from_flags(const Config& cfg, const Plan& quick, const Plan& full);

double seconds_of(Clock::duration d);
int64_t ms_of(Clock::duration d);

// "1client" or "16clients", as figure names spell a client count.
std::string clients_tag(int clients);

// One run's measured part: what starts (or arrives) in [measure_from, until) is counted, after a
// warm-up from `start`.
struct Window {
  Clock::time_point start;
  Clock::time_point measure_from;
  Clock::time_point until;

  static Window from_now(const Plan& plan);
};

// Starts `clients` threads. Each first calls set_up(i), which makes its connections untimed and
// returns the body to run; once every thread is set up, the window opens and each body runs with
// it. Returns the window after every thread has finished.
template <class SetUp>
Window run_together(int clients, const Plan& plan, SetUp set_up) {
  std::latch ready(clients);
  std::latch go(1);
  Window window;  // written before `go` opens, read only after
  std::vector<std::thread> threads;
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back([&, i] {
      auto body = set_up(i);
      ready.count_down();
      go.wait();
      body(window);
    });
  }
  ready.wait();
  window = Window::from_now(plan);
  go.count_down();
  for (auto& t : threads) t.join();
  return window;
}

template <class Sample>
struct Contender {
  std::string label;  // for progress lines
  std::function<Sample(const Plan&)> run;
  Sample total;
};

// How run_side_by_side reports each run on stderr:
// "<program>:   <label> round <i>/<n>: <rate> <rate_unit><remarks>".
struct RoundProgress {
  std::string_view program;
  int label_width;
  std::string_view rate_unit;
};

void print_round(const RoundProgress& style, const std::string& label, int round, int rounds, double rate,
                 const std::string& remarks);

// Runs every contender once per round, alternating the order, so a change in the machine's load
// during the run falls on all of them alike. Each run is reported with remarks(sample) (what went
// wrong in it, or nothing), then its sample joins the contender's total.
template <class Sample, class Remarks>
void run_side_by_side(const std::vector<Contender<Sample>*>& contenders, const Plan& plan, const RoundProgress& style,
                      Remarks remarks) {
  for (int round = 0; round < plan.rounds; ++round) {
    std::vector<Contender<Sample>*> order = contenders;
    if (round % 2 == 1) std::reverse(order.begin(), order.end());
    for (Contender<Sample>* c : order) {
      Sample s = c->run(plan);
      print_round(style, c->label, round, plan.rounds, s.throughput(), remarks(s));
      c->total.merge(std::move(s));
    }
  }
}

// One line on stderr for each figure with a target: its value, the measure the target bounds and
// whether it is met, or `unjudged` when that cannot be told. The unit column is `unit_width` wide.
void print_verdicts(const Report& report, std::string_view program, int unit_width, std::string_view unjudged);

}  // namespace djinn::bench
