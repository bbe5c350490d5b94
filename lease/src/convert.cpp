// Lease <-> wire conversions and the edge checks every lease method shares.
#include "convert.h"

namespace djinn::lease::internal {

proto::LeaseKind kind_to_proto(Kind kind) {
  switch (kind) {
    case Kind::kShared: return proto::LeaseKind::SHARED;
    case Kind::kExclusive: return proto::LeaseKind::EXCLUSIVE;
    case Kind::kInterest: return proto::LeaseKind::INTEREST;
    case Kind::kSharedCopy: return proto::LeaseKind::SHARED_COPY;
    case Kind::kExclusiveCopy: return proto::LeaseKind::EXCLUSIVE_COPY;
  }
  return proto::LeaseKind::SHARED;
}

std::optional<Kind> kind_from_proto(proto::LeaseKind kind) {
  switch (kind) {
    case proto::LeaseKind::SHARED: return Kind::kShared;
    case proto::LeaseKind::EXCLUSIVE: return Kind::kExclusive;
    case proto::LeaseKind::INTEREST: return Kind::kInterest;
    case proto::LeaseKind::SHARED_COPY: return Kind::kSharedCopy;
    case proto::LeaseKind::EXCLUSIVE_COPY: return Kind::kExclusiveCopy;
  }
  return std::nullopt;  // Cap'n Proto hands out any 16-bit value for an enum field
}

std::string_view event_kind(EventType type) {
  switch (type) {
    case EventType::kGranted: return "lease.granted";
    case EventType::kRenewed: return "lease.renewed";
    case EventType::kCancelled: return "lease.cancelled";
    case EventType::kExpired: return "lease.expired";
    case EventType::kConflict: return "lease.conflict";
  }
  return "lease.unknown";
}

void lease_to_proto(const Lease& lease, std::string_view landlord, proto::Lease::Builder out) {
  out.setId(lease.id);
  out.setResource(lease.resource);
  out.setHolder(lease.holder);
  out.setKind(kind_to_proto(lease.kind));
  out.setExpirationMs(lease.expiration_ms);
  out.setGrantedMs(lease.granted_ms);
  out.setLandlord(std::string(landlord));
}

void lease_to_event_proto(const Lease& lease, std::string_view landlord, proto::Lease::Builder out) {
  lease_to_proto(lease, landlord, out);
  out.setId(0);
  out.setRef(lease_ref(lease.id));
}

Result<Lease> lease_from_proto(proto::Lease::Reader in) {
  auto kind = kind_from_proto(in.getKind());
  if (!kind) {
    return invalid_argument("lease kind " + std::to_string(static_cast<uint16_t>(in.getKind())) +
                            ": must be one of shared, exclusive, interest, sharedCopy, exclusiveCopy (0..4)");
  }
  Lease lease;
  lease.id = in.getId();
  lease.resource = text_of(in.getResource());
  lease.holder = text_of(in.getHolder());
  lease.kind = *kind;
  lease.expiration_ms = in.getExpirationMs();
  lease.granted_ms = in.getGrantedMs();
  return lease;
}

void status_to_item(const Status& status, proto::ItemResult::Builder out) {
  out.setCode(static_cast<uint16_t>(status.code()));
  if (!status.ok()) out.setMessage(status.message());
}

Status check_duration(int64_t duration_ms, std::string_view what) {
  if (duration_ms > 0 || duration_ms == kDurationAny || duration_ms == kDurationForever) return Status::Ok();
  return invalid_argument(std::string(what) + " " + std::to_string(duration_ms) +
                          " ms: must be > 0, -1 (ANY) or -2 (FOREVER)");
}

Status check_text(std::string_view value, size_t max_bytes, std::string_view what) {
  if (value.empty()) return invalid_argument(std::string(what) + " is empty: it must name something");
  if (value.size() > max_bytes) {
    return invalid_argument(std::string(what) + " of " + std::to_string(value.size()) + " bytes: at most " +
                            std::to_string(max_bytes) + " allowed");
  }
  if (value.find('\0') != std::string_view::npos) {
    return invalid_argument(std::string(what) + " contains a NUL byte: it must be plain text");
  }
  return Status::Ok();
}

Status check_endpoint(std::string_view endpoint) {
  DJINN_RETURN_IF_ERROR(check_text(endpoint, kMaxEndpointBytes, "landlord endpoint"));
  // Not inproc://: that names a socket inside the renewal service's own process (its ZAP handler
  // among them), never a landlord a client could hand a lease from.
  for (std::string_view scheme : {"tcp://", "ipc://"}) {
    if (endpoint.starts_with(scheme) && endpoint.size() > scheme.size()) return Status::Ok();
  }
  return invalid_argument("landlord endpoint '" + std::string(endpoint) +
                          "': expected tcp://HOST:PORT or ipc://PATH");
}

}  // namespace djinn::lease::internal
