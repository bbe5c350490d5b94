// One side of bench-lookup's comparison: a store of service items (the djinn registrar, etcd,
// ZooKeeper) with its clients. Each figure is one call, run once per round; a side that does not
// measure a figure returns a sample marked not measured, which the JSON shows as null.
#pragma once

#include <sys/types.h>

#include <string>

#include "harness.h"

namespace djinn::lookup_bench {

class Side {
 public:
  virtual ~Side() = default;

  // How progress lines and notes call the side.
  virtual std::string name() const = 0;
  // The server's process when it runs in a child of this one, so that it can be paused during the
  // other sides' rounds; 0 when there is none.
  virtual pid_t server_pid() const { return 0; }

  // Registers items [0, count) (bench_item) durably, the fastest way the side's clients offer;
  // what the lookups then run against. Progress goes to stderr.
  virtual LoadSample load(uint64_t count) = 0;

  // Durable registrations of new items taken from `items`, by `clients` clients each keeping
  // `in_flight` registrations in flight (1: one blocking call at a time).
  virtual ThroughputSample registrations(ItemCounter& items, int clients, int in_flight, const Plan& plan) = 0;

  // Lookups of one item by type (type_template) or by attribute (name_template), `clients`
  // clients each keeping `in_flight` lookups in flight (1: one blocking lookup at a time; more:
  // pipelined_lookups over a LookupPipeline), the queries of QueryStream(kind, loaded, i). A lookup
  // counts when its answer holds the query's mark.
  virtual ThroughputSample lookups(LookupKind kind, uint64_t loaded, int clients, int in_flight,
                                   const Plan& plan) = 0;

  // Registrations of new items from `items` announced to run.subscribers subscribers (run_fanout).
  virtual FanoutSample fanout(const FanoutRun& run, ItemCounter& items, const Plan& plan) = 0;
};

}  // namespace djinn::lookup_bench
