// The transaction manager over RPC and the participant side over RPC. The protocol itself (phase 1,
// the commit point, phase 2, recovery) is core's Coordinator; this file only carries it.
#include "djinn/space/txn_manager.h"

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <vector>

#include <kj/exception.h>

#include "djinn/core/log.h"
#include "djinn/core/thread_name.h"
#include "djinn/core/model_capnp.h"
#include "djinn/proto/space.capnp.h"

namespace djinn::space {
namespace {

txn::TxnId txn_of(proto::Uuid::Reader id) { return txn::TxnId{id.getHi(), id.getLo()}; }

void set_txn(proto::Uuid::Builder out, const txn::TxnId& id) {
  out.setHi(id.hi);
  out.setLo(id.lo);
}

// A participant reached through RPC.
class RpcParticipant final : public txn::Participant {
 public:
  RpcParticipant(std::string endpoint, const TxnManagerOptions& options) : timeout_(options.call_timeout) {
    rpc::ClientOptions o{.endpoint = std::move(endpoint)};
    o.curve = options.participant_curve;
    o.reconnect_interval_max = std::chrono::milliseconds(200);
    client_ = std::make_unique<rpc::Client>(o);
  }

  Result<txn::Vote> prepare(const txn::TxnId& id, std::string_view coordinator) override {
    capnp::MallocMessageBuilder message;
    auto p = message.initRoot<proto::ParticipantParams>();
    set_txn(p.initTxn(), id);
    p.setCoordinator(std::string(coordinator));
    rpc::Reply reply = client_->call("participant.prepare", message, call());
    return rpc::read_reply<txn::Vote>(reply, "participant.prepare", [](rpc::Reply& r) -> Result<txn::Vote> {
      switch (r.results<proto::VoteResult>().getVote()) {
        case proto::Vote::PREPARED: return txn::Vote::kPrepared;
        case proto::Vote::NOT_CHANGED: return txn::Vote::kNotChanged;
        case proto::Vote::ABORTED: return txn::Vote::kAborted;
      }
      return internal_error("participant.prepare: unknown vote");
    });
  }
  Status commit(const txn::TxnId& id) override { return phase2("participant.commit", id); }
  Status abort(const txn::TxnId& id) override { return phase2("participant.abort", id); }

 private:
  rpc::CallOptions call() const {
    rpc::CallOptions c;
    c.timeout = timeout_;
    c.idempotent = true;  // prepare, commit and abort may all be repeated
    return c;
  }
  Status phase2(const char* method, const txn::TxnId& id) {
    capnp::MallocMessageBuilder message;
    set_txn(message.initRoot<proto::ParticipantParams>().initTxn(), id);
    return client_->call(method, message, call()).status();
  }

  std::chrono::milliseconds timeout_;
  std::unique_ptr<rpc::Client> client_;
};

class RpcResolver final : public txn::ParticipantResolver {
 public:
  explicit RpcResolver(const TxnManagerOptions& options) : options_(options) {}

  void add_local(const std::string& name, txn::Participant& p) {
    std::lock_guard lock(mu_);
    local_[name] = std::shared_ptr<txn::Participant>(&p, [](txn::Participant*) {});
  }

  std::shared_ptr<txn::Participant> resolve(std::string_view name) override {
    std::vector<std::shared_ptr<txn::Participant>> closing;  // destroyed after the lock
    std::lock_guard lock(mu_);
    if (auto it = local_.find(name); it != local_.end()) return it->second;
    std::string endpoint = participant_endpoint(name);
    if (endpoint.empty()) return nullptr;
    if (remote_.size() >= kMaxRemote && !remote_.count(endpoint)) {
      // Endpoints come from joins: connections not in use are closed (after the lock) rather
      // than kept per name.
      for (auto it = remote_.begin(); it != remote_.end();) {
        if (it->second.use_count() == 1) {
          closing.push_back(std::move(it->second));
          it = remote_.erase(it);
        } else {
          ++it;
        }
      }
    }
    auto& p = remote_[endpoint];
    if (!p) p = std::make_shared<RpcParticipant>(endpoint, options_);
    return p;
  }

