#include "resolver.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <system_error>
#include <thread>
#include <unordered_map>

#include "djinn/core/thread_name.h"

namespace djinn::rpc::internal {

namespace {

constexpr auto kAddressKept = std::chrono::seconds(30);
constexpr auto kFailureKept = std::chrono::seconds(1);
// getaddrinfo cannot be cancelled: a resolver that does not answer holds a thread for its whole
// timeout (resolv.conf's timeout × attempts × servers). Names beyond these wait, or fail.
constexpr size_t kMaxResolverThreads = 16;
constexpr size_t kMaxWaitingNames = 1024;
constexpr size_t kMaxRemembered = 4096;

bool is_address(std::string_view host) {
  std::string h(host);
  in_addr v4;
  if (inet_pton(AF_INET, h.c_str(), &v4) == 1) return true;
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') {
    std::string inside = h.substr(1, h.size() - 2);
    inside = inside.substr(0, inside.find('%'));  // a scope ("fe80::1%eth0") goes to ZeroMQ as it is
    in6_addr v6;
    return inet_pton(AF_INET6, inside.c_str(), &v6) == 1;
  }
  return false;
}

// getaddrinfo for a stream socket: the first IPv4 address, else the first IPv6 one (ZeroMQ
// dials IPv4 only unless told otherwise, so IPv4 is what it would have chosen).
void run_getaddrinfo(Resolution& r) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  int rc = ::getaddrinfo(r.host().c_str(), nullptr, &hints, &found);
  if (rc != 0) {
    std::string why = rc == EAI_SYSTEM ? std::strerror(errno) : ::gai_strerror(rc);
    r.finish(unavailable("cannot resolve host name '" + r.host() + "': " + why), "", false);
    return;
  }
  const addrinfo* chosen = nullptr;
  for (const addrinfo* a = found; a; a = a->ai_next) {
    if (a->ai_family == AF_INET) {
      chosen = a;
      break;
    }
    if (a->ai_family == AF_INET6 && !chosen) chosen = a;
  }
  char text[NI_MAXHOST] = {};
  bool ipv6 = chosen && chosen->ai_family == AF_INET6;
  // Numeric, with an IPv6 address's scope ("fe80::1%eth0"), which ZeroMQ takes.
  if (chosen && ::getnameinfo(chosen->ai_addr, chosen->ai_addrlen, text, sizeof text, nullptr, 0, NI_NUMERICHOST) != 0) {
    chosen = nullptr;
  }
  ::freeaddrinfo(found);
  if (!chosen) {
    r.finish(unavailable("cannot resolve host name '" + r.host() + "': it has no IPv4 or IPv6 address"), "", false);
    return;
  }
  r.finish(Status::Ok(), text, ipv6);
}

class Resolver {
 public:
  std::shared_ptr<const Resolution> resolve(const std::string& host, std::chrono::milliseconds max_age) {
    auto now = Resolution::Clock::now();
    std::lock_guard lock(mu_);
    auto it = known_.find(host);
    if (it != known_.end() && !stale(*it->second, now, max_age)) return it->second;
    if (known_.size() >= kMaxRemembered && now - last_pruned_ >= std::chrono::seconds(1)) {
      forget_stale(now);
      last_pruned_ = now;
    }
    auto r = std::make_shared<Resolution>(host);
    if (waiting_.size() >= kMaxWaitingNames) {
      r->finish(unavailable("cannot resolve host name '" + host + "' now: " + std::to_string(waiting_.size()) +
                            " names are waiting for a resolver that is slow to answer; give an address instead"),
                "", false);
      return r;
    }
    if (known_.size() < kMaxRemembered) known_[host] = r;  // else resolved for this caller alone
    waiting_.push_back(r);
    if (threads_ < kMaxResolverThreads && waiting_.size() > idle_) {
      try {
        std::thread([this] { work(); }).detach();
        threads_++;
      } catch (const std::system_error& e) {
        // A thread already running takes it, or none: then the name is not resolved now.
        if (threads_ == 0) {
          waiting_.pop_back();
          known_.erase(host);
          r->finish(unavailable("cannot resolve host name '" + host + "' now: no thread to resolve it on (" +
                                e.what() + ")"),
                    "", false);
        }
      }
    }
    cv_.notify_one();
    return r;
  }

 private:
  static bool stale(const Resolution& r, Resolution::Clock::time_point now,
                    std::chrono::milliseconds max_age = kAddressKept) {
    auto kept = r.failed() ? std::chrono::milliseconds(kFailureKept) : std::min<std::chrono::milliseconds>(max_age, kAddressKept);
    return r.finished_before(now - kept);
  }

  void forget_stale(Resolution::Clock::time_point now) {
    for (auto it = known_.begin(); it != known_.end();) it = stale(*it->second, now) ? known_.erase(it) : std::next(it);
  }

