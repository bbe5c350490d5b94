// The lease protocol served over RPC (LandlordService) and the whole djinn-lease service in one
// object (LeaseManager). Every input is checked here, at the edge, before the engine sees it; the
// engine's statuses go back unchanged, since the codes are the wire's.
#include "djinn/lease/service.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <map>
#include <span>
#include <filesystem>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <type_traits>

#include <kj/exception.h>

#include "convert.h"
#include "djinn/core/digest.h"
#include "djinn/core/group_commit.h"
#include "djinn/core/job_threads.h"
#include "djinn/core/daemon_flags.h"
#include "djinn/core/log.h"
#include "renewal_service.h"

namespace djinn::lease {
namespace {

using internal::check_duration;
using internal::check_text;
using internal::kMaxBatchItems;
using internal::kMaxListReplyBytes;
using internal::wire_bytes;

constexpr std::string_view kEventKinds[] = {"lease.granted", "lease.renewed", "lease.cancelled", "lease.expired",
                                            "lease.conflict"};
// A waiting grant must be answered before the caller's deadline, or its answer is lost: the wait
// ends this much earlier, leaving time for the reply to travel.
constexpr auto kDeadlineMargin = std::chrono::milliseconds(50);
// `wait` cut to what is left before `deadline` (the call's), less the margin; 0 once it passed.
std::chrono::milliseconds wait_within(std::chrono::milliseconds wait, rpc::Clock::time_point deadline) {
  if (deadline == rpc::Clock::time_point::max()) return wait;
  // Compared before subtracting: the deadline comes from the caller's timeout, and one already
  // past (or wrapped) would overflow the difference.
  auto now = rpc::Clock::now();
  if (deadline <= now) return std::chrono::milliseconds(0);
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now) - kDeadlineMargin;
  return std::clamp(left, std::chrono::milliseconds(0), wait);
}
// Grants that may wait, queued for the threads that carry them out; past this, UNAVAILABLE.
constexpr size_t kMaxQueuedWaitingGrants = 1024;

// How many of `leases`, from the first, fit in one reply (at least one).
size_t fitting_in_reply(std::span<const Lease> leases, size_t landlord_bytes) {
  size_t bytes = 0;
  for (size_t n = 0; n < leases.size(); ++n) {
    bytes += wire_bytes(leases[n], landlord_bytes);
    if (n > 0 && bytes > kMaxListReplyBytes) return n;
  }
  return leases.size();
}

// Answers a call whose result is one lease (LeaseResult), or its error.
void reply_lease(rpc::Responder& responder, const Result<Lease>& lease, const std::string& where) {
  if (!lease.ok()) return responder.reply(lease.status());
  capnp::MallocMessageBuilder out(rpc::kSmallMessageWords);
  internal::lease_to_proto(*lease, where, out.initRoot<proto::LeaseResult>().initLease());
  responder.reply(Status::Ok(), out);
}

Status check_id(uint64_t id) {
  if (id == 0) return invalid_argument("lease id 0: lease ids are nonzero (use the id a grant returned)");
  return Status::Ok();
}

void fill_seqs(events::Publisher* publisher, proto::LeaseList::Builder out) {
  auto seqs = out.initKindSeqs(std::size(kEventKinds));
  uint64_t sum = 0;
  for (size_t i = 0; i < std::size(kEventKinds); ++i) {
    uint64_t seq = publisher ? publisher->last_seq(kEventKinds[i]) : 0;
    seqs[i].setKind(std::string(kEventKinds[i]));
    seqs[i].setSeq(seq);
    sum += seq;
  }
  out.setEventSeq(sum);
}

}  // namespace

struct LandlordService::Impl {
  Impl(Landlord& l, events::Publisher* p, std::string e, int threads)
      : landlord(l),
        publisher(p),
        endpoint(std::move(e)),
        grant_group(kMaxBatchItems, [this](std::span<const GrantRequest> r) { return landlord.grant_batch(r); }, "lease-grants"),
        renewals(kMaxBatchItems, [this](std::span<const RenewRequest> r) { return landlord.renew_batch(r); }, "lease-renewals"),
        cancels(kMaxBatchItems, [this](std::span<const LeaseId> ids) { return landlord.cancel_batch(ids); }, "lease-cancels"),
        grants(threads, "lease-grant-job", kMaxQueuedWaitingGrants) {}

