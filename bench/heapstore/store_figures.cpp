// The page store's figures (see store_figures.h). Each round writes the same bytes three ways to
// the same directory, in an order that rotates between rounds, each after a sync() and a pause so
// no contender pays for another's write-back:
//   raw:   one new file, 1 MiB pwrites, fdatasync (and again with sync_file_range after each
//          write, which is how the page store writes; the limit is the faster of the two);
//   LMDB:  one transaction putting every page under its big-endian index (MDB_APPEND), committed
//          with LMDB's default durable commit, then mdb_env_sync(force);
//   djinn: a new PageStore (durable, no compression), one version holding every page, from
//          begin_version to commit's return; then versions with 1% of the pages changed.
#include "store_figures.h"

#include <fcntl.h>
#include <lmdb.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "djinn/heapstore/page_store.h"

namespace djinn::heapstore::bench {
namespace {

using Clock = std::chrono::steady_clock;
using djinn::bench::median;
using djinn::bench::Reference;
using djinn::bench::Target;

constexpr uint32_t kPageSize = 4096;
constexpr size_t kRawChunk = size_t{1} << 20;
// Incremental versions measured per round; their median is the round's figure.
constexpr int kIncrementals = 9;

void progress(const std::string& text) { std::fprintf(stderr, "bench-heapstore: %s\n", text.c_str()); }

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// Pages of random bytes (incompressible, never zero), the same for every contender.
std::vector<std::byte> make_pages(size_t bytes, uint64_t seed) {
  std::vector<std::byte> out(bytes);
  uint64_t x = seed;
  for (size_t i = 0; i + 8 <= bytes; i += 8) {
    // splitmix64: fast enough that 256 MiB takes a fraction of a second.
    x += 0x9E3779B97F4A7C15ull;
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    z |= 1;
    std::memcpy(out.data() + i, &z, 8);
  }
  return out;
}

// Seconds to write `data` to a new file with 1 MiB writes and fdatasync it; nullopt on failure.
std::optional<double> raw_write(const std::filesystem::path& dir, const std::vector<std::byte>& data, bool writeback) {
  std::filesystem::path path = dir / (writeback ? "raw-writeback.dat" : "raw.dat");
  ::sync();
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return std::nullopt;
  auto start = Clock::now();
  bool ok = true;
  for (size_t off = 0; off < data.size() && ok; off += kRawChunk) {
    size_t n = std::min(kRawChunk, data.size() - off);
    ok = ::pwrite(fd, data.data() + off, n, static_cast<off_t>(off)) == static_cast<ssize_t>(n);
    if (writeback) ::sync_file_range(fd, static_cast<off_t>(off), static_cast<off_t>(n), SYNC_FILE_RANGE_WRITE);
  }
  ok = ok && ::fdatasync(fd) == 0;
  double seconds = seconds_since(start);
  ::close(fd);
  return ok ? std::optional<double>(seconds) : std::nullopt;
}

// Seconds for LMDB to put every page in one durable transaction; nullopt on failure.
std::optional<double> lmdb_write(const std::filesystem::path& dir, const std::vector<std::byte>& data) {
  std::filesystem::path env_dir = dir / "lmdb";
  std::filesystem::create_directories(env_dir);
  ::sync();
  MDB_env* env = nullptr;
  if (mdb_env_create(&env) != 0) return std::nullopt;
  std::optional<double> result;
  // Each 4 KiB value takes two LMDB pages (its header does not fit in one): room for twice the data.
  if (mdb_env_set_mapsize(env, data.size() * 2 + (size_t{64} << 20)) == 0 &&
      mdb_env_open(env, env_dir.c_str(), 0, 0644) == 0) {
    auto start = Clock::now();
    MDB_txn* txn = nullptr;
    MDB_dbi dbi;
    bool ok = mdb_txn_begin(env, nullptr, 0, &txn) == 0 && mdb_dbi_open(txn, nullptr, 0, &dbi) == 0;
    for (size_t i = 0; ok && i < data.size() / kPageSize; ++i) {
      uint64_t key = __builtin_bswap64(i);  // big-endian: byte order is index order, so MDB_APPEND holds
      MDB_val k{sizeof key, &key};
      MDB_val v{kPageSize, const_cast<std::byte*>(data.data() + i * kPageSize)};
      ok = mdb_put(txn, dbi, &k, &v, MDB_APPEND) == 0;
    }
    if (ok) {
      ok = mdb_txn_commit(txn) == 0;
    } else if (txn) {
      mdb_txn_abort(txn);
    }
    ok = ok && mdb_env_sync(env, 1) == 0;
    double seconds = seconds_since(start);
    if (ok) result = seconds;
  }
  mdb_env_close(env);
  return result;
}

struct StoreTimes {
  double full_seconds = 0;
  std::vector<double> incremental_seconds;
  uint64_t incremental_pages_written = 0;
};

// The page store's full version and its 1%-dirty incrementals.
Result<StoreTimes> store_write(const std::filesystem::path& dir, const std::vector<std::byte>& data, uint64_t round) {
  std::filesystem::path store_dir = dir / "store";
  std::error_code ec;
  std::filesystem::remove_all(store_dir, ec);
  StoreTimes times;
  {
    Result<std::unique_ptr<PageStore>> opened = PageStore::open(store_dir);
    if (!opened.ok()) return opened.status();
    PageStore& store = **opened;
    const uint64_t pages = data.size() / kPageSize;
    ::sync();
    auto start = Clock::now();
    Result<VersionWriter> w = store.begin_version(0, kPageSize, pages);
    if (!w.ok()) return w.status();
    for (uint64_t i = 0; i < pages; ++i) {
      DJINN_RETURN_IF_ERROR(w->put(i, std::span<const std::byte>(data.data() + i * kPageSize, kPageSize)));
    }
    Result<VersionInfo> full = w->commit("runtime record");
    if (!full.ok()) return full.status();
    times.full_seconds = seconds_since(start);

    std::mt19937_64 rng(round * 7919 + 1);
    uint64_t parent = full->version;
    const uint64_t dirty = std::max<uint64_t>(1, pages / 100);
    std::vector<std::byte> page(kPageSize);
    for (int k = 0; k < kIncrementals; ++k) {
      std::vector<uint64_t> indexes(pages);
      for (uint64_t i = 0; i < pages; ++i) indexes[i] = i;
      std::shuffle(indexes.begin(), indexes.end(), rng);
      indexes.resize(dirty);
      std::sort(indexes.begin(), indexes.end());  // the order a dirty-page scan finds them in
      ::sync();
      auto t0 = Clock::now();
      Result<VersionWriter> iw = store.begin_version(parent, kPageSize, pages);
      if (!iw.ok()) return iw.status();
      for (uint64_t index : indexes) {
        // New content: the page's old bytes with one word changed, still incompressible.
        std::memcpy(page.data(), data.data() + index * kPageSize, kPageSize);
        uint64_t stamp = (round << 40) ^ (uint64_t(k + 1) << 32) ^ index;
        std::memcpy(page.data() + 8, &stamp, sizeof stamp);
        DJINN_RETURN_IF_ERROR(iw->put(index, page));
      }
      Result<VersionInfo> v = iw->commit("runtime record");
      if (!v.ok()) return v.status();
      times.incremental_seconds.push_back(seconds_since(t0));
      times.incremental_pages_written = v->pages_written;
      parent = v->version;
    }
  }
  return times;
}

// Before each contender: what the last one wrote is flushed, and the disk gets a moment.
void settle(bool quick) {
  ::sync();
  std::this_thread::sleep_for(quick ? std::chrono::milliseconds(200) : std::chrono::seconds(1));
}

void clear_dir(const std::filesystem::path& dir) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) std::filesystem::remove_all(entry.path(), ec);
  ::sync();
}

