// MulticastAnnouncer and MulticastListener: one thread each, polling its sockets and an eventfd
// that wakes it to stop (or to send a request). Received datagrams are decoded by wire.h, which
// rejects anything malformed; a bad packet is counted and dropped, never trusted.
#include "djinn/discovery/multicast.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "djinn/core/log.h"

namespace djinn::discovery {
namespace {

constexpr const char* kLog = "discovery";
using Clock = std::chrono::steady_clock;

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~Fd() { reset(); }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int get() const { return fd_; }

 private:
  int fd_ = -1;
};

std::string errno_text() { return std::strerror(errno); }

struct Target {
  sockaddr_in group{};
  unsigned ifindex = 0;
  std::string ifname;
};

Result<Target> resolve_target(const MulticastOptions& o) {
  Target t;
  t.group.sin_family = AF_INET;
  t.group.sin_port = htons(o.port);
  if (inet_pton(AF_INET, o.group.c_str(), &t.group.sin_addr) != 1 || !IN_MULTICAST(ntohl(t.group.sin_addr.s_addr))) {
    return invalid_argument("multicast group '" + o.group + "': expected an IPv4 multicast address (224.0.0.0/4)");
  }
  if (o.port == 0) return invalid_argument("multicast port 0: expected 1..65535");
  if (o.ttl < 1 || o.ttl > 255) return invalid_argument("multicast TTL " + std::to_string(o.ttl) + ": expected 1..255");
  if (!o.interface.empty()) {
    Result<unsigned> idx = interface_index(o.interface);
    if (!idx.ok()) return idx.status();
    t.ifindex = *idx;
    char name[IF_NAMESIZE] = {};
    if (!if_indextoname(t.ifindex, name)) return not_found("interface " + std::to_string(t.ifindex) + " vanished");
    t.ifname = name;
  }
  return t;
}

Status bind_to_device(int fd, const Target& t) {
  if (t.ifname.empty()) return Status::Ok();
  if (setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, t.ifname.c_str(), static_cast<socklen_t>(t.ifname.size())) != 0) {
    return unavailable("SO_BINDTODEVICE " + t.ifname + ": " + errno_text());
  }
  return Status::Ok();
}

// Bound to the group and port, joined on the interface: receives what is sent to the group.
Result<Fd> group_socket(const Target& t) {
  Fd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (fd.get() < 0) return unavailable("socket: " + errno_text());
  int one = 1, zero = 0;
  // Every djinn process on a host listens on the same port.
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  DJINN_RETURN_IF_ERROR(bind_to_device(fd.get(), t));
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&t.group), sizeof t.group) != 0) {
    return unavailable("binding the multicast port " + std::to_string(ntohs(t.group.sin_port)) + ": " + errno_text());
  }
  ip_mreqn mreq{};
  mreq.imr_multiaddr = t.group.sin_addr;
  mreq.imr_ifindex = static_cast<int>(t.ifindex);
  if (setsockopt(fd.get(), IPPROTO_IP, IP_ADD_MEMBERSHIP, &mreq, sizeof mreq) != 0) {
    return unavailable("joining the multicast group" + (t.ifname.empty() ? std::string() : " on " + t.ifname) + ": " +
                       errno_text() + " (no multicast route or interface?)");
  }
  // Only the group joined here, not every group some other socket of the process joined.
  setsockopt(fd.get(), IPPROTO_IP, IP_MULTICAST_ALL, &zero, sizeof zero);
  return fd;
}

// An ephemeral unicast socket that sends to the group through the interface and receives answers.
Result<Fd> send_socket(const Target& t, int ttl) {
  Fd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (fd.get() < 0) return unavailable("socket: " + errno_text());
  DJINN_RETURN_IF_ERROR(bind_to_device(fd.get(), t));
  if (t.ifindex) {
    ip_mreqn mreq{};
    mreq.imr_ifindex = static_cast<int>(t.ifindex);
    if (setsockopt(fd.get(), IPPROTO_IP, IP_MULTICAST_IF, &mreq, sizeof mreq) != 0) {
      return unavailable("IP_MULTICAST_IF " + t.ifname + ": " + errno_text());
    }
  }
  unsigned char ttl_byte = static_cast<unsigned char>(ttl), loop = 1;
  setsockopt(fd.get(), IPPROTO_IP, IP_MULTICAST_TTL, &ttl_byte, sizeof ttl_byte);
  // Lookups and clients on one host hear each other.
  setsockopt(fd.get(), IPPROTO_IP, IP_MULTICAST_LOOP, &loop, sizeof loop);
  sockaddr_in any{};
  any.sin_family = AF_INET;
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&any), sizeof any) != 0) return unavailable("bind: " + errno_text());
  return fd;
}

