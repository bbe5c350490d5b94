// How bench-lookup drives every side alike: client threads running workers over one measured
// window (throughput and per-operation latency), workers that keep registrations or lookups in
// flight, the load of the item set, the queries of the lookup figures, and the fan-out run
// (registering clients and subscribers together, counting and timing every event).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "bench_run.h"
#include "djinn/core/model.h"

namespace djinn::lookup_bench {

using bench::Clock;
using bench::Plan;

// ---------------------------------------------------------------------------------------------
// Throughput runs.

// What one call of a worker did.
struct Step {
  uint64_t ops = 0;   // operations completed by this call (a pipelined call completes one of many)
  bool ok = true;
  bool done = false;  // nothing is left to do: the worker's thread stops (a load ran out of items)
  // The latency of the operation this call completed, when it is not the call's duration: a
  // pipelined call completes an operation that an earlier call submitted.
  std::optional<double> latency_us;

  static Step one(bool ok) { return ok ? Step{1, true, false, std::nullopt} : Step{0, false, false, std::nullopt}; }
};
using Worker = std::function<Step()>;
// Builds client i's worker on that client's thread before the clock starts: connections are made
// here, untimed. An empty Worker means set-up failed; the maker says why on stderr.
using MakeWorker = std::function<Worker(int i)>;

// A contender's operations per second, and the latency of each of its calls, over one round or
// the sum of several.
struct ThroughputSample {
  uint64_t ops = 0;
  uint64_t errors = 0;
  double seconds = 0;
  int failed = 0;      // rounds in which some client could not be set up
  int unmeasured = 0;  // rounds of a side that does not measure this figure (yet)
  std::vector<double> latencies_us;  // every successful call started in the measured window

  // What a side returns for a figure it does not measure: null in the JSON.
  static ThroughputSample not_measured();
  void merge(ThroughputSample&& other);
  bool valid() const { return unmeasured == 0 && failed == 0 && seconds > 0; }
  // Operations per second; NaN unless valid().
  double throughput() const;
};

// `clients` threads, each running its worker in a loop; what calls started in the measured window
// complete is counted, and each successful call gives a latency sample: its Step's latency_us, or
// else the call's duration.
ThroughputSample run_clients(int clients, const Plan& plan, const MakeWorker& make_worker);

// ---------------------------------------------------------------------------------------------
// Items and registrations in flight.

// Hands out item numbers in [first, end), each once, to the clients of a run. Each side has its
// own, so every side registers the same items.
class ItemCounter {
 public:
  explicit ItemCounter(uint64_t first, uint64_t end = UINT64_MAX) : next_(first), end_(end) {}
  std::optional<uint64_t> take();
  uint64_t next() const { return next_.load(); }

 private:
  std::atomic<uint64_t> next_;
  uint64_t end_;
};

// One client's registrations kept in flight without waiting for each answer (several connections,
// or an asynchronous client). Destroying it waits for what is still in flight.
class Pipeline {
 public:
  virtual ~Pipeline() = default;
  // Sends the registration of item `item`; false when it could not be sent.
  virtual bool submit(uint64_t item) = 0;
  // Waits for the oldest registration in flight to be answered; its success.
  virtual bool complete_one() = 0;
  virtual size_t in_flight() const = 0;
};

// A worker that tops `pipeline` up to `depth` registrations of items from `items`, then completes
// one per call (one op, and its latency sample is from that registration's submit to its
// completion). Done when the items have run out and nothing is in flight.
Worker pipelined(std::shared_ptr<Pipeline> pipeline, ItemCounter& items, size_t depth);

// ---------------------------------------------------------------------------------------------
// The load of the item set.

struct LoadSample {
  uint64_t items = 0;
  double seconds = 0;
  bool measured = true;
  std::string error;  // why the load failed; empty when it succeeded

