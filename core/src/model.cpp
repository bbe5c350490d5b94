// Ids, values, entries, templates and service items (DESIGN §2): matching and validation.
// Validation runs on every input that crosses a process boundary, so its messages are written for
// the person who sent the bad input.
#include "djinn/core/model.h"

#include <sodium.h>
#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <charconv>

namespace djinn {
namespace {

constexpr char kHexDigits[] = "0123456789abcdef";
// Byte offsets of the dashes in the canonical form.
constexpr std::array<size_t, 4> kDashes = {8, 13, 18, 23};
constexpr size_t kCanonicalLength = 36;
// Names quoted in messages are cut here so a hostile 1 MiB name does not become a 1 MiB message.
constexpr size_t kMaxQuotedBytes = 64;
constexpr size_t kMaxDisplayedBytes = 32;

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool is_ident_start(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_'; }
bool is_ident_char(char c) { return is_ident_start(c) || (c >= '0' && c <= '9'); }

bool is_identifier(std::string_view s) {
  if (s.empty() || !is_ident_start(s[0])) return false;
  return std::all_of(s.begin() + 1, s.end(), is_ident_char);
}

// Printable ASCII kept, everything else as \xNN, cut at kMaxQuotedBytes.
std::string quoted(std::string_view s) {
  std::string out = "'";
  for (size_t i = 0; i < s.size() && i < kMaxQuotedBytes; ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHexDigits[c >> 4];
      out += kHexDigits[c & 0xf];
    }
  }
  if (s.size() > kMaxQuotedBytes) out += "...";
  out += "'";
  return out;
}

// RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF.
bool is_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    uint32_t min;
    if ((c & 0xe0) == 0xc0) {
      len = 2, cp = c & 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3, cp = c & 0x0f, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4, cp = c & 0x07, min = 0x10000;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += len;
  }
  return true;
}

bool is_z85_key(std::string_view s) {
  static constexpr std::string_view kZ85 =
      "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
  return s.size() == 40 &&
         std::all_of(s.begin(), s.end(), [](char c) { return kZ85.find(c) != kZ85.npos; });
}

// "scheme://address" with a lowercase scheme, as ZeroMQ endpoints are written.
bool is_endpoint(std::string_view s) {
  size_t sep = s.find("://");
  if (sep == std::string_view::npos || sep == 0 || sep + 3 == s.size()) return false;
  for (size_t i = 0; i < sep; ++i) {
    if (!(s[i] >= 'a' && s[i] <= 'z')) return false;
  }
  return std::all_of(s.begin() + sep + 3, s.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

// `what()` names the thing checked, for an error message: it is called only when a check fails,
// so a passing check builds no string.
template <class What>
Status check_type_name(const What& what, std::string_view name) {
  if (name.size() > kMaxTypeNameBytes) {
    return invalid_argument(what() + " of " + std::to_string(name.size()) +
                            " bytes: must be at most " + std::to_string(kMaxTypeNameBytes) +
                            " bytes");
  }
  if (!is_type_name(name)) {
    return invalid_argument(what() + " " + quoted(name) +
                            ": must be a dotted identifier like djinn.attr.Location");
  }
  return Status::Ok();
}

// A list of type names that is a set: bounded, each a type name, no repeats.
template <class What>
Status check_type_list(const What& what, const std::vector<std::string>& types, size_t max_count) {
  if (types.size() > max_count) {
    return invalid_argument(what() + ": " + std::to_string(types.size()) +
                            " types, must be at most " + std::to_string(max_count));
  }
  for (auto t = types.begin(); t != types.end(); ++t) {
    DJINN_RETURN_IF_ERROR(check_type_name(what, *t));
    if (std::find(types.begin(), t, *t) != t) {  // lists are short (max_count)
      return invalid_argument(what() + " " + quoted(*t) + ": listed twice, each type must appear once");
    }
  }
  return Status::Ok();
}

template <class What>
Status check_value(const What& what, const Value& value) {
  switch (value.type()) {
    case ValueType::kText: {
      const auto& t = value.as_text();
      if (t.size() > kMaxTextBytes) {
        return invalid_argument(what() + ": text of " + std::to_string(t.size()) +
                                " bytes, must be at most " + std::to_string(kMaxTextBytes) +
                                " bytes (use bytes or a chunk for large content)");
      }
      if (!is_utf8(t)) {
        return invalid_argument(what() + ": text is not valid UTF-8 (use bytes for " +
                                "binary content)");
      }
      return Status::Ok();
    }
    case ValueType::kBytes:
      if (value.as_bytes().size() > kMaxBytesValue) {
        return invalid_argument(what() + ": bytes of " +
                                std::to_string(value.as_bytes().size()) +
                                " bytes, must be at most " + std::to_string(kMaxBytesValue) +
                                " bytes (store large content as a chunk and keep its hash)");
      }
      return Status::Ok();
    default:
      return Status::Ok();
  }
}

template <class What>
Status check_fields(const What& what, const Fields& fields) {
  if (fields.size() > kMaxFields) {
    return invalid_argument(what() + ": " + std::to_string(fields.size()) +
                            " fields, must be at most " + std::to_string(kMaxFields));
  }
  for (const auto& field : fields) {
    const std::string& name = field.first;  // a plain reference: lambdas below capture it
    if (name.size() > kMaxFieldNameBytes) {
      return invalid_argument(what() + " field name of " + std::to_string(name.size()) +
                              " bytes: must be at most " + std::to_string(kMaxFieldNameBytes) +
                              " bytes");
    }
    if (!is_identifier(name)) {
      return invalid_argument(what() + " field " + quoted(name) +
                              ": must be an identifier like room_number");
    }
    DJINN_RETURN_IF_ERROR(check_value([&] { return what() + " field " + quoted(name); }, field.second));
  }
  return Status::Ok();
}

Status check_entry(std::string_view prefix, const Entry& entry) {
  DJINN_RETURN_IF_ERROR(check_type_name([&] { return std::string(prefix) + "entry type"; }, entry.type));
  auto what = [&] { return std::string(prefix) + "entry " + quoted(entry.type); };
  DJINN_RETURN_IF_ERROR(
      check_type_list([&] { return what() + " supertype"; }, entry.supertypes, kMaxSupertypes));
  if (std::find(entry.supertypes.begin(), entry.supertypes.end(), entry.type) !=
      entry.supertypes.end()) {
    return invalid_argument(what() + ": lists itself as a supertype; supertypes are the other " +
                            "types it is a kind of");
  }
  return check_fields(what, entry.fields);
}

Status check_template(std::string_view prefix, const Template& tmpl) {
  if (!tmpl.type.empty()) {
    DJINN_RETURN_IF_ERROR(check_type_name([&] { return std::string(prefix) + "template type"; }, tmpl.type));
  }
  return check_fields(
      [&] { return std::string(prefix) + "template " + (tmpl.type.empty() ? "(any type)" : quoted(tmpl.type)); },
      tmpl.fields);
}

void append_hex(std::string& out, uint8_t b) {
  out += kHexDigits[b >> 4];
  out += kHexDigits[b & 0xf];
}

}  // namespace

// ---- ServiceId ----

ServiceId ServiceId::from_halves(uint64_t hi, uint64_t lo) {
  Bytes b;
  for (int i = 0; i < 8; ++i) {
    b[i] = static_cast<uint8_t>(hi >> (56 - 8 * i));
    b[8 + i] = static_cast<uint8_t>(lo >> (56 - 8 * i));
  }
  return ServiceId(b);
}

ServiceId ServiceId::random() {
  // randombytes_buf works before sodium_init (it seeds itself), but sodium_init picks the best
  // implementation once; its failure would leave randombytes_buf still usable.
  [[maybe_unused]] static const int kSodiumReady = sodium_init();
  Bytes b;
  randombytes_buf(b.data(), b.size());
  b[6] = static_cast<uint8_t>((b[6] & 0x0f) | 0x40);  // version 4
  b[8] = static_cast<uint8_t>((b[8] & 0x3f) | 0x80);  // RFC 4122 variant
  return ServiceId(b);
}

std::optional<ServiceId> ServiceId::parse(std::string_view text) {
  if (text.size() != kCanonicalLength) return std::nullopt;
  for (size_t d : kDashes) {
    if (text[d] != '-') return std::nullopt;
  }
  Bytes b;
  size_t n = 0;
  for (size_t i = 0; i < text.size();) {
    if (text[i] == '-' && std::find(kDashes.begin(), kDashes.end(), i) != kDashes.end()) {
      ++i;
      continue;
    }
    int h = hex_value(text[i]);
    int l = hex_value(text[i + 1]);  // a dash is never at i + 1 here, and i + 1 < 36
    if (h < 0 || l < 0) return std::nullopt;
    b[n++] = static_cast<uint8_t>(h << 4 | l);
    i += 2;
  }
  return ServiceId(b);
}

std::string ServiceId::to_string() const {
  std::string out;
  out.reserve(kCanonicalLength);
  for (size_t i = 0; i < bytes_.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
    append_hex(out, bytes_[i]);
  }
  return out;
}

bool ServiceId::is_nil() const {
  return std::all_of(bytes_.begin(), bytes_.end(), [](uint8_t b) { return b == 0; });
}

uint64_t ServiceId::hi() const {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = v << 8 | bytes_[i];
  return v;
}

uint64_t ServiceId::lo() const {
  uint64_t v = 0;
  for (int i = 8; i < 16; ++i) v = v << 8 | bytes_[i];
  return v;
}

// ---- Value ----

std::string_view value_type_name(ValueType type) {
  switch (type) {
    case ValueType::kNull:
      return "null";
    case ValueType::kBool:
      return "bool";
    case ValueType::kInt:
      return "int";
    case ValueType::kFloat:
      return "float";
    case ValueType::kText:
      return "text";
    case ValueType::kBytes:
      return "bytes";
    case ValueType::kUuid:
      return "uuid";
  }
  return "unknown";
}

bool operator==(const Value& a, const Value& b) {
  if (a.v_.index() != b.v_.index()) return false;
  if (a.type() == ValueType::kFloat) {
    return std::bit_cast<uint64_t>(a.as_float()) == std::bit_cast<uint64_t>(b.as_float());
  }
  return a.v_ == b.v_;
}

std::string Value::to_string() const {
  switch (type()) {
    case ValueType::kNull:
      return "null";
    case ValueType::kBool:
      return as_bool() ? "true" : "false";
    case ValueType::kInt:
      return std::to_string(as_int());
    case ValueType::kFloat: {
      char buf[64];
      auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), as_float());
      std::string out(buf, ec == std::errc() ? end : buf);
      if (out.find_first_of(".eni") == std::string::npos) out += ".0";
      return out;
    }
    case ValueType::kText: {
      std::string out = "\"";
      for (char c : as_text()) {
        auto u = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
          out += '\\';
          out += c;
        } else if (c == '\n') {
          out += "\\n";
        } else if (c == '\t') {
          out += "\\t";
        } else if (u < 0x20 || u == 0x7f) {
          out += "\\x";
          append_hex(out, u);
        } else {
          out += c;
        }
      }
      return out + "\"";
    }
    case ValueType::kBytes: {
      const auto& b = as_bytes();
      std::string out = "0x";
      for (size_t i = 0; i < b.size() && i < kMaxDisplayedBytes; ++i) append_hex(out, b[i]);
      if (b.size() > kMaxDisplayedBytes) out += "...(" + std::to_string(b.size()) + " bytes)";
      return out;
    }
    case ValueType::kUuid:
      return as_uuid().to_string();
  }
  return "?";
}