Status send_to(int fd, const std::vector<uint8_t>& bytes, const sockaddr_in& to) {
  ssize_t n = ::sendto(fd, bytes.data(), bytes.size(), 0, reinterpret_cast<const sockaddr*>(&to), sizeof to);
  if (n < 0) return unavailable("sendto " + std::string(inet_ntoa(to.sin_addr)) + ": " + errno_text());
  return Status::Ok();
}

Fd make_eventfd() { return Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)); }
void signal_eventfd(int fd) {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(fd, &one, sizeof one);
}
void drain_eventfd(int fd) {
  uint64_t v;
  [[maybe_unused]] ssize_t n = ::read(fd, &v, sizeof v);
}

// Reads one datagram; false when there is none.
bool receive(int fd, std::vector<uint8_t>& buf, sockaddr_in& from, size_t& size) {
  socklen_t len = sizeof from;
  // One byte more than the largest packet, so an oversized datagram shows as such.
  ssize_t n = ::recvfrom(fd, buf.data(), buf.size(), MSG_TRUNC, reinterpret_cast<sockaddr*>(&from), &len);
  if (n < 0) return false;
  size = static_cast<size_t>(n);
  return true;
}

}  // namespace

Result<unsigned> interface_index(const std::string& name_or_address) {
  in_addr addr{};
  if (inet_pton(AF_INET, name_or_address.c_str(), &addr) == 1) {
    ifaddrs* list = nullptr;
    if (getifaddrs(&list) != 0) return unavailable("getifaddrs: " + errno_text());
    unsigned found = 0;
    for (ifaddrs* i = list; i; i = i->ifa_next) {
      if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
      if (reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr.s_addr == addr.s_addr) {
        found = if_nametoindex(i->ifa_name);
        break;
      }
    }
    freeifaddrs(list);
    if (!found) return not_found("no interface has the address " + name_or_address);
    return found;
  }
  unsigned idx = if_nametoindex(name_or_address.c_str());
  if (!idx) return not_found("no interface named '" + name_or_address + "'");
  return idx;
}

// ---------------------------------------------------------------------------------------------
struct MulticastAnnouncer::Impl {
  Announcement self;
  std::chrono::milliseconds interval;
  Target target;
  Fd group_fd, send_fd, wake_fd;
  std::atomic<bool> stopping{false};
  std::thread thread;
  mutable std::mutex stats_mu;
  Stats stats;
  std::vector<uint8_t> packet;
  // Answers go to whatever address a request claims to come from: they are rationed, so spoofed
  // requests cannot turn the lookups of a LAN on one victim. On the announcer's thread only.
  std::unordered_map<uint32_t, Clock::time_point> answered_at;  // by source IPv4 address
  Clock::time_point window_start{};
  int answers_in_window = 0;
  static constexpr std::chrono::milliseconds kPerSource{250};
  static constexpr int kPerSecond = 40;

  bool may_answer(const sockaddr_in& from, Clock::time_point now) {
    if (now - window_start >= std::chrono::seconds(1)) {
      window_start = now;
      answers_in_window = 0;
    }
    if (answers_in_window >= kPerSecond) return false;
    if (answered_at.size() > 4096) answered_at.clear();  // forgetting only lets a source be answered early
    auto [it, fresh] = answered_at.try_emplace(from.sin_addr.s_addr, now);
    if (!fresh && now - it->second < kPerSource) return false;
    it->second = now;
    ++answers_in_window;
    return true;
  }

  void announce(const std::vector<uint8_t>& bytes) {
    Status st = send_to(send_fd.get(), bytes, target.group);
    if (!st.ok()) {
      DJINN_LOG(kDebug, kLog) << "multicast announcement: " << st.message();
      return;
    }
    std::lock_guard lock(stats_mu);
    ++stats.announcements;
  }

  void on_datagram(std::span<const uint8_t> bytes, const sockaddr_in& from) {
    Result<Packet> p = decode_packet(bytes);
    if (!p.ok()) {
      std::lock_guard lock(stats_mu);
      ++stats.bad_packets;
      return;
    }
    const Request* r = std::get_if<Request>(&*p);
    if (!r) return;  // an announcement, ours or another lookup's
    {
      std::lock_guard lock(stats_mu);
      ++stats.requests;
    }
    if (!groups_match(r->groups, self.groups)) return;
    if (std::find(r->known.begin(), r->known.end(), *self.service_id) != r->known.end()) return;
    if (!may_answer(from, Clock::now())) {
      std::lock_guard lock(stats_mu);
      ++stats.not_answered;
      return;
    }
    if (send_to(send_fd.get(), packet, from).ok()) {
      std::lock_guard lock(stats_mu);
      ++stats.answers;
    }
  }

