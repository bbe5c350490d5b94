// The numbered items of bench-lookup and their layout in the key-value peers.
#include "records.h"

#include <charconv>
#include <cstdio>

namespace djinn::lookup_bench {

namespace {

// splitmix64: spreads item numbers over the id's random-looking bits.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

constexpr uint64_t kNumberBits = 48;
constexpr uint64_t kNumberMask = (uint64_t{1} << kNumberBits) - 1;

void append_json_string(std::string& out, std::string_view s) {
  // The bench's strings are plain ASCII identifiers, names and endpoints: nothing to escape but
  // quotes and backslashes, kept for safety.
  out += '"';
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  out += '"';
}

std::string value_text(const Value& v) {
  switch (v.type()) {
    case ValueType::kText: return v.as_text();
    case ValueType::kInt: return std::to_string(v.as_int());
    default: return v.to_string();
  }
}

void append_json_value(std::string& out, const Value& v) {
  switch (v.type()) {
    case ValueType::kText: append_json_string(out, v.as_text()); break;
    case ValueType::kInt: out += std::to_string(v.as_int()); break;
    case ValueType::kBool: out += v.as_bool() ? "true" : "false"; break;
    case ValueType::kNull: out += "null"; break;
    default: append_json_string(out, v.to_string()); break;
  }
}

}  // namespace

std::string kind_type(int kind) { return "djinn.bench.Kind" + std::to_string(kind); }
int kind_of(uint64_t k) { return static_cast<int>(k % kKinds); }

std::string name_of(uint64_t k) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "svc-%07llu", static_cast<unsigned long long>(k));
  return buf;
}

ServiceId service_id_of(uint64_t k) {
  uint64_t h = mix(k);
  // Version 4 in the high nibble of byte 6; variant 10 in the top bits of byte 8.
  uint64_t hi = (h & ~uint64_t{0xF000}) | 0x4000;
  uint64_t lo = (uint64_t{0x8} << 60) | ((mix(h) & 0x0FFF) << kNumberBits) | (k & kNumberMask);
  return ServiceId::from_halves(hi, lo);
}

std::optional<uint64_t> item_number(const ServiceId& id) { return id.lo() & kNumberMask; }

std::optional<uint64_t> item_number(std::string_view id_text) {
  // The last 12 hex digits of the canonical text are the low 48 bits.
  if (id_text.size() != 36) return std::nullopt;
  uint64_t k = 0;
  auto [end, ec] = std::from_chars(id_text.data() + 24, id_text.data() + 36, k, 16);
  if (ec != std::errc() || end != id_text.data() + 36) return std::nullopt;
  return k;
}

ServiceItem bench_item(uint64_t k) {
  ServiceItem item;
  item.service_id = service_id_of(k);
  item.interface_types = {kServiceType, kind_type(kind_of(k))};
  item.attributes.push_back(Entry{kNameType, {}, Fields{{"name", Value(name_of(k))}}});
  item.attributes.push_back(
      Entry{kLocationType, {},
            Fields{{"building", Value("B" + std::to_string(k % kBuildings))},
                   {"floor", Value(static_cast<int64_t>((k / kBuildings) % kFloors))}}});
  // Endpoints like those of a service on a LAN host; port numbers vary with k.
  uint64_t port = 20000 + (k % 20000) * 2;
  std::string host = "tcp://10.20." + std::to_string((k / 250) % 250) + "." + std::to_string(k % 250 + 1) + ":";
  item.endpoints.rpc = host + std::to_string(port);
  item.endpoints.events = host + std::to_string(port + 1);
  return item;
}

std::string item_json(const ServiceItem& item) {
  std::string out;
  out.reserve(320);
  out += "{\"serviceId\":";
  append_json_string(out, item.service_id.to_string());
  out += ",\"interfaceTypes\":[";
  for (size_t i = 0; i < item.interface_types.size(); ++i) {
    if (i) out += ',';
    append_json_string(out, item.interface_types[i]);
  }
  out += "],\"attributes\":[";
  for (size_t i = 0; i < item.attributes.size(); ++i) {
    const Entry& e = item.attributes[i];
    if (i) out += ',';
    out += "{\"type\":";
    append_json_string(out, e.type);
    out += ",\"fields\":{";
    bool first = true;
    for (const auto& [name, value] : e.fields) {
      if (!first) out += ',';
      first = false;
      append_json_string(out, name);
      out += ':';
      append_json_value(out, value);
    }
    out += "}}";
  }
  out += "],\"endpoints\":{\"rpc\":";
  append_json_string(out, item.endpoints.rpc);
  out += ",\"events\":";
  append_json_string(out, item.endpoints.events);
  out += "}}";
  return out;
}

ServiceTemplate type_template(int kind) {
  ServiceTemplate t;
  t.interface_types = {kind_type(kind)};
  return t;
}

ServiceTemplate name_template(uint64_t k) {
  ServiceTemplate t;
  t.attributes.push_back(Template{kNameType, Fields{{"name", Value(name_of(k))}}});
  return t;
}

std::string type_answer_mark(int kind) { return "\"" + kind_type(kind) + "\""; }
std::string name_answer_mark(uint64_t k) { return "\"" + name_of(k) + "\""; }

std::string item_path(const ServiceId& id) { return "/svc/" + id.to_string(); }

std::string type_prefix(std::string_view interface) { return "/type/" + std::string(interface) + "/"; }

std::string attribute_prefix(std::string_view type, std::string_view field, const Value& value) {
  return "/attr/" + std::string(type) + "/" + std::string(field) + "=" + value_text(value) + "/";
}

std::string parent_path(std::string_view path) { return std::string(path.substr(0, path.rfind('/'))); }

ItemPaths item_paths(const ServiceItem& item) {
  ItemPaths paths;
  std::string sid = item.service_id.to_string();
  paths.item = "/svc/" + sid;
  for (const std::string& t : item.interface_types) paths.index.push_back(type_prefix(t) + sid);
  for (const Entry& e : item.attributes) {
    for (const auto& [field, value] : e.fields) paths.index.push_back(attribute_prefix(e.type, field, value) + sid);
  }
  return paths;
}

}  // namespace djinn::lookup_bench
