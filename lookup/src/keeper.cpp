// RegistrationKeeper: one thread registers where the item is not registered (with backoff per
// registrar); a RenewalManager renews the leases and reports a lost one, which puts its registrar
// back in line for registration.
#include "djinn/lookup/keeper.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <condition_variable>
#include <map>
#include <set>
#include <mutex>
#include <thread>
#include <utility>

#include "djinn/core/log.h"
#include "djinn/lease/client.h"
#include "djinn/lookup/client.h"

namespace djinn::lookup {

using Clock = std::chrono::steady_clock;

struct RegistrationKeeper::Impl {
  struct Target {
    std::shared_ptr<RegistrarClient> client;  // shared: a registration in progress keeps it
    std::optional<lease::HeldLease> lease;  // registered under it
    uint64_t version = 0;                   // of the item registered
    std::optional<uint64_t> lost;           // the lease it lost, until it knows why
    bool renewed = true;                    // the renewal manager took `lease` (else: register again)
    bool superseded = false;                // another item under the same ServiceID replaced it
    Clock::time_point next_try{};
    std::chrono::milliseconds backoff{0};
    std::optional<Code> warned;  // the refusal last logged as a warning, so each is said once
  };

  // Options a keeper can work with: a retry of 0 ms would call the lookup in a tight loop.
  static KeeperOptions checked(KeeperOptions o) {
    o.retry_min = std::max(o.retry_min, std::chrono::milliseconds(1));
    o.retry_max = std::max(o.retry_max, o.retry_min);
    o.call_timeout = std::max(o.call_timeout, std::chrono::milliseconds(1));
    return o;
  }

  KeeperOptions options;
  lease::RenewalManager renewals;
  mutable std::mutex mu;  // guards everything below
  mutable std::condition_variable cv;
  ServiceItem item;
  uint64_t version = 1;
  std::map<std::string, Target> targets;
  // Registrars where another item took the ServiceID: remembered when one is removed and added
  // again (a lookup discarded and rediscovered), until set_item.
  std::set<std::string, std::less<>> superseded_at;
  bool stopping = false;
  std::thread thread;

  Impl(ServiceItem i, KeeperOptions o)
      : options(checked(std::move(o))),
        renewals(lease::RenewalManagerOptions{.curve = options.curve, .max_landlords = options.max_landlords}),
        item(std::move(i)) {
    renewals.on_failure([this](const lease::HeldLease& held, const Status& why) {
      std::lock_guard lock(mu);
      for (auto& [endpoint, t] : targets) {
        if (t.lease && t.lease->lease.id == held.lease.id && t.lease->landlord == held.landlord) {
          DJINN_LOG(kWarn, "lookup") << "registration of " << item.service_id.to_string() << " at " << endpoint
                                     << " lost (" << why.to_string() << ")";
          t.lost = t.lease->lease.id;
          t.lease.reset();
          t.next_try = Clock::now();
        }
      }
      cv.notify_all();
    });
  }

  static bool same_item(ServiceItem theirs, const ServiceItem& ours) {
    theirs.lease = ours.lease;
    return theirs == ours;
  }

  void add_locked(const std::string& endpoint) {
    if (targets.count(endpoint)) return;
    rpc::ClientOptions o{.endpoint = endpoint, .curve = options.curve};
    o.default_timeout = options.call_timeout;
    Target t;
    t.client = std::make_shared<RegistrarClient>(o);
    t.superseded = superseded_at.contains(endpoint);
    targets.emplace(endpoint, std::move(t));
    cv.notify_all();
  }

