// The scratch arena of DESIGN §7 (the "object nursery"): short-lived allocations of one handler
// call, in ordinary process memory, released all at once when the call ends. Nothing allocated
// here can reach a heap: std::pmr containers are refused there at compile time (HeapStorable).
//
//   ScratchArena arena;                       // one per app, reused by every call
//   {
//     ScratchArena::Scope call(arena);        // released when the call returns
//     std::pmr::vector<int> tmp(arena.resource());
//     ...
//   }
#pragma once

#include <cstddef>
#include <memory>
#include <memory_resource>
#include <optional>

namespace djinn::heapstore {

class ScratchArena {
 public:
  explicit ScratchArena(size_t initial_bytes = 64 * 1024);
  ScratchArena(const ScratchArena&) = delete;
  ScratchArena& operator=(const ScratchArena&) = delete;

  std::pmr::memory_resource* resource() { return &tracking_; }
  template <class T>
  std::pmr::polymorphic_allocator<T> allocator() {
    return std::pmr::polymorphic_allocator<T>(resource());
  }

  // Releases everything allocated since the last reset. When a call outgrew the buffer, the
  // buffer grows to what it used, so the next such call allocates nothing from the system.
  void reset();
  // Bytes handed out since the last reset (including alignment padding), and the buffer's size.
  size_t used() const { return used_; }
  size_t capacity() const { return capacity_; }

  // Resets the arena when the scope ends (one handler call).
  class Scope {
   public:
    explicit Scope(ScratchArena& arena) : arena_(arena) {}
    ~Scope() { arena_.reset(); }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    ScratchArena& arena_;
  };

 private:
  // What the monotonic resource takes from the system once the buffer is full.
  class Counting : public std::pmr::memory_resource {
   public:
    explicit Counting(ScratchArena& arena) : arena_(arena) {}

   private:
    void* do_allocate(size_t bytes, size_t align) override;
    void do_deallocate(void* p, size_t bytes, size_t align) override;
    bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override { return this == &other; }
    ScratchArena& arena_;
  };
  // The resource handed out: counts the bytes asked for, then asks the monotonic resource.
  class Tracking : public std::pmr::memory_resource {
   public:
    explicit Tracking(ScratchArena& arena) : arena_(arena) {}

   private:
    void* do_allocate(size_t bytes, size_t align) override;
    void do_deallocate(void*, size_t, size_t) override {}
    bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override { return this == &other; }
    ScratchArena& arena_;
  };

  size_t capacity_;
  size_t used_ = 0;
  size_t overflow_ = 0;  // bytes taken from the system beyond the buffer since the last reset
  std::unique_ptr<std::byte[]> buffer_;
  Counting upstream_{*this};
  std::optional<std::pmr::monotonic_buffer_resource> monotonic_;
  Tracking tracking_{*this};
};

}  // namespace djinn::heapstore