  Landlord& landlord;
  events::Publisher* publisher;
  struct Reserved {
    std::string granted_by;
    security::Role change_role;
  };
  std::map<std::string, Reserved, std::less<>> reserved;  // set before the server starts
  security::Role checked_below = security::Role::kNone;   // callers of a lower role are checked
  mutable std::mutex endpoint_mu;  // guards endpoint
  std::string endpoint;
  // Set before the server starts. Declared before the group commits, so it outlives them: a cancel
  // batch that completes while they are joined calls it.
  std::function<void()> after_cancel;
  // Last: joined first, while the rest is still alive.
  GroupCommit<GrantRequest, Result<Lease>> grant_group;
  GroupCommit<RenewRequest, Result<Lease>> renewals;
  GroupCommit<LeaseId, Status> cancels;
  // A grant writes durably (an fsync), which must not stall the RPC server's I/O thread, and a
  // waiting grant holds only its Responder.
  JobThreads grants;
  // The lease.renew calls of the server's current burst of requests (its I/O thread only).
  std::vector<RenewRequest> burst_renewals;
  std::vector<rpc::Responder> burst_responders;
  // Bursts handed to the renewal group commit and not yet written. While there are any, later
  // bursts follow them there, so that renewals of one lease are applied in the order they came.
  std::shared_ptr<std::atomic<int>> renewals_queued = std::make_shared<std::atomic<int>>(0);

  // Renews a burst's leases at once on the I/O thread when the engine's write lock is free
  // (no thread hand-off on either side of the commit); else queues them for the group commit.
  void commit_burst_renewals() {
    if (burst_renewals.empty()) return;
    std::string where = get_endpoint();
    if (renewals_queued->load() == 0) {
      if (auto outcomes = landlord.try_renew_batch(burst_renewals)) {
        for (size_t i = 0; i < outcomes->size(); ++i) reply_lease(burst_responders[i], (*outcomes)[i], where);
        burst_renewals.clear();
        burst_responders.clear();
        return;
      }
    }
    auto responders = std::make_shared<std::vector<rpc::Responder>>(std::move(burst_responders));
    std::vector<RenewRequest> requests = std::move(burst_renewals);
    burst_renewals.clear();
    burst_responders.clear();
    post_renewals(std::move(requests), [responders, where](std::vector<Result<Lease>> outcomes) {
      for (size_t i = 0; i < outcomes.size(); ++i) reply_lease((*responders)[i], outcomes[i], where);
    });
  }

  // Hands renewals to the group commit, counted in renewals_queued until they are written.
  void post_renewals(std::vector<RenewRequest> requests, std::function<void(std::vector<Result<Lease>>)> done) {
    renewals_queued->fetch_add(1);
    try {
      renewals.post(std::move(requests),
                    [done = std::move(done), queued = renewals_queued](std::vector<Result<Lease>> outcomes) {
                      done(std::move(outcomes));
                      queued->fetch_sub(1);
                    });
    } catch (...) {
      renewals_queued->fetch_sub(1);
      throw;
    }
  }

  void settle_cancels() const {
    if (after_cancel) after_cancel();
  }

  std::string get_endpoint() const {
    std::lock_guard lock(endpoint_mu);
    return endpoint;
  }

  void list_reply(std::span<const Lease> leases, const std::string& where, proto::LeaseList::Builder out) {
    auto list = out.initLeases(static_cast<unsigned>(leases.size()));
    for (size_t i = 0; i < leases.size(); ++i) internal::lease_to_proto(leases[i], where, list[i]);
  }

