// The space protocol served over RPC, and the whole djinn-space service in one object. Every input
// is checked here, at the edge (model conversions validate what they read); the engine's statuses
// go back unchanged, since the codes are the wire's.
#include "djinn/space/service.h"

#include <atomic>
#include <filesystem>
#include <map>
#include <mutex>
#include <shared_mutex>

#include <kj/exception.h>

#include "djinn/core/daemon_flags.h"
#include "djinn/core/digest.h"
#include "djinn/core/events.h"
#include "djinn/core/fault.h"
#include "djinn/core/files.h"
#include "djinn/core/log.h"
#include "djinn/core/model_capnp.h"
#include "djinn/lease/service.h"
#include "djinn/lookup/keeper.h"
#include "djinn/proto/space.capnp.h"
#include "djinn/space/txn_manager.h"

namespace djinn::space {
namespace {

constexpr size_t kMaxManagerBytes = 1024;
constexpr size_t kMaxManagerClients = 64;

Status malformed(std::string_view method, const kj::Exception& e) {
  return invalid_argument("malformed " + std::string(method) + ": " + e.getDescription().cStr());
}

// The transaction of a request: none when unset. A TxnRef without an id is refused, not taken as
// none: its sender meant a transaction, and doing the operation outside it could not be undone.
Result<std::optional<TxnRef>> txn_from(bool has, proto::TxnRef::Reader in, std::string_view method) {
  if (!has) return std::optional<TxnRef>();
  txn::TxnId id;
  if (in.hasId()) id = txn::TxnId{in.getId().getHi(), in.getId().getLo()};
  if (id.is_nil()) {
    return invalid_argument(std::string(method) + ": the transaction's id is nil; leave txn unset to work outside a "
                            "transaction, or use the id txn.create answered");
  }
  std::string manager(in.getManager().cStr(), in.getManager().size());
  bool endpoint = manager.rfind("tcp://", 0) == 0 || manager.rfind("ipc://", 0) == 0 || manager.rfind("inproc://", 0) == 0;
  if (!endpoint || manager.size() > kMaxManagerBytes) {
    return invalid_argument(std::string(method) + ": the transaction's manager must be a tcp://, ipc:// or inproc:// "
                            "endpoint of at most " + std::to_string(kMaxManagerBytes) +
                            " bytes (the manager of txn.create's answer)");
  }
  return std::optional<TxnRef>(TxnRef{id, std::move(manager)});
}

Result<ContentHash> hash_from(capnp::Data::Reader data, std::string_view method) {
  std::optional<ContentHash> h = hash_from_bytes(std::span<const uint8_t>(data.begin(), data.size()));
  if (!h) return invalid_argument(std::string(method) + ": a hash of " + std::to_string(data.size()) + " bytes: 32 expected (BLAKE2b-256)");
  return *h;
}

// A list of hashes in one call (hasChunks, getChunks) is at most kMaxHashesPerCall long.
Status check_hash_count(size_t n, std::string_view method) {
  if (n <= kMaxHashesPerCall) return Status::Ok();
  return invalid_argument(std::string(method) + ": at most " + std::to_string(kMaxHashesPerCall) + " hashes per call");
}

// One chunk of space.putChunk or space.putChunks, checked against the hash it carries or named
// here; `out` (a PutChunkResult or a PutChunksItem) gets whether it was new and its name.
template <class Out>
Result<ContentHash> put_chunk(ValueStore& values, proto::PutChunkParams::Reader p, std::string_view method, Out out) {
  auto data = p.getData();
  std::span<const uint8_t> bytes(data.begin(), data.size());
  Result<bool> stored = false;
  ContentHash h{};
  if (p.getHash().size() == 0) {
    h = hash_bytes(bytes);
    stored = values.put_chunk_hashed(h, bytes);
  } else {
    Result<ContentHash> given = hash_from(p.getHash(), method);
    if (!given.ok()) return given.status();
    h = *given;
    stored = values.put_chunk(h, bytes);
  }
  if (!stored.ok()) return Status(stored.status().code(), std::string(method) + ": " + stored.status().message());
  out.setStored(*stored);
  out.setHash(capnp::Data::Reader(h.data(), h.size()));
  return h;
}

// A template from a request. It is matched against every entry it waits for, and a notify
// template is stored: it may be no larger than the largest entry.
Result<Template> template_from(proto::Template::Reader in, size_t max_bytes, std::string_view method) {
  size_t bytes = encoded_bytes(in);
  if (bytes > max_bytes) {
    return invalid_argument(std::string(method) + ": template of " + std::to_string(bytes) + " bytes: at most " +
                            std::to_string(max_bytes) + " (the largest entry this space takes)");
  }
  Result<Template> t = from_capnp(in);
  if (!t.ok()) return Status(t.status().code(), std::string(method) + ": " + t.status().message());
  return t;
}

void put_entries(capnp::List<proto::Entry>::Builder out, const std::vector<Entry>& entries) {
  for (size_t i = 0; i < entries.size(); ++i) to_capnp(entries[i], out[static_cast<unsigned>(i)]);
}

}  // namespace

// Also the participant the RPC methods drive: it forwards to the space once that is open.
struct SpaceService::Impl final : txn::Participant {
  SpaceServiceOptions options;
  std::string rpc_endpoint;
  std::string events_endpoint;
  std::string participant;
  ServiceId id;
  // This run, given with every join: what the space did under a transaction before a restart is
  // lost, so a manager that sees it join again under a new one aborts the transaction.
  // 62 random bits, never 0 ("not given"): a version-4 id's low word has its variant bits set.
  uint64_t incarnation = txn::TxnId::random().lo;
  std::unique_ptr<events::Publisher> publisher;
  std::unique_ptr<lease::Landlord> landlord;
  std::unique_ptr<ValueStore> values;
  std::unique_ptr<rpc::Server> server;
  std::unique_ptr<lease::LandlordService> lease_service;
  std::unique_ptr<TxnManager> manager;
  std::unique_ptr<Space> space_owner;
  std::atomic<Space*> space{nullptr};
  std::mutex stop_mu;
  bool stopped = false;