 private:
  static constexpr size_t kMaxRemote = 256;
  const TxnManagerOptions& options_;
  std::mutex mu_;  // guards local_, remote_
  std::map<std::string, std::shared_ptr<txn::Participant>, std::less<>> local_;
  std::map<std::string, std::shared_ptr<txn::Participant>, std::less<>> remote_;
};

proto::Outcome to_proto(txn::Outcome o) {
  switch (o) {
    case txn::Outcome::kCommitted: return proto::Outcome::COMMITTED;
    case txn::Outcome::kAborted: return proto::Outcome::ABORTED;
    default: return proto::Outcome::ACTIVE;
  }
}

}  // namespace

std::string participant_endpoint(std::string_view name) {
  size_t at = name.find('@');
  if (at == std::string_view::npos || at + 1 >= name.size()) return "";
  return std::string(name.substr(at + 1));
}

struct TxnManager::Impl {
  TxnManagerOptions options;
  RpcResolver resolver{options};
  std::shared_mutex mu;  // guards coordinator's pointer (set once by start, cleared by stop)
  std::unique_ptr<txn::Coordinator> coordinator;
  std::string name;
  std::mutex sweep_mu;
  std::condition_variable sweep_cv;
  bool sweep_stop = false;
  std::thread sweeper;

  // Commits and aborts, queued for the manager's threads.
  static constexpr size_t kMaxQueued = 4096;
  std::mutex jobs_mu;
  std::condition_variable jobs_cv;
  std::deque<std::function<void()>> jobs;
  bool jobs_stop = false;
  std::vector<std::thread> job_threads;

  ~Impl() { stop_jobs(); }
  explicit Impl(TxnManagerOptions o) : options(std::move(o)) {
    try {
      for (int i = 0; i < std::max(1, options.threads); ++i) {
        job_threads.emplace_back([this] {
          name_this_thread("txn-manager");
          run_jobs();
        });
      }
    } catch (...) {
      stop_jobs();  // joins the threads already started
      throw;
    }
  }

  // False when the queue is full or the manager stopping: the caller answers UNAVAILABLE.
  bool post(std::function<void()> job) {
    {
      std::lock_guard lock(jobs_mu);
      if (jobs_stop || jobs.size() >= kMaxQueued) return false;
      jobs.push_back(std::move(job));
    }
    jobs_cv.notify_one();
    return true;
  }
  void run_jobs() {
    std::unique_lock lock(jobs_mu);
    for (;;) {
      jobs_cv.wait(lock, [&] { return jobs_stop || !jobs.empty(); });
      if (jobs.empty()) return;  // stopping, nothing left
      auto job = std::move(jobs.front());
      jobs.pop_front();
      lock.unlock();
      try {
        job();
      } catch (...) {
        // Answered CANCELLED by its dropped responder; the thread goes on.
        DJINN_LOG(kError, "txn") << "a commit or abort ended with an exception";
      }
      lock.lock();
    }
  }
  void stop_jobs() {
    std::deque<std::function<void()>> dropped;  // their responders answer CANCELLED
    {
      std::lock_guard lock(jobs_mu);
      jobs_stop = true;
      dropped.swap(jobs);
    }
    dropped.clear();
    jobs_cv.notify_all();
    for (auto& t : job_threads) {
      if (t.joinable()) t.join();
    }
  }

  template <class F>
  Status with(F&& f) {
    std::shared_lock lock(mu);
    if (!coordinator) return unavailable("the transaction manager is not serving yet");
    return f(*coordinator);
  }

