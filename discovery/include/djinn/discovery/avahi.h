// DNS-SD through the local avahi-daemon (avahi-client, with its threaded poll): a lookup service
// publishes `_djinn-lookup._tcp` with the TXT of wire.h, and browsers resolve what others publish.
// Both keep working when avahi-daemon is absent or restarts: they warn once and act as soon as it
// is back (AVAHI_CLIENT_NO_FAIL).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "djinn/core/status.h"
#include "djinn/discovery/wire.h"

namespace djinn::discovery {

// Publishes one lookup service. The instance name is `name` (Avahi picks an alternative on a
// collision, e.g. "lookup #2"); the SRV port is the RPC port.
class AvahiAnnouncer {
 public:
  // Fails only on bad input (TXT that does not fit); a missing daemon is a warning, and the
  // record is published once the daemon is there.
  static Result<std::unique_ptr<AvahiAnnouncer>> start(Announcement self, std::string instance_name);
  ~AvahiAnnouncer();  // withdraws the record
  AvahiAnnouncer(const AvahiAnnouncer&) = delete;
  AvahiAnnouncer& operator=(const AvahiAnnouncer&) = delete;

  // Whether the record is established now (the daemon confirmed it).
  bool established() const;
  // Whether a daemon is connected.
  bool daemon_running() const;

  struct Impl;

 private:
  explicit AvahiAnnouncer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Browses `_djinn-lookup._tcp` and resolves every instance. Callbacks run on Avahi's poll thread:
// keep them short (the discovery manager only queues). `key` names one instance on one
// interface; the same key is given to on_removed when it is withdrawn.
struct AvahiBrowserOptions {
  std::function<void(const std::string& key, const Announcement& a)> on_found;
  std::function<void(const std::string& key)> on_removed;
  // Runs once when the daemon cannot be reached (absent or stopped), with why.
  std::function<void(const std::string& why)> on_unavailable;
};

class AvahiBrowser {
 public:
  static Result<std::unique_ptr<AvahiBrowser>> start(AvahiBrowserOptions options);
  ~AvahiBrowser();
  AvahiBrowser(const AvahiBrowser&) = delete;
  AvahiBrowser& operator=(const AvahiBrowser&) = delete;
  bool daemon_running() const;

  struct Impl;

 private:
  explicit AvahiBrowser(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace djinn::discovery
