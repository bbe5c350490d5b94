// Internal: host names resolved off ZeroMQ's I/O thread.
//
// ZeroMQ resolves a tcp:// endpoint's host name on its I/O thread, synchronously, at every
// connection attempt (libzmq issues 2961 and 3243). A resolver that does not answer would stall
// every socket of the context, the servers' included. So clients and subscribers give ZeroMQ
// addresses only: a name is resolved here, on a thread of the resolver's own, and whoever needs
// the address waits for it no longer than its own deadline.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "djinn/core/status.h"

namespace djinn::rpc::internal {

// "tcp://HOST:PORT" whose HOST is a name rather than an IPv4 or bracketed IPv6 address.
struct NamedTcpEndpoint {
  std::string host;
  std::string port;
};
// Its parts, or nullopt for any other endpoint (an address, another transport, ZeroMQ's
// "source;destination" form), which goes to ZeroMQ as it is.
std::optional<NamedTcpEndpoint> named_tcp_endpoint(std::string_view endpoint);
// A host name (letters, digits, '-', '_' and '.', at most 253) and a port from 1 to 65535, or
// INVALID_ARGUMENT saying what is wrong with `endpoint`.
Status check_named_endpoint(const NamedTcpEndpoint& named, std::string_view endpoint);

// One resolution of one name, shared by everyone who asked for it while it ran.
class Resolution {
 public:
  using Clock = std::chrono::steady_clock;
  explicit Resolution(std::string host) : host_(std::move(host)) {}

  // Whether the name was resolved (or found unresolvable) before `deadline`.
  bool wait_until(Clock::time_point deadline) const;
  // After wait_until returned true: the endpoint to dial for `port` ("tcp://10.0.0.7:4160",
  // "tcp://[fd00::7]:4160") and whether it is IPv6, or why the name does not resolve.
  struct Dial {
    std::string endpoint;
    bool ipv6 = false;
  };
  Result<Dial> dial(const std::string& port) const;
  const std::string& host() const { return host_; }

  // The resolver's side.
  void finish(Status status, std::string address, bool ipv6);
  bool finished_before(Clock::time_point t) const;
  bool failed() const;

 private:
  const std::string host_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  bool done_ = false;
  Clock::time_point done_at_{};
  Status status_;
  std::string address_;
  bool ipv6_ = false;
};

// Any other endpoint, dialled as it is (IPv6 when its host is a bracketed address).
Resolution::Dial dial_as_given(const std::string& endpoint);

// The resolution of `host`: one in flight or recently finished (an address younger than
// `max_age`, at most 30 s; a failure younger than 1 s), else a new one. Never blocks on the resolver.
std::shared_ptr<const Resolution> resolve(const std::string& host,
                                          std::chrono::milliseconds max_age = std::chrono::seconds(30));

// What a client or subscriber whose connection went down does instead of ZeroMQ's resolution at
// each reconnection: once the address in use is `after` old, look the name up again in the
// background, and take the new address if the name moved. Not thread-safe.
class Relookup {
 public:
  using Clock = Resolution::Clock;
  // Call while the connection is down. `resolved_at`, when the address in use was found, is
  // moved on when a lookup finishes. Returns the new address when the name now resolves elsewhere.
  std::optional<Resolution::Dial> check(const NamedTcpEndpoint& name, const std::string& current,
                                        Clock::time_point& resolved_at, std::chrono::milliseconds after,
                                        Clock::time_point now);

 private:
  std::shared_ptr<const Resolution> pending_;
};

// The status of a resolution that did not finish by a call's deadline.
Status resolution_timeout(const std::string& host, const std::string& endpoint, std::chrono::milliseconds waited);

}  // namespace djinn::rpc::internal
