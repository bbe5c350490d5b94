// The object space service (djinn-space) in one object: a Space and its ValueStore over RPC
// ("space.*"), the lease protocol ("lease.*") for entry and notify leases, the participant side of
// 2PC ("participant.*"), optionally the transaction manager ("txn.*"), and one event socket for the
// notify and lease events. The daemon's main and the tests use it alike.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "djinn/core/model.h"
#include "djinn/core/rpc.h"
#include "djinn/lease/landlord.h"
#include "djinn/space/space.h"
#include "djinn/space/values.h"

namespace djinn::space {

struct SpaceServiceOptions {
  // Holds space.db (entries, notify registrations, their leases, the participant log), values/
  // (chunks and manifests), txn.db (the manager's decision log) and service-id. Required.
  std::string data_dir;
  std::string rpc_endpoint = "tcp://127.0.0.1:*";
  std::string events_endpoint = "tcp://127.0.0.1:*";
  std::string advertise_host;
  std::string name = "space";
  lease::Policy policy;  // entry and notify leases
  size_t max_entry_bytes = 64 * 1024;
  size_t max_entries = 10'000'000;
  bool txn_manager = true;  // also serve txn.* (a transaction manager) on the same port
  std::optional<rpc::CurveServer> curve;
  security::Role plaintext_role = security::Role::kAdmin;
  // How the space calls transaction managers and the manager calls participants under CURVE.
  std::optional<rpc::CurveClient> client_curve;
  // How long an operation under a transaction waits for its manager to take the space's join;
  // past it the operation fails DEADLINE_EXCEEDED and changes nothing.
  std::chrono::milliseconds join_timeout{3000};
  // How long the transaction manager waits for a participant's prepare, commit or abort.
  std::chrono::milliseconds participant_timeout{10000};
  int workers = 4;
  std::chrono::milliseconds value_grace{std::chrono::minutes(10)};
  std::chrono::milliseconds value_gc_interval{std::chrono::seconds(30)};
  uint64_t max_value_bytes = 0;  // chunks and manifests held (ValueStoreOptions::max_bytes; 0: no limit)
};

class SpaceService {
 public:
  static Result<std::unique_ptr<SpaceService>> start(SpaceServiceOptions options);
  ~SpaceService();
  SpaceService(const SpaceService&) = delete;
  SpaceService& operator=(const SpaceService&) = delete;

  const std::string& rpc_endpoint() const;
  const std::string& events_endpoint() const;
  const ServiceId& service_id() const;
  // "space:<ServiceID>@<rpc endpoint>": the name under which it joins transactions.
  const std::string& participant_name() const;
  Space& space();
  ValueStore& values();
  lease::Landlord& landlord();
  // The item it registers in lookup.
  ServiceItem item() const;
  void stop();

 private:
  struct Impl;
  explicit SpaceService(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace djinn::space
