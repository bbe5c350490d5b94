// Event streams (DESIGN §3): a Publisher on a PUB socket numbers every event of each kind; a
// Subscriber checks the numbers and calls its gap hook when events were lost (ZeroMQ drops under
// its high-water mark), so the subscriber re-syncs through an RPC snapshot. Events are hints with a
// sequence; state is always readable through RPC.
//
// The topic of an event is "<kind>/<key>". Sequence numbers run per kind, so a subscriber that wants
// some keys of a kind still receives the whole kind and filters keys itself: only then can it
// tell a lost event from one it did not ask for. A publisher that has been quiet sends a heartbeat
// per kind carrying the last number, so a loss at the tail of a burst shows too.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/array.h>
#include <zmq.hpp>

#include "djinn/core/rpc.h"
#include "djinn/core/status.h"

namespace djinn::events {

struct PublisherOptions {
  std::vector<std::string> endpoints = {"tcp://127.0.0.1:*"};
  std::optional<rpc::CurveServer> curve;
  int send_high_water_mark = 100000;
  std::chrono::milliseconds heartbeat_interval{1000};  // 0: no heartbeats
  zmq::context_t* context = nullptr;
};

// A payload encoded once for many events, as when one change goes out to many notify
// registrations: each publish shares its bytes (ZeroMQ counts the references) instead of encoding
// and copying them again.
class SharedPayload {
 public:
  explicit SharedPayload(capnp::MessageBuilder& message);

 private:
  friend class Publisher;
  zmq::message_t frame_;  // shared by the Publisher's sends, under its lock
};

class Publisher {
 public:
  explicit Publisher(PublisherOptions options);
  ~Publisher();
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;

  Status start();
  void stop();
  const std::vector<std::string>& endpoints() const { return bound_; }

  // Thread-safe. Returns the event's sequence number within its kind. Kinds and keys may not
  // contain '/' in the kind.
  uint64_t publish(std::string_view kind, std::string_view key, capnp::MessageBuilder& payload);
  uint64_t publish(std::string_view kind, std::string_view key);  // no payload
  uint64_t publish(std::string_view kind, std::string_view key, const SharedPayload& payload);
  // Numbers the next event of `kind` now, for send_numbered later: a service numbers the events of
  // a change under the lock it makes the change under, so a snapshot taken under that lock carries
  // a number that covers the change, and sends them once the lock is released. Numbered events of
  // a kind must be sent in their order, and no publish() of that kind may come in between.
  uint64_t number(std::string_view kind);
  void send_numbered(std::string_view kind, std::string_view key, const SharedPayload& payload, uint64_t seq);
  // The last number given to an event of a kind (0: none yet), sent or only numbered; RPC
  // snapshots carry it so a subscriber knows where the stream stood when the snapshot was taken.
  uint64_t last_seq(std::string_view kind) const;
  // Starts a kind's stream before its first event (number 0), so its heartbeats flow at once: a
  // subscriber learns of a new incarnation (a restarted publisher) without waiting for an event.
  void declare(std::string_view kind);
  // Ends a kind that will never be published again (its heartbeats stop). Publishing it later
  // starts a new stream at 1, which subscribers of the old one see as a gap.
  void forget(std::string_view kind);
  uint64_t incarnation() const { return incarnation_; }
  // Sends one heartbeat per kind now (the heartbeat thread calls it on its interval), with the
  // last number sent: a number given but not yet sent announces no loss.
  void heartbeat();

 private:
  uint64_t send(std::string_view kind, std::string_view key, bool heartbeat, const zmq::message_t* payload,
                uint64_t seq_override);
  struct Stream;
  Stream& stream_locked(std::string_view kind);  // mu_ held; created at number 0

