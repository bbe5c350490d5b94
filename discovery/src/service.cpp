// DiscoveryService: one DiscoveryManager for every group, and per interest a filter, an expiration
// and an event stream. Events and snapshots are made under one mutex, so a snapshot's event number
// and the stream agree on what came before it.
#include "djinn/discovery/service.h"

#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include <kj/exception.h>

#include "djinn/core/digest.h"
#include "djinn/core/log.h"
#include "djinn/core/model_capnp.h"
#include "djinn/proto/discovery.capnp.h"

namespace djinn::discovery {
namespace {

constexpr const char* kLog = "discovery";

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void to_wire(const DiscoveredLookup& l, proto::DiscoveredLookup::Builder out) {
  to_capnp(l.service_id, out.initServiceId());
  out.setRpc(l.rpc_endpoint);
  out.setEvents(l.events_endpoint);
  auto groups = out.initGroups(static_cast<unsigned>(l.groups.size()));
  for (size_t i = 0; i < l.groups.size(); ++i) groups.set(static_cast<unsigned>(i), l.groups[i]);
  out.setName(l.name);
  out.setVia(l.via);
}

// Untrusted (a reply or an event): checked like everything from the network.
Result<DiscoveredLookup> from_wire(proto::DiscoveredLookup::Reader in) {
  DiscoveredLookup l;
  Result<ServiceId> id = from_capnp(in.getServiceId());
  if (!id.ok()) return id.status();
  l.service_id = *id;
  l.rpc_endpoint = in.getRpc().cStr();
  l.events_endpoint = in.getEvents().cStr();
  if (l.rpc_endpoint.size() > kMaxEndpointBytes || l.events_endpoint.size() > kMaxEndpointBytes) {
    return invalid_argument("an endpoint longer than " + std::to_string(kMaxEndpointBytes) + " bytes");
  }
  auto groups = in.getGroups();
  if (groups.size() > kMaxGroups) return invalid_argument("more than " + std::to_string(kMaxGroups) + " groups");
  for (auto g : groups) {
    std::string text = g.cStr();
    DJINN_RETURN_IF_ERROR(check_group(text));
    l.groups.push_back(std::move(text));
  }
  l.name = in.getName().cStr();
  l.via = in.getVia().cStr();
  return l;
}

Status read_groups(capnp::List<capnp::Text>::Reader in, std::vector<std::string>& out) {
  if (in.size() > kMaxGroups) return invalid_argument("interest in " + std::to_string(in.size()) + " groups: at most " + std::to_string(kMaxGroups));
  for (auto g : in) {
    std::string text = g.cStr();
    DJINN_RETURN_IF_ERROR(check_group(text));
    out.push_back(std::move(text));
  }
  return Status::Ok();
}

}  // namespace

struct DiscoveryService::Impl {
  struct InterestState {
    std::vector<std::string> groups;
    int64_t expiration_ms = 0;
    std::string kind;
  };

  DiscoveryServiceOptions options;
  std::unique_ptr<events::Publisher> publisher;
  std::unique_ptr<rpc::Server> server;
  std::unique_ptr<DiscoveryManager> manager;
  std::string rpc_endpoint, events_endpoint;

  mutable std::mutex mu;  // guards interests, stopping
  std::condition_variable cv;
  std::map<uint64_t, InterestState> interests;
  bool stopping = false;
  std::thread reaper;  // drops expired interests
  std::mutex stop_mu;
  bool stopped = false;

  int64_t grant(int64_t requested) const {
    int64_t max = options.max_interest_lease.count();
    return requested < 0 || requested > max ? max : requested;
  }

  void publish_locked(const InterestState& st, const DiscoveredLookup& l, bool discarded) {
    capnp::MallocMessageBuilder msg;
    auto ev = msg.initRoot<proto::DiscoveryEvent>();
    ev.setDiscarded(discarded);
    to_wire(l, ev.initLookup());
    publisher->publish(st.kind, l.service_id.to_string(), msg);
  }

  void on_change(const DiscoveredLookup& l, bool discarded) {
    std::lock_guard lock(mu);
    for (const auto& [id, st] : interests) {
      if (groups_match(st.groups, l.groups)) publish_locked(st, l, discarded);
    }
  }

