// Objects in a heap (DESIGN §7): a Boost.Interprocess segment over the heap's memory, whose
// allocator, containers and strings use offset pointers, so a heap checkpointed here and opened at
// another address (another process, another node) holds the same objects. The application
// reaches its state through named roots.
//
//   auto objects = Objects::attach(*heap);                       // creates or opens the segment
//   auto& state = (*objects)->root<AppState>("state", (*objects)->allocator<char>());
//   state.orders.emplace(42, HeapString("pending", (*objects)->allocator<char>()));
//
// What may live in a heap is checked at compile time where C++ can tell (HeapStorable): no
// polymorphic types (their vtable pointers name this process's code), no raw pointers or
// references, no smart pointers, std::function, std::string_view or std::span, and no container
// whose allocator hands out raw pointers (std::vector, std::string, std::map, std::pmr::*, and
// Boost containers with their default allocator). Members of a plain struct cannot be inspected
// in C++20: a struct holding a raw pointer member passes, and is the programmer's to avoid.
//
// The segment has no lock of its own: one mutator at a time, as for the heap itself.
#pragma once

#include <boost/container/deque.hpp>
#include <boost/container/flat_map.hpp>
#include <boost/container/map.hpp>
#include <boost/container/set.hpp>
#include <boost/container/string.hpp>
#include <boost/container/vector.hpp>
#include <boost/interprocess/allocators/allocator.hpp>
#include <boost/interprocess/managed_external_buffer.hpp>
#include <boost/interprocess/offset_ptr.hpp>

#include <any>
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>

#include "djinn/core/status.h"
#include "djinn/heapstore/heap.h"

namespace djinn::heapstore {

// The segment: Boost's rbtree best-fit allocator without a mutex, named objects in an intrusive
// set, everything addressed by offset_ptr.
using HeapSegment = boost::interprocess::managed_external_buffer;
using SegmentManager = HeapSegment::segment_manager;

template <class T>
using HeapAllocator = boost::interprocess::allocator<T, SegmentManager>;
template <class T>
using HeapPtr = boost::interprocess::offset_ptr<T>;
using HeapString = boost::container::basic_string<char, std::char_traits<char>, HeapAllocator<char>>;
template <class T>
using HeapVector = boost::container::vector<T, HeapAllocator<T>>;
template <class T>
using HeapDeque = boost::container::deque<T, HeapAllocator<T>>;
template <class K, class V, class Compare = std::less<K>>
using HeapMap = boost::container::map<K, V, Compare, HeapAllocator<std::pair<const K, V>>>;
template <class K, class Compare = std::less<K>>
using HeapSet = boost::container::set<K, Compare, HeapAllocator<K>>;
template <class K, class V, class Compare = std::less<K>>
using HeapFlatMap = boost::container::flat_map<K, V, Compare, HeapAllocator<std::pair<K, V>>>;

// ---------------------------------------------------------------------------------------------
// HeapStorable: what may be placed in a heap, as far as C++20 can tell.

// Specialise to std::true_type for a type the rules below refuse but that is known to be safe
// (or to std::false_type for one they cannot see through).
template <class T>
struct heap_storable_override {};

namespace detail {

template <class T>
struct is_heap_storable;

template <class... Ts>
inline constexpr bool all_storable = (is_heap_storable<std::remove_cv_t<Ts>>::value && ...);

template <class T, template <class...> class Template>
struct is_specialization : std::false_type {};
template <template <class...> class Template, class... Args>
struct is_specialization<Template<Args...>, Template> : std::true_type {};

// Types that hold a pointer into this process whatever they are instantiated with.
template <class T>
inline constexpr bool holds_process_pointer =
    is_specialization<T, std::unique_ptr>::value || is_specialization<T, std::shared_ptr>::value ||
    is_specialization<T, std::weak_ptr>::value || is_specialization<T, std::function>::value ||
    is_specialization<T, std::basic_string_view>::value || is_specialization<T, std::reference_wrapper>::value ||
    std::is_same_v<T, std::any>;

template <class T>
struct is_std_span : std::false_type {};
template <class T, size_t N>
struct is_std_span<std::span<T, N>> : std::true_type {};

template <class T>
concept HasAllocator = requires { typename T::allocator_type; };

// A container is storable when its allocator's pointer is not a raw pointer and its elements are.
template <class T>
constexpr bool container_storable() {
  using Pointer = typename std::allocator_traits<typename T::allocator_type>::pointer;
  if constexpr (std::is_pointer_v<Pointer>) {
    return false;
  } else if constexpr (requires { typename T::value_type; }) {
    return is_heap_storable<std::remove_cv_t<typename T::value_type>>::value;
  } else {
    return true;
  }
}

template <class T>
constexpr bool storable() {
  if constexpr (requires { heap_storable_override<T>::value; }) {
    return heap_storable_override<T>::value;
  } else if constexpr (std::is_reference_v<T> || std::is_pointer_v<T> || std::is_member_function_pointer_v<T> ||
                       std::is_function_v<T>) {
    return false;
  } else if constexpr (std::is_array_v<T>) {
    return is_heap_storable<std::remove_cv_t<std::remove_all_extents_t<T>>>::value;
  } else if constexpr (!std::is_class_v<T> && !std::is_union_v<T>) {
    return true;  // arithmetic, enums, member object pointers (offsets), nullptr_t
  } else if constexpr (std::is_polymorphic_v<T> || holds_process_pointer<T> || is_std_span<T>::value) {
    return false;
  } else if constexpr (is_specialization<T, std::pair>::value || is_specialization<T, std::tuple>::value ||
                       is_specialization<T, std::optional>::value || is_specialization<T, std::variant>::value) {
    return []<template <class...> class Tpl, class... Args>(std::type_identity<Tpl<Args...>>) {
      return all_storable<Args...>;
    }(std::type_identity<T>{});
  } else if constexpr (HasAllocator<T>) {
    return container_storable<T>();
  } else {
    return true;  // a plain class: its members cannot be inspected
  }
}

template <class T, size_t N>
struct is_heap_storable<std::array<T, N>> : std::bool_constant<all_storable<T>> {};
template <class T>
struct is_heap_storable : std::bool_constant<storable<T>()> {};

}  // namespace detail

template <class T>
inline constexpr bool is_heap_storable_v = detail::is_heap_storable<std::remove_cv_t<T>>::value;
template <class T>
concept HeapStorable = is_heap_storable_v<T>;

// ---------------------------------------------------------------------------------------------

class Objects {
 public:
  // Creates the segment over `heap` when the heap has none (a new heap), or opens the one it
  // holds. Pins the heap's first page (the segment's header) as a system page.
  static Result<std::unique_ptr<Objects>> attach(Heap& heap);

