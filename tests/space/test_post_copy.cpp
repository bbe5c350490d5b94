// A heap that moves through the space (DESIGN §9, post-copy): the sending node stores its heap's
// pages in the space as chunks named by their hashes (a page's hash is its chunk's name: both
// BLAKE2b-256), a value made of them and its manifest as values, and an entry referring to both;
// the receiving node reads the manifest back and runs the heap at once, its pages fetched from the
// space over RPC as they are touched, then the rest, and checkpoints it as its own.
#include <doctest/doctest.h>

#include <cstring>
#include <random>

#include "djinn/heapstore/heap.h"
#include "djinn/heapstore/page_store.h"
#include "djinn/space/client.h"
#include "djinn/space/service.h"
#include "support/test_support.h"

using namespace djinn;
using namespace djinn::space;
using namespace djinn::heapstore;
using namespace std::chrono_literals;

namespace {

constexpr size_t kPage = 4096;

ContentHash chunk_name(const PageHash& h) {
  ContentHash c;
  std::memcpy(c.data(), h.bytes.data(), c.size());
  return c;
}

// The receiving node's PageSource: the space, many pages a call.
struct SpacePages : PageSource {
  explicit SpacePages(SpaceClient& space) : space(space) {}
  Status fetch(std::span<const PageHash> hashes, const Deliver& deliver) override {
    ++calls;
    std::vector<ContentHash> names;
    names.reserve(hashes.size());
    for (const PageHash& h : hashes) names.push_back(chunk_name(h));
    return space.get_chunks(names, [&](const ContentHash& name, std::span<const uint8_t> data) {
      PageHash h;
      std::memcpy(h.bytes.data(), name.data(), name.size());
      return deliver(h, std::as_bytes(data));
    });
  }
  SpaceClient& space;
  std::atomic<int> calls{0};
};

}  // namespace

TEST_CASE("post-copy through the space: pages as chunks, the heap running before they all arrive") {
  test::TempDir dir;
  SpaceServiceOptions so;
  so.data_dir = dir.file("space");
  auto service = SpaceService::start(so);
  REQUIRE_MESSAGE(service.ok(), service.status().to_string());
  SpaceClient space({.endpoint = (*service)->rpc_endpoint()});

  // The sending node: a heap of 512 pages, every one written, checkpointed.
  auto sender = PageStore::open(dir.path() / "sender", {.compression_level = 0, .durable = false});
  REQUIRE(sender.ok());
  const size_t size = 512 * kPage;
  std::vector<std::byte> image(size);
  uint64_t version = 0;
  {
    auto heap = Heap::open(**sender, 0, {.capacity_bytes = size, .budget_bytes = size});
    REQUIRE(heap.ok());
    std::mt19937_64 gen(7);
    for (size_t off = 0; off < size; off += 8) {
      uint64_t w = gen();
      std::memcpy((*heap)->base() + off, &w, 8);
      std::memcpy(image.data() + off, &w, 8);
    }
    auto v = (*heap)->checkpoint("app record");
    REQUIRE(v.ok());
    version = v->version;
  }
  // To the space: each page a chunk (only those the space lacks), a value of them, the manifest.
  heapstore::Manifest m = *(*sender)->manifest(version);
  std::vector<ContentHash> names;
  for (const PageRef& p : m.pages) names.push_back(chunk_name(p.hash));
  auto stored = space.has_chunks(names);
  REQUIRE(stored.ok());
  std::vector<std::byte> pages(m.pages.size() * kPage);
  std::vector<std::span<const uint8_t>> lacking;
  std::vector<ContentHash> lacking_names;
  for (size_t i = 0; i < m.pages.size(); ++i) {
    if ((*stored)[i]) continue;
    std::span<std::byte> page(pages.data() + i * kPage, kPage);
    REQUIRE((*sender)->read_page(m.pages[i].hash, page).ok());
    lacking.emplace_back(reinterpret_cast<const uint8_t*>(page.data()), kPage);
    lacking_names.push_back(names[i]);
  }
  auto put = space.put_chunks(lacking, lacking_names);
  REQUIRE(put.ok());
  for (const auto& r : *put) REQUIRE(r.ok());
  auto pages_value = space.put_manifest(names.size() * kPage, names);
  REQUIRE_MESSAGE(pages_value.ok(), pages_value.status().to_string());
  std::vector<uint8_t> manifest_bytes = manifest_to_bytes(m);
  auto manifest_value = space.put_value(manifest_bytes);
  REQUIRE(manifest_value.ok());
  Entry checkpoint;
  checkpoint.type = "demo.Checkpoint";
  checkpoint.fields["app"] = Value("counter");
  checkpoint.fields["pages"] = value_ref(*pages_value);
  checkpoint.fields["manifest"] = value_ref(*manifest_value);
  REQUIRE(space.write(checkpoint, 600'000).ok());

  // The receiving node: the manifest from the space, the heap at once, pages as touched.
  auto found = space.read_if_exists(Template{"demo.Checkpoint", {{"app", Value("counter")}}});
  REQUIRE(found.ok());
  REQUIRE(found->has_value());
  std::optional<ContentHash> mid = value_ref_of(*(*found)->field("manifest"));
  REQUIRE(mid.has_value());
  std::vector<uint8_t> got;
  REQUIRE(space.get_value(*mid, [&](std::span<const uint8_t> b) {
    got.insert(got.end(), b.begin(), b.end());
    return Status::Ok();
  }).ok());
  Result<heapstore::Manifest> received = manifest_from_bytes(got);
  REQUIRE(received.ok());
  auto receiver = PageStore::open(dir.path() / "receiver", {.compression_level = 0, .durable = false});
  REQUIRE(receiver.ok());
  SpacePages source(space);
  auto heap = Heap::open_incoming(**receiver, *received, source, {.budget_bytes = size});
  REQUIRE_MESSAGE(heap.ok(), heap.status().to_string());
  CHECK((*heap)->record() == "app record");
  auto same = [&](size_t p) { return std::memcmp((*heap)->base() + p * kPage, image.data() + p * kPage, kPage) == 0; };
  CHECK(same(300));
  CHECK(same(7));
  CHECK(source.calls >= 1);
  CHECK(source.calls <= 2);  // a fetch for each touch at most: a run's pages come together
  CHECK((*heap)->stats().pages_fetched < 512);
  CHECK((*heap)->incoming());
  auto arrived = (*heap)->fetch_rest();
  REQUIRE_MESSAGE(arrived.ok(), arrived.status().to_string());
  CHECK(arrived->pages == 512);
  for (size_t p = 0; p < 512; ++p) {
    if (!same(p)) {
      FAIL_CHECK("page ", p, " differs after the move");
      break;
    }
  }
  auto next = (*heap)->checkpoint("app record, moved");
  REQUIRE(next.ok());
  CHECK(next->parent == arrived->version);
  CHECK(next->pages_written == 0);
}
