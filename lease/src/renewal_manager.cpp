// RenewalManager: keeps leases at any number of landlords renewed. One thread sleeps until the next
// renewal is due, sends the due renewals as one lease.renewBatch per landlord (asynchronously, so a
// landlord that does not answer holds up no other), and applies the answers, which the RPC
// clients' I/O threads queue back to it. Failures are reported on that thread, once each.
// Renewals are scheduled on this process's monotonic clock, from when each renewal was sent plus
// what it was granted: a landlord's expiration is on its own wall clock, which ours may not match.
#include <algorithm>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include <kj/exception.h>

#include "convert.h"
#include "djinn/core/fault.h"
#include "djinn/core/log.h"
#include "djinn/lease/client.h"

namespace djinn::lease {
namespace {

int64_t steady_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Steady-clock times stay far from the limits; a far expiration must not overflow them. Durations
// (a landlord's grant included, which is its word) are taken at most this long: 142,000 years.
constexpr int64_t kLongestMs = int64_t{1} << 52;
int64_t plus(int64_t at_ms, int64_t ms) { return at_ms + std::clamp<int64_t>(ms, -kLongestMs, kLongestMs); }

// A renewal call never waits less than this, even for a lease about to expire: a landlord that
// restarts needs a moment to answer, and a renewal that arrives a little late may still succeed.
constexpr auto kMinCallTimeout = std::chrono::milliseconds(200);

}  // namespace

struct RenewalManager::Impl {
  using Key = std::pair<std::string, LeaseId>;  // (landlord endpoint, lease id)

  struct Tracked {
    HeldLease held;
    int64_t renew_ms = kDurationAny;
    std::optional<int64_t> until_ms;
    int64_t due_ms = 0;        // when idle: the next renewal is due then (steady ms)
    // By then (steady ms) the lease has run out at its landlord, as far as this side can tell;
    // INT64_MAX for a FOREVER lease.
    int64_t ends_ms = 0;
    // Until its landlord first renews it: by then (steady ms) it is given up on when that fails.
    int64_t unconfirmed_until = INT64_MAX;
    std::chrono::milliseconds confirm_within{0};  // as added
    bool in_flight = false;    // a renewal of it is out; not in `schedule` meanwhile
    uint64_t generation = 0;   // answers to an older generation (before a remove/add) are ignored
    std::chrono::milliseconds backoff{0};
  };

  // One renewBatch answer, queued by an RPC client's I/O thread for the manager's thread.
  struct Completion {
    std::string landlord;
    std::vector<std::pair<LeaseId, uint64_t>> items;  // (id, generation), in request order
    int64_t sent_ms = 0;  // steady: the landlord renewed them after this
    rpc::Reply reply;
  };

  explicit Impl(RenewalManagerOptions o) : options(std::move(o)), rng(std::random_device{}()) {
    if (!options.wall_clock) options.wall_clock = [] { return std::chrono::system_clock::now(); };
    options.renew_at_remaining = std::clamp(options.renew_at_remaining, 0.01, 1.0);
    options.jitter = std::clamp(options.jitter, 0.0, 0.9);
    options.max_batch = std::clamp<size_t>(options.max_batch, 1, internal::kMaxBatchItems);
    options.max_landlords = std::max<size_t>(options.max_landlords, 1);
    thread = std::thread([this] { run(); });
  }

  RenewalManagerOptions options;

  mutable std::mutex mu;  // guards everything down to `remotes`
  std::condition_variable cv;
  std::mt19937_64 rng;
  std::map<Key, Tracked> tracked;
  std::set<std::pair<int64_t, Key>> schedule;  // (due_ms, key) of every idle tracked lease
  std::deque<Completion> completions;
  FailureHandler on_failure;
  RenewedHandler on_renewed;
  uint64_t next_generation = 1;
  bool stopping = false;
  // The landlords of the tracked leases: how many are at each, and its client once a renewal went
  // there. Dropped with the landlord's last lease, so landlords named once (an unreachable
  // endpoint each time) do not pile up clients, each a few sockets and a thread. A client is
  // destroyed outside `mu`: its destructor answers its calls in flight, and those callbacks take
  // `mu`.
  struct Remote {
    size_t leases = 0;
    std::shared_ptr<rpc::Client> client;
  };
  std::map<std::string, Remote> remotes;
  using Closing = std::vector<std::shared_ptr<rpc::Client>>;  // clients to destroy once unlocked