  void run() {
    std::unique_lock lock(mu);
    while (!stopping) {
      Clock::time_point now = Clock::now();
      Clock::time_point next = Clock::time_point::max();
      std::string due;
      for (auto& [endpoint, t] : targets) {
        bool needed = (!t.lease || t.version != version || !t.renewed) && !t.superseded;
        if (!needed) continue;
        if (t.next_try <= now) {
          due = endpoint;
          break;
        }
        next = std::min(next, t.next_try);
      }
      if (due.empty()) {
        if (next == Clock::time_point::max()) {
          cv.wait(lock);
        } else {
          cv.wait_until(lock, next);
        }
        continue;
      }
      Target& t = targets.at(due);
      ServiceItem snapshot = item;
      uint64_t v = version;
      std::shared_ptr<RegistrarClient> client = t.client;
      std::optional<uint64_t> lost = std::exchange(t.lost, std::nullopt);
      lock.unlock();
      if (lost) {
        // Why was it lost? Ask the registrar before registering over whatever it holds now.
        Result<std::optional<ServiceItem>> found = client->lookup(ServiceTemplate{snapshot.service_id, {}, {}});
        lock.lock();
        auto it = targets.find(due);
        if (it == targets.end() || version != v) continue;  // decided again with what changed
        Target& target = it->second;
        if (!found.ok()) {
          target.lost = lost;  // still unknown: ask again later
          back_off_locked(target, snapshot, due, found.status());
          continue;
        }
        if (found->has_value() && (**found).lease.id != *lost) {
          settle_elsewhere_locked(target, **found, snapshot, due, v);
          continue;
        }
        lock.unlock();
      }
      Result<Registered> r = client->register_service(snapshot, options.lease_ms);
      lock.lock();
      auto it = targets.find(due);
      if (it == targets.end()) {
        // Removed while registering: undo what it did there.
        if (r.ok()) (void)client->cancel(r->item.lease.id);
        continue;
      }
      Target& target = it->second;
      if (r.ok()) {
        if (target.lease) renewals.remove(target.lease->lease.id, target.lease->landlord);
        target.lease = r->held_lease();
        target.version = v;
        DJINN_LOG(kInfo, "lookup") << (r->replaced ? "registered again " : "registered ") << snapshot.service_id.to_string()
                                   << " at " << due << ", lease " << r->item.lease.id;
        if (renew_locked(target, due, snapshot)) {
          target.backoff = std::chrono::milliseconds(0);
          target.warned.reset();
        }
        cv.notify_all();
      } else {
        back_off_locked(target, snapshot, due, r.status());
      }
    }
  }

  // Hands the target's lease to the renewal manager. It refuses a lease at one lookup more than
  // its limit of landlords (64 unless told), far beyond the few a service registers with (unless
  // lookups that are not what they say fill the LAN): the registration is then made again at each
  // retry, backing off, each one good for its lease, until the manager takes one.
  bool renew_locked(Target& target, const std::string& endpoint, const ServiceItem& registered) {
    Status st = renewals.add(*target.lease, options.lease_ms);
    target.renewed = st.ok();
    if (st.ok()) return true;
    DJINN_LOG(kWarn, "lookup") << "the registration at " << endpoint << " cannot be renewed (" << st.to_string()
                               << "): registering again later";
    back_off_locked(target, registered, endpoint, st);
    return false;
  }

  void back_off_locked(Target& target, const ServiceItem& item_tried, const std::string& endpoint, const Status& why) {
    target.backoff = std::clamp(target.backoff * 2, options.retry_min, options.retry_max);
    target.next_try = Clock::now() + target.backoff;
    // A lookup that cannot be reached is routine and retried quietly; a refusal (the item too
    // large, the key's role too low, a bad lease duration) will not go away by itself: said as a
    // warning, once for each refusal in a row.
    const bool refusal = !transient(why.code());
    if (refusal && target.warned != why.code()) {
      target.warned = why.code();
      DJINN_LOG(kWarn, "lookup") << "registering " << item_tried.service_id.to_string() << " at " << endpoint
                                 << " refused: " << why.to_string() << "; trying again every "
                                 << options.retry_max.count() << " ms at most";
      return;
    }
    if (!refusal) target.warned.reset();
    DJINN_LOG(kDebug, "lookup") << "registering " << item_tried.service_id.to_string() << " at " << endpoint << ": "
                                << why.to_string() << "; again in " << target.backoff.count() << " ms";
  }

