// The object segment's header in the heap's first bytes, and attaching a segment to a heap.
#include "djinn/heapstore/heap_objects.h"

#include <algorithm>
#include <cstring>

namespace djinn::heapstore {
namespace {

// The first bytes of a heap that holds objects. The segment follows it in the same page, so the
// header, Boost's segment manager and its index of named objects share the pinned system page.
struct SegmentHeader {
  char magic[16];
  uint64_t segment_offset;
  uint64_t segment_size;
};
constexpr char kMagic[16] = "djinn.objects/1";
constexpr uint64_t kSegmentOffset = 64;
static_assert(sizeof(SegmentHeader) <= kSegmentOffset);

}  // namespace

Result<std::unique_ptr<Objects>> Objects::attach(Heap& heap) {
  if (heap.size() < 64 * 1024) {
    return invalid_argument("a heap holding objects needs at least 64 KiB, not " + std::to_string(heap.size()) +
                            " bytes");
  }
  DJINN_RETURN_IF_ERROR(heap.pin(0, heap.page_size(), PageType::kSystem));
  auto* header = reinterpret_cast<SegmentHeader*>(heap.base());
  const auto* bytes = reinterpret_cast<const unsigned char*>(header);
  bool fresh = std::all_of(bytes, bytes + kSegmentOffset, [](unsigned char b) { return b == 0; });
  try {
    if (fresh) {
      uint64_t size = heap.size() - kSegmentOffset;
      HeapSegment segment(boost::interprocess::create_only, heap.base() + kSegmentOffset, size);
      std::memcpy(header->magic, kMagic, sizeof kMagic);
      header->segment_offset = kSegmentOffset;
      header->segment_size = size;
      return std::unique_ptr<Objects>(new Objects(heap, std::move(segment)));
    }
    if (std::memcmp(header->magic, kMagic, sizeof kMagic) != 0) {
      return failed_precondition("the heap holds no object segment: its first bytes are neither zero nor a "
                                 "segment header");
    }
    if (header->segment_offset != kSegmentOffset || header->segment_size != heap.size() - kSegmentOffset) {
      return data_loss("the heap's object segment header says " + std::to_string(header->segment_size) +
                       " bytes at offset " + std::to_string(header->segment_offset) + "; the heap has " +
                       std::to_string(heap.size()) + " bytes");
    }
    HeapSegment segment(boost::interprocess::open_only, heap.base() + kSegmentOffset, header->segment_size);
    return std::unique_ptr<Objects>(new Objects(heap, std::move(segment)));
  } catch (const std::exception& e) {
    return internal_error(std::string("attaching the object segment: ") + e.what());
  }
}

}  // namespace djinn::heapstore