  std::shared_mutex forward_mu;  // guards the forwarding targets
  lease::LandlordService* forward_service = nullptr;
  Space* forward_space = nullptr;

  std::mutex clients_mu;  // guards clients and joins_in_flight: managers this space joins transactions at
  // Joins awaiting an answer, by manager: a client with some is never dropped (dropping it would
  // answer them CANCELLED). Declared before `clients`, whose destruction answers the last ones.
  std::map<std::string, int> joins_in_flight;
  std::map<std::string, std::shared_ptr<rpc::Client>> clients;

  void forward(const lease::LeaseEvent& event) {
    std::shared_lock lock(forward_mu);
    if (forward_service) {
      forward_service->on_event(event);
    } else if (publisher) {
      lease::LandlordService::publish(*publisher, event, rpc_endpoint);
    }
    if (forward_space) forward_space->on_lease_event(event);
  }

  // A client per manager, at most kMaxManagerClients of them: endpoints come from requests, so the
  // oldest with no join awaiting an answer is dropped rather than letting callers make the space
  // hold a connection per name. `hold` counts a join on it, atomically with the lookup.
  std::shared_ptr<rpc::Client> client_for(const std::string& endpoint, bool hold = false) {
    std::shared_ptr<rpc::Client> dropped;  // destroyed after the lock: it joins its I/O thread
    std::lock_guard lock(clients_mu);
    auto& c = clients[endpoint];
    if (!c) {
      rpc::ClientOptions o{.endpoint = endpoint};
      o.curve = options.client_curve;
      o.reconnect_interval_max = std::chrono::milliseconds(200);
      c = std::make_shared<rpc::Client>(o);
    }
    std::shared_ptr<rpc::Client> out = c;
    if (hold) ++joins_in_flight[endpoint];
    if (clients.size() > kMaxManagerClients) {
      for (auto it = clients.begin(); it != clients.end(); ++it) {
        if (it->first != endpoint && !joins_in_flight.count(it->first)) {
          dropped = std::move(it->second);
          clients.erase(it);
          break;
        }
      }
    }
    return out;
  }

  // The manager of this process is called directly (no round trip to itself, and no need for the
  // service role on its own port).
  bool local_manager(const std::string& endpoint) const { return manager && endpoint == rpc_endpoint; }

  // Asynchronous to a remote manager: one that does not answer holds up only the operations under
  // its own transactions.
  void join(const TxnRef& ref, const std::string& name, std::function<void(Status)> done) {
    if (local_manager(ref.manager)) return done(manager->join(ref.id, name, incarnation));
    {
      // Managers named in requests that have not answered yet each pin a client (sockets and a
      // thread): past kMaxManagerClients of them a join to yet another is refused, retryably.
      std::unique_lock lock(clients_mu);
      if (!joins_in_flight.count(ref.manager) && joins_in_flight.size() >= kMaxManagerClients) {
        size_t waiting = joins_in_flight.size();
        lock.unlock();
        return done(unavailable("transaction " + ref.id.to_string() + ": joins at " + std::to_string(waiting) +
                                " other managers still await their answers; retry later"));
      }
    }
    capnp::MallocMessageBuilder message;
    auto p = message.initRoot<proto::JoinParams>();
    p.initTxn().setHi(ref.id.hi);
    p.getTxn().setLo(ref.id.lo);
    p.setParticipant(name);
    p.setIncarnation(incarnation);
    rpc::CallOptions call;
    call.timeout = options.join_timeout;
    call.idempotent = true;
    client_for(ref.manager, true)
        ->call_async("txn.join", message, call, [this, endpoint = ref.manager, done = std::move(done)](rpc::Reply reply) {
          {
            std::lock_guard lock(clients_mu);
            if (--joins_in_flight[endpoint] <= 0) joins_in_flight.erase(endpoint);
          }
          done(reply.status());
        });
  }

