// The identity and data model of DESIGN §2: service ids, typed values, entries and the templates
// that match them, service items and service templates (Jini's ServiceItem/ServiceTemplate rules).
// Everything here is plain data; the wire form lives in proto/model.capnp (see model_capnp.h).
#pragma once

#include <array>
#include <compare>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "djinn/core/status.h"

namespace djinn {

// Limits checked by validate(); input from the wire beyond them is rejected, never truncated.
inline constexpr size_t kMaxTypeNameBytes = 256;
inline constexpr size_t kMaxFieldNameBytes = 128;
inline constexpr size_t kMaxFields = 256;
inline constexpr size_t kMaxSupertypes = 64;
inline constexpr size_t kMaxTextBytes = 64 * 1024;
inline constexpr size_t kMaxBytesValue = 1024 * 1024;
inline constexpr size_t kMaxAttributes = 256;
inline constexpr size_t kMaxInterfaceTypes = 64;
inline constexpr size_t kMaxEndpointBytes = 1024;

// A reply that lists what a service holds (a page of leases, entries, items or chunks) stops short
// of this many bytes of them, one at least: half the 16 MiB frame a client reads
// (rpc::Limits::max_frame_bytes), the rest left for the message around them.
inline constexpr size_t kMaxPageReplyBytes = 8u << 20;

// A 128-bit UUID. Random ids are version 4 (RFC 4122); any 128-bit value parses, so ids minted
// elsewhere are kept as they are. The all-zero id is "nil" and names nothing.
class ServiceId {
 public:
  using Bytes = std::array<uint8_t, 16>;

  constexpr ServiceId() = default;
  explicit constexpr ServiceId(const Bytes& bytes) : bytes_(bytes) {}
  // hi holds bytes 0..7 and lo bytes 8..15, both big-endian, so ordering by (hi, lo) is ordering
  // by the canonical text.
  static ServiceId from_halves(uint64_t hi, uint64_t lo);

  // A fresh v4 id from libsodium's randombytes_buf.
  static ServiceId random();
  // Only the canonical 8-4-4-4-12 form, hex digits of either case; nothing else (no braces, no
  // "urn:uuid:", no surrounding space).
  static std::optional<ServiceId> parse(std::string_view text);

  // Lowercase canonical form, e.g. "0f8fad5b-d9cb-469f-a165-70867728950e".
  std::string to_string() const;
  bool is_nil() const;
  const Bytes& bytes() const { return bytes_; }
  uint64_t hi() const;
  uint64_t lo() const;

  friend auto operator<=>(const ServiceId&, const ServiceId&) = default;
  friend bool operator==(const ServiceId&, const ServiceId&) = default;

 private:
  Bytes bytes_{};
};

using AppId = ServiceId;
using NodeId = ServiceId;

// A hash of the id under a seed drawn at random once per process (std::hash<ServiceId>).
uint64_t seeded_hash(const ServiceId& id);

// The order of the kinds is the index of Value's variant; never reorder.
enum class ValueType : uint8_t { kNull, kBool, kInt, kFloat, kText, kBytes, kUuid };
std::string_view value_type_name(ValueType type);

// null | bool | int64 | float64 | text | bytes | uuid.
//
// Equality is exact, by type and value: Value(1) != Value(1.0), Value("1") != Value(1). Floats are
// compared by bit pattern, so a NaN equals a NaN with the same bits (a template can match the NaN
// an entry was written with) and 0.0 != -0.0. This keeps == an equivalence relation, which the
// lookup and space indexes rely on.
class Value {
 public:
  using Bytes = std::vector<uint8_t>;

  Value() = default;           // null
  Value(std::nullptr_t) {}     // NOLINT(implicit)
  Value(bool v) : v_(v) {}     // NOLINT(implicit)
  Value(int64_t v) : v_(v) {}  // NOLINT(implicit)
  // Any other integer except bool is an int64; unsigned 64-bit values would wrap, so they are
  // not accepted implicitly.
  template <std::integral I>
  requires(!std::same_as<I, bool> && !std::same_as<I, int64_t> &&
           (std::is_signed_v<I> || sizeof(I) < sizeof(int64_t))) Value(I v)
      : v_(static_cast<int64_t>(v)) {}               // NOLINT(implicit)
  Value(double v) : v_(v) {}                         // NOLINT(implicit)
  Value(std::string v) : v_(std::move(v)) {}         // NOLINT(implicit)
  Value(std::string_view v) : v_(std::string(v)) {}  // NOLINT(implicit)
  Value(const char* v) : v_(std::string(v)) {}       // NOLINT(implicit)
  Value(Bytes v) : v_(std::move(v)) {}               // NOLINT(implicit)
  Value(ServiceId v) : v_(v) {}                      // NOLINT(implicit)

  ValueType type() const { return static_cast<ValueType>(v_.index()); }
  bool is_null() const { return type() == ValueType::kNull; }

  // Each accessor requires the matching type() (std::bad_variant_access otherwise: a bug).
  bool as_bool() const { return std::get<bool>(v_); }
  int64_t as_int() const { return std::get<int64_t>(v_); }
  double as_float() const { return std::get<double>(v_); }
  const std::string& as_text() const { return std::get<std::string>(v_); }
  const Bytes& as_bytes() const { return std::get<Bytes>(v_); }
  const ServiceId& as_uuid() const { return std::get<ServiceId>(v_); }