  // One page of the leases `ids` name (read a moment ago; a lease ended since is left out): those
  // with ids above `after`, in id order, as many as fit in a reply.
  void page_reply(std::vector<LeaseId> ids, LeaseId after, proto::LeaseList::Builder out) {
    std::sort(ids.begin(), ids.end());
    std::string where = get_endpoint();
    std::vector<Lease> page;
    size_t bytes = 0;
    bool more = false;
    for (auto id = std::upper_bound(ids.begin(), ids.end(), after); id != ids.end(); ++id) {
      std::optional<Lease> lease = landlord.find(*id);
      if (!lease) continue;
      bytes += wire_bytes(*lease, where.size());
      if (!page.empty() && bytes > kMaxListReplyBytes) {
        more = true;
        break;
      }
      page.push_back(std::move(*lease));
    }
    list_reply(page, where, out);
    out.setMore(more);
    out.setTotal(ids.size());
  }

  void register_methods(rpc::Server& server);

  // Whether lease.grant may grant on `resource`: not on one its owner grants through its own calls.
  Status check_grant(std::string_view resource) const {
    auto r = reserved.find(resource);
    if (r == reserved.end()) return Status::Ok();
    return permission_denied("resource " + std::string(resource) + " is granted through " + r->second.granted_by +
                             ", not lease.grant");
  }
  // Whether a caller of `role` may renew or cancel lease `id` (one it names is not found later).
  Status check_change(security::Role role, LeaseId id, std::string_view verb) const {
    if (role >= checked_below) return Status::Ok();  // no lookup on the renewal path of callers who may
    std::optional<Lease> l = landlord.find(id);
    if (!l) return Status::Ok();
    auto r = reserved.find(l->resource);
    if (r == reserved.end() || role >= r->second.change_role) return Status::Ok();
    return permission_denied(std::string(verb) + " lease " + std::to_string(id) + " (" + l->resource + ") needs role " +
                             std::string(security::role_name(r->second.change_role)) + ", as " + r->second.granted_by +
                             " does");
  }
};

