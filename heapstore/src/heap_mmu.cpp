// userfaultfd and PAGEMAP_SCAN for the heap: probing what the kernel offers, registering a heap's
// range, and the few ioctls the fault thread and the checkpoint use.
#include "heap_mmu.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "uffd_abi.h"

namespace djinn::heapstore::internal {
namespace {

std::string errno_text(int e) { return std::strerror(e); }

// A userfaultfd: the system call first (user-mode faults only, which is all a heap needs and what
// an unprivileged process may ask for), then /dev/userfaultfd, which systems that forbid the call
// to unprivileged users may open to a group instead.
int open_uffd(std::string* why) {
  int fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | abi::kUserModeOnly));
  if (fd >= 0) return fd;
  int first = errno;
  fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (fd >= 0) return fd;
  int dev = ::open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev >= 0) {
    fd = ::ioctl(dev, _IO(0xAA, 0x00), O_CLOEXEC | O_NONBLOCK | abi::kUserModeOnly);  // USERFAULTFD_IOC_NEW
    int e = errno;
    ::close(dev);
    if (fd >= 0) return fd;
    if (why) *why = "userfaultfd: " + errno_text(first) + "; /dev/userfaultfd: " + errno_text(e);
    return -1;
  }
  if (why) *why = "userfaultfd: " + errno_text(first) + " (see vm.unprivileged_userfaultfd)";
  return -1;
}

bool pagemap_scan_works() {
  int pm = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (pm < 0) return false;
  void* page = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  bool ok = false;
  if (page != MAP_FAILED) {
    abi::PageRegion region{};
    abi::PmScanArg arg{};
    arg.size = sizeof arg;
    arg.start = reinterpret_cast<uintptr_t>(page);
    arg.end = arg.start + 4096;
    arg.vec = reinterpret_cast<uintptr_t>(&region);
    arg.vec_len = 1;
    arg.return_mask = abi::kPageIsPresent;
    ok = ::ioctl(pm, abi::kPagemapScan, &arg) >= 0;
    ::munmap(page, 4096);
  }
  ::close(pm);
  return ok;
}

MmuSupport probe() {
  MmuSupport s;
  int fd = open_uffd(&s.why);
  if (fd < 0) return s;
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = 0;  // asks for nothing: the kernel answers with everything it has
  if (::ioctl(fd, UFFDIO_API, &api) != 0) {
    s.why = "UFFDIO_API: " + errno_text(errno);
    ::close(fd);
    return s;
  }
  ::close(fd);
  s.userfaultfd = true;
  s.write_protect = (api.features & abi::kFeaturePagefaultFlagWp) != 0;
  s.poison = (api.features & abi::kFeaturePoison) != 0;
  s.move = (api.features & abi::kFeatureMove) != 0;
  bool async = (api.features & abi::kFeatureWpAsync) != 0;
  bool scan = async && pagemap_scan_works();
  s.wp_async = s.write_protect && async && scan;
  if (!s.write_protect) {
    s.why = "the kernel has no userfaultfd write-protection (UFFD_FEATURE_PAGEFAULT_FLAG_WP, Linux 5.7)";
  } else if (!async) {
    s.why = "no UFFD_FEATURE_WP_ASYNC (Linux 6.7): dirty pages are tracked with synchronous write faults";
  } else if (!scan) {
    s.why = "no PAGEMAP_SCAN on /proc/self/pagemap (Linux 6.7): dirty pages are tracked with synchronous write faults";
  }
  return s;
}

}  // namespace

const MmuSupport& mmu_support() {
  static const MmuSupport support = probe();
  return support;
}

