// Transactions over RPC: TxnManager serves core's 2PC Coordinator (txn.h) as the "txn.*" methods of
// proto/space.capnp on any rpc::Server, reaching participants by name through RPC; ParticipantService
// serves one txn::Participant (a space) as "participant.*" so a coordinator elsewhere can drive it.
//
// Participant names are "<kind>:<id>@<rpc endpoint>" (a space: "space:<ServiceID>@tcp://h:p"): the
// manager calls participant.prepare/commit/abort at the endpoint after the first '@'. A coordinator's
// name is its manager's RPC endpoint, which a participant in doubt after a crash asks txn.outcome.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "djinn/core/rpc.h"
#include "djinn/core/status.h"
#include "djinn/core/txn.h"
#include "djinn/space/space.h"

namespace djinn::space {

struct TxnManagerOptions {
  std::string log_path;  // the coordinator's decision log (SQLite, owned by this manager alone)
  std::chrono::milliseconds max_lease{std::chrono::minutes(10)};
  std::optional<rpc::CurveClient> participant_curve;  // how it calls participants under CURVE
  std::chrono::milliseconds call_timeout{10000};     // each participant call
  std::chrono::milliseconds sweep_interval{500};     // expiry of transactions, phase 2 retries
  // txn.commit and txn.abort run on threads of the manager's own: a participant that does not
  // answer holds them up, never the server's workers (the space's own blocking methods).
  int threads = 4;
};

// The endpoint a participant name points at ("space:x@tcp://h:p" -> "tcp://h:p"); empty when none.
std::string participant_endpoint(std::string_view name);

class TxnManager {
 public:
  // Registers txn.create, txn.commit, txn.abort, txn.renew, txn.outcome and txn.join (service role)
  // on `server`; call before server.start(). Calls answer UNAVAILABLE until start().
  TxnManager(TxnManagerOptions options, rpc::Server& server);
  ~TxnManager();
  TxnManager(const TxnManager&) = delete;
  TxnManager& operator=(const TxnManager&) = delete;

  // Opens the log under `name` (the server's advertised RPC endpoint), recovers, and serves.
  Status start(const std::string& name);
  // A participant of this process, called directly instead of through RPC.
  void add_local(const std::string& name, txn::Participant& participant);
  // Coordinator calls for this process's own participants; UNAVAILABLE (or kUnknown) unless serving.
  Status join(const txn::TxnId& txn, std::string_view participant, uint64_t incarnation = 0);
  txn::Outcome outcome(const txn::TxnId& txn);
  // The same transactions from this process, as a coordinator that runs its own (a migrator
  // embedding a manager on its server): what txn.create, txn.renew, txn.commit and txn.abort do.
  // Participants join as they would with txn.create's TxnRef, {id, name given to start()}.
  Result<txn::TxnId> begin(std::chrono::milliseconds lease);
  Status renew(const txn::TxnId& txn, std::chrono::milliseconds lease);
  Result<txn::Outcome> commit(const txn::TxnId& txn,
                              txn::Clock::time_point deadline = txn::Clock::time_point::max());
  Status abort(const txn::TxnId& txn);
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Serves participant.prepare, participant.commit and participant.abort (service role) for
// `participant` on `server`; call before server.start().
void serve_participant(rpc::Server& server, txn::Participant& participant);

}  // namespace djinn::space