  std::thread thread;  // last: started once everything above exists

  void schedule_at(const Key& key, Tracked& t, int64_t due_ms) {
    t.due_ms = due_ms;
    schedule.emplace(due_ms, key);
  }
  void unschedule(const Key& key, const Tracked& t) {
    if (!t.in_flight) schedule.erase({t.due_ms, key});
  }

  int64_t wall_now_ms() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(options.wall_clock().time_since_epoch()).count();
  }
  // What a lease's expiration (the landlord's wall clock) leaves of it, read on ours; >= 0.
  int64_t left_by_wall(const Lease& lease) const {
    return lease.expiration_ms - std::min(wall_now_ms(), lease.expiration_ms);
  }

  // When `renew_at_remaining` of the granted duration is left before `ends_ms`, give or take the
  // jitter.
  int64_t due_before(int64_t ends_ms, int64_t granted_ms, int64_t now) {
    double left = static_cast<double>(std::min(granted_ms, kLongestMs)) * options.renew_at_remaining;
    std::uniform_real_distribution<double> spread(-options.jitter, options.jitter);
    left += left * spread(rng);
    return std::max(now, ends_ms - static_cast<int64_t>(left));
  }

  // A lease as added: all there is is its landlord's expiration, read here on our own wall clock,
  // and its grant, which it cannot outlive. Renewed by the nearer of the two, given up on after
  // the later; at once when the grant is unknown (0).
  void schedule_added(const Key& key, Tracked& t, int64_t now) {
    const Lease& lease = t.held.lease;
    if (lease.expiration_ms == kNeverExpires) {
      t.ends_ms = INT64_MAX;
      return schedule_at(key, t, INT64_MAX);
    }
    int64_t left = left_by_wall(lease);
    if (lease.granted_ms <= 0) {
      t.ends_ms = plus(now, left);
      if (t.confirm_within.count() > 0) t.unconfirmed_until = plus(now, t.confirm_within.count());
      return schedule_at(key, t, now);
    }
    t.ends_ms = plus(now, std::max(left, lease.granted_ms));
    schedule_at(key, t, due_before(plus(now, std::min(left, lease.granted_ms)), lease.granted_ms, now));
  }

  // A lease just renewed: the landlord granted `renewed.granted_ms` at some time after `sent_ms`.
  void schedule_renewed(const Key& key, Tracked& t, const Lease& renewed, int64_t sent_ms, int64_t now) {
    if (renewed.expiration_ms == kNeverExpires) {
      t.ends_ms = INT64_MAX;
      return schedule_at(key, t, INT64_MAX);
    }
    int64_t granted = renewed.granted_ms;
    // A landlord that reports no grant: what its expiration leaves on our clock, re-read soon.
    if (granted <= 0) granted = std::max<int64_t>(left_by_wall(renewed), 1);
    t.ends_ms = plus(sent_ms, granted);
    schedule_at(key, t, due_before(t.ends_ms, granted, now));
  }

  // Stops tracking a lease; its landlord's client goes to `closing` with its last lease.
  void untrack_locked(std::map<Key, Tracked>::iterator it, Closing& closing) {
    auto remote = remotes.find(it->first.first);
    tracked.erase(it);
    if (remote == remotes.end() || --remote->second.leases > 0) return;
    if (remote->second.client) closing.push_back(std::move(remote->second.client));
    remotes.erase(remote);
  }

