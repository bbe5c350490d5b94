// Fuzz target: every method of the lease manager, lookup and the object space (with its transaction
// manager and participant side), each served in this process over ZeroMQ on loopback exactly as its
// daemon serves it, with its stores in a temporary directory.
//
// An input picks a method, then either builds the method's parameters from its own Cap'n Proto
// schema, steered by the input's bytes (so most inputs get past decoding and reach the checks
// behind it), or sends the bytes themselves as the payload. Numbers, ids, hashes and names seen in
// earlier replies are fed back into later parameters, so calls reach real leases, transactions,
// entries and chunks rather than only "not found".
//
// A finding is a crash, a handler that threw (INTERNAL "failed:", or a deferred call dropped
// unanswered), a call that never returns when it cannot wait, or a service that stops answering.

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <capnp/dynamic.h>
#include <capnp/message.h>
#include <capnp/schema.h>
#include <kj/string.h>
#include <kj/exception.h>

#include "djinn/core/log.h"
#include "djinn/core/model.h"
#include "djinn/core/model_capnp.h"
#include "djinn/core/rpc.h"
#include "djinn/lease/service.h"
#include "djinn/lookup/service.h"
#include "djinn/proto/lease.capnp.h"
#include "djinn/proto/lookup.capnp.h"
#include "djinn/proto/space.capnp.h"
#include "djinn/space/service.h"
#include "djinn/space/values.h"

using namespace djinn;

