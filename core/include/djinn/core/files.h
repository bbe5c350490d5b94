// File-system steps the stores share.
#pragma once

#include <filesystem>

#include "djinn/core/status.h"

namespace djinn::files {

// fsyncs a directory, so the names created or renamed in it survive a crash. UNAVAILABLE when it
// fails (RESOURCE_EXHAUSTED for a full disk or quota), naming the directory.
Status sync_directory(const std::filesystem::path& dir);

}  // namespace djinn::files
