// The discovery service (djinn-discovery, DESIGN §5): discovery on behalf of clients that cannot
// discover for themselves (the bridge's compact clients, a client on another subnet). A client
// registers interest in groups ("discovery.register", leased: renew or lose it) and receives a
// snapshot of the lookups discovered now, then "discovery.interest.<ref>" events for each lookup
// discovered or discarded; "discovery.snapshot" re-syncs after a gap in the events.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "djinn/core/events.h"
#include "djinn/core/rpc.h"
#include "djinn/discovery/manager.h"

namespace djinn::discovery {

struct DiscoveryServiceOptions {
  std::string rpc_endpoint = "tcp://127.0.0.1:*";
  std::string events_endpoint = "tcp://127.0.0.1:*";
  std::string advertise_host;  // as LookupServiceOptions::advertise_host
  // How the service itself discovers: every group (each interest filters), these means.
  DiscoveryOptions discovery;
  std::chrono::milliseconds max_interest_lease{std::chrono::minutes(5)};
  size_t max_interests = 10'000;
  std::optional<rpc::CurveServer> curve;
  security::Role plaintext_role = security::Role::kAdmin;
};

class DiscoveryService {
 public:
  static Result<std::unique_ptr<DiscoveryService>> start(DiscoveryServiceOptions options);
  ~DiscoveryService();
  DiscoveryService(const DiscoveryService&) = delete;
  DiscoveryService& operator=(const DiscoveryService&) = delete;

  const std::string& rpc_endpoint() const;
  const std::string& events_endpoint() const;
  DiscoveryManager& discovery();
  size_t interests() const;
  void stop();  // idempotent

  struct Impl;

 private:
  explicit DiscoveryService(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The client side: typed calls of "discovery.*" and the events' decoding.
struct Interest {
  uint64_t id = 0;
  std::string event_kind;
  std::string events_endpoint;
  int64_t expiration_ms = 0;
  std::vector<DiscoveredLookup> lookups;  // the snapshot (item is left empty)
  uint64_t event_seq = 0;
};

struct DiscoveryEvent {
  bool discarded = false;
  DiscoveredLookup lookup;  // item is left empty
};

class DiscoveryClient {
 public:
  explicit DiscoveryClient(rpc::ClientOptions options);
  ~DiscoveryClient();
  Result<Interest> register_interest(const std::vector<std::string>& groups, int64_t duration_ms, rpc::CallOptions call = {});
  Result<int64_t> renew(uint64_t id, int64_t duration_ms, rpc::CallOptions call = {});  // the new expiration
  Status cancel(uint64_t id, rpc::CallOptions call = {});
  Result<Interest> snapshot(uint64_t id, rpc::CallOptions call = {});  // lookups and event_seq only

 private:
  std::unique_ptr<rpc::Client> client_;
};

// INVALID_ARGUMENT when the event's payload is malformed.
Result<DiscoveryEvent> decode_discovery_event(const events::Event& event);

}  // namespace djinn::discovery
