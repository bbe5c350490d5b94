// Model <-> Cap'n Proto. Reading is split in two layers: read_* walk a reader and may throw
// kj::Exception on malformed input; the public from_capnp wraps them, turns any exception into
// invalid_argument, then validates the result.
#include "djinn/core/model_capnp.h"

#include <kj/exception.h>

#include <algorithm>
#include <bit>
#include <exception>
#include <string>

namespace djinn {
namespace {

std::string text_of(capnp::Text::Reader t) { return std::string(t.begin(), t.size()); }
std::string_view view_of(capnp::Text::Reader t) { return std::string_view(t.begin(), t.size()); }

capnp::Text::Reader text_ref(const std::string& s) {
  return capnp::Text::Reader(s.data(), s.size());
}

Status too_many(std::string_view what, size_t count, size_t max) {
  return invalid_argument(std::string(what) + ": " + std::to_string(count) +
                          " items, must be at most " + std::to_string(max));
}

ServiceId read_uuid(proto::Uuid::Reader in) {
  return ServiceId::from_halves(in.getHi(), in.getLo());
}

Result<Value> read_value(proto::Value::Reader in) {
  Value v;
  switch (in.which()) {
    case proto::Value::NONE:
      break;
    case proto::Value::BOOL:
      v = Value(in.getBool());
      break;
    case proto::Value::INT:
      v = Value(static_cast<int64_t>(in.getInt()));
      break;
    case proto::Value::FLOAT:
      v = Value(in.getFloat());
      break;
    case proto::Value::TEXT:
      v = Value(text_of(in.getText()));
      break;
    case proto::Value::BYTES: {
      auto d = in.getBytes();
      v = Value(Value::Bytes(d.begin(), d.end()));
      break;
    }
    case proto::Value::UUID:
      v = Value(read_uuid(in.getUuid()));
      break;
    default:
      return invalid_argument("value of unknown kind " +
                              std::to_string(static_cast<int>(in.which())) +
                              ": expected null, bool, int, float, text, bytes or uuid");
  }
  return v;
}

// Fields arrive in any order; names must be unique. Sizes are checked before copying so a hostile
// list costs no more than kMaxFields reads.
Result<Fields> read_fields(std::string_view what, capnp::List<proto::Field>::Reader list) {
  if (list.size() > kMaxFields)
    return too_many(std::string(what) + " fields", list.size(), kMaxFields);
  Fields fields;
  for (auto f : list) {
    std::string name = text_of(f.getName());
    auto value = read_value(f.getValue());
    if (!value.ok()) {
      return invalid_argument(std::string(what) + " field '" + name.substr(0, 64) +
                              "': " + value.status().message());
    }
    if (!fields.emplace(name, std::move(value).value()).second) {
      return invalid_argument(std::string(what) + " field '" + name.substr(0, 64) +
                              "' appears twice: field names must be unique");
    }
  }
  return fields;
}

Result<std::vector<std::string>> read_texts(std::string_view what,
                                            capnp::List<capnp::Text>::Reader list, size_t max) {
  if (list.size() > max) return too_many(what, list.size(), max);
  std::vector<std::string> out;
  out.reserve(list.size());
  for (auto t : list) out.push_back(text_of(t));
  return out;
}

Result<Entry> read_entry(proto::Entry::Reader in) {
  Entry e;
  e.type = text_of(in.getType());
  auto supers = read_texts("entry supertypes", in.getSupertypes(), kMaxSupertypes);
  if (!supers.ok()) return supers.status();
  e.supertypes = std::move(supers).value();
  auto fields = read_fields("entry", in.getFields());
  if (!fields.ok()) return fields.status();
  e.fields = std::move(fields).value();
  return e;
}

Result<Template> read_template(proto::Template::Reader in) {
  Template t;
  t.type = text_of(in.getType());
  auto fields = read_fields("template", in.getFields());
  if (!fields.ok()) return fields.status();
  t.fields = std::move(fields).value();
  return t;
}

Endpoints read_endpoints(proto::Endpoints::Reader in) {
  return Endpoints{text_of(in.getRpc()), text_of(in.getEvents())};
}

LeaseInfo read_lease(proto::LeaseInfo::Reader in) {
  return LeaseInfo{in.getId(), in.getExpirationMillis()};
}

Result<ServiceItem> read_item(proto::ServiceItem::Reader in) {
  ServiceItem item;
  item.service_id = read_uuid(in.getServiceId());
  auto types =
      read_texts("service item interface types", in.getInterfaceTypes(), kMaxInterfaceTypes);
  if (!types.ok()) return types.status();
  item.interface_types = std::move(types).value();
  auto attrs = in.getAttributes();
  if (attrs.size() > kMaxAttributes)
    return too_many("service item attributes", attrs.size(), kMaxAttributes);
  for (auto a : attrs) {
    auto e = read_entry(a);
    if (!e.ok())
      return invalid_argument("service item attribute " + std::to_string(item.attributes.size()) +
                              ": " + e.status().message());
    item.attributes.push_back(std::move(e).value());
  }
  item.endpoints = read_endpoints(in.getEndpoints());
  item.public_key = text_of(in.getPublicKey());
  item.lease = read_lease(in.getLease());
  return item;
}

Result<ServiceTemplate> read_service_template(proto::ServiceTemplate::Reader in) {
  ServiceTemplate t;
  if (in.hasServiceId()) t.service_id = read_uuid(in.getServiceId());
  auto types =
      read_texts("service template interface types", in.getInterfaceTypes(), kMaxInterfaceTypes);
  if (!types.ok()) return types.status();
  t.interface_types = std::move(types).value();
  auto attrs = in.getAttributes();
  if (attrs.size() > kMaxAttributes) {
    return too_many("service template attributes", attrs.size(), kMaxAttributes);
  }
  for (auto a : attrs) {
    auto at = read_template(a);
    if (!at.ok())
      return invalid_argument("service template attribute " + std::to_string(t.attributes.size()) +
                              ": " + at.status().message());
    t.attributes.push_back(std::move(at).value());
  }
  return t;
}

// Runs `read` and then validate() on its result; a kj::Exception from a malformed reader (or any
// other exception from hostile sizes) becomes invalid_argument, never an escape.
template <class T, bool kValidate = true, class Read>
Result<T> guarded(std::string_view what, Read&& read) {
  try {
    Result<T> r = read();
    if constexpr (kValidate) {
      if (!r.ok()) return r;
      Status s = validate(r.value());
      if (!s.ok()) return s;
    }
    return r;
  } catch (const kj::Exception& e) {
    return invalid_argument(std::string(what) +
                            ": malformed Cap'n Proto message: " + e.getDescription().cStr());
  } catch (const std::exception& e) {
    return invalid_argument(std::string(what) + ": could not be read: " + e.what());
  }
}

void write_fields(const Fields& fields, capnp::List<proto::Field>::Builder out) {
  unsigned i = 0;
  for (const auto& [name, value] : fields) {
    auto f = out[i++];
    f.setName(text_ref(name));
    to_capnp(value, f.initValue());
  }
}

void write_texts(const std::vector<std::string>& texts, capnp::List<capnp::Text>::Builder out) {
  for (unsigned i = 0; i < texts.size(); ++i) out.set(i, text_ref(texts[i]));
}

}  // namespace

void to_capnp(const ServiceId& id, proto::Uuid::Builder out) {
  out.setHi(id.hi());
  out.setLo(id.lo());
}

void to_capnp(const Value& value, proto::Value::Builder out) {
  switch (value.type()) {
    case ValueType::kNull:
      out.setNone();
      break;
    case ValueType::kBool:
      out.setBool(value.as_bool());
      break;
    case ValueType::kInt:
      out.setInt(value.as_int());
      break;
    case ValueType::kFloat:
      out.setFloat(value.as_float());
      break;
    case ValueType::kText:
      out.setText(text_ref(value.as_text()));
      break;
    case ValueType::kBytes: {
      const auto& b = value.as_bytes();
      out.setBytes(capnp::Data::Reader(b.data(), b.size()));
      break;
    }
    case ValueType::kUuid:
      to_capnp(value.as_uuid(), out.initUuid());
      break;
  }
}

void to_capnp(const Entry& entry, proto::Entry::Builder out) {
  out.setType(text_ref(entry.type));
  write_texts(entry.supertypes, out.initSupertypes(static_cast<unsigned>(entry.supertypes.size())));
  write_fields(entry.fields, out.initFields(static_cast<unsigned>(entry.fields.size())));
}

void to_capnp(const Template& tmpl, proto::Template::Builder out) {
  out.setType(text_ref(tmpl.type));
  write_fields(tmpl.fields, out.initFields(static_cast<unsigned>(tmpl.fields.size())));
}

void to_capnp(const Endpoints& endpoints, proto::Endpoints::Builder out) {
  out.setRpc(text_ref(endpoints.rpc));
  out.setEvents(text_ref(endpoints.events));
}

void to_capnp(const LeaseInfo& lease, proto::LeaseInfo::Builder out) {
  out.setId(lease.id);
  out.setExpirationMillis(lease.expiration_ms);
}

void to_capnp(const ServiceItem& item, proto::ServiceItem::Builder out) {
  to_capnp(item.service_id, out.initServiceId());
  write_texts(item.interface_types,
              out.initInterfaceTypes(static_cast<unsigned>(item.interface_types.size())));
  auto attrs = out.initAttributes(static_cast<unsigned>(item.attributes.size()));
  for (unsigned i = 0; i < item.attributes.size(); ++i) to_capnp(item.attributes[i], attrs[i]);
  to_capnp(item.endpoints, out.initEndpoints());
  out.setPublicKey(text_ref(item.public_key));
  to_capnp(item.lease, out.initLease());
}

void to_capnp(const ServiceTemplate& tmpl, proto::ServiceTemplate::Builder out) {
  if (tmpl.service_id) to_capnp(*tmpl.service_id, out.initServiceId());
  write_texts(tmpl.interface_types,
              out.initInterfaceTypes(static_cast<unsigned>(tmpl.interface_types.size())));
  auto attrs = out.initAttributes(static_cast<unsigned>(tmpl.attributes.size()));
  for (unsigned i = 0; i < tmpl.attributes.size(); ++i) to_capnp(tmpl.attributes[i], attrs[i]);
}

// Any 128 bits are an id; nil is rejected where the context forbids it (items, templates).
Result<ServiceId> from_capnp(proto::Uuid::Reader in) {
  return guarded<ServiceId, false>("uuid", [&]() -> Result<ServiceId> { return read_uuid(in); });
}

Result<Value> from_capnp(proto::Value::Reader in) {
  return guarded<Value>("value", [&] { return read_value(in); });
}

Result<Entry> from_capnp(proto::Entry::Reader in) {
  return guarded<Entry>("entry", [&] { return read_entry(in); });
}

Result<Entry> from_capnp_unchecked(proto::Entry::Reader in) {
  return guarded<Entry, false>("entry", [&] { return read_entry(in); });
}

Result<Template> from_capnp(proto::Template::Reader in) {
  return guarded<Template>("template", [&] { return read_template(in); });
}

// Endpoints and leases have no rules of their own beyond those of the item that holds them.
Result<Endpoints> from_capnp(proto::Endpoints::Reader in) {
  return guarded<Endpoints, false>("endpoints",
                                   [&]() -> Result<Endpoints> { return read_endpoints(in); });
}

Result<LeaseInfo> from_capnp(proto::LeaseInfo::Reader in) {
  return guarded<LeaseInfo, false>("lease", [&]() -> Result<LeaseInfo> { return read_lease(in); });
}

Result<ServiceItem> from_capnp(proto::ServiceItem::Reader in) {
  return guarded<ServiceItem>("service item", [&] { return read_item(in); });
}

Result<ServiceTemplate> from_capnp(proto::ServiceTemplate::Reader in) {
  return guarded<ServiceTemplate>("service template", [&] { return read_service_template(in); });
}

std::string flat_bytes(capnp::MessageBuilder& message) {
  kj::Array<capnp::word> words = capnp::messageToFlatArray(message);
  return std::string(reinterpret_cast<const char*>(words.begin()), words.size() * sizeof(capnp::word));
}

namespace {

// Value equality (model.h: by kind and value, floats by bit pattern) against an encoded value.
bool equals(const Value& v, proto::Value::Reader in) {
  switch (in.which()) {
    case proto::Value::NONE:
      return v.type() == ValueType::kNull;
    case proto::Value::BOOL:
      return v.type() == ValueType::kBool && v.as_bool() == in.getBool();
    case proto::Value::INT:
      return v.type() == ValueType::kInt && v.as_int() == static_cast<int64_t>(in.getInt());
    case proto::Value::FLOAT:
      return v.type() == ValueType::kFloat &&
             std::bit_cast<uint64_t>(v.as_float()) == std::bit_cast<uint64_t>(in.getFloat());
    case proto::Value::TEXT:
      return v.type() == ValueType::kText && v.as_text() == view_of(in.getText());
    case proto::Value::BYTES: {
      if (v.type() != ValueType::kBytes) return false;
      auto d = in.getBytes();
      const Value::Bytes& b = v.as_bytes();
      return b.size() == d.size() && std::equal(b.begin(), b.end(), d.begin());
    }
    case proto::Value::UUID:
      return v.type() == ValueType::kUuid && v.as_uuid() == read_uuid(in.getUuid());
    default:
      return false;
  }
}

}  // namespace

bool matches(const Template& tmpl, proto::Entry::Reader entry) {
  if (!tmpl.type.empty() && view_of(entry.getType()) != tmpl.type) {
    bool kind = false;
    for (capnp::Text::Reader s : entry.getSupertypes()) {
      if (view_of(s) == tmpl.type) {
        kind = true;
        break;
      }
    }
    if (!kind) return false;
  }
  auto fields = entry.getFields();
  for (const auto& [name, value] : tmpl.fields) {
    if (value.is_null()) continue;
    bool found = false;
    for (proto::Field::Reader f : fields) {
      if (view_of(f.getName()) != name) continue;
      if (!equals(value, f.getValue())) return false;
      found = true;
      break;
    }
    if (!found) return false;
  }
  return true;
}

}  // namespace djinn