namespace {

enum class Target { kLease, kLookup, kSpace, kAnyLandlord };

struct MethodSpec {
  Target target;
  const char* name;
  capnp::StructSchema params;
  capnp::StructSchema results;
  bool may_wait;  // may legitimately outlast a short client timeout (waits, or calls other services)
};

template <class P, class R>
MethodSpec spec(Target t, const char* name, bool may_wait = false) {
  return {t, name, capnp::Schema::from<P>(), capnp::Schema::from<R>(), may_wait};
}

const std::vector<MethodSpec>& methods() {
  using namespace djinn::proto;
  static const std::vector<MethodSpec> all = {
      // lease.* is served by every landlord: the lease manager, lookup and the space.
      spec<GrantParams, LeaseResult>(Target::kAnyLandlord, "lease.grant", true),
      spec<RenewParams, LeaseResult>(Target::kAnyLandlord, "lease.renew"),
      spec<LeaseIdParams, Empty>(Target::kAnyLandlord, "lease.cancel"),
      spec<LeaseIdParams, LeaseResult>(Target::kAnyLandlord, "lease.get"),
      spec<RenewBatchParams, BatchResults>(Target::kAnyLandlord, "lease.renewBatch"),
      spec<CancelBatchParams, BatchResults>(Target::kAnyLandlord, "lease.cancelBatch"),
      spec<HolderParams, LeaseList>(Target::kAnyLandlord, "lease.holderLeases"),
      spec<ResourceParams, LeaseList>(Target::kAnyLandlord, "lease.resourceLeases"),
      spec<CancelHolderParams, LeaseList>(Target::kAnyLandlord, "lease.cancelHolder"),
      spec<CreateSetParams, SetResult>(Target::kLease, "renewal.create"),
      spec<AddParams, Empty>(Target::kLease, "renewal.add", true),
      spec<RemoveParams, Empty>(Target::kLease, "renewal.remove"),
      spec<SetIdParams, LeaseList>(Target::kLease, "renewal.members"),
      spec<RegisterParams, RegisterResult>(Target::kLookup, "lookup.register"),
      spec<LookupParams, LookupResult>(Target::kLookup, "lookup.lookup"),
      spec<LookupManyParams, LookupManyResult>(Target::kLookup, "lookup.lookupMany"),
      spec<ModifyParams, ModifyResult>(Target::kLookup, "lookup.modifyAttributes"),
      spec<NotifyParams, NotifyResult>(Target::kLookup, "lookup.notify"),
      spec<SelfParams, SelfResult>(Target::kLookup, "lookup.self"),
      spec<WriteParams, WriteResult>(Target::kSpace, "space.write", true),
      spec<WriteManyParams, WriteManyResult>(Target::kSpace, "space.writeMany", true),
      spec<MatchParams, MatchResult>(Target::kSpace, "space.read", true),
      spec<MatchParams, MatchResult>(Target::kSpace, "space.take", true),
      spec<MatchParams, MatchResult>(Target::kSpace, "space.readIfExists", true),
      spec<MatchParams, MatchResult>(Target::kSpace, "space.takeIfExists", true),
      spec<MatchParams, MatchResult>(Target::kSpace, "space.takeMany", true),
      spec<ContentsParams, ContentsResult>(Target::kSpace, "space.contents"),
      spec<SpaceNotifyParams, SpaceNotifyResult>(Target::kSpace, "space.notify"),
      spec<StatsParams, StatsResult>(Target::kSpace, "space.stats"),
      spec<PutChunkParams, PutChunkResult>(Target::kSpace, "space.putChunk"),
      spec<PutChunksParams, PutChunksResult>(Target::kSpace, "space.putChunks"),
      spec<HasChunksParams, HasChunksResult>(Target::kSpace, "space.hasChunks"),
      spec<GetChunksParams, GetChunksResult>(Target::kSpace, "space.getChunks"),
      spec<GetChunkParams, GetChunkResult>(Target::kSpace, "space.getChunk"),
      spec<PutValueParams, PutValueResult>(Target::kSpace, "space.putValue"),
      spec<GetValueParams, GetValueResult>(Target::kSpace, "space.getValue"),
      spec<StatsParams, SpaceEmpty>(Target::kSpace, "space.collect", true),
      spec<CreateTxnParams, CreateTxnResult>(Target::kSpace, "txn.create"),
      spec<TxnParams, OutcomeResult>(Target::kSpace, "txn.commit", true),
      spec<TxnParams, SpaceEmpty>(Target::kSpace, "txn.abort", true),
      spec<TxnParams, SpaceEmpty>(Target::kSpace, "txn.renew"),
      spec<TxnParams, OutcomeResult>(Target::kSpace, "txn.outcome"),
      spec<JoinParams, SpaceEmpty>(Target::kSpace, "txn.join", true),
      spec<ParticipantParams, VoteResult>(Target::kSpace, "participant.prepare", true),
      spec<ParticipantParams, SpaceEmpty>(Target::kSpace, "participant.commit", true),
      spec<ParticipantParams, SpaceEmpty>(Target::kSpace, "participant.abort", true),
  };
  return all;
}

// The input's bytes, read front to back; zeros once they run out.
class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t byte() { return at_ < size_ ? data_[at_++] : 0; }
  uint64_t bits(int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= uint64_t{byte()} << (8 * i);
    return v;
  }
  std::string take(size_t n) {
    n = std::min(n, size_ - at_);
    std::string s(reinterpret_cast<const char*>(data_ + at_), n);
    at_ += n;
    return s;
  }
  bool empty() const { return at_ >= size_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t at_ = 0;
};

// What replies carried, offered back to later calls.
template <class T>
class Pool {
 public:
  void add(T v) {
    if (items_.size() < kSize) {
      items_.push_back(std::move(v));
    } else {
      items_[next_++ % kSize] = std::move(v);
    }
  }
  bool empty() const { return items_.empty(); }
  const T& pick(uint8_t b) const { return items_[b % items_.size()]; }

