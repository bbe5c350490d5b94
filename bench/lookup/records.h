// The records every side of bench-lookup stores, and the queries every side answers: service
// items of about 335 bytes as JSON (a ServiceID, two interface types, a djinn.attr.Name and a
// djinn.attr.Location entry, two endpoints), numbered, so that every side holds the same items and
// an event or an answer can be traced back to the registration that made it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "djinn/core/model.h"

namespace djinn::lookup_bench {

// Every item implements kServiceType and one of kKinds kind types: item k is of kind k % kKinds,
// so with 100,000 items a lookup by kind has 1,000 matches to choose its answer from.
inline constexpr int kKinds = 100;
inline constexpr const char* kServiceType = "djinn.bench.Service";
inline constexpr const char* kNameType = "djinn.attr.Name";
inline constexpr const char* kLocationType = "djinn.attr.Location";
// Item k is in building "B<k % kBuildings>", on floor (k / kBuildings) % kFloors.
inline constexpr uint64_t kBuildings = 10;
inline constexpr uint64_t kFloors = 20;

// "djinn.bench.Kind42".
std::string kind_type(int kind);
int kind_of(uint64_t k);
// "svc-0000042": the name of item k, unique, so a lookup by name has exactly one match.
std::string name_of(uint64_t k);

// A version-4-shaped ServiceID whose last 48 bits are k, so that any side can tell from an id (or
// its text) which item it is.
ServiceId service_id_of(uint64_t k);
std::optional<uint64_t> item_number(const ServiceId& id);
std::optional<uint64_t> item_number(std::string_view id_text);

// Item k. The lease is left empty: the registrar fills it in.
ServiceItem bench_item(uint64_t k);
// The item as the key-value peers store it: compact JSON, field names as in proto/model.capnp.
std::string item_json(const ServiceItem& item);

// The queries of the lookup figures, as templates (for the djinn side) and as what their answer
// must contain (for every side's check of the answer).
ServiceTemplate type_template(int kind);
ServiceTemplate name_template(uint64_t k);
// The text an answer's JSON holds when it answers type_template(kind) or name_template(k).
std::string type_answer_mark(int kind);
std::string name_answer_mark(uint64_t k);

// Where a key-value store (etcd keys, ZooKeeper znodes) keeps an item and its index entries, laid
// out as users of those stores do for lookups by type and by attribute value:
//   /svc/<sid>                                 the item (item_json)
//   /type/<interface>/<sid>                    one per interface type, empty
//   /attr/<EntryType>/<field>=<value>/<sid>    one per field of each attribute entry, empty
// A lookup lists the entries under a prefix (type_prefix, attribute_prefix) and reads /svc/<sid>
// of the first. Values are written as text (strings as they are, integers in decimal); the bench's
// values hold no '/'.
struct ItemPaths {
  std::string item;
  std::vector<std::string> index;
};
ItemPaths item_paths(const ServiceItem& item);
std::string item_path(const ServiceId& id);
// "/type/<interface>/" and "/attr/<type>/<field>=<value>/", each ending in '/'.
std::string type_prefix(std::string_view interface);
std::string attribute_prefix(std::string_view type, std::string_view field, const Value& value);
// The node above a path: "/type/x" for "/type/x/<sid>".
std::string parent_path(std::string_view path);

}  // namespace djinn::lookup_bench