  PublisherOptions options_;
  zmq::context_t& context_;
  uint64_t incarnation_;
  std::vector<std::string> bound_;
  mutable std::mutex mu_;  // guards socket_, seq_, zap_domain_
  std::unique_ptr<zmq::socket_t> socket_;
  struct Stream {
    uint64_t numbered = 0;  // the last number given
    uint64_t sent = 0;      // the last number sent: what heartbeats announce
  };
  std::map<std::string, Stream, std::less<>> seq_;
  std::string zap_domain_;
  std::mutex hb_mu_;  // guards hb_stop_
  std::condition_variable hb_cv_;
  bool hb_stop_ = false;
  std::thread hb_thread_;
};

// A started publisher on `endpoint`, or its bind error naming the endpoint (a service's event
// socket: the daemons' --events).
Result<std::unique_ptr<Publisher>> start_publisher(const std::string& endpoint, std::optional<rpc::CurveServer> curve);

// One received event. The payload reader lives as long as the Event.
struct Event {
  std::string kind;
  std::string key;
  uint64_t seq = 0;
  uint64_t incarnation = 0;
  uint64_t time_micros = 0;
  kj::Array<capnp::word> payload;  // empty when the event has none
  // The payload as a message (an empty root when there is none). Throws kj::Exception on a
  // malformed payload.
  capnp::FlatArrayMessageReader reader(const rpc::Limits& limits = {}) const;
};

// Why the subscriber asks for a re-sync.
struct Gap {
  std::string kind;
  uint64_t expected = 0;  // the number that should have come next (0: first contact)
  uint64_t received = 0;  // the number that came
  bool restarted = false; // the publisher's incarnation changed
};

struct SubscriberOptions {
  std::string endpoint;
  std::optional<rpc::CurveClient> curve;
  int receive_high_water_mark = 100000;
  rpc::Limits limits;
  zmq::context_t* context = nullptr;
  // A host name in `endpoint` is resolved again when nothing (not even a heartbeat) has come for
  // this long, and the publisher followed to a new address.
  std::chrono::milliseconds reresolve_after{30000};
};

class Subscriber {
 public:
  using EventHandler = std::function<void(const Event&)>;
  using GapHandler = std::function<void(const Gap&)>;

  explicit Subscriber(SubscriberOptions options);
  ~Subscriber();
  Subscriber(const Subscriber&) = delete;
  Subscriber& operator=(const Subscriber&) = delete;

  // Before start(). An empty key subscribes to every key of the kind.
  void subscribe(std::string kind, std::string key = "");
  void on_event(EventHandler handler) { on_event_ = std::move(handler); }
  // Called before the event that revealed the gap is delivered.
  void on_gap(GapHandler handler) { on_gap_ = std::move(handler); }

  // Runs the subscriber on its own thread.
  Status start();
  void stop();
  // Or drive it from the caller's thread (never while start()'s thread runs: the socket is one
  // thread's): waits up to `timeout` and handles what arrived, at most kMaxPerPoll messages, so a
  // publisher that never pauses cannot keep a call (or stop()) waiting.
  // Returns the number of events delivered.
  static constexpr int kMaxPerPoll = 1024;
  int poll(std::chrono::milliseconds timeout);

  uint64_t gaps() const { return gaps_; }
  // Whether anything (an event or a heartbeat of a subscribed kind) has arrived since start():
  // the subscription has reached the publisher. A SUB socket drops what is published before its
  // subscription arrives there, so a caller that must not miss the next event waits for this
  // (with a declared kind, the first heartbeat comes within the publisher's interval).
  bool heard() const { return heard_.load(); }

 private:
  void open();
  // Resolves the endpoint's host name, waiting until `deadline` at most, and dials the address.
  bool dial_by_name(std::chrono::steady_clock::time_point deadline);
  // After options_.reresolve_after without a message, resolves the name again and follows the
  // publisher to a new address.
  void consider_redial();
  void connect_to(const std::string& address, bool ipv6);
  void handle(std::vector<zmq::message_t>& parts);

  SubscriberOptions options_;
  zmq::context_t& context_;
  std::unique_ptr<zmq::socket_t> socket_;
  std::map<std::string, std::set<std::string>, std::less<>> wanted_;  // kind -> keys (empty: all)
  struct Stream {
    uint64_t incarnation = 0;
    uint64_t last = 0;
  };
  std::map<std::string, Stream, std::less<>> streams_;
  // The address the socket is connected to (empty: none yet; a host name is resolved first).
  std::string dialled_;
  std::chrono::steady_clock::time_point dialled_at_{};
  std::chrono::steady_clock::time_point last_heard_{};  // the last message, a heartbeat included
  // The endpoint's host name, and its looking up again after a silence (null: an address).
  struct Named;
  std::unique_ptr<Named> named_;
  std::string unresolved_;  // the last reason the host name did not resolve, logged once
  EventHandler on_event_;
  GapHandler on_gap_;
  std::atomic<bool> running_{false};
  std::thread thread_;
  std::atomic<uint64_t> gaps_{0};
  std::atomic<bool> heard_{false};
};

}  // namespace djinn::events
