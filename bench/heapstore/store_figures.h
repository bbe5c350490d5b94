// The page store's figures in bench-heapstore: checkpoint throughput of a full version beside a
// raw sequential write + fsync of the same bytes (the limit) and LMDB writing the same pages in
// one transaction (the peer), and the cost of a 1%-dirty incremental version against the full one.
#pragma once

#include <filesystem>

#include "bench_json.h"

namespace djinn::heapstore::bench {

// Adds the figures to `report`. Full sizes: a 256 MiB version; `quick`: 32 MiB. Everything is
// written under `scratch_dir` (on the disk being measured) and removed afterwards. Progress goes
// to stderr.
void add_store_figures(djinn::bench::Report& report, bool quick, const std::filesystem::path& scratch_dir);

}  // namespace djinn::heapstore::bench