  void fill_snapshot_locked(const InterestState& st, std::vector<DiscoveredLookup>& matching) {
    for (const DiscoveredLookup& l : manager->lookups()) {
      if (groups_match(st.groups, l.groups)) matching.push_back(l);
    }
  }

  void reap() {
    std::unique_lock lock(mu);
    while (!stopping) {
      int64_t now = now_ms();
      int64_t next = now + 1000;
      for (auto it = interests.begin(); it != interests.end();) {
        if (it->second.expiration_ms <= now) {
          DJINN_LOG(kInfo, kLog) << "interest " << it->first << " expired";
          publisher->forget(it->second.kind);
          it = interests.erase(it);
        } else {
          next = std::min(next, it->second.expiration_ms);
          ++it;
        }
      }
      cv.wait_for(lock, std::chrono::milliseconds(std::max<int64_t>(1, next - now)));
    }
  }

  void register_methods() {
    rpc::Server& s = *server;
    const rpc::MethodOptions client{.min_role = security::Role::kClient, .blocking = false};
    s.method<proto::RegisterInterestParams, proto::RegisterInterestResult>(
        "discovery.register",
        [this](const rpc::CallContext&, proto::RegisterInterestParams::Reader p, proto::RegisterInterestResult::Builder r) -> Status {
          InterestState st;
          try {
            DJINN_RETURN_IF_ERROR(read_groups(p.getGroups(), st.groups));
            int64_t d = p.getDurationMs();
            if (d <= 0 && d != -1) return invalid_argument("interest duration " + std::to_string(d) + " ms: must be > 0 or ANY (-1)");
            st.expiration_ms = now_ms() + grant(d);
          } catch (const kj::Exception& e) {
            return invalid_argument(std::string("malformed discovery.register: ") + e.getDescription().cStr());
          }
          std::lock_guard lock(mu);
          if (interests.size() >= options.max_interests) {
            return resource_exhausted("already " + std::to_string(interests.size()) + " interests registered (--max-interests)");
          }
          // An interest id lets whoever knows it renew or cancel the interest: drawn at random, and
          // the kind every subscriber sees names its ref.
          uint64_t id = random_secret_id();
          while (interests.count(id)) id = random_secret_id();
          st.kind = "discovery.interest." + public_ref_hex(id);
          publisher->declare(st.kind);
          std::vector<DiscoveredLookup> matching;
          fill_snapshot_locked(st, matching);
          r.setId(id);
          r.setEventKind(st.kind);
          r.setEventsEndpoint(events_endpoint);
          r.setExpirationMs(st.expiration_ms);
          auto list = r.initLookups(static_cast<unsigned>(matching.size()));
          for (size_t i = 0; i < matching.size(); ++i) to_wire(matching[i], list[static_cast<unsigned>(i)]);
          r.setEventSeq(publisher->last_seq(st.kind));
          interests.emplace(id, std::move(st));
          return Status::Ok();
        },
        client);
    s.method<proto::RenewInterestParams, proto::RenewInterestResult>(
        "discovery.renew",
        [this](const rpc::CallContext&, proto::RenewInterestParams::Reader p, proto::RenewInterestResult::Builder r) -> Status {
          int64_t d = p.getDurationMs();
          if (d <= 0 && d != -1) return invalid_argument("interest duration " + std::to_string(d) + " ms: must be > 0 or ANY (-1)");
          std::lock_guard lock(mu);
          auto it = interests.find(p.getId());
          if (it == interests.end()) return not_found("interest " + std::to_string(p.getId()) + " is unknown or expired: register again");
          it->second.expiration_ms = now_ms() + grant(d);
          r.setExpirationMs(it->second.expiration_ms);
          return Status::Ok();
        },
        client);
    s.method<proto::CancelInterestParams, proto::SnapshotResult>(
        "discovery.cancel",
        [this](const rpc::CallContext&, proto::CancelInterestParams::Reader p, proto::SnapshotResult::Builder) -> Status {
          std::lock_guard lock(mu);
          auto it = interests.find(p.getId());
          if (it == interests.end()) return not_found("interest " + std::to_string(p.getId()) + " is unknown or expired");
          publisher->forget(it->second.kind);
          interests.erase(it);
          return Status::Ok();
        },
        client);
    s.method<proto::SnapshotParams, proto::SnapshotResult>(
        "discovery.snapshot",
        [this](const rpc::CallContext&, proto::SnapshotParams::Reader p, proto::SnapshotResult::Builder r) -> Status {
          std::lock_guard lock(mu);
          auto it = interests.find(p.getId());
          if (it == interests.end()) return not_found("interest " + std::to_string(p.getId()) + " is unknown or expired: register again");
          std::vector<DiscoveredLookup> matching;
          fill_snapshot_locked(it->second, matching);
          auto list = r.initLookups(static_cast<unsigned>(matching.size()));
          for (size_t i = 0; i < matching.size(); ++i) to_wire(matching[i], list[static_cast<unsigned>(i)]);
          r.setEventSeq(publisher->last_seq(it->second.kind));
          return Status::Ok();
        },
        client);
  }

