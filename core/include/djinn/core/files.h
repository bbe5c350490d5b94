// File-system steps the stores share.
#pragma once

#include <filesystem>

#include "djinn/core/status.h"

namespace djinn::files {

// fsyncs a directory, so the names created or renamed in it survive a crash. UNAVAILABLE when it
// fails (RESOURCE_EXHAUSTED for a full disk or quota), naming the directory.
Status sync_directory(const std::filesystem::path& dir);

// fdatasyncs a file written by others (SQLite's log, say), so that what they wrote without a sync
// is on the disk. A file that does not exist is nothing to sync: OK.
Status sync_file(const std::filesystem::path& file);

// Creates `dir` and whatever parents it lacks, and syncs each new name into its parent, so the
// directory survives a power loss as the files later made in it do.
Status create_directories_synced(const std::filesystem::path& dir);

}  // namespace djinn::files
