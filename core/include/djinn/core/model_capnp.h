// Conversions between the data model (model.h) and its wire form (proto/model.capnp).
// from_capnp is the edge where untrusted bytes become model values: it never throws, rejects
// malformed readers and runs validate() on what it built.
#pragma once

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <cstring>
#include <span>
#include <string>

#include "djinn/core/model.h"
#include "djinn/core/status.h"
#include "djinn/proto/model.capnp.h"

namespace djinn {

void to_capnp(const ServiceId& id, proto::Uuid::Builder out);
void to_capnp(const Value& value, proto::Value::Builder out);
void to_capnp(const Entry& entry, proto::Entry::Builder out);
void to_capnp(const Template& tmpl, proto::Template::Builder out);
void to_capnp(const Endpoints& endpoints, proto::Endpoints::Builder out);
void to_capnp(const LeaseInfo& lease, proto::LeaseInfo::Builder out);
void to_capnp(const ServiceItem& item, proto::ServiceItem::Builder out);
void to_capnp(const ServiceTemplate& tmpl, proto::ServiceTemplate::Builder out);

// Each returns invalid_argument when the reader is malformed (a kj::Exception while reading:
// out-of-bounds pointer, traversal or nesting limit, missing NUL), holds an unknown union member,
// repeats a field name, or fails validate(). Readers should come from a MessageReader built with
// explicit ReaderOptions limits. Getting the reader itself (getRoot, a parent's getter) can throw
// kj::Exception on hostile bytes as well: do that inside the caller's own try.
Result<ServiceId> from_capnp(proto::Uuid::Reader in);
Result<Value> from_capnp(proto::Value::Reader in);
Result<Entry> from_capnp(proto::Entry::Reader in);
Result<Template> from_capnp(proto::Template::Reader in);
Result<Endpoints> from_capnp(proto::Endpoints::Reader in);
Result<LeaseInfo> from_capnp(proto::LeaseInfo::Reader in);
Result<ServiceItem> from_capnp(proto::ServiceItem::Reader in);
Result<ServiceTemplate> from_capnp(proto::ServiceTemplate::Reader in);

// What a part of a received message takes on the wire (its words, pointers included), to check
// against a limit before the part is read.
template <class Reader>
size_t encoded_bytes(Reader in) {
  return in.totalSize().wordCount * sizeof(capnp::word);
}

// from_capnp for an entry this process encoded from a checked Entry: read without checking it
// again (a malformed message still gives an error, never an exception).
Result<Entry> from_capnp_unchecked(proto::Entry::Reader in);

// matches(tmpl, entry) on an encoded entry, read in place: the same rules, no Entry built. The
// entry must be well formed (a reader that is not may throw kj::Exception).
bool matches(const Template& tmpl, proto::Entry::Reader entry);

// A built message as the bytes of its words, as stores keep messages in a column.
std::string flat_bytes(capnp::MessageBuilder& message);

// Reads back a message a store kept (flat_bytes) as a model value: DATA_LOSS when the bytes are not
// whole words or not a well-formed message of that type.
template <class Out, class Reader>
Result<Out> from_stored(std::span<const uint8_t> bytes) {
  if (bytes.size() % sizeof(capnp::word) != 0) {
    return data_loss("stored message of " + std::to_string(bytes.size()) + " bytes is not whole words");
  }
  kj::Array<capnp::word> words = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
  if (!bytes.empty()) std::memcpy(words.begin(), bytes.data(), bytes.size());
  try {
    capnp::FlatArrayMessageReader reader(words);
    return from_capnp(reader.getRoot<Reader>());
  } catch (const kj::Exception& e) {
    return data_loss(std::string("stored message is malformed: ") + e.getDescription().cStr());
  }
}

}  // namespace djinn
