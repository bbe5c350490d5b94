// LeaseClient and RenewalClient: typed calls of the lease protocol and of the renewal service over
// one rpc::Client. Replies are untrusted input: a malformed one becomes an error status.
#include <kj/exception.h>

#include "convert.h"
#include "djinn/core/model.h"
#include "djinn/lease/client.h"

namespace djinn::lease {
namespace {

rpc::CallOptions idempotent(rpc::CallOptions call) {
  call.idempotent = true;
  return call;
}


Result<HeldLease> held_from(proto::Lease::Reader in, const std::string& landlord) {
  auto lease = internal::lease_from_proto(in);
  if (!lease.ok()) return internal_error("the landlord sent a bad lease: " + lease.status().message());
  return HeldLease{std::move(*lease), landlord};
}

Result<LeaseSnapshot> snapshot_from(rpc::Reply& reply, std::string_view method) {
  return rpc::read_reply<LeaseSnapshot>(reply, method, [](rpc::Reply& r) -> Result<LeaseSnapshot> {
    auto list = r.results<proto::LeaseList>();
    LeaseSnapshot out;
    out.event_seq = list.getEventSeq();
    for (auto item : list.getLeases()) {
      auto lease = internal::lease_from_proto(item);
      if (!lease.ok()) return internal_error("the landlord sent a bad lease: " + lease.status().message());
      out.leases.push_back(std::move(*lease));
    }
    for (auto seq : list.getKindSeqs()) out.kind_seqs.emplace_back(seq.getKind().cStr(), seq.getSeq());
    return out;
  });
}

Result<std::vector<Lease>> leases_of(Result<LeaseSnapshot> snapshot) {
  if (!snapshot.ok()) return snapshot.status();
  return std::move(snapshot->leases);
}

}  // namespace

LeaseClient::LeaseClient(rpc::ClientOptions options) : client_(std::make_unique<rpc::Client>(std::move(options))) {}
LeaseClient::~LeaseClient() = default;
rpc::Client& LeaseClient::rpc() { return *client_; }

Result<HeldLease> LeaseClient::grant(const GrantRequest& request, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  auto p = message.initRoot<proto::GrantParams>();
  p.setResource(request.resource);
  p.setHolder(request.holder);
  p.setKind(internal::kind_to_proto(request.kind));
  p.setDurationMs(request.duration_ms);
  p.setWaitMs(request.wait.count());
  // The landlord remembers the reply under this key, so a grant resent after a lost connection
  // returns the first grant's lease instead of granting a second one.
  if (call.idempotency_key.empty()) call.idempotency_key = ServiceId::random().to_string();
  // A waiting grant must not time out before its wait is over.
  if (request.wait.count() > 0) {
    auto timeout = call.timeout.count() > 0 ? call.timeout : std::chrono::milliseconds(5000);
    call.timeout = std::max(timeout, request.wait + std::chrono::milliseconds(1000));
  }
  rpc::Reply reply = client_->call("lease.grant", message, call);
  return rpc::read_reply<HeldLease>(reply, "lease.grant", [&](rpc::Reply& r) {
    return held_from(r.results<proto::LeaseResult>().getLease(), client_->endpoint());
  });
}

Result<HeldLease> LeaseClient::renew(LeaseId id, int64_t duration_ms, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  auto p = message.initRoot<proto::RenewParams>();
  p.setId(id);
  p.setDurationMs(duration_ms);
  rpc::Reply reply = client_->call("lease.renew", message, idempotent(call));
  return rpc::read_reply<HeldLease>(reply, "lease.renew", [&](rpc::Reply& r) {
    return held_from(r.results<proto::LeaseResult>().getLease(), client_->endpoint());
  });
}

Status LeaseClient::cancel(LeaseId id, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  message.initRoot<proto::LeaseIdParams>().setId(id);
  return client_->call("lease.cancel", message, idempotent(call)).status();
}

Result<HeldLease> LeaseClient::get(LeaseId id, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  message.initRoot<proto::LeaseIdParams>().setId(id);
  rpc::Reply reply = client_->call("lease.get", message, idempotent(call));
  return rpc::read_reply<HeldLease>(reply, "lease.get", [&](rpc::Reply& r) {
    return held_from(r.results<proto::LeaseResult>().getLease(), client_->endpoint());
  });
}

std::vector<Result<Lease>> LeaseClient::renew_batch(std::span<const RenewRequest> requests, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  auto items = message.initRoot<proto::RenewBatchParams>().initItems(static_cast<unsigned>(requests.size()));
  for (size_t i = 0; i < requests.size(); ++i) {
    items[static_cast<unsigned>(i)].setId(requests[i].id);
    items[static_cast<unsigned>(i)].setDurationMs(requests[i].duration_ms);
  }
  rpc::Reply reply = client_->call("lease.renewBatch", message, idempotent(call));
  auto all = rpc::read_reply<std::vector<Result<Lease>>>(reply, "lease.renewBatch", [&](rpc::Reply& r) -> Result<std::vector<Result<Lease>>> {
    auto got = r.results<proto::BatchResults>().getItems();
    if (got.size() != requests.size()) {
      return internal_error("lease.renewBatch answered " + std::to_string(got.size()) + " of " +
                            std::to_string(requests.size()) + " items");
    }
    std::vector<Result<Lease>> out;
    for (auto item : got) {
      Status st = internal::status_from_wire(item.getCode(), item.getMessage().cStr());
      if (!st.ok()) {
        out.emplace_back(std::move(st));
        continue;
      }
      auto lease = internal::lease_from_proto(item.getLease());
      out.push_back(lease.ok() ? std::move(lease)
                               : Result<Lease>(internal_error("the landlord sent a bad lease: " + lease.status().message())));
    }
    return out;
  });
  if (all.ok()) return std::move(*all);
  return std::vector<Result<Lease>>(requests.size(), Result<Lease>(all.status()));
}

std::vector<Status> LeaseClient::cancel_batch(std::span<const LeaseId> ids, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  auto list = message.initRoot<proto::CancelBatchParams>().initIds(static_cast<unsigned>(ids.size()));
  for (size_t i = 0; i < ids.size(); ++i) list.set(static_cast<unsigned>(i), ids[i]);
  rpc::Reply reply = client_->call("lease.cancelBatch", message, idempotent(call));
  auto all = rpc::read_reply<std::vector<Status>>(reply, "lease.cancelBatch", [&](rpc::Reply& r) -> Result<std::vector<Status>> {
    auto got = r.results<proto::BatchResults>().getItems();
    if (got.size() != ids.size()) {
      return internal_error("lease.cancelBatch answered " + std::to_string(got.size()) + " of " +
                            std::to_string(ids.size()) + " items");
    }
    std::vector<Status> out;
    for (auto item : got) out.push_back(internal::status_from_wire(item.getCode(), item.getMessage().cStr()));
    return out;
  });
  if (all.ok()) return std::move(*all);
  return std::vector<Status>(ids.size(), all.status());
}

Result<LeaseSnapshot> LeaseClient::holder_snapshot(const std::string& holder, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  message.initRoot<proto::HolderParams>().setHolder(holder);
  rpc::Reply reply = client_->call("lease.holderLeases", message, idempotent(call));
  return snapshot_from(reply, "lease.holderLeases");
}

Result<LeaseSnapshot> LeaseClient::resource_snapshot(const std::string& resource, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  message.initRoot<proto::ResourceParams>().setResource(resource);
  rpc::Reply reply = client_->call("lease.resourceLeases", message, idempotent(call));
  return snapshot_from(reply, "lease.resourceLeases");
}

Result<std::vector<Lease>> LeaseClient::leases_of_holder(const std::string& holder, rpc::CallOptions call) {
  return leases_of(holder_snapshot(holder, std::move(call)));
}

Result<std::vector<Lease>> LeaseClient::leases_of_resource(const std::string& resource, rpc::CallOptions call) {
  return leases_of(resource_snapshot(resource, std::move(call)));
}

Result<std::vector<Lease>> LeaseClient::cancel_all_of_holder(const std::string& holder, rpc::CallOptions call) {
  return expire_all_of_holder(holder, std::chrono::milliseconds(0), std::move(call));
}

Result<std::vector<Lease>> LeaseClient::expire_all_of_holder(const std::string& holder, std::chrono::milliseconds within,
                                                             rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  auto p = message.initRoot<proto::CancelHolderParams>();
  p.setHolder(holder);
  p.setGraceMs(within.count());
  // Keyed rather than idempotent: a repeat would find nothing left to cancel and return an empty
  // list, losing what the first one cancelled.
  if (call.idempotency_key.empty()) call.idempotency_key = ServiceId::random().to_string();
  rpc::Reply reply = client_->call("lease.cancelHolder", message, call);
  return leases_of(snapshot_from(reply, "lease.cancelHolder"));
}

// ---------------------------------------------------------------------------------------------
// RenewalClient

RenewalClient::RenewalClient(rpc::ClientOptions options) : client_(std::make_unique<rpc::Client>(std::move(options))) {}
RenewalClient::~RenewalClient() = default;
rpc::Client& RenewalClient::rpc() { return *client_; }

Result<RenewalSet> RenewalClient::create_set(const std::string& holder, int64_t duration_ms, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  auto p = message.initRoot<proto::CreateSetParams>();
  p.setHolder(holder);
  p.setDurationMs(duration_ms);
  if (call.idempotency_key.empty()) call.idempotency_key = ServiceId::random().to_string();
  rpc::Reply reply = client_->call("renewal.create", message, call);
  return rpc::read_reply<RenewalSet>(reply, "renewal.create", [&](rpc::Reply& r) -> Result<RenewalSet> {
    auto set = r.results<proto::SetResult>();
    auto held = held_from(set.getSetLease(), client_->endpoint());
    if (!held.ok()) return held.status();
    return RenewalSet{set.getSetId(), std::move(*held)};
  });
}

Status RenewalClient::add(uint64_t set_id, const HeldLease& lease, int64_t renew_ms,
                          std::chrono::system_clock::time_point until, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  auto p = message.initRoot<proto::AddParams>();
  p.setSetId(set_id);
  internal::lease_to_proto(lease.lease, lease.landlord, p.initLease());
  p.setRenewMs(renew_ms);
  p.setUntilMs(std::chrono::duration_cast<std::chrono::milliseconds>(until.time_since_epoch()).count());
  return client_->call("renewal.add", message, idempotent(call)).status();
}

Status RenewalClient::remove(uint64_t set_id, LeaseId id, const std::string& landlord, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  auto p = message.initRoot<proto::RemoveParams>();
  p.setSetId(set_id);
  p.setLeaseId(id);
  p.setLandlord(landlord);
  return client_->call("renewal.remove", message, idempotent(call)).status();
}

Result<std::vector<HeldLease>> RenewalClient::members(uint64_t set_id, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  message.initRoot<proto::SetIdParams>().setSetId(set_id);
  rpc::Reply reply = client_->call("renewal.members", message, idempotent(call));
  return rpc::read_reply<std::vector<HeldLease>>(reply, "renewal.members", [&](rpc::Reply& r) -> Result<std::vector<HeldLease>> {
    std::vector<HeldLease> out;
    for (auto item : r.results<proto::LeaseList>().getLeases()) {
      auto held = held_from(item, item.getLandlord().cStr());
      if (!held.ok()) return held.status();
      out.push_back(std::move(*held));
    }
    return out;
  });
}

}  // namespace djinn::lease