// ---- Entries and templates ----

bool Entry::is_a(std::string_view t) const {
  return type == t || std::find(supertypes.begin(), supertypes.end(), t) != supertypes.end();
}

const Value* Entry::field(std::string_view name) const {
  auto it = fields.find(name);
  return it == fields.end() ? nullptr : &it->second;
}

bool matches(const Template& tmpl, const Entry& entry) {
  if (!tmpl.type.empty() && !entry.is_a(tmpl.type)) return false;
  for (const auto& [name, value] : tmpl.fields) {
    if (value.is_null()) continue;
    const Value* v = entry.field(name);
    if (v == nullptr || !(*v == value)) return false;
  }
  return true;
}

bool matches(const ServiceTemplate& tmpl, const ServiceItem& item) {
  if (tmpl.service_id && *tmpl.service_id != item.service_id) return false;
  for (const auto& t : tmpl.interface_types) {
    if (std::find(item.interface_types.begin(), item.interface_types.end(), t) ==
        item.interface_types.end()) {
      return false;
    }
  }
  for (const auto& at : tmpl.attributes) {
    bool any = std::any_of(item.attributes.begin(), item.attributes.end(),
                           [&](const Entry& e) { return matches(at, e); });
    if (!any) return false;
  }
  return true;
}

// ---- Validation ----