  static LoadSample not_measured();
  bool valid() const { return measured && error.empty() && seconds > 0; }
  double rate() const;  // items per second; NaN unless valid()
};

// Runs `clients` workers until every one is done, with a progress line on stderr at each tenth of
// `total` operations.
LoadSample run_load(int clients, uint64_t total, const MakeWorker& make_worker, const std::string& label);

// ---------------------------------------------------------------------------------------------
// The lookup figures' queries: the same sequence for every side, per client.

enum class LookupKind { kByType, kByAttribute };

struct Query {
  int kind = 0;       // by type: the kind looked up (kind_type(kind))
  uint64_t item = 0;  // by attribute: the item whose name is looked up (name_template(item))
  std::string mark;   // what the answer must contain (type_answer_mark, name_answer_mark)
};

// Whether `item` answers query `q` of a lookup of `kind`: it matches the query's template
// (type_template or name_template). For a side whose answers are items rather than JSON.
bool answers(LookupKind kind, const Query& q, const ServiceItem& item);
// Where a key-value side (records.h's layout) lists the answers of query `q` of a lookup of
// `kind`: type_prefix or attribute_prefix, ending in '/'.
std::string index_prefix(LookupKind kind, const Query& q);

// Client i's queries: by type, a kind drawn at random for each lookup; by attribute, the name of a
// loaded item drawn at random. Seeded by the client's number, so every side gets the same queries.
class QueryStream {
 public:
  QueryStream(LookupKind kind, uint64_t loaded, int client);
  const Query& next();

 private:
  LookupKind kind_;
  uint64_t loaded_;
  std::mt19937_64 rng_;
  Query query_;
};

// One client's lookups kept in flight without waiting for each answer.
class LookupPipeline {
 public:
  virtual ~LookupPipeline() = default;
  // Sends a lookup for query `q` (the pipeline keeps what it needs of q to check the answer);
  // false when it could not be sent.
  virtual bool submit(const Query& q) = 0;
  // Waits for the oldest lookup in flight; true when it succeeded and its answer holds its query's mark.
  virtual bool complete_one() = 0;
  virtual size_t in_flight() const = 0;
};
// A worker that tops `pipeline` up to `depth` lookups of the queries of `queries`, then completes
// one per call (one op, and its latency sample is from that lookup's submit to its completion).
Worker pipelined_lookups(std::shared_ptr<LookupPipeline> pipeline, std::shared_ptr<QueryStream> queries, size_t depth);

// ---------------------------------------------------------------------------------------------
// Fan-out: registering clients and subscribers together.

struct FanoutRun {
  int subscribers = 100;
  int writers = 16;
  // Registrations per second over all writers; 0: as fast as the writers go (the throughput run).
  double rate_per_s = 0;
  // With a rate: each event's lag from its registration's start is recorded (the lag run).
  bool measure_lag = false;
  // At most this many registrations in one round (bounds the bookkeeping).
  size_t max_items = 200'000;
  // How long after the window subscribers may take to receive what was registered in it.
  std::chrono::milliseconds drain{2000};
};

// Subscriber i of a fan-out run, made on its own thread before the run starts and subscribed by
// then. Each call waits at most until `until` for events and appends the numbers of the items
// whose registrations they announce (any number, none on a timeout); false when the subscription
// broke.
using Subscriber = std::function<bool(std::vector<uint64_t>& items, Clock::time_point until)>;
using MakeSubscriber = std::function<Subscriber(int i)>;
// Writer i of a fan-out run: registers item `item` durably; false on failure.
using Registrar = std::function<bool(uint64_t item)>;
using MakeRegistrar = std::function<Registrar(int i)>;

struct FanoutSample {
  uint64_t delivered = 0;      // events that arrived in the measured window, over all subscribers
  uint64_t registrations = 0;  // registrations started in the window that succeeded
  double seconds = 0;
  uint64_t expected = 0;  // lag run: subscribers × registrations started in the window
  uint64_t received = 0;  // lag run: of those events, how many arrived before the drain ended
  std::vector<double> lag_ms;  // lag run: one per expected event; a missing one at its lower bound
  uint64_t errors = 0;
  int failed = 0;
  int unmeasured = 0;

  static FanoutSample not_measured();
  void merge(FanoutSample&& other);
  bool valid() const { return unmeasured == 0 && failed == 0 && seconds > 0; }
  double throughput() const;  // events delivered per second; NaN unless valid()
};

// Subscribers and writers start together on one window; item numbers come from `items`.
FanoutSample run_fanout(const FanoutRun& run, const Plan& plan, ItemCounter& items, const MakeSubscriber& subscriber,
                        const MakeRegistrar& registrar);

// Prints "bench-lookup: <text>" on stderr, whole lines even from several threads.
void progress(const std::string& text);
// `value` with `decimals` digits after the point, for progress lines and notes.
std::string fixed(double value, int decimals);

}  // namespace djinn::lookup_bench
