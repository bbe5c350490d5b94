// The client side of the space: SpaceClient speaks the space protocol to one djinn-space (entries,
// large values streamed with bounded memory, entry leases), TxnClient speaks to a transaction
// manager (txn.*). Replies are untrusted input: a malformed one becomes an error status.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "djinn/core/events.h"
#include "djinn/core/model.h"
#include "djinn/core/rpc.h"
#include "djinn/core/txn.h"
#include "djinn/lease/client.h"
#include "djinn/space/space.h"
#include "djinn/space/values.h"

namespace djinn::space {

// An entry written: its lease and where to renew or cancel it.
struct WriteReceipt {
  Written written;
  std::string landlord;
  lease::HeldLease held_lease() const;
};

struct NotifyHandle {
  uint64_t id = 0;
  int64_t expiration_ms = 0;
  std::string event_kind;
  std::string events_endpoint;
  std::string landlord;
};

struct RemoteStats {
  uint64_t entries = 0, values = 0, chunks = 0, chunk_bytes = 0, waiters = 0, in_doubt = 0;
  uint64_t manifest_bytes = 0, max_value_bytes = 0;  // 0 from older spaces; max 0: no limit
};

// Where put_value reads from: fills up to `max` bytes at `out`, returns how many (0: the end), or
// an error.
using ValueReader = std::function<Result<size_t>(uint8_t* out, size_t max)>;
// Where get_value writes to, chunk after chunk in order.
using ValueWriter = std::function<Status(std::span<const uint8_t> bytes)>;

struct ValueTransfer {
  size_t chunk_bytes = kDefaultChunkBytes;
  int in_flight = 4;  // chunk calls outstanding at once (1..64): memory is in_flight * chunk_bytes
  std::chrono::milliseconds call_timeout{60000};
};

// Typed calls of the space protocol. write and the takes carry a fresh idempotency key, so a call
// resent over a lost connection is applied once; reads are idempotent. Thread-safe.
class SpaceClient {
 public:
  // `holder`: the holder of the leases of the entries this client writes (an application's id, so
  // that lease.holderLeases and lease.cancelHolder at the space find its entries); empty: each
  // entry's type.
  explicit SpaceClient(rpc::ClientOptions options, std::string holder = {});
  ~SpaceClient();

  Result<WriteReceipt> write(const Entry& entry, int64_t duration_ms = lease::kDurationAny,
                             const std::optional<TxnRef>& txn = std::nullopt, rpc::CallOptions call = {});
  // Several entries in one call and one durable transaction (at most kMaxWriteMany, and at most a
  // call's size encoded, kMaxCallBytes less a little: RESOURCE_EXHAUSTED otherwise), each written
  // or refused on its own:
  // the call's status, then one outcome per entry in order.
  Result<std::vector<Result<WriteReceipt>>> write_many(std::span<const Entry> entries,
                                                       int64_t duration_ms = lease::kDurationAny,
                                                       const std::optional<TxnRef>& txn = std::nullopt,
                                                       rpc::CallOptions call = {});
  // Blocking forms wait up to `timeout` (the call's own timeout is stretched to cover it).
  Result<std::optional<Entry>> read(const Template& tmpl, std::chrono::milliseconds timeout,
                                    const std::optional<TxnRef>& txn = std::nullopt, rpc::CallOptions call = {});
  Result<std::optional<Entry>> take(const Template& tmpl, std::chrono::milliseconds timeout,
                                    const std::optional<TxnRef>& txn = std::nullopt, rpc::CallOptions call = {});
  Result<std::optional<Entry>> read_if_exists(const Template& tmpl, const std::optional<TxnRef>& txn = std::nullopt,
                                              rpc::CallOptions call = {});
  Result<std::optional<Entry>> take_if_exists(const Template& tmpl, const std::optional<TxnRef>& txn = std::nullopt,
                                              rpc::CallOptions call = {});
  Result<std::vector<Entry>> take_many(const Template& tmpl, size_t max, std::chrono::milliseconds timeout = {},
                                       const std::optional<TxnRef>& txn = std::nullopt, rpc::CallOptions call = {});
  Result<ContentsPage> contents(const Template& tmpl, uint64_t cursor, size_t max,
                                const std::optional<TxnRef>& txn = std::nullopt, rpc::CallOptions call = {});
  // Every match, page by page (`page` entries per call).
  Result<std::vector<Entry>> contents_all(const Template& tmpl, size_t page = 1000, rpc::CallOptions call = {});
  Result<NotifyHandle> notify(const Template& tmpl, int64_t duration_ms, const std::string& holder = "",
                              rpc::CallOptions call = {});
  Result<RemoteStats> stats(rpc::CallOptions call = {});

