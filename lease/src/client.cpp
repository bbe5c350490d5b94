// LeaseClient and RenewalClient: typed calls of the lease protocol and of the renewal service over
// one rpc::Client. Replies are untrusted input: a malformed one becomes an error status.
#include <algorithm>
#include <chrono>
#include <functional>

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

// A page of a list: a read, safe to resend, and without the caller's idempotency key, under which
// the server would answer every page with the first.
rpc::CallOptions page_call(rpc::CallOptions call) {
  call.idempotent = true;
  call.idempotency_key.clear();
  return call;
}


Result<HeldLease> held_from(proto::Lease::Reader in, const std::string& landlord) {
  auto lease = internal::lease_from_proto(in);
  if (!lease.ok()) return internal_error("the landlord sent a bad lease: " + lease.status().message());
  return HeldLease{std::move(*lease), landlord};
}

// One LeaseList reply: its leases and event numbers, whether more were left out, how many in all.
struct ListPage {
  LeaseSnapshot snapshot;
  bool more = false;
  uint64_t total = 0;
};

Result<ListPage> page_from(rpc::Reply& reply, std::string_view method) {
  return rpc::read_reply<ListPage>(reply, method, [](rpc::Reply& r) -> Result<ListPage> {
    auto list = r.results<proto::LeaseList>();
    ListPage out;
    out.snapshot.event_seq = list.getEventSeq();
    for (auto item : list.getLeases()) {
      auto lease = internal::lease_from_proto(item);
      if (!lease.ok()) return internal_error("the landlord sent a bad lease: " + lease.status().message());
      out.snapshot.leases.push_back(std::move(*lease));
    }
    for (auto seq : list.getKindSeqs()) out.snapshot.kind_seqs.emplace_back(seq.getKind().cStr(), seq.getSeq());
    out.more = list.getMore();
    out.total = list.getTotal();
    return out;
  });
}

// Every page of a list method, the first page's event numbers with them. `call_page(after)`
// makes the call for the leases with ids above `after`.
Result<LeaseSnapshot> all_pages(std::string_view method, const std::function<rpc::Reply(LeaseId after)>& call_page) {
  LeaseSnapshot out;
  for (LeaseId after = 0;;) {
    rpc::Reply reply = call_page(after);
    Result<ListPage> page = page_from(reply, method);
    if (!page.ok()) return page.status();
    if (after == 0) {
      out.event_seq = page->snapshot.event_seq;
      out.kind_seqs = std::move(page->snapshot.kind_seqs);
    }
    LeaseId before = after;
    for (Lease& lease : page->snapshot.leases) {
      after = std::max(after, lease.id);
      out.leases.push_back(std::move(lease));
    }
    if (!page->more) return out;
    // Each page must move on, or a confused landlord would have us ask forever.
    if (after == before) {
      return internal_error(std::string(method) + ": the landlord said more leases follow but listed none after " +
                            std::to_string(before));
    }
  }
}

Result<std::vector<Lease>> leases_of(Result<LeaseSnapshot> snapshot) {
  if (!snapshot.ok()) return snapshot.status();
  return std::move(snapshot->leases);
}

}  // namespace

LeaseClient::LeaseClient(rpc::ClientOptions options) : client_(std::make_unique<rpc::Client>(std::move(options))) {}
LeaseClient::~LeaseClient() = default;
rpc::Client& LeaseClient::rpc() { return *client_; }

int64_t first_grant_ms(int64_t granted_ms, int64_t expiration_ms) {
  if (granted_ms > 0) return granted_ms;
  int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch()).count();
  return std::max<int64_t>(1, expiration_ms - now);
}

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
    call.timeout = std::max(timeout, std::min(request.wait, rpc::kMaxCallTimeout) + std::chrono::milliseconds(1000));
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
  return all_pages("lease.holderLeases", [&](LeaseId after) {
    capnp::MallocMessageBuilder message;
    auto p = message.initRoot<proto::HolderParams>();
    p.setHolder(holder);
    p.setAfterId(after);
    return client_->call("lease.holderLeases", message, page_call(call));
  });
}

Result<LeaseSnapshot> LeaseClient::resource_snapshot(const std::string& resource, rpc::CallOptions call) {
  return all_pages("lease.resourceLeases", [&](LeaseId after) {
    capnp::MallocMessageBuilder message;
    auto p = message.initRoot<proto::ResourceParams>();
    p.setResource(resource);
    p.setAfterId(after);
    return client_->call("lease.resourceLeases", message, page_call(call));
  });
}

Result<std::vector<Lease>> LeaseClient::leases_of_holder(const std::string& holder, rpc::CallOptions call) {
  return leases_of(holder_snapshot(holder, std::move(call)));
}

Result<std::vector<Lease>> LeaseClient::leases_of_resource(const std::string& resource, rpc::CallOptions call) {
  return leases_of(resource_snapshot(resource, std::move(call)));
}

Result<EndedLeases> LeaseClient::cancel_all_of_holder(const std::string& holder, rpc::CallOptions call) {
  return expire_all_of_holder(holder, std::chrono::milliseconds(0), std::move(call));
}

Result<EndedLeases> LeaseClient::expire_all_of_holder(const std::string& holder, std::chrono::milliseconds within,
                                                      rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  auto p = message.initRoot<proto::CancelHolderParams>();
  p.setHolder(holder);
  p.setGraceMs(within.count());
  // Keyed rather than idempotent: a repeat would find nothing left to cancel and return an empty
  // list, losing what the first one cancelled.
  if (call.idempotency_key.empty()) call.idempotency_key = ServiceId::random().to_string();
  rpc::Reply reply = client_->call("lease.cancelHolder", message, call);
  Result<ListPage> page = page_from(reply, "lease.cancelHolder");
  if (!page.ok()) return page.status();
  // A landlord that predates `total` lists all it ended.
  uint64_t total = std::max<uint64_t>(page->total, page->snapshot.leases.size());
  return EndedLeases{std::move(page->snapshot.leases), total};
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
  std::vector<HeldLease> out;
  for (;;) {  // a page at a time, after the last member listed
    capnp::MallocMessageBuilder message;
    auto p = message.initRoot<proto::SetIdParams>();
    p.setSetId(set_id);
    if (!out.empty()) {
      p.setAfterLandlord(out.back().landlord);
      p.setAfterLeaseId(out.back().lease.id);
    }
    rpc::Reply reply = client_->call("renewal.members", message, page_call(call));
    size_t before = out.size();
    Result<bool> more = rpc::read_reply<bool>(reply, "renewal.members", [&](rpc::Reply& r) -> Result<bool> {
      auto list = r.results<proto::LeaseList>();
      for (auto item : list.getLeases()) {
        auto held = held_from(item, item.getLandlord().cStr());
        if (!held.ok()) return held.status();
        out.push_back(std::move(*held));
      }
      return list.getMore();
    });
    if (!more.ok()) return more.status();
    if (!*more) return out;
    // Each page must move on, or a confused service would have us ask forever.
    if (out.size() == before) {
      return internal_error("renewal.members: the service said more members follow but listed none");
    }
  }
}

}  // namespace djinn::lease
