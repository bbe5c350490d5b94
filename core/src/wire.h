// Internal: encoding and decoding of the RPC envelope frames (proto/rpc.capnp) and the small
// pieces shared by the server, the client and the event stream.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/array.h>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "djinn/core/rpc.h"
#include "djinn/core/status.h"

namespace djinn::rpc::internal {

struct RequestHeaderData {
  uint64_t id = 0;
  std::string method;
  uint64_t timeout_micros = 0;
  bool idempotent = false;
  std::string idempotency_key;
};

// One call is one frame: a RequestHeader message immediately followed by the payload message
// (nothing after the header when the call has no payload). A reply is one frame the same way:
// ReplyHeader, then the results. Cap'n Proto messages say where they end, so no lengths are needed.
zmq::message_t encode_request(uint64_t id, std::string_view method, uint64_t timeout_micros, bool idempotent,
                              std::string_view idempotency_key, kj::ArrayPtr<const capnp::word> payload);
zmq::message_t encode_reply(uint64_t id, const Status& status, kj::ArrayPtr<const capnp::word> results);
// The results are written straight into the frame (no intermediate copy); ignored unless ok.
zmq::message_t encode_reply(uint64_t id, const Status& status, capnp::MessageBuilder& results);

// A frame split into its header and payload. `payload` points into the frame when the frame is
// word-aligned, else into `storage`; it is empty when the call carried no payload.
struct SplitFrame {
  kj::Array<capnp::word> storage;
  kj::ArrayPtr<const capnp::word> payload;
};
Status decode_request(const zmq::message_t& frame, const Limits& limits, RequestHeaderData* header, SplitFrame* split);
Status decode_reply(const zmq::message_t& frame, const Limits& limits, uint64_t* id, Status* status, SplitFrame* split);

// A whole message as one frame (event payloads).
zmq::message_t message_frame(capnp::MessageBuilder& message);

// Copies a frame into an owned, word-aligned array; fails when its size is not whole words.
Status frame_words(const zmq::message_t& frame, kj::Array<capnp::word>* out);

// An empty message (null root), for calls without params and replies without results.
kj::ArrayPtr<const capnp::word> empty_message_words();

Code code_from_wire(uint16_t wire);

// The longest status message a reply carries; longer ones are cut.
inline constexpr size_t kMaxStatusMessageBytes = 4096;

// Binds, retrying for a moment on EADDRINUSE: ZeroMQ closes sockets asynchronously, so a port a
// socket of this process just released may still be held for a few milliseconds.
Status bind_endpoint(zmq::socket_t& socket, const std::string& endpoint, std::string* bound);

// zmq_poll, except that a signal interrupting it counts as nothing ready (revents cleared, 0
// returned) instead of an exception: every caller loops and recomputes its wait, and a signal the
// process handles (SIGCHLD, a timer, a profiler's SIGPROF) must not end a call or a thread.
int poll_sockets(zmq::pollitem_t* items, size_t count, std::chrono::milliseconds timeout);

// Calls `op` (a cppzmq call that may throw zmq::error_t) until a signal does not interrupt it.
template <class Op>
decltype(auto) past_signals(Op&& op) {
  for (;;) {
    try {
      return op();
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) throw;
    }
  }
}

// Receiving and sending that ride out a signal the same way. ZeroMQ fails even a non-blocking
// call with EINTR while a signal is pending (it reads its command mailbox with a zero-timeout
// poll()), and cppzmq throws for it; these try again. recv_frame and send_frame return what
// cppzmq returns (nullopt: nothing ready / the pipe is full, under dontwait). recv_parts appends
// every part of one message to `parts`; false when none is ready.
std::optional<size_t> recv_frame(zmq::socket_t& socket, zmq::message_t& message, zmq::recv_flags flags);
bool recv_parts(zmq::socket_t& socket, std::vector<zmq::message_t>& parts, zmq::recv_flags flags);
std::optional<size_t> send_frame(zmq::socket_t& socket, zmq::message_t& message, zmq::send_flags flags);

// An eventfd used to wake a thread that polls ZeroMQ sockets. Its owner checks status() before a
// thread waits on it: one that could not be made (out of file descriptors) would never wake it.
class Wakeup {
 public:
  Wakeup() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)), error_(fd_ < 0 ? errno : 0) {}
  ~Wakeup() {
    if (fd_ >= 0) ::close(fd_);
  }
  Status status() const {
    if (fd_ >= 0) return Status::Ok();
    return resource_exhausted(std::string("cannot make an eventfd: ") + std::strerror(error_) +
                              " (raise the limit on open files, ulimit -n)");
  }
  Wakeup(const Wakeup&) = delete;
  Wakeup& operator=(const Wakeup&) = delete;
  int fd() const { return fd_; }
  void notify() {
    uint64_t one = 1;
    ssize_t r = ::write(fd_, &one, sizeof one);
    (void)r;
  }
  void drain() {
    uint64_t v;
    ssize_t r = ::read(fd_, &v, sizeof v);
    (void)r;
  }

 private:
  int fd_;
  int error_;
};

}  // namespace djinn::rpc::internal
