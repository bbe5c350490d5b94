// Envelope encoding shared by the RPC server, client and event stream.
#include "wire.h"

#include <chrono>
#include <cstring>
#include <thread>

#include <kj/exception.h>

#include "djinn/proto/rpc.capnp.h"

namespace djinn::rpc::internal {
namespace {

size_t words_of(size_t bytes) { return bytes / sizeof(capnp::word); }

// Headers are a few words (read under a 1024-word limit): what is looked at of an oversized frame.
constexpr size_t kHeaderViewBytes = 8192;

// Checks a frame's shape and gives its words, aligned (copied into split->storage if ZeroMQ handed
// an unaligned buffer, which it does for messages read in place from its receive buffer). A frame
// over the size limit gives only its first kHeaderViewBytes, so that its header can still be read
// and the refusal (*oversized) goes back under the call's own id.
Status frame_view(const zmq::message_t& frame, const Limits& limits, const char* what, SplitFrame* split,
                  kj::ArrayPtr<const capnp::word>* words, Status* oversized) {
  size_t size = frame.size();
  if (size == 0) return invalid_argument(std::string(what) + " frame is empty");
  if (size % sizeof(capnp::word) != 0) {
    return invalid_argument(std::string(what) + " frame of " + std::to_string(size) +
                            " bytes is not a whole number of 8-byte words");
  }
  size_t view = size;
  if (size > limits.max_frame_bytes) {
    *oversized = resource_exhausted(std::string(what) + " frame of " + std::to_string(size) +
                                    " bytes exceeds the limit of " + std::to_string(limits.max_frame_bytes) + " bytes");
    view = std::min(size, kHeaderViewBytes);
  }
  const capnp::word* data = static_cast<const capnp::word*>(frame.data());
  if (view < size || reinterpret_cast<uintptr_t>(data) % alignof(capnp::word) != 0) {
    split->storage = kj::heapArray<capnp::word>(words_of(view));
    std::memcpy(split->storage.begin(), frame.data(), view);
    data = split->storage.begin();
  }
  *words = kj::arrayPtr(data, words_of(view));
  return Status::Ok();
}

// Reads the header message at the front of `words` with `read`, and points split->payload at
// whatever follows it.
template <class F>
Status split_frame(const zmq::message_t& frame, const Limits& limits, const char* what, SplitFrame* split, F&& read) {
  Status oversized = Status::Ok();
  kj::ArrayPtr<const capnp::word> words;
  DJINN_RETURN_IF_ERROR(frame_view(frame, limits, what, split, &words, &oversized));
  try {
    capnp::ReaderOptions options;
    options.traversalLimitInWords = 1024;  // headers are a few words; anything bigger is hostile
    options.nestingLimit = 4;
    capnp::FlatArrayMessageReader reader(words, options);
    DJINN_RETURN_IF_ERROR(read(reader));
    if (!oversized.ok()) return oversized;
    split->payload = kj::arrayPtr(reader.getEnd(), words.end());
    return Status::Ok();
  } catch (const kj::Exception& e) {
    return invalid_argument(std::string("malformed ") + what + " header: " + e.getDescription().cStr());
  }
}

// Writes a small header message and then `tail_words` more words into one new frame.
template <class FillHeader, class WriteTail>
zmq::message_t header_and_tail(FillHeader&& fill, size_t tail_words, WriteTail&& write_tail) {
  capnp::word scratch[32];
  memset(scratch, 0, sizeof scratch);
  capnp::MallocMessageBuilder header(kj::arrayPtr(scratch, 32));
  fill(header);
  auto segments = header.getSegmentsForOutput();
  size_t header_words = capnp::computeSerializedSizeInWords(segments);
  zmq::message_t frame((header_words + tail_words) * sizeof(capnp::word));
  auto* bytes = static_cast<kj::byte*>(frame.data());
  kj::ArrayOutputStream out(kj::arrayPtr(bytes, header_words * sizeof(capnp::word)));
  capnp::writeMessage(out, segments);
  write_tail(kj::arrayPtr(bytes + header_words * sizeof(capnp::word), tail_words * sizeof(capnp::word)));
  return frame;
}

void fill_reply_header(capnp::MessageBuilder& b, uint64_t id, const Status& status) {
  auto h = b.initRoot<proto::ReplyHeader>();
  h.setId(id);
  h.setStatus(static_cast<proto::StatusCode>(status.code()));
  if (status.ok()) return;
  // Messages quote what was sent (a name, an endpoint), which may be long: cut, at a character's
  // start, so that the header stays within what a reader takes (1024 words).
  const std::string& m = status.message();
  if (m.size() <= kMaxStatusMessageBytes) return h.setMessage(m);
  size_t cut = kMaxStatusMessageBytes - 64;
  while (cut > 0 && (static_cast<unsigned char>(m[cut]) & 0xC0) == 0x80) --cut;
  h.setMessage(m.substr(0, cut) + "... (" + std::to_string(m.size() - cut) + " more bytes cut)");
}

}  // namespace

zmq::message_t encode_request(uint64_t id, std::string_view method, uint64_t timeout_micros, bool idempotent,
                              std::string_view idempotency_key, kj::ArrayPtr<const capnp::word> payload) {
  return header_and_tail(
      [&](capnp::MessageBuilder& b) {
        auto h = b.initRoot<proto::RequestHeader>();
        h.setId(id);
        h.setMethod(capnp::Text::Reader(method.data(), method.size()));
        h.setTimeoutMicros(timeout_micros);
        h.setIdempotent(idempotent);
        if (!idempotency_key.empty()) {
          h.setIdempotencyKey(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(idempotency_key.data()),
                                                  idempotency_key.size()));
        }
      },
      payload.size(), [&](kj::ArrayPtr<kj::byte> tail) {
        if (tail.size()) std::memcpy(tail.begin(), payload.begin(), tail.size());
      });
}

