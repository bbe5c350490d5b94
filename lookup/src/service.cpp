// The lookup protocol served over RPC, and the whole djinn-lookup service in one object. Every
// input is checked here, at the edge (model conversions validate what they read); the engine's
// statuses go back unchanged, since the codes are the wire's.
#include "djinn/lookup/service.h"

#include <atomic>
#include <filesystem>
#include <mutex>
#include <shared_mutex>

#include <kj/exception.h>

#include "djinn/core/group_commit.h"
#include "djinn/core/job_threads.h"
#include "djinn/core/daemon_flags.h"
#include "djinn/core/fault.h"
#include "djinn/core/log.h"
#include "djinn/core/model_capnp.h"
#include "djinn/lease/service.h"
#include "djinn/proto/lookup.capnp.h"

namespace djinn::lookup {
namespace {

// Registrations in one durable write; a bigger queue waits for the next.
constexpr size_t kMaxRegisterBatch = 1000;
constexpr size_t kMaxAttributeChanges = 256;
// Items a lookup.lookup checks on the I/O thread before it goes to the lookup threads (a few
// hundred microseconds at most), and the lookups that may wait for those.
constexpr size_t kInlineCandidates = 1024;
constexpr size_t kMaxLongLookups = 1024;

Status malformed(std::string_view method, const kj::Exception& e) {
  return invalid_argument("malformed " + std::string(method) + ": " + e.getDescription().cStr());
}

Status check_duration(int64_t ms) {
  if (ms == lease::kDurationAny || ms > 0) return Status::Ok();
  return invalid_argument("lease duration " + std::to_string(ms) + " ms: must be > 0 or ANY (-1)");
}

}  // namespace

struct LookupService::Impl {
  LookupServiceOptions options;
  std::string rpc_endpoint;  // set once the server is bound, before `serving`
  std::string events_endpoint;
  // The bound endpoint is known only once the server serves: until it is set, calls whose answer
  // names it (where to renew a lease) are refused rather than answered without it.
  std::atomic<bool> serving{false};
  std::unique_ptr<events::Publisher> publisher;
  std::unique_ptr<lease::Landlord> landlord;
  std::unique_ptr<Registrar> registrar;
  std::unique_ptr<rpc::Server> server;
  std::unique_ptr<lease::LandlordService> lease_service;
  std::unique_ptr<GroupCommit<RegisterRequest, Result<Registration>>> registrations;
  // Lookups that would walk too long a list for the I/O thread (lookup.lookup).
  std::unique_ptr<JobThreads> long_lookups;
  std::mutex stop_mu;  // serialises stop()
  bool stopped = false;

  // Where the landlord's events go; targets come and go while it reports. Shared: forwarding never
  // waits for another forward (the registrar defers anything slow to its own thread).
  std::shared_mutex forward_mu;
  lease::LandlordService* forward_service = nullptr;
  Registrar* forward_registrar = nullptr;

  void forward(const lease::LeaseEvent& event) {
    std::shared_lock lock(forward_mu);
    if (forward_service) {
      forward_service->on_event(event);
    } else if (publisher) {
      lease::LandlordService::publish(*publisher, event, rpc_endpoint);
    }
    if (forward_registrar) forward_registrar->on_lease_event(event);
  }

  void stop() {
    std::lock_guard stop_lock(stop_mu);
    if (stopped) return;
    stopped = true;
    if (server) server->stop();
    long_lookups.reset();  // before the registrar its jobs read; those never run answer CANCELLED
    registrations.reset();
    {
      std::unique_lock lock(forward_mu);
      forward_service = nullptr;
      forward_registrar = nullptr;
    }
    lease_service.reset();
    registrar.reset();
    landlord.reset();
    if (publisher) publisher->stop();
    DJINN_LOG(kInfo, "lookup") << options.name << ": stopped";
  }

  void register_methods();
  Status publish_self();