bool is_type_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxTypeNameBytes) return false;
  size_t start = 0;
  while (true) {
    size_t dot = name.find('.', start);
    if (!is_identifier(name.substr(start, dot == std::string_view::npos ? dot : dot - start))) {
      return false;
    }
    if (dot == std::string_view::npos) return true;
    start = dot + 1;
  }
}

bool is_field_name(std::string_view name) {
  return name.size() <= kMaxFieldNameBytes && is_identifier(name);
}

Status validate(const Value& value) {
  return check_value([] { return std::string("value"); }, value);
}

Status validate(const Entry& entry) { return check_entry("", entry); }

Status validate(const Template& tmpl) { return check_template("", tmpl); }

Status validate(const ServiceItem& item) {
  if (item.service_id.is_nil()) {
    return invalid_argument(
        "service item: service id is nil; a service needs its own id "
        "(ServiceId::random(), kept for life)");
  }
  DJINN_RETURN_IF_ERROR(
      check_type_list([] { return std::string("service item interface type"); }, item.interface_types,
                      kMaxInterfaceTypes));
  if (item.attributes.size() > kMaxAttributes) {
    return invalid_argument("service item: " + std::to_string(item.attributes.size()) +
                            " attributes, must be at most " + std::to_string(kMaxAttributes));
  }
  for (size_t i = 0; i < item.attributes.size(); ++i) {
    DJINN_RETURN_IF_ERROR(
        check_entry("service item attribute " + std::to_string(i) + ": ", item.attributes[i]));
  }
  auto check_endpoint = [](std::string_view what, const std::string& ep) -> Status {
    if (ep.empty()) return Status::Ok();
    if (ep.size() > kMaxEndpointBytes) {
      return invalid_argument("service item " + std::string(what) + " endpoint of " +
                              std::to_string(ep.size()) + " bytes: must be at most " +
                              std::to_string(kMaxEndpointBytes) + " bytes");
    }
    if (!is_endpoint(ep)) {
      return invalid_argument("service item " + std::string(what) + " endpoint " + quoted(ep) +
                              ": must be a ZeroMQ endpoint like tcp://10.0.0.2:7001, or empty");
    }
    return Status::Ok();
  };
  DJINN_RETURN_IF_ERROR(check_endpoint("rpc", item.endpoints.rpc));
  DJINN_RETURN_IF_ERROR(check_endpoint("events", item.endpoints.events));
  if (!item.public_key.empty() && !is_z85_key(item.public_key)) {
    return invalid_argument("service item public key " + quoted(item.public_key) +
                            ": must be a CURVE public key in Z85 (40 characters), or empty");
  }
  if (item.lease.expiration_ms < 0) {
    return invalid_argument("service item lease expiration " +
                            std::to_string(item.lease.expiration_ms) +
                            " ms: must be unix time in ms (>= 0)");
  }
  return Status::Ok();
}

