// 4 KiB pwrite + fdatasync in a cycle over a preallocated file.
#include "fsync_probe.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace djinn::bench {

namespace {
constexpr size_t kBlockBytes = 4096;
constexpr off_t kFileBytes = 4 << 20;
}  // namespace

FsyncProbe::FsyncProbe(int fd) : fd_(fd), block_(kBlockBytes, 'x') {}

FsyncProbe::FsyncProbe(FsyncProbe&& other) noexcept
    : fd_(other.fd_), written_(other.written_), block_(std::move(other.block_)) {
  other.fd_ = -1;
}

FsyncProbe::~FsyncProbe() {
  if (fd_ >= 0) ::close(fd_);
}

djinn::Result<FsyncProbe> FsyncProbe::open(const std::string& dir, const std::string& name) {
  std::string path = dir + "/" + name;
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return unavailable("cannot create " + path + ": " + std::strerror(errno));
  ::unlink(path.c_str());
  FsyncProbe probe(fd);
  for (off_t at = 0; at < kFileBytes; at += kBlockBytes) {
    if (::pwrite(fd, probe.block_.data(), kBlockBytes, at) != static_cast<ssize_t>(kBlockBytes)) {
      return unavailable("cannot write " + path + ": " + std::strerror(errno));
    }
  }
  if (::fsync(fd) != 0) return unavailable("cannot fsync " + path + ": " + std::strerror(errno));
  return probe;
}

bool FsyncProbe::write_one() {
  off_t at = static_cast<off_t>(written_++ % (kFileBytes / kBlockBytes)) * static_cast<off_t>(kBlockBytes);
  return ::pwrite(fd_, block_.data(), kBlockBytes, at) == static_cast<ssize_t>(kBlockBytes) && ::fdatasync(fd_) == 0;
}

}  // namespace djinn::bench
