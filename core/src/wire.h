// Internal: encoding and decoding of the RPC envelope frames (proto/rpc.capnp) and the small
// pieces shared by the server, the client and the event stream.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <string_view>

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

zmq::message_t encode_request_header(uint64_t id, std::string_view method, uint64_t timeout_micros,
                                     bool idempotent, std::string_view idempotency_key);
Status decode_request_header(const zmq::message_t& frame, const Limits& limits, RequestHeaderData* out);

zmq::message_t encode_reply_header(uint64_t id, const Status& status);
// The reply's own status goes to *status; the return value says whether the frame was readable.
Status decode_reply_header(const zmq::message_t& frame, const Limits& limits, uint64_t* id, Status* status);

// A whole message as one frame.
zmq::message_t message_frame(capnp::MessageBuilder& message);
zmq::message_t words_frame(kj::ArrayPtr<const capnp::word> words);

// Copies a frame into an owned, word-aligned array; fails when its size is not whole words.
Status frame_words(const zmq::message_t& frame, kj::Array<capnp::word>* out);

// An empty message (null root), for calls without params and replies without results.
kj::ArrayPtr<const capnp::word> empty_message_words();

Code code_from_wire(uint16_t wire);

// Binds, retrying for a moment on EADDRINUSE: ZeroMQ closes sockets asynchronously, so a port a
// socket of this process just released may still be held for a few milliseconds.
Status bind_endpoint(zmq::socket_t& socket, const std::string& endpoint, std::string* bound);

// An eventfd used to wake a thread that polls ZeroMQ sockets.
class Wakeup {
 public:
  Wakeup() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  ~Wakeup() { ::close(fd_); }
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
};

}  // namespace djinn::rpc::internal
