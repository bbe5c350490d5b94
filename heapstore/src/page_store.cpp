// The page store of DESIGN §7. On disk, in the store's directory:
//   LOCK              flock'd while a PageStore has the directory open
//   index.db          SQLite (WAL): where each page is (pages), each pack's committed length
//                     (packs), and every version with its manifest and runtime record (versions)
//   packs/pack-N.dat  page contents, appended with large writes, never rewritten
// A commit writes the new pages into the current pack, fdatasyncs it, then commits one SQLite
// transaction that indexes the pages, records the pack's new committed length and adds the
// version. A crash before that transaction commits leaves only unreferenced bytes past the
// committed length, cut off at the next open; after it, the version is whole. This file: the public
// API, imports, removal and garbage collection; store_core.cpp: the commit; version_writer.cpp:
// the writer.
#include "djinn/heapstore/page_store.h"

#include <algorithm>
#include <thread>

#include "djinn/core/fault.h"
#include "djinn/core/log.h"
#include "store_core.h"

namespace djinn::heapstore {

using internal::bytes_of;
using internal::DeltaEntry;
using internal::HashMap;
using internal::HashSet;
using internal::Location;
using internal::PageList;
using internal::Phase;
using internal::Range;
using internal::StoreCore;

namespace {

// 1: a row per page keyed by hash. 4: the page log, each page with a checksum (pages moved from
// schema 1 have none and no kFlagChecked: they are checked by hash). 2 and 3, a row per page with a
// checksum (keyed by hash, then by row number), were never released; they move like 1, checksums
// kept.
constexpr int64_t kSchemaVersion = 4;
constexpr std::string_view kSchema = R"sql(
CREATE TABLE IF NOT EXISTS packs(
  id INTEGER PRIMARY KEY,
  committed_bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS page_log(
  id INTEGER PRIMARY KEY,
  pages BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS versions(
  version INTEGER PRIMARY KEY AUTOINCREMENT,
  parent INTEGER NOT NULL,
  page_size INTEGER NOT NULL,
  capacity_pages INTEGER NOT NULL,
  pages INTEGER NOT NULL,
  pages_written INTEGER NOT NULL,
  created_unix_ms INTEGER NOT NULL,
  base INTEGER NOT NULL,
  chain_entries INTEGER NOT NULL,
  chain_length INTEGER NOT NULL,
  manifest BLOB NOT NULL,
  record BLOB NOT NULL);
)sql";

// Each pack's committed length, from the packs table.
Result<std::map<uint64_t, uint64_t>> committed_lengths(sqlite::Database& db) {
  std::map<uint64_t, uint64_t> committed;
  Result<sqlite::Statement> st = db.prepare("SELECT id, committed_bytes FROM packs");
  if (!st.ok()) return st.status();
  for (;;) {
    Result<bool> more = st->step();
    if (!more.ok()) return more.status();
    if (!*more) return committed;
    committed[static_cast<uint64_t>(st->column_int64(0))] = static_cast<uint64_t>(st->column_int64(1));
  }
}

// A store of schema 1, 2 or 3 (a row per page) has its pages moved into the page log, in pack
// order, in one transaction.
Status upgrade_schema(sqlite::Database& db, const std::filesystem::path& dir) {
  Result<int64_t> current = db.user_version();
  if (!current.ok()) return current.status();
  if (*current < 1 || *current > 3) return Status();
  Result<sqlite::Transaction> tx = sqlite::Transaction::begin(db);
  if (!tx.ok()) return tx.status();
  DJINN_RETURN_IF_ERROR(db.exec(kSchema));
  Result<std::map<uint64_t, uint64_t>> committed = committed_lengths(db);
  if (!committed.ok()) return committed.status();
  const bool checked = *current >= 2;
  Result<sqlite::Statement> rows = db.prepare(std::string("SELECT hash, pack, at, length, size, flags, ") +
                                              (checked ? "checksum" : "0") + " FROM pages ORDER BY pack, at");
  if (!rows.ok()) return rows.status();
  uint64_t id = 1;
  uint64_t moved = 0;
  std::vector<uint8_t> entries;
  const std::string where = "page store " + dir.string() + ": ";
  auto flush = [&]() -> Status {
    if (entries.empty()) return Status();
    // Checked as the page log is at open, before the rows they come from are dropped: a corrupt
    // row leaves the store as it was.
    Status sound = internal::for_each_log_entry(entries, id, [](const PageHash&, const Location&) {}, &*committed);
    if (!sound.ok()) return Status(sound.code(), where + "moving the index into the page log: " + sound.message());
    DJINN_RETURN_IF_ERROR(internal::insert_log_blob(db, id++, entries));
    entries.clear();
    return Status();
  };
  for (;;) {
    Result<bool> more = rows->step();
    if (!more.ok()) return more.status();
    if (!*more) break;
    std::vector<uint8_t> bytes = rows->column_blob(0);
    PageHash h;
    if (bytes.size() != h.bytes.size()) return data_loss(where + "an index row has a malformed hash");
    std::copy(bytes.begin(), bytes.end(), h.bytes.begin());
    Location loc;
    loc.pack = static_cast<uint64_t>(rows->column_int64(1));
    loc.offset = static_cast<uint64_t>(rows->column_int64(2));
    loc.length = static_cast<uint32_t>(rows->column_int64(3));
    loc.size = static_cast<uint32_t>(rows->column_int64(4));
    loc.flags = static_cast<uint32_t>(rows->column_int64(5));
    loc.check = static_cast<uint64_t>(rows->column_int64(6));
    if (!checked) loc.flags &= ~internal::kFlagChecked;
    if (loc.pack == 0 || loc.pack > internal::kMaxPackId) {
      return data_loss(where + "an index row names pack " + std::to_string(loc.pack) + ", outside 1.." +
                       std::to_string(internal::kMaxPackId));
    }
    internal::append_log_entry(entries, h, loc);
    ++moved;
    if (entries.size() >= internal::kLogEntriesPerBlob * internal::kLogEntryBytes) DJINN_RETURN_IF_ERROR(flush());
  }
  DJINN_RETURN_IF_ERROR(flush());
  rows->reset();
  DJINN_RETURN_IF_ERROR(db.exec("DROP TABLE pages"));
  DJINN_RETURN_IF_ERROR(db.set_user_version(kSchemaVersion));
  DJINN_RETURN_IF_ERROR(tx->commit());
  DJINN_LOG(kInfo, "heapstore") << where << moved << " pages moved into the page log (schema " << *current << " to "
                                << kSchemaVersion << ")";
  return Status();
}

}  // namespace

// =================================================================================================
// Import

namespace {

class ImportSession final : public PageStore::Import {
 public:
  ImportSession(StoreCore* store, Manifest manifest) : store_(store), manifest_(std::move(manifest)) {}
  ~ImportSession() override { abort(); }

