// The etcd side of bench-lookup: the records of records.h as etcd users lay them out (the item
// under /svc/<sid>, empty index keys under /type/ and /attr/), driven through etcd's grpc-gateway
// (HTTP/1.1 + JSON) over kept-alive connections, one etcd member started for the run.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "djinn/core/model.h"
#include "djinn/core/status.h"
#include "etcd_server.h"
#include "http_client.h"
#include "side.h"

namespace djinn::lookup_bench {

// One kept-alive connection to the gateway.
class EtcdRecordClient {
 public:
  static Result<EtcdRecordClient> connect(uint16_t port);

  // A durable registration: one txn putting the item and all its index keys (item_paths), which
  // etcd commits through raft and fsyncs to its WAL before it answers.
  Status register_item(const ServiceItem& item);
  // The two halves of register_item, for a client that keeps several in flight on several
  // connections.
  Status send_registration(const ServiceItem& item);
  Status read_registration();

  // The JSON of the first item whose index keys lie under `prefix` (type_prefix or
  // attribute_prefix): a range on the prefix with limit 1 and keys_only, then a get of
  // /svc/<sid>. Both reads are serializable (see the run's notes). not_found when nothing matches.
  Result<std::string> first_item_under(std::string_view prefix);
  // The two round trips of first_item_under, each in two halves, for a client that keeps several
  // lookups in flight on several connections: send_range, read_range (the sid of the first index
  // key under the prefix), send_get of that sid, read_get (the item's JSON).
  Status send_range(std::string_view prefix);
  Result<std::string> read_range();
  Status send_get(std::string_view sid);
  Result<std::string> read_get();

 private:
  explicit EtcdRecordClient(bench::HttpConnection http) : http_(std::move(http)) {}
  bench::HttpConnection http_;
  std::string body_;  // reused for every request
};

// A watch on every key under a prefix, over a connection of its own: the gateway streams the
// watch's messages as newline-separated JSON in a chunked response.
class EtcdWatcher {
 public:
  // Returns once etcd has confirmed the watch (its "created" message).
  static Result<EtcdWatcher> watch(uint16_t port, std::string_view prefix);

  // Waits at most `wait` for the watch's next messages and appends the item number of each put of
  // /svc/<sid> they carry; false when nothing came.
  Result<bool> next(std::vector<uint64_t>& items, std::chrono::milliseconds wait);

 private:
  explicit EtcdWatcher(bench::HttpConnection http) : http_(std::move(http)) {}
  // Takes the complete messages out of pending_ and their events' item numbers into `items`.
  void take_events(std::vector<uint64_t>& items);

  bench::HttpConnection http_;
  std::string pending_;  // the stream's bytes not yet split into messages
};

class EtcdSide : public Side {
 public:
  explicit EtcdSide(const bench::EtcdServer& server) : port_(server.client_port()), pid_(server.pid()) {}

  std::string name() const override { return "etcd"; }
  pid_t server_pid() const override { return pid_; }
  LoadSample load(uint64_t count) override;
  ThroughputSample registrations(ItemCounter& items, int clients, int in_flight, const Plan& plan) override;
  ThroughputSample lookups(LookupKind kind, uint64_t loaded, int clients, int in_flight, const Plan& plan) override;
  FanoutSample fanout(const FanoutRun& run, ItemCounter& items, const Plan& plan) override;

 private:
  // Client i's worker keeping `in_flight` registrations of `items` in flight, one connection each.
  Worker registering(ItemCounter& items, int in_flight);
  // Client i's worker of lookups: blocking with in_flight 1, else `in_flight` lookups in flight,
  // one connection each.
  Worker looking_up(LookupKind kind, uint64_t loaded, int i, int in_flight);

  uint16_t port_;
  pid_t pid_;
};

}  // namespace djinn::lookup_bench