  // A worker resolves names until none waits for a while, then ends.
  void work() {
    name_this_thread("resolver");
    std::unique_lock lock(mu_);
    for (;;) {
      idle_++;
      bool got = cv_.wait_for(lock, std::chrono::seconds(5), [&] { return !waiting_.empty(); });
      idle_--;
      if (!got) break;
      auto r = std::move(waiting_.front());
      waiting_.pop_front();
      lock.unlock();
      run_getaddrinfo(*r);
      lock.lock();
    }
    threads_--;
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<std::string, std::shared_ptr<Resolution>> known_;
  std::deque<std::shared_ptr<Resolution>> waiting_;
  size_t threads_ = 0;
  size_t idle_ = 0;
  Resolution::Clock::time_point last_pruned_{};
};

}  // namespace

std::optional<NamedTcpEndpoint> named_tcp_endpoint(std::string_view endpoint) {
  constexpr std::string_view kTcp = "tcp://";
  if (endpoint.substr(0, kTcp.size()) != kTcp) return std::nullopt;
  std::string_view rest = endpoint.substr(kTcp.size());
  size_t colon = rest.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || rest.find(';') != std::string_view::npos) return std::nullopt;
  std::string_view host = rest.substr(0, colon);
  if (host == "*" || is_address(host)) return std::nullopt;
  return NamedTcpEndpoint{std::string(host), std::string(rest.substr(colon + 1))};
}

Status check_named_endpoint(const NamedTcpEndpoint& named, std::string_view endpoint) {
  const std::string& host = named.host;
  if (host.size() > 253 ||
      host.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") != std::string::npos) {
    return invalid_argument("cannot connect to '" + std::string(endpoint) + "': '" + host +
                            "' is neither an address nor a host name (expected tcp://HOST:PORT)");
  }
  const std::string& port = named.port;
  bool digits = !port.empty() && port.size() <= 5 && port.find_first_not_of("0123456789") == std::string::npos;
  if (int n = digits ? std::stoi(port) : 0; n >= 1 && n <= 65535) return Status::Ok();
  return invalid_argument("cannot connect to '" + std::string(endpoint) + "': the port '" + port +
                          "' is not a number from 1 to 65535 (expected tcp://HOST:PORT)");
}

Resolution::Dial dial_as_given(const std::string& endpoint) {
  return Resolution::Dial{endpoint, endpoint.rfind("tcp://[", 0) == 0};
}

std::optional<Resolution::Dial> Relookup::check(const NamedTcpEndpoint& name, const std::string& current,
                                                Clock::time_point& resolved_at, std::chrono::milliseconds after,
                                                Clock::time_point now) {
  // A lookup that finished long ago (the connection came back meanwhile) says nothing now.
  if (pending_ && pending_->finished_before(now - after)) pending_.reset();
  if (!pending_) {
    if (now - resolved_at >= after) pending_ = resolve(name.host, after);
    return std::nullopt;
  }
  if (!pending_->wait_until(now)) return std::nullopt;
  auto d = pending_->dial(name.port);
  pending_.reset();
  resolved_at = now;
  if (!d.ok() || d->endpoint == current) return std::nullopt;
  return *d;
}

bool Resolution::wait_until(Clock::time_point deadline) const {
  std::unique_lock lock(mu_);
  return cv_.wait_until(lock, deadline, [&] { return done_; });
}

Result<Resolution::Dial> Resolution::dial(const std::string& port) const {
  std::lock_guard lock(mu_);
  if (!done_) return unavailable("host name '" + host_ + "' is still being resolved");
  if (!status_.ok()) return status_;
  return Dial{"tcp://" + (ipv6_ ? "[" + address_ + "]" : address_) + ":" + port, ipv6_};
}

void Resolution::finish(Status status, std::string address, bool ipv6) {
  {
    std::lock_guard lock(mu_);
    status_ = std::move(status);
    address_ = std::move(address);
    ipv6_ = ipv6;
    done_at_ = Clock::now();
    done_ = true;
  }
  cv_.notify_all();
}

bool Resolution::finished_before(Clock::time_point t) const {
  std::lock_guard lock(mu_);
  return done_ && done_at_ < t;
}

bool Resolution::failed() const {
  std::lock_guard lock(mu_);
  return done_ && !status_.ok();
}

std::shared_ptr<const Resolution> resolve(const std::string& host, std::chrono::milliseconds max_age) {
  // Never destroyed: resolver threads may still be running when the process exits.
  static Resolver* resolver = new Resolver;
  return resolver->resolve(host, max_age);
}

Status resolution_timeout(const std::string& host, const std::string& endpoint, std::chrono::milliseconds waited) {
  return deadline_exceeded("host name '" + host + "' of " + endpoint + " was not resolved within " +
                           std::to_string(waited.count()) +
                           " ms: the name resolver is not answering (give an address, or fix /etc/resolv.conf)");
}

}  // namespace djinn::rpc::internal
