// The djinn registrar's figures in bench-lookup: a LookupService in this process, driven through
// RegistrarClient (blocking calls) and rpc::Client::call_async (calls kept in flight, which the
// client batches on the wire as any asynchronous djinn caller's are).
#include "djinn_side.h"

#include <deque>
#include <future>
#include <mutex>
#include <thread>

#include <kj/exception.h>

#include "djinn/core/events.h"
#include "djinn/core/model_capnp.h"
#include "djinn/lookup/client.h"
#include "djinn/lookup/service.h"
#include "djinn/proto/lookup.capnp.h"
#include "records.h"

namespace djinn::lookup_bench {
namespace {

// Registrations outlive the run: nothing expires while it is measured.
constexpr int64_t kLeaseMs = 3'600'000;
// Clients and registrations in flight of the load: what brings the most registrations into one
// group commit.
constexpr int kLoadClients = 4;
constexpr size_t kLoadDepth = 256;

// Keeps registrations in flight on an asynchronous client, which the clients of a run share as
// the threads of one process share theirs (rpc::Client is thread-safe, and its I/O thread puts
// the calls in flight together into as few messages as it can).
class RegisterPipeline : public Pipeline {
 public:
  explicit RegisterPipeline(std::shared_ptr<rpc::Client> client) : client_(std::move(client)) {}
  ~RegisterPipeline() override {
    while (!pending_.empty()) complete_one();
  }
  bool submit(uint64_t item) override {
    capnp::MallocMessageBuilder message;
    auto p = message.initRoot<proto::RegisterParams>();
    to_capnp(bench_item(item), p.initItem());
    p.setDurationMs(kLeaseMs);
    // As RegistrarClient does: a key, so a registration resent after a lost connection applies once.
    rpc::CallOptions call;
    call.idempotency_key = ServiceId::random().to_string();
    pending_.push_back(client_->call_async("lookup.register", message, call));
    return true;
  }
  bool complete_one() override {
    if (pending_.empty()) return false;
    rpc::Reply reply = pending_.front().get();
    pending_.pop_front();
    return reply.ok();
  }
  size_t in_flight() const override { return pending_.size(); }

 private:
  std::shared_ptr<rpc::Client> client_;
  std::deque<std::future<rpc::Reply>> pending_;
};

// Keeps lookups in flight on one asynchronous client; each answer is decoded and checked.
class DjinnLookupPipeline : public LookupPipeline {
 public:
  DjinnLookupPipeline(std::shared_ptr<rpc::Client> client, LookupKind kind) : client_(std::move(client)), kind_(kind) {}
  ~DjinnLookupPipeline() override {
    while (!pending_.empty()) complete_one();
  }
  bool submit(const Query& q) override {
    capnp::MallocMessageBuilder message;
    ServiceTemplate t = kind_ == LookupKind::kByType ? type_template(q.kind) : name_template(q.item);
    to_capnp(t, message.initRoot<proto::LookupParams>().initTemplate());
    rpc::CallOptions call;
    call.idempotent = true;
    pending_.push_back({q, client_->call_async("lookup.lookup", message, call)});
    return true;
  }
  bool complete_one() override {
    if (pending_.empty()) return false;
    auto [q, future] = std::move(pending_.front());
    pending_.pop_front();
    rpc::Reply reply = future.get();
    return answered(kind_, q, reply);
  }
  size_t in_flight() const override { return pending_.size(); }

  static bool answered(LookupKind kind, const Query& q, rpc::Reply& reply) {
    if (!reply.ok()) return false;
    try {
      auto res = reply.results<proto::LookupResult>();
      if (!res.getFound()) return false;
      Result<ServiceItem> item = from_capnp(res.getItem());
      return item.ok() && answers(kind, q, *item);
    } catch (const kj::Exception&) {
      return false;
    }
  }

 private:
  std::shared_ptr<rpc::Client> client_;
  LookupKind kind_;
  std::deque<std::pair<Query, std::future<rpc::Reply>>> pending_;
};

// One fan-out subscriber: a notify registration of its own and a subscriber to its event stream,
// polled from the caller's thread. The registration is cancelled when the subscriber goes.
class NotifySubscriber {
 public:
  static std::shared_ptr<NotifySubscriber> open(const std::string& endpoint) {
    auto s = std::shared_ptr<NotifySubscriber>(new NotifySubscriber(endpoint));
    ServiceTemplate every{std::nullopt, {kServiceType}, {}};
    auto handle = s->client_.notify(every, lookup::kNoMatchToMatch, kLeaseMs, "bench-lookup");
    if (!handle.ok()) {
      progress("djinn: notify failed: " + handle.status().to_string());
      return nullptr;
    }
    s->handle_ = *handle;
    s->events_ = std::make_unique<events::Subscriber>(events::SubscriberOptions{.endpoint = handle->events_endpoint});
    s->events_->subscribe(handle->event_kind);
    NotifySubscriber* raw = s.get();
    s->events_->on_event([raw](const events::Event& e) {
      Result<lookup::NotifyEvent> ev = lookup::decode_notify_event(e);
      if (!ev.ok()) {
        ++raw->bad_;
        return;
      }
      if (std::optional<uint64_t> n = item_number(ev->item.service_id)) raw->got_->push_back(*n);
    });
    // ZeroMQ joins a subscription asynchronously: give it time before the window opens (untimed).
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    return s;
  }
  ~NotifySubscriber() {
    events_.reset();
    if (handle_.id) (void)client_.cancel(handle_.id);
  }
  bool poll(std::vector<uint64_t>& items, Clock::time_point until) {
    got_ = &items;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
    events_->poll(std::max(left, std::chrono::milliseconds(0)));
    got_ = nullptr;
    return bad_ == 0;
  }

