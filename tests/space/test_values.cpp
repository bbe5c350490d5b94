// Large values in the space: chunks stored once, values referred to by entries, garbage collection
// of what nothing refers to, tampered and missing chunks, and a value streamed through a client in
// both directions with several chunks in flight.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <thread>

#include "djinn/core/fault.h"
#include "djinn/core/files.h"
#include "djinn/core/rpc.h"
#include "djinn/proto/space.capnp.h"
#include "djinn/space/client.h"
#include "djinn/space/service.h"
#include "support/test_support.h"

using namespace djinn;
using namespace djinn::space;
using namespace std::chrono_literals;

namespace {

std::vector<uint8_t> pattern(size_t size, uint64_t seed) {
  std::vector<uint8_t> out(size);
  uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 1;
  for (size_t i = 0; i < size; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    out[i] = static_cast<uint8_t>(x);
  }
  return out;
}

// A value read back through the client, whole.
std::vector<uint8_t> read_back(SpaceClient& c, const ContentHash& id, ValueTransfer transfer = {}) {
  std::vector<uint8_t> back;
  Status st = c.get_value(id, [&](std::span<const uint8_t> b) {
    back.insert(back.end(), b.begin(), b.end());
    return Status::Ok();
  }, transfer);
  REQUIRE_MESSAGE(st.ok(), st.to_string());
  return back;
}

// A space whose collector waits an hour, unless `adjust` says otherwise.
std::unique_ptr<SpaceService> start(const test::TempDir& dir, const std::function<void(SpaceServiceOptions&)>& adjust = {}) {
  SpaceServiceOptions o;
  o.data_dir = dir.file("space");
  o.value_grace = 1h;
  o.value_gc_interval = std::chrono::hours(1);
  if (adjust) adjust(o);
  auto s = SpaceService::start(o);
  REQUIRE_MESSAGE(s.ok(), s.status().to_string());
  return std::move(*s);
}

}  // namespace