  txn::Outcome ask(const txn::InDoubt& d) {
    if (local_manager(d.coordinator)) return manager->outcome(d.txn);
    capnp::MallocMessageBuilder message;
    auto p = message.initRoot<proto::TxnParams>();
    p.initTxn().setHi(d.txn.hi);
    p.getTxn().setLo(d.txn.lo);
    rpc::CallOptions call;
    call.timeout = std::chrono::milliseconds(2000);
    call.idempotent = true;
    rpc::Reply reply = client_for(d.coordinator)->call("txn.outcome", message, call);
    if (!reply.ok()) return txn::Outcome::kUnknown;
    try {
      switch (reply.results<proto::OutcomeResult>().getOutcome()) {
        case proto::Outcome::COMMITTED: return txn::Outcome::kCommitted;
        case proto::Outcome::ABORTED: return txn::Outcome::kAborted;
        default: return txn::Outcome::kActive;
      }
    } catch (const kj::Exception&) {
      return txn::Outcome::kUnknown;
    }
  }

  void stop() {
    std::lock_guard stop_lock(stop_mu);
    if (stopped) return;
    stopped = true;
    if (server) server->stop();
    if (manager) manager->stop();
    {
      std::unique_lock lock(forward_mu);
      forward_service = nullptr;
      forward_space = nullptr;
    }
    {
      // The joins still awaiting a remote manager are answered (CANCELLED) while the space and the
      // value store are there: their operations hold references to values, let go as they end.
      std::map<std::string, std::shared_ptr<rpc::Client>> closing;
      {
        std::lock_guard lock(clients_mu);
        closing.swap(clients);
      }
      closing.clear();  // joins each client's I/O thread, whose callbacks take clients_mu
    }
    space = nullptr;
    space_owner.reset();
    lease_service.reset();
    manager.reset();
    landlord.reset();
    values.reset();
    if (publisher) publisher->stop();
    DJINN_LOG(kInfo, "space") << options.name << ": stopped";
  }

  Result<txn::Vote> prepare(const txn::TxnId& t, std::string_view c) override {
    Space* sp = space.load();
    return sp ? sp->prepare(t, c) : Result<txn::Vote>(unavailable("the space is starting"));
  }
  Status commit(const txn::TxnId& t) override {
    Space* sp = space.load();
    return sp ? sp->commit(t) : unavailable("the space is starting");
  }
  Status abort(const txn::TxnId& t) override {
    Space* sp = space.load();
    return sp ? sp->abort(t) : unavailable("the space is starting");
  }