  void stop() {
    std::lock_guard stop_lock(stop_mu);
    if (stopped) return;
    stopped = true;
    if (server) server->stop();
    if (manager) manager->stop();
    {
      std::lock_guard lock(mu);
      stopping = true;
    }
    cv.notify_all();
    if (reaper.joinable()) reaper.join();
    if (publisher) publisher->stop();
  }
};

Result<std::unique_ptr<DiscoveryService>> DiscoveryService::start(DiscoveryServiceOptions options) {
  if (options.max_interest_lease.count() <= 0) return invalid_argument("the longest interest lease must be > 0 ms");
  auto im = std::make_unique<Impl>();
  im->options = std::move(options);
  Result<std::unique_ptr<events::Publisher>> pub = events::start_publisher(im->options.events_endpoint, im->options.curve);
  if (!pub.ok()) return pub.status();
  im->publisher = std::move(*pub);
  im->events_endpoint = rpc::advertised_endpoint(im->publisher->endpoints().front(), im->options.advertise_host);
  rpc::ServerOptions so;
  so.endpoints = {im->options.rpc_endpoint};
  so.curve = im->options.curve;
  so.plaintext_role = im->options.plaintext_role;
  so.name = "discovery";
  im->server = std::make_unique<rpc::Server>(so);
  im->register_methods();
  if (Status st = im->server->start(); !st.ok()) return st;
  im->rpc_endpoint = rpc::advertised_endpoint(im->server->endpoints().front(), im->options.advertise_host);
  Impl* raw = im.get();
  DiscoveryOptions d = im->options.discovery;
  d.groups.clear();  // every group: each interest filters for itself
  auto user_discovered = d.on_discovered;
  auto user_discarded = d.on_discarded;
  d.on_discovered = [raw, user_discovered](const DiscoveredLookup& l) {
    raw->on_change(l, false);
    if (user_discovered) user_discovered(l);
  };
  d.on_discarded = [raw, user_discarded](const DiscoveredLookup& l) {
    raw->on_change(l, true);
    if (user_discarded) user_discarded(l);
  };
  Result<std::unique_ptr<DiscoveryManager>> m = DiscoveryManager::start(std::move(d));
  if (!m.ok()) {
    im->stop();
    return m.status();
  }
  im->manager = std::move(*m);
  im->reaper = std::thread([raw] { raw->reap(); });
  DJINN_LOG(kInfo, kLog) << "discovery service on " << im->rpc_endpoint << ", events on " << im->events_endpoint;
  return std::unique_ptr<DiscoveryService>(new DiscoveryService(std::move(im)));
}

DiscoveryService::DiscoveryService(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DiscoveryService::~DiscoveryService() { stop(); }
const std::string& DiscoveryService::rpc_endpoint() const { return impl_->rpc_endpoint; }
const std::string& DiscoveryService::events_endpoint() const { return impl_->events_endpoint; }
DiscoveryManager& DiscoveryService::discovery() { return *impl_->manager; }
size_t DiscoveryService::interests() const {
  std::lock_guard lock(impl_->mu);
  return impl_->interests.size();
}
void DiscoveryService::stop() { impl_->stop(); }

// ---------------------------------------------------------------------------------------------
DiscoveryClient::DiscoveryClient(rpc::ClientOptions options) : client_(std::make_unique<rpc::Client>(std::move(options))) {}
DiscoveryClient::~DiscoveryClient() = default;

namespace {
rpc::CallOptions idempotent(rpc::CallOptions call) {
  call.idempotent = true;
  return call;
}

Status read_lookups(capnp::List<proto::DiscoveredLookup>::Reader in, std::vector<DiscoveredLookup>& out) {
  for (auto l : in) {
    Result<DiscoveredLookup> d = from_wire(l);
    if (!d.ok()) return d.status();
    out.push_back(std::move(*d));
  }
  return Status::Ok();
}
}  // namespace

Result<Interest> DiscoveryClient::register_interest(const std::vector<std::string>& groups, int64_t duration_ms, rpc::CallOptions call) {
  capnp::MallocMessageBuilder msg;
  auto p = msg.initRoot<proto::RegisterInterestParams>();
  auto g = p.initGroups(static_cast<unsigned>(groups.size()));
  for (size_t i = 0; i < groups.size(); ++i) g.set(static_cast<unsigned>(i), groups[i]);
  p.setDurationMs(duration_ms);
  rpc::Reply reply = client_->call("discovery.register", msg, call);
  return rpc::read_reply<Interest>(reply, "discovery.register", [](rpc::Reply& r) -> Result<Interest> {
    auto res = r.results<proto::RegisterInterestResult>();
    Interest out;
    out.id = res.getId();
    out.event_kind = res.getEventKind().cStr();
    out.events_endpoint = res.getEventsEndpoint().cStr();
    out.expiration_ms = res.getExpirationMs();
    out.event_seq = res.getEventSeq();
    DJINN_RETURN_IF_ERROR(read_lookups(res.getLookups(), out.lookups));
    return out;
  });
}

Result<int64_t> DiscoveryClient::renew(uint64_t id, int64_t duration_ms, rpc::CallOptions call) {
  capnp::MallocMessageBuilder msg;
  auto p = msg.initRoot<proto::RenewInterestParams>();
  p.setId(id);
  p.setDurationMs(duration_ms);
  rpc::Reply reply = client_->call("discovery.renew", msg, idempotent(call));
  return rpc::read_reply<int64_t>(reply, "discovery.renew",
                                  [](rpc::Reply& r) -> Result<int64_t> { return r.results<proto::RenewInterestResult>().getExpirationMs(); });
}

Status DiscoveryClient::cancel(uint64_t id, rpc::CallOptions call) {
  capnp::MallocMessageBuilder msg;
  msg.initRoot<proto::CancelInterestParams>().setId(id);
  return client_->call("discovery.cancel", msg, idempotent(call)).status();
}

Result<Interest> DiscoveryClient::snapshot(uint64_t id, rpc::CallOptions call) {
  capnp::MallocMessageBuilder msg;
  msg.initRoot<proto::SnapshotParams>().setId(id);
  rpc::Reply reply = client_->call("discovery.snapshot", msg, idempotent(call));
  return rpc::read_reply<Interest>(reply, "discovery.snapshot", [id](rpc::Reply& r) -> Result<Interest> {
    auto res = r.results<proto::SnapshotResult>();
    Interest out;
    out.id = id;
    out.event_seq = res.getEventSeq();
    DJINN_RETURN_IF_ERROR(read_lookups(res.getLookups(), out.lookups));
    return out;
  });
}

Result<DiscoveryEvent> decode_discovery_event(const events::Event& event) {
  try {
    auto reader = event.reader();
    auto ev = reader.getRoot<proto::DiscoveryEvent>();
    Result<DiscoveredLookup> l = from_wire(ev.getLookup());
    if (!l.ok()) return invalid_argument("discovery event: " + l.status().message());
    return DiscoveryEvent{ev.getDiscarded(), std::move(*l)};
  } catch (const kj::Exception& e) {
    return invalid_argument(std::string("malformed discovery event: ") + e.getDescription().cStr());
  }
}

}  // namespace djinn::discovery
