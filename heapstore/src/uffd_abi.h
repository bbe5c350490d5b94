// The parts of the kernel's userfaultfd and PAGEMAP_SCAN ABI that Debian 12's headers predate:
// asynchronous write-protect (Linux 6.7), UFFDIO_POISON (6.6), UFFDIO_MOVE (6.8) and the PAGEMAP_SCAN ioctl on
// /proc/self/pagemap (6.7). Values and layouts follow include/uapi/linux/userfaultfd.h and
// include/uapi/linux/fs.h; they are part of the kernel's stable ABI. Declared here once, under our
// own names, so a newer system header included elsewhere can never clash with them. Whether the
// running kernel has them is probed at run time (heap_mmu.cpp).
#pragma once

#include <linux/userfaultfd.h>
#include <sys/ioctl.h>

#include <cstdint>

namespace djinn::heapstore::internal::abi {

// --- userfaultfd (include/uapi/linux/userfaultfd.h)

// UFFDIO_API features.
inline constexpr uint64_t kFeaturePagefaultFlagWp = 1ull << 0;  // write-protect faults at all
inline constexpr uint64_t kFeatureThreadId = 1ull << 8;
inline constexpr uint64_t kFeatureWpUnpopulated = 1ull << 13;   // none ptes can be write-protected
inline constexpr uint64_t kFeaturePoison = 1ull << 14;          // UFFDIO_POISON
inline constexpr uint64_t kFeatureWpAsync = 1ull << 15;         // the kernel resolves WP faults itself
inline constexpr uint64_t kFeatureMove = 1ull << 16;            // UFFDIO_MOVE

// userfaultfd(2) flag: only faults from user mode (no privilege needed for it since 5.11).
inline constexpr int kUserModeOnly = 1;

inline constexpr uint64_t kRegisterModeMissing = 1ull << 0;
inline constexpr uint64_t kRegisterModeWp = 1ull << 1;

inline constexpr uint64_t kCopyModeDontWake = 1ull << 0;
inline constexpr uint64_t kCopyModeWp = 1ull << 1;  // install the copied page write-protected
inline constexpr uint64_t kZeropageModeDontWake = 1ull << 0;
inline constexpr uint64_t kWriteprotectModeWp = 1ull << 0;
inline constexpr uint64_t kWriteprotectModeDontWake = 1ull << 1;
inline constexpr uint64_t kPoisonModeDontWake = 1ull << 0;

inline constexpr uint8_t kEventPagefault = 0x12;
inline constexpr uint64_t kPagefaultFlagWrite = 1ull << 0;
inline constexpr uint64_t kPagefaultFlagWp = 1ull << 1;

// struct uffdio_poison (UFFDIO_POISON, _UFFDIO_POISON = 0x08): accesses to the range raise SIGBUS.
struct UffdioPoison {
  uffdio_range range;
  uint64_t mode;
  int64_t updated;
};
static_assert(sizeof(UffdioPoison) == 32);
inline constexpr unsigned long kUffdioPoison = _IOWR(0xAA, 0x08, UffdioPoison);

// struct uffdio_move (UFFDIO_MOVE, _UFFDIO_MOVE = 0x05): moves the pages of an anonymous range
// into a registered one without copying them.
struct UffdioMove {
  uint64_t dst;
  uint64_t src;
  uint64_t len;
  uint64_t mode;
  int64_t move;
};
static_assert(sizeof(UffdioMove) == 40);
inline constexpr unsigned kUffdioMoveNr = 0x05;  // its bit in uffdio_register::ioctls
inline constexpr unsigned long kUffdioMove = _IOWR(0xAA, kUffdioMoveNr, UffdioMove);
inline constexpr uint64_t kMoveModeDontWake = 1ull << 0;

// The structures Debian's header does have, checked against the ABI's sizes.
static_assert(sizeof(uffd_msg) == 32);
static_assert(sizeof(uffdio_api) == 24);
static_assert(sizeof(uffdio_register) == 32);
static_assert(sizeof(uffdio_copy) == 40);
static_assert(sizeof(uffdio_zeropage) == 32);
static_assert(sizeof(uffdio_writeprotect) == 24);

// --- PAGEMAP_SCAN (include/uapi/linux/fs.h)

// Page categories, asked for in the masks and reported in PageRegion::categories.
inline constexpr uint64_t kPageIsWpAllowed = 1ull << 0;
inline constexpr uint64_t kPageIsWritten = 1ull << 1;  // written since it was last write-protected
inline constexpr uint64_t kPageIsFile = 1ull << 2;
inline constexpr uint64_t kPageIsPresent = 1ull << 3;
inline constexpr uint64_t kPageIsSwapped = 1ull << 4;
inline constexpr uint64_t kPageIsPfnZero = 1ull << 5;

// Scan flags.
inline constexpr uint64_t kScanWpMatching = 1ull << 0;   // write-protect the pages that matched
inline constexpr uint64_t kScanCheckWpAsync = 1ull << 1;  // fail on a page without async WP

// struct page_region: [start, end) with the categories every page in it has.
struct PageRegion {
  uint64_t start;
  uint64_t end;
  uint64_t categories;
};
static_assert(sizeof(PageRegion) == 24);

// struct pm_scan_arg.
struct PmScanArg {
  uint64_t size;  // sizeof(PmScanArg)
  uint64_t flags;
  uint64_t start;
  uint64_t end;
  uint64_t walk_end;  // written by the kernel: where the walk stopped (== end when complete)
  uint64_t vec;       // PageRegion array
  uint64_t vec_len;
  uint64_t max_pages;  // 0: no limit
  uint64_t category_inverted;
  uint64_t category_mask;        // every category here must match
  uint64_t category_anyof_mask;  // at least one of these must match (0: none asked)
  uint64_t return_mask;          // categories reported in PageRegion::categories
};
static_assert(sizeof(PmScanArg) == 96);

// PAGEMAP_SCAN = _IOWR('f', 16, struct pm_scan_arg); returns the number of regions filled.
inline constexpr unsigned long kPagemapScan = _IOWR('f', 16, PmScanArg);

}  // namespace djinn::heapstore::internal::abi