  // The registrar holds `there` under the ServiceID, under another lease than the one lost.
  void settle_elsewhere_locked(Target& target, const ServiceItem& there, const ServiceItem& ours,
                               const std::string& endpoint, uint64_t v) {
    if (same_item(there, ours)) {
      // Registering again would only replace it with itself, and a twin would do the same back:
      // renew the lease it is registered under instead (lease ids are capabilities).
      target.lease = Registered{there, false, endpoint}.held_lease();
      target.version = v;
      renew_locked(target, endpoint, ours);
      DJINN_LOG(kInfo, "lookup") << ours.service_id.to_string() << " at " << endpoint
                                 << " is registered with this very item under lease " << there.lease.id
                                 << ": renewing that one";
    } else {
      target.superseded = true;
      superseded_at.insert(endpoint);
      DJINN_LOG(kWarn, "lookup") << ours.service_id.to_string() << " at " << endpoint
                                 << " is registered by someone else now, with other endpoints or attributes (the "
                                    "service moved to another node, or a second process has its ServiceID): not "
                                    "registering there again";
    }
    cv.notify_all();
  }
};

RegistrationKeeper::RegistrationKeeper(ServiceItem item, std::vector<std::string> registrars, KeeperOptions options)
    : impl_(std::make_unique<Impl>(std::move(item), std::move(options))) {
  {
    std::lock_guard lock(impl_->mu);
    for (const std::string& r : registrars) impl_->add_locked(r);
  }
  Impl* raw = impl_.get();
  impl_->thread = std::thread([raw] { raw->run(); });
}

RegistrationKeeper::~RegistrationKeeper() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  impl_->thread.join();
  impl_->renewals.stop();
  for (auto& [endpoint, t] : impl_->targets) {
    if (!t.lease) continue;
    rpc::CallOptions call;
    call.timeout = std::chrono::milliseconds(500);
    Status st = t.client->cancel(t.lease->lease.id, call);
    if (st.ok()) {
      DJINN_LOG(kInfo, "lookup") << "cancelled the registration at " << endpoint;
    } else {
      DJINN_LOG(kInfo, "lookup") << "cancelling the registration at " << endpoint << ": " << st.to_string();
    }
  }
}

void RegistrationKeeper::add_registrar(const std::string& endpoint) {
  std::lock_guard lock(impl_->mu);
  impl_->add_locked(endpoint);
}

void RegistrationKeeper::remove_registrar(const std::string& endpoint) {
  std::shared_ptr<RegistrarClient> client;
  std::optional<lease::HeldLease> held;
  {
    std::lock_guard lock(impl_->mu);
    auto it = impl_->targets.find(endpoint);
    if (it == impl_->targets.end()) return;
    client = std::move(it->second.client);
    held = it->second.lease;
    impl_->targets.erase(it);
  }
  if (held) {
    impl_->renewals.remove(held->lease.id, held->landlord);
    rpc::CallOptions call;
    call.timeout = std::chrono::milliseconds(500);
    (void)client->cancel(held->lease.id, call);
  }
}

void RegistrationKeeper::set_item(ServiceItem item) {
  std::lock_guard lock(impl_->mu);
  item.service_id = impl_->item.service_id;
  impl_->item = std::move(item);
  ++impl_->version;
  impl_->superseded_at.clear();  // a new item of this process's own: registered everywhere again
  for (auto& [endpoint, t] : impl_->targets) {
    t.next_try = Clock::now();
    t.superseded = false;
  }
  impl_->cv.notify_all();
}

std::vector<std::string> RegistrationKeeper::superseded() const {
  std::lock_guard lock(impl_->mu);
  std::vector<std::string> out;
  for (const auto& [endpoint, t] : impl_->targets) {
    if (t.superseded) out.push_back(endpoint);
  }
  return out;
}

std::vector<std::string> RegistrationKeeper::registered() const {
  std::lock_guard lock(impl_->mu);
  std::vector<std::string> out;
  for (const auto& [endpoint, t] : impl_->targets) {
    if (t.lease && t.version == impl_->version) out.push_back(endpoint);
  }
  return out;
}

bool RegistrationKeeper::wait_registered(std::chrono::milliseconds timeout) const {
  std::unique_lock lock(impl_->mu);
  return impl_->cv.wait_for(lock, timeout, [&] {
    return std::all_of(impl_->targets.begin(), impl_->targets.end(), [&](const auto& kv) {
      return kv.second.superseded || (kv.second.lease && kv.second.version == impl_->version);
    });
  });
}

Result<ServiceId> load_or_mint_service_id(const std::string& data_dir) {
  std::filesystem::path path = std::filesystem::path(data_dir) / "service-id";
  std::ifstream in(path);
  if (in) {
    std::string text;
    std::getline(in, text);
    std::optional<ServiceId> id = ServiceId::parse(text);
    if (!id) return data_loss(path.string() + " does not hold a ServiceID (8-4-4-4-12 hex); remove it to mint a new one");
    return *id;
  }
  std::error_code ec;
  std::filesystem::create_directories(data_dir, ec);
  ServiceId id = ServiceId::random();
  // Written whole under another name first, so a crash never leaves half an id.
  std::filesystem::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << id.to_string() << "\n";
    out.flush();
    if (!out) return failed_precondition("cannot write " + tmp.string() + " (is --data-dir writable?)");
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) return failed_precondition("cannot write " + path.string() + ": " + ec.message());
  return id;
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    if (comma > start) out.push_back(text.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

}  // namespace djinn::lookup
