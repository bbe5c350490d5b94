// Envelope encoding shared by the RPC server, client and event stream.
#include "wire.h"

#include <chrono>
#include <cstring>
#include <thread>

#include <kj/exception.h>

#include "djinn/proto/rpc.capnp.h"

namespace djinn::rpc::internal {
namespace {

// Headers are small; decode them from a stack copy when the frame is not word-aligned.
constexpr size_t kMaxInlineHeaderWords = 256;

template <class F>
Status with_frame_reader(const zmq::message_t& frame, const Limits& limits, const char* what, F&& f) {
  size_t size = frame.size();
  if (size == 0) return invalid_argument(std::string(what) + " frame is empty");
  if (size % sizeof(capnp::word) != 0) {
    return invalid_argument(std::string(what) + " frame of " + std::to_string(size) +
                            " bytes is not a whole number of 8-byte words");
  }
  if (size > limits.max_frame_bytes) {
    return resource_exhausted(std::string(what) + " frame of " + std::to_string(size) +
                              " bytes exceeds the limit of " + std::to_string(limits.max_frame_bytes));
  }
  size_t words = size / sizeof(capnp::word);
  capnp::word inline_buf[kMaxInlineHeaderWords];
  kj::Array<capnp::word> heap;
  const capnp::word* data = static_cast<const capnp::word*>(frame.data());
  if (reinterpret_cast<uintptr_t>(data) % alignof(capnp::word) != 0) {
    capnp::word* dst = inline_buf;
    if (words > kMaxInlineHeaderWords) {
      heap = kj::heapArray<capnp::word>(words);
      dst = heap.begin();
    }
    std::memcpy(dst, frame.data(), size);
    data = dst;
  }
  try {
    capnp::FlatArrayMessageReader reader(kj::arrayPtr(data, words), reader_options(limits, words));
    return f(reader);
  } catch (const kj::Exception& e) {
    return invalid_argument(std::string("malformed ") + what + ": " + e.getDescription().cStr());
  }
}

zmq::message_t small_message_frame(capnp::MallocMessageBuilder& b) { return message_frame(b); }

}  // namespace

zmq::message_t encode_request_header(uint64_t id, std::string_view method, uint64_t timeout_micros,
                                     bool idempotent, std::string_view idempotency_key) {
  capnp::word scratch[32];
  memset(scratch, 0, sizeof scratch);
  capnp::MallocMessageBuilder b(kj::arrayPtr(scratch, 32));
  auto h = b.initRoot<proto::RequestHeader>();
  h.setId(id);
  h.setMethod(capnp::Text::Reader(method.data(), method.size()));
  h.setTimeoutMicros(timeout_micros);
  h.setIdempotent(idempotent);
  if (!idempotency_key.empty()) {
    h.setIdempotencyKey(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(idempotency_key.data()),
                                            idempotency_key.size()));
  }
  return small_message_frame(b);
}

Status decode_request_header(const zmq::message_t& frame, const Limits& limits, RequestHeaderData* out) {
  return with_frame_reader(frame, limits, "request header", [&](capnp::MessageReader& r) {
    auto h = r.getRoot<proto::RequestHeader>();
    out->id = h.getId();
    auto m = h.getMethod();
    out->method.assign(m.begin(), m.size());
    out->timeout_micros = h.getTimeoutMicros();
    out->idempotent = h.getIdempotent();
    auto k = h.getIdempotencyKey();
    out->idempotency_key.assign(reinterpret_cast<const char*>(k.begin()), k.size());
    return Status::Ok();
  });
}

zmq::message_t encode_reply_header(uint64_t id, const Status& status) {
  capnp::word scratch[32];
  memset(scratch, 0, sizeof scratch);
  capnp::MallocMessageBuilder b(kj::arrayPtr(scratch, 32));
  auto h = b.initRoot<proto::ReplyHeader>();
  h.setId(id);
  h.setStatus(static_cast<proto::StatusCode>(status.code()));
  if (!status.ok()) h.setMessage(status.message());
  return small_message_frame(b);
}

Status decode_reply_header(const zmq::message_t& frame, const Limits& limits, uint64_t* id, Status* status) {
  return with_frame_reader(frame, limits, "reply header", [&](capnp::MessageReader& r) {
    auto h = r.getRoot<proto::ReplyHeader>();
    *id = h.getId();
    Code code = code_from_wire(static_cast<uint16_t>(h.getStatus()));
    *status = code == Code::kOk ? Status::Ok() : Status(code, std::string(h.getMessage().cStr()));
    return Status::Ok();
  });
}

zmq::message_t message_frame(capnp::MessageBuilder& message) {
  auto segments = message.getSegmentsForOutput();
  size_t words = capnp::computeSerializedSizeInWords(message);
  zmq::message_t frame(words * sizeof(capnp::word));
  kj::ArrayOutputStream out(kj::arrayPtr(static_cast<kj::byte*>(frame.data()), frame.size()));
  capnp::writeMessage(out, segments);
  return frame;
}

zmq::message_t words_frame(kj::ArrayPtr<const capnp::word> words) {
  return zmq::message_t(words.begin(), words.size() * sizeof(capnp::word));
}

Status frame_words(const zmq::message_t& frame, kj::Array<capnp::word>* out) {
  if (frame.size() % sizeof(capnp::word) != 0) {
    return invalid_argument("payload frame of " + std::to_string(frame.size()) +
                            " bytes is not a whole number of 8-byte words");
  }
  *out = kj::heapArray<capnp::word>(frame.size() / sizeof(capnp::word));
  if (frame.size()) std::memcpy(out->begin(), frame.data(), frame.size());
  return Status::Ok();
}

kj::ArrayPtr<const capnp::word> empty_message_words() {
  // Segment table (one segment of one word) and a null root pointer.
  alignas(8) static const uint32_t kEmpty[4] = {0, 1, 0, 0};
  return kj::arrayPtr(reinterpret_cast<const capnp::word*>(kEmpty), 2);
}

Code code_from_wire(uint16_t wire) {
  return wire <= kMaxCode ? static_cast<Code>(wire) : Code::kUnknown;
}

Status bind_endpoint(zmq::socket_t& socket, const std::string& endpoint, std::string* bound) {
  auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  for (;;) {
    try {
      socket.bind(endpoint);
      *bound = socket.get(zmq::sockopt::last_endpoint);
      return Status::Ok();
    } catch (const zmq::error_t& e) {
      if (e.num() != EADDRINUSE || std::chrono::steady_clock::now() >= give_up) {
        return unavailable("cannot bind " + endpoint + ": " + e.what() +
                           (e.num() == EADDRINUSE ? " (another process holds the port: pick another with --listen)" : ""));
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace djinn::rpc::internal

namespace djinn::rpc {

capnp::ReaderOptions reader_options(const Limits& limits, size_t words) {
  capnp::ReaderOptions o;
  uint64_t budget = static_cast<uint64_t>(words) * limits.traversal_words_per_frame_word;
  o.traversalLimitInWords = budget < 1024 ? 1024 : budget;
  o.nestingLimit = limits.nesting_limit;
  return o;
}

}  // namespace djinn::rpc
