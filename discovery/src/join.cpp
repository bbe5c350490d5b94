// JoinManager: discovery events go through a queue to a worker thread that adds the keeper's
// registrars; removals go to a second thread, because removing one cancels its lease by RPC (up
// to half a second at a lookup that is gone) and must hold up neither discovery's thread nor the
// registration with a lookup discovered meanwhile. A lookup discovered again while its removal is
// still running waits for that removal, so the two never reorder.
#include "djinn/discovery/join.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <set>
#include <thread>

#include "djinn/core/log.h"

namespace djinn::discovery {

using Clock = std::chrono::steady_clock;

struct JoinManager::Impl {
  mutable std::mutex mu;  // guards item, queue, removals, removing, stopping
  std::condition_variable cv;
  ServiceItem item;
  std::deque<std::pair<bool, std::string>> queue;  // (discovered, endpoint)
  std::deque<std::string> removals;                // endpoints to remove, in order
  std::set<std::string> removing;                  // queued or in progress
  bool stopping = false;
  std::unique_ptr<lookup::RegistrationKeeper> keeper;
  std::unique_ptr<DiscoveryManager> discovery;
  std::thread worker;
  std::thread remover;

  void post(bool discovered, const std::string& endpoint) {
    std::lock_guard lock(mu);
    queue.emplace_back(discovered, endpoint);
    cv.notify_all();
  }

  void run() {
    std::unique_lock lock(mu);
    while (true) {
      cv.wait(lock, [&] { return stopping || !queue.empty(); });
      if (stopping) return;
      auto [discovered, endpoint] = queue.front();
      queue.pop_front();
      if (!discovered) {
        removing.insert(endpoint);
        removals.push_back(endpoint);
        cv.notify_all();
        continue;
      }
      cv.wait(lock, [&, ep = endpoint] { return stopping || !removing.count(ep); });
      if (stopping) return;
      lock.unlock();
      keeper->add_registrar(endpoint);
      lock.lock();
    }
  }

  void run_removals() {
    std::unique_lock lock(mu);
    while (true) {
      cv.wait(lock, [&] { return stopping || !removals.empty(); });
      if (stopping) return;
      std::string endpoint = removals.front();
      removals.pop_front();
      lock.unlock();
      // Forgotten there; discovered again, it gets a fresh registration at once.
      keeper->remove_registrar(endpoint);
      lock.lock();
      removing.erase(endpoint);
      cv.notify_all();
    }
  }
};

Result<std::unique_ptr<JoinManager>> JoinManager::start(ServiceItem item, JoinOptions options) {
  if (item.service_id.is_nil()) {
    return invalid_argument("join: the item's ServiceID is nil; mint one with ServiceId::random() and keep it for life");
  }
  auto im = std::make_unique<Impl>();
  im->item = item;
  im->keeper = std::make_unique<lookup::RegistrationKeeper>(std::move(item), std::vector<std::string>{}, options.keeper);
  Impl* raw = im.get();
  auto user_discovered = std::move(options.discovery.on_discovered);
  auto user_discarded = std::move(options.discovery.on_discarded);
  options.discovery.on_discovered = [raw, user_discovered](const DiscoveredLookup& l) {
    raw->post(true, l.rpc_endpoint);
    if (user_discovered) user_discovered(l);
  };
  options.discovery.on_discarded = [raw, user_discarded](const DiscoveredLookup& l) {
    raw->post(false, l.rpc_endpoint);
    if (user_discarded) user_discarded(l);
  };
  im->worker = std::thread([raw] { raw->run(); });
  im->remover = std::thread([raw] { raw->run_removals(); });
  Result<std::unique_ptr<DiscoveryManager>> d = DiscoveryManager::start(std::move(options.discovery));
  if (!d.ok()) {
    {
      std::lock_guard lock(im->mu);
      im->stopping = true;
    }
    im->cv.notify_all();
    im->worker.join();
    im->remover.join();
    return d.status();
  }
  im->discovery = std::move(*d);
  return std::unique_ptr<JoinManager>(new JoinManager(std::move(im)));
}

JoinManager::JoinManager(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

JoinManager::~JoinManager() {
  impl_->discovery->stop();
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  impl_->worker.join();
  impl_->remover.join();
  impl_->keeper.reset();  // cancels every registration
}

void JoinManager::set_attributes(std::vector<Entry> attributes) {
  ServiceItem next;
  {
    std::lock_guard lock(impl_->mu);
    impl_->item.attributes = std::move(attributes);
    next = impl_->item;
  }
  impl_->keeper->set_item(std::move(next));
}

void JoinManager::set_item(ServiceItem item) {
  {
    std::lock_guard lock(impl_->mu);
    item.service_id = impl_->item.service_id;
    impl_->item = item;
  }
  impl_->keeper->set_item(std::move(item));
}

ServiceItem JoinManager::item() const {
  std::lock_guard lock(impl_->mu);
  return impl_->item;
}

std::vector<std::string> JoinManager::registered() const { return impl_->keeper->registered(); }
std::vector<DiscoveredLookup> JoinManager::lookups() const { return impl_->discovery->lookups(); }

bool JoinManager::wait_registered(size_t count, std::chrono::milliseconds timeout) const {
  Clock::time_point until = Clock::now() + timeout;
  while (impl_->keeper->registered().size() < count) {
    if (Clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

DiscoveryManager& JoinManager::discovery() { return *impl_->discovery; }

}  // namespace djinn::discovery