  void register_methods();
  void register_match(const std::string& method, bool take, bool wait, bool many);
};

void SpaceService::Impl::register_match(const std::string& method, bool take, bool wait, bool many) {
  server->handle_deferred(
      method,
      [this, method, take, wait, many](const rpc::CallContext& ctx, capnp::MessageReader& message, rpc::Responder responder) {
        Space* sp = space.load();
        if (!sp) return responder.reply(unavailable(method + ": the space is starting"));
        MatchRequest request;
        request.take = take;
        try {
          auto p = message.getRoot<proto::MatchParams>();
          Result<Template> tmpl = template_from(p.getTemplate(), options.max_entry_bytes, method);
          if (!tmpl.ok()) return responder.reply(tmpl.status());
          request.tmpl = std::move(*tmpl);
          Result<std::optional<TxnRef>> t = txn_from(p.hasTxn(), p.getTxn(), method);
          if (!t.ok()) return responder.reply(t.status());
          request.txn = std::move(*t);
          if (wait) {
            int64_t ms = p.getTimeoutMs();
            if (ms < 0 || ms > kMaxWait.count()) {
              return responder.reply(invalid_argument(method + ": timeoutMs " + std::to_string(ms) + ": must be 0.." +
                                                      std::to_string(kMaxWait.count())));
            }
            request.timeout = std::chrono::milliseconds(ms);
            // A wait longer than the caller listens would answer nobody.
            if (ctx.deadline != rpc::Clock::time_point::max()) {
              auto left = std::chrono::duration_cast<std::chrono::milliseconds>(ctx.deadline - rpc::Clock::now()) -
                          std::chrono::milliseconds(20);
              request.timeout = std::max(std::chrono::milliseconds(0), std::min(request.timeout, left));
            }
          }
          if (many) {
            uint32_t max = p.getMaxEntries();
            if (max == 0 || max > kMaxTakeMany) {
              return responder.reply(invalid_argument(method + ": maxEntries " + std::to_string(max) + ": must be 1.." +
                                                      std::to_string(kMaxTakeMany)));
            }
            request.max = max;
          }
        } catch (const kj::Exception& e) {
          return responder.reply(malformed(method, e));
        }
        request.deadline = ctx.deadline;
        auto shared = std::make_shared<rpc::Responder>(std::move(responder));
        sp->match_async(std::move(request), [shared](Result<std::vector<Entry>> r) {
          if (!r.ok()) return shared->reply(r.status());
          capnp::MallocMessageBuilder reply(rpc::kSmallMessageWords);
          put_entries(reply.initRoot<proto::MatchResult>().initEntries(static_cast<unsigned>(r->size())), *r);
          shared->reply(Status::Ok(), reply);
        });
      },
      {.min_role = security::Role::kClient});
}

void SpaceService::Impl::register_methods() {
  rpc::Server& s = *server;
  const rpc::MethodOptions client_inline{.min_role = security::Role::kClient, .blocking = false};
  const rpc::MethodOptions client_blocking{.min_role = security::Role::kClient, .blocking = true};

  s.handle_deferred(
      "space.write",
      [this](const rpc::CallContext& ctx, capnp::MessageReader& message, rpc::Responder responder) {
        Space* sp = space.load();
        if (!sp) return responder.reply(unavailable("space.write: the space is starting"));
        WriteRequest request;
        // Keys are per client, as in the RPC server's own reply cache.
        if (!ctx.idempotency_key.empty()) {
          request.idempotency_key = std::string(ctx.client_key) + ":" + to_hex(digest128(ctx.idempotency_key));
        }
        try {
          auto p = message.getRoot<proto::WriteParams>();
          if (!p.hasEntry()) return responder.reply(invalid_argument("space.write: entry is missing"));
          Result<Entry> entry = from_capnp(p.getEntry());
          if (!entry.ok()) return responder.reply(Status(entry.status().code(), "space.write: " + entry.status().message()));
          request.entry = std::move(*entry);
          request.duration_ms = p.getDurationMs();
          request.holder.assign(p.getHolder().cStr(), p.getHolder().size());
          Result<std::optional<TxnRef>> t = txn_from(p.hasTxn(), p.getTxn(), "space.write");
          if (!t.ok()) return responder.reply(t.status());
          request.txn = std::move(*t);
        } catch (const kj::Exception& e) {
          return responder.reply(malformed("space.write", e));
        }
        auto shared = std::make_shared<rpc::Responder>(std::move(responder));
        sp->write_async(std::move(request), [shared, where = rpc_endpoint](Result<Written> r) {
          if (!r.ok()) return shared->reply(r.status());
          capnp::MallocMessageBuilder reply(rpc::kSmallMessageWords);
          auto root = reply.initRoot<proto::WriteResult>();
          to_capnp(LeaseInfo{r->lease_id, r->expiration_ms}, root.initLease());
          root.setLandlord(where);
          root.setGrantedMs(r->granted_ms);
          shared->reply(Status::Ok(), reply);
        });
      },
      {.min_role = security::Role::kClient});

  s.handle_deferred(
      "space.writeMany",
      [this](const rpc::CallContext& ctx, capnp::MessageReader& message, rpc::Responder responder) {
        Space* sp = space.load();
        if (!sp) return responder.reply(unavailable("space.writeMany: the space is starting"));
        std::vector<WriteRequest> requests;
        // Entries that do not decode are refused on their own, like those the space refuses.
        std::vector<std::pair<size_t, Status>> undecoded;
        try {
          auto p = message.getRoot<proto::WriteManyParams>();
          auto list = p.getEntries();
          if (list.size() == 0 || list.size() > kMaxWriteMany) {
            return responder.reply(invalid_argument("space.writeMany: " + std::to_string(list.size()) +
                                                    " entries: must be 1.." + std::to_string(kMaxWriteMany) +
                                                    " (split the list)"));
          }
          Result<std::optional<TxnRef>> t = txn_from(p.hasTxn(), p.getTxn(), "space.writeMany");
          if (!t.ok()) return responder.reply(t.status());
          std::string holder(p.getHolder().cStr(), p.getHolder().size());
          // Keys are per client and per entry: a resend answers each with its first outcome.
          std::string key;
          if (!ctx.idempotency_key.empty()) {
            key = std::string(ctx.client_key) + ":" + to_hex(digest128(ctx.idempotency_key)) + "#";
          }
          requests.resize(list.size());
          for (unsigned i = 0; i < list.size(); ++i) {
            WriteRequest& r = requests[i];
            r.duration_ms = p.getDurationMs();
            r.txn = *t;
            r.holder = holder;
            if (!key.empty()) r.idempotency_key = key + std::to_string(i);
            Result<Entry> e = from_capnp(list[i]);
            if (!e.ok()) {
              undecoded.emplace_back(i, Status(e.status().code(), "space.writeMany: " + e.status().message()));
              continue;
            }
            r.entry = std::move(*e);
          }
        } catch (const kj::Exception& e) {
          return responder.reply(malformed("space.writeMany", e));
        }
        auto shared = std::make_shared<rpc::Responder>(std::move(responder));
        auto write = [shared, undecoded, where = rpc_endpoint](std::vector<Result<Written>> results) {
          for (const auto& [i, st] : undecoded) results[i] = st;
          capnp::MallocMessageBuilder reply;
          auto root = reply.initRoot<proto::WriteManyResult>();
          auto items = root.initItems(static_cast<unsigned>(results.size()));
          for (unsigned i = 0; i < results.size(); ++i) {
            const Result<Written>& r = results[i];
            items[i].setCode(static_cast<uint16_t>(r.status().code()));
            if (!r.ok()) {
              items[i].setMessage(r.status().message());
              continue;
            }
            to_capnp(LeaseInfo{r->lease_id, r->expiration_ms}, items[i].initLease());
            items[i].setGrantedMs(r->granted_ms);
          }
          root.setLandlord(where);
          shared->reply(Status::Ok(), reply);
        };
        // An entry that did not decode has no type: the space refuses it on its own. The entries
        // are checked here, on the RPC thread, as single writes are: a list of 1,000 takes a few
        // milliseconds of it.
        sp->write_many_async(std::move(requests), std::move(write));
      },
      {.min_role = security::Role::kClient});

  register_match("space.read", false, true, false);
  register_match("space.take", true, true, false);
  register_match("space.readIfExists", false, false, false);
  register_match("space.takeIfExists", true, false, false);
  register_match("space.takeMany", true, true, true);

  // On a worker (a page is a scan); one under a transaction the space must first join is answered
  // from the joiner thread once its manager has answered, and holds no worker meanwhile.
  s.handle_deferred(
      "space.contents",
      [this](const rpc::CallContext&, capnp::MessageReader& message, rpc::Responder responder) {
        Space* sp = space.load();
        if (!sp) return responder.reply(unavailable("space.contents: the space is starting"));
        std::optional<Template> tmpl;
        std::optional<TxnRef> txn;
        uint64_t cursor = 0;
        uint32_t max = 0;
        try {
          auto p = message.getRoot<proto::ContentsParams>();
          Result<Template> read = template_from(p.getTemplate(), options.max_entry_bytes, "space.contents");
          if (!read.ok()) return responder.reply(read.status());
          tmpl = std::move(*read);
          Result<std::optional<TxnRef>> t = txn_from(p.hasTxn(), p.getTxn(), "space.contents");
          if (!t.ok()) return responder.reply(t.status());
          txn = std::move(*t);
          cursor = p.getCursor();
          max = p.getMaxEntries();
        } catch (const kj::Exception& e) {
          return responder.reply(malformed("space.contents", e));
        }
        auto shared = std::make_shared<rpc::Responder>(std::move(responder));
        sp->contents_async(*tmpl, cursor, max, std::move(txn), [shared](Result<ContentsPage> page) {
          if (!page.ok()) return shared->reply(Status(page.status().code(), "space.contents: " + page.status().message()));
          capnp::MallocMessageBuilder reply;
          auto out = reply.initRoot<proto::ContentsResult>();
          put_entries(out.initEntries(static_cast<unsigned>(page->entries.size())), page->entries);
          out.setCursor(page->cursor);
          out.setDone(page->done);
          shared->reply(Status::Ok(), reply);
        });
      },
      client_blocking);

  s.method<proto::SpaceNotifyParams, proto::SpaceNotifyResult>(
      "space.notify",
      [this](const rpc::CallContext&, proto::SpaceNotifyParams::Reader p, proto::SpaceNotifyResult::Builder out) -> Status {
        Space* sp = space.load();
        if (!sp) return unavailable("space.notify: the space is starting");
        Result<Template> tmpl = template_from(p.getTemplate(), options.max_entry_bytes, "space.notify");
        if (!tmpl.ok()) return tmpl.status();
        std::string holder(p.getHolder().cStr(), p.getHolder().size());
        Result<NotifyRegistration> reg = sp->notify(*tmpl, p.getDurationMs(), std::move(holder));
        if (!reg.ok()) return reg.status();
        out.setId(reg->id);
        out.setExpirationMs(reg->expiration_ms);
        out.setEventKind(reg->event_kind);
        out.setEventsEndpoint(events_endpoint);
        out.setLandlord(rpc_endpoint);
        return Status::Ok();
      },
      client_blocking);

  s.method<proto::StatsParams, proto::StatsResult>(
      "space.stats",
      [this](const rpc::CallContext&, proto::StatsParams::Reader, proto::StatsResult::Builder out) -> Status {
        Space* sp = space.load();
        if (!sp) return unavailable("space.stats: the space is starting");
        SpaceStats st = sp->stats();
        ValueStats vs = values->stats();
        out.setEntries(st.entries);
        out.setWaiters(st.waiters);
        out.setInDoubt(st.in_doubt);
        out.setValues(vs.values);
        out.setChunks(vs.chunks);
        out.setChunkBytes(vs.chunk_bytes);
        out.setManifestBytes(vs.manifest_bytes);
        out.setMaxValueBytes(vs.max_bytes);
        return Status::Ok();
      },
      client_inline);

  // ---- large values ----

  s.method<proto::PutChunkParams, proto::PutChunkResult>(
      "space.putChunk",
      [this](const rpc::CallContext&, proto::PutChunkParams::Reader p, proto::PutChunkResult::Builder out) -> Status {
        Result<ContentHash> h = put_chunk(*values, p, "space.putChunk", out);
        out.setKeptMs(static_cast<uint64_t>(options.value_grace.count()));
        return h.status();
      },
      client_blocking);
  s.method<proto::PutChunksParams, proto::PutChunksResult>(
      "space.putChunks",
      [this](const rpc::CallContext&, proto::PutChunksParams::Reader p, proto::PutChunksResult::Builder out) -> Status {
        auto chunks = p.getChunks();
        if (chunks.size() == 0 || chunks.size() > kMaxHashesPerCall) {
          return invalid_argument("space.putChunks: " + std::to_string(chunks.size()) + " chunks: must be 1.." +
                                  std::to_string(kMaxHashesPerCall));
        }
        auto items = out.initItems(chunks.size());
        for (unsigned i = 0; i < chunks.size(); ++i) {
          Result<ContentHash> h = put_chunk(*values, chunks[i], "space.putChunks", items[i]);
          items[i].setCode(static_cast<uint16_t>(h.status().code()));
          if (!h.ok()) items[i].setMessage(h.status().message());
        }
        out.setKeptMs(static_cast<uint64_t>(options.value_grace.count()));
        return Status::Ok();
      },
      client_blocking);
  s.method<proto::HasChunksParams, proto::HasChunksResult>(
      "space.hasChunks",
      [this](const rpc::CallContext&, proto::HasChunksParams::Reader p, proto::HasChunksResult::Builder out) -> Status {
        auto hashes = p.getHashes();
        DJINN_RETURN_IF_ERROR(check_hash_count(hashes.size(), "space.hasChunks"));
        auto present = out.initPresent(hashes.size());
        for (unsigned i = 0; i < hashes.size(); ++i) {
          Result<ContentHash> h = hash_from(hashes[i], "space.hasChunks");
          if (!h.ok()) return h.status();
          present.set(i, values->has_chunk(*h));
        }
        return Status::Ok();
      },
      client_inline);
  s.method<proto::GetChunksParams, proto::GetChunksResult>(
      "space.getChunks",
      [this](const rpc::CallContext&, proto::GetChunksParams::Reader p, proto::GetChunksResult::Builder out) -> Status {
        auto hashes = p.getHashes();
        DJINN_RETURN_IF_ERROR(check_hash_count(hashes.size(), "space.getChunks"));
        auto chunks = out.initChunks(hashes.size());
        size_t bytes = 0;
        unsigned answered = 0;
        for (; answered < hashes.size(); ++answered) {
          Result<ContentHash> h = hash_from(hashes[answered], "space.getChunks");
          if (!h.ok()) return h.status();
          std::optional<uint64_t> size = values->chunk_size(*h);
          if (!size) continue;  // not stored: left empty
          if (answered > 0 && bytes + *size > kMaxChunksReplyBytes) break;
          size_t read = 0;
          Status st = values->read_chunk(*h, [&](size_t n) {
            read = n;
            return chunks.init(answered, static_cast<unsigned>(n)).begin();
          });
          if (st.code() == Code::kNotFound) {
            chunks.init(answered, 0);  // collected meanwhile
            continue;
          }
          if (!st.ok()) return Status(st.code(), "space.getChunks: " + st.message());
          bytes += read;
        }
        out.setAnswered(answered);
        return Status::Ok();
      },
      client_blocking);
  s.handle(
      "space.getChunk",
      [this](const rpc::CallContext&, capnp::MessageReader& params, capnp::MessageBuilder& results) -> Status {
        Result<ContentHash> h = hash_from(params.getRoot<proto::GetChunkParams>().getHash(), "space.getChunk");
        if (!h.ok()) return h.status();
        auto out = results.initRoot<proto::GetChunkResult>();
        Status st = values->read_chunk(*h, [&](size_t n) { return out.initData(static_cast<unsigned>(n)).begin(); });
        if (!st.ok()) return Status(st.code(), "space.getChunk: " + st.message());
        return Status::Ok();
      },
      client_blocking);
  s.method<proto::PutValueParams, proto::PutValueResult>(
      "space.putValue",
      [this](const rpc::CallContext&, proto::PutValueParams::Reader p, proto::PutValueResult::Builder out) -> Status {
        auto list = p.getChunks();
        if (list.size() > kMaxValueChunks) {
          return invalid_argument("space.putValue: at most " + std::to_string(kMaxValueChunks) + " chunks");
        }
        std::vector<ContentHash> chunks;
        chunks.reserve(list.size());
        for (auto c : list) {
          Result<ContentHash> h = hash_from(c, "space.putValue");
          if (!h.ok()) return h.status();
          chunks.push_back(*h);
        }
        Result<ContentHash> id = values->put_value(p.getSize(), chunks);
        if (!id.ok()) return Status(id.status().code(), "space.putValue: " + id.status().message());
        out.setValueId(capnp::Data::Reader(id->data(), id->size()));
        return Status::Ok();
      },
      client_blocking);
  s.method<proto::GetValueParams, proto::GetValueResult>(
      "space.getValue",
      [this](const rpc::CallContext&, proto::GetValueParams::Reader p, proto::GetValueResult::Builder out) -> Status {
        Result<ContentHash> h = hash_from(p.getValueId(), "space.getValue");
        if (!h.ok()) return h.status();
        Result<Manifest> m = values->get_value(*h);
        if (!m.ok()) return Status(m.status().code(), "space.getValue: " + m.status().message());
        out.setSize(m->size);
        auto chunks = out.initChunks(static_cast<unsigned>(m->chunks.size()));
        auto sizes = out.initChunkSizes(static_cast<unsigned>(m->chunks.size()));
        for (size_t i = 0; i < m->chunks.size(); ++i) {
          chunks.set(static_cast<unsigned>(i), capnp::Data::Reader(m->chunks[i].data(), 32));
          sizes.set(static_cast<unsigned>(i), m->chunk_sizes[i]);
        }
        return Status::Ok();
      },
      client_blocking);
  s.method<proto::StatsParams, proto::SpaceEmpty>(
      "space.collect",
      [this](const rpc::CallContext&, proto::StatsParams::Reader, proto::SpaceEmpty::Builder) -> Status {
        values->collect();
        return Status::Ok();
      },
      {.min_role = security::Role::kAdmin, .blocking = true});
}

SpaceService::SpaceService(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SpaceService::~SpaceService() { stop(); }

Result<std::unique_ptr<SpaceService>> SpaceService::start(SpaceServiceOptions options) {
  if (options.data_dir.empty()) return invalid_argument("space: a data directory is required (values are files)");
  if (options.workers < 1 || options.workers > 256) {
    return invalid_argument("workers " + std::to_string(options.workers) + ": must be between 1 and 256");
  }
  DJINN_RETURN_IF_ERROR(ensure_data_dir(options.data_dir));
  std::filesystem::path dir(options.data_dir);
  Result<ServiceId> id = lookup::load_or_mint_service_id(options.data_dir);
  if (!id.ok()) return id.status();

  auto impl = std::make_unique<Impl>();
  Impl* im = impl.get();
  im->options = options;
  im->id = *id;
  std::unique_ptr<SpaceService> service(new SpaceService(std::move(impl)));

  auto publisher = events::start_publisher(options.events_endpoint, options.curve);
  if (!publisher.ok()) return publisher.status();
  im->publisher = std::move(*publisher);
  im->events_endpoint = rpc::advertised_endpoint(im->publisher->endpoints().at(0), options.advertise_host);

  lease::LandlordOptions landlord_options;
  landlord_options.path = (dir / "space.db").string();
  landlord_options.policy = options.policy;
  landlord_options.on_event = [im](const lease::LeaseEvent& event) { im->forward(event); };
  landlord_options.name = options.name;
  landlord_options.cache_kib = 64 * 1024;
  auto landlord = lease::Landlord::open(std::move(landlord_options));
  if (!landlord.ok()) return landlord.status();
  im->landlord = std::move(*landlord);

  ValueStoreOptions value_options;
  value_options.dir = (dir / "values").string();
  value_options.grace = options.value_grace;
  value_options.gc_interval = options.value_gc_interval;
  value_options.max_bytes = options.max_value_bytes;
  value_options.start_collector = false;  // after the space has taken its entries' references
  // Entry leases are cancelled without an fsync (docs/lease.md): the log is synced before values
  // they referred to go.
  value_options.before_collect = [wal = dir / "space.db-wal"] { return files::sync_file(wal); };
  auto values = ValueStore::open(value_options);
  if (!values.ok()) return values.status();
  im->values = std::move(*values);

  SpaceOptions space_options;
  space_options.landlord = im->landlord.get();
  space_options.publisher = im->publisher.get();
  space_options.values = im->values.get();
  space_options.max_entry_bytes = options.max_entry_bytes;
  space_options.max_entries = options.max_entries;
  space_options.name = options.name;
  space_options.join = [im](const TxnRef& ref, const std::string& name, std::function<void(Status)> done) {
    im->join(ref, name, std::move(done));
  };
  space_options.ask_outcome = [im](const txn::InDoubt& d) { return im->ask(d); };
  auto space = Space::open(std::move(space_options));
  if (!space.ok()) return space.status();
  im->space_owner = std::move(*space);
  im->values->start_collector();
  {
    std::unique_lock lock(im->forward_mu);
    im->forward_space = im->space_owner.get();
  }
  im->space_owner->drop_lapsed();  // expired during the load, before the line above

  rpc::ServerOptions server_options;
  server_options.endpoints = {options.rpc_endpoint};
  server_options.workers = options.workers;
  server_options.curve = options.curve;
  server_options.plaintext_role = options.plaintext_role;
  server_options.name = options.name;
  server_options.limits.max_frame_bytes = kMaxCallBytes;
  im->server = std::make_unique<rpc::Server>(server_options);
  im->lease_service = std::make_unique<lease::LandlordService>(*im->landlord, *im->server, im->publisher.get(), "", 2);
  im->lease_service->reserve(std::string(kEntryResource), "space.write", security::Role::kClient);
  im->lease_service->reserve(std::string(kNotifyResource), "space.notify", security::Role::kClient);
  if (options.txn_manager) {
    TxnManagerOptions m;
    m.log_path = (dir / "txn.db").string();
    m.participant_curve = options.client_curve;
    m.call_timeout = options.participant_timeout;
    im->manager = std::make_unique<TxnManager>(m, *im->server);
  }
  im->register_methods();
  // The participant methods reach the space once it is open; until then they find none.
  serve_participant(*im->server, *im);
  {
    std::unique_lock lock(im->forward_mu);
    im->forward_service = im->lease_service.get();
  }
  if (Status st = im->server->start(); !st.ok()) {
    return Status(st.code(), "rpc endpoint " + options.rpc_endpoint + ": " + st.message());
  }
  // Served from here on, but the methods answer "starting" until the endpoint they give out in
  // receipts and joins is known: it is the bound one (a port * is picked by the bind).
  DJINN_CRASH_POINT("space.service.after_server_start");
  im->rpc_endpoint = rpc::advertised_endpoint(im->server->endpoints().at(0), options.advertise_host);
  im->lease_service->set_endpoint(im->rpc_endpoint);
  im->participant = "space:" + im->id.to_string() + "@" + im->rpc_endpoint;
  im->space_owner->set_participant_name(im->participant);
  if (im->manager) {
    if (Status st = im->manager->start(im->rpc_endpoint); !st.ok()) {
      return Status(st.code(), "transaction manager log: " + st.message());
    }
    im->manager->add_local(im->participant, *im->space_owner);
  }
  im->space = im->space_owner.get();

  DJINN_LOG(kInfo, "space") << options.name << ": serving on " << im->rpc_endpoint << ", events on "
                            << im->events_endpoint << (options.curve ? " with CURVE" : "") << ", ServiceID "
                            << im->id.to_string() << ", " << im->space_owner->size() << " entries"
                            << (im->manager ? ", transaction manager on" : "");
  return service;
}

const std::string& SpaceService::rpc_endpoint() const { return impl_->rpc_endpoint; }
const std::string& SpaceService::events_endpoint() const { return impl_->events_endpoint; }
const ServiceId& SpaceService::service_id() const { return impl_->id; }
const std::string& SpaceService::participant_name() const { return impl_->participant; }
Space& SpaceService::space() { return *impl_->space_owner; }
ValueStore& SpaceService::values() { return *impl_->values; }
lease::Landlord& SpaceService::landlord() { return *impl_->landlord; }
void SpaceService::stop() { impl_->stop(); }

ServiceItem SpaceService::item() const {
  ServiceItem item;
  item.service_id = impl_->id;
  item.interface_types = {std::string(kSpaceType), "djinn.lease.Landlord", "djinn.space.ValueStore"};
  if (impl_->manager) item.interface_types.push_back("djinn.txn.TransactionManager");
  Entry name;
  name.type = "djinn.attr.Name";
  name.fields["name"] = Value(impl_->options.name);
  item.attributes.push_back(std::move(name));
  item.endpoints = Endpoints{impl_->rpc_endpoint, impl_->events_endpoint};
  if (impl_->options.curve) item.public_key = impl_->options.curve->server.public_key;
  return item;
}

}  // namespace djinn::space