void LandlordService::Impl::register_methods(rpc::Server& server) {
  // Writes may block on an fsync, and queries of many leases take time: they run on the worker
  // pool or a group commit, never on the server's I/O thread. A renewal is written there only
  // when it can be without waiting (commit_burst_renewals).
  const rpc::MethodOptions client_blocking{.min_role = security::Role::kClient, .blocking = true};
  const rpc::MethodOptions service_blocking{.min_role = security::Role::kService, .blocking = true};

  server.handle_deferred(
      "lease.grant",
      [this](const rpc::CallContext& ctx, capnp::MessageReader& message, rpc::Responder responder) {
        GrantRequest request;
        try {
          auto p = message.getRoot<proto::GrantParams>();
          request.resource = internal::text_of(p.getResource());
          request.holder = internal::text_of(p.getHolder());
          auto kind = internal::kind_from_proto(p.getKind());
          if (!kind) {
            return responder.reply(invalid_argument(
                "lease kind " + std::to_string(static_cast<uint16_t>(p.getKind())) +
                ": must be one of shared, exclusive, interest, sharedCopy, exclusiveCopy (0..4)"));
          }
          request.kind = *kind;
          request.duration_ms = p.getDurationMs();
          int64_t wait_ms = p.getWaitMs();
          if (wait_ms < 0 || wait_ms > internal::kMaxWaitMs) {
            return responder.reply(invalid_argument("waitMs " + std::to_string(wait_ms) + ": must be between 0 and " +
                                                    std::to_string(internal::kMaxWaitMs) + " (24 h)"));
          }
          request.wait = std::chrono::milliseconds(wait_ms);
        } catch (const kj::Exception& e) {
          return responder.reply(invalid_argument(std::string("malformed lease.grant: ") + e.getDescription().cStr()));
        }
        if (Status st = check_grant(request.resource); !st.ok()) return responder.reply(st);
        // Stored with the lease, so a grant resent to a landlord restarted after a crash is not
        // granted twice (the RPC server's reply cache does not outlive the process). Per client,
        // as that cache's keys are, and the whole key counts.
        if (!ctx.idempotency_key.empty()) {
          request.idempotency_key = std::string(ctx.client_key) + ":" + to_hex(digest128(ctx.idempotency_key));
        }
        const Policy& policy = landlord.policy();
        for (const Status& st : {check_text(request.resource, policy.max_resource_bytes, "resource"),
                                 check_text(request.holder, policy.max_holder_bytes, "holder"),
                                 check_duration(request.duration_ms, "lease duration")}) {
          if (!st.ok()) return responder.reply(st);
        }
        if (request.wait.count() > 0) request.wait = wait_within(request.wait, ctx.deadline);
        auto shared = std::make_shared<rpc::Responder>(std::move(responder));
        if (request.wait.count() == 0) {
          // Decided at once: with the other grants arriving meanwhile, in one durable write.
          grant_group.post({std::move(request)}, [shared, where = get_endpoint()](std::vector<Result<Lease>> outcomes) {
            reply_lease(*shared, outcomes.front(), where);
          });
          return;
        }
        bool queued = grants.post([this, request = std::move(request), shared, deadline = ctx.deadline]() mutable {
          if (rpc::Clock::now() >= deadline) {
            return shared->reply(deadline_exceeded("lease.grant: the call's deadline passed while it waited"));
          }
          // Cut again: the time it spent queued comes off too, or a grant made after the caller
          // gave up would hold the resource for nobody.
          request.wait = wait_within(request.wait, deadline);
          // The completion may run after this service is gone (a wait ends on the engine's thread):
          // it holds the endpoint by value and nothing of `this`.
          landlord.grant_async(request, [shared, where = get_endpoint()](Result<Lease> result) {
            reply_lease(*shared, result, where);
          });
        });
        if (!queued) {
          shared->reply(unavailable("lease.grant: " + std::to_string(kMaxQueuedWaitingGrants) +
                                    " grants that may wait are queued already; retry later"));
        }
      },
      {.min_role = security::Role::kClient});

  server.handle_deferred(
      "lease.renew",
      [this](const rpc::CallContext& ctx, capnp::MessageReader& message, rpc::Responder responder) {
        RenewRequest request;
        try {
          auto p = message.getRoot<proto::RenewParams>();
          request = RenewRequest{p.getId(), p.getDurationMs()};
        } catch (const kj::Exception& e) {
          return responder.reply(invalid_argument(std::string("malformed lease.renew: ") + e.getDescription().cStr()));
        }
        for (const Status& st : {check_id(request.id), check_duration(request.duration_ms, "renewal duration"),
                                 check_change(ctx.role, request.id, "renewing")}) {
          if (!st.ok()) return responder.reply(st);
        }
        burst_renewals.push_back(request);
        burst_responders.push_back(std::move(responder));
        if (burst_renewals.size() >= kMaxBatchItems) commit_burst_renewals();
      },
      {.min_role = security::Role::kClient});
  server.after_burst([this] { commit_burst_renewals(); });

  server.handle_deferred(
      "lease.cancel",
      [this](const rpc::CallContext& ctx, capnp::MessageReader& message, rpc::Responder responder) {
        uint64_t id = 0;
        try {
          id = message.getRoot<proto::LeaseIdParams>().getId();
        } catch (const kj::Exception& e) {
          return responder.reply(invalid_argument(std::string("malformed lease.cancel: ") + e.getDescription().cStr()));
        }
        if (Status st = check_id(id); !st.ok()) return responder.reply(st);
        if (Status st = check_change(ctx.role, id, "cancelling"); !st.ok()) return responder.reply(st);
        auto shared = std::make_shared<rpc::Responder>(std::move(responder));
        cancels.post({id}, [this, shared](std::vector<Status> outcomes) {
          const Status& st = outcomes.front();
          if (!st.ok()) return shared->reply(st);
          settle_cancels();
          capnp::MallocMessageBuilder out(rpc::kSmallMessageWords);
          out.initRoot<proto::Empty>();
          shared->reply(Status::Ok(), out);
        });
      },
      {.min_role = security::Role::kClient});

  server.method<proto::LeaseIdParams, proto::LeaseResult>(
      "lease.get",
      [this](const rpc::CallContext&, proto::LeaseIdParams::Reader p, proto::LeaseResult::Builder r) -> Status {
        DJINN_RETURN_IF_ERROR(check_id(p.getId()));
        auto lease = landlord.find(p.getId());
        if (!lease) {
          return not_found("lease " + std::to_string(p.getId()) + " not found: it expired, was cancelled, or was never granted here");
        }
        internal::lease_to_proto(*lease, get_endpoint(), r.initLease());
        return Status::Ok();
      },
      // One lease, under the engine's in-memory lock, which is never held across a write.
      {.min_role = security::Role::kClient});

  server.handle_deferred(
      "lease.renewBatch",
      [this](const rpc::CallContext& ctx, capnp::MessageReader& message, rpc::Responder responder) {
        // Invalid items fail on their own; the valid ones join the next group commit together.
        auto invalid = std::make_shared<std::vector<Status>>();
        std::vector<RenewRequest> requests;
        auto positions = std::make_shared<std::vector<size_t>>();
        try {
          auto items = message.getRoot<proto::RenewBatchParams>().getItems();
          if (items.size() > kMaxBatchItems) {
            return responder.reply(resource_exhausted("renewBatch of " + std::to_string(items.size()) +
                                                      " items: at most " + std::to_string(kMaxBatchItems) +
                                                      " per call (split the batch)"));
          }
          invalid->resize(items.size());
          for (unsigned i = 0; i < items.size(); ++i) {
            Status& st = (*invalid)[i];
            st = check_id(items[i].getId());
            if (st.ok()) st = check_duration(items[i].getDurationMs(), "renewal duration");
            if (st.ok()) st = check_change(ctx.role, items[i].getId(), "renewing");
            if (!st.ok()) continue;
            requests.push_back(RenewRequest{items[i].getId(), items[i].getDurationMs()});
            positions->push_back(i);
          }
        } catch (const kj::Exception& e) {
          return responder.reply(invalid_argument(std::string("malformed lease.renewBatch: ") + e.getDescription().cStr()));
        }
        auto shared = std::make_shared<rpc::Responder>(std::move(responder));
        // Renewals of this burst that came before this batch go first.
        commit_burst_renewals();
        post_renewals(std::move(requests), [shared, invalid, positions,
                                            where = get_endpoint()](std::vector<Result<Lease>> results) {
          capnp::MallocMessageBuilder message;
          auto out = message.initRoot<proto::BatchResults>().initItems(static_cast<unsigned>(invalid->size()));
          for (unsigned i = 0; i < invalid->size(); ++i) {
            if (!(*invalid)[i].ok()) internal::status_to_item((*invalid)[i], out[i]);
          }
          for (size_t k = 0; k < results.size(); ++k) {
            auto item = out[static_cast<unsigned>((*positions)[k])];
            internal::status_to_item(results[k].status(), item);
            if (results[k].ok()) internal::lease_to_proto(*results[k], where, item.initLease());
          }
          shared->reply(Status::Ok(), message);
        });
      },
      {.min_role = security::Role::kClient});

  server.method<proto::CancelBatchParams, proto::BatchResults>(
      "lease.cancelBatch",
      [this](const rpc::CallContext& ctx, proto::CancelBatchParams::Reader p, proto::BatchResults::Builder r) -> Status {
        auto ids = p.getIds();
        if (ids.size() > kMaxBatchItems) {
          return resource_exhausted("cancelBatch of " + std::to_string(ids.size()) + " ids: at most " +
                                    std::to_string(kMaxBatchItems) + " per call (split the batch)");
        }
        std::vector<LeaseId> valid;
        std::vector<size_t> positions;
        std::vector<Status> refused(ids.size());
        for (unsigned i = 0; i < ids.size(); ++i) {
          if (ids[i] == 0) continue;
          refused[i] = check_change(ctx.role, ids[i], "cancelling");
          if (!refused[i].ok()) continue;
          valid.push_back(ids[i]);
          positions.push_back(i);
        }
        auto results = valid.empty() ? std::vector<Status>{} : landlord.cancel_batch(valid);
        settle_cancels();
        if (results.size() != valid.size()) {
          return internal_error("the landlord answered " + std::to_string(results.size()) + " of " +
                                std::to_string(valid.size()) + " cancellations");
        }
        auto out = r.initItems(ids.size());
        for (unsigned i = 0; i < ids.size(); ++i) {
          if (ids[i] == 0) internal::status_to_item(check_id(0), out[i]);
          if (!refused[i].ok()) internal::status_to_item(refused[i], out[i]);
        }
        for (size_t k = 0; k < results.size(); ++k) {
          internal::status_to_item(results[k], out[static_cast<unsigned>(positions[k])]);
        }
        return Status::Ok();
      },
      client_blocking);

  // The list methods: one name (a holder or a resource) in, a page of its leases out. The event
  // numbers are read first, so every event at or below them is already reflected in the page. A
  // lease id is a capability (whoever knows it may renew or cancel it), and a holder's name is no
  // proof of being that holder: the lists hand out other holders' ids, so only services (a node
  // acting for its applications, lookup, the space) and admins may read them.
  auto list_method = [&](const char* method, auto params_tag, auto name_of, const char* what, size_t max_bytes,
                         auto ids_of, rpc::MethodOptions options) {
    using Params = typename decltype(params_tag)::type;
    server.method<Params, proto::LeaseList>(
        method,
        [this, name_of, what, max_bytes, ids_of](const rpc::CallContext&, typename Params::Reader p,
                                                 proto::LeaseList::Builder r) -> Status {
          std::string name = internal::text_of(name_of(p));
          DJINN_RETURN_IF_ERROR(check_text(name, max_bytes, what));
          fill_seqs(publisher, r);
          page_reply(ids_of(name), p.getAfterId(), r);
          return Status::Ok();
        },
        options);
  };
  const Policy& policy = landlord.policy();
  auto holder_of = [](proto::HolderParams::Reader p) { return p.getHolder(); };
  list_method("lease.holderLeases", std::type_identity<proto::HolderParams>(), holder_of, "holder", policy.max_holder_bytes,
              [this](const std::string& h) { return landlord.lease_ids_of_holder(h); }, service_blocking);
  list_method("lease.resourceLeases", std::type_identity<proto::ResourceParams>(),
              [](proto::ResourceParams::Reader p) { return p.getResource(); }, "resource", policy.max_resource_bytes,
              [this](const std::string& r) { return landlord.lease_ids_of_resource(r); }, service_blocking);
  // A migrating application gives up everything it holds at once: its node (a service) asks, or
  // an admin. At once, or within a grace period during which the holder's own new grants succeed
  // and nobody else's incompatible ones do.
  server.method<proto::CancelHolderParams, proto::LeaseList>(
      "lease.cancelHolder",
      [this, max_bytes = policy.max_holder_bytes](const rpc::CallContext&, proto::CancelHolderParams::Reader p,
                                                  proto::LeaseList::Builder r) -> Status {
        std::string holder = internal::text_of(p.getHolder());
        DJINN_RETURN_IF_ERROR(check_text(holder, max_bytes, "holder"));
        int64_t grace_ms = p.getGraceMs();
        if (grace_ms < 0 || grace_ms > landlord.policy().max_duration.count()) {
          return invalid_argument("graceMs " + std::to_string(grace_ms) + ": must be between 0 (cancel at once) and " +
                                  std::to_string(landlord.policy().max_duration.count()) +
                                  " (this landlord's longest lease)");
        }
        fill_seqs(publisher, r);
        Result<std::vector<Lease>> leases = landlord.expire_all_of_holder(holder, std::chrono::milliseconds(grace_ms));
        if (grace_ms == 0) settle_cancels();
        if (!leases.ok()) return leases.status();
        // All of them ended; the reply lists as many as fit, and how many there were.
        std::string where = get_endpoint();
        size_t listed = fitting_in_reply(*leases, where.size());
        list_reply(std::span<const Lease>(*leases).first(listed), where, r);
        r.setMore(listed < leases->size());
        r.setTotal(leases->size());
        return Status::Ok();
      },
      service_blocking);
}

