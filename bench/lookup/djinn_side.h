// The djinn side of bench-lookup: the registrar (DESIGN §5) over RPC, measured on the same items,
// queries and runs as etcd and ZooKeeper; its figures are the primary values of the JSON (etcd's
// are the peers). The registrar (LookupService: the same object djinn-lookup runs) serves from
// this process on its own threads, over real ZeroMQ sockets on 127.0.0.1, its data in SQLite
// files in the run's directory; its clients are RegistrarClients and raw asynchronous RPC calls.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "djinn/core/status.h"
#include "side.h"

namespace djinn::lookup_bench {

class DjinnSide : public Side {
 public:
  // Starts the registrar for the run with its data (SQLite) in `data_dir`, a temporary directory
  // on the same file system as the peers' data, removed after the run. The registrar may run in
  // this process on its own threads (server_pid() stays 0), or as a child process (return its pid
  // from server_pid() so that it is paused during the peers' rounds, as they are during its).
  static Result<std::unique_ptr<DjinnSide>> start(const std::string& data_dir);
  ~DjinnSide() override;

  std::string name() const override { return "djinn"; }

  // FIGURE load_registrations_per_s: register bench_item(k) for k in [0, count), durably, the
  // fastest way the client offers (the peers use 16 clients with 8 registrations in flight each:
  // run_load with pipelined workers over an ItemCounter(0, count)).
  LoadSample load(uint64_t count) override;

  // FIGURES registrations_per_s_16clients (in_flight 1) and registrations_per_s_16clients_8inflight
  // (in_flight 8): durable registrations of bench_item(n) for n from `items`. Run with
  // run_clients(clients, plan, ...) and, per client, pipelined(pipeline, items, in_flight) over a
  // Pipeline whose submit() sends one registration and complete_one() awaits the oldest.
  ThroughputSample registrations(ItemCounter& items, int clients, int in_flight, const Plan& plan) override;

  // FIGURES lookups_by_type_per_s_* / lookups_by_attribute_per_s_* and the lookup latencies (from
  // the 1-client runs): run_clients(clients, plan, ...), each client a blocking lookup (Jini's
  // lookup returning one item) of the next query of QueryStream(kind, loaded, i):
  // type_template(q.kind) or name_template(q.item). A call counts (Step::one(true)) when the item
  // returned answers the query: answers(kind, q, item).
  ThroughputSample lookups(LookupKind kind, uint64_t loaded, int clients, int in_flight, const Plan& plan) override;

  // FIGURES fanout_events_per_s_<n>subscribers (run.rate_per_s 0) and
  // fanout_lag_p50_ms_<n>subscribers, fanout_lag_p99_ms_<n>subscribers (a paced run):
  // run_fanout(run, plan, items, subscriber, registrar). Subscriber i registers a notify for
  // {interfaceTypes: [kServiceType]} (every new item matches; transition nomatch→match) and
  // returns, per call, the item numbers (item_number(serviceId)) of the events that came by
  // `until`; registrar i registers bench_item(n) and returns once it is durable.
  FanoutSample fanout(const FanoutRun& run, ItemCounter& items, const Plan& plan) override;

  // How the registrar and its clients were run, for the JSON's notes.
  std::vector<std::string> notes() const;

 private:
  struct State;
  explicit DjinnSide(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace djinn::lookup_bench