 private:
  static constexpr size_t kSize = 64;
  std::vector<T> items_;
  size_t next_ = 0;
};

struct Pools {
  Pool<uint64_t> numbers;
  Pool<std::string> texts;
  Pool<std::string> blobs;
  std::map<uint64_t, Pool<std::string>> structs;  // by schema id: whole values, as flat messages
  std::vector<std::string> endpoints;  // the services' own, and some that go nowhere
};

Pools& pools() {
  static Pools p;
  return p;
}

// Bytes of long texts and blobs an input may still ask for: enough to pass every size limit, few
// enough that a call stays well under the hard message limit (a larger one drops the connection).
size_t g_large_left = 0;

size_t large_size(Input& in, int max_shift) {
  size_t n = size_t{in.byte()} << (in.byte() % max_shift);
  if (n > g_large_left) return n % 64;
  g_large_left -= n;
  return n;
}

uint64_t pick_number(Input& in) {
  switch (in.byte() % 12) {
    case 0: return 0;
    case 1: return 1;
    case 2: return static_cast<uint64_t>(-1);
    case 3: return static_cast<uint64_t>(-2);
    case 4: return static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    case 5: return static_cast<uint64_t>(std::numeric_limits<int64_t>::min());
    case 6:
    case 7: return pools().numbers.empty() ? 5 : pools().numbers.pick(in.byte());
    case 8: return in.byte();
    case 9: return in.bits(2) * 10;  // durations in ms
    default: return in.bits(8);
  }
}

std::string pick_text(Input& in) {
  static const std::array<const char*, 10> words = {
      "", "djinn.attr.Name", "djinn.attr.Location", "djinn.test.Entry", "name", "a.b.c",
      "public", "space/entry", "\xff\xfe", "holder"};
  switch (in.byte() % 8) {
    case 0: return words[in.byte() % words.size()];
    case 1:
    case 2: return pools().texts.empty() ? "x" : pools().texts.pick(in.byte());
    case 3: return pools().endpoints[in.byte() % pools().endpoints.size()];
    case 4: return std::string(large_size(in, 10), 'n');  // up to 130 KB
    default: return in.take(in.byte() % 40);
  }
}

std::string pick_blob(Input& in) {
  switch (in.byte() % 8) {
    case 0: return "";
    case 1:
    case 2: return pools().blobs.empty() ? std::string(32, '\0') : pools().blobs.pick(in.byte());
    case 3: {
      std::string s = in.take(16);
      s.resize(16, '\0');
      return s;
    }
    case 4: {
      std::string s = in.take(32);
      s.resize(32, '\0');
      return s;
    }
    case 5: return std::string(large_size(in, 14), 'b');  // up to 2 MB
    default: return in.take(in.byte() % 64);
  }
}

uint32_t pick_length(Input& in) {
  switch (in.byte() % 16) {
    case 0: return 0;
    case 1: return 10'001;  // past every batch limit
    case 2: return in.byte() * 4u;
    default: return in.byte() % 5;
  }
}

void fill_struct(capnp::DynamicStruct::Builder b, Input& in, int depth);

// A whole value of `schema` seen earlier (an id, a TxnRef, an Entry, a ServiceItem...), or an empty
// message when there is none or the input does not ask for one.
kj::Array<capnp::word> pooled_struct(capnp::StructSchema schema, Input& in) {
  auto it = pools().structs.find(schema.getProto().getId());
  if (it == pools().structs.end() || it->second.empty() || in.byte() % 3 != 0) return nullptr;
  const std::string& flat = it->second.pick(in.byte());
  auto words = kj::heapArray<capnp::word>(flat.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), flat.data(), words.size() * sizeof(capnp::word));
  return words;
}

// A value of `type` for a list element or a field.
capnp::DynamicValue::Reader scalar(capnp::Type type, Input& in, std::string& text_store) {
  switch (type.which()) {
    case capnp::schema::Type::VOID: return capnp::VOID;
    case capnp::schema::Type::BOOL: return static_cast<bool>(in.byte() & 1);
    case capnp::schema::Type::INT8: return static_cast<int8_t>(pick_number(in));
    case capnp::schema::Type::INT16: return static_cast<int16_t>(pick_number(in));
    case capnp::schema::Type::INT32: return static_cast<int32_t>(pick_number(in));
    case capnp::schema::Type::INT64: return static_cast<int64_t>(pick_number(in));
    case capnp::schema::Type::UINT8: return static_cast<uint8_t>(pick_number(in));
    case capnp::schema::Type::UINT16: return static_cast<uint16_t>(pick_number(in));
    case capnp::schema::Type::UINT32: return static_cast<uint32_t>(pick_number(in));
    case capnp::schema::Type::UINT64: return pick_number(in);
    case capnp::schema::Type::FLOAT32: return static_cast<float>(static_cast<int64_t>(pick_number(in))) / 3.0f;
    case capnp::schema::Type::FLOAT64: {
      uint64_t raw = in.bits(8);
      double d;
      std::memcpy(&d, &raw, sizeof d);  // NaNs and infinities included
      return d;
    }
    case capnp::schema::Type::TEXT:
      text_store = pick_text(in);
      return capnp::Text::Reader(text_store.data(), text_store.size());
    case capnp::schema::Type::DATA:
      text_store = pick_blob(in);
      return capnp::Data::Reader(reinterpret_cast<const kj::byte*>(text_store.data()), text_store.size());
    case capnp::schema::Type::ENUM: return capnp::DynamicEnum(type.asEnum(), in.byte() % 6);
    default: return capnp::VOID;  // composite kinds are initialised, not set
  }
}