  // Large values: streamed in chunks with several calls in flight; memory stays bounded by the
  // transfer's window whatever the size. get_value checks every chunk against its hash.
  Result<ContentHash> put_value(const ValueReader& read, ValueTransfer transfer = {});
  Result<ContentHash> put_value(std::span<const uint8_t> bytes, ValueTransfer transfer = {});
  Status get_value(const ContentHash& value_id, const ValueWriter& write, ValueTransfer transfer = {});
  Result<Manifest> get_manifest(const ContentHash& value_id, rpc::CallOptions call = {});
  Result<bool> put_chunk(const ContentHash& hash, std::span<const uint8_t> data, rpc::CallOptions call = {});
  Status get_chunk(const ContentHash& hash, std::vector<uint8_t>& out, rpc::CallOptions call = {});
  // Stores several chunks, many a call (up to 10,000 or what a call carries): one outcome each,
  // in order (true: newly stored), each checked against `hashes` when given (one per chunk).
  Result<std::vector<Result<bool>>> put_chunks(std::span<const std::span<const uint8_t>> chunks,
                                               std::span<const ContentHash> hashes = {}, rpc::CallOptions call = {});
  // Fetches the chunks named `hashes`, many a call (as many as fit in 8 MiB): `deliver` gets each
  // stored one, checked against its name, in order. NOT_FOUND (after delivering the others) names
  // the first chunk the space does not store; DATA_LOSS for one that is not what its name says.
  Status get_chunks(std::span<const ContentHash> hashes,
                    const std::function<Status(const ContentHash& hash, std::span<const uint8_t> data)>& deliver,
                    rpc::CallOptions call = {});
  // Which of `hashes` the space stores, in order (a call per 10,000): what a writer need not send
  // again, e.g. the pages of a checkpoint that an earlier one or a pre-copy round already stored.
  Result<std::vector<bool>> has_chunks(std::span<const ContentHash> hashes, rpc::CallOptions call = {});
  // A value made of chunks the space already stores (put_chunk, or an earlier value's), `size`
  // bytes in all; returns its id. NOT_FOUND names the first chunk missing.
  Result<ContentHash> put_manifest(uint64_t size, std::span<const ContentHash> chunks, rpc::CallOptions call = {});

  // Entry and notify leases, through the lease protocol on the same port.
  Result<lease::HeldLease> renew(uint64_t lease_id, int64_t duration_ms, rpc::CallOptions call = {});
  Status cancel(uint64_t lease_id, rpc::CallOptions call = {});

  rpc::Client& rpc();
  const std::string& endpoint() const;

 private:
  Result<std::vector<Entry>> match(const char* method, const Template& tmpl, std::chrono::milliseconds timeout,
                                   size_t max, const std::optional<TxnRef>& txn, rpc::CallOptions call, bool idempotent);

  rpc::ClientOptions options_;
  std::string holder_;
  std::unique_ptr<rpc::Client> client_;
  std::once_flag leases_once_;
  std::unique_ptr<lease::LeaseClient> leases_;
};

// contents() as an iterator: fetches a page at a time as it goes (entries written after it started
// and before its cursor reaches them are seen too, in write order).
class ContentsIterator {
 public:
  ContentsIterator(SpaceClient& client, Template tmpl, size_t page = 1000, std::optional<TxnRef> txn = std::nullopt);
  // The next match, nullopt at the end.
  Result<std::optional<Entry>> next();

 private:
  SpaceClient& client_;
  Template tmpl_;
  size_t page_;
  std::optional<TxnRef> txn_;
  std::vector<Entry> buffer_;
  size_t at_ = 0;
  uint64_t cursor_ = 0;
  bool done_ = false;
};

// The payload of a "space.notify.<ref>" event (notify_event_kind): the entry that became visible.
Result<Entry> decode_notify_event(const events::Event& event);

// Typed calls of a transaction manager (txn.*). Thread-safe.
class TxnClient {
 public:
  explicit TxnClient(rpc::ClientOptions options);
  ~TxnClient();

  Result<TxnRef> create(std::chrono::milliseconds lease, rpc::CallOptions call = {});
  // Runs 2PC over every participant that joined; kCommitted or kAborted.
  Result<txn::Outcome> commit(const txn::TxnId& id, rpc::CallOptions call = {});
  Status abort(const txn::TxnId& id, rpc::CallOptions call = {});
  Status renew(const txn::TxnId& id, std::chrono::milliseconds lease, rpc::CallOptions call = {});
  Result<txn::Outcome> outcome(const txn::TxnId& id, rpc::CallOptions call = {});
  // Enlists a participant ("<kind>:<id>@<rpc endpoint>", serving participant.*) in an active
  // transaction; joining twice is a no-op. Needs the service role: a node joining a migration's
  // transaction as its source or destination, say. `incarnation`: the participant's run, new at
  // each of its starts (0: not given); a join under another one than before aborts the
  // transaction, since the participant lost what it did under it.
  Status join(const txn::TxnId& id, std::string_view participant, uint64_t incarnation = 0,
              rpc::CallOptions call = {});

  rpc::Client& rpc();

 private:
  std::unique_ptr<rpc::Client> client_;
};

}  // namespace djinn::space