  // Answers lookup.lookup unless it checked `max_candidates` items without a match first.
  bool answer_lookup(const ServiceTemplate& tmpl, size_t max_candidates, rpc::Responder& responder) {
    capnp::MallocMessageBuilder message;
    auto out = message.initRoot<proto::LookupResult>();
    std::optional<bool> found =
        registrar->visit_one_within(tmpl, max_candidates, [&](const ServiceItem& item) { to_capnp(item, out.initItem()); });
    if (!found) return false;
    out.setFound(*found);
    responder.reply(Status::Ok(), message);
    return true;
  }
};

void LookupService::Impl::register_methods() {
  rpc::Server& s = *server;
  const rpc::MethodOptions client_inline{.min_role = security::Role::kClient, .blocking = false};
  const rpc::MethodOptions client_blocking{.min_role = security::Role::kClient, .blocking = true};
  const rpc::MethodOptions service_blocking{.min_role = security::Role::kService, .blocking = true};

  s.handle_deferred(
      "lookup.register",
      [this](const rpc::CallContext&, capnp::MessageReader& message, rpc::Responder responder) {
        if (!serving.load(std::memory_order_acquire)) {
          return responder.reply(unavailable("lookup.register: the lookup service is starting; retry"));
        }
        RegisterRequest request;
        size_t wire_bytes = 0;
        try {
          auto p = message.getRoot<proto::RegisterParams>();
          if (!p.hasItem()) return responder.reply(invalid_argument("lookup.register: item is missing"));
          // Far over the limit is refused before it is decoded; the registrar checks the encoding
          // it stores against the limit exactly.
          wire_bytes = encoded_bytes(p.getItem());
          if (wire_bytes > 2 * options.max_item_bytes + 4096) {
            return responder.reply(invalid_argument("lookup.register: service item of " + std::to_string(wire_bytes) +
                                                    " bytes: at most " + std::to_string(options.max_item_bytes) +
                                                    " allowed; keep attributes small and put large content in the space"));
          }
          Result<ServiceItem> item = from_capnp(p.getItem());
          if (!item.ok()) return responder.reply(Status(item.status().code(), "lookup.register: " + item.status().message()));
          if (item->service_id.is_nil()) {
            return responder.reply(invalid_argument("lookup.register: the item's serviceId is nil; mint one with "
                                                    "ServiceId::random() and keep it for the service's life"));
          }
          request.item = std::move(*item);
          request.duration_ms = p.getDurationMs();
        } catch (const kj::Exception& e) {
          return responder.reply(malformed("lookup.register", e));
        }
        if (Status st = check_duration(request.duration_ms); !st.ok()) return responder.reply(st);
        auto shared = std::make_shared<rpc::Responder>(std::move(responder));
        registrations->post({std::move(request)}, [shared, where = lease_service->endpoint()](std::vector<Result<Registration>> out) {
          const Result<Registration>& r = out.front();
          if (!r.ok()) return shared->reply(r.status());
          capnp::MallocMessageBuilder reply;
          auto root = reply.initRoot<proto::RegisterResult>();
          to_capnp(r->item.lease, root.initLease());
          root.setReplaced(r->replaced);
          root.setLandlord(where);
          root.setGrantedMs(r->granted_ms);
          shared->reply(Status::Ok(), reply);
        }, wire_bytes);
      },
      {.min_role = security::Role::kService});

  // Answered on the I/O thread when a match is found among the first kInlineCandidates items the
  // lookup checks (or there are no more). One that would walk further, as a template of two large
  // constraints that few items share does, goes to the lookup threads, and the I/O thread serves
  // the other calls meanwhile.
  s.handle_deferred(
      "lookup.lookup",
      [this](const rpc::CallContext&, capnp::MessageReader& params, rpc::Responder responder) {
        std::optional<Result<ServiceTemplate>> tmpl;
        try {
          tmpl.emplace(from_capnp(params.getRoot<proto::LookupParams>().getTemplate()));
        } catch (const kj::Exception& e) {
          return responder.reply(malformed("lookup.lookup", e));
        }
        if (!tmpl->ok()) return responder.reply(Status(tmpl->status().code(), "lookup.lookup: " + tmpl->status().message()));
        if (answer_lookup(**tmpl, kInlineCandidates, responder)) return;
        auto waiting = std::make_shared<rpc::Responder>(std::move(responder));
        bool queued = long_lookups->post([this, t = std::move(**tmpl), waiting] {
          if (rpc::Clock::now() >= waiting->deadline()) {
            return waiting->reply(deadline_exceeded("lookup.lookup: the call's deadline passed while it waited"));
          }
          DJINN_CRASH_POINT("lookup.lookup.long");
          answer_lookup(t, SIZE_MAX, *waiting);
        });
        if (!queued) {
          waiting->reply(unavailable("lookup.lookup: " + std::to_string(kMaxLongLookups) +
                                     " lookups of long candidate lists wait already; retry later, or narrow the template"));
        }
      },
      client_inline);

  s.method<proto::LookupManyParams, proto::LookupManyResult>(
      "lookup.lookupMany",
      [this](const rpc::CallContext&, proto::LookupManyParams::Reader p, proto::LookupManyResult::Builder out) -> Status {
        Result<ServiceTemplate> tmpl = from_capnp(p.getTemplate());
        if (!tmpl.ok()) return Status(tmpl.status().code(), "lookup.lookupMany: " + tmpl.status().message());
        if (p.getMaxMatches() > kMaxMatches) {
          return invalid_argument("lookup.lookupMany: maxMatches " + std::to_string(p.getMaxMatches()) + " is over " +
                                  std::to_string(kMaxMatches) + "; page with narrower templates");
        }
        LookupPage page{.max_bytes = p.getPaged() ? kMaxMatchesReplyBytes : kUnpagedMatchesReplyBytes};
        if (p.hasAfterId()) {
          Result<ServiceId> after = from_capnp(p.getAfterId());
          if (!after.ok()) return Status(after.status().code(), "lookup.lookupMany: afterId: " + after.status().message());
          page.after = *after;
        }
        LookupMany many = registrar->lookup_many(*tmpl, p.getMaxMatches(), p.getNotifyId(), page);
        auto items = out.initItems(static_cast<unsigned>(many.items.size()));
        for (size_t i = 0; i < many.items.size(); ++i) to_capnp(many.items[i], items[i]);
        out.setTotalMatches(many.total);
        out.setEventSeq(many.event_seq);
        out.setMore(many.more);
        return Status::Ok();
      },
      client_blocking);

  s.method<proto::ModifyParams, proto::ModifyResult>(
      "lookup.modifyAttributes",
      [this](const rpc::CallContext&, proto::ModifyParams::Reader p, proto::ModifyResult::Builder out) -> Status {
        if (p.getChanges().size() > kMaxAttributeChanges || p.getAdd().size() > kMaxAttributes) {
          return invalid_argument("lookup.modifyAttributes: at most " + std::to_string(kMaxAttributeChanges) +
                                  " changes and " + std::to_string(kMaxAttributes) + " added entries");
        }
        std::vector<AttributeChange> changes;
        for (auto c : p.getChanges()) {
          Result<Template> match = from_capnp(c.getTemplate());
          if (!match.ok()) return Status(match.status().code(), "lookup.modifyAttributes: " + match.status().message());
          AttributeChange change{std::move(*match), std::nullopt};
          if (!c.getDelete()) {
            if (!c.hasEntry()) return invalid_argument("lookup.modifyAttributes: a change without delete needs an entry");
            Result<Entry> entry = from_capnp(c.getEntry());
            if (!entry.ok()) return Status(entry.status().code(), "lookup.modifyAttributes: " + entry.status().message());
            change.entry = std::move(*entry);
          }
          changes.push_back(std::move(change));
        }
        std::vector<Entry> add;
        for (auto e : p.getAdd()) {
          Result<Entry> entry = from_capnp(e);
          if (!entry.ok()) return Status(entry.status().code(), "lookup.modifyAttributes: " + entry.status().message());
          add.push_back(std::move(*entry));
        }
        Result<ServiceItem> item = registrar->modify_attributes(p.getLeaseId(), changes, add);
        if (!item.ok()) return item.status();
        to_capnp(*item, out.initItem());
        return Status::Ok();
      },
      service_blocking);

  s.method<proto::NotifyParams, proto::NotifyResult>(
      "lookup.notify",
      [this](const rpc::CallContext&, proto::NotifyParams::Reader p, proto::NotifyResult::Builder out) -> Status {
        if (!serving.load(std::memory_order_acquire)) {
          return unavailable("lookup.notify: the lookup service is starting; retry");
        }
        // A watch's template is kept, and matched against every change: it may be no larger than
        // the largest item.
        size_t template_bytes = encoded_bytes(p.getTemplate());
        if (template_bytes > options.max_item_bytes) {
          return invalid_argument("lookup.notify: template of " + std::to_string(template_bytes) + " bytes: at most " +
                                  std::to_string(options.max_item_bytes) + " (the largest item this lookup takes)");
        }
        Result<ServiceTemplate> tmpl = from_capnp(p.getTemplate());
        if (!tmpl.ok()) return Status(tmpl.status().code(), "lookup.notify: " + tmpl.status().message());
        if (Status st = check_duration(p.getDurationMs()); !st.ok()) return st;
        std::string holder(p.getHolder().cStr(), p.getHolder().size());
        if (holder.size() > landlord->policy().max_holder_bytes) {
          return invalid_argument("lookup.notify: holder of " + std::to_string(holder.size()) + " bytes: at most " +
                                  std::to_string(landlord->policy().max_holder_bytes));
        }
        Result<NotifyRegistration> reg =
            registrar->notify(*tmpl, p.getTransitions(), p.getDurationMs(), std::move(holder), p.getKindByRef());
        if (!reg.ok()) return reg.status();
        out.setId(reg->id);
        out.setExpirationMs(reg->expiration_ms);
        out.setEventKind(reg->event_kind);
        out.setEventsEndpoint(events_endpoint);
        out.setLandlord(rpc_endpoint);
        out.setGrantedMs(reg->granted_ms);
        return Status::Ok();
      },
      client_blocking);

  s.method<proto::SelfParams, proto::SelfResult>(
      "lookup.self",
      [this](const rpc::CallContext&, proto::SelfParams::Reader, proto::SelfResult::Builder out) -> Status {
        std::optional<ServiceItem> self = registrar->find(registrar->self_id());
        if (!self) return unavailable("lookup.self: the registrar has not registered itself yet");
        to_capnp(*self, out.initItem());
        auto groups = out.initGroups(static_cast<unsigned>(options.groups.size()));
        for (size_t i = 0; i < options.groups.size(); ++i) groups.set(static_cast<unsigned>(i), options.groups[i]);
        return Status::Ok();
      },
      client_inline);
}

Status LookupService::Impl::publish_self() {
  ServiceItem self;
  self.interface_types = {std::string(kRegistrarType), "djinn.lease.Landlord"};
  Entry name;
  name.type = "djinn.attr.Name";
  name.fields["name"] = Value(options.name);
  self.attributes.push_back(std::move(name));
  for (const std::string& g : options.groups) {
    Entry group;
    group.type = std::string(kGroupAttribute);
    group.fields["name"] = Value(g);
    self.attributes.push_back(std::move(group));
  }
  self.endpoints = Endpoints{rpc_endpoint, events_endpoint};
  if (options.curve) self.public_key = options.curve->server.public_key;
  return registrar->set_self(std::move(self));
}

LookupService::LookupService(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LookupService::~LookupService() { stop(); }

Result<std::unique_ptr<LookupService>> LookupService::start(LookupServiceOptions options) {
  if (options.workers < 1 || options.workers > 256) {
    return invalid_argument("workers " + std::to_string(options.workers) + ": must be between 1 and 256");
  }
  for (const std::string& g : options.groups) {
    if (g.empty() || g.size() > 255 || g.find_first_of(", \t\n") != std::string::npos) {
      return invalid_argument("group '" + g + "': groups are 1..255 bytes without commas or spaces");
    }
  }
  std::string lease_db;
  DJINN_RETURN_IF_ERROR(ensure_data_dir(options.data_dir));
  if (!options.data_dir.empty()) {
    // One file for items, watches and their leases: a registration commits with one fsync.
    lease_db = (std::filesystem::path(options.data_dir) / "lookup.db").string();
  }

  auto impl = std::make_unique<Impl>();
  Impl* im = impl.get();
  im->options = options;
  std::unique_ptr<LookupService> service(new LookupService(std::move(impl)));

  auto publisher = events::start_publisher(options.events_endpoint, options.curve);
  if (!publisher.ok()) return publisher.status();
  im->publisher = std::move(*publisher);
  im->events_endpoint = rpc::advertised_endpoint(im->publisher->endpoints().at(0), options.advertise_host);

  lease::LandlordOptions landlord_options;
  landlord_options.path = lease_db;
  landlord_options.policy = options.policy;
  landlord_options.on_event = [im](const lease::LeaseEvent& event) { im->forward(event); };
  landlord_options.name = options.name;
  landlord_options.cache_kib = 96 * 1024;  // leases and items: the items' pages are most of it
  auto landlord = lease::Landlord::open(std::move(landlord_options));
  if (!landlord.ok()) return landlord.status();
  im->landlord = std::move(*landlord);

  RegistrarOptions registrar_options;
  registrar_options.landlord = im->landlord.get();
  registrar_options.publisher = im->publisher.get();
  registrar_options.max_item_bytes = options.max_item_bytes;
  registrar_options.max_items = options.max_items;
  registrar_options.max_notify = options.max_notify;
  registrar_options.name = options.name;
  auto registrar = Registrar::open(std::move(registrar_options));
  if (!registrar.ok()) return registrar.status();
  im->registrar = std::move(*registrar);

  rpc::ServerOptions server_options;
  server_options.endpoints = {options.rpc_endpoint};
  server_options.workers = options.workers;
  server_options.curve = options.curve;
  server_options.plaintext_role = options.plaintext_role;
  server_options.name = options.name;
  im->server = std::make_unique<rpc::Server>(server_options);
  im->lease_service = std::make_unique<lease::LandlordService>(*im->landlord, *im->server, im->publisher.get(), "",
                                                               options.workers);
  im->lease_service->set_after_cancel([im] { im->registrar->settle_ended(); });
  // Registrations are made, renewed and cancelled by services (a client that read an item's lease
  // id must not drop it); notify leases by whoever registered them.
  im->lease_service->reserve(std::string(kRegistrationResource), "lookup.register", security::Role::kService);
  im->lease_service->reserve(std::string(kNotifyResource), "lookup.notify", security::Role::kClient);
  im->registrations = std::make_unique<GroupCommit<RegisterRequest, Result<Registration>>>(
      kMaxRegisterBatch, [im](std::span<const RegisterRequest> r) { return im->registrar->register_batch(r); },
      "lookup-commit");
  im->long_lookups = std::make_unique<JobThreads>(options.workers, "lookup-long", kMaxLongLookups);
  im->register_methods();
  {
    std::unique_lock lock(im->forward_mu);
    im->forward_service = im->lease_service.get();
    im->forward_registrar = im->registrar.get();
  }
  im->registrar->drop_lapsed();  // ended during the load, before the line above
  if (Status st = im->server->start(); !st.ok()) {
    return Status(st.code(), "rpc endpoint " + options.rpc_endpoint + ": " + st.message());
  }
  DJINN_CRASH_POINT("lookup.service.before_endpoint");
  im->rpc_endpoint = rpc::advertised_endpoint(im->server->endpoints().at(0), options.advertise_host);
  im->lease_service->set_endpoint(im->rpc_endpoint);
  im->serving.store(true, std::memory_order_release);
  if (Status st = im->publish_self(); !st.ok()) return Status(st.code(), "registering the lookup service itself: " + st.message());
  DJINN_LOG(kInfo, "lookup") << options.name << ": serving on " << im->rpc_endpoint << ", events on "
                             << im->events_endpoint << (options.curve ? " with CURVE" : "") << ", ServiceID "
                             << im->registrar->self_id().to_string() << ", " << im->registrar->size() << " items"
                             << (lease_db.empty() ? " (in memory)" : " in " + lease_db);
  return service;
}

const std::string& LookupService::rpc_endpoint() const { return impl_->rpc_endpoint; }
const std::string& LookupService::events_endpoint() const { return impl_->events_endpoint; }
Registrar& LookupService::registrar() { return *impl_->registrar; }
lease::Landlord& LookupService::landlord() { return *impl_->landlord; }
void LookupService::stop() { impl_->stop(); }

}  // namespace djinn::lookup
