// The disk's limit for durable writes: 4 KiB writes, each followed by fdatasync. The file is
// written in full beforehand and then overwritten in a cycle, as a write-ahead log in steady state
// is, so no fdatasync pays for growing the file.
#pragma once

#include <cstdint>
#include <string>

#include "djinn/core/status.h"

namespace djinn::bench {

class FsyncProbe {
 public:
  // A 4 MiB file in `dir`, written and synced, then unlinked (the descriptor keeps it, so nothing
  // is left behind).
  static djinn::Result<FsyncProbe> open(const std::string& dir, const std::string& name);
  FsyncProbe(FsyncProbe&& other) noexcept;
  FsyncProbe& operator=(FsyncProbe&&) = delete;
  FsyncProbe(const FsyncProbe&) = delete;
  ~FsyncProbe();

  // One 4 KiB pwrite and its fdatasync; false when either fails.
  bool write_one();

 private:
  explicit FsyncProbe(int fd);
  int fd_ = -1;
  uint64_t written_ = 0;
  std::string block_;
};

}  // namespace djinn::bench
