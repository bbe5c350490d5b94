// RegistrarClient: typed calls of the lookup protocol over one rpc::Client. Replies are untrusted
// input: a malformed one becomes an error status.
#include "djinn/lookup/client.h"

#include <kj/exception.h>

#include "djinn/core/fault.h"
#include "djinn/core/model_capnp.h"
#include "djinn/proto/lookup.capnp.h"

namespace djinn::lookup {
namespace {

rpc::CallOptions idempotent(rpc::CallOptions call) {
  call.idempotent = true;
  return call;
}


Result<ServiceItem> item_from(proto::ServiceItem::Reader in, std::string_view method) {
  Result<ServiceItem> item = from_capnp(in);
  if (!item.ok()) return internal_error("the registrar sent a bad item in reply to " + std::string(method) + ": " + item.status().message());
  return item;
}

Result<std::optional<ServiceItem>> lookup_result(rpc::Reply& reply) {
  return rpc::read_reply<std::optional<ServiceItem>>(reply, "lookup.lookup", [](rpc::Reply& r) -> Result<std::optional<ServiceItem>> {
    auto res = r.results<proto::LookupResult>();
    if (!res.getFound()) return std::optional<ServiceItem>();
    Result<ServiceItem> item = item_from(res.getItem(), "lookup.lookup");
    if (!item.ok()) return item.status();
    return std::optional<ServiceItem>(std::move(*item));
  });
}

}  // namespace

lease::HeldLease Registered::held_lease() const {
  lease::Lease l;
  l.id = item.lease.id;
  l.resource = std::string(kRegistrationResource);
  l.holder = item.service_id.to_string();
  l.expiration_ms = item.lease.expiration_ms;
  l.granted_ms = lease::first_grant_ms(granted_ms, l.expiration_ms);
  return lease::HeldLease{std::move(l), landlord};
}

lease::HeldLease NotifyHandle::held_lease() const {
  lease::Lease l;
  l.id = id;
  l.resource = std::string(kNotifyResource);
  l.expiration_ms = expiration_ms;
  l.granted_ms = lease::first_grant_ms(granted_ms, l.expiration_ms);
  return lease::HeldLease{std::move(l), landlord};
}

RegistrarClient::RegistrarClient(rpc::ClientOptions options)
    : options_(options), client_(std::make_unique<rpc::Client>(std::move(options))) {}

lease::LeaseClient& RegistrarClient::leases() {
  // Made on first use: most registrar clients only look up.
  std::call_once(leases_once_, [this] { leases_ = std::make_unique<lease::LeaseClient>(options_); });
  return *leases_;
}
RegistrarClient::~RegistrarClient() = default;
rpc::Client& RegistrarClient::rpc() { return *client_; }
const std::string& RegistrarClient::endpoint() const { return client_->endpoint(); }

Result<Registered> RegistrarClient::register_service(const ServiceItem& item, int64_t duration_ms, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  auto p = message.initRoot<proto::RegisterParams>();
  to_capnp(item, p.initItem());
  p.setDurationMs(duration_ms);
  // The registrar remembers the reply under this key, so a registration resent after a lost
  // connection returns the first one's lease instead of replacing it with a second.
  if (call.idempotency_key.empty()) call.idempotency_key = ServiceId::random().to_string();
  rpc::Reply reply = client_->call("lookup.register", message, call);
  return rpc::read_reply<Registered>(reply, "lookup.register", [&](rpc::Reply& r) -> Result<Registered> {
    auto res = r.results<proto::RegisterResult>();
    Result<LeaseInfo> lease = from_capnp(res.getLease());
    if (!lease.ok() || lease->id == 0) return internal_error("the registrar sent no registration lease");
    Registered out{item, res.getReplaced(), std::string(res.getLandlord().cStr()), res.getGrantedMs()};
    out.item.lease = *lease;
    return out;
  });
}

Result<std::optional<ServiceItem>> RegistrarClient::lookup(const ServiceTemplate& tmpl, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  to_capnp(tmpl, message.initRoot<proto::LookupParams>().initTemplate());
  rpc::Reply reply = client_->call("lookup.lookup", message, idempotent(call));
  return lookup_result(reply);
}

void RegistrarClient::lookup_async(const ServiceTemplate& tmpl,
                                   std::function<void(Result<std::optional<ServiceItem>>)> done, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  to_capnp(tmpl, message.initRoot<proto::LookupParams>().initTemplate());
  client_->call_async("lookup.lookup", message, idempotent(call),
                      [done = std::move(done)](rpc::Reply reply) { done(lookup_result(reply)); });
}

Result<LookupMany> RegistrarClient::lookup_many(const ServiceTemplate& tmpl, size_t max_matches, uint64_t notify_id,
                                                rpc::CallOptions call) {
  return lookup_page(tmpl, max_matches, std::nullopt, notify_id, call);
}

namespace {

// A page after the first goes on in ServiceID order after the one before, so every page adds
// new matches and lookup_all ends by max_matches at the latest, whatever a registrar answers.
Status in_order_after(const ServiceId* last, const std::vector<ServiceItem>& page) {
  for (const ServiceItem& item : page) {
    if (last && !(*last < item.service_id)) {
      return failed_precondition("lookup.lookupMany: the registrar's pages are not in ServiceID order after " +
                                 last->to_string() + " (a registrar older than pages?)");
    }
    last = &item.service_id;
  }
  return Status::Ok();
}

}  // namespace

Result<LookupMany> RegistrarClient::lookup_all(const ServiceTemplate& tmpl, size_t max_matches, uint64_t notify_id,
                                               rpc::CallOptions call, const std::function<bool()>& cancelled) {
  // With a notify registration each page says its stream's number: when it moved between pages,
  // items changed meanwhile, and the pages are asked for again (a few times; then the whole is
  // kept, the events after the first page's number bringing it up to date).
  constexpr int kAttempts = 3;
  for (int attempt = 1;; ++attempt) {
    Result<LookupMany> all = lookup_page(tmpl, max_matches, std::nullopt, notify_id, call);
    bool moved = false;
    while (all.ok() && all->more && all->items.size() < max_matches && !all->items.empty()) {
      DJINN_CRASH_POINT("lookup.client.between_pages");
      if (cancelled && cancelled()) return Status(Code::kCancelled, "lookup.lookupMany: cancelled between pages");
      Result<LookupMany> next =
          lookup_page(tmpl, max_matches - all->items.size(), all->items.back().service_id, notify_id, call);
      if (!next.ok()) return next.status();
      DJINN_RETURN_IF_ERROR(in_order_after(&all->items.back().service_id, next->items));
      moved = moved || next->event_seq != all->event_seq;
      for (ServiceItem& item : next->items) all->items.push_back(std::move(item));
      all->more = next->more;
      all->total = next->total;
      if (next->items.empty()) break;
    }
    if (!all.ok() || !moved || attempt == kAttempts) return all;
  }
}

Result<LookupMany> RegistrarClient::lookup_page(const ServiceTemplate& tmpl, size_t max_matches,
                                                const std::optional<ServiceId>& after, uint64_t notify_id,
                                                rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  auto p = message.initRoot<proto::LookupManyParams>();
  to_capnp(tmpl, p.initTemplate());
  p.setMaxMatches(static_cast<uint32_t>(std::min<size_t>(max_matches, UINT32_MAX)));
  p.setNotifyId(notify_id);
  if (after) to_capnp(*after, p.initAfterId());
  p.setPaged(true);
  // A read needs no key; one the caller gave would have the server answer every page with the first.
  call.idempotency_key.clear();
  rpc::Reply reply = client_->call("lookup.lookupMany", message, idempotent(call));
  return rpc::read_reply<LookupMany>(reply, "lookup.lookupMany", [](rpc::Reply& r) -> Result<LookupMany> {
    auto res = r.results<proto::LookupManyResult>();
    LookupMany out;
    for (auto in : res.getItems()) {
      Result<ServiceItem> item = item_from(in, "lookup.lookupMany");
      if (!item.ok()) return item.status();
      out.items.push_back(std::move(*item));
    }
    out.total = res.getTotalMatches();
    out.event_seq = res.getEventSeq();
    out.more = res.getMore();
    return out;
  });
}

Result<ServiceItem> RegistrarClient::modify_attributes(uint64_t lease_id, std::span<const AttributeChange> changes,
                                                       std::span<const Entry> add, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  auto p = message.initRoot<proto::ModifyParams>();
  p.setLeaseId(lease_id);
  auto list = p.initChanges(static_cast<unsigned>(changes.size()));
  for (size_t i = 0; i < changes.size(); ++i) {
    to_capnp(changes[i].match, list[i].initTemplate());
    if (changes[i].entry) {
      to_capnp(*changes[i].entry, list[i].initEntry());
    } else {
      list[i].setDelete(true);
    }
  }
  auto added = p.initAdd(static_cast<unsigned>(add.size()));
  for (size_t i = 0; i < add.size(); ++i) to_capnp(add[i], added[i]);
  // Not idempotent: applied twice, `add` is appended twice, and a change whose template no
  // longer matches after the first fails the second. The registrar remembers the reply under
  // this key, so a change resent after a lost connection is answered, not applied again.
  if (call.idempotency_key.empty()) call.idempotency_key = ServiceId::random().to_string();
  rpc::Reply reply = client_->call("lookup.modifyAttributes", message, call);
  return rpc::read_reply<ServiceItem>(reply, "lookup.modifyAttributes", [](rpc::Reply& r) {
    return item_from(r.results<proto::ModifyResult>().getItem(), "lookup.modifyAttributes");
  });
}

Result<NotifyHandle> RegistrarClient::notify(const ServiceTemplate& tmpl, uint8_t transitions, int64_t duration_ms,
                                             const std::string& holder, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  auto p = message.initRoot<proto::NotifyParams>();
  to_capnp(tmpl, p.initTemplate());
  p.setTransitions(transitions);
  p.setDurationMs(duration_ms);
  p.setHolder(holder);
  p.setKindByRef(true);
  if (call.idempotency_key.empty()) call.idempotency_key = ServiceId::random().to_string();
  rpc::Reply reply = client_->call("lookup.notify", message, call);
  return rpc::read_reply<NotifyHandle>(reply, "lookup.notify", [](rpc::Reply& r) -> Result<NotifyHandle> {
    auto res = r.results<proto::NotifyResult>();
    return NotifyHandle{res.getId(),
                        res.getExpirationMs(),
                        res.getEventKind().cStr(),
                        res.getEventsEndpoint().cStr(),
                        res.getLandlord().cStr(),
                        res.getGrantedMs()};
  });
}

Result<RegistrarInfo> RegistrarClient::self(rpc::CallOptions call) {
  rpc::Reply reply = client_->call("lookup.self", idempotent(call));
  return rpc::read_reply<RegistrarInfo>(reply, "lookup.self", [](rpc::Reply& r) -> Result<RegistrarInfo> {
    auto res = r.results<proto::SelfResult>();
    Result<ServiceItem> item = item_from(res.getItem(), "lookup.self");
    if (!item.ok()) return item.status();
    RegistrarInfo out{std::move(*item), {}};
    for (auto g : res.getGroups()) out.groups.emplace_back(g.cStr());
    return out;
  });
}

Result<lease::HeldLease> RegistrarClient::renew(uint64_t lease_id, int64_t duration_ms, rpc::CallOptions call) {
  return leases().renew(lease_id, duration_ms, call);
}

Status RegistrarClient::cancel(uint64_t lease_id, rpc::CallOptions call) { return leases().cancel(lease_id, call); }

Result<NotifyEvent> decode_notify_event(const events::Event& event) {
  try {
    auto reader = event.reader();
    auto ev = reader.getRoot<proto::NotifyEvent>();
    NotifyEvent out;
    out.notify_id = ev.getNotifyId();
    switch (ev.getTransition()) {
      case proto::Transition::NO_MATCH_TO_MATCH: out.transition = kNoMatchToMatch; break;
      case proto::Transition::MATCH_TO_NO_MATCH: out.transition = kMatchToNoMatch; break;
      case proto::Transition::MATCH_TO_MATCH: out.transition = kMatchToMatch; break;
      default: return invalid_argument("notify event with an unknown transition");
    }
    Result<ServiceItem> item = from_capnp(ev.getItem());
    if (!item.ok()) return invalid_argument("notify event with a bad item: " + item.status().message());
    out.item = std::move(*item);
    out.removed = ev.getRemoved();
    return out;
  } catch (const kj::Exception& e) {
    return invalid_argument(std::string("malformed notify event: ") + e.getDescription().cStr());
  }
}

}  // namespace djinn::lookup
