// The UDP multicast fallback for networks without avahi-daemon (DESIGN §5): lookups announce
// themselves to 239.255.41.60:4160 at an interval and answer requests; clients send requests and
// listen for announcements. Packets are wire.h's. Sockets keep to one interface when told one
// (SO_BINDTODEVICE, IP_MULTICAST_IF), so tests on a machine can keep multicast on `lo`.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "djinn/core/status.h"
#include "djinn/discovery/wire.h"

namespace djinn::discovery {

struct MulticastOptions {
  std::string group = std::string(kMulticastGroup);
  uint16_t port = kMulticastPort;
  // The interface multicast uses: a name ("eth0", "lo") or one of its IPv4 addresses; empty: the
  // one the routing table gives for the group.
  std::string interface;
  int ttl = 1;  // one hop: the LAN only
};

// A lookup's side: its announcement to the group at start (three times in the first second, then
// every `interval`), an answer by unicast to every request that wants one of its groups, and a
// last announcement with `leaving` when it stops.
class MulticastAnnouncer {
 public:
  // UNAVAILABLE when this host has no multicast (no route to the group, no such interface).
  static Result<std::unique_ptr<MulticastAnnouncer>> start(Announcement self, std::chrono::milliseconds interval,
                                                           MulticastOptions options = {});
  ~MulticastAnnouncer();
  MulticastAnnouncer(const MulticastAnnouncer&) = delete;
  MulticastAnnouncer& operator=(const MulticastAnnouncer&) = delete;

  struct Stats {
    uint64_t announcements = 0;  // sent to the group
    uint64_t answers = 0;        // sent by unicast to requesters
    uint64_t not_answered = 0;   // requests past the answer rate (one a source each 250 ms, 40 a second in all)
    uint64_t requests = 0;       // received
    uint64_t bad_packets = 0;    // received and rejected
  };
  Stats stats() const;

  struct Impl;

 private:
  explicit MulticastAnnouncer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A client's side: hears announcements (with an empty host filled in from the datagram's source)
// and sends requests for `groups`: at start, again after 250 ms, 1 s and 3 s, and whenever
// request() is called. on_announcement runs on the listener's thread; keep it short.
struct MulticastListenerOptions {
  MulticastOptions multicast;
  std::vector<std::string> groups;  // asked for in requests; empty: every group
  std::function<void(const Announcement&)> on_announcement;
  // The lookups already known, put in requests so they need not answer (may be empty).
  std::function<std::vector<ServiceId>()> known;
};

class MulticastListener {
 public:
  static Result<std::unique_ptr<MulticastListener>> start(MulticastListenerOptions options);
  ~MulticastListener();
  MulticastListener(const MulticastListener&) = delete;
  MulticastListener& operator=(const MulticastListener&) = delete;
  // Sends a request now.
  void request();

  struct Stats {
    uint64_t announcements = 0;  // accepted
    uint64_t requests = 0;       // sent
    uint64_t bad_packets = 0;    // rejected
  };
  Stats stats() const;

  struct Impl;

 private:
  explicit MulticastListener(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The index of the interface `name_or_address` names (a name, or one of its IPv4 addresses);
// NOT_FOUND when none.
Result<unsigned> interface_index(const std::string& name_or_address);

}  // namespace djinn::discovery