  Status add(const HeldLease& lease, int64_t renew_ms, std::optional<int64_t> until_ms,
             std::chrono::milliseconds confirm_within) {
    // Refused here rather than failed at the first renewal, when the caller has moved on.
    DJINN_RETURN_IF_ERROR(internal::check_duration(renew_ms, "renewal duration"));
    {
      std::lock_guard lock(mu);
      if (stopping) {
        return failed_precondition("lease " + std::to_string(lease.lease.id) + " at " + lease.landlord +
                                   ": the renewal manager is stopped, it renews nothing more");
      }
      Key key{lease.landlord, lease.lease.id};
      auto it = tracked.find(key);
      if (it != tracked.end()) {
        unschedule(key, it->second);
        tracked.erase(it);  // replaced at the same landlord, which keeps its count
      } else {
        if (!remotes.count(lease.landlord) && remotes.size() >= options.max_landlords) {
          return resource_exhausted("lease " + std::to_string(lease.lease.id) + " at " + lease.landlord +
                                    ": this renewal manager already renews at " + std::to_string(remotes.size()) +
                                    " landlords, its limit (max_landlords); renew it elsewhere, or stop renewing "
                                    "the leases at another landlord first");
        }
        ++remotes[lease.landlord].leases;
      }
      Tracked& t = tracked[key];
      t.held = lease;
      t.renew_ms = renew_ms;
      t.until_ms = until_ms;
      t.generation = next_generation++;
      t.confirm_within = confirm_within;
      schedule_added(key, t, steady_now_ms());
    }
    cv.notify_one();
    return Status::Ok();
  }

  void remove(LeaseId id, const std::string& landlord) {
    Closing closing;
    std::lock_guard lock(mu);
    Key key{landlord, id};
    auto it = tracked.find(key);
    if (it == tracked.end()) return;
    unschedule(key, it->second);
    untrack_locked(it, closing);
  }  // `closing` goes after the lock is released

  void stop() {
    {
      std::lock_guard lock(mu);
      stopping = true;
    }
    cv.notify_all();
    // From inside a failure handler (the manager's own thread) there is nothing to join: the loop
    // ends when the handler returns, and the destructor, called elsewhere, joins it.
    if (thread.joinable() && thread.get_id() != std::this_thread::get_id()) thread.join();
    Closing closing;
    {
      std::lock_guard lock(mu);
      for (auto& [landlord, remote] : remotes) {
        if (remote.client) closing.push_back(std::move(remote.client));
      }
    }
    closing.clear();
  }

  // The client of a landlord that a tracked lease is at.
  std::shared_ptr<rpc::Client> client_for(const std::string& landlord) {
    auto& c = remotes.at(landlord).client;
    if (!c) {
      rpc::ClientOptions o;
      o.endpoint = landlord;
      o.curve = options.curve;
      o.default_timeout = options.call_timeout;
      o.reconnect_interval_max = options.reconnect_interval_max;
      c = std::make_shared<rpc::Client>(std::move(o));
    }
    return c;
  }

  void apply(Completion& c, int64_t now, std::vector<HeldLease>& renewed_out,
             std::vector<std::pair<HeldLease, Status>>& failed, Closing& closing);
  void run();
};

void RenewalManager::Impl::apply(Completion& c, int64_t now, std::vector<HeldLease>& renewed_out,
                                 std::vector<std::pair<HeldLease, Status>>& failed, Closing& closing) {
  Status call_status = c.reply.status();
  std::vector<Status> item_status(c.items.size());
  std::vector<std::optional<Lease>> renewed(c.items.size());
  if (call_status.ok()) {
    try {
      auto items = c.reply.results<proto::BatchResults>().getItems();
      if (items.size() != c.items.size()) {
        call_status = internal_error("landlord " + c.landlord + " answered " + std::to_string(items.size()) +
                                     " items to a renewBatch of " + std::to_string(c.items.size()));
      } else {
        for (unsigned i = 0; i < items.size(); ++i) {
          item_status[i] = internal::status_from_wire(items[i].getCode(), items[i].getMessage().cStr());
          if (!item_status[i].ok()) continue;
          auto lease = internal::lease_from_proto(items[i].getLease());
          if (lease.ok()) {
            renewed[i] = std::move(*lease);
          } else {
            item_status[i] = internal_error("landlord " + c.landlord + " sent a bad lease: " + lease.status().message());
          }
        }
      }
    } catch (const kj::Exception& e) {
      call_status = internal_error("malformed renewBatch reply from " + c.landlord + ": " + e.getDescription().cStr());
    }
  }
  for (size_t i = 0; i < c.items.size(); ++i) {
    Key key{c.landlord, c.items[i].first};
    auto it = tracked.find(key);
    if (it == tracked.end() || it->second.generation != c.items[i].second) continue;  // removed meanwhile
    Tracked& t = it->second;
    t.in_flight = false;
    Status st = call_status.ok() ? item_status[i] : call_status;
    if (st.ok() && DJINN_FAIL_POINT("renewal_manager.renewal_refused")) {
      st = permission_denied("renewal_manager.renewal_refused (injected)");
    }
    if (st.ok()) {
      t.held.lease.expiration_ms = renewed[i]->expiration_ms;
      t.held.lease.granted_ms = renewed[i]->granted_ms;
      t.backoff = std::chrono::milliseconds(0);
      t.unconfirmed_until = INT64_MAX;
      schedule_renewed(key, t, *renewed[i], c.sent_ms, now);
      if (on_renewed) renewed_out.push_back(t.held);
      continue;
    }
    const int64_t give_up_ms = std::min(t.ends_ms, t.unconfirmed_until);
    if (transient(st.code()) && now < give_up_ms) {
      t.backoff = t.backoff.count() == 0 ? options.retry_backoff_min
                                         : std::min(t.backoff * 2, options.retry_backoff_max);
      schedule_at(key, t, std::min(now + t.backoff.count(), give_up_ms));
      continue;
    }
    if (transient(st.code()) && now < t.ends_ms) {
      st = unavailable("lease " + std::to_string(key.second) + " at " + key.first + ": its landlord did not renew it " +
                       "once within " + std::to_string(t.confirm_within.count()) +
                       " ms of its hand-over, so the expiration it came with is not taken on trust: " +
                       st.to_string());
    } else if (transient(st.code())) {
      st = deadline_exceeded("lease " + std::to_string(key.second) + " at " + key.first +
                             " ran out before it could be renewed (expiration " +
                             std::to_string(t.held.lease.expiration_ms) + " ms on the landlord's clock): " +
                             st.to_string());
    }
    failed.emplace_back(std::move(t.held), std::move(st));
    untrack_locked(it, closing);
  }
}