bool is_composite(capnp::Type type) {
  auto w = type.which();
  return w == capnp::schema::Type::STRUCT || w == capnp::schema::Type::LIST ||
         w == capnp::schema::Type::INTERFACE || w == capnp::schema::Type::ANY_POINTER;
}

void fill_list(capnp::DynamicList::Builder list, Input& in, int depth) {
  capnp::Type element = list.getSchema().getElementType();
  std::string store;
  for (uint32_t i = 0; i < list.size(); ++i) {
    if (in.empty()) return;
    if (element.isStruct()) {
      if (auto words = pooled_struct(element.asStruct(), in); words.size()) {
        capnp::FlatArrayMessageReader r(words);
        list.set(i, r.getRoot<capnp::DynamicStruct>(element.asStruct()));
      } else if (depth < 6) {
        fill_struct(list[i].as<capnp::DynamicStruct>(), in, depth + 1);
      }
    } else if (element.isList()) {
      if (depth < 6) fill_list(list.init(i, pick_length(in)).as<capnp::DynamicList>(), in, depth + 1);
    } else if (!is_composite(element)) {
      list.set(i, scalar(element, in, store));
    }
  }
}

void fill_field(capnp::DynamicStruct::Builder b, capnp::StructSchema::Field field, Input& in, int depth) {
  if (field.getProto().isGroup()) {
    fill_struct(b.init(field).as<capnp::DynamicStruct>(), in, depth + 1);
    return;
  }
  capnp::Type type = field.getType();
  if (type.isStruct()) {
    if (auto words = pooled_struct(type.asStruct(), in); words.size()) {
      capnp::FlatArrayMessageReader r(words);
      b.set(field, r.getRoot<capnp::DynamicStruct>(type.asStruct()));
    } else if (depth < 6) {
      fill_struct(b.init(field).as<capnp::DynamicStruct>(), in, depth + 1);
    }
  } else if (type.isList()) {
    if (depth < 6) fill_list(b.init(field, pick_length(in)).as<capnp::DynamicList>(), in, depth + 1);
  } else if (!is_composite(type)) {
    std::string store;
    b.set(field, scalar(type, in, store));
  }
}

void fill_struct(capnp::DynamicStruct::Builder b, Input& in, int depth) {
  capnp::StructSchema schema = b.getSchema();
  for (auto field : schema.getNonUnionFields()) {
    if (in.empty()) return;
    if (in.byte() % 4 != 0) fill_field(b, field, in, depth);
  }
  auto members = schema.getUnionFields();
  if (members.size() > 0 && !in.empty()) fill_field(b, members[in.byte() % members.size()], in, depth);
}

// Keeps numbers, short texts and blobs of a reply for later calls.
void harvest(capnp::DynamicValue::Reader v, int depth) {
  if (depth > 8) return;
  switch (v.getType()) {
    case capnp::DynamicValue::INT: {
      int64_t n = v.as<int64_t>();
      if (n != 0) pools().numbers.add(static_cast<uint64_t>(n));
      break;
    }
    case capnp::DynamicValue::UINT: {
      uint64_t n = v.as<uint64_t>();
      if (n != 0) pools().numbers.add(n);
      break;
    }
    case capnp::DynamicValue::TEXT: {
      auto t = v.as<capnp::Text>();
      if (t.size() > 0 && t.size() <= 200) pools().texts.add(std::string(t.cStr(), t.size()));
      break;
    }
    case capnp::DynamicValue::DATA: {
      auto d = v.as<capnp::Data>();
      if (d.size() > 0 && d.size() <= 64) pools().blobs.add(std::string(reinterpret_cast<const char*>(d.begin()), d.size()));
      break;
    }
    case capnp::DynamicValue::LIST: {
      auto list = v.as<capnp::DynamicList>();
      for (uint32_t i = 0; i < std::min(list.size(), 16u); ++i) harvest(list[i], depth + 1);
      break;
    }
    case capnp::DynamicValue::STRUCT: {
      auto s = v.as<capnp::DynamicStruct>();
      if (!s.getSchema().getProto().getStruct().getIsGroup()) {
        capnp::MallocMessageBuilder copy;
        copy.setRoot(s);
        auto words = capnp::messageToFlatArray(copy);
        pools().structs[s.getSchema().getProto().getId()].add(
            std::string(reinterpret_cast<const char*>(words.begin()), words.size() * sizeof(capnp::word)));
      }
      for (auto field : s.getSchema().getFields()) {
        if (s.has(field)) harvest(s.get(field), depth + 1);
      }
      break;
    }
    default:
      break;
  }
}

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "fuzz-services: %s\n", what.c_str());
  std::abort();
}