  // Also delivers what the last run left (decided outcomes never acknowledged, the undecided
  // transactions the coordinator aborted when it opened): from here, not from start(), where each
  // participant that does not answer would cost a call's timeout while the space answers "starting".
  void sweep_loop() {
    std::unique_lock lock(sweep_mu);
    for (;;) {
      sweep_cv.wait_for(lock, options.sweep_interval, [&] { return sweep_stop; });
      if (sweep_stop) return;
      lock.unlock();
      (void)with([](txn::Coordinator& c) {
        (void)c.expire_due();
        (void)c.retry_pending();
        return Status::Ok();
      });
      lock.lock();
    }
  }
};

TxnManager::TxnManager(TxnManagerOptions options, rpc::Server& server) : impl_(std::make_unique<Impl>(std::move(options))) {
  Impl* m = impl_.get();
  // create, renew, outcome and join touch the coordinator's memory and queue a log record (its
  // writer thread writes it; no lock is held across a disk write): they run on the I/O thread.
  // commit and abort call participants, on the manager's own threads.
  const rpc::MethodOptions client_inline{.min_role = security::Role::kClient, .blocking = false};

  server.method<proto::CreateTxnParams, proto::CreateTxnResult>(
      "txn.create",
      [m](const rpc::CallContext&, proto::CreateTxnParams::Reader p, proto::CreateTxnResult::Builder out) {
        return m->with([&](txn::Coordinator& c) -> Status {
          Result<txn::TxnId> id = c.begin(std::chrono::milliseconds(p.getLeaseMs()));
          if (!id.ok()) return Status(id.status().code(), "txn.create: " + id.status().message());
          auto ref = out.initTxn();
          set_txn(ref.initId(), *id);
          ref.setManager(m->name);
          return Status::Ok();
        });
      },
      client_inline);
  // On the manager's threads, answered through a Responder (deferred).
  auto on_manager_threads = [m](const char* method, std::function<void(const rpc::CallContext&, txn::TxnId,
                                                                        rpc::Responder&)> run) {
    return [m, method, run = std::move(run)](const rpc::CallContext& ctx, capnp::MessageReader& message,
                                             rpc::Responder responder) {
      txn::TxnId id;
      try {
        id = txn_of(message.getRoot<proto::TxnParams>().getTxn());
      } catch (const kj::Exception& e) {
        return responder.reply(invalid_argument(std::string(method) + ": malformed params: " + e.getDescription().cStr()));
      }
      auto r = std::make_shared<rpc::Responder>(std::move(responder));
      auto deadline = ctx.deadline;  // the context's views point into the request: not kept
      bool queued = m->post([run, method, id, r, deadline] {
        // A call whose caller gave up while it waited is not started: a commit this late would
        // only find its deadline passed and abort the transaction.
        if (deadline != rpc::Clock::time_point::max() && rpc::Clock::now() >= deadline) {
          return r->reply(deadline_exceeded(std::string(method) + ": waited for a free thread of the transaction "
                                            "manager past its deadline; nothing was done"));
        }
        rpc::CallContext later{};
        later.deadline = deadline;
        try {
          run(later, id, *r);
        } catch (const std::exception& e) {
          DJINN_LOG(kError, "txn") << method << " failed: " << e.what();
          if (!r->done()) r->reply(internal_error(std::string(method) + " failed: " + e.what()));
        } catch (const kj::Exception& e) {
          if (!r->done()) r->reply(internal_error(std::string(method) + " failed: " + e.getDescription().cStr()));
        }
      });
      if (!queued) r->reply(unavailable(std::string(method) + ": the transaction manager is stopping or has " +
                                        std::to_string(Impl::kMaxQueued) + " commits and aborts queued"));
    };
  };
  server.handle_deferred(
      "txn.commit",
      on_manager_threads("txn.commit", [m](const rpc::CallContext& ctx, txn::TxnId id, rpc::Responder& r) {
        capnp::MallocMessageBuilder results;
        auto out = results.initRoot<proto::OutcomeResult>();
        Status st = m->with([&](txn::Coordinator& c) -> Status {
          // Phase 1 must end before the caller gives up, or the caller would not learn the outcome.
          auto deadline = ctx.deadline == rpc::Clock::time_point::max()
                              ? txn::Clock::time_point::max()
                              : txn::Clock::now() + (ctx.deadline - rpc::Clock::now()) * 9 / 10;
          Result<txn::Outcome> o = c.commit(id, deadline);
          if (!o.ok()) return o.status();
          out.setOutcome(to_proto(*o));
          return Status::Ok();
        });
        r.reply(st, results);
      }),
      client_inline);
  server.handle_deferred(
      "txn.abort",
      on_manager_threads("txn.abort", [m](const rpc::CallContext&, txn::TxnId id, rpc::Responder& r) {
        r.reply(m->with([&](txn::Coordinator& c) { return c.abort(id); }));
      }),
      client_inline);
  server.method<proto::TxnParams, proto::SpaceEmpty>(
      "txn.renew",
      [m](const rpc::CallContext&, proto::TxnParams::Reader p, proto::SpaceEmpty::Builder) {
        return m->with([&](txn::Coordinator& c) {
          return c.renew(txn_of(p.getTxn()), std::chrono::milliseconds(p.getLeaseMs()));
        });
      },
      client_inline);
  server.method<proto::TxnParams, proto::OutcomeResult>(
      "txn.outcome",
      [m](const rpc::CallContext&, proto::TxnParams::Reader p, proto::OutcomeResult::Builder out) {
        return m->with([&](txn::Coordinator& c) {
          out.setOutcome(to_proto(c.outcome(txn_of(p.getTxn()))));
          return Status::Ok();
        });
      },
      client_inline);
  server.method<proto::JoinParams, proto::SpaceEmpty>(
      "txn.join",
      [m](const rpc::CallContext&, proto::JoinParams::Reader p, proto::SpaceEmpty::Builder) {
        std::string participant(p.getParticipant().cStr(), p.getParticipant().size());
        if (participant.size() > 2048 || participant_endpoint(participant).empty()) {
          return invalid_argument("txn.join: participant '" + participant.substr(0, 100) +
                                  "' is not <kind>:<id>@<rpc endpoint>");
        }
        return m->with([&](txn::Coordinator& c) { return c.join(txn_of(p.getTxn()), participant, p.getIncarnation()); });
      },
      {.min_role = security::Role::kService, .blocking = false});
}

TxnManager::~TxnManager() { stop(); }

Status TxnManager::start(const std::string& name) {
  Impl& m = *impl_;
  txn::CoordinatorOptions o;
  o.path = m.options.log_path;
  o.name = name;
  o.max_lease = m.options.max_lease;
  auto c = txn::Coordinator::open(o, m.resolver);
  if (!c.ok()) return c.status();
  {
    std::unique_lock lock(m.mu);
    m.name = name;
    m.coordinator = std::move(*c);
  }
  m.sweeper = std::thread([&m] { m.sweep_loop(); });
  return Status::Ok();
}

void TxnManager::add_local(const std::string& name, txn::Participant& participant) {
  impl_->resolver.add_local(name, participant);
}

Status TxnManager::join(const txn::TxnId& txn, std::string_view participant, uint64_t incarnation) {
  return impl_->with([&](txn::Coordinator& c) { return c.join(txn, participant, incarnation); });
}

txn::Outcome TxnManager::outcome(const txn::TxnId& txn) {
  txn::Outcome out = txn::Outcome::kUnknown;
  (void)impl_->with([&](txn::Coordinator& c) {
    out = c.outcome(txn);
    return Status::Ok();
  });
  return out;
}

Result<txn::TxnId> TxnManager::begin(std::chrono::milliseconds lease) {
  Result<txn::TxnId> id = unavailable("the transaction manager is not serving yet");
  (void)impl_->with([&](txn::Coordinator& c) {
    id = c.begin(lease);
    return Status::Ok();
  });
  return id;
}

Status TxnManager::renew(const txn::TxnId& txn, std::chrono::milliseconds lease) {
  return impl_->with([&](txn::Coordinator& c) { return c.renew(txn, lease); });
}

Result<txn::Outcome> TxnManager::commit(const txn::TxnId& txn, txn::Clock::time_point deadline) {
  Result<txn::Outcome> outcome = unavailable("the transaction manager is not serving yet");
  (void)impl_->with([&](txn::Coordinator& c) {
    outcome = c.commit(txn, deadline);
    return Status::Ok();
  });
  return outcome;
}

Status TxnManager::abort(const txn::TxnId& txn) {
  return impl_->with([&](txn::Coordinator& c) { return c.abort(txn); });
}

void TxnManager::stop() {
  Impl& m = *impl_;
  m.stop_jobs();  // answers what is still queued CANCELLED (its responders dropped)
  {
    std::lock_guard lock(m.sweep_mu);
    m.sweep_stop = true;
  }
  m.sweep_cv.notify_all();
  if (m.sweeper.joinable()) m.sweeper.join();
  std::unique_lock lock(m.mu);
  m.coordinator.reset();
}

void serve_participant(rpc::Server& server, txn::Participant& participant) {
  const rpc::MethodOptions service_blocking{.min_role = security::Role::kService, .blocking = true};
  txn::Participant* p = &participant;
  server.method<proto::ParticipantParams, proto::VoteResult>(
      "participant.prepare",
      [p](const rpc::CallContext&, proto::ParticipantParams::Reader in, proto::VoteResult::Builder out) -> Status {
        std::string coordinator(in.getCoordinator().cStr(), in.getCoordinator().size());
        if (coordinator.empty() || coordinator.size() > 1024) {
          return invalid_argument("participant.prepare: coordinator name must be 1..1024 bytes");
        }
        Result<txn::Vote> vote = p->prepare(txn_of(in.getTxn()), coordinator);
        if (!vote.ok()) return vote.status();
        out.setVote(*vote == txn::Vote::kPrepared     ? proto::Vote::PREPARED
                    : *vote == txn::Vote::kNotChanged ? proto::Vote::NOT_CHANGED
                                                      : proto::Vote::ABORTED);
        return Status::Ok();
      },
      service_blocking);
  server.method<proto::ParticipantParams, proto::SpaceEmpty>(
      "participant.commit",
      [p](const rpc::CallContext&, proto::ParticipantParams::Reader in, proto::SpaceEmpty::Builder) {
        return p->commit(txn_of(in.getTxn()));
      },
      service_blocking);
  server.method<proto::ParticipantParams, proto::SpaceEmpty>(
      "participant.abort",
      [p](const rpc::CallContext&, proto::ParticipantParams::Reader in, proto::SpaceEmpty::Builder) {
        return p->abort(txn_of(in.getTxn()));
      },
      service_blocking);
}

}  // namespace djinn::space