  // For display and messages: null, true, 42, 1.0, "text" (quoted, escaped), 0x0a0b (bytes,
  // cut after 32), the canonical uuid. Floats always show a '.', an exponent, nan or inf, so an
  // int and a float never print alike.
  std::string to_string() const;

  friend bool operator==(const Value& a, const Value& b);

 private:
  std::variant<std::monostate, bool, int64_t, double, std::string, Bytes, ServiceId> v_;
};

// Named fields, kept sorted by name with unique names by the map itself.
using Fields = std::map<std::string, Value, std::less<>>;

// A typed record: a service attribute or a space entry.
struct Entry {
  std::string type;                     // dotted identifier, e.g. djinn.attr.Location
  std::vector<std::string> supertypes;  // every type this one is a kind of (not itself)
  Fields fields;

  // True when `t` is this entry's type or one of its supertypes.
  bool is_a(std::string_view t) const;
  // The field's value, or nullptr when the entry has no field of that name.
  const Value* field(std::string_view name) const;

  friend bool operator==(const Entry&, const Entry&) = default;
};

// A pattern over entries. An empty type matches any entry; a field absent or null is a wildcard.
struct Template {
  std::string type;
  Fields fields;

  friend bool operator==(const Template&, const Template&) = default;
};

// The template's type is the entry's type or one of its supertypes (or empty), and every non-null
// template field exists in the entry with an equal Value.
bool matches(const Template& tmpl, const Entry& entry);

// Appends `value` as index key bytes: its type, then its content, so equal keys mean equal values.
void append_index_key(std::string& out, const Value& value);

// The index keys of lookup and the space: 64-bit seeded XXH3 hashes of a type name, or of (type,
// field name, value), so a key costs no allocation and stays eight bytes however large the value
// (an item's 64 KiB text filed under each of its attribute's supertypes would otherwise be kept
// that many times). A collision only adds a candidate that matches() then rejects: callers check
// every candidate of a field key. The seed is drawn for each hasher, so colliding values cannot be
// chosen.
class IndexHasher {
 public:
  IndexHasher();
  uint64_t type(std::string_view type) const;
  // `scratch` is reused between calls, to save an allocation per key.
  uint64_t field(std::string_view type, std::string_view name, const Value& value, std::string& scratch) const;

 private:
  uint64_t seed_ = 0;
};

// Where a service is reached, as ZeroMQ endpoints ("tcp://10.0.0.2:7001"); empty = none.
struct Endpoints {
  std::string rpc;
  std::string events;

  friend bool operator==(const Endpoints&, const Endpoints&) = default;
};

// The lease under which a registration lives, as granted by the lookup service.
struct LeaseInfo {
  uint64_t id = 0;            // landlord-assigned; 0 = none granted yet
  int64_t expiration_ms = 0;  // unix time in milliseconds; 0 when no lease was granted

  friend bool operator==(const LeaseInfo&, const LeaseInfo&) = default;
};

struct ServiceItem {
  ServiceId service_id;
  std::vector<std::string> interface_types;  // every interface it implements, supertypes included
  std::vector<Entry> attributes;
  Endpoints endpoints;
  std::string public_key;  // CURVE public key, Z85 (40 chars), or empty when CURVE is off
  LeaseInfo lease;

  friend bool operator==(const ServiceItem&, const ServiceItem&) = default;
};

struct ServiceTemplate {
  std::optional<ServiceId> service_id;       // absent = any service
  std::vector<std::string> interface_types;  // all must be implemented by the item
  std::vector<Template> attributes;  // each must match at least one of the item's attributes

  friend bool operator==(const ServiceTemplate&, const ServiceTemplate&) = default;
};

// Jini's ServiceTemplate rules: the ids are equal when the template gives one, the item
// implements every interface type of the template, and each attribute template matches at least
// one attribute entry of the item (one entry may satisfy several templates).
bool matches(const ServiceTemplate& tmpl, const ServiceItem& item);

// True for [A-Za-z_][A-Za-z0-9_]* segments joined by single dots, at most kMaxTypeNameBytes.
bool is_type_name(std::string_view name);
// True for a single [A-Za-z_][A-Za-z0-9_]* segment, at most kMaxFieldNameBytes.
bool is_field_name(std::string_view name);

// Checks names, limits and well-formedness (type names, field names, text is UTF-8, sizes, no
// duplicate supertypes or interface types, non-nil ids). The message names the offending part and
// what was expected.
Status validate(const Value& value);
Status validate(const Entry& entry);
Status validate(const Template& tmpl);
Status validate(const ServiceItem& item);
Status validate(const ServiceTemplate& tmpl);

}  // namespace djinn

template <>
struct std::hash<djinn::ServiceId> {
  // Keyed by a seed drawn once per process: ServiceIDs come from clients, and any fixed mix of the
  // two halves lets one choose ids that all collide (a hash table of them turns quadratic).
  size_t operator()(const djinn::ServiceId& id) const noexcept { return static_cast<size_t>(djinn::seeded_hash(id)); }
};