TEST_CASE("values: streamed both ways, stored once, referred to by entries, collected when unreferenced") {
  test::TempDir dir;
  auto s = start(dir);
  SpaceClient c({.endpoint = s->rpc_endpoint()});
  ValueTransfer small{.chunk_bytes = 64 * 1024, .in_flight = 3};

  std::vector<uint8_t> data = pattern(1'000'000, 1);
  auto id = c.put_value(data, small);
  REQUIRE_MESSAGE(id.ok(), id.status().to_string());
  std::vector<uint8_t> back = read_back(c, *id, small);
  CHECK(back == data);
  ValueStats first = s->values().stats();
  CHECK(first.values == 1);
  CHECK(first.chunk_bytes == data.size());

  // The same content again, and a value sharing its first half: only new chunks are stored.
  auto again = c.put_value(data, small);
  REQUIRE(again.ok());
  CHECK(*again == *id);
  CHECK(s->values().stats().chunk_bytes == data.size());
  std::vector<uint8_t> half(data.begin(), data.begin() + 8 * 64 * 1024);
  std::vector<uint8_t> other = pattern(100'000, 2);
  half.insert(half.end(), other.begin(), other.end());
  auto id2 = c.put_value(half, small);
  REQUIRE(id2.ok());
  CHECK(s->values().stats().chunk_bytes == data.size() + other.size());

  // An entry refers to the first value; collection keeps it and drops the unreferenced second.
  Entry e;
  e.type = "demo.Checkpoint";
  e.fields["version"] = Value(1);
  e.fields["heap"] = value_ref(*id);
  auto w = c.write(e, 600'000);
  REQUIRE_MESSAGE(w.ok(), w.status().to_string());
  s->values().collect_now(0ms);
  CHECK(s->values().has_value(*id));
  CHECK(!s->values().has_value(*id2));
  CHECK(s->values().stats().chunk_bytes == data.size());
  // References are rebuilt at a restart.
  s.reset();
  s = start(dir);
  SpaceClient c2({.endpoint = s->rpc_endpoint()});
  s->values().collect_now(0ms);
  CHECK(s->values().has_value(*id));
  // Taken: nothing refers to it any more.
  REQUIRE(c2.take_if_exists(Template{"demo.Checkpoint", {}})->has_value());
  s->values().collect_now(0ms);
  CHECK(!s->values().has_value(*id));
  CHECK(s->values().stats().chunks == 0);
  size_t files = 0;
  for (auto& f : std::filesystem::recursive_directory_iterator(dir.file("space") + "/values")) files += f.is_regular_file();
  CHECK(files == 0);
}

TEST_CASE("values: a restarted space with a short grace collects nothing its entries refer to") {
  // The collector starts once the space has loaded its entries and taken their references; before
  // that every value looks unreferenced.
  test::TempDir dir;
  std::vector<uint8_t> data = pattern(200'000, 3);
  ContentHash id{};
  {
    auto s = start(dir);
    SpaceClient c({.endpoint = s->rpc_endpoint()});
    auto v = c.put_value(data);
    REQUIRE_MESSAGE(v.ok(), v.status().to_string());
    id = *v;
    Entry e;
    e.type = "demo.Held";
    e.fields["heap"] = value_ref(id);
    REQUIRE(c.write(e, 600'000).ok());
  }
  SpaceServiceOptions o;
  o.data_dir = dir.file("space");
  o.value_grace = 1ms;
  o.value_gc_interval = 10ms;
  fault::arm_call("space.open.before_load", [] { std::this_thread::sleep_for(300ms); });  // a long load
  auto s = SpaceService::start(o);
  fault::disarm_all();
  REQUIRE_MESSAGE(s.ok(), s.status().to_string());
  std::this_thread::sleep_for(50ms);  // a few collections more
  CHECK((*s)->values().has_value(id));
  SpaceClient c({.endpoint = (*s)->rpc_endpoint()});
  std::vector<uint8_t> back = read_back(c, id);
  CHECK(back == data);
}

TEST_CASE("values: an upload longer than the grace keeps its chunks until its manifest is stored") {
  // Chunks are put before the manifest naming them; unnamed, each is kept for the grace after its
  // last put or hasChunks. The client asks about those it has put every half grace.
  test::TempDir dir;
  auto s = start(dir, [](SpaceServiceOptions& o) {
    o.value_grace = 1s;
    o.value_gc_interval = 100ms;
  });
  SpaceClient c({.endpoint = s->rpc_endpoint()});
  std::vector<uint8_t> data = pattern(3 * 64 * 1024, 11);
  size_t at = 0;
  // 3.6 s for the whole; each chunk takes 1.2 s to fill, more than a grace.
  auto slow = [&](uint8_t* out, size_t max) -> Result<size_t> {
    std::this_thread::sleep_for(75ms);
    size_t n = std::min({max, data.size() - at, size_t{4096}});
    std::memcpy(out, data.data() + at, n);
    at += n;
    return n;
  };
  auto id = c.put_value(slow, ValueTransfer{.chunk_bytes = 16 * 4096, .in_flight = 1});
  REQUIRE_MESSAGE(id.ok(), id.status().to_string());
  std::vector<uint8_t> back = read_back(c, *id);
  CHECK(back == data);
}

TEST_CASE("values: a transfer with no call, or too many, in flight is refused before anything is sent") {
  test::TempDir dir;
  auto s = start(dir);
  SpaceClient c({.endpoint = s->rpc_endpoint()});
  auto stored = c.put_value(pattern(100'000, 6));
  REQUIRE(stored.ok());
  const uint64_t bytes_before = s->values().stats().chunk_bytes;
  for (int in_flight : {0, -1, 65}) {
    CAPTURE(in_flight);
    ValueTransfer t;
    t.in_flight = in_flight;
    bool read = false;
    auto put = c.put_value([&](uint8_t*, size_t) -> Result<size_t> {
      read = true;
      return size_t{0};
    }, t);
    CHECK(put.status().code() == Code::kInvalidArgument);
    CHECK(!read);
    size_t delivered = 0;
    Status got = c.get_value(*stored, [&](std::span<const uint8_t> b) {
      delivered += b.size();
      return Status::Ok();
    }, t);
    CHECK(got.code() == Code::kInvalidArgument);
    CHECK(delivered == 0);
  }
  CHECK(s->values().stats().chunk_bytes == bytes_before);
}

TEST_CASE("values: a client refuses a manifest that is not the value's it asked for") {
  test::TempDir dir;
  auto s = start(dir);
  SpaceClient c({.endpoint = s->rpc_endpoint()});
  auto asked = c.put_value(pattern(100'000, 4));
  auto other = c.put_value(pattern(100'000, 5));
  REQUIRE(asked.ok());
  REQUIRE(other.ok());
  // A server that answers with another value's manifest, whose chunks are all whole and stored:
  // a damaged index, or a bug.
  rpc::Server wrong({});
  wrong.method<proto::GetValueParams, proto::GetValueResult>(
      "space.getValue", [&](const rpc::CallContext&, proto::GetValueParams::Reader, proto::GetValueResult::Builder out) {
        Result<Manifest> m = s->values().get_value(*other);
        if (!m.ok()) return m.status();
        out.setSize(m->size);
        auto chunks = out.initChunks(static_cast<unsigned>(m->chunks.size()));
        auto sizes = out.initChunkSizes(static_cast<unsigned>(m->chunks.size()));
        for (unsigned i = 0; i < m->chunks.size(); ++i) {
          chunks.set(i, capnp::Data::Reader(m->chunks[i].data(), 32));
          sizes.set(i, m->chunk_sizes[i]);
        }
        return Status::Ok();
      });
  REQUIRE(wrong.start().ok());
  SpaceClient misled({.endpoint = wrong.endpoints().front()});
  size_t delivered = 0;
  Status got = misled.get_value(*asked, [&](std::span<const uint8_t> b) {
    delivered += b.size();
    return Status::Ok();
  });
  CHECK(got.code() == Code::kDataLoss);
  CHECK(delivered == 0);
  wrong.stop();
}

TEST_CASE("values: tampered, missing and mismatched chunks are refused") {
  test::TempDir dir;
  auto s = start(dir);
  SpaceClient c({.endpoint = s->rpc_endpoint()});
  std::vector<uint8_t> data = pattern(300'000, 3);
  auto id = c.put_value(data, {.chunk_bytes = 100'000, .in_flight = 2});
  REQUIRE(id.ok());
  auto m = c.get_manifest(*id);
  REQUIRE(m.ok());
  REQUIRE(m->chunks.size() == 3);
  // A manifest naming a chunk that is not stored, or a size that does not add up.
  ContentHash missing = hash_bytes(pattern(10, 9));
  std::vector<ContentHash> bad = m->chunks;
  bad.push_back(missing);
  CHECK(s->values().put_value(300'010, bad).status().code() == Code::kNotFound);
  CHECK(s->values().put_value(299'999, m->chunks).status().code() == Code::kInvalidArgument);
  // A chunk whose file was changed on disk is never served.
  std::string hex = to_hex(m->chunks[1]);
  std::string path = dir.file("space") + "/values/chunks/" + hex.substr(0, 2) + "/" + hex;
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(10);
    f.put('\x42');
  }
  std::vector<uint8_t> out;
  CHECK(c.get_chunk(m->chunks[1], out).code() == Code::kDataLoss);
  // Found damaged, it is absent from then on, until put again.
  Status whole = c.get_value(*id, [](std::span<const uint8_t>) { return Status::Ok(); });
  CHECK(whole.code() == Code::kNotFound);
  CHECK_MESSAGE(whole.message().find("put it again") != std::string::npos, whole.to_string());
}

TEST_CASE("values: made of chunks already stored, asking first which ones the space has") {
  test::TempDir dir;
  auto s = start(dir);
  SpaceClient c({.endpoint = s->rpc_endpoint()});
  // Pages of a first checkpoint, stored as chunks; a second one changes one page and adds one.
  std::vector<std::vector<uint8_t>> pages;
  for (uint64_t i = 0; i < 4; ++i) pages.push_back(pattern(4096, 10 + i));
  std::vector<ContentHash> first;
  for (const auto& page : pages) {
    first.push_back(hash_bytes(page));
    REQUIRE(c.put_chunk(first.back(), page).ok());
  }
  auto v1 = c.put_manifest(4 * 4096, first);
  REQUIRE_MESSAGE(v1.ok(), v1.status().to_string());
  CHECK(*c.put_manifest(4 * 4096, first) == *v1);  // stored once

  std::vector<std::vector<uint8_t>> next = pages;
  next[2] = pattern(4096, 99);
  next.push_back(pattern(100, 100));  // a short last chunk
  std::vector<ContentHash> second;
  for (const auto& page : next) second.push_back(hash_bytes(page));
  auto stored = c.has_chunks(second);
  REQUIRE(stored.ok());
  CHECK(*stored == std::vector<bool>{true, true, false, true, false});
  // Before its missing chunks arrive the value is refused, naming the first of them.
  auto early = c.put_manifest(4 * 4096 + 100, second);
  CHECK(early.status().code() == Code::kNotFound);
  CHECK(early.status().message().find(to_hex(second[2])) != std::string::npos);
  uint64_t bytes_before = s->values().stats().chunk_bytes;
  for (size_t i = 0; i < second.size(); ++i) {
    if (!(*stored)[i]) REQUIRE(c.put_chunk(second[i], next[i]).ok());
  }
  CHECK(s->values().stats().chunk_bytes == bytes_before + 4096 + 100);
  CHECK(c.put_manifest(4 * 4096, second).status().code() == Code::kInvalidArgument);  // size does not add up
  auto v2 = c.put_manifest(4 * 4096 + 100, second);
  REQUIRE_MESSAGE(v2.ok(), v2.status().to_string());
  std::vector<uint8_t> back = read_back(c, *v2);
  std::vector<uint8_t> expected;
  for (const auto& page : next) expected.insert(expected.end(), page.begin(), page.end());
  CHECK(back == expected);

  // More hashes than one call answers for: split into calls, answered in order.
  std::vector<ContentHash> many(kMaxHashesPerCall + 5, hash_bytes(pattern(10, 7)));
  many.back() = first[0];
  auto answers = c.has_chunks(many);
  REQUIRE(answers.ok());
  REQUIRE(answers->size() == many.size());
  CHECK(answers->back());
  CHECK(std::count(answers->begin(), answers->end(), true) == 1);
}

TEST_CASE("values: chunks stored and fetched many a call, in order, checked; the missing named after the rest") {
  test::TempDir dir;
  auto s = start(dir);
  SpaceClient c({.endpoint = s->rpc_endpoint()});
  // Twenty chunks of 1 MiB: more than one call's worth stored, more than one reply's fetched.
  std::vector<std::vector<uint8_t>> chunks;
  std::vector<ContentHash> names;
  std::vector<std::span<const uint8_t>> spans;
  for (uint64_t i = 0; i < 20; ++i) {
    chunks.push_back(pattern(1 << 20, 40 + i));
    names.push_back(hash_bytes(chunks.back()));
  }
  for (const auto& ch : chunks) spans.emplace_back(ch);
  auto put = c.put_chunks(spans, names);
  REQUIRE_MESSAGE(put.ok(), put.status().to_string());
  REQUIRE(put->size() == 20);
  for (const auto& r : *put) CHECK((r.ok() && *r));
  // Again: already there; a chunk under another chunk's name is refused on its own.
  std::vector<ContentHash> wrong = names;
  wrong[1] = names[2];
  auto again = c.put_chunks(std::span(spans).first(3), std::span(wrong).first(3));
  REQUIRE(again.ok());
  CHECK(((*again)[0].ok() && !*(*again)[0]));
  CHECK((*again)[1].status().code() == Code::kInvalidArgument);
  CHECK(((*again)[2].ok() && !*(*again)[2]));
  CHECK(c.put_chunks(spans, std::span(names).first(3)).status().code() == Code::kInvalidArgument);
  std::vector<ContentHash> got;
  Status st = c.get_chunks(names, [&](const ContentHash& h, std::span<const uint8_t> data) {
    size_t k = got.size();
    got.push_back(h);
    CHECK(std::equal(data.begin(), data.end(), chunks[k].begin(), chunks[k].end()));
    return Status::Ok();
  });
  REQUIRE_MESSAGE(st.ok(), st.to_string());
  CHECK(got == names);
  // A chunk not stored: the others still arrive, then NOT_FOUND names it.
  std::vector<ContentHash> some{names[0], hash_bytes(pattern(100, 99)), names[1]};
  got.clear();
  st = c.get_chunks(some, [&](const ContentHash& h, std::span<const uint8_t>) {
    got.push_back(h);
    return Status::Ok();
  });
  CHECK(st.code() == Code::kNotFound);
  CHECK(st.message().find(to_hex(some[1])) != std::string::npos);
  CHECK(got == std::vector<ContentHash>{names[0], names[1]});
  // More hashes than one call takes are refused by the server, split by the client.
  rpc::CallOptions call;
  capnp::MallocMessageBuilder message;
  auto list = message.initRoot<proto::GetChunksParams>().initHashes(kMaxHashesPerCall + 1);
  for (unsigned i = 0; i < list.size(); ++i) list.set(i, capnp::Data::Reader(names[0].data(), 32));
  CHECK(c.rpc().call("space.getChunks", message, call).status().code() == Code::kInvalidArgument);
}

namespace {

// A pack record's header: magic, size, name, XXH3 of the bytes.
constexpr size_t kRecordHeader = 4 + 4 + 32 + 8;

// A store of its own in `dir`, with no collector thread (the tests collect when they mean to).
std::unique_ptr<ValueStore> open_store(const std::string& dir) {
  auto v = ValueStore::open({.dir = dir, .grace = 1h, .gc_interval = 0ms});
  REQUIRE_MESSAGE(v.ok(), v.status().to_string());
  return std::move(*v);
}

// 70 chunk files (over 64 KiB each) put but in no value yet: more than put_value syncs one by
// one, so their value's sync is one syncfs.
struct ChunkFiles {
  std::vector<std::vector<uint8_t>> chunks;
  std::vector<ContentHash> names;
  uint64_t size = 0;
};

ChunkFiles put_chunk_files(ValueStore& v, uint64_t seed) {
  ChunkFiles out;
  for (uint64_t i = 0; i < 70; ++i) {
    out.chunks.push_back(pattern(70'000, seed + i));
    out.names.push_back(hash_bytes(out.chunks.back()));
    out.size += out.chunks.back().size();
    REQUIRE(v.put_chunk(out.names.back(), out.chunks.back()).ok());
  }
  return out;
}

// A call made from another thread at a point while its step is under way: given up to 200 ms to
// finish there, which a call that must wait for the step does not.
class CallInWindow {
 public:
  ~CallInWindow() {
    if (thread_.joinable()) thread_.join();
  }
  void start(std::function<Result<ContentHash>()> call) {
    thread_ = std::thread([this, call = std::move(call)] {
      result_ = call();
      done_ = true;
    });
    for (int i = 0; i < 100 && !done_; ++i) std::this_thread::sleep_for(2ms);
  }
  // Its outcome, once it has finished.
  Result<ContentHash>& result() {
    if (thread_.joinable()) thread_.join();
    REQUIRE(result_.has_value());
    return *result_;
  }

 private:
  std::thread thread_;
  std::optional<Result<ContentHash>> result_;
  std::atomic<bool> done_{false};
};

std::vector<std::filesystem::path> files_under(const std::string& dir) {
  std::vector<std::filesystem::path> out;
  for (auto& f : std::filesystem::recursive_directory_iterator(dir)) {
    if (f.is_regular_file()) out.push_back(f.path());
  }
  return out;
}

// Stores `n` page-sized chunks and a value of them; returns the chunks' names.
std::vector<ContentHash> put_pages(ValueStore& v, uint64_t seed, size_t n, ContentHash* value = nullptr) {
  std::vector<ContentHash> names;
  for (size_t i = 0; i < n; ++i) {
    std::vector<uint8_t> page = pattern(4096, seed + i);
    names.push_back(hash_bytes(page));
    REQUIRE(v.put_chunk(names.back(), page).ok());
  }
  auto id = v.put_value(n * 4096, names);
  REQUIRE_MESSAGE(id.ok(), id.status().to_string());
  if (value) *value = *id;
  return names;
}

void check_pages(const ValueStore& v, uint64_t seed, const std::vector<ContentHash>& names) {
  for (size_t i = 0; i < names.size(); ++i) {
    std::vector<uint8_t> out;
    REQUIRE_MESSAGE(v.get_chunk(names[i], out).ok(), "page " << i);
    CHECK(out == pattern(4096, seed + i));
  }
}

}  // namespace

TEST_CASE("values: page-sized chunks go to pack files, are durable with their value, and read back") {
  test::TempDir dir;
  std::vector<ContentHash> names;
  {
    auto v = open_store(dir.file("values"));
    names = put_pages(*v, 100, 500);
    check_pages(*v, 100, names);
    // Stored again: nothing new.
    CHECK(v->put_chunk(names[7], pattern(4096, 107)).value() == false);
  }
  // A few pack files, not a file per page.
  CHECK(files_under(dir.file("values") + "/chunks").size() == 1);
  auto v = open_store(dir.file("values"));
  CHECK(v->stats().chunks == 500);
  CHECK(v->stats().chunk_bytes == 500 * 4096);
  check_pages(*v, 100, names);
  // Appends after a reopen go on in the same pack (its last record is whole).
  auto more = put_pages(*v, 900, 10);
  CHECK(files_under(dir.file("values") + "/chunks").size() == 1);
  v.reset();
  v = open_store(dir.file("values"));
  check_pages(*v, 900, more);
  check_pages(*v, 100, names);
}

TEST_CASE("values: a pack's torn tail is ignored at open, and a chunk no value names counts as absent") {
  test::TempDir dir;
  std::vector<ContentHash> names;
  ContentHash loose;
  {
    auto v = open_store(dir.file("values"));
    names = put_pages(*v, 200, 20);
    // Put but named by no value: as after a crash before its value was stored.
    std::vector<uint8_t> page = pattern(4096, 999);
    loose = hash_bytes(page);
    REQUIRE(v->put_chunk(loose, page).ok());
  }
  auto packs = files_under(dir.file("values") + "/chunks/packs");
  REQUIRE(packs.size() == 1);
  {
    // A record cut short: its header promises more bytes than follow.
    std::ofstream f(packs[0], std::ios::binary | std::ios::app);
    const char header[8] = {'D', 'J', 'P', 'K', 0, 0x10, 0, 0};
    f.write(header, sizeof header);
    f.write(std::string(100, 'x').data(), 100);
  }
  auto v = open_store(dir.file("values"));
  check_pages(*v, 200, names);
  CHECK(!v->has_chunk(loose));
  // Put again, it is stored in a new pack (none is appended to after a torn tail), and read from
  // there, before and after a reopen.
  std::vector<uint8_t> page = pattern(4096, 999);
  CHECK(v->put_chunk(loose, page).value() == true);
  REQUIRE(v->put_value(4096, std::vector<ContentHash>{loose}).ok());
  CHECK(files_under(dir.file("values") + "/chunks/packs").size() == 2);
  std::vector<uint8_t> out;
  REQUIRE(v->get_chunk(loose, out).ok());
  CHECK(out == page);
  v.reset();
  v = open_store(dir.file("values"));
  REQUIRE(v->get_chunk(loose, out).ok());
  CHECK(out == page);
  check_pages(*v, 200, names);
}

TEST_CASE("values: a chunk recorded twice is read from the record that matches its name") {
  // A crash can leave a record that looks whole but is not: its chunk, named by no value, counts
  // as absent; put again, it gets a second record, and that one is read after the next open too.
  test::TempDir dir;
  std::vector<uint8_t> page = pattern(4096, 4242);
  ContentHash name = hash_bytes(page);
  auto v = open_store(dir.file("values"));
  REQUIRE(v->put_chunk(name, page).ok());
  v.reset();
  auto packs = files_under(dir.file("values") + "/chunks/packs");
  REQUIRE(packs.size() == 1);
  {
    std::fstream f(packs[0], std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(kRecordHeader + 100);  // inside the record's bytes; its header stays whole
    f.put('\x42');
  }
  v = open_store(dir.file("values"));
  CHECK(!v->has_chunk(name));
  REQUIRE(v->put_chunk(name, page).value() == true);
  REQUIRE(v->put_value(4096, std::vector<ContentHash>{name}).ok());
  for (int reopened = 0; reopened < 2; ++reopened) {
    std::vector<uint8_t> out;
    REQUIRE_MESSAGE(v->get_chunk(name, out).ok(), "reopened " << reopened);
    CHECK(out == page);
    CHECK(v->stats().chunk_bytes == 4096);
    v.reset();
    v = open_store(dir.file("values"));
  }
}

TEST_CASE("values: a changed byte in a pack is never served") {
  test::TempDir dir;
  auto v = open_store(dir.file("values"));
  auto names = put_pages(*v, 300, 3);
  auto packs = files_under(dir.file("values") + "/chunks/packs");
  REQUIRE(packs.size() == 1);
  {
    // Ten bytes into the second record's data: after the first record and the second's header.
    std::fstream f(packs[0], std::ios::in | std::ios::out | std::ios::binary);
    f.seekp((kRecordHeader + 4096) + kRecordHeader + 10);
    f.put('\x42');
  }
  std::vector<uint8_t> out;
  CHECK(v->get_chunk(names[1], out).code() == Code::kDataLoss);
  CHECK(v->get_chunk(names[0], out).ok());
  CHECK(v->get_chunk(names[2], out).ok());
}

TEST_CASE("values: a chunk found damaged when read is absent until put again, which repairs its value") {
  test::TempDir dir;
  auto v = open_store(dir.file("values"));
  ContentHash pages_value;
  auto names = put_pages(*v, 310, 3, &pages_value);
  v->ref(pages_value);
  std::vector<uint8_t> big = pattern(100'000, 311);  // over 64 KiB: a file of its own
  ContentHash big_name = hash_bytes(big);
  REQUIRE(v->put_chunk(big_name, big).ok());
  auto big_value = v->put_value(big.size(), std::vector<ContentHash>{big_name});
  REQUIRE(big_value.ok());
  v->ref(*big_value);
  auto packs = files_under(dir.file("values") + "/chunks/packs");
  REQUIRE(packs.size() == 1);
  auto damage = [](const std::filesystem::path& file, std::streamoff at) {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(at);
    char c = static_cast<char>(f.get());
    f.seekp(at);
    f.put(static_cast<char>(c ^ 0x5a));
  };
  damage(packs[0], (kRecordHeader + 4096) + kRecordHeader + 10);  // the second page's bytes
  std::filesystem::path big_file;
  for (const auto& f : files_under(dir.file("values") + "/chunks")) {
    if (f.filename() == to_hex(big_name)) big_file = f;
  }
  REQUIRE(!big_file.empty());
  damage(big_file, 5000);

  std::vector<uint8_t> out;
  CHECK(v->get_chunk(names[1], out).code() == Code::kDataLoss);
  CHECK(v->get_chunk(big_name, out).code() == Code::kDataLoss);
  // Found damaged, they are absent: a put stores them again (it answered "already stored" and
  // wrote nothing before, so the values stayed unreadable for good).
  CHECK(!v->has_chunk(names[1]));
  CHECK(!v->has_chunk(big_name));
  CHECK(v->put_chunk(names[1], pattern(4096, 311)).value() == true);
  CHECK(v->put_chunk(big_name, big).value() == true);
  check_pages(*v, 310, names);
  REQUIRE(v->get_chunk(big_name, out).ok());
  CHECK(out == big);
  // The repaired chunks are durable with their values and survive a collection and a reopen.
  v->collect_now(0ms);
  v.reset();
  v = open_store(dir.file("values"));
  v->ref(pages_value);
  v->ref(*big_value);
  v->collect_now(0ms);
  check_pages(*v, 310, names);
  REQUIRE(v->get_chunk(big_name, out).ok());
  CHECK(out == big);
}

TEST_CASE("values: the collector deletes emptied packs and compacts mostly dead ones") {
  test::TempDir dir;
  auto v = open_store(dir.file("values"));
  ContentHash first, second;
  auto a = put_pages(*v, 400, 300, &first);
  auto b = put_pages(*v, 700, 300, &second);
  v->ref(first);
  v->ref(second);
  auto packs = files_under(dir.file("values") + "/chunks/packs");
  REQUIRE(packs.size() == 1);
  // The first value loses its reference: its pages go, the pack (half of it live) stays as it is.
  v->unref(first);
  v->collect_now(0ms);
  CHECK(!v->has_chunk(a[0]));
  CHECK(files_under(dir.file("values") + "/chunks/packs") == packs);
  check_pages(*v, 700, b);

  // A value naming a tenth of the second one's pages keeps them when the second goes: the pack,
  // a twentieth of it live, is compacted (the live pages copied to a new pack, the old deleted).
  std::vector<ContentHash> kept(b.begin(), b.begin() + 30);
  auto third = v->put_value(30 * 4096, kept);
  REQUIRE(third.ok());
  v->ref(*third);
  v->unref(second);
  v->collect_now(0ms);
  auto after = files_under(dir.file("values") + "/chunks/packs");
  REQUIRE(after.size() == 1);
  CHECK(after[0] != packs[0]);
  CHECK(std::filesystem::file_size(after[0]) == 30 * (kRecordHeader + 4096));
  CHECK(v->stats().chunks == 30);
  check_pages(*v, 700, kept);
  v.reset();
  v = open_store(dir.file("values"));
  check_pages(*v, 700, kept);
  // Nothing refers to the third value after the reopen (no entry restored its reference): all goes.
  v->collect_now(0ms);
  CHECK(files_under(dir.file("values") + "/chunks/packs").empty());
  CHECK(v->stats().chunks == 0);
}

TEST_CASE("values: a pack whose sync failed is sealed, and its unsynced chunks must be put again") {
  test::TempDir dir;
  auto v = open_store(dir.file("values"));
  auto synced = put_pages(*v, 500, 5);  // synced before the failure: these stay
  std::vector<std::vector<uint8_t>> pages;
  std::vector<ContentHash> names;
  for (uint64_t i = 0; i < 5; ++i) {
    pages.push_back(pattern(4096, 600 + i));
    names.push_back(hash_bytes(pages.back()));
    REQUIRE(v->put_chunk(names.back(), pages.back()).ok());
  }
  fault::arm("space.values.pack_sync", fault::Action::kFail);
  auto failed = v->put_value(5 * 4096, names);
  fault::disarm_all();
  REQUIRE(!failed.ok());
  CHECK(failed.status().code() == Code::kInternal);
  // The pack takes nothing more and is renamed so no later start appends to it either.
  auto packs = files_under(dir.file("values") + "/chunks/packs");
  REQUIRE(packs.size() == 1);
  CHECK(packs[0].extension() == ".sealed");
  // Its unsynced chunks count as absent: the value cannot be stored until they are put again.
  CHECK(!v->has_chunk(names[0]));
  CHECK(v->put_value(5 * 4096, names).status().code() == Code::kNotFound);
  for (size_t i = 0; i < pages.size(); ++i) CHECK(v->put_chunk(names[i], pages[i]).value() == true);
  REQUIRE(v->put_value(5 * 4096, names).ok());
  CHECK(files_under(dir.file("values") + "/chunks/packs").size() == 2);
  check_pages(*v, 500, synced);
  check_pages(*v, 600, names);
  // After a reopen: both read, and appends go to a third pack, not to the sealed one.
  v.reset();
  v = open_store(dir.file("values"));
  check_pages(*v, 500, synced);
  check_pages(*v, 600, names);
  put_pages(*v, 700, 1);
  CHECK(std::filesystem::file_size(packs[0]) == 10 * (kRecordHeader + 4096));
}

TEST_CASE("values: compaction does not copy a damaged record; its chunk is absent until put again") {
  test::TempDir dir;
  auto v = open_store(dir.file("values"));
  ContentHash all;
  auto names = put_pages(*v, 800, 300, &all);
  std::vector<ContentHash> kept(names.begin(), names.begin() + 30);
  auto few = v->put_value(30 * 4096, kept);
  REQUIRE(few.ok());
  v->ref(*few);
  auto packs = files_under(dir.file("values") + "/chunks/packs");
  REQUIRE(packs.size() == 1);
  {
    // A byte of the fourth record's bytes changes on disk.
    std::fstream f(packs[0], std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(3 * (kRecordHeader + 4096) + kRecordHeader + 7);
    f.put('\x5a');
  }
  v->collect_now(0ms);  // the value of all 300 goes: the pack is a tenth live, and compacted
  auto after = files_under(dir.file("values") + "/chunks/packs");
  REQUIRE(after.size() == 1);
  CHECK(after[0] != packs[0]);
  CHECK(std::filesystem::file_size(after[0]) == 29 * (kRecordHeader + 4096));
  CHECK(!v->has_chunk(kept[3]));
  std::vector<uint8_t> out;
  CHECK(v->get_chunk(kept[3], out).code() == Code::kNotFound);
  // Put again, it is whole, and the value that names it still keeps it from the collector.
  CHECK(v->put_chunk(kept[3], pattern(4096, 803)).value() == true);
  v->collect_now(0ms);
  check_pages(*v, 800, kept);
  CHECK(v->stats().chunks == 30);
}

TEST_CASE("values: a chunk file whose sync failed must be put again; a chunk lost from disk too") {
  test::TempDir dir;
  auto v = open_store(dir.file("values"));
  std::vector<uint8_t> big = pattern(100'000, 77);  // over 64 KiB: a file of its own
  ContentHash name = hash_bytes(big);
  REQUIRE(v->put_chunk(name, big).ok());
  fault::arm("space.values.file_sync", fault::Action::kFail);
  auto failed = v->put_value(big.size(), std::vector<ContentHash>{name});
  fault::disarm_all();
  REQUIRE(!failed.ok());
  // Syncing it again could return 0 with the write lost: it has to be written again.
  CHECK(!v->has_chunk(name));
  CHECK(v->put_value(big.size(), std::vector<ContentHash>{name}).status().code() == Code::kNotFound);
  CHECK(v->put_chunk(name, big).value() == true);
  auto id = v->put_value(big.size(), std::vector<ContentHash>{name});
  REQUIRE(id.ok());
  v->ref(*id);

  // Pages of a value whose pack is lost from disk: absent after a reopen, the value keeping its
  // references; put again, they are read and stay through a collection.
  ContentHash pages_value;
  auto pages = put_pages(*v, 880, 4, &pages_value);
  v.reset();
  for (const auto& f : files_under(dir.file("values") + "/chunks/packs")) std::filesystem::remove(f);
  v = open_store(dir.file("values"));
  v->ref(pages_value);
  v->ref(*id);
  CHECK(!v->has_chunk(pages[0]));
  std::vector<uint8_t> out;
  CHECK(v->get_chunk(pages[0], out).code() == Code::kNotFound);
  for (uint64_t i = 0; i < pages.size(); ++i) CHECK(v->put_chunk(pages[i], pattern(4096, 880 + i)).value() == true);
  v->collect_now(0ms);
  check_pages(*v, 880, pages);
  REQUIRE(v->get_chunk(name, out).ok());
  CHECK(out == big);
}

TEST_CASE("values: a chunk file and a manifest put again while a collection unlinks them are kept") {
  test::TempDir dir;
  auto v = open_store(dir.file("values"));
  std::vector<uint8_t> big = pattern(100'000, 91);  // a file of its own
  ContentHash name = hash_bytes(big);
  REQUIRE(v->put_chunk(name, big).ok());
  auto id = v->put_value(big.size(), std::vector<ContentHash>{name});
  REQUIRE(id.ok());  // referred to by no entry: the collection below takes the value and its chunk

  // The same chunk and value stored again in the instant between the collection's choice and its
  // unlinks: the put waits for the unlinks instead of losing its files to them.
  CallInWindow again;
  fault::arm_call("space.values.collect_unlink", [&] {
    again.start([&] {
      (void)v->put_chunk(name, big);
      return v->put_value(big.size(), std::vector<ContentHash>{name});
    });
  });
  CHECK(v->collect_now(0ms) == 2);
  fault::disarm_all();
  Result<ContentHash>& again_id = again.result();
  REQUIRE_MESSAGE(again_id.ok(), again_id.status().to_string());
  CHECK(*again_id == *id);
  v->ref(*id);
  for (int reopen = 0; reopen < 2; ++reopen) {
    std::vector<uint8_t> out;
    REQUIRE(v->get_chunk(name, out).ok());
    CHECK(out == big);
    CHECK(v->get_value(*id).ok());
    v.reset();
    v = open_store(dir.file("values"));
    v->ref(*id);
  }
}

TEST_CASE("values: a failed sync of a chunk file leaves it absent to another value's sync at the same moment") {
  test::TempDir dir;
  auto v = open_store(dir.file("values"));
  std::vector<uint8_t> big = pattern(100'000, 92);
  ContentHash name = hash_bytes(big);
  REQUIRE(v->put_chunk(name, big).ok());
  // Another value naming the chunk is stored while the failed sync is still being handled: its
  // own sync would return 0 (the error is reported once), so it must find the chunk absent.
  CallInWindow other;
  fault::arm("space.values.file_sync", fault::Action::kFail);
  fault::arm_call("space.values.file_sync_failed", [&] {
    other.start([&] { return v->put_value(2 * big.size(), std::vector<ContentHash>{name, name}); });
  });
  auto failed = v->put_value(big.size(), std::vector<ContentHash>{name});
  fault::disarm_all();
  CHECK(!failed.ok());
  CHECK(other.result().status().code() == Code::kNotFound);
  CHECK(!v->has_chunk(name));
  // Put again, both values are stored.
  CHECK(v->put_chunk(name, big).value() == true);
  CHECK(v->put_value(big.size(), std::vector<ContentHash>{name}).ok());
  CHECK(v->put_value(2 * big.size(), std::vector<ContentHash>{name, name}).ok());
}

TEST_CASE("values: a failed syncfs leaves every chunk file not yet synced absent, another upload's too") {
  test::TempDir dir;
  auto v = open_store(dir.file("values"));
  ChunkFiles files = put_chunk_files(*v, 200);
  auto& [chunks, names, size] = files;
  // A chunk of another upload, not yet part of a value: the file system's error may have been its.
  std::vector<uint8_t> bystander = pattern(90'000, 300);
  ContentHash bystander_name = hash_bytes(bystander);
  REQUIRE(v->put_chunk(bystander_name, bystander).ok());
  fault::arm("space.values.file_sync", fault::Action::kFail);
  auto failed = v->put_value(size, names);
  fault::disarm_all();
  CHECK(!failed.ok());
  CHECK(!v->has_chunk(names[0]));
  CHECK(!v->has_chunk(names[69]));
  CHECK(!v->has_chunk(bystander_name));
  CHECK(v->put_value(bystander.size(), std::vector<ContentHash>{bystander_name}).status().code() == Code::kNotFound);
  // Put again, they are stored and read back.
  for (size_t i = 0; i < chunks.size(); ++i) CHECK(v->put_chunk(names[i], chunks[i]).value() == true);
  CHECK(v->put_chunk(bystander_name, bystander).value() == true);
  auto id = v->put_value(size, names);
  REQUIRE_MESSAGE(id.ok(), id.status().to_string());
  REQUIRE(v->put_value(bystander.size(), std::vector<ContentHash>{bystander_name}).ok());
  std::vector<uint8_t> out;
  REQUIRE(v->get_chunk(names[33], out).ok());
  CHECK(out == chunks[33]);
}

TEST_CASE("values: a manifest stored again while a collection unlinks it is kept") {
  test::TempDir dir;
  auto v = open_store(dir.file("values"));
  std::vector<uint8_t> big = pattern(100'000, 93);
  ContentHash name = hash_bytes(big);
  REQUIRE(v->put_chunk(name, big).ok());
  auto kept = v->put_value(2 * big.size(), std::vector<ContentHash>{name, name});
  REQUIRE(kept.ok());
  v->ref(*kept);  // keeps the chunk: the collection takes only the other value's manifest
  auto id = v->put_value(big.size(), std::vector<ContentHash>{name});
  REQUIRE(id.ok());
  CallInWindow again;
  fault::arm_call("space.values.collect_unlink", [&] {
    again.start([&] { return v->put_value(big.size(), std::vector<ContentHash>{name}); });
  });
  CHECK(v->collect_now(0ms) == 1);
  fault::disarm_all();
  REQUIRE_MESSAGE(again.result().ok(), again.result().status().to_string());
  v->ref(*id);
  CHECK(v->get_value(*id).ok());
  v.reset();
  v = open_store(dir.file("values"));
  CHECK(v->get_value(*id).ok());
}

TEST_CASE("values: a chunk file written while a syncfs fails must be put again") {
  test::TempDir dir;
  auto v = open_store(dir.file("values"));
  ChunkFiles files = put_chunk_files(*v, 400);
  auto& [chunks, names, size] = files;
  // Written to its temporary file, not yet renamed, when another upload's syncfs fails: that
  // syncfs may have met this file's lost write-back, and no later sync would say so.
  std::vector<uint8_t> late = pattern(80'000, 500);
  ContentHash late_name = hash_bytes(late);
  std::optional<Result<ContentHash>> failed;
  fault::arm_call("space.values.before_rename", [&] {
    fault::arm("space.values.file_sync", fault::Action::kFail);
    failed = v->put_value(size, names);
  });
  auto put = v->put_chunk(late_name, late);
  fault::disarm_all();
  REQUIRE(failed.has_value());
  CHECK(!failed->ok());
  CHECK(put.status().code() == Code::kUnavailable);
  CHECK(!v->has_chunk(late_name));
  CHECK(v->put_chunk(late_name, late).value() == true);
  CHECK(v->put_value(late.size(), std::vector<ContentHash>{late_name}).ok());
}

TEST_CASE("values: a put of a chunk file that lost a race leaves the synced file in place") {
  test::TempDir dir;
  auto v = open_store(dir.file("values"));
  std::vector<uint8_t> big = pattern(100'000, 94);
  ContentHash name = hash_bytes(big);
  std::string hex = to_hex(name);
  std::filesystem::path path = std::filesystem::path(dir.file("values")) / "chunks" / hex.substr(0, 2) / hex;
  // While this put is between its write and its rename, another stores the chunk and a value
  // naming it, which syncs that file.
  ino_t synced_inode = 0;
  fault::arm_call("space.values.before_rename", [&] {
    REQUIRE(v->put_chunk(name, big).value() == true);
    REQUIRE(v->put_value(big.size(), std::vector<ContentHash>{name}).ok());
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    synced_inode = st.st_ino;
  });
  CHECK(v->put_chunk(name, big).value() == false);
  fault::disarm_all();
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK(st.st_ino == synced_inode);
  for (const auto& f : files_under(dir.file("values") + "/chunks")) {
    CHECK_MESSAGE(f.filename().string().rfind(".tmp-", 0) != 0, f.string());
  }
}

TEST_CASE("values: a failed fdatasync makes absent its own chunk only") {
  test::TempDir dir;
  auto v = open_store(dir.file("values"));
  std::vector<std::vector<uint8_t>> chunks = {pattern(100'000, 95), pattern(100'000, 96)};
  std::vector<ContentHash> names = {hash_bytes(chunks[0]), hash_bytes(chunks[1])};
  for (size_t i = 0; i < 2; ++i) REQUIRE(v->put_chunk(names[i], chunks[i]).ok());
  fault::arm("space.values.file_sync", fault::Action::kFail);  // the first of the two syncs
  CHECK(!v->put_value(200'000, names).ok());
  fault::disarm_all();
  // The other was synced or not tried, and no error of its was seen: it stays.
  CHECK(v->has_chunk(names[0]) != v->has_chunk(names[1]));
  for (size_t i = 0; i < 2; ++i) {
    if (!v->has_chunk(names[i])) CHECK(v->put_chunk(names[i], chunks[i]).value() == true);
  }
  auto id = v->put_value(200'000, names);
  REQUIRE_MESSAGE(id.ok(), id.status().to_string());
  v->ref(*id);
  v.reset();
  v = open_store(dir.file("values"));
  std::vector<uint8_t> out;
  for (size_t i = 0; i < 2; ++i) {
    REQUIRE(v->get_chunk(names[i], out).ok());
    CHECK(out == chunks[i]);
  }
}

TEST_CASE("values: an open whose sync of what it found fails is refused, saying so") {
  test::TempDir dir;
  {
    auto v = open_store(dir.file("values"));
    std::vector<uint8_t> big = pattern(100'000, 97);
    REQUIRE(v->put_chunk(hash_bytes(big), big).ok());
  }
  fault::arm("space.values.open_sync", fault::Action::kFail);
  auto refused = ValueStore::open({.dir = dir.file("values"), .grace = 1h, .gc_interval = 0ms});
  fault::disarm_all();
  REQUIRE(!refused.ok());
  CHECK(refused.status().code() == Code::kFailedPrecondition);
  CHECK(refused.status().message().find("check it before opening the store again") != std::string::npos);
  CHECK(ValueStore::open({.dir = dir.file("values"), .grace = 1h, .gc_interval = 0ms}).ok());
}

TEST_CASE("values: an open that cannot read a manifest is refused, and its value's chunks stay") {
  test::TempDir dir;
  std::vector<uint8_t> big = pattern(100'000, 98);
  ContentHash name = hash_bytes(big);
  ContentHash id{};
  {
    auto v = open_store(dir.file("values"));
    REQUIRE(v->put_chunk(name, big).ok());
    auto stored = v->put_value(big.size(), std::vector<ContentHash>{name});
    REQUIRE(stored.ok());
    id = *stored;
  }
  // An I/O error reading the manifest (injected): opened anyway, the value's chunk would be named
  // by nothing and collected, though the manifest is whole on disk.
  fault::arm("space.values.manifest_read", fault::Action::kFail);
  auto refused = ValueStore::open({.dir = dir.file("values"), .grace = 0ms, .gc_interval = 0ms});
  fault::disarm_all();
  if (refused.ok()) (*refused)->collect_now(0ms);
  REQUIRE(!refused.ok());
  CHECK(refused.status().code() == Code::kFailedPrecondition);
  CHECK_MESSAGE(refused.status().message().find("cannot read value manifest") != std::string::npos,
                refused.status().to_string());
  auto v = open_store(dir.file("values"));
  v->ref(id);
  v->collect_now(0ms);
  std::vector<uint8_t> out;
  REQUIRE(v->get_chunk(name, out).ok());
  CHECK(out == big);
}

TEST_CASE("values: a manifest whose put failed after its rename is not served as a value") {
  test::TempDir dir;
  auto v = open_store(dir.file("values"));
  std::vector<uint8_t> page = pattern(4096, 99);
  ContentHash name = hash_bytes(page);
  REQUIRE(v->put_chunk(name, page).ok());
  fault::arm("space.values.manifest_dir_sync", fault::Action::kFail);
  auto failed = v->put_value(page.size(), std::vector<ContentHash>{name});
  fault::disarm_all();
  REQUIRE(!failed.ok());
  // The manifest's file is in place, but the put failed: its chunks are referenced by nothing and
  // may go, so the manifest is not served (it was, from the file).
  Manifest m;
  m.size = page.size();
  m.chunks = {name};
  m.chunk_sizes = {4096};
  const ContentHash id = value_id_of(m);
  CHECK(!v->has_value(id));
  CHECK(v->get_value(id).status().code() == Code::kNotFound);
  // Put again, it is a value.
  auto again = v->put_value(page.size(), std::vector<ContentHash>{name});
  REQUIRE(again.ok());
  CHECK(*again == id);
  CHECK(v->get_value(id).ok());
}

TEST_CASE("values: a collection runs only once its owner has made the references' ends durable") {
  test::TempDir dir;
  Status sync = unavailable("fdatasync space.db-wal: no space left on device");
  int calls = 0;
  auto opened = ValueStore::open({.dir = dir.file("values"), .grace = 1h, .gc_interval = 0ms,
                                  .before_collect = [&] { ++calls; return sync; }});
  REQUIRE(opened.ok());
  auto v = std::move(*opened);
  std::vector<uint8_t> data(5000, 9);
  ContentHash chunk = hash_bytes(data);
  REQUIRE(v->put_chunk(chunk, data).ok());
  auto value = v->put_value(data.size(), std::vector<ContentHash>{chunk});
  REQUIRE(value.ok());
  CHECK(v->collect_now(0ms) == 0);  // the sync failed: nothing goes
  CHECK(calls == 1);
  CHECK(v->has_value(*value));
  sync = Status::Ok();
  CHECK(v->collect_now(0ms) > 0);
  CHECK(calls == 2);
  CHECK(!v->has_value(*value));
}

TEST_CASE("files: a directory made with its parents is synced into each") {
  test::TempDir dir;
  std::string deep = dir.file("a/b/c");
  REQUIRE(files::create_directories_synced(deep).ok());
  CHECK(std::filesystem::is_directory(deep));
  CHECK(files::create_directories_synced(deep).ok());  // there already
  CHECK(files::sync_file(dir.file("a/none")).ok());     // nothing to sync
  std::string blocked = dir.file("a/file");
  { std::ofstream(blocked) << "x"; }
  CHECK(!files::create_directories_synced(blocked + "/d").ok());
}

TEST_CASE("values: a chunk asked about keeps its grace when the last value naming it is collected") {
  test::TempDir dir;
  auto store = open_store(dir.file("values"));
  auto a = pattern(5000, 1), b = pattern(5000, 2);
  ContentHash ha = hash_bytes(a), hb = hash_bytes(b);
  REQUIRE(store->put_chunk(ha, a).ok());
  REQUIRE(store->put_chunk(hb, b).ok());
  std::vector<ContentHash> both{ha, hb};
  auto old = store->put_value(10000, both);
  REQUIRE(old.ok());
  std::this_thread::sleep_for(300ms);
  // A new checkpoint asks which pages the space holds, then names the one it found. Meanwhile the
  // old value, unreferenced past the grace period, is collected: the chunk just asked about stays.
  REQUIRE(store->has_chunk(ha));
  CHECK(store->collect_now(200ms) >= 2);  // the old value and chunk b
  CHECK(!store->has_value(*old));
  CHECK(!store->has_chunk(hb));
  std::vector<ContentHash> one{ha};
  auto next = store->put_value(5000, one);
  CHECK_MESSAGE(next.ok(), next.status().to_string());
}

TEST_CASE("values: a manifest of the most chunks a value may name fits in one call; one more is refused") {
  test::TempDir dir;
  auto s = start(dir);
  SpaceClient c({.endpoint = s->rpc_endpoint()});
  std::vector<ContentHash> names(kMaxValueChunks);
  for (size_t i = 0; i < names.size(); ++i) std::memcpy(names[i].data(), &i, sizeof i);
  auto most = c.put_manifest(names.size() * 4096, names);
  CHECK_MESSAGE(most.status().code() == Code::kNotFound, most.status().to_string());  // reached the store
  names.push_back(names.front());
  auto over = c.put_manifest(names.size() * 4096, names);
  CHECK(over.status().code() == Code::kInvalidArgument);
  CHECK(over.status().message().find("at most " + std::to_string(kMaxValueChunks)) != std::string::npos);
}

TEST_CASE("values: a store at its byte limit refuses chunks and manifests, stores nothing, and takes them once collected") {
  test::TempDir dir;
  constexpr uint64_t kManifestOf3 = 16 + 3 * 36;
  auto opened = ValueStore::open({.dir = dir.file("values"), .grace = 1h, .gc_interval = 0ms, .max_bytes = 3 * 65536 + kManifestOf3});
  REQUIRE(opened.ok());
  ValueStore& v = **opened;
  std::vector<std::vector<uint8_t>> chunks;
  std::vector<ContentHash> names;
  for (int i = 0; i < 4; ++i) {
    chunks.push_back(pattern(65536, 40 + i));  // page-sized: records in a pack
    names.push_back(hash_bytes(chunks.back()));
  }
  for (int i = 0; i < 3; ++i) REQUIRE(v.put_chunk(names[i], chunks[i]).ok());
  auto over = v.put_chunk(names[3], chunks[3]);
  CHECK(over.status().code() == Code::kResourceExhausted);
  CHECK(over.status().message().find("--max-value-bytes") != std::string::npos);
  CHECK(!v.has_chunk(names[3]));
  CHECK(v.put_chunk(names[0], chunks[0]).value() == false);  // stored already: no room needed
  // The manifest of the three fits exactly; another order of them is another manifest, refused.
  std::vector<ContentHash> three(names.begin(), names.begin() + 3);
  auto id = v.put_value(3 * 65536, three);
  REQUIRE_MESSAGE(id.ok(), id.status().to_string());
  std::swap(three[0], three[1]);
  auto second = v.put_value(3 * 65536, three);
  CHECK(second.status().code() == Code::kResourceExhausted);
  ValueStats full = v.stats();
  CHECK(full.values == 1);
  CHECK(full.chunk_bytes + full.manifest_bytes == full.max_bytes);
  // Collected (nothing refers to them), the room is free again.
  v.collect_now(0ms);
  CHECK(v.stats().chunk_bytes + v.stats().manifest_bytes == 0);
  CHECK(v.put_chunk(names[3], chunks[3]).ok());
}

TEST_CASE("values: a chunk counted already (found at open, named by nothing) is put again at the limit") {
  test::TempDir dir;
  const ValueStoreOptions options{.dir = dir.file("values"), .grace = 1h, .gc_interval = 0ms, .max_bytes = 2 * 65536};
  std::vector<uint8_t> a = pattern(65536, 60), b = pattern(65536, 61), c = pattern(65536, 62);
  {
    auto v = ValueStore::open(options);
    REQUIRE(v.ok());
    REQUIRE((*v)->put_chunk(hash_bytes(a), a).ok());
    REQUIRE((*v)->put_chunk(hash_bytes(b), b).ok());
  }
  // Reopened, both count and are absent until put again (no value names them).
  auto v = ValueStore::open(options);
  REQUIRE(v.ok());
  CHECK(!(*v)->has_chunk(hash_bytes(a)));
  CHECK((*v)->stats().chunk_bytes == 2 * 65536);
  auto again = (*v)->put_chunk(hash_bytes(a), a);
  CHECK_MESSAGE(again.ok(), again.status().to_string());
  CHECK((*v)->has_chunk(hash_bytes(a)));
  CHECK((*v)->put_chunk(hash_bytes(c), c).status().code() == Code::kResourceExhausted);
  CHECK((*v)->stats().chunk_bytes == 2 * 65536);
}

TEST_CASE("values: concurrent puts never take the store past its byte limit together") {
  test::TempDir dir;
  constexpr uint64_t kLimit = 10 * 100'000;
  auto opened = ValueStore::open({.dir = dir.file("values"), .grace = 1h, .gc_interval = 0ms, .max_bytes = kLimit});
  REQUIRE(opened.ok());
  ValueStore& v = **opened;
  std::atomic<int> stored{0}, refused{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 4; ++i) {
        std::vector<uint8_t> chunk = pattern(100'000, 1000 + t * 10 + i);  // files, written outside the lock
        auto r = v.put_chunk(hash_bytes(chunk), chunk);
        if (r.ok()) ++stored;
        else if (r.status().code() == Code::kResourceExhausted) ++refused;
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(stored.load() == 10);
  CHECK(refused.load() == 22);
  CHECK(v.stats().chunk_bytes == kLimit);
}

TEST_CASE("values: djinn-space's value limit refuses an upload past it and says so in its stats") {
  test::TempDir dir;
  auto s = start(dir, [](SpaceServiceOptions& o) { o.max_value_bytes = 1'000'000; });
  SpaceClient c({.endpoint = s->rpc_endpoint()});
  auto small = c.put_value(pattern(500'000, 5));
  REQUIRE_MESSAGE(small.ok(), small.status().to_string());
  auto big = c.put_value(pattern(600'000, 6));
  CHECK(big.status().code() == Code::kResourceExhausted);
  auto st = c.stats();
  REQUIRE(st.ok());
  CHECK(st->chunk_bytes == 500'000);
  CHECK(st->manifest_bytes == 16 + 36);
  CHECK(st->max_value_bytes == 1'000'000);
}

TEST_CASE("values: collections sweeping in slices while chunks and values are put keep all that is named") {
  // Tables of 20,000 chunks span several slices of the sweep, and grow (rehash) between them.
  test::TempDir dir;
  auto opened = ValueStore::open({.dir = dir.file("values"), .grace = 2s, .gc_interval = 0ms});
  REQUIRE(opened.ok());
  ValueStore& v = **opened;
  std::atomic<bool> putting{true};
  std::thread collector([&] {
    while (putting) v.collect_now(2s);
  });
  constexpr int kThreads = 4, kValues = 10, kPages = 500;
  std::vector<std::vector<ContentHash>> values(kThreads);
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; ++t) {
    writers.emplace_back([&, t] {
      for (int n = 0; n < kValues; ++n) {
        std::vector<ContentHash> names;
        for (int i = 0; i < kPages; ++i) {
          uint64_t x = (static_cast<uint64_t>(t) << 32) | (n * kPages + i);
          std::span<const uint8_t> page(reinterpret_cast<const uint8_t*>(&x), sizeof x);
          names.push_back(hash_bytes(page));
          REQUIRE(v.put_chunk_hashed(names.back(), page).ok());
        }
        auto id = v.put_value(kPages * sizeof(uint64_t), names);
        REQUIRE_MESSAGE(id.ok(), id.status().to_string());
        v.ref(*id);  // as an entry naming it
        values[t].push_back(*id);
      }
    });
  }
  for (auto& w : writers) w.join();
  putting = false;
  collector.join();
  CHECK(v.stats().chunks == kThreads * kValues * kPages);
  // Past the grace, a collection takes what nothing names any more, and only that.
  for (int t = 0; t < kThreads; t += 2) {
    for (const ContentHash& id : values[t]) v.unref(id);
  }
  CHECK(v.collect_now(0ms) == 2 * kValues * (1 + kPages));  // the values and their chunks
  for (int t = 0; t < kThreads; ++t) {
    for (const ContentHash& id : values[t]) CHECK(v.has_value(id) == (t % 2 == 1));
  }
  CHECK(v.stats().chunks == kThreads / 2 * kValues * kPages);
  std::vector<uint8_t> page;
  for (const ContentHash& id : values[1]) {
    auto m = v.get_value(id);
    REQUIRE(m.ok());
    for (const ContentHash& c : m->chunks) REQUIRE(v.get_chunk(c, page).ok());
  }
}