// The three services and a client for each, started on the first input and kept for the run.
struct Federation {
  std::filesystem::path dir;
  std::unique_ptr<lease::LeaseManager> lease;
  std::unique_ptr<lookup::LookupService> lookup;
  std::unique_ptr<space::SpaceService> space;
  std::unique_ptr<rpc::Client> lease_client, lookup_client, space_client;

  Federation() {
    log::set_level(log::Level::kOff);
    char tmpl[] = "/tmp/djinn-fuzz-services-XXXXXX";
    if (!mkdtemp(tmpl)) finding("cannot make a temporary directory");
    dir = tmpl;
    lease::LeaseManagerOptions lo;
    lo.data_dir = dir / "lease";
    auto l = lease::LeaseManager::start(lo);
    if (!l.ok()) finding("lease manager did not start: " + l.status().to_string());
    lease = std::move(*l);
    lookup::LookupServiceOptions ko;
    ko.data_dir = dir / "lookup";
    auto k = lookup::LookupService::start(ko);
    if (!k.ok()) finding("lookup did not start: " + k.status().to_string());
    lookup = std::move(*k);
    space::SpaceServiceOptions so;
    so.data_dir = dir / "space";
    so.join_timeout = std::chrono::milliseconds(200);  // inputs name managers that never answer
    so.value_grace = std::chrono::milliseconds(0);
    auto s = space::SpaceService::start(so);
    if (!s.ok()) finding("space did not start: " + s.status().to_string());
    space = std::move(*s);
    lease_client = std::make_unique<rpc::Client>(rpc::ClientOptions{.endpoint = lease->rpc_endpoint()});
    lookup_client = std::make_unique<rpc::Client>(rpc::ClientOptions{.endpoint = lookup->rpc_endpoint()});
    space_client = std::make_unique<rpc::Client>(rpc::ClientOptions{.endpoint = space->rpc_endpoint()});
    pools().endpoints = {lease->rpc_endpoint(), lookup->rpc_endpoint(), space->rpc_endpoint(),
                         "tcp://127.0.0.1:1", "tcp://nowhere.invalid:4160", "tcp://", "inproc://x", "bogus"};
  }
  ~Federation() {
    lease_client.reset();
    lookup_client.reset();
    space_client.reset();
    space.reset();
    lookup.reset();
    lease.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }

  rpc::Client& client(Target t, uint8_t pick) {
    switch (t) {
      case Target::kLease: return *lease_client;
      case Target::kLookup: return *lookup_client;
      case Target::kSpace: return *space_client;
      case Target::kAnyLandlord: break;
    }
    return pick % 3 == 0 ? *lease_client : pick % 3 == 1 ? *lookup_client : *space_client;
  }

  // Each service still answers a call that runs on its I/O thread.
  void check_alive(const std::string& after) {
    rpc::CallOptions o{.timeout = std::chrono::seconds(20)};
    for (rpc::Client* c : {lease_client.get(), lookup_client.get(), space_client.get()}) {
      capnp::MallocMessageBuilder m;
      m.initRoot<proto::LeaseIdParams>().setId(0);
      rpc::Reply r = c->call("lease.get", m, o);
      if (r.status().code() == Code::kDeadlineExceeded || r.status().code() == Code::kUnavailable) {
        finding(c->endpoint() + " stopped answering after " + after + ": " + r.status().to_string());
      }
    }
  }
};