  void run() {
    // Three announcements in the first second (a datagram may be lost), then the interval.
    const std::chrono::milliseconds first[] = {std::chrono::milliseconds(0), std::chrono::milliseconds(250),
                                               std::chrono::milliseconds(1000)};
    Clock::time_point start = Clock::now();
    size_t sent_first = 0;
    Clock::time_point next = start;
    std::vector<uint8_t> buf(kMaxPacketBytes + 1);
    while (!stopping) {
      Clock::time_point now = Clock::now();
      if (now >= next) {
        announce(packet);
        if (sent_first < std::size(first)) ++sent_first;
        if (sent_first < std::size(first)) {
          next = start + first[sent_first];
        } else if (interval.count() > 0) {
          next = now + interval;
        } else {
          next = Clock::time_point::max();
        }
      }
      int timeout = -1;
      if (next != Clock::time_point::max()) {
        timeout = static_cast<int>(std::max<int64_t>(0, std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now()).count() + 1));
      }
      pollfd fds[2] = {{group_fd.get(), POLLIN, 0}, {wake_fd.get(), POLLIN, 0}};
      int n = ::poll(fds, 2, timeout);
      if (n < 0 && errno != EINTR) break;
      if (fds[1].revents) drain_eventfd(wake_fd.get());
      if (fds[0].revents & POLLIN) {
        // A burst is read whole, so a flood cannot delay the next announcement for long.
        for (int i = 0; i < 64; ++i) {
          sockaddr_in from{};
          size_t size = 0;
          if (!receive(group_fd.get(), buf, from, size)) break;
          if (size > kMaxPacketBytes) {
            std::lock_guard lock(stats_mu);
            ++stats.bad_packets;
            continue;
          }
          on_datagram(std::span<const uint8_t>(buf.data(), size), from);
        }
      }
    }
    // The last word: listeners may drop this lookup now instead of waiting for its silence.
    Announcement bye = self;
    bye.leaving = true;
    bye.interval_ms = 0;
    if (Result<std::vector<uint8_t>> b = encode_packet(bye); b.ok()) announce(*b);
  }
};

Result<std::unique_ptr<MulticastAnnouncer>> MulticastAnnouncer::start(Announcement self, std::chrono::milliseconds interval,
                                                                      MulticastOptions options) {
  if (interval.count() < 0) return invalid_argument("announcement interval " + std::to_string(interval.count()) + " ms: must be >= 0");
  auto im = std::make_unique<Impl>();
  self.interval_ms = static_cast<uint32_t>(std::min<int64_t>(interval.count(), UINT32_MAX));
  self.leaving = false;
  Result<std::vector<uint8_t>> packet = encode_packet(self);
  if (!packet.ok()) return packet.status();
  im->packet = std::move(*packet);
  im->self = std::move(self);
  im->interval = interval;
  Result<Target> t = resolve_target(options);
  if (!t.ok()) return t.status();
  im->target = *t;
  Result<Fd> g = group_socket(im->target);
  if (!g.ok()) return g.status();
  im->group_fd = std::move(*g);
  Result<Fd> s = send_socket(im->target, options.ttl);
  if (!s.ok()) return s.status();
  im->send_fd = std::move(*s);
  im->wake_fd = make_eventfd();
  if (im->wake_fd.get() < 0) return unavailable("eventfd: " + errno_text());
  Impl* raw = im.get();
  im->thread = std::thread([raw] { raw->run(); });
  DJINN_LOG(kInfo, kLog) << "announcing by multicast to " << options.group << ":" << options.port
                         << (im->target.ifname.empty() ? "" : " on " + im->target.ifname) << " every " << interval.count() << " ms";
  return std::unique_ptr<MulticastAnnouncer>(new MulticastAnnouncer(std::move(im)));
}

MulticastAnnouncer::MulticastAnnouncer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

MulticastAnnouncer::~MulticastAnnouncer() {
  impl_->stopping = true;
  signal_eventfd(impl_->wake_fd.get());
  impl_->thread.join();
}

MulticastAnnouncer::Stats MulticastAnnouncer::stats() const {
  std::lock_guard lock(impl_->stats_mu);
  return impl_->stats;
}