  // Registers the session and finds which pages are missing (mu held).
  void start_locked(HashSet missing_hashes) {
    store_->sessions.insert(&session_);
    HashSet seen;
    for (const PageRef& p : manifest_.pages) {
      if (!seen.insert(p.hash).second) continue;
      if (missing_hashes.contains(p.hash)) {
        needed_.insert(p.hash);
        needed_order_.push_back(p.hash);
      } else {
        session_.held.insert(p.hash);
      }
    }
  }

  std::vector<PageHash> needed() const override {
    std::vector<PageHash> out;
    for (const PageHash& h : needed_order_) {
      if (!received_.contains(h)) out.push_back(h);
    }
    return out;
  }

  Status import_page(const PageHash& hash, std::span<const std::byte> page) override {
    if (phase_ != Phase::kOpen) return failed_precondition("import_page: the import is already committed or abandoned");
    if (!needed_.contains(hash)) {
      return invalid_argument("import_page: page " + hash.hex() + " is not one this import needs");
    }
    if (page.size() != manifest_.info.page_size) {
      return invalid_argument("import_page: page " + hash.hex() + " has " + std::to_string(page.size()) +
                              " bytes, expected the manifest's page size of " + std::to_string(manifest_.info.page_size));
    }
    if (received_.contains(hash)) return Status();
    if (PageHash::of(page) != hash) {
      return data_loss("import_page: the content sent as page " + hash.hex() + " does not hash to it: refused");
    }
    std::span<const std::byte> pages[] = {page};
    Result<std::vector<Location>> where = store_->append(pages);
    if (!where.ok()) return where.status();
    received_[hash] = where->front();
    written_.push_back(Range{where->front().pack, where->front().offset, where->front().length});
    return Status();
  }

  Result<VersionInfo> import_commit(VersionPin* pin) override {
    if (phase_ != Phase::kOpen) return failed_precondition("import_commit: the import is already committed or abandoned");
    size_t missing = 0;
    const PageHash* example = nullptr;
    for (const PageHash& h : needed_order_) {
      if (!received_.contains(h)) {
        if (!example) example = &h;
        ++missing;
      }
    }
    if (missing) {
      return failed_precondition("import_commit: " + std::to_string(missing) + " pages of the manifest were never received (" +
                                 example->hex() + " among them)");
    }
    internal::CommitPlan plan;
    plan.session = &session_;
    plan.parent = 0;
    plan.page_size = manifest_.info.page_size;
    plan.capacity = manifest_.info.capacity_pages;
    plan.pages = std::make_shared<const PageList>(manifest_.pages);
    plan.record = manifest_.record;
    plan.own = &received_;
    plan.own_all_referenced = true;  // only pages the manifest needs are received
    plan.phase = &phase_;
    plan.pin = pin;
    Result<VersionInfo> info = store_->commit_version(plan);
    if (!info.ok()) abort();
    return info;
  }

 private:
  void abort() {
    if (phase_ == Phase::kDone) return;
    std::vector<Range> garbage;
    if (phase_ == Phase::kOpen) garbage = written_;
    {
      std::lock_guard lock(store_->mu);
      store_->end_session_locked(&session_);
    }
    phase_ = Phase::kDone;
    store_->packs->punch(std::move(garbage));
  }