Status validate(const ServiceTemplate& tmpl) {
  if (tmpl.service_id && tmpl.service_id->is_nil()) {
    return invalid_argument(
        "service template: service id is nil, which no service has; leave "
        "it unset to match any service");
  }
  DJINN_RETURN_IF_ERROR(
      check_type_list([] { return std::string("service template interface type"); }, tmpl.interface_types,
                      kMaxInterfaceTypes));
  if (tmpl.attributes.size() > kMaxAttributes) {
    return invalid_argument("service template: " + std::to_string(tmpl.attributes.size()) +
                            " attribute templates, must be at most " +
                            std::to_string(kMaxAttributes));
  }
  for (size_t i = 0; i < tmpl.attributes.size(); ++i) {
    DJINN_RETURN_IF_ERROR(check_template("service template attribute " + std::to_string(i) + ": ",
                                         tmpl.attributes[i]));
  }
  return Status::Ok();
}

void append_index_key(std::string& out, const Value& v) {
  out.push_back(static_cast<char>(v.type()));
  switch (v.type()) {
    case ValueType::kNull: break;
    case ValueType::kBool: out.push_back(v.as_bool() ? 1 : 0); break;
    case ValueType::kInt: {
      int64_t x = v.as_int();
      out.append(reinterpret_cast<const char*>(&x), sizeof x);
      break;
    }
    case ValueType::kFloat: {
      double x = v.as_float();
      out.append(reinterpret_cast<const char*>(&x), sizeof x);
      break;
    }
    case ValueType::kText: out.append(v.as_text()); break;
    case ValueType::kBytes: out.append(reinterpret_cast<const char*>(v.as_bytes().data()), v.as_bytes().size()); break;
    case ValueType::kUuid: out.append(reinterpret_cast<const char*>(v.as_uuid().bytes().data()), 16); break;
  }
}

uint64_t seeded_hash(const ServiceId& id) {
  static const uint64_t seed = [] {
    uint64_t s = 0;
    randombytes_buf(&s, sizeof s);
    return s;
  }();
  return XXH3_64bits_withSeed(id.bytes().data(), id.bytes().size(), seed);
}

IndexHasher::IndexHasher() { randombytes_buf(&seed_, sizeof seed_); }

uint64_t IndexHasher::type(std::string_view type) const { return XXH3_64bits_withSeed(type.data(), type.size(), seed_); }

uint64_t IndexHasher::field(std::string_view type, std::string_view name, const Value& value,
                            std::string& scratch) const {
  // Type and field names hold no NUL (validated), so NUL separates the parts unambiguously.
  scratch.clear();
  scratch.append(type);
  scratch.push_back('\0');
  scratch.append(name);
  scratch.push_back('\0');
  append_index_key(scratch, value);
  return XXH3_64bits_withSeed(scratch.data(), scratch.size(), seed_);
}

}  // namespace djinn