// ---------------------------------------------------------------------------------------------
struct MulticastListener::Impl {
  MulticastListenerOptions options;
  Target target;
  Fd group_fd, send_fd, wake_fd;
  std::atomic<bool> stopping{false};
  std::atomic<bool> request_now{false};
  std::thread thread;
  mutable std::mutex stats_mu;
  Stats stats;

  void send_request() {
    Request r;
    r.groups = options.groups;
    if (options.known) r.known = options.known();
    if (send_to(send_fd.get(), encode_packet(r), target.group).ok()) {
      std::lock_guard lock(stats_mu);
      ++stats.requests;
    }
  }

  void on_datagram(std::span<const uint8_t> bytes, const sockaddr_in& from) {
    Result<Packet> p = decode_packet(bytes);
    if (!p.ok()) {
      std::lock_guard lock(stats_mu);
      ++stats.bad_packets;
      return;
    }
    Announcement* a = std::get_if<Announcement>(&*p);
    if (!a) return;  // another client's request
    if (a->host.empty()) {
      char text[INET_ADDRSTRLEN];
      inet_ntop(AF_INET, &from.sin_addr, text, sizeof text);
      a->host = text;
    }
    {
      std::lock_guard lock(stats_mu);
      ++stats.announcements;
    }
    if (options.on_announcement) options.on_announcement(*a);
  }

  void drain(int fd, std::vector<uint8_t>& buf) {
    for (int i = 0; i < 64; ++i) {
      sockaddr_in from{};
      size_t size = 0;
      if (!receive(fd, buf, from, size)) return;
      if (size > kMaxPacketBytes) {
        std::lock_guard lock(stats_mu);
        ++stats.bad_packets;
        continue;
      }
      on_datagram(std::span<const uint8_t>(buf.data(), size), from);
    }
  }

  void run() {
    const std::chrono::milliseconds schedule[] = {std::chrono::milliseconds(0), std::chrono::milliseconds(250),
                                                  std::chrono::milliseconds(1000), std::chrono::milliseconds(3000)};
    Clock::time_point start = Clock::now();
    size_t sent = 0;
    std::vector<uint8_t> buf(kMaxPacketBytes + 1);
    while (!stopping) {
      Clock::time_point now = Clock::now();
      if (request_now.exchange(false)) send_request();
      while (sent < std::size(schedule) && now >= start + schedule[sent]) {
        send_request();
        ++sent;
      }
      int timeout = -1;
      if (sent < std::size(schedule)) {
        timeout = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(start + schedule[sent] - now).count() + 1);
      }
      pollfd fds[3] = {{group_fd.get(), POLLIN, 0}, {send_fd.get(), POLLIN, 0}, {wake_fd.get(), POLLIN, 0}};
      int n = ::poll(fds, 3, timeout);
      if (n < 0 && errno != EINTR) break;
      if (fds[2].revents) drain_eventfd(wake_fd.get());
      if (fds[0].revents & POLLIN) drain(group_fd.get(), buf);
      if (fds[1].revents & POLLIN) drain(send_fd.get(), buf);
    }
  }
};

Result<std::unique_ptr<MulticastListener>> MulticastListener::start(MulticastListenerOptions options) {
  for (const std::string& g : options.groups) DJINN_RETURN_IF_ERROR(check_group(g));
  auto im = std::make_unique<Impl>();
  Result<Target> t = resolve_target(options.multicast);
  if (!t.ok()) return t.status();
  im->target = *t;
  Result<Fd> g = group_socket(im->target);
  if (!g.ok()) return g.status();
  im->group_fd = std::move(*g);
  Result<Fd> s = send_socket(im->target, options.multicast.ttl);
  if (!s.ok()) return s.status();
  im->send_fd = std::move(*s);
  im->wake_fd = make_eventfd();
  if (im->wake_fd.get() < 0) return unavailable("eventfd: " + errno_text());
  im->options = std::move(options);
  Impl* raw = im.get();
  im->thread = std::thread([raw] { raw->run(); });
  return std::unique_ptr<MulticastListener>(new MulticastListener(std::move(im)));
}

MulticastListener::MulticastListener(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

MulticastListener::~MulticastListener() {
  impl_->stopping = true;
  signal_eventfd(impl_->wake_fd.get());
  impl_->thread.join();
}

void MulticastListener::request() {
  impl_->request_now = true;
  signal_eventfd(impl_->wake_fd.get());
}

MulticastListener::Stats MulticastListener::stats() const {
  std::lock_guard lock(impl_->stats_mu);
  return impl_->stats;
}

}  // namespace djinn::discovery
