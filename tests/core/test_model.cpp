// Tests of the data model (DESIGN §2): ids, values, template matching (tables and a property test
// against a reference model), validation messages, the Cap'n Proto round trip, and decoding of
// hostile bytes.
#include <capnp/any.h>
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <doctest/doctest.h>
#include <kj/exception.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <unordered_set>
#include <vector>

#include "djinn/core/digest.h"
#include "djinn/core/model.h"
#include "djinn/core/model_capnp.h"
#include "djinn/proto/fuzz.capnp.h"
#include "support/test_support.h"

using djinn::Entry;
using djinn::Fields;
using djinn::ServiceId;
using djinn::ServiceItem;
using djinn::ServiceTemplate;
using djinn::Template;
using djinn::Value;
using djinn::ValueType;

namespace {

const ServiceId kIdA = *ServiceId::parse("0f8fad5b-d9cb-469f-a165-70867728950e");
const ServiceId kIdB = *ServiceId::parse("7c9e6679-7425-40de-944b-e07fc1f90ae7");

// The limits the decoders of the tests (and of any server) use.
capnp::ReaderOptions limited_options() {
  capnp::ReaderOptions opts;
  opts.traversalLimitInWords = 1 << 20;
  opts.nestingLimit = 32;
  return opts;
}

template <class Root, class T>
std::vector<uint8_t> encode(const T& value) {
  capnp::MallocMessageBuilder message;
  djinn::to_capnp(value, message.initRoot<Root>());
  auto words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  return std::vector<uint8_t>(bytes.begin(), bytes.end());
}

// Holds the words and the reader a root points into.
struct Decoder {
  kj::Array<capnp::word> words;
  std::unique_ptr<capnp::FlatArrayMessageReader> reader;