Result<std::unique_ptr<Mmu>> Mmu::create(std::byte* base, size_t length, bool async_wp) {
  const MmuSupport& support = mmu_support();
  if (!support.userfaultfd || !support.write_protect) {
    return unavailable("the heap needs userfaultfd with write-protection: " + support.why);
  }
  if (async_wp && !support.wp_async) return unavailable("asynchronous write-protect: " + support.why);
  std::string why;
  int fd = open_uffd(&why);
  if (fd < 0) return unavailable(why);
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = abi::kFeaturePagefaultFlagWp | (async_wp ? abi::kFeatureWpAsync : 0) |
                 (support.poison ? abi::kFeaturePoison : 0) | (support.move ? abi::kFeatureMove : 0);
  if (::ioctl(fd, UFFDIO_API, &api) != 0) {
    int e = errno;
    ::close(fd);
    return unavailable("UFFDIO_API: " + errno_text(e));
  }
  uffdio_register reg{};
  reg.range.start = reinterpret_cast<uintptr_t>(base);
  reg.range.len = length;
  reg.mode = abi::kRegisterModeMissing | abi::kRegisterModeWp;
  if (::ioctl(fd, UFFDIO_REGISTER, &reg) != 0) {
    int e = errno;
    ::close(fd);
    return unavailable("UFFDIO_REGISTER of " + std::to_string(length) + " bytes: " + errno_text(e));
  }
  constexpr uint64_t kNeeded = (1ull << _UFFDIO_COPY) | (1ull << _UFFDIO_WAKE) | (1ull << _UFFDIO_WRITEPROTECT);
  if ((reg.ioctls & kNeeded) != kNeeded) {
    ::close(fd);
    return unavailable("the registered heap range lacks UFFDIO_COPY, UFFDIO_WAKE or UFFDIO_WRITEPROTECT");
  }
  int pagemap = -1;
  if (async_wp) {
    pagemap = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pagemap < 0) {
      int e = errno;
      ::close(fd);
      return unavailable("/proc/self/pagemap: " + errno_text(e));
    }
  }
  return std::unique_ptr<Mmu>(new Mmu(fd, pagemap, base, length, async_wp));
}

Mmu::~Mmu() {
  uffdio_range range{reinterpret_cast<uintptr_t>(base_), length_};
  ::ioctl(uffd_, UFFDIO_UNREGISTER, &range);
  ::close(uffd_);
  if (pagemap_ >= 0) ::close(pagemap_);
}

int Mmu::read_faults(uffd_msg* out, int max) {
  ssize_t n = ::read(uffd_, out, sizeof(uffd_msg) * static_cast<size_t>(max));
  if (n < 0) return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
  return static_cast<int>(n / static_cast<ssize_t>(sizeof(uffd_msg)));
}

Status Mmu::copy(uintptr_t dst, const void* src, size_t len, bool wp, bool wake) {
  auto from = reinterpret_cast<uintptr_t>(src);
  while (len > 0) {
    uffdio_copy c{};
    c.dst = dst;
    c.src = from;
    c.len = len;
    c.mode = (wp ? abi::kCopyModeWp : 0) | (wake ? 0 : abi::kCopyModeDontWake);
    if (::ioctl(uffd_, UFFDIO_COPY, &c) == 0) return Status();
    int e = errno;
    size_t done = c.copy > 0 ? static_cast<size_t>(c.copy) : 0;
    if (e == EEXIST && done == 0) done = 4096;  // a page already there: keep it, go on
    if (e != EAGAIN && e != EEXIST) return internal_error("UFFDIO_COPY: " + errno_text(e));
    dst += done;
    from += done;
    len -= std::min(done, len);
  }
  return Status();
}

Status Mmu::register_pool(uintptr_t start, size_t len) {
  if (!mmu_support().move) return unimplemented("UFFDIO_MOVE needs Linux 6.8");
  uffdio_register reg{};
  reg.range.start = start;
  reg.range.len = len;
  reg.mode = abi::kRegisterModeWp;
  if (::ioctl(uffd_, UFFDIO_REGISTER, &reg) != 0) {
    return internal_error("UFFDIO_REGISTER of the page pool: " + errno_text(errno));
  }
  if ((reg.ioctls & (1ull << abi::kUffdioMoveNr)) == 0) {
    return unimplemented("the page pool's range lacks UFFDIO_MOVE");
  }
  return Status();
}

