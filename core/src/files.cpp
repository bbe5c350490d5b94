#include "djinn/core/files.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

namespace djinn::files {

namespace {

Status failed(const std::string& step, const std::filesystem::path& path, int err) {
  std::string message = step + " " + path.string() + ": " + std::strerror(err);
  return err == ENOSPC || err == EDQUOT ? resource_exhausted(message) : unavailable(message);
}

}  // namespace

Status sync_directory(const std::filesystem::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return failed("open directory", dir, errno);
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  return rc == 0 ? Status::Ok() : failed("fsync directory", dir, err);
}

Status sync_file(const std::filesystem::path& file) {
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? Status::Ok() : failed("open", file, errno);
  int rc = ::fdatasync(fd);
  int err = errno;
  ::close(fd);
  return rc == 0 ? Status::Ok() : failed("fdatasync", file, err);
}

Status create_directories_synced(const std::filesystem::path& dir) {
  std::filesystem::path absolute = std::filesystem::absolute(dir).lexically_normal();
  if (!absolute.has_filename()) absolute = absolute.parent_path();  // a trailing slash
  std::vector<std::filesystem::path> missing;  // deepest first
  std::error_code ec;
  for (std::filesystem::path p = absolute; !p.empty() && !std::filesystem::exists(p, ec); p = p.parent_path()) {
    missing.push_back(p);
    if (p == p.parent_path()) break;
  }
  std::filesystem::create_directories(absolute, ec);
  if (ec) return failed_precondition("cannot create directory " + dir.string() + ": " + ec.message());
  for (auto it = missing.rbegin(); it != missing.rend(); ++it) DJINN_RETURN_IF_ERROR(sync_directory(it->parent_path()));
  return Status::Ok();
}

}  // namespace djinn::files
