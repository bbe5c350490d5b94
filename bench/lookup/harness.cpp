// Client threads, pipelines, loads, queries and the fan-out run of bench-lookup.
#include "harness.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <deque>
#include <mutex>
#include <thread>

#include "records.h"

namespace djinn::lookup_bench {

namespace {

// How long a subscriber waits for events in one call before it looks at the run's state again.
constexpr auto kSubscriberPoll = std::chrono::milliseconds(50);

int64_t ns_of(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

// When each operation of a pipelined worker was submitted, oldest first: a pipeline completes its
// operations in the order they were submitted.
using SubmitTimes = std::deque<Clock::time_point>;

// The step of a pipelined call that completed the oldest operation in flight, with that
// operation's latency from its submit.
Step completed(bool ok, SubmitTimes& submitted) {
  Clock::time_point t0 = submitted.front();
  submitted.pop_front();
  if (!ok) return Step::one(false);
  return Step{1, true, false, std::chrono::duration<double, std::micro>(Clock::now() - t0).count()};
}

}  // namespace

void progress(const std::string& text) {
  static std::mutex mu;
  std::lock_guard lock(mu);
  std::fprintf(stderr, "bench-lookup: %s\n", text.c_str());
}

std::string fixed(double value, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, value);
  return buf;
}

// ---------------------------------------------------------------------------------------------

ThroughputSample ThroughputSample::not_measured() {
  ThroughputSample s;
  s.unmeasured = 1;
  return s;
}

void ThroughputSample::merge(ThroughputSample&& other) {
  ops += other.ops;
  errors += other.errors;
  seconds += other.seconds;
  failed += other.failed;
  unmeasured += other.unmeasured;
  latencies_us.insert(latencies_us.end(), other.latencies_us.begin(), other.latencies_us.end());
}

double ThroughputSample::throughput() const { return valid() ? static_cast<double>(ops) / seconds : NAN; }

ThroughputSample run_clients(int clients, const Plan& plan, const MakeWorker& make_worker) {
  std::vector<ThroughputSample> per_client(static_cast<size_t>(clients));
  std::atomic<int> setup_failures{0};
  bench::run_together(clients, plan, [&](int i) {
    Worker worker = make_worker(i);
    if (!worker) setup_failures++;
    return [&s = per_client[static_cast<size_t>(i)], worker = std::move(worker)](const bench::Window& w) {
      if (!worker) return;
      for (;;) {
        Clock::time_point t0 = Clock::now();
        if (t0 >= w.until) break;
        Step step = worker();
        Clock::time_point t1 = Clock::now();
        if (step.done) break;
        if (t0 < w.measure_from) continue;
        if (!step.ok) {
          s.errors++;
          continue;
        }
        s.ops += step.ops;
        s.latencies_us.push_back(step.latency_us ? *step.latency_us
                                                 : std::chrono::duration<double, std::micro>(t1 - t0).count());
      }
    };
  });
  ThroughputSample total;
  for (ThroughputSample& s : per_client) total.merge(std::move(s));
  total.seconds = bench::seconds_of(plan.measure);
  total.failed = setup_failures.load() > 0 ? 1 : 0;
  return total;
}

// ---------------------------------------------------------------------------------------------

std::optional<uint64_t> ItemCounter::take() {
  uint64_t n = next_.fetch_add(1);
  if (n >= end_) return std::nullopt;
  return n;
}

Worker pipelined(std::shared_ptr<Pipeline> pipeline, ItemCounter& items, size_t depth) {
  auto exhausted = std::make_shared<bool>(false);
  auto submitted = std::make_shared<SubmitTimes>();
  return [pipeline, &items, depth, exhausted, submitted]() {
    while (!*exhausted && pipeline->in_flight() < depth) {
      std::optional<uint64_t> n = items.take();
      if (!n) {
        *exhausted = true;
        break;
      }
      Clock::time_point t = Clock::now();
      if (!pipeline->submit(*n)) return Step::one(false);
      submitted->push_back(t);
    }
    if (pipeline->in_flight() == 0) return Step{0, true, true, std::nullopt};
    return completed(pipeline->complete_one(), *submitted);
  };
}

Worker pipelined_lookups(std::shared_ptr<LookupPipeline> pipeline, std::shared_ptr<QueryStream> queries,
                         size_t depth) {
  auto submitted = std::make_shared<SubmitTimes>();
  return [pipeline, queries, depth, submitted]() {
    while (pipeline->in_flight() < depth) {
      Clock::time_point t = Clock::now();
      if (!pipeline->submit(queries->next())) return Step::one(false);
      submitted->push_back(t);
    }
    return completed(pipeline->complete_one(), *submitted);
  };
}

// ---------------------------------------------------------------------------------------------

LoadSample LoadSample::not_measured() {
  LoadSample s;
  s.measured = false;
  return s;
}

double LoadSample::rate() const { return valid() ? static_cast<double>(items) / seconds : NAN; }

LoadSample run_load(int clients, uint64_t total, const MakeWorker& make_worker, const std::string& label) {
  std::atomic<uint64_t> done{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<int> setup_failures{0};
  std::atomic<bool> finished{false};
  // A line at each tenth of the load, from a thread of its own so the workers never wait on it.
  std::thread reporter([&] {
    uint64_t next_tenth = 1;
    while (!finished.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      uint64_t d = done.load();
      if (total > 0 && next_tenth < 10 && d * 10 >= next_tenth * total) {
        progress("  " + label + ": " + std::to_string(d) + "/" + std::to_string(total) + " items");
        next_tenth = d * 10 / total + 1;
      }
    }
  });
  // The window only starts the threads together; a load runs to completion however long it takes.
  const Plan unbounded{Clock::duration::zero(), std::chrono::hours(24), 1};
  bench::Window window = bench::run_together(clients, unbounded, [&](int i) {
    Worker worker = make_worker(i);
    if (!worker) setup_failures++;
    return [&, worker = std::move(worker)](const bench::Window&) {
      if (!worker) return;
      for (;;) {
        Step step = worker();
        if (step.done) break;
        if (!step.ok) errors++;
        done += step.ops;
      }
    };
  });
  LoadSample s;
  s.items = done.load();
  s.seconds = bench::seconds_of(Clock::now() - window.start);
  finished.store(true);
  reporter.join();
  if (setup_failures.load() > 0) {
    s.error = std::to_string(setup_failures.load()) + " client(s) could not be set up";
  } else if (errors.load() > 0 || s.items < total) {
    s.error = std::to_string(errors.load()) + " registrations failed; " + std::to_string(s.items) + " of " +
              std::to_string(total) + " made";
  }
  return s;
}

// ---------------------------------------------------------------------------------------------

bool answers(LookupKind kind, const Query& q, const ServiceItem& item) {
  return matches(kind == LookupKind::kByType ? type_template(q.kind) : name_template(q.item), item);
}

std::string index_prefix(LookupKind kind, const Query& q) {
  return kind == LookupKind::kByType ? type_prefix(kind_type(q.kind))
                                     : attribute_prefix(kNameType, "name", Value(name_of(q.item)));
}

QueryStream::QueryStream(LookupKind kind, uint64_t loaded, int client)
    : kind_(kind), loaded_(std::max<uint64_t>(loaded, 1)), rng_(0x5eed0000ULL + static_cast<uint64_t>(client)) {}

const Query& QueryStream::next() {
  if (kind_ == LookupKind::kByType) {
    query_.kind = static_cast<int>(rng_() % kKinds);
    query_.mark = type_answer_mark(query_.kind);
  } else {
    query_.item = rng_() % loaded_;
    query_.mark = name_answer_mark(query_.item);
  }
  return query_;
}

// ---------------------------------------------------------------------------------------------

FanoutSample FanoutSample::not_measured() {
  FanoutSample s;
  s.unmeasured = 1;
  return s;
}

void FanoutSample::merge(FanoutSample&& other) {
  delivered += other.delivered;
  registrations += other.registrations;
  seconds += other.seconds;
  expected += other.expected;
  received += other.received;
  lag_ms.insert(lag_ms.end(), other.lag_ms.begin(), other.lag_ms.end());
  errors += other.errors;
  failed += other.failed;
  unmeasured += other.unmeasured;
}

double FanoutSample::throughput() const { return valid() ? static_cast<double>(delivered) / seconds : NAN; }

FanoutSample run_fanout(const FanoutRun& run, const Plan& plan, ItemCounter& items, const MakeSubscriber& subscriber,
                        const MakeRegistrar& registrar) {
  const uint64_t base = items.next();
  const size_t max_items = run.max_items;
  // When each registration started (steady-clock ns), set once it has succeeded; 0 otherwise.
  std::vector<std::atomic<int64_t>> started_ns(max_items);
  std::atomic<uint64_t> succeeded{0};
  std::atomic<int> writers_left{run.writers};
  std::atomic<int> setup_failures{0};
  std::atomic<int> broken{0};
  std::atomic<uint64_t> errors{0};

  struct Arrivals {
    uint64_t count = 0;      // events of this run's registrations, whenever they arrived
    uint64_t in_window = 0;  // events that arrived in the measured window
    std::vector<std::pair<uint64_t, int64_t>> lag_run;  // lag run: (item offset, arrival ns)
  };
  std::vector<Arrivals> arrivals(static_cast<size_t>(run.subscribers));

  const int threads = run.subscribers + run.writers;
  bench::Window window = bench::run_together(threads, plan, [&](int i) -> std::function<void(const bench::Window&)> {
    if (i < run.subscribers) {
      Subscriber sub = subscriber(i);
      if (!sub) setup_failures++;
      return [&, sub = std::move(sub), &mine = arrivals[static_cast<size_t>(i)]](const bench::Window& w) {
        if (!sub) return;
        std::vector<uint64_t> batch;
        const Clock::time_point give_up = w.until + run.drain;
        for (;;) {
          Clock::time_point now = Clock::now();
          if (now >= give_up) break;
          // Once the writers are done, a subscriber that has every event it is owed stops.
          if (writers_left.load() == 0 && mine.count >= succeeded.load()) break;
          batch.clear();
          if (!sub(batch, std::min(give_up, now + kSubscriberPoll))) {
            broken++;
            break;
          }
          Clock::time_point arrived = Clock::now();
          for (uint64_t n : batch) {
            if (n < base || n - base >= max_items) continue;
            mine.count++;
            if (arrived >= w.measure_from && arrived < w.until) mine.in_window++;
            if (run.measure_lag) mine.lag_run.emplace_back(n - base, ns_of(arrived));
          }
        }
      };
    }
    const int writer = i - run.subscribers;
    Registrar reg = registrar(writer);
    if (!reg) setup_failures++;
    return [&, reg = std::move(reg), writer](const bench::Window& w) {
      if (reg) {
        // Paced: writer `writer` sends its k-th registration at start + (k * writers + writer) / rate,
        // so the writers together send at the rate, evenly spaced; one that falls behind catches up.
        const double interval_s = run.rate_per_s > 0 ? 1.0 / run.rate_per_s : 0;
        for (uint64_t k = 0;; ++k) {
          if (interval_s > 0) {
            auto offset = std::chrono::duration<double>(interval_s * static_cast<double>(k * run.writers + writer));
            Clock::time_point at = w.start + std::chrono::duration_cast<Clock::duration>(offset);
            if (at >= w.until) break;
            std::this_thread::sleep_until(at);
          }
          Clock::time_point t0 = Clock::now();
          if (t0 >= w.until) break;
          std::optional<uint64_t> n = items.take();
          if (!n || *n - base >= max_items) break;
          if (reg(*n)) {
            started_ns[*n - base].store(ns_of(t0));
            succeeded++;
          } else if (t0 >= w.measure_from) {
            errors++;
          }
        }
      }
      writers_left--;
    };
  });

  FanoutSample s;
  s.seconds = bench::seconds_of(plan.measure);
  s.failed = setup_failures.load() > 0 || broken.load() > 0 ? 1 : 0;
  s.errors = errors.load();
  const int64_t from_ns = ns_of(window.measure_from);
  const int64_t until_ns = ns_of(window.until);
  auto in_window = [&](int64_t t) { return t >= from_ns && t < until_ns; };
  for (const Arrivals& a : arrivals) s.delivered += a.in_window;
  for (size_t k = 0; k < max_items; ++k) s.registrations += in_window(started_ns[k].load()) ? 1 : 0;
  if (run.measure_lag) {
    std::vector<uint32_t> received_of(max_items, 0);
    for (const Arrivals& a : arrivals) {
      for (auto [k, t] : a.lag_run) {
        int64_t started = started_ns[k].load();
        if (!in_window(started)) continue;
        s.lag_ms.push_back(static_cast<double>(t - started) / 1e6);
        received_of[k]++;
        s.received++;
      }
    }
    // An event that never came has a lag of at least the time waited for it: counted at that
    // lower bound, so the percentiles are never better than the truth.
    const int64_t end_ns = ns_of(Clock::now());
    for (size_t k = 0; k < max_items; ++k) {
      int64_t started = started_ns[k].load();
      if (!in_window(started)) continue;
      s.expected += static_cast<uint64_t>(run.subscribers);
      for (uint32_t m = received_of[k]; m < static_cast<uint32_t>(run.subscribers); ++m) {
        s.lag_ms.push_back(static_cast<double>(end_ns - started) / 1e6);
      }
    }
  }
  return s;
}

}  // namespace djinn::lookup_bench
