// Large values in the space: chunks stored once, values referred to by entries, garbage collection
// of what nothing refers to, tampered and missing chunks, and a value streamed through a client in
// both directions with several chunks in flight.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

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

std::unique_ptr<SpaceService> start(const test::TempDir& dir) {
  SpaceServiceOptions o;
  o.data_dir = dir.file("space");
  o.value_gc_interval = std::chrono::milliseconds(0);
  o.value_grace = 1h;
  o.value_gc_interval = std::chrono::hours(1);
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
  std::vector<uint8_t> back;
  REQUIRE(c.get_value(*id, [&](std::span<const uint8_t> b) {
    back.insert(back.end(), b.begin(), b.end());
    return Status::Ok();
  }, small).ok());
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
  Status whole = c.get_value(*id, [](std::span<const uint8_t>) { return Status::Ok(); });
  CHECK(whole.code() == Code::kDataLoss);
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
  std::vector<uint8_t> back;
  REQUIRE(c.get_value(*v2, [&](std::span<const uint8_t> b) {
    back.insert(back.end(), b.begin(), b.end());
    return Status::Ok();
  }).ok());
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
