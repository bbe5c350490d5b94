#include "djinn/core/files.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace djinn::files {

Status sync_directory(const std::filesystem::path& dir) {
  auto failed = [&](const std::string& step, int err) {
    std::string message = step + " directory " + dir.string() + ": " + std::strerror(err);
    return err == ENOSPC || err == EDQUOT ? resource_exhausted(message) : unavailable(message);
  };
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return failed("open", errno);
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  return rc == 0 ? Status::Ok() : failed("fsync", err);
}

}  // namespace djinn::files
