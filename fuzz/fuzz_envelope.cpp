// Fuzz target: the RPC and event envelopes as a server or subscriber reads them from the network.
// The input is split into frames (a 2-byte little-endian length before each frame); each frame is
// decoded as a request and as a reply (a header message followed by a payload message), and each
// payload is walked whole under the same reader limits the server uses.
#include <cstddef>
#include <cstdint>
#include <vector>

#include <capnp/any.h>
#include <kj/exception.h>

#include "djinn/proto/rpc.capnp.h"
#include "wire.h"

using namespace djinn;

namespace {

void walk_payload(kj::ArrayPtr<const capnp::word> words, const rpc::Limits& limits) {
  if (words.size() == 0) return;
  try {
    capnp::FlatArrayMessageReader r(words, rpc::reader_options(limits, words.size()));
    (void)r.getRoot<capnp::AnyPointer>().targetSize();
  } catch (const kj::Exception&) {
    // Rejected input is the expected outcome; only crashes and hangs are bugs.
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const rpc::Limits limits = [] {
    rpc::Limits l;
    l.max_frame_bytes = 1 << 16;
    return l;
  }();
  std::vector<zmq::message_t> frames;
  size_t at = 0;
  while (at + 2 <= size && frames.size() < 16) {
    size_t len = data[at] | (size_t{data[at + 1]} << 8);
    at += 2;
    if (len > size - at) len = size - at;
    frames.emplace_back(data + at, len);
    at += len;
  }
  for (const auto& frame : frames) {
    rpc::internal::RequestHeaderData req;
    rpc::internal::SplitFrame request;
    if (rpc::internal::decode_request(frame, limits, &req, &request).ok()) walk_payload(request.payload, limits);
    uint64_t id = 0;
    Status st;
    rpc::internal::SplitFrame reply;
    if (rpc::internal::decode_reply(frame, limits, &id, &st, &reply).ok()) walk_payload(reply.payload, limits);
  }
  return 0;
}
