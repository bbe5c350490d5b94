// ScratchArena: a monotonic buffer resource over a buffer reused from call to call.
#include <algorithm>

#include "djinn/heapstore/scratch_arena.h"

namespace djinn::heapstore {

ScratchArena::ScratchArena(size_t initial_bytes)
    : capacity_(std::max<size_t>(initial_bytes, 256)), buffer_(new std::byte[capacity_]) {
  monotonic_.emplace(buffer_.get(), capacity_, &upstream_);
}

void ScratchArena::reset() {
  monotonic_.reset();  // returns what it took beyond the buffer
  if (overflow_ > 0) {
    // A quarter more than the call used, for the alignment padding and the next call's growth.
    capacity_ = std::max(capacity_ * 2, used_ + used_ / 4);
    buffer_.reset(new std::byte[capacity_]);
  }
  used_ = 0;
  overflow_ = 0;
  monotonic_.emplace(buffer_.get(), capacity_, &upstream_);
}

void* ScratchArena::Counting::do_allocate(size_t bytes, size_t align) {
  arena_.overflow_ += bytes;
  return std::pmr::new_delete_resource()->allocate(bytes, align);
}

void ScratchArena::Counting::do_deallocate(void* p, size_t bytes, size_t align) {
  std::pmr::new_delete_resource()->deallocate(p, bytes, align);
}

void* ScratchArena::Tracking::do_allocate(size_t bytes, size_t align) {
  arena_.used_ += bytes;
  return arena_.monotonic_->allocate(bytes, align);
}

}  // namespace djinn::heapstore