zmq::message_t encode_reply(uint64_t id, const Status& status, kj::ArrayPtr<const capnp::word> results) {
  if (!status.ok()) results = nullptr;
  return header_and_tail([&](capnp::MessageBuilder& b) { fill_reply_header(b, id, status); }, results.size(),
                         [&](kj::ArrayPtr<kj::byte> tail) {
                           if (tail.size()) std::memcpy(tail.begin(), results.begin(), tail.size());
                         });
}

zmq::message_t encode_reply(uint64_t id, const Status& status, capnp::MessageBuilder& results) {
  if (!status.ok()) return encode_reply(id, status, kj::ArrayPtr<const capnp::word>());
  auto segments = results.getSegmentsForOutput();
  // A handler that never touched its results leaves a builder with no segments: send none.
  if (segments.size() == 0) return encode_reply(id, status, kj::ArrayPtr<const capnp::word>());
  return header_and_tail([&](capnp::MessageBuilder& b) { fill_reply_header(b, id, status); },
                         capnp::computeSerializedSizeInWords(segments), [&](kj::ArrayPtr<kj::byte> tail) {
                           kj::ArrayOutputStream out(tail);
                           capnp::writeMessage(out, segments);
                         });
}

Status decode_request(const zmq::message_t& frame, const Limits& limits, RequestHeaderData* out, SplitFrame* split) {
  return split_frame(frame, limits, "request", split, [&](capnp::MessageReader& r) {
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

Status decode_reply(const zmq::message_t& frame, const Limits& limits, uint64_t* id, Status* status, SplitFrame* split) {
  return split_frame(frame, limits, "reply", split, [&](capnp::MessageReader& r) {
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

int poll_sockets(zmq::pollitem_t* items, size_t count, std::chrono::milliseconds timeout) {
  int rc = zmq_poll(items, static_cast<int>(count), static_cast<long>(timeout.count()));
  if (rc >= 0) return rc;
  if (zmq_errno() != EINTR) throw zmq::error_t();
  for (size_t i = 0; i < count; ++i) items[i].revents = 0;
  return 0;
}

std::optional<size_t> recv_frame(zmq::socket_t& socket, zmq::message_t& message, zmq::recv_flags flags) {
  return past_signals([&] { return socket.recv(message, flags); });
}

bool recv_parts(zmq::socket_t& socket, std::vector<zmq::message_t>& parts, zmq::recv_flags flags) {
  zmq::message_t part;
  if (!recv_frame(socket, part, flags)) return false;
  bool more = part.more();
  parts.push_back(std::move(part));
  // The parts of a message arrive together: the rest are there once the first is.
  while (more) {
    zmq::message_t next;
    if (!recv_frame(socket, next, zmq::recv_flags::none)) break;
    more = next.more();
    parts.push_back(std::move(next));
  }
  return true;
}

std::optional<size_t> send_frame(zmq::socket_t& socket, zmq::message_t& message, zmq::send_flags flags) {
  return past_signals([&] { return socket.send(message, flags); });
}

Status bind_endpoint(zmq::socket_t& socket, const std::string& endpoint, std::string* bound) {
  auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  for (;;) {
    try {
      past_signals([&] { socket.bind(endpoint); });
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