void RenewalManager::Impl::run() {
  struct Outgoing {
    std::shared_ptr<rpc::Client> client;
    std::string landlord;
    std::unique_ptr<capnp::MallocMessageBuilder> message;
    std::vector<std::pair<LeaseId, uint64_t>> items;
    std::chrono::milliseconds timeout;
  };
  std::unique_lock lock(mu);
  while (!stopping) {
    std::vector<HeldLease> renewed;
    std::vector<std::pair<HeldLease, Status>> failed;
    Closing closing;
    int64_t now = steady_now_ms();
    int64_t wall_now = wall_now_ms();  // for `until`, which is on the holder's wall clock
    while (!completions.empty()) {
      Completion c = std::move(completions.front());
      completions.pop_front();
      apply(c, now, renewed, failed, closing);
    }

    // Everything due within the batch window goes now, one batch per landlord.
    std::map<std::string, std::vector<Key>> due;
    int64_t horizon = now + options.batch_window.count();
    while (!schedule.empty() && schedule.begin()->first <= horizon) {
      Key key = schedule.begin()->second;
      schedule.erase(schedule.begin());
      auto it = tracked.find(key);
      Tracked& t = it->second;
      if (t.until_ms && wall_now >= *t.until_ms) {
        untrack_locked(it, closing);  // kept as long as asked: done, not failed
        continue;
      }
      t.in_flight = true;
      due[key.first].push_back(std::move(key));
    }
    std::vector<Outgoing> outgoing;
    for (auto& [landlord, keys] : due) {
      auto client = client_for(landlord);
      for (size_t start = 0; start < keys.size(); start += options.max_batch) {
        size_t end = std::min(keys.size(), start + options.max_batch);
        Outgoing out{client, landlord, std::make_unique<capnp::MallocMessageBuilder>(), {}, options.call_timeout};
        auto list = out.message->initRoot<proto::RenewBatchParams>().initItems(static_cast<unsigned>(end - start));
        int64_t earliest = INT64_MAX;
        for (size_t k = start; k < end; ++k) {
          Tracked& t = tracked.at(keys[k]);
          int64_t duration = t.renew_ms;
          // Not past `until`: what is asked beyond it would only be given back.
          if (duration > 0 && t.until_ms) duration = std::clamp<int64_t>(*t.until_ms - wall_now, 1, duration);
          list[static_cast<unsigned>(k - start)].setId(keys[k].second);
          list[static_cast<unsigned>(k - start)].setDurationMs(duration);
          out.items.emplace_back(keys[k].second, t.generation);
          earliest = std::min(earliest, t.ends_ms);
        }
        // Retried across a reconnection until the earliest lease of the batch runs out.
        if (earliest != INT64_MAX) {
          auto left = std::chrono::milliseconds(std::max<int64_t>(earliest - now, 0));
          out.timeout = std::clamp(left, kMinCallTimeout, std::max(kMinCallTimeout, options.call_timeout));
        }
        outgoing.push_back(std::move(out));
      }
    }

    int64_t next_due = schedule.empty() ? INT64_MAX : schedule.begin()->first;
    if (!outgoing.empty() || !failed.empty() || !renewed.empty() || !closing.empty()) {
      FailureHandler handler = on_failure;
      RenewedHandler renewed_handler = on_renewed;
      lock.unlock();
      for (auto& out : outgoing) {
        rpc::CallOptions call;
        call.timeout = out.timeout;
        call.idempotent = true;  // a renewal applied twice only extends the lease twice
        out.client->call_async("lease.renewBatch", *out.message, call,
                               [this, landlord = out.landlord, items = std::move(out.items),
                                sent_ms = steady_now_ms()](rpc::Reply reply) mutable {
                                 {
                                   std::lock_guard l(mu);
                                   completions.push_back(
                                       Completion{std::move(landlord), std::move(items), sent_ms, std::move(reply)});
                                 }
                                 cv.notify_one();
                               });
      }
      // Dropped before the lock is taken again: if stop() ran meanwhile (from a failure handler),
      // these may be a client's last references, and destroying a client joins its I/O thread,
      // whose reply callbacks take the lock.
      outgoing.clear();
      closing.clear();
      if (renewed_handler && !renewed.empty()) renewed_handler(renewed);
      for (auto& [held, why] : failed) {
        DJINN_LOG(kInfo, "renewal") << "lease " << held.lease.id << " at " << held.landlord
                                    << " could not be renewed: " << why.to_string();
        {
          std::lock_guard l(mu);  // a handler that stopped the manager is called no more
          if (stopping) break;
        }
        if (handler) handler(held, why);
      }
      lock.lock();
      continue;  // state may have moved while unlocked
    }
    if (!completions.empty()) continue;
    if (next_due == INT64_MAX) {
      cv.wait(lock);
    } else {
      // Capped: a far due time would overflow the wait's nanoseconds.
      cv.wait_for(lock, std::chrono::milliseconds(std::clamp<int64_t>(next_due - steady_now_ms(), 1, 3'600'000)));
    }
  }
}