  // The named root: found, or constructed with `args` when absent. Throws
  // boost::interprocess::bad_alloc when the heap is full.
  template <class T, class... Args>
  T& root(std::string_view name, Args&&... args) {
    static_assert(HeapStorable<T>,
                  "this type cannot live in a heap: it is polymorphic, or holds raw pointers, references or "
                  "std:: containers with std::allocator (see HeapStorable in heap_objects.h)");
    return *segment_.find_or_construct<T>(std::string(name).c_str())(std::forward<Args>(args)...);
  }
  // The named root, or nullptr.
  template <class T>
  T* find(std::string_view name) {
    static_assert(HeapStorable<T>, "this type cannot live in a heap (see HeapStorable in heap_objects.h)");
    return segment_.find<T>(std::string(name).c_str()).first;
  }
  template <class T>
  bool destroy(std::string_view name) {
    return segment_.destroy<T>(std::string(name).c_str());
  }
  // An unnamed object; reach it through a HeapPtr stored in a root.
  template <class T, class... Args>
  HeapPtr<T> make(Args&&... args) {
    static_assert(HeapStorable<T>, "this type cannot live in a heap (see HeapStorable in heap_objects.h)");
    return HeapPtr<T>(segment_.construct<T>(boost::interprocess::anonymous_instance)(std::forward<Args>(args)...));
  }
  template <class T>
  void destroy_ptr(HeapPtr<T> p) {
    segment_.destroy_ptr(p.get());
  }

  template <class T>
  HeapAllocator<T> allocator() {
    return HeapAllocator<T>(segment_.get_segment_manager());
  }
  SegmentManager* segment_manager() { return segment_.get_segment_manager(); }
  uint64_t free_bytes() const { return segment_.get_free_memory(); }
  uint64_t size() const { return segment_.get_size(); }
  Heap& heap() const { return *heap_; }

 private:
  Objects(Heap& heap, HeapSegment segment) : heap_(&heap), segment_(std::move(segment)) {}
  Heap* heap_;
  HeapSegment segment_;
};

}  // namespace djinn::heapstore