Federation& federation() {
  static Federation* f = [] {
    auto* fed = new Federation();
    std::atexit([] { delete &federation(); });
    return fed;
  }();
  return *f;
}

const MethodSpec& method_named(std::string_view name) {
  for (const auto& m : methods()) {
    if (name == m.name) return m;
  }
  finding("no method " + std::string(name));
}

void count(const std::string& what, const Status& st) {
  static std::map<std::string, std::map<std::string, int>> seen;
  static std::map<std::string, std::vector<std::string>> samples;
  static bool registered = [] {
    return std::atexit([] {
      for (const auto& [method, codes] : seen) {
        std::fprintf(stderr, "%-34s", method.c_str());
        for (const auto& [code, n] : codes) std::fprintf(stderr, " %s:%d", code.c_str(), n);
        std::fprintf(stderr, "\n");
        for (const auto& m : samples[method]) std::fprintf(stderr, "    %s\n", m.c_str());
      }
    }) == 0;
  }();
  (void)registered;
  seen[what][std::string(code_name(st.code()))]++;
  if (!st.ok() && samples[what].size() < 4) samples[what].push_back(st.to_string().substr(0, 160));
}

// Makes one call (the built `params`, or `raw` words as they are) and checks its answer. Values in
// the reply, and in parameters that were accepted, are kept for later calls.
Status call_checked(Federation& fed, const MethodSpec& m, rpc::Client& client, capnp::MallocMessageBuilder& params,
                    kj::Array<capnp::word> raw, bool is_raw) {
  // A call that may wait gets a short deadline (it must still answer by it); any other must answer
  // well within a generous one.
  rpc::CallOptions o{.timeout = m.may_wait ? std::chrono::milliseconds(50) : std::chrono::milliseconds(20000)};
  rpc::Reply reply;
  auto started = std::chrono::steady_clock::now();
  if (is_raw) {
    auto done = std::make_shared<std::promise<rpc::Reply>>();
    auto future = done->get_future();
    client.call_async_raw(m.name, std::move(raw), o, [done](rpc::Reply r) { done->set_value(std::move(r)); });
    reply = future.get();
  } else {
    reply = client.call(m.name, params, o);
  }

  const Status& st = reply.status();
  std::string what = std::string(m.name) + (is_raw ? " (raw payload)" : "");
  auto took = std::chrono::steady_clock::now() - started;
  if (took > std::chrono::seconds(1)) {
    std::fprintf(stderr, "fuzz-services: %s took %.1f s: %s\n", what.c_str(),
                 std::chrono::duration<double>(took).count(), st.to_string().c_str());
  }
  if (st.code() == Code::kInternal && st.message().find("failed:") != std::string::npos) {
    finding(what + " threw: " + st.to_string());
  }
  if (st.code() == Code::kCancelled && st.message().find("dropped the call") != std::string::npos) {
    finding(what + " was dropped unanswered: " + st.to_string());
  }
  // The service's own DEADLINE_EXCEEDED (a call it made to a transaction manager an input named,
  // say) is an answer; only the client's timeout means no answer came.
  if (st.code() == Code::kDeadlineExceeded && !m.may_wait && took >= o.timeout) {
    std::string sent = is_raw ? "(raw bytes)" : kj::str(params.getRoot<capnp::DynamicStruct>(m.params)).cStr();
    finding(what + " did not answer: " + st.to_string() + "\n  params: " + sent.substr(0, 2000));
  }
  if (st.ok()) {
    try {
      if (reply.has_payload()) harvest(reply.message().getRoot<capnp::DynamicStruct>(m.results), 0);
    } catch (const kj::Exception& e) {
      finding(what + " sent a malformed reply: " + e.getDescription().cStr());
    }
    if (!is_raw) harvest(params.getRoot<capnp::DynamicStruct>(m.params).asReader(), 0);
  }
  if (std::getenv("DJINN_FUZZ_STATS")) count(what, st);
  static uint64_t calls = 0;
  if (++calls % 64 == 0 || st.code() == Code::kDeadlineExceeded || st.code() == Code::kUnavailable) {
    fed.check_alive(what);
  }
  return st;
}