 private:
  explicit NotifySubscriber(const std::string& endpoint) : client_(rpc::ClientOptions{.endpoint = endpoint}) {}
  lookup::RegistrarClient client_;
  lookup::NotifyHandle handle_;
  std::unique_ptr<events::Subscriber> events_;
  std::vector<uint64_t>* got_ = nullptr;
  uint64_t bad_ = 0;
};

}  // namespace

struct DjinnSide::State {
  std::unique_ptr<lookup::LookupService> service;
  std::string endpoint;
};

DjinnSide::DjinnSide(std::unique_ptr<State> state) : state_(std::move(state)) {}
DjinnSide::~DjinnSide() = default;

Result<std::unique_ptr<DjinnSide>> DjinnSide::start(const std::string& data_dir) {
  lookup::LookupServiceOptions o;
  o.data_dir = data_dir + "/djinn-lookup";
  o.policy.max_duration = std::chrono::milliseconds(kLeaseMs);
  o.policy.default_duration = std::chrono::milliseconds(kLeaseMs);
  o.max_items = 10'000'000;
  o.name = "bench-lookup";
  auto service = lookup::LookupService::start(o);
  if (!service.ok()) return service.status();
  auto state = std::make_unique<State>();
  state->endpoint = (*service)->rpc_endpoint();
  state->service = std::move(*service);
  return std::unique_ptr<DjinnSide>(new DjinnSide(std::move(state)));
}

LoadSample DjinnSide::load(uint64_t count) {
  ItemCounter items(0, count);
  std::string endpoint = state_->endpoint;
  auto client = std::make_shared<rpc::Client>(rpc::ClientOptions{.endpoint = endpoint});
  return run_load(kLoadClients, count, [&](int) -> Worker {
    return pipelined(std::make_shared<RegisterPipeline>(client), items, kLoadDepth);
  }, "djinn");
}

ThroughputSample DjinnSide::registrations(ItemCounter& items, int clients, int in_flight, const Plan& plan) {
  std::string endpoint = state_->endpoint;
  auto client = std::make_shared<rpc::Client>(rpc::ClientOptions{.endpoint = endpoint});
  return run_clients(clients, plan, [&](int) -> Worker {
    return pipelined(std::make_shared<RegisterPipeline>(client), items, static_cast<size_t>(in_flight));
  });
}

ThroughputSample DjinnSide::lookups(LookupKind kind, uint64_t loaded, int clients, int in_flight, const Plan& plan) {
  std::string endpoint = state_->endpoint;
  if (in_flight > 1) {
    auto client = std::make_shared<rpc::Client>(rpc::ClientOptions{.endpoint = endpoint});
    return run_clients(clients, plan, [&](int i) -> Worker {
      return pipelined_lookups(std::make_shared<DjinnLookupPipeline>(client, kind),
                               std::make_shared<QueryStream>(kind, loaded, i), static_cast<size_t>(in_flight));
    });
  }
  return run_clients(clients, plan, [&](int i) -> Worker {
    auto client = std::make_shared<lookup::RegistrarClient>(rpc::ClientOptions{.endpoint = endpoint});
    auto queries = std::make_shared<QueryStream>(kind, loaded, i);
    return [client, queries, kind]() -> Step {
      const Query& q = queries->next();
      auto found = client->lookup(kind == LookupKind::kByType ? type_template(q.kind) : name_template(q.item));
      return Step::one(found.ok() && found->has_value() && answers(kind, q, **found));
    };
  });
}

FanoutSample DjinnSide::fanout(const FanoutRun& run, ItemCounter& items, const Plan& plan) {
  std::string endpoint = state_->endpoint;
  return run_fanout(
      run, plan, items,
      [endpoint](int) -> Subscriber {
        std::shared_ptr<NotifySubscriber> s = NotifySubscriber::open(endpoint);
        if (!s) return {};
        return [s](std::vector<uint64_t>& got, Clock::time_point until) { return s->poll(got, until); };
      },
      [endpoint](int) -> Registrar {
        auto client = std::make_shared<lookup::RegistrarClient>(rpc::ClientOptions{.endpoint = endpoint});
        return [client](uint64_t item) { return client->register_service(bench_item(item), kLeaseMs).ok(); };
      });
}

std::vector<std::string> DjinnSide::notes() const {
  return {
      "djinn: the registrar is a LookupService (what djinn-lookup runs) in this process on its own threads, over "
      "ZeroMQ on 127.0.0.1, items and leases in SQLite (WAL) files; a registration is acknowledged after its lease "
      "grant and its item both commit with synchronous=FULL (fsync), concurrent registrations sharing the commits "
      "(group commit)",
      "djinn: blocking figures use a RegistrarClient per client (one call at a time each); in-flight figures and the "
      "load use one rpc::Client shared by the run's client threads, as the threads of one process share theirs: its "
      "I/O thread puts the calls in flight into as few ZeroMQ messages as it can, each way; the load uses " +
          std::to_string(kLoadClients) + " clients with " + std::to_string(kLoadDepth) + " registrations in flight each",
      "djinn: a lookup is one round trip (lookup.lookup returns the item); fan-out: each subscriber holds its own "
      "notify registration (nomatch->match on the service type) and receives only its own event stream "
      "(lookup.notify.<ref>), filtered by the publisher",
  };
}

}  // namespace djinn::lookup_bench