  // False when the framing itself is rejected (the reader constructor or getRoot threw).
  template <class Root>
  bool open(const std::vector<uint8_t>& bytes, typename Root::Reader& root) {
    words = kj::heapArray<capnp::word>((bytes.size() + 7) / 8);
    std::memset(words.begin(), 0, words.size() * sizeof(capnp::word));
    if (!bytes.empty()) std::memcpy(words.begin(), bytes.data(), bytes.size());
    try {
      reader = std::make_unique<capnp::FlatArrayMessageReader>(words.asPtr(), limited_options());
      root = reader->getRoot<Root>();
      return true;
    } catch (const kj::Exception&) {
      return false;
    }
  }
};

// Decodes bytes and converts; from_capnp runs outside any try so an escaping exception fails the
// test. Returns an error status when the framing is rejected.
template <class Root, class T>
djinn::Result<T> decode(const std::vector<uint8_t>& bytes) {
  Decoder d;
  typename Root::Reader root;
  if (!d.open<Root>(bytes, root)) return djinn::invalid_argument("framing rejected");
  return djinn::from_capnp(root);
}

double nan_with_payload(uint64_t payload) {
  return std::bit_cast<double>(uint64_t{0x7ff8000000000000ULL} | payload);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
TEST_CASE("public_ref: BLAKE2b-64 of the little-endian number, personal djinn.public.ref") {
  // Known answers from another BLAKE2b (Python's hashlib.blake2b(digest_size=8,
  // person=b"djinn.public.ref")), so a client in any language computes the same refs.
  CHECK(djinn::public_ref(1) == 0x538a9a7cf4650d81ULL);
  CHECK(djinn::public_ref(0x0123456789abcdefULL) == 0xc225b7a09a3f1672ULL);
  CHECK(djinn::public_ref_hex(0x0123456789abcdefULL) == "c225b7a09a3f1672");
  CHECK(djinn::public_ref_hex(1).size() == 16);
}

TEST_CASE("ServiceId: random ids are v4, distinct and print canonically") {
  std::unordered_set<ServiceId> seen;
  for (int i = 0; i < 1000; ++i) {
    ServiceId id = ServiceId::random();
    CHECK_FALSE(id.is_nil());
    CHECK((id.bytes()[6] >> 4) == 4);
    CHECK((id.bytes()[8] & 0xc0) == 0x80);
    std::string s = id.to_string();
    REQUIRE(s.size() == 36);
    CHECK(s[14] == '4');
    CHECK(s.find_first_not_of("0123456789abcdef-") == std::string::npos);
    CHECK(ServiceId::parse(s) == id);
    CHECK(seen.insert(id).second);
  }
}

TEST_CASE("ServiceId: hashed under a secret seed, so chosen ids do not collide") {
  // Ids chosen to collide under any fixed mix of the halves (these, under hi * K ^ lo and under
  // hi ^ lo * K) spread like random ones under the seeded hash.
  constexpr uint64_t K = 0x9e3779b97f4a7c15ULL;
  for (int form = 0; form < 2; ++form) {
    std::unordered_set<size_t> hashes;
    for (uint64_t i = 1; i <= 2000; ++i) {
      uint64_t hi = form == 0 ? i : 42 ^ (i * K);
      uint64_t lo = form == 0 ? 42 ^ (i * K) : i;
      hashes.insert(std::hash<ServiceId>{}(ServiceId::from_halves(hi, lo)));
    }
    CHECK(hashes.size() >= 1990);
  }
  ServiceId a = ServiceId::random();
  CHECK(std::hash<ServiceId>{}(a) == std::hash<ServiceId>{}(a));
}

TEST_CASE("ServiceId: parse and print round trips") {
  for (const char* text :
       {"00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "0f8fad5b-d9cb-469f-a165-70867728950e", "01234567-89ab-cdef-0123-456789abcdef"}) {
    auto id = ServiceId::parse(text);
    REQUIRE(id.has_value());
    CHECK(id->to_string() == text);
  }
  // Either case parses; printing is lowercase.
  auto upper = ServiceId::parse("0F8FAD5B-D9CB-469F-A165-70867728950E");
  REQUIRE(upper.has_value());
  CHECK(*upper == kIdA);
  CHECK(upper->to_string() == "0f8fad5b-d9cb-469f-a165-70867728950e");
  CHECK(ServiceId::parse("0f8FAD5b-d9cb-469f-A165-70867728950e") == kIdA);

  CHECK(ServiceId().is_nil());
  CHECK(ServiceId::parse("00000000-0000-0000-0000-000000000000")->is_nil());
  CHECK(kIdA.hi() == 0x0f8fad5bd9cb469fULL);
  CHECK(kIdA.lo() == 0xa16570867728950eULL);
  CHECK(ServiceId::from_halves(kIdA.hi(), kIdA.lo()) == kIdA);
  CHECK(kIdA < kIdB);
  CHECK(kIdA != kIdB);
  CHECK(std::hash<ServiceId>{}(kIdA) ==
        std::hash<ServiceId>{}(*ServiceId::parse(kIdA.to_string())));
}

TEST_CASE("ServiceId: parse rejects everything but the canonical form") {
  for (const char* text : {
           "",
           "0f8fad5b-d9cb-469f-a165-70867728950",     // one digit short
           "0f8fad5b-d9cb-469f-a165-70867728950e0",   // one digit long
           "0f8fad5bd9cb469fa16570867728950e",        // no dashes
           "{0f8fad5b-d9cb-469f-a165-70867728950e}",  // braces
           "urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e",
           " 0f8fad5b-d9cb-469f-a165-70867728950e",
           "0f8fad5b-d9cb-469f-a165-70867728950e ",
           "0f8fad5b-d9cb-469f-a165-70867728950g",  // not hex
           "0f8fad5bd-9cb-469f-a165-70867728950e",  // dash misplaced
           "0f8fad5b-d9cb-469f-a16570-867728950e",
           "0f8fad5b_d9cb_469f_a165_70867728950e",
           "0f8fad5b-d9cb-469f-a165-7086772895-e",  // dash in a hex place
           "-f8fad5b-d9cb-469f-a165-70867728950e",
           "0f8fad5b-d9cb-+69f-a165-70867728950e",
       }) {
    INFO(text);
    CHECK_FALSE(ServiceId::parse(text).has_value());
  }
  CHECK_FALSE(ServiceId::parse(std::string_view("0f8fad5b-d9cb-469f-a165-70867728950\0", 36)));
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("Value: types, accessors and display") {
  CHECK(Value().type() == ValueType::kNull);
  CHECK(Value(nullptr).is_null());
  CHECK(Value(true).type() == ValueType::kBool);
  CHECK(Value(1).type() == ValueType::kInt);
  CHECK(Value(int64_t{-7}).as_int() == -7);
  CHECK(Value(uint32_t{4000000000u}).as_int() == 4000000000);
  CHECK(Value(1.5).type() == ValueType::kFloat);
  CHECK(Value(1.5f).as_float() == 1.5);
  CHECK(Value("x").type() == ValueType::kText);
  CHECK(Value(std::string_view("x")).as_text() == "x");
  CHECK(Value(Value::Bytes{1, 2}).type() == ValueType::kBytes);
  CHECK(Value(kIdA).as_uuid() == kIdA);
  CHECK(djinn::value_type_name(ValueType::kUuid) == "uuid");

  CHECK(Value().to_string() == "null");
  CHECK(Value(false).to_string() == "false");
  CHECK(Value(42).to_string() == "42");
  CHECK(Value(1.0).to_string() == "1.0");
  CHECK(Value(0.25).to_string() == "0.25");
  CHECK(Value(1e300).to_string() == "1e+300");
  CHECK(Value(std::numeric_limits<double>::infinity()).to_string() == "inf");
  CHECK(Value(std::nan("")).to_string() == "nan");
  CHECK(Value("a\"b\n").to_string() == "\"a\\\"b\\n\"");
  CHECK(Value(Value::Bytes{0x0a, 0xff}).to_string() == "0x0aff");
  CHECK(Value(Value::Bytes(40, 0)).to_string() == "0x" + std::string(64, '0') + "...(40 bytes)");
  CHECK(Value(kIdA).to_string() == kIdA.to_string());
}

TEST_CASE("Value: equality is exact by type and value") {
  struct Case {
    Value a, b;
    bool equal;
  };
  const double nan1 = nan_with_payload(1);
  const Case cases[] = {
      {Value(), Value(), true},
      {Value(), Value(false), false},
      {Value(), Value(0), false},
      {Value(true), Value(true), true},
      {Value(true), Value(1), false},
      {Value(1), Value(1), true},
      {Value(1), Value(2), false},
      {Value(1), Value(1.0), false},  // int vs float
      {Value(0), Value(0.0), false},
      {Value(1.0), Value(1.0), true},
      {Value(0.0), Value(-0.0), false},  // bit patterns differ
      {Value(nan1), Value(nan1), true},  // same NaN equals itself
      {Value(nan1), Value(nan_with_payload(2)), false},
      {Value("1"), Value(1), false},
      {Value("a"), Value("a"), true},
      {Value("a"), Value("A"), false},
      {Value(""), Value(), false},
      {Value("ab"), Value(Value::Bytes{'a', 'b'}), false},  // text vs bytes
      {Value(Value::Bytes{1}), Value(Value::Bytes{1}), true},
      {Value(Value::Bytes{}), Value(Value::Bytes{0}), false},
      {Value(kIdA), Value(kIdA), true},
      {Value(kIdA), Value(kIdB), false},
      {Value(kIdA), Value(kIdA.to_string()), false},  // uuid vs its text
      {Value(ServiceId()), Value(), false},
  };
  for (const auto& c : cases) {
    INFO(c.a.to_string(), " vs ", c.b.to_string());
    CHECK((c.a == c.b) == c.equal);
    CHECK((c.b == c.a) == c.equal);
  }
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("Template matching: table") {
  const Entry loc{"djinn.attr.Location",
                  {"djinn.attr.Base", "djinn.Entry"},
                  {{"building", "B1"}, {"floor", 3}, {"room", "101"}}};
  const Entry all_types{"x.AllTypes",
                        {},
                        {{"n", Value()},
                         {"b", true},
                         {"i", 7},
                         {"f", 2.5},
                         {"t", "text"},
                         {"y", Value::Bytes{1, 2, 3}},
                         {"u", kIdA},
                         {"nan", nan_with_payload(3)}}};
  struct Case {
    const char* name;
    Template tmpl;
    const Entry* entry;
    bool expected;
  };
  const Case cases[] = {
      // types and supertypes
      {"empty template matches anything", {}, &loc, true},
      {"own type", {"djinn.attr.Location", {}}, &loc, true},
      {"supertype", {"djinn.attr.Base", {}}, &loc, true},
      {"second supertype", {"djinn.Entry", {}}, &loc, true},
      {"unrelated type", {"djinn.attr.Name", {}}, &loc, false},
      {"prefix of a type is not a supertype", {"djinn.attr", {}}, &loc, false},
      {"type names are case sensitive", {"djinn.attr.location", {}}, &loc, false},
      {"empty type with fields matches any type", {"", {{"floor", 3}}}, &loc, true},
      // fields
      {"one equal field", {"djinn.attr.Location", {{"room", "101"}}}, &loc, true},
      {"all fields equal",
       {"djinn.attr.Location", {{"building", "B1"}, {"floor", 3}, {"room", "101"}}},
       &loc,
       true},
      {"one field differs",
       {"djinn.attr.Location", {{"building", "B1"}, {"room", "102"}}},
       &loc,
       false},
      {"field missing from entry", {"djinn.attr.Location", {{"wing", "E"}}}, &loc, false},
      {"null field is a wildcard", {"djinn.attr.Location", {{"room", Value()}}}, &loc, true},
      {"null wildcard for a field the entry lacks",
       {"djinn.attr.Location", {{"wing", Value()}}},
       &loc,
       true},
      {"null wildcard beside a real constraint",
       {"djinn.attr.Base", {{"wing", Value()}, {"floor", 3}}},
       &loc,
       true},
      {"int vs float never equal", {"djinn.attr.Location", {{"floor", 3.0}}}, &loc, false},
      {"int vs text never equal", {"djinn.attr.Location", {{"room", 101}}}, &loc, false},
      {"right fields, wrong type", {"djinn.attr.Name", {{"room", "101"}}}, &loc, false},
      // every value type
      {"bool", {"x.AllTypes", {{"b", true}}}, &all_types, true},
      {"bool differs", {"x.AllTypes", {{"b", false}}}, &all_types, false},
      {"int", {"x.AllTypes", {{"i", 7}}}, &all_types, true},
      {"int differs", {"x.AllTypes", {{"i", 8}}}, &all_types, false},
      {"int vs equal float", {"x.AllTypes", {{"i", 7.0}}}, &all_types, false},
      {"float", {"x.AllTypes", {{"f", 2.5}}}, &all_types, true},
      {"float differs", {"x.AllTypes", {{"f", 2.4}}}, &all_types, false},
      {"float vs int", {"x.AllTypes", {{"f", 2}}}, &all_types, false},
      {"same NaN", {"x.AllTypes", {{"nan", nan_with_payload(3)}}}, &all_types, true},
      {"other NaN", {"x.AllTypes", {{"nan", nan_with_payload(4)}}}, &all_types, false},
      {"text", {"x.AllTypes", {{"t", "text"}}}, &all_types, true},
      {"text differs", {"x.AllTypes", {{"t", "Text"}}}, &all_types, false},
      {"text vs bytes",
       {"x.AllTypes", {{"t", Value::Bytes{'t', 'e', 'x', 't'}}}},
       &all_types,
       false},
      {"bytes", {"x.AllTypes", {{"y", Value::Bytes{1, 2, 3}}}}, &all_types, true},
      {"bytes differ", {"x.AllTypes", {{"y", Value::Bytes{1, 2}}}}, &all_types, false},
      {"uuid", {"x.AllTypes", {{"u", kIdA}}}, &all_types, true},
      {"uuid differs", {"x.AllTypes", {{"u", kIdB}}}, &all_types, false},
      {"uuid vs its text", {"x.AllTypes", {{"u", kIdA.to_string()}}}, &all_types, false},
      {"null template field vs null entry field",
       {"x.AllTypes", {{"n", Value()}}},
       &all_types,
       true},
      {"non-null template field vs null entry field",
       {"x.AllTypes", {{"n", 0}}},
       &all_types,
       false},
      {"all types at once",
       {"x.AllTypes",
        {{"b", true},
         {"i", 7},
         {"f", 2.5},
         {"t", "text"},
         {"y", Value::Bytes{1, 2, 3}},
         {"u", kIdA}}},
       &all_types,
       true},
  };
  for (const auto& c : cases) {
    INFO(c.name);
    CHECK(djinn::matches(c.tmpl, *c.entry) == c.expected);
    capnp::MallocMessageBuilder encoded;  // the same rules on the entry as encoded
    djinn::to_capnp(*c.entry, encoded.initRoot<djinn::proto::Entry>());
    CHECK(djinn::matches(c.tmpl, encoded.getRoot<djinn::proto::Entry>().asReader()) == c.expected);
  }
  CHECK(loc.is_a("djinn.attr.Location"));
  CHECK(loc.is_a("djinn.Entry"));
  CHECK_FALSE(loc.is_a("djinn"));
  REQUIRE(loc.field("floor") != nullptr);
  CHECK(*loc.field("floor") == Value(3));
  CHECK(loc.field("wing") == nullptr);
}

TEST_CASE("ServiceTemplate matching: table") {
  ServiceItem printer;
  printer.service_id = kIdA;
  printer.interface_types = {"djinn.svc.Printer", "djinn.svc.Device"};
  printer.attributes = {
      Entry{"djinn.attr.Location", {"djinn.attr.Base"}, {{"floor", 3}, {"room", "101"}}},
      Entry{"djinn.attr.Name", {"djinn.attr.Base"}, {{"name", "lobby printer"}}},
  };
  ServiceItem bare;
  bare.service_id = kIdB;

  struct Case {
    const char* name;
    ServiceTemplate tmpl;
    const ServiceItem* item;
    bool expected;
  };
  const Template loc3{"djinn.attr.Location", {{"floor", 3}}};
  const Template loc4{"djinn.attr.Location", {{"floor", 4}}};
  const Template named{"djinn.attr.Name", {{"name", "lobby printer"}}};
  const Template any_base{"djinn.attr.Base", {}};
  const Case cases[] = {
      {"empty template matches any item", {}, &printer, true},
      {"empty template matches a bare item", {}, &bare, true},
      {"service id equal", {kIdA, {}, {}}, &printer, true},
      {"service id differs", {kIdB, {}, {}}, &printer, false},
      {"one interface", {std::nullopt, {"djinn.svc.Printer"}, {}}, &printer, true},
      {"all interfaces",
       {std::nullopt, {"djinn.svc.Device", "djinn.svc.Printer"}, {}},
       &printer,
       true},
      {"one interface missing",
       {std::nullopt, {"djinn.svc.Printer", "djinn.svc.Scanner"}, {}},
       &printer,
       false},
      {"interface on a bare item", {std::nullopt, {"djinn.svc.Printer"}, {}}, &bare, false},
      {"one attribute template", {std::nullopt, {}, {loc3}}, &printer, true},
      {"attribute template matches none", {std::nullopt, {}, {loc4}}, &printer, false},
      {"each attribute template matches a different attribute",
       {std::nullopt, {}, {loc3, named}},
       &printer,
       true},
      {"one of two attribute templates fails", {std::nullopt, {}, {loc3, loc4}}, &printer, false},
      {"two templates may match the same attribute",
       {std::nullopt, {}, {loc3, any_base}},
       &printer,
       true},
      {"attribute template vs item without attributes",
       {std::nullopt, {}, {any_base}},
       &bare,
       false},
      {"supertype attribute template", {std::nullopt, {}, {any_base}}, &printer, true},
      {"everything at once", {kIdA, {"djinn.svc.Printer"}, {loc3, named}}, &printer, true},
      {"everything but the id", {kIdB, {"djinn.svc.Printer"}, {loc3, named}}, &printer, false},
  };
  for (const auto& c : cases) {
    INFO(c.name);
    CHECK(djinn::matches(c.tmpl, *c.item) == c.expected);
  }
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("Validation: accepted inputs") {
  CHECK(djinn::validate(Entry{"a", {}, {}}).ok());
  CHECK(djinn::validate(Entry{"djinn.attr.Location",
                              {"djinn.Entry"},
                              {{"_x1", "h\xc3\xa9llo \xe2\x82\xac \xf0\x9d\x84\x9e"}}})
            .ok());
  CHECK(djinn::validate(Entry{std::string(256, 'a'), {}, {{std::string(128, 'f'), Value()}}}).ok());
  CHECK(djinn::validate(Entry{"t", {}, {{"big", std::string(djinn::kMaxTextBytes, 'x')}}}).ok());
  CHECK(djinn::validate(Entry{"t", {}, {{"big", Value::Bytes(djinn::kMaxBytesValue, 0)}}}).ok());
  CHECK(djinn::validate(Template{}).ok());
  CHECK(djinn::validate(Template{"", {{"x", Value()}}}).ok());
  CHECK(djinn::validate(Value(std::nan(""))).ok());
  ServiceItem item;
  item.service_id = kIdA;
  item.interface_types = {"djinn.svc.Printer"};
  item.endpoints = {"tcp://10.0.0.2:7001", "ipc:///run/djinn/p.events"};
  item.public_key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
  item.lease = {17, 1700000000000};
  CHECK(djinn::validate(item).ok());
  CHECK(djinn::validate(ServiceTemplate{}).ok());
  CHECK(djinn::is_type_name("a.b_c.D9"));
  CHECK_FALSE(djinn::is_type_name("a..b"));
  CHECK(djinn::is_field_name("room_number"));
  CHECK_FALSE(djinn::is_field_name("a.b"));
}

TEST_CASE("Validation: failures name what was wrong and what was expected") {
  auto item_with = [](auto change) {
    ServiceItem item;
    item.service_id = kIdA;
    change(item);
    return djinn::validate(item);
  };
  auto stmpl_with = [](auto change) {
    ServiceTemplate t;
    change(t);
    return djinn::validate(t);
  };
  std::vector<std::string> many_types;
  for (int i = 0; i < 65; ++i) many_types.push_back("t" + std::to_string(i));
  Fields many_fields;
  for (int i = 0; i < 257; ++i) many_fields.emplace("f" + std::to_string(i), i);

  struct Case {
    const char* name;
    djinn::Status status;
    std::string expected;  // the whole message, or a part of it
  };
  const Case cases[] = {
      {"dotted type", djinn::validate(Entry{"a..b", {}, {}}),
       "entry type 'a..b': must be a dotted identifier like djinn.attr.Location"},
      {"empty type", djinn::validate(Entry{"", {}, {}}),
       "entry type '': must be a dotted identifier like djinn.attr.Location"},
      {"leading digit", djinn::validate(Entry{"1a", {}, {}}),
       "entry type '1a': must be a dotted identifier"},
      {"trailing dot", djinn::validate(Entry{"a.", {}, {}}),
       "entry type 'a.': must be a dotted identifier"},
      {"leading dot", djinn::validate(Entry{".a", {}, {}}),
       "entry type '.a': must be a dotted identifier"},
      {"dash", djinn::validate(Entry{"a-b", {}, {}}),
       "entry type 'a-b': must be a dotted identifier"},
      {"control byte shown escaped", djinn::validate(Entry{"a\nb", {}, {}}),
       "entry type 'a\\x0ab'"},
      {"long type", djinn::validate(Entry{std::string(257, 'a'), {}, {}}),
       "entry type of 257 bytes: must be at most 256 bytes"},
      {"bad supertype", djinn::validate(Entry{"a.B", {"c..d"}, {}}),
       "entry 'a.B' supertype 'c..d': must be a dotted identifier like djinn.attr.Location"},
      {"duplicate supertype", djinn::validate(Entry{"a.B", {"a.C", "a.C"}, {}}),
       "entry 'a.B' supertype 'a.C': listed twice, each type must appear once"},
      {"self as supertype", djinn::validate(Entry{"a.B", {"a.B"}, {}}),
       "entry 'a.B': lists itself as a supertype"},
      {"too many supertypes", djinn::validate(Entry{"a.B", many_types, {}}),
       "entry 'a.B' supertype: 65 types, must be at most 64"},
      {"field name", djinn::validate(Entry{"a.B", {}, {{"9x", 1}}}),
       "entry 'a.B' field '9x': must be an identifier like room_number"},
      {"empty field name", djinn::validate(Entry{"a.B", {}, {{"", 1}}}),
       "entry 'a.B' field '': must be an identifier like room_number"},
      {"dotted field name", djinn::validate(Entry{"a.B", {}, {{"a.b", 1}}}),
       "field 'a.b': must be an identifier"},
      {"long field name", djinn::validate(Entry{"a.B", {}, {{std::string(129, 'f'), 1}}}),
       "entry 'a.B' field name of 129 bytes: must be at most 128 bytes"},
      {"too many fields", djinn::validate(Entry{"a.B", {}, many_fields}),
       "entry 'a.B': 257 fields, must be at most 256"},
      {"long text",
       djinn::validate(Entry{"a.B", {}, {{"t", std::string(djinn::kMaxTextBytes + 1, 'x')}}}),
       "entry 'a.B' field 't': text of 65537 bytes, must be at most 65536 bytes"},
      {"invalid UTF-8", djinn::validate(Entry{"a.B", {}, {{"t", "\xff"}}}),
       "entry 'a.B' field 't': text is not valid UTF-8"},
      {"overlong UTF-8", djinn::validate(Entry{"a.B", {}, {{"t", "\xc0\xaf"}}}), "not valid UTF-8"},
      {"surrogate in UTF-8", djinn::validate(Entry{"a.B", {}, {{"t", "\xed\xa0\x80"}}}),
       "not valid UTF-8"},
      {"truncated UTF-8", djinn::validate(Entry{"a.B", {}, {{"t", "\xe2\x82"}}}),
       "not valid UTF-8"},
      {"big bytes",
       djinn::validate(Entry{"a.B", {}, {{"y", Value::Bytes(djinn::kMaxBytesValue + 1, 0)}}}),
       "entry 'a.B' field 'y': bytes of 1048577 bytes, must be at most 1048576 bytes"},
      {"bad value alone", djinn::validate(Value("\xff")), "value: text is not valid UTF-8"},
      {"template type", djinn::validate(Template{"a..b", {}}),
       "template type 'a..b': must be a dotted identifier like djinn.attr.Location"},
      {"template field", djinn::validate(Template{"", {{"x y", Value()}}}),
       "template (any type) field 'x y': must be an identifier like room_number"},
      {"nil service id", item_with([](ServiceItem& i) { i.service_id = ServiceId(); }),
       "service item: service id is nil"},
      {"bad interface type", item_with([](ServiceItem& i) { i.interface_types = {"Printer!"}; }),
       "service item interface type 'Printer!': must be a dotted identifier"},
      {"duplicate interface type", item_with([](ServiceItem& i) {
         i.interface_types = {"p.P", "p.P"};
       }),
       "service item interface type 'p.P': listed twice"},
      {"too many interface types",
       item_with([&](ServiceItem& i) { i.interface_types = many_types; }),
       "service item interface type: 65 types, must be at most 64"},
      {"too many attributes", item_with([](ServiceItem& i) {
         i.attributes.assign(257, Entry{"a.B", {}, {}});
       }),
       "service item: 257 attributes, must be at most 256"},
      {"bad attribute", item_with([](ServiceItem& i) {
         i.attributes = {Entry{"a.B", {}, {}}, Entry{"a..B", {}, {}}};
       }),
       "service item attribute 1: entry type 'a..B': must be a dotted identifier"},
      {"bad endpoint", item_with([](ServiceItem& i) { i.endpoints.rpc = "localhost:7001"; }),
       "service item rpc endpoint 'localhost:7001': must be a ZeroMQ endpoint like "
       "tcp://10.0.0.2:7001"},
      {"empty endpoint address", item_with([](ServiceItem& i) { i.endpoints.events = "tcp://"; }),
       "service item events endpoint 'tcp://': must be a ZeroMQ endpoint"},
      {"long endpoint",
       item_with([](ServiceItem& i) { i.endpoints.rpc = "tcp://" + std::string(1100, 'h'); }),
       "service item rpc endpoint of 1106 bytes: must be at most 1024 bytes"},
      {"public key", item_with([](ServiceItem& i) { i.public_key = "abc"; }),
       "service item public key 'abc': must be a CURVE public key in Z85 (40 characters), or "
       "empty"},
      {"negative lease expiration", item_with([](ServiceItem& i) { i.lease.expiration_ms = -5; }),
       "service item lease expiration -5 ms: must be unix time in ms (>= 0)"},
      {"nil id in template", stmpl_with([](ServiceTemplate& t) { t.service_id = ServiceId(); }),
       "service template: service id is nil, which no service has; leave it unset to match any "
       "service"},
      {"template interface type", stmpl_with([](ServiceTemplate& t) { t.interface_types = {""}; }),
       "service template interface type '': must be a dotted identifier"},
      {"template attribute", stmpl_with([](ServiceTemplate& t) {
         t.attributes = {Template{"x.", {}}};
       }),
       "service template attribute 0: template type 'x.': must be a dotted identifier"},
      {"too many template attributes",
       stmpl_with([](ServiceTemplate& t) { t.attributes.assign(257, Template{}); }),
       "service template: 257 attribute templates, must be at most 256"},
  };
  for (const auto& c : cases) {
    INFO(c.name);
    CHECK(c.status.code() == djinn::Code::kInvalidArgument);
    INFO("message: ", c.status.message());
    CHECK(c.status.message().find(c.expected) != std::string::npos);
  }
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("Cap'n Proto: every type round trips") {
  using namespace djinn;
  SUBCASE("ServiceId") {
    for (ServiceId id : {ServiceId(), kIdA, kIdB, ServiceId::random()}) {
      auto r = decode<proto::Uuid, ServiceId>(encode<proto::Uuid>(id));
      REQUIRE(r.ok());
      CHECK(*r == id);
    }
  }
  SUBCASE("Value") {
    const Value values[] = {Value(),
                            Value(true),
                            Value(false),
                            Value(0),
                            Value(std::numeric_limits<int64_t>::min()),
                            Value(-0.0),
                            Value(nan_with_payload(5)),
                            Value(std::numeric_limits<double>::infinity()),
                            Value(""),
                            Value("h\xc3\xa9llo"),
                            Value(std::string("a\0b", 3)),
                            Value(Value::Bytes{}),
                            Value(Value::Bytes{0, 1, 255}),
                            Value(kIdA),
                            Value(ServiceId())};
    for (const auto& v : values) {
      INFO(v.to_string());
      auto r = decode<proto::Value, Value>(encode<proto::Value>(v));
      REQUIRE(r.ok());
      CHECK(*r == v);
      CHECK(r->type() == v.type());
    }
  }
  SUBCASE("Entry and Template") {
    const Entry e{"djinn.attr.Location",
                  {"djinn.attr.Base", "djinn.Entry"},
                  {{"room", "101"},
                   {"floor", 3},
                   {"f", 1.5},
                   {"ok", true},
                   {"id", kIdB},
                   {"raw", Value::Bytes{9}},
                   {"none", Value()}}};
    auto re = decode<proto::Entry, Entry>(encode<proto::Entry>(e));
    REQUIRE(re.ok());
    CHECK(*re == e);
    const Template t{"djinn.attr.Base", {{"room", "101"}, {"wild", Value()}}};
    auto rt = decode<proto::Template, Template>(encode<proto::Template>(t));
    REQUIRE(rt.ok());
    CHECK(*rt == t);
    auto rany = decode<proto::Template, Template>(encode<proto::Template>(Template{}));
    REQUIRE(rany.ok());
    CHECK(*rany == Template{});
  }
  SUBCASE("Endpoints and LeaseInfo") {
    const Endpoints ep{"tcp://10.0.0.2:7001", "tcp://10.0.0.2:7002"};
    auto rep = decode<proto::Endpoints, Endpoints>(encode<proto::Endpoints>(ep));
    REQUIRE(rep.ok());
    CHECK(*rep == ep);
    const LeaseInfo lease{0xfedcba9876543210ULL, 1700000000123};
    auto rl = decode<proto::LeaseInfo, LeaseInfo>(encode<proto::LeaseInfo>(lease));
    REQUIRE(rl.ok());
    CHECK(*rl == lease);
  }
  SUBCASE("ServiceItem and ServiceTemplate") {
    ServiceItem item;
    item.service_id = ServiceId::random();
    item.interface_types = {"djinn.svc.Printer", "djinn.svc.Device"};
    item.attributes = {Entry{"djinn.attr.Name", {}, {{"name", "p"}}},
                       Entry{"djinn.attr.Location", {"djinn.attr.Base"}, {{"floor", 2}}}};
    item.endpoints = {"tcp://127.0.0.1:1", ""};
    item.public_key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
    item.lease = {3, 4};
    auto ri = decode<proto::ServiceItem, ServiceItem>(encode<proto::ServiceItem>(item));
    REQUIRE(ri.ok());
    CHECK(*ri == item);

    ServiceTemplate st{
        item.service_id, {"djinn.svc.Printer"}, {Template{"djinn.attr.Base", {{"floor", 2}}}}};
    auto rs = decode<proto::ServiceTemplate, ServiceTemplate>(encode<proto::ServiceTemplate>(st));
    REQUIRE(rs.ok());
    CHECK(*rs == st);
    CHECK(matches(*rs, *ri));
    // An absent id stays absent: it is not read as the nil id.
    ServiceTemplate any;
    auto ra = decode<proto::ServiceTemplate, ServiceTemplate>(encode<proto::ServiceTemplate>(any));
    REQUIRE(ra.ok());
    CHECK_FALSE(ra->service_id.has_value());
  }
}

TEST_CASE("Cap'n Proto: from_capnp rejects what validate rejects and what the model cannot hold") {
  using namespace djinn;
  SUBCASE("invalid entry is rejected with validate's message") {
    auto r = decode<proto::Entry, Entry>(encode<proto::Entry>(Entry{"a..b", {}, {}}));
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == Code::kInvalidArgument);
    CHECK(r.status().message() ==
          "entry type 'a..b': must be a dotted identifier like djinn.attr.Location");
  }
  SUBCASE("repeated field name") {
    capnp::MallocMessageBuilder mb;
    auto e = mb.initRoot<proto::Entry>();
    e.setType("a.B");
    auto fields = e.initFields(2);
    fields[0].setName("x");
    fields[0].initValue().setInt(1);
    fields[1].setName("x");
    fields[1].initValue().setInt(2);
    auto r = from_capnp(e.asReader());
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().message() == "entry field 'x' appears twice: field names must be unique");
  }
  SUBCASE("unknown value kind") {
    capnp::MallocMessageBuilder mb;
    auto v = mb.initRoot<proto::Value>();
    v.setInt(5);
    capnp::AnyStruct::Builder any{proto::Value::Builder(v)};
    any.getDataSection()[0] = 42;  // the union discriminant (first 16 bits)
    auto r = from_capnp(v.asReader());
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().message().find("value of unknown kind 42") != std::string::npos);
  }
  SUBCASE("too many fields is rejected before they are read") {
    capnp::MallocMessageBuilder mb;
    auto t = mb.initRoot<proto::Template>();
    t.initFields(kMaxFields + 1);
    auto r = from_capnp(t.asReader());
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().message() == "template fields: 257 items, must be at most 256");
  }
  SUBCASE("nil service id in an item") {
    ServiceItem item;
    auto r = decode<proto::ServiceItem, ServiceItem>(encode<proto::ServiceItem>(item));
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().message().find("service id is nil") != std::string::npos);
  }
  SUBCASE("traversal limit becomes an error, not an exception") {
    Entry big{"a.B", {}, {{"t", std::string(60000, 'x')}}};
    auto bytes = encode<proto::Entry>(big);
    auto words = kj::heapArray<capnp::word>(bytes.size() / 8);
    std::memcpy(words.begin(), bytes.data(), bytes.size());
    capnp::ReaderOptions opts;
    opts.traversalLimitInWords = 100;
    capnp::FlatArrayMessageReader reader(words.asPtr(), opts);
    auto r = from_capnp(reader.getRoot<proto::Entry>());
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == Code::kInvalidArgument);
    CHECK(r.status().message().find("entry: malformed Cap'n Proto message") != std::string::npos);
  }
}

// Garbage, truncations and bit flips of valid messages: every decode returns (ok or an error), no
// exception escapes, and whatever is accepted passes validate().
TEST_CASE("Cap'n Proto: hostile bytes never crash from_capnp") {
  using namespace djinn;
  auto& rng = test::rng();
  ServiceItem item;
  item.service_id = kIdA;
  item.interface_types = {"djinn.svc.Printer"};
  item.attributes = {Entry{
      "djinn.attr.Location", {"djinn.attr.Base"}, {{"floor", 3}, {"room", "101"}, {"id", kIdB}}}};
  item.endpoints = {"tcp://127.0.0.1:1", "tcp://127.0.0.1:2"};
  ServiceTemplate st{
      kIdA, {"djinn.svc.Printer"}, {Template{"djinn.attr.Base", {{"floor", 3}, {"w", Value()}}}}};

  capnp::MallocMessageBuilder mb;
  auto root = mb.initRoot<proto::FuzzTemplateCase>();
  to_capnp(Template{"djinn.attr.Base", {{"floor", 3}}}, root.initTemplate());
  to_capnp(item.attributes[0], root.initEntry());
  to_capnp(st, root.initServiceTemplate());
  to_capnp(item, root.initServiceItem());
  auto flat = capnp::messageToFlatArray(mb);
  const std::vector<uint8_t> valid(flat.asBytes().begin(), flat.asBytes().end());

  auto run = [](const std::vector<uint8_t>& bytes) {
    Decoder d;
    proto::FuzzTemplateCase::Reader r;
    if (!d.open<proto::FuzzTemplateCase>(bytes, r)) return;
    // Following the root's own pointers may throw too; that is the caller's edge, not from_capnp's.
    auto child = [](auto get) -> std::optional<decltype(get())> {
      try {
        return get();
      } catch (const kj::Exception&) {
        return std::nullopt;
      }
    };
    auto tr = child([&] { return r.getTemplate(); });
    auto er = child([&] { return r.getEntry(); });
    auto sr = child([&] { return r.getServiceTemplate(); });
    auto ir = child([&] { return r.getServiceItem(); });
    if (!tr || !er || !sr || !ir) return;
    auto t = from_capnp(*tr);
    auto e = from_capnp(*er);
    auto s = from_capnp(*sr);
    auto i = from_capnp(*ir);
    if (t.ok()) CHECK(validate(*t).ok());
    if (e.ok()) CHECK(validate(*e).ok());
    if (s.ok()) CHECK(validate(*s).ok());
    if (i.ok()) CHECK(validate(*i).ok());
    if (t.ok() && e.ok()) (void)matches(*t, *e);
    if (s.ok() && i.ok()) (void)matches(*s, *i);
  };

  run(valid);
  run({});
  for (size_t n = 0; n < valid.size(); n += 3) {
    run(std::vector<uint8_t>(valid.begin(), valid.begin() + static_cast<long>(n)));
  }
  std::uniform_int_distribution<int> byte(0, 255);
  for (int round = 0; round < 2000; ++round) {
    auto mutated = valid;
    int flips = 1 + round % 8;
    for (int k = 0; k < flips; ++k) {
      mutated[rng() % mutated.size()] = static_cast<uint8_t>(byte(rng));
    }
    run(mutated);
  }
  for (int round = 0; round < 500; ++round) {
    std::vector<uint8_t> garbage(rng() % 512);
    for (auto& b : garbage) b = static_cast<uint8_t>(byte(rng));
    // A plausible segment table makes the garbage reach the pointers more often.
    if (garbage.size() >= 8 && round % 2 == 0) {
      uint32_t zero = 0, words = static_cast<uint32_t>(garbage.size() / 8 - 1);
      std::memcpy(garbage.data(), &zero, 4);
      std::memcpy(garbage.data() + 4, &words, 4);
    }
    run(garbage);
  }
}

// ---------------------------------------------------------------------------------------------
// Property test: random entries and templates over a small universe (so matches are common),
// checked against a reference written without Value::operator== or Entry::is_a.
namespace {

struct Universe {
  std::vector<std::string> types = {"u.A", "u.B", "u.C", "v.D", "v.E"};
  std::vector<std::string> names = {"f0", "f1", "f2", "f3", "f4"};
  std::vector<Value> values = {Value(),
                               Value(true),
                               Value(false),
                               Value(0),
                               Value(1),
                               Value(-1),
                               Value(0.0),
                               Value(-0.0),
                               Value(1.0),
                               Value(nan_with_payload(1)),
                               Value(""),
                               Value("1"),
                               Value("x"),
                               Value(Value::Bytes{}),
                               Value(Value::Bytes{1}),
                               Value(kIdA),
                               Value(ServiceId())};
};

// A value's identity spelled out as bytes: kind tag plus payload (float by its bits).
std::string ref_key(const Value& v) {
  std::string key(1, static_cast<char>(v.type()));
  switch (v.type()) {
    case ValueType::kNull:
      break;
    case ValueType::kBool:
      key += v.as_bool() ? '1' : '0';
      break;
    case ValueType::kInt:
      key += std::to_string(v.as_int());
      break;
    case ValueType::kFloat: {
      double d = v.as_float();
      char buf[sizeof d];
      std::memcpy(buf, &d, sizeof d);
      key.append(buf, sizeof d);
      break;
    }
    case ValueType::kText:
      key += v.as_text();
      break;
    case ValueType::kBytes:
      key.append(v.as_bytes().begin(), v.as_bytes().end());
      break;
    case ValueType::kUuid:
      key.append(v.as_uuid().bytes().begin(), v.as_uuid().bytes().end());
      break;
  }
  return key;
}

bool ref_matches(const Template& t, const Entry& e) {
  if (!t.type.empty()) {
    bool typed = t.type == e.type;
    for (const auto& s : e.supertypes) typed = typed || s == t.type;
    if (!typed) return false;
  }
  for (const auto& [name, value] : t.fields) {
    if (ref_key(value) == ref_key(Value())) continue;
    bool found = false;
    for (const auto& [en, ev] : e.fields) {
      if (en == name && ref_key(ev) == ref_key(value)) found = true;
    }
    if (!found) return false;
  }
  return true;
}

bool ref_matches(const ServiceTemplate& t, const ServiceItem& item) {
  if (t.service_id.has_value() && t.service_id->bytes() != item.service_id.bytes()) return false;
  for (const auto& it : t.interface_types) {
    if (std::count(item.interface_types.begin(), item.interface_types.end(), it) == 0) return false;
  }
  for (const auto& at : t.attributes) {
    bool any = false;
    for (const auto& e : item.attributes) any = any || ref_matches(at, e);
    if (!any) return false;
  }
  return true;
}

template <class T>
const T& pick(const std::vector<T>& v) {
  return v[djinn::test::rng()() % v.size()];
}
bool coin() { return djinn::test::rng()() % 2 == 0; }

Entry random_entry(const Universe& u) {
  Entry e;
  e.type = pick(u.types);
  for (const auto& t : u.types) {
    if (t != e.type && djinn::test::rng()() % 3 == 0) e.supertypes.push_back(t);
  }
  for (const auto& n : u.names) {
    if (coin()) e.fields[n] = pick(u.values);
  }
  return e;
}

// Half the templates are cut from an entry (then perhaps perturbed) so that matches are frequent.
Template random_template(const Universe& u, const Entry& near) {
  Template t;
  if (coin()) {
    t.type = coin() || near.supertypes.empty() ? near.type : pick(near.supertypes);
    for (const auto& [n, v] : near.fields) {
      if (coin()) t.fields[n] = v;
    }
    if (djinn::test::rng()() % 4 == 0) t.fields[pick(u.names)] = pick(u.values);
    if (djinn::test::rng()() % 8 == 0) t.type.clear();
  } else {
    t.type = djinn::test::rng()() % 4 == 0 ? "" : pick(u.types);
    for (const auto& n : u.names) {
      if (djinn::test::rng()() % 3 == 0) t.fields[n] = pick(u.values);
    }
  }
  return t;
}

}  // namespace

TEST_CASE("Property: matches agrees with a reference model and survives the wire") {
  using namespace djinn;
  Universe u;
  std::vector<ServiceId> ids = {kIdA, kIdB, ServiceId::random()};
  int template_hits = 0, service_hits = 0;
  constexpr int kRounds = 3000;
  for (int round = 0; round < kRounds; ++round) {
    Entry e = random_entry(u);
    Template t = random_template(u, e);
    REQUIRE(validate(e).ok());
    REQUIRE(validate(t).ok());
    bool expected = ref_matches(t, e);
    INFO("seed ", test::seed(), " round ", round);
    REQUIRE(matches(t, e) == expected);
    template_hits += expected;

    auto e2 = decode<proto::Entry, Entry>(encode<proto::Entry>(e));
    auto t2 = decode<proto::Template, Template>(encode<proto::Template>(t));
    REQUIRE(e2.ok());
    REQUIRE(t2.ok());
    CHECK(*e2 == e);
    CHECK(*t2 == t);
    CHECK(matches(*t2, *e2) == expected);
    {
      capnp::MallocMessageBuilder encoded;
      to_capnp(e, encoded.initRoot<proto::Entry>());
      CHECK(matches(t, encoded.getRoot<proto::Entry>().asReader()) == expected);
    }

    ServiceItem item;
    item.service_id = pick(ids);
    for (const auto& ty : u.types) {
      if (coin()) item.interface_types.push_back(ty);
    }
    for (size_t k = test::rng()() % 4; k > 0; --k) item.attributes.push_back(random_entry(u));
    ServiceTemplate st;
    if (test::rng()() % 3 == 0) st.service_id = pick(ids);
    for (const auto& ty : u.types) {
      if (test::rng()() % 4 == 0) st.interface_types.push_back(ty);
    }
    for (size_t k = test::rng()() % 3; k > 0; --k) {
      st.attributes.push_back(
          random_template(u, item.attributes.empty() ? e : pick(item.attributes)));
    }
    REQUIRE(validate(item).ok());
    REQUIRE(validate(st).ok());
    bool expected_service = ref_matches(st, item);
    REQUIRE(matches(st, item) == expected_service);
    service_hits += expected_service;
    auto st2 = decode<proto::ServiceTemplate, ServiceTemplate>(encode<proto::ServiceTemplate>(st));
    auto item2 = decode<proto::ServiceItem, ServiceItem>(encode<proto::ServiceItem>(item));
    REQUIRE(st2.ok());
    REQUIRE(item2.ok());
    CHECK(matches(*st2, *item2) == expected_service);
  }
  // The generators must exercise both outcomes, or the property says little.
  CHECK(template_hits > kRounds / 10);
  CHECK(template_hits < kRounds * 9 / 10);
  CHECK(service_hits > kRounds / 20);
  CHECK(service_hits < kRounds * 19 / 20);
}

// Writes seed inputs for fuzz/fuzz_template.cpp into $DJINN_FUZZ_SEED_DIR. Skipped by default; run
// with `test-core-model -tc="*fuzz seeds*" --no-skip` after changing model.capnp or fuzz.capnp.
TEST_CASE("Write fuzz seeds" * doctest::skip()) {
  using namespace djinn;
  const char* dir = std::getenv("DJINN_FUZZ_SEED_DIR");
  REQUIRE_MESSAGE(dir != nullptr, "set DJINN_FUZZ_SEED_DIR to the corpus directory");
  struct Seed {
    const char* name;
    Template tmpl;
    Entry entry;
    ServiceTemplate stmpl;
    ServiceItem item;
  };
  ServiceItem printer;
  printer.service_id = kIdA;
  printer.interface_types = {"djinn.svc.Printer", "djinn.svc.Device"};
  printer.attributes = {
      Entry{"djinn.attr.Location", {"djinn.attr.Base"}, {{"floor", 3}, {"room", "101"}}}};
  printer.endpoints = {"tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"};
  printer.public_key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
  printer.lease = {1, 1700000000000};
  const Seed seeds[] = {
      {"empty", {}, {}, {}, {}},
      {"match",
       {"djinn.attr.Base", {{"floor", 3}, {"wing", Value()}}},
       printer.attributes[0],
       {kIdA, {"djinn.svc.Printer"}, {Template{"djinn.attr.Location", {{"room", "101"}}}}},
       printer},
      {"nomatch-int-vs-float",
       {"djinn.attr.Location", {{"floor", 3.0}}},
       printer.attributes[0],
       {std::nullopt, {"djinn.svc.Scanner"}, {}},
       printer},
      {"all-types",
       {"x.AllTypes",
        {{"b", true},
         {"f", nan_with_payload(1)},
         {"t", "text"},
         {"y", Value::Bytes{1, 2}},
         {"u", kIdB}}},
       {"x.AllTypes",
        {"x.Base"},
        {{"b", true},
         {"f", nan_with_payload(1)},
         {"i", -9},
         {"n", Value()},
         {"t", "text"},
         {"y", Value::Bytes{1, 2}},
         {"u", kIdB}}},
       {std::nullopt, {}, {Template{"", {}}, Template{"x.Base", {{"i", -9}}}}},
       printer},
  };
  for (const auto& s : seeds) {
    capnp::MallocMessageBuilder mb;
    auto root = mb.initRoot<proto::FuzzTemplateCase>();
    to_capnp(s.tmpl, root.initTemplate());
    to_capnp(s.entry, root.initEntry());
    to_capnp(s.stmpl, root.initServiceTemplate());
    to_capnp(s.item, root.initServiceItem());
    auto words = capnp::messageToFlatArray(mb);
    auto bytes = words.asBytes();
    std::ofstream out(std::string(dir) + "/" + s.name + ".bin", std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.begin()),
              static_cast<std::streamsize>(bytes.size()));
    REQUIRE(out.good());
  }
}