  StoreCore* store_;
  Manifest manifest_;
  internal::Session session_;
  Phase phase_ = Phase::kOpen;
  HashSet needed_;
  std::vector<PageHash> needed_order_;
  HashMap<Location> received_;
  std::vector<Range> written_;
};

}  // namespace

// =================================================================================================
// PageStore

PageStore::PageStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PageStore::~PageStore() = default;

Result<std::unique_ptr<PageStore>> PageStore::open(const std::filesystem::path& dir, PageStoreOptions options) {
  if (options.compression_level < 0 || options.compression_level > 22) {
    return invalid_argument("compression level " + std::to_string(options.compression_level) +
                            ": must be 0 (raw) to 22 (zstd's strongest)");
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return unavailable("create page store directory " + dir.string() + ": " + ec.message());
  Result<internal::DirLock> lock = internal::DirLock::acquire(dir);
  if (!lock.ok()) return lock.status();
  const std::string where = "page store " + dir.string() + ": ";

  // Every check comes before anything on disk changes: a store whose index is lost or corrupt is
  // left as it was found, for its owner to restore.
  // An index that is missing or empty beside pack files is not a new store but a lost index: with
  // it, every pack would look like a leftover of an uncommitted version and be deleted. Checked
  // before SQLite opens the file, which would create it or write its header.
  const std::filesystem::path index_path = dir / "index.db";
  Result<std::map<uint64_t, std::filesystem::path>> pack_files = internal::find_pack_files(dir / "packs");
  if (!pack_files.ok()) return pack_files.status();
  auto lost_index = [&] {
    return data_loss(where + "index.db is missing or empty but packs/ holds " + std::to_string(pack_files->size()) +
                     " pack files; restore index.db from a backup, or move packs/ away to start an empty store");
  };
  if (!pack_files->empty()) {
    std::error_code ec;
    const bool exists = std::filesystem::exists(index_path, ec);
    if (ec) return unavailable(where + "look for " + index_path.string() + ": " + ec.message());
    if (!exists || std::filesystem::file_size(index_path, ec) == 0) return lost_index();
    if (ec) return unavailable(where + "size of " + index_path.string() + ": " + ec.message());
  }

  sqlite::OpenOptions db_options;
  db_options.sync = options.durable ? sqlite::Sync::kFull : sqlite::Sync::kOff;
  db_options.cache_kib = 32 * 1024;  // the pages index of a 256 MiB heap is about 6 MiB
  Result<sqlite::Database> db = sqlite::Database::open(index_path.string(), db_options);
  if (!db.ok()) return db.status();
  if (!pack_files->empty()) {
    // A file with no schema (a header alone, its log gone) is as empty as no file.
    Result<int64_t> schema = db->user_version();
    if (!schema.ok()) return schema.status();
    if (*schema == 0) return lost_index();
  }
  DJINN_RETURN_IF_ERROR(upgrade_schema(*db, dir));
  DJINN_RETURN_IF_ERROR(db->ensure_schema(kSchemaVersion, kSchema, "page store " + dir.string()));

  auto impl = std::make_unique<Impl>(dir, options, std::move(*lock), std::move(*db));
  Result<std::map<uint64_t, uint64_t>> committed = committed_lengths(impl->db);
  if (!committed.ok()) return committed.status();
  Result<std::unique_ptr<internal::PackSet>> packs =
      internal::PackSet::open(dir / "packs", *committed, options.pack_file_bytes);
  if (!packs.ok()) return packs.status();
  impl->packs = std::move(*packs);

  std::lock_guard guard(impl->mu);
  DJINN_RETURN_IF_ERROR(impl->load_versions_locked());
  if (Status loaded = impl->load_index_locked(*committed); !loaded.ok()) {
    return Status(loaded.code(), where + loaded.message());
  }
  Result<std::unique_ptr<internal::Checkpointer>> checkpointer =
      internal::Checkpointer::start(impl->db, index_path.string(), db_options.sync);
  if (!checkpointer.ok()) return checkpointer.status();
  impl->checkpointer = std::move(*checkpointer);
  // The index is whole: what it does not know in packs/ can go.
  DJINN_RETURN_IF_ERROR(impl->packs->clean_up());
  unsigned threads = options.writer_threads;
  if (threads == 0) threads = std::clamp(std::thread::hardware_concurrency(), 1u, 8u);
  impl->workers = std::make_unique<internal::WorkerPool>(threads, "page-writer");
  return std::unique_ptr<PageStore>(new PageStore(std::move(impl)));
}

bool PageStore::contains(const PageHash& hash) const {
  std::lock_guard lock(impl_->mu);
  return impl_->knows_locked(hash);
}

std::vector<PageHash> PageStore::missing(std::span<const PageHash> hashes) const {
  std::vector<PageHash> out;
  std::lock_guard lock(impl_->mu);
  for (const PageHash& h : hashes) {
    if (!impl_->knows_locked(h)) out.push_back(h);
  }
  return out;
}

Status PageStore::read_page(const PageHash& hash, std::span<std::byte> out) const {
  Status error;
  read_pages(std::span<const PageHash>(&hash, 1), static_cast<uint32_t>(out.size()), out, &error);
  return error;
}

namespace {

// Whether a page read back is what was stored: its checksum, or its hash where it has none.
Status check_read(const PageHash& hash, const Location& where, std::span<const std::byte> stored,
                  std::span<const std::byte> page) {
  bool intact = (where.flags & internal::kFlagChecked) ? internal::stored_checksum(stored) == where.check
                                                       : PageHash::of(page) == hash;
  if (intact) return Status();
  return data_loss("page " + hash.hex() + " is corrupt: its stored bytes (pack " + std::to_string(where.pack) +
                   ", offset " + std::to_string(where.offset) + ") are not what was written");
}

}  // namespace

size_t PageStore::read_pages(std::span<const PageHash> hashes, uint32_t page_size, std::span<std::byte> out,
                             Status* error) const {
  return visit_pages(hashes, page_size, out, [&](size_t first, std::span<const std::byte> pages) {
    std::byte* to = out.data() + first * page_size;
    if (pages.data() != to) std::memcpy(to, pages.data(), pages.size());
    return Status();
  }, error);
}

size_t PageStore::visit_pages(std::span<const PageHash> hashes, uint32_t page_size, std::span<std::byte> scratch,
                              const PageVisitor& use, Status* error) const {
  auto fail = [&](size_t done, Status status) {
    if (error) *error = std::move(status);
    return done;
  };
  if (page_size == 0 || scratch.size() / page_size < hashes.size()) {
    return fail(0, invalid_argument("read pages: a buffer of " + std::to_string(scratch.size()) + " bytes for " +
                                    std::to_string(hashes.size()) + " pages of " + std::to_string(page_size)));
  }
  DJINN_CRASH_POINT("heapstore.visit_pages");  // a read that throws, as one out of memory would
  std::shared_lock reclaim(impl_->reclaim_mu);
  thread_local std::vector<Location> where;
  where.resize(hashes.size());
  size_t found = 0;
  Status missing;
  {
    std::shared_lock lock(impl_->mu);
    for (; found < hashes.size(); ++found) {
      const PageHash& h = hashes[found];
      if (!impl_->pending.empty()) {
        auto p = impl_->pending.find(h);
        if (p != impl_->pending.end() && p->second.where) {
          where[found] = *p->second.where;
          continue;
        }
      }
      auto it = impl_->index.find(h);
      if (it == impl_->index.end()) {
        missing = not_found("page " + h.hex() + " is not in the store");
        break;
      }
      where[found] = it->second;
    }
  }
  std::shared_ptr<internal::PackFile> file;
  size_t i = 0;
  while (i < found) {
    const Location& w = where[i];
    const PageHash& hash = hashes[i];
    std::span<std::byte> page = scratch.subspan(i * page_size, page_size);
    if (w.size != page_size) {
      return fail(i, invalid_argument("read page " + hash.hex() + ": the page has " + std::to_string(w.size) +
                                      " bytes, the buffer " + std::to_string(page_size)));
    }
    if (!file || file->id() != w.pack) file = impl_->packs->get(w.pack);
    if (!file) return fail(i, data_loss("page " + hash.hex() + ": its pack file " + std::to_string(w.pack) + " is missing"));
    if (w.flags & internal::kFlagZstd) {
      // Checked when the index was loaded; checked again before it sizes an allocation.
      if (w.length > internal::max_stored_length(w.size, w.flags)) {
        return fail(i, data_loss("page " + hash.hex() + ": stored compressed with " + std::to_string(w.length) +
                                 " bytes, more than a page of " + std::to_string(w.size) + " can take"));
      }
      thread_local std::vector<std::byte> stored;
      stored.resize(w.length);
      if (Status st = file->read_at(w.offset, stored); !st.ok()) return fail(i, std::move(st));
      // Checked before decoding where the stored bytes have a checksum (after, by hash, otherwise).
      const bool checked = (w.flags & internal::kFlagChecked) != 0;
      if (checked) {
        if (Status st = check_read(hash, w, stored, page); !st.ok()) return fail(i, std::move(st));
      }
      Status decoded = internal::decode_page(w, stored, page);
      if (!decoded.ok()) return fail(i, Status(decoded.code(), "page " + hash.hex() + ": " + decoded.message()));
      if (!checked) {
        if (Status st = check_read(hash, w, stored, page); !st.ok()) return fail(i, std::move(st));
      }
      if (Status st = use(i, page); !st.ok()) return fail(i, std::move(st));
      ++i;
      continue;
    }
    if (w.length != page_size) {
      return fail(i, data_loss("page " + hash.hex() + ": stored raw with " + std::to_string(w.length) +
                               " bytes, expected " + std::to_string(page_size)));
    }
    // The raw pages that follow this one in the same pack come with it: one view of the pack (or
    // one read where it cannot be viewed).
    size_t end = i + 1;
    while (end < found && where[end].pack == w.pack && where[end].offset == where[end - 1].end() &&
           where[end].length == page_size && where[end].size == page_size && !(where[end].flags & internal::kFlagZstd)) {
      ++end;
    }
    const uint64_t bytes = uint64_t{end - i} * page_size;
    std::span<const std::byte> run;
    if (const std::byte* view = file->view(w.offset, bytes)) {
      run = std::span<const std::byte>(view, bytes);
    } else {
      std::span<std::byte> into = scratch.subspan(i * page_size, bytes);
      if (Status st = file->read_at(w.offset, into); !st.ok()) return fail(i, std::move(st));
      run = into;
    }
    size_t good = i;
    Status bad;
    for (; good < end; ++good) {
      std::span<const std::byte> b = run.subspan((good - i) * page_size, page_size);
      bad = check_read(hashes[good], where[good], b, b);
      if (!bad.ok()) break;
    }
    if (good > i) {
      if (Status st = use(i, run.first((good - i) * page_size)); !st.ok()) return fail(i, std::move(st));
    }
    if (good < end) return fail(good, std::move(bad));
    i = end;
  }
  if (found < hashes.size()) return fail(found, std::move(missing));
  return hashes.size();
}

namespace {

// put_pages and hold_page: each page is kept until a committed version holds it (put), or once
// more until released (`held`).
Result<std::vector<PageHash>> store_pages(StoreCore& store, std::span<const std::byte> pages, uint32_t page_size,
                                          std::span<const PageHash> expected, bool held) {
  DJINN_RETURN_IF_ERROR(internal::check_page_size(page_size));
  if (pages.empty() || pages.size() % page_size != 0) {
    return invalid_argument("put_pages: " + std::to_string(pages.size()) + " bytes are not whole pages of " +
                            std::to_string(page_size));
  }
  const size_t n = pages.size() / page_size;
  const bool arriving = !expected.empty();
  if (arriving && expected.size() != n) {
    return invalid_argument("put_pages: " + std::to_string(expected.size()) + " names for " + std::to_string(n) + " pages");
  }
  auto page = [&](size_t k) { return pages.subspan(k * page_size, page_size); };
  std::vector<PageHash> hashes;
  hashes.reserve(n);
  HashMap<uint64_t> times;  // a hold for each time a page is given
  for (size_t k = 0; k < n; ++k) {
    hashes.push_back(PageHash::of(page(k)));
    // Named pages are checked first: no manifest names a zero page.
    if (arriving && hashes.back() != expected[k]) {
      return data_loss("page " + expected[k].hex() + ": the content received is not that page; refused");
    }
    if (is_zero_page(page(k))) {
      return invalid_argument("put_page: an all-zero page is never stored (a version records it with zero())");
    }
    if (held) ++times[hashes.back()];
  }
  auto keep = [&](internal::PendingPage& p, const PageHash& hash) {
    if (held) {
      p.holds += times[hash];
    } else {
      p.until_version = true;
    }
  };
  // Those new to the store are appended; the others are pinned where they are.
  std::vector<std::span<const std::byte>> fresh;
  std::vector<size_t> fresh_at;
  {
    std::lock_guard lock(store.mu);
    HashSet seen;
    for (size_t k = 0; k < n; ++k) {
      const PageHash& hash = hashes[k];
      if (!seen.insert(hash).second) continue;
      if (auto p = store.pending.find(hash); p != store.pending.end()) {
        keep(p->second, hash);
        continue;
      }
      if (store.index.contains(hash)) {
        // Pinned anyway: the versions that hold it now may be removed before one takes it again.
        if (!arriving) keep(store.pending[hash] = internal::PendingPage{std::nullopt, page_size}, hash);
        continue;
      }
      fresh.push_back(page(k));
      fresh_at.push_back(k);
    }
    if (fresh.empty()) return hashes;
    ++store.loose_appends;  // keeps garbage collection from deleting the pack they land in
  }
  Result<std::vector<Location>> where = store.append(fresh);
  std::vector<Range> raced;
  {
    std::lock_guard lock(store.mu);
    --store.loose_appends;
    if (where.ok()) {
      for (size_t j = 0; j < fresh.size(); ++j) {
        const Location& loc = (*where)[j];
        const PageHash& hash = hashes[fresh_at[j]];
        auto [p, inserted] = store.pending.try_emplace(hash, internal::PendingPage{loc, page_size});
        if (!inserted) raced.push_back(Range{loc.pack, loc.offset, loc.length});
        keep(p->second, hash);
      }
    }
  }
  if (!where.ok()) return where.status();
  if (!raced.empty()) store.packs->punch(std::move(raced));
  return hashes;
}

}  // namespace

Result<PageHash> PageStore::put_page(std::span<const std::byte> page) {
  Result<std::vector<PageHash>> put = put_pages(page, static_cast<uint32_t>(page.size()));
  if (!put.ok()) return put.status();
  return put->front();
}

Result<std::vector<PageHash>> PageStore::put_pages(std::span<const std::byte> pages, uint32_t page_size,
                                                   std::span<const PageHash> expected) {
  return store_pages(*impl_, pages, page_size, expected, false);
}

Result<PageHash> PageStore::hold_page(std::span<const std::byte> page) {
  Result<std::vector<PageHash>> put = store_pages(*impl_, page, static_cast<uint32_t>(page.size()), {}, true);
  if (!put.ok()) return put.status();
  return put->front();
}

Status PageStore::release_pages(std::span<const PageHash> hashes) {
  std::vector<Range> garbage;
  {
    std::lock_guard lock(impl_->mu);
    HashMap<uint64_t> times;
    for (const PageHash& h : hashes) ++times[h];
    for (const auto& [h, n] : times) {
      auto p = impl_->pending.find(h);
      const uint64_t holds = p == impl_->pending.end() ? 0 : p->second.holds;
      if (holds < n) {
        return failed_precondition("release pages: page " + h.hex() + " is held " + std::to_string(holds) +
                                   " times, released " + std::to_string(n) + " times; nothing released");
      }
    }
    for (const auto& [h, n] : times) {
      auto p = impl_->pending.find(h);
      internal::PendingPage& page = p->second;
      page.holds -= n;
      if (page.holds > 0 || page.until_version) continue;
      // A writer or an import that staged it counts on finding it at commit: kept as a put_page.
      if (std::any_of(impl_->sessions.begin(), impl_->sessions.end(),
                      [&hash = h](const internal::Session* s) { return s->held.contains(hash); })) {
        page.until_version = true;
        continue;
      }
      auto ix = impl_->index.find(h);
      if (page.where && (ix == impl_->index.end() || !ix->second.same_place(*page.where))) {
        garbage.push_back(Range{page.where->pack, page.where->offset, page.where->length});
      }
      impl_->pending.erase(p);
    }
  }
  if (!garbage.empty()) {
    // Readers that looked the pages up before they went are done once the exclusive lock is ours.
    std::unique_lock reclaim(impl_->reclaim_mu);
    impl_->packs->punch(std::move(garbage));
  }
  return Status();
}

std::vector<VersionInfo> PageStore::versions() const {
  std::lock_guard lock(impl_->mu);
  std::vector<VersionInfo> out;
  out.reserve(impl_->versions.size());
  for (const auto& [v, row] : impl_->versions) out.push_back(row.info);
  return out;
}

std::optional<VersionInfo> PageStore::latest() const {
  std::lock_guard lock(impl_->mu);
  if (impl_->versions.empty()) return std::nullopt;
  return impl_->versions.rbegin()->second.info;
}

Result<Manifest> PageStore::manifest(uint64_t version) const {
  std::lock_guard lock(impl_->mu);
  auto row = impl_->versions.find(version);
  if (row == impl_->versions.end()) return not_found("version " + std::to_string(version) + " is not in the store");
  Result<std::shared_ptr<const PageList>> pages = impl_->pages_locked(version);
  if (!pages.ok()) return pages.status();
  Result<std::vector<uint8_t>> record = impl_->blob_locked(version, "record");
  if (!record.ok()) return record.status();
  Manifest m;
  m.info = row->second.info;
  m.pages = **pages;
  m.record.assign(record->begin(), record->end());
  return m;
}

// =================================================================================================
// Version pins

VersionPin::VersionPin(VersionPin&& other) noexcept
    : store_(std::exchange(other.store_, nullptr)), version_(std::exchange(other.version_, 0)) {}

VersionPin& VersionPin::operator=(VersionPin&& other) noexcept {
  if (this != &other) {
    reset();
    store_ = std::exchange(other.store_, nullptr);
    version_ = std::exchange(other.version_, 0);
  }
  return *this;
}

VersionPin::~VersionPin() { reset(); }

void VersionPin::reset() {
  if (!store_) return;
  std::exchange(store_, nullptr)->unpin_version(std::exchange(version_, 0));
}

Result<VersionPin> PageStore::pin_version(uint64_t version) {
  std::lock_guard lock(impl_->mu);
  if (!impl_->versions.contains(version)) {
    return not_found("pin version " + std::to_string(version) + ": no such version in the store");
  }
  ++impl_->version_pins[version];
  return VersionPin(impl_.get(), version);
}

Status PageStore::remove_version(uint64_t version) {
  std::lock_guard lock(impl_->mu);
  if (!impl_->versions.contains(version)) {
    return not_found("remove version " + std::to_string(version) + ": no such version in the store");
  }
  if (auto pins = impl_->version_pins.find(version); pins != impl_->version_pins.end()) {
    return failed_precondition("remove version " + std::to_string(version) + ": the version is pinned (" +
                               std::to_string(pins->second) + " pins held: an open heap runs on it); nothing removed");
  }
  if (impl_->writer_parents.contains(version)) {
    return failed_precondition("remove version " + std::to_string(version) +
                               ": an open version writer is written on top of it");
  }
  Result<sqlite::Transaction> tx = sqlite::Transaction::begin(impl_->db);
  if (!tx.ok()) return tx.status();
  Status status = impl_->remove_locked(version);
  if (status.ok()) DJINN_CRASH_POINT("heapstore.remove.before_commit");
  if (status.ok()) status = tx->commit();
  if (!status.ok()) {
    (void)tx->rollback();
    (void)impl_->load_versions_locked();  // undo what remove_locked changed in memory
  }
  return status;
}

Result<uint64_t> PageStore::remove_by_policy(const RetentionPolicy& policy) {
  std::lock_guard lock(impl_->mu);
  if (impl_->versions.empty()) return uint64_t{0};
  std::vector<uint64_t> doomed;
  int64_t cutoff = policy.keep_within_ms > 0 ? internal::now_unix_ms() - policy.keep_within_ms : INT64_MAX;
  std::vector<uint64_t> kept_pinned;  // what the policy alone would have removed
  uint64_t rank = 0;  // 0 for the newest
  for (auto it = impl_->versions.rbegin(); it != impl_->versions.rend(); ++it, ++rank) {
    const VersionInfo& info = it->second.info;
    bool keep = rank == 0 || rank < policy.keep_last || info.created_unix_ms >= cutoff ||
                impl_->writer_parents.contains(info.version);
    if (!keep && impl_->version_pins.contains(info.version)) {
      kept_pinned.push_back(info.version);
      keep = true;
    }
    if (!keep) doomed.push_back(info.version);
  }
  if (!kept_pinned.empty()) {
    std::string list;
    for (uint64_t v : kept_pinned) list += (list.empty() ? "" : ", ") + std::to_string(v);
    DJINN_LOG(kInfo, "heapstore") << "retention keeps version(s) " << list << " of page store "
                                  << impl_->dir.string() << ", which its policy would remove: they are pinned"
                                  << " (an open heap runs on each)";
  }
  if (doomed.empty()) return uint64_t{0};
  // Newest first: each removal merges deltas into the next version up, and only the removal of
  // the oldest full manifest rewrites one as full.
  Result<sqlite::Transaction> tx = sqlite::Transaction::begin(impl_->db);
  if (!tx.ok()) return tx.status();
  Status status;
  for (uint64_t v : doomed) {
    status = impl_->remove_locked(v);
    if (!status.ok()) break;
  }
  if (status.ok()) DJINN_CRASH_POINT("heapstore.remove.before_commit");
  if (status.ok()) status = tx->commit();
  if (!status.ok()) {
    (void)tx->rollback();
    (void)impl_->load_versions_locked();
    return status;
  }
  return static_cast<uint64_t>(doomed.size());
}

// Mark and sweep: every page some version's stored manifest names (a delta names the pages it
// brought in; the rest are named by the versions it is based on), or that a put_page, a writer
// or an import holds, is live; every other indexed page is deleted and its bytes punched out.
Result<GcStats> PageStore::collect_garbage() {
  GcStats stats;
  std::vector<Range> garbage;
  std::vector<uint64_t> dead_packs;
  {
    std::lock_guard lock(impl_->mu);
    HashSet live;
    for (const auto& [v, row] : impl_->versions) {
      Result<std::vector<uint8_t>> blob = impl_->blob_locked(v, "manifest");
      if (!blob.ok()) return blob.status();
      Result<internal::DecodedManifest> decoded =
          internal::decode_manifest(*blob, row.info.capacity_pages, "version " + std::to_string(v));
      if (!decoded.ok()) return decoded.status();
      for (const PageRef& p : decoded->pages) live.insert(p.hash);
      for (const DeltaEntry& e : decoded->delta) {
        if (!e.zero) live.insert(e.hash);
      }
    }
    std::set<uint64_t> pending_packs;
    for (const auto& [h, p] : impl_->pending) {
      live.insert(h);
      if (p.where) pending_packs.insert(p.where->pack);
    }
    for (const internal::Session* s : impl_->sessions) live.insert(s->held.begin(), s->held.end());

    struct Dead {
      PageHash hash;
      Location where;
    };
    std::vector<Dead> dead;
    std::vector<std::pair<uint64_t, std::vector<uint8_t>>> rewritten;  // log id, its live pages
    std::map<uint64_t, uint64_t> live_per_pack;
    {
      Result<sqlite::Statement> scan = impl_->db.prepare("SELECT id, pages FROM page_log");
      if (!scan.ok()) return scan.status();
      for (;;) {
        Result<bool> more = scan->step();
        if (!more.ok()) return more.status();
        if (!*more) break;
        uint64_t id = static_cast<uint64_t>(scan->column_int64(0));
        std::vector<uint8_t> kept;
        size_t dropped = 0;
        DJINN_RETURN_IF_ERROR(internal::for_each_log_entry(
            scan->column_blob(1), id, [&](const PageHash& h, const Location& where) {
              auto indexed = impl_->index.find(h);
              // A second entry of a hash (none is written) is never read: dead too.
              if (live.contains(h) && indexed != impl_->index.end() && indexed->second.same_place(where)) {
                ++live_per_pack[where.pack];
                internal::append_log_entry(kept, h, where);
              } else {
                dead.push_back(Dead{h, where});
                garbage.push_back(Range{where.pack, where.offset, where.length});
                stats.bytes_reclaimed += where.length;
                ++dropped;
              }
            }));
        if (dropped) rewritten.emplace_back(id, std::move(kept));
      }
    }
    // A pack file with no live page left goes as a whole, unless appends may still land in it
    // or refer to it (the current pack, a pending page's, any open writer's).
    uint64_t current = impl_->packs->current();
    for (uint64_t id : impl_->packs->ids()) {
      if (id != current && !live_per_pack.contains(id) && !pending_packs.contains(id) && impl_->sessions.empty() &&
          impl_->loose_appends == 0) {
        dead_packs.push_back(id);
      }
    }
    if (dead.empty() && dead_packs.empty()) return stats;

    Result<sqlite::Transaction> tx = sqlite::Transaction::begin(impl_->db);
    if (!tx.ok()) return tx.status();
    Result<sqlite::Statement*> del = impl_->db.cached("DELETE FROM page_log WHERE id = ?");
    if (!del.ok()) return del.status();
    Result<sqlite::Statement*> update = impl_->db.cached("UPDATE page_log SET pages = ? WHERE id = ?");
    if (!update.ok()) return update.status();
    for (const auto& [id, kept] : rewritten) {
      sqlite::Statement* st = kept.empty() ? *del : *update;
      st->reset();
      DJINN_RETURN_IF_ERROR(kept.empty() ? st->bind_all(id) : st->bind_all(kept, id));
      DJINN_RETURN_IF_ERROR(st->run());
    }
    Result<sqlite::Statement*> del_pack = impl_->db.cached("DELETE FROM packs WHERE id = ?");
    if (!del_pack.ok()) return del_pack.status();
    for (uint64_t id : dead_packs) {
      (*del_pack)->reset();
      DJINN_RETURN_IF_ERROR((*del_pack)->bind_all(id));
      DJINN_RETURN_IF_ERROR((*del_pack)->run());
    }
    DJINN_CRASH_POINT("heapstore.gc.before_commit");
    DJINN_RETURN_IF_ERROR(tx->commit());
    stats.pages_removed = dead.size();
    for (const Dead& d : dead) {
      auto indexed = impl_->index.find(d.hash);
      if (indexed == impl_->index.end() || !indexed->second.same_place(d.where)) continue;
      impl_->index.erase(indexed);
      impl_->pages_stored -= std::min<uint64_t>(impl_->pages_stored, 1);
      impl_->bytes_stored -= std::min<uint64_t>(impl_->bytes_stored, d.where.length);
    }
  }
  // The index no longer names these bytes; readers that looked a page up before are done once
  // the exclusive lock is ours.
  std::unique_lock reclaim(impl_->reclaim_mu);
  std::erase_if(garbage, [&](const Range& r) {
    return std::find(dead_packs.begin(), dead_packs.end(), r.pack) != dead_packs.end();
  });
  impl_->packs->punch(std::move(garbage));
  for (uint64_t id : dead_packs) impl_->packs->remove(id);
  return stats;
}

Status PageStore::export_version(uint64_t version, std::span<const PageHash> receiver_has,
                                 const ExportSink& sink) const {
  Result<Manifest> m = manifest(version);
  if (!m.ok()) return m.status();
  if (!sink.manifest || !sink.page) return invalid_argument("export version: the sink needs both callbacks");
  DJINN_RETURN_IF_ERROR(sink.manifest(*m));
  HashSet skip(receiver_has.begin(), receiver_has.end());
  // Read in runs of up to 1 MiB: pages in order in a pack come with one read.
  const uint32_t page_size = m->info.page_size;
  const size_t run_pages = std::max<size_t>(1, (size_t{1} << 20) / page_size);
  std::vector<PageHash> run;
  run.reserve(run_pages);
  std::vector<std::byte> buffer(run_pages * page_size);
  auto send = [&]() -> Status {
    Status error;
    const size_t wanted = run.size();
    const size_t read = read_pages(run, page_size, buffer, &error);
    for (size_t k = 0; k < read; ++k) {
      DJINN_RETURN_IF_ERROR(sink.page(run[k], std::span<const std::byte>(buffer).subspan(k * page_size, page_size)));
    }
    run.clear();
    return read == wanted ? Status() : error;
  };
  for (const PageRef& p : m->pages) {
    if (!skip.insert(p.hash).second) continue;  // the receiver has it, or it was sent already
    run.push_back(p.hash);
    if (run.size() == run_pages) DJINN_RETURN_IF_ERROR(send());
  }
  return run.empty() ? Status() : send();
}

Result<std::unique_ptr<PageStore::Import>> PageStore::import_begin(const Manifest& manifest) {
  const VersionInfo& info = manifest.info;
  DJINN_RETURN_IF_ERROR(internal::check_page_size(info.page_size));
  DJINN_RETURN_IF_ERROR(internal::check_capacity(info.capacity_pages));
  for (size_t i = 0; i < manifest.pages.size(); ++i) {
    const PageRef& p = manifest.pages[i];
    if (p.index >= info.capacity_pages) {
      return invalid_argument("import manifest: page " + std::to_string(i) + " has index " + std::to_string(p.index) +
                              ", beyond the capacity of " + std::to_string(info.capacity_pages) + " pages");
    }
    if (i > 0 && p.index <= manifest.pages[i - 1].index) {
      return invalid_argument("import manifest: page indexes must ascend, but " + std::to_string(p.index) +
                              " follows " + std::to_string(manifest.pages[i - 1].index));
    }
  }
  if (info.pages != manifest.pages.size()) {
    return invalid_argument("import manifest: it says " + std::to_string(info.pages) + " pages but lists " +
                            std::to_string(manifest.pages.size()));
  }
  auto session = std::make_unique<ImportSession>(impl_.get(), manifest);
  std::lock_guard lock(impl_->mu);
  HashSet missing_hashes;
  for (const PageRef& p : manifest.pages) {
    if (!impl_->knows_locked(p.hash)) missing_hashes.insert(p.hash);
  }
  session->start_locked(std::move(missing_hashes));
  return std::unique_ptr<Import>(std::move(session));
}

const std::filesystem::path& PageStore::dir() const { return impl_->dir; }

PageStore::Stats PageStore::stats() const {
  std::lock_guard lock(impl_->mu);
  Stats s;
  s.pages_stored = impl_->pages_stored;
  s.bytes_stored = impl_->bytes_stored;
  for (const auto& [h, p] : impl_->pending) {
    if (p.where) ++s.pages_pending;
  }
  s.pack_files = impl_->packs->ids().size();
  return s;
}

}  // namespace djinn::heapstore
