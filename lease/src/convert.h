// Conversions between the engine's types (landlord.h) and the wire schema (proto/lease.capnp),
// shared by the service, the client and the renewal service. Readers of untrusted messages
// validate here, so every edge rejects the same inputs with the same messages.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "djinn/core/model.h"
#include "djinn/core/status.h"
#include "djinn/lease/landlord.h"
#include "djinn/proto/lease.capnp.h"

namespace djinn::lease::internal {

// Items in one renewBatch / cancelBatch request; larger batches are refused (RESOURCE_EXHAUSTED).
inline constexpr size_t kMaxBatchItems = 10'000;
// A landlord endpoint as carried in a Lease (tcp://host:port, ipc://path, inproc://name).
inline constexpr size_t kMaxEndpointBytes = 1024;
// Longest wait a grant may ask for: a waiting grant holds a reply open, not a thread, but an
// unbounded wait would hold it forever.
inline constexpr int64_t kMaxWaitMs = 24LL * 3600 * 1000;

proto::LeaseKind kind_to_proto(Kind kind);
// nullopt for a value outside the enum (a newer or hostile peer).
std::optional<Kind> kind_from_proto(proto::LeaseKind kind);

// "lease.granted", "lease.renewed", ...: the event kinds on the wire.
std::string_view event_kind(EventType type);

void lease_to_proto(const Lease& lease, std::string_view landlord, proto::Lease::Builder out);
// The lease as an event shows it to every subscriber: its ref (lease_ref) in place of its id.
void lease_to_event_proto(const Lease& lease, std::string_view landlord, proto::Lease::Builder out);
// Fails on an unknown kind; copies text as it is (callers check sizes where it matters).
Result<Lease> lease_from_proto(proto::Lease::Reader in);

// A status carried in an ItemResult or RenewalFailure; unknown codes become UNKNOWN.
using djinn::status_from_wire;
void status_to_item(const Status& status, proto::ItemResult::Builder out);

// A Text field as it came, NUL bytes included (cStr() would cut at the first one and hide them
// from the checks).
inline std::string text_of(capnp::Text::Reader text) { return std::string(text.begin(), text.size()); }

// The leases in one LeaseList reply, by their encoded size (at least one lease).
inline constexpr size_t kMaxListReplyBytes = kMaxPageReplyBytes;

// What a Lease takes in a LeaseList: its struct (5 data and 3 pointer words) and its three texts,
// each NUL-terminated and padded to a word.
inline size_t wire_bytes(const Lease& lease, size_t landlord_bytes) {
  auto text = [](size_t bytes) { return (bytes + 8) / 8 * 8; };
  return 64 + text(lease.resource.size()) + text(lease.holder.size()) + text(landlord_bytes);
}

// Edge checks, with messages that say what was wrong and what was expected.
Status check_duration(int64_t duration_ms, std::string_view what);
Status check_text(std::string_view value, size_t max_bytes, std::string_view what);
Status check_endpoint(std::string_view endpoint);

}  // namespace djinn::lease::internal