LandlordService::LandlordService(Landlord& landlord, rpc::Server& server, events::Publisher* publisher,
                                 std::string landlord_endpoint, int grant_threads)
    : impl_(std::make_unique<Impl>(landlord, publisher, std::move(landlord_endpoint), grant_threads)) {
  impl_->register_methods(server);
}

LandlordService::~LandlordService() = default;

void LandlordService::reserve(std::string resource, std::string granted_by, security::Role change_role) {
  impl_->checked_below = std::max(impl_->checked_below, change_role);
  impl_->reserved[std::move(resource)] = Impl::Reserved{std::move(granted_by), change_role};
}

void LandlordService::set_after_cancel(std::function<void()> settle) { impl_->after_cancel = std::move(settle); }

void LandlordService::set_endpoint(std::string endpoint) {
  std::lock_guard lock(impl_->endpoint_mu);
  impl_->endpoint = std::move(endpoint);
}

std::string LandlordService::endpoint() const { return impl_->get_endpoint(); }

void LandlordService::on_event(const LeaseEvent& event) {
  if (impl_->publisher) publish(*impl_->publisher, event, impl_->get_endpoint());
}

void LandlordService::publish(events::Publisher& publisher, const LeaseEvent& event, std::string_view endpoint) {
  capnp::MallocMessageBuilder message(rpc::kSmallMessageWords);
  auto out = message.initRoot<proto::LeaseEvent>();
  internal::lease_to_event_proto(event.lease, endpoint, out.initLease());
  if (event.type == EventType::kConflict) {
    out.setRequestedBy(event.requested_by);
    out.setRequestedKind(internal::kind_to_proto(event.requested_kind));
  }
  publisher.publish(internal::event_kind(event.type), event.lease.holder, message);
}

