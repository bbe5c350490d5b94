// LookupAnnouncer: how a lookup service makes itself known (DESIGN §5): over Avahi DNS-SD and over
// the multicast fallback, each optional, each degrading to a warning when the host lacks it.
// djinn-lookup runs one; tests and embedded federations may too.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "djinn/core/status.h"
#include "djinn/discovery/multicast.h"
#include "djinn/discovery/wire.h"

namespace djinn::discovery {

struct AnnouncerOptions {
  Announcement self;  // service_id, groups, rpc/events ports, name; host: see below
  bool avahi = true;
  bool multicast = true;
  std::chrono::milliseconds interval{5000};  // multicast announcements
  MulticastOptions multicast_options;
  // The DNS-SD instance name; empty: "<name> <first 8 hex digits of the ServiceID>".
  std::string instance_name;
};

class LookupAnnouncer {
 public:
  // INVALID_ARGUMENT for an announcement that cannot be sent (no ServiceID, no group, port 0).
  static Result<std::unique_ptr<LookupAnnouncer>> start(AnnouncerOptions options);
  ~LookupAnnouncer();  // withdraws (Avahi) and says goodbye (multicast)
  LookupAnnouncer(const LookupAnnouncer&) = delete;
  LookupAnnouncer& operator=(const LookupAnnouncer&) = delete;

  bool avahi_active() const;      // an Avahi announcer exists (the daemon may still be absent)
  bool multicast_active() const;  // multicast announcements are being sent

  struct Impl;

 private:
  explicit LookupAnnouncer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The pieces of "tcp://host:port": host ("*" and "0.0.0.0" kept as they are) and port; nullopt
// for anything else.
std::optional<std::pair<std::string, uint16_t>> split_tcp_endpoint(const std::string& endpoint);

}  // namespace djinn::discovery