RenewalManager::RenewalManager(RenewalManagerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}

RenewalManager::~RenewalManager() {
  impl_->stop();
  if (impl_->thread.joinable()) {
    // Destroyed from its own failure handler: the thread cannot join itself. It ends when the
    // handler returns, and still touches the state on its way out, so the state is left to it.
    impl_->thread.detach();
    (void)impl_.release();
  }
}

void RenewalManager::on_failure(FailureHandler handler) {
  std::lock_guard lock(impl_->mu);
  impl_->on_failure = std::move(handler);
}

void RenewalManager::on_renewed(RenewedHandler handler) {
  std::lock_guard lock(impl_->mu);
  impl_->on_renewed = std::move(handler);
}

Status RenewalManager::add(const HeldLease& lease, int64_t renew_ms,
                           std::optional<std::chrono::system_clock::time_point> until,
                           std::chrono::milliseconds confirm_within) {
  std::optional<int64_t> until_ms;
  if (until) {
    until_ms = std::chrono::duration_cast<std::chrono::milliseconds>(until->time_since_epoch()).count();
  }
  return impl_->add(lease, renew_ms, until_ms, confirm_within);
}

void RenewalManager::remove(LeaseId id, const std::string& landlord) { impl_->remove(id, landlord); }

std::optional<HeldLease> RenewalManager::get(LeaseId id, const std::string& landlord) const {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->tracked.find({landlord, id});
  if (it == impl_->tracked.end()) return std::nullopt;
  return it->second.held;
}

size_t RenewalManager::size() const {
  std::lock_guard lock(impl_->mu);
  return impl_->tracked.size();
}

size_t RenewalManager::landlords() const {
  std::lock_guard lock(impl_->mu);
  return impl_->remotes.size();
}

void RenewalManager::stop() { impl_->stop(); }

}  // namespace djinn::lease