// Valid calls of the main kinds, so that the pools start with real leases, entries, items, chunks
// and transactions to aim at.
void prime(Federation& fed) {
  auto call = [&](const char* name, capnp::MallocMessageBuilder& params, uint8_t landlord = 0) {
    const MethodSpec& m = method_named(name);
    Status st = call_checked(fed, m, fed.client(m.target, landlord), params, nullptr, false);
    if (!st.ok()) finding(std::string("priming call ") + name + " failed: " + st.to_string());
  };
  Entry point{"djinn.test.Point", {"djinn.test.Shape"}, {{"x", Value(int64_t{1})}, {"name", Value(std::string("a"))}}};
  for (uint8_t landlord = 0; landlord < 3; ++landlord) {
    for (uint16_t kind : {0, 1}) {
      capnp::MallocMessageBuilder m;
      auto p = m.initRoot<proto::GrantParams>();
      p.setResource(kind ? "port" : "printer");
      p.setHolder("app");
      p.setKind(static_cast<proto::LeaseKind>(kind));
      p.setDurationMs(60'000);
      call("lease.grant", m, landlord);
    }
  }
  {
    capnp::MallocMessageBuilder m;
    auto p = m.initRoot<proto::WriteParams>();
    to_capnp(point, p.initEntry());
    p.setDurationMs(60'000);
    p.setHolder("app");
    call("space.write", m);
  }
  {
    capnp::MallocMessageBuilder m;
    auto p = m.initRoot<proto::SpaceNotifyParams>();
    to_capnp(Template{"djinn.test.Shape", {}}, p.initTemplate());
    p.setDurationMs(60'000);
    call("space.notify", m);
  }
  {
    ServiceItem item;
    item.service_id = ServiceId::random();
    item.interface_types = {"djinn.Printer"};
    item.attributes = {Entry{"djinn.attr.Name", {}, {{"name", Value(std::string("p"))}}}};
    item.endpoints.rpc = "tcp://127.0.0.1:1";
    capnp::MallocMessageBuilder m;
    auto p = m.initRoot<proto::RegisterParams>();
    to_capnp(item, p.initItem());
    p.setDurationMs(60'000);
    call("lookup.register", m);
  }
  {
    capnp::MallocMessageBuilder m;
    m.initRoot<proto::CreateTxnParams>().setLeaseMs(60'000);
    call("txn.create", m);
  }
  {
    std::string hello = "hello, space";
    auto bytes = std::span(reinterpret_cast<const uint8_t*>(hello.data()), hello.size());
    space::ContentHash h = space::hash_bytes(bytes);
    capnp::MallocMessageBuilder m;
    auto p = m.initRoot<proto::PutChunkParams>();
    p.setHash(capnp::Data::Reader(h.data(), h.size()));
    p.setData(capnp::Data::Reader(bytes.data(), bytes.size()));
    call("space.putChunk", m);
  }
  {
    capnp::MallocMessageBuilder m;
    auto p = m.initRoot<proto::CreateSetParams>();
    p.setHolder("app");
    p.setDurationMs(60'000);
    call("renewal.create", m);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Federation& fed = federation();
  static bool primed = (prime(fed), true);
  (void)primed;
  Input in(data, size);
  const MethodSpec& m = methods()[in.byte() % methods().size()];
  rpc::Client& client = fed.client(m.target, in.byte());
  const bool raw = in.byte() % 8 == 0;

  capnp::MallocMessageBuilder params;
  kj::Array<capnp::word> words;
  g_large_left = 4u << 20;
  if (raw) {
    std::string bytes = in.take(size);
    bytes.resize((bytes.size() + 7) / 8 * 8, '\0');
    words = kj::heapArray<capnp::word>(bytes.size() / 8);
    if (words.size()) std::memcpy(words.begin(), bytes.data(), bytes.size());
  } else {
    try {
      fill_struct(params.initRoot<capnp::DynamicStruct>(m.params), in, 0);
    } catch (const kj::Exception& e) {
      finding(std::string("building parameters for ") + m.name + ": " + e.getDescription().cStr());
    }
  }
  (void)call_checked(fed, m, client, params, std::move(words), raw);
  return 0;
}