// `value` with `decimals` places, for progress lines and notes.
std::string fixed(double value, int decimals = 0) {
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", decimals, value);
  return text;
}

double mb_per_s(size_t bytes, double seconds) { return seconds > 0 ? bytes / seconds / 1e6 : NAN; }

// What hashing alone allows: BLAKE2b-256 of every page on one thread per core, as the store's
// writer threads do. A checkpoint cannot be faster than this on this machine.
double hash_mb_per_s(const std::vector<std::byte>& data) {
  unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  size_t pages = data.size() / kPageSize;
  auto start = Clock::now();
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      for (size_t i = t; i < pages; i += threads) {
        (void)PageHash::of(std::span<const std::byte>(data.data() + i * kPageSize, kPageSize));
      }
    });
  }
  for (auto& w : workers) w.join();
  return mb_per_s(data.size(), seconds_since(start));
}

}  // namespace

void add_store_figures(djinn::bench::Report& report, bool quick, const std::filesystem::path& scratch_dir) {
  const size_t bytes = quick ? size_t{32} << 20 : size_t{256} << 20;
  const int rounds = quick ? 1 : 4;
  const std::string size_text = std::to_string(bytes >> 20) + " MiB";
  std::filesystem::path dir = scratch_dir / "page-store-bench";
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    progress("page store figures: cannot create " + dir.string() + ": " + ec.message());
    return;
  }
  progress("page store: checkpoint of " + size_text + " (" + std::to_string(bytes / kPageSize) + " pages of 4 KiB), " +
           std::to_string(rounds) + " round(s) in " + dir.string());
  const std::vector<std::byte> data = make_pages(bytes, 42);

  std::vector<double> raw_plain, raw_writeback, lmdb, store_full, ratio, hashing;
  std::vector<double> incremental_ms;
  uint64_t incremental_written = 0;
  for (int round = 0; round < rounds; ++round) {
    hashing.push_back(hash_mb_per_s(data));
    progress("  round " + std::to_string(round + 1) + ": BLAKE2b of every page on every core: " +
             fixed(hashing.back()) + " MB/s");
    // Each contender takes each place in the order once in four rounds: who writes after a large
    // write is slowed by its write-back still draining below the guest (measured: up to 2x), and
    // a change in the machine's load falls on all alike.
    std::vector<int> order = {0, 1, 2, 3};
    std::rotate(order.begin(), order.begin() + round % 4, order.end());
    for (int who : order) {
      settle(quick);
      if (who == 0 || who == 1) {
        std::optional<double> s = raw_write(dir, data, who == 1);
        if (!s) {
          progress("  raw write failed");
          continue;
        }
        (who == 0 ? raw_plain : raw_writeback).push_back(mb_per_s(bytes, *s));
        progress(std::string("  round ") + std::to_string(round + 1) + ": raw write + fdatasync" +
                 (who == 1 ? " (with sync_file_range)" : "") + ": " + fixed(mb_per_s(bytes, *s)) + " MB/s");
      } else if (who == 2) {
        std::optional<double> s = lmdb_write(dir, data);
        if (!s) {
          progress("  LMDB run failed");
          continue;
        }
        lmdb.push_back(mb_per_s(bytes, *s));
        progress("  round " + std::to_string(round + 1) + ": LMDB one txn + sync: " + fixed(lmdb.back()) + " MB/s");
      } else {
        Result<StoreTimes> t = store_write(dir, data, static_cast<uint64_t>(round));
        if (!t.ok()) {
          progress("  page store run failed: " + t.status().to_string());
          continue;
        }
        store_full.push_back(mb_per_s(bytes, t->full_seconds));
        double inc = median(t->incremental_seconds);
        ratio.push_back(inc / t->full_seconds);
        incremental_ms.push_back(inc * 1e3);
        incremental_written = t->incremental_pages_written;
        progress("  round " + std::to_string(round + 1) + ": page store full version: " +
                 fixed(store_full.back()) + " MB/s (" + fixed(t->full_seconds * 1e3) +
                 " ms); 1% incremental: median " + fixed(inc * 1e3, 1) + " ms = " +
                 fixed(ratio.back(), 4) + " of the full version");
      }
    }
    // Files go between rounds, not between contenders: in trial runs, freeing hundreds of MiB just
    // before a contender slowed it.
    clear_dir(dir);
  }
  std::filesystem::remove_all(dir, ec);

  auto value_or_nan = [](const std::vector<double>& v) { return v.empty() ? NAN : median(v); };
  double raw = std::fmax(value_or_nan(raw_plain), value_or_nan(raw_writeback));  // NaN only if both are
  std::optional<Reference> limit;
  if (!std::isnan(raw)) limit = Reference{"raw_sequential_write_fdatasync_MB_per_s", djinn::bench::round_to(raw, 1)};
  std::optional<Reference> peer;
  if (!lmdb.empty()) peer = Reference{"lmdb_one_txn_sync_MB_per_s", djinn::bench::round_to(median(lmdb), 1)};
  double full = djinn::bench::round_to(value_or_nan(store_full), 1);

  report.add({"checkpoint_full_MB_per_s", full, "MB/s", peer, limit, Target::at_least(Target::Of::kLimit, 0.5)});
  report.add({"checkpoint_full_vs_lmdb_MB_per_s", full, "MB/s", peer, std::nullopt,
              Target::at_least(Target::Of::kPeer, 1.0)});
  report.add({"checkpoint_incremental_1pct_time_ratio", djinn::bench::round_to(value_or_nan(ratio), 4), "ratio",
              std::nullopt, std::nullopt, Target::at_most(Target::Of::kValue, 0.02)});
  report.note("page store checkpoint: " + size_text + " of random 4 KiB pages, the same bytes for every contender, in " +
              dir.string() + "; medians of " + std::to_string(rounds) +
              " round(s), the order rotating, sync() and a pause before each. Limit: the faster of a plain 1 MiB-write + "
              "fdatasync (" + fixed(value_or_nan(raw_plain)) + " MB/s) and the same with sync_file_range "
              "after each write (" + fixed(value_or_nan(raw_writeback)) + " MB/s). Peer: LMDB, one "
              "transaction, key = big-endian page index (MDB_APPEND), durable commit + mdb_env_sync. djinn: a new "
              "durable PageStore (zstd off), begin_version .. commit of one version holding every page (hashing "
              "included). BLAKE2b alone, on " + std::to_string(std::max(1u, std::thread::hardware_concurrency())) +
              " threads over the same pages: " + fixed(value_or_nan(hashing)) + " MB/s (the most any "
              "content-addressed checkpoint can reach on this machine's CPUs).");
  report.note("page store incremental: versions with 1% of the pages changed on top of the full one (" +
              std::to_string(incremental_written) + " pages written each), median of " + std::to_string(kIncrementals) +
              " per round: " + fixed(value_or_nan(incremental_ms), 1) + " ms, divided by the full version's time.");
}

}  // namespace djinn::heapstore::bench