size_t Mmu::move(uintptr_t dst, uintptr_t src, size_t len) {
  size_t done = 0;
  for (int again = 0; done < len;) {
    abi::UffdioMove m{};
    m.dst = dst + done;
    m.src = src + done;
    m.len = len - done;
    m.mode = abi::kMoveModeDontWake;
    int rc = ::ioctl(uffd_, abi::kUffdioMove, &m);
    int e = errno;
    done += std::min(m.move > 0 ? static_cast<size_t>(m.move) : size_t{0}, len - done);
    if (rc == 0) return len;
    // EAGAIN is transient (a page locked or being migrated); anything else names a page that
    // cannot move.
    if (e != EAGAIN || ++again > 1000) return done;
  }
  return done;
}

Status Mmu::protect(uintptr_t start, size_t len, bool wp, bool wake) {
  uffdio_writeprotect w{};
  w.range.start = start;
  w.range.len = len;
  // Protecting wakes nobody; the kernel refuses DONTWAKE with WP.
  w.mode = wp ? abi::kWriteprotectModeWp : (wake ? 0 : abi::kWriteprotectModeDontWake);
  for (;;) {
    if (::ioctl(uffd_, UFFDIO_WRITEPROTECT, &w) == 0) return Status();
    if (errno != EAGAIN && errno != EINTR) return internal_error("UFFDIO_WRITEPROTECT: " + errno_text(errno));
  }
}

Status Mmu::wake(uintptr_t start, size_t len) {
  uffdio_range r{start, len};
  if (::ioctl(uffd_, UFFDIO_WAKE, &r) != 0) return internal_error("UFFDIO_WAKE: " + errno_text(errno));
  return Status();
}

Status Mmu::poison(uintptr_t start, size_t len) {
  if (!mmu_support().poison) return unimplemented("UFFDIO_POISON needs Linux 6.6");
  abi::UffdioPoison p{};
  p.range.start = start;
  p.range.len = len;
  if (::ioctl(uffd_, abi::kUffdioPoison, &p) != 0) return internal_error("UFFDIO_POISON: " + errno_text(errno));
  return Status();
}

Status Mmu::drop(uintptr_t start, size_t len) {
  if (::madvise(reinterpret_cast<void*>(start), len, MADV_DONTNEED) != 0) {
    return internal_error("madvise(MADV_DONTNEED): " + errno_text(errno));
  }
  return Status();
}

Status Mmu::scan_written(uintptr_t start, uintptr_t end, bool reprotect,
                         const std::function<void(uintptr_t, uintptr_t)>& region) {
  if (!async_wp_) return failed_precondition("PAGEMAP_SCAN dirty tracking needs the asynchronous write-protect mode");
  constexpr size_t kRegions = 512;
  abi::PageRegion vec[kRegions];
  uintptr_t cur = start;
  while (cur < end) {
    abi::PmScanArg arg{};
    arg.size = sizeof arg;
    arg.flags = abi::kScanCheckWpAsync | (reprotect ? abi::kScanWpMatching : 0);
    arg.start = cur;
    arg.end = end;
    arg.vec = reinterpret_cast<uintptr_t>(vec);
    arg.vec_len = kRegions;
    // Present and written: a hole in an async write-protected range also reads as written (the
    // kernel cannot tell an unpopulated page from one written and dropped), and protecting holes
    // would only plant markers there.
    arg.category_mask = abi::kPageIsWritten | abi::kPageIsPresent;
    arg.return_mask = abi::kPageIsWritten | abi::kPageIsPresent;
    long n = ::ioctl(pagemap_, abi::kPagemapScan, &arg);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return internal_error("PAGEMAP_SCAN: " + errno_text(errno));
    }
    for (long k = 0; k < n; ++k) region(vec[k].start, vec[k].end);
    if (arg.walk_end <= cur) break;  // no progress: nothing more to report
    cur = arg.walk_end;
  }
  return Status();
}

}  // namespace djinn::heapstore::internal