// ---------------------------------------------------------------------------------------------
// LeaseManager

struct LeaseManager::Impl {
  LeaseManagerOptions options;
  std::string rpc_endpoint;
  std::string events_endpoint;
  std::unique_ptr<events::Publisher> publisher;
  std::unique_ptr<Landlord> landlord;
  std::unique_ptr<rpc::Server> server;
  std::unique_ptr<LandlordService> service;
  std::unique_ptr<internal::RenewalService> renewal;
  std::mutex stop_mu;  // guards stopped; serialises stop()
  bool stopped = false;

  // Where engine events go. The engine reports on several threads, from its open() (expiries
  // found on restart) until its destruction, so the targets come and go under this mutex.
  // Shared by the threads that report events (the RPC I/O thread among them, for renewals): one
  // whose callback waits (the renewal service dropping a set writes its file) holds up no other.
  std::shared_mutex forward_mu;  // guards forward_service, forward_renewal
  LandlordService* forward_service = nullptr;
  internal::RenewalService* forward_renewal = nullptr;

  void forward(const LeaseEvent& event) {
    std::shared_lock lock(forward_mu);
    if (forward_service) {
      forward_service->on_event(event);
    } else if (publisher) {
      LandlordService::publish(*publisher, event, rpc_endpoint);
    }
    if (forward_renewal) forward_renewal->on_lease_event(event);
  }

