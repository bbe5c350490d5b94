// libFuzzer target for the heap store's manifest bytes (heapstore::manifest_from_bytes), which a
// node reads from the space or from another node when a heap migrates to it: whatever the input,
// a clear status or a manifest that encodes back to bytes that decode to the same manifest.
// Seeds: fuzz/corpus/manifest/.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "djinn/heapstore/page_store.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using djinn::heapstore::Manifest;
  djinn::Result<Manifest> m = djinn::heapstore::manifest_from_bytes(std::span<const uint8_t>(data, size));
  if (!m.ok()) {
    if (m.status().code() != djinn::Code::kInvalidArgument) std::abort();
    return 0;
  }
  djinn::Result<Manifest> again = djinn::heapstore::manifest_from_bytes(djinn::heapstore::manifest_to_bytes(*m));
  if (!again.ok() || again->pages != m->pages || again->record != m->record ||
      again->info.page_size != m->info.page_size || again->info.capacity_pages != m->info.capacity_pages ||
      again->info.pages != m->info.pages || again->info.version != m->info.version) {
    std::abort();
  }
  return 0;
}