  void stop() {
    std::lock_guard stop_lock(stop_mu);
    if (stopped) return;
    stopped = true;
    if (server) server->stop();
    if (renewal) renewal->stop();
    {
      std::lock_guard lock(forward_mu);
      forward_service = nullptr;
      forward_renewal = nullptr;
    }
    renewal.reset();
    service.reset();
    landlord.reset();  // the last events it reports go straight to the publisher
    if (publisher) publisher->stop();
    DJINN_LOG(kInfo, "lease") << "lease manager stopped";
  }
};

LeaseManager::LeaseManager(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LeaseManager::~LeaseManager() { stop(); }

Result<std::unique_ptr<LeaseManager>> LeaseManager::start(LeaseManagerOptions options) {
  if (options.workers < 1 || options.workers > 256) {
    return invalid_argument("workers " + std::to_string(options.workers) + ": must be between 1 and 256");
  }
  std::string lease_db, renewal_db;
  DJINN_RETURN_IF_ERROR(ensure_data_dir(options.data_dir));
  if (!options.data_dir.empty()) {
    lease_db = (std::filesystem::path(options.data_dir) / "lease.db").string();
    renewal_db = (std::filesystem::path(options.data_dir) / "renewal.db").string();
  }

  auto impl = std::make_unique<Impl>();
  Impl* im = impl.get();
  im->options = options;
  // A manager that fails half-way stops what it started.
  std::unique_ptr<LeaseManager> manager(new LeaseManager(std::move(impl)));

  auto publisher = events::start_publisher(options.events_endpoint, options.curve);
  if (!publisher.ok()) return publisher.status();
  im->publisher = std::move(*publisher);
  im->events_endpoint = rpc::advertised_endpoint(im->publisher->endpoints().at(0), options.advertise_host);

  LandlordOptions landlord_options;
  landlord_options.path = lease_db;
  landlord_options.policy = options.policy;
  landlord_options.on_event = [im](const LeaseEvent& event) { im->forward(event); };
  landlord_options.name = "lease";
  auto landlord = Landlord::open(std::move(landlord_options));
  if (!landlord.ok()) return landlord.status();
  im->landlord = std::move(*landlord);

  rpc::ServerOptions server_options;
  server_options.endpoints = {options.rpc_endpoint};
  server_options.workers = options.workers;
  server_options.curve = options.curve;
  server_options.plaintext_role = options.plaintext_role;
  server_options.name = "lease";
  im->server = std::make_unique<rpc::Server>(server_options);
  im->service = std::make_unique<LandlordService>(*im->landlord, *im->server, im->publisher.get(), "",
                                                  options.workers);

  internal::RenewalServiceOptions renewal_options;
  renewal_options.path = renewal_db;
  renewal_options.landlord = im->landlord.get();
  renewal_options.publisher = im->publisher.get();
  renewal_options.manager.curve = options.renewal_curve;
  renewal_options.patience = options.renewal_patience;
  auto renewal = internal::RenewalService::open(std::move(renewal_options));
  if (!renewal.ok()) return renewal.status();
  im->renewal = std::move(*renewal);
  im->renewal->register_methods(*im->server);
  {
    std::lock_guard lock(im->forward_mu);
    im->forward_service = im->service.get();
    im->forward_renewal = im->renewal.get();
  }
  // Set leases that ended since the renewal service read its sets reported events it never saw.
  im->renewal->drop_ended_sets();

  if (Status st = im->server->start(); !st.ok()) {
    return Status(st.code(), "rpc endpoint " + options.rpc_endpoint + ": " + st.message());
  }
  im->rpc_endpoint = rpc::advertised_endpoint(im->server->endpoints().at(0), options.advertise_host);
  im->service->set_endpoint(im->rpc_endpoint);
  im->renewal->set_endpoint(im->rpc_endpoint);
  DJINN_LOG(kInfo, "lease") << "lease manager serving on " << im->rpc_endpoint << ", events on "
                            << im->events_endpoint << (options.curve ? " with CURVE" : "") << ", "
                            << im->landlord->size() << " leases"
                            << (lease_db.empty() ? " (in memory)" : " in " + lease_db);
  return manager;
}

const std::string& LeaseManager::rpc_endpoint() const { return impl_->rpc_endpoint; }
const std::string& LeaseManager::events_endpoint() const { return impl_->events_endpoint; }
Landlord& LeaseManager::landlord() { return *impl_->landlord; }
void LeaseManager::stop() { impl_->stop(); }

}  // namespace djinn::lease
