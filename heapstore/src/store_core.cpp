// The page store's commit (writers and imports alike) and the helpers that read and rewrite the
// index: lookups, manifests (materialised from full manifests and deltas, cached), removal.
#include "store_core.h"

#include <algorithm>
#include <cassert>
#include <cstring>
#include <future>
#include <string>

#include "djinn/core/fault.h"
#include "djinn/core/little_endian.h"
#include "djinn/core/log.h"

namespace djinn::heapstore::internal {
namespace {

// A version is stored as a delta against its parent while the chain of deltas back to a full
// manifest stays shorter than this and smaller than half a full manifest; reading a manifest
// replays at most that much.
constexpr uint32_t kMaxChainLength = 64;
// Materialised manifests kept in memory: the latest is the parent of the next checkpoint.
constexpr size_t kCachedManifests = 4;
constexpr size_t kCachedManifestEntries = size_t{1} << 22;

constexpr uint32_t kMinPageSize = 512;
constexpr uint32_t kMaxPageSize = uint32_t{1} << 21;  // a huge page
constexpr uint64_t kMaxCapacityPages = uint64_t{1} << 40;

}  // namespace

Status check_page_size(uint64_t page_size) {
  if (page_size < kMinPageSize || page_size > kMaxPageSize || (page_size & (page_size - 1)) != 0) {
    return invalid_argument("page size " + std::to_string(page_size) + ": must be a power of two from " +
                            std::to_string(kMinPageSize) + " to " + std::to_string(kMaxPageSize) + " bytes");
  }
  return Status();
}

Status check_capacity(uint64_t capacity_pages) {
  if (capacity_pages == 0 || capacity_pages > kMaxCapacityPages) {
    return invalid_argument("capacity of " + std::to_string(capacity_pages) + " pages: must be from 1 to " +
                            std::to_string(kMaxCapacityPages));
  }
  return Status();
}

void reserve_index(HashMap<Location>& index, size_t more) {
  // Only ever up, and at least twice the size: reserve() to less than the table holds rehashes it
  // smaller (3 ms at 65,536 pages), and to just what is needed would rehash it every few percent.
  if (static_cast<double>(index.size() + more) > static_cast<double>(index.bucket_count()) * index.max_load_factor()) {
    index.reserve(std::max(index.size() + more, 2 * index.size()));
  }
}

std::shared_ptr<PageList> new_page_list(const std::shared_ptr<PageListPool>& pool, size_t capacity) {
  std::unique_ptr<PageList> list;
  {
    std::lock_guard lock(pool->mu);
    if (!pool->spare.empty()) {
      list = std::move(pool->spare.back());
      pool->spare.pop_back();
    }
  }
  if (!list) list = std::make_unique<PageList>();
  list->clear();
  list->reserve(capacity);
  std::weak_ptr<PageListPool> weak = pool;
  return std::shared_ptr<PageList>(list.release(), [weak](PageList* released) {
    std::unique_ptr<PageList> owned(released);
    if (std::shared_ptr<PageListPool> p = weak.lock()) {
      std::lock_guard lock(p->mu);
      if (p->spare.size() < PageListPool::kKept) p->spare.push_back(std::move(owned));
    }
  });
}

void append_log_entry(std::vector<uint8_t>& out, const PageHash& hash, const Location& where) {
  size_t at = out.size();
  out.resize(at + kLogEntryBytes);
  uint8_t* p = out.data() + at;
  std::memcpy(p, hash.bytes.data(), 32);
  put_le(p + 32, where.pack, 4);
  put_le(p + 36, where.flags, 4);
  put_le(p + 40, where.offset, 8);
  put_le(p + 48, where.length, 4);
  put_le(p + 52, where.size, 4);
  put_le(p + 56, where.check, 8);
}

Status insert_log_blob(sqlite::Database& db, uint64_t id, const std::vector<uint8_t>& entries) {
  Result<sqlite::Statement*> insert = db.cached("INSERT INTO page_log(id, pages) VALUES (?, ?)");
  if (!insert.ok()) return insert.status();
  (*insert)->reset();
  DJINN_RETURN_IF_ERROR((*insert)->bind_all(id, entries));
  return (*insert)->run();
}

Status for_each_log_entry(std::span<const uint8_t> blob, uint64_t id,
                          const std::function<void(const PageHash&, const Location&)>& fn,
                          const std::map<uint64_t, uint64_t>* committed) {
  if (blob.size() % kLogEntryBytes != 0) {
    return data_loss("page log entry " + std::to_string(id) + " has " + std::to_string(blob.size()) +
                     " bytes, not a whole number of " + std::to_string(kLogEntryBytes) + "-byte entries");
  }
  for (size_t at = 0; at < blob.size(); at += kLogEntryBytes) {
    const uint8_t* p = blob.data() + at;
    PageHash h;
    std::memcpy(h.bytes.data(), p, 32);
    Location where;
    where.pack = get_le(p + 32, 4);
    where.flags = static_cast<uint32_t>(get_le(p + 36, 4));
    where.offset = get_le(p + 40, 8);
    where.length = static_cast<uint32_t>(get_le(p + 48, 4));
    where.size = static_cast<uint32_t>(get_le(p + 52, 4));
    where.check = get_le(p + 56, 8);
    auto corrupt = [&](const std::string& what) {
      return data_loss("index.db: page log entry " + std::to_string(id) + ", page " +
                       std::to_string(at / kLogEntryBytes) + " (" + h.hex() + "), is corrupt: " + what);
    };
    if (where.pack == 0) return corrupt("pack 0");
    if ((where.flags & ~(kFlagZstd | kFlagChecked)) != 0) {
      return corrupt("unknown flags " + std::to_string(where.flags));
    }
    if (!check_page_size(where.size).ok()) return corrupt("size " + std::to_string(where.size) + " is no page size");
    const uint64_t most = max_stored_length(where.size, where.flags);
    if (where.length == 0 || where.length > most || (!(where.flags & kFlagZstd) && where.length != where.size)) {
      return corrupt("length " + std::to_string(where.length) + " for a page of " + std::to_string(where.size) +
                     " bytes stored " + ((where.flags & kFlagZstd) ? "compressed (at most " + std::to_string(most) + ")"
                                                                     : std::string("raw (exactly that)")));
    }
    if (committed) {
      // A commit writes a pack's row with the entries that name it, and garbage collection drops
      // them together: an entry naming a pack with no row is corrupt (the pack would be deleted as
      // an uncommitted leftover).
      auto pack = committed->find(where.pack);
      if (pack == committed->end()) return corrupt("pack " + std::to_string(where.pack) + " has no committed length");
      if (where.offset > pack->second || where.length > pack->second - where.offset) {
        return corrupt("bytes [" + std::to_string(where.offset) + ", +" + std::to_string(where.length) + ") of pack " +
                       std::to_string(where.pack) + ", which committed " + std::to_string(pack->second));
      }
    }
    fn(h, where);
  }
  return Status();
}

// =================================================================================================
// Commit: the one place a version becomes durable (writers and imports alike).

Result<VersionInfo> StoreCore::commit_version(CommitPlan& plan) {
  DJINN_CRASH_POINT("heapstore.commit.begin");
  // 1. The pages that enter the index with this version: the ones the session appended and the
  //    put_page pages it refers to. Pages it refers to that are already indexed stay as they are
  //    (held by the session, so garbage collection did not take them meanwhile).
  std::vector<PageHash> referenced;  // sorted, unique; filled by refer() when needed
  auto refer = [&] {
    if (plan.delta) {
      for (const DeltaEntry& e : *plan.delta) {
        if (!e.zero) referenced.push_back(e.hash);
      }
    } else {
      referenced.reserve(plan.pages->size());
      for (const PageRef& p : *plan.pages) referenced.push_back(p.hash);
    }
    std::sort(referenced.begin(), referenced.end());
    referenced.erase(std::unique(referenced.begin(), referenced.end()), referenced.end());
  };
  struct Row {
    PageHash hash;
    Location where;
    bool own = false;       // the session's copy (else a put_page's)
    bool inserted = false;  // the index took it (else it already had the page)
  };
  std::vector<Row> rows;
  {
    std::lock_guard lock(mu);
    if (plan.own_all_referenced && pending.empty()) {
      // Every page the session appended is in the version, and no put_page page can be: the
      // rows are the session's pages as they are (sorting 65,536 hashes took 19 ms).
      rows.reserve(plan.own->size());
      for (const auto& [h, where] : *plan.own) rows.push_back(Row{h, where, true});
    } else {
      refer();
      rows.reserve(referenced.size());
      for (const PageHash& h : referenced) {
        if (auto own = plan.own->find(h); own != plan.own->end()) {
          rows.push_back(Row{h, own->second, true});
        } else if (auto p = pending.find(h); p != pending.end() && p->second.where) {
          // Put in a pack whose sync failed after its last move (a commit that failed before its
          // sync did, or a put that reserved there first): moved now.
          if (std::shared_ptr<PackFile> f = packs->get(p->second.where->pack); f && f->failed()) {
            std::pair<const PageHash, PendingPage>* entry = &*p;
            move_pending_locked({&entry, 1});
          }
          rows.push_back(Row{h, *p->second.where, false});
        }
      }
    }
  }
  std::map<uint64_t, uint64_t> pack_ends;
  for (const Row& r : rows) {
    uint64_t& end = pack_ends[r.where.pack];
    end = std::max(end, r.where.end());
  }

  // 2. Their bytes must be durable before the index refers to them. The packs are synced on
  //    another thread while this one builds the transaction; it commits only once they are.
  std::vector<std::shared_ptr<PackFile>> to_sync;
  if (options.durable) {
    for (const auto& [id, end] : pack_ends) {
      std::shared_ptr<PackFile> file = packs->get(id);
      if (!file) return internal_error("commit: pack " + std::to_string(id) + " is not open");
      to_sync.push_back(std::move(file));
    }
  }
  // Declared after to_sync: however this function is left, the sync is over before to_sync goes.
  std::future<Status> synced;
  if (!to_sync.empty()) {
    synced = std::async(std::launch::async, [&to_sync] {
      for (const auto& file : to_sync) DJINN_RETURN_IF_ERROR(file->sync());
      return Status();
    });
  }

  // 3. One transaction: the index rows, the packs' committed lengths, the version.
  VersionRow row;
  std::vector<Range> garbage;          // bytes nobody could read
  std::vector<Range> pending_garbage;  // bytes a reader may have looked up: punched exclusively
  std::unique_lock lock(mu);
  // A put_page page another commit indexed meanwhile is no longer this commit's to index. One
  // moved meanwhile (out of a pack whose sync failed) is indexed where this commit synced it, if
  // that sync succeeds.
  std::erase_if(rows, [&](const Row& r) {
    if (r.own) return false;
    auto p = pending.find(r.hash);
    return p == pending.end() || !p->second.where;
  });
  row.info.parent = plan.parent;
  row.info.page_size = plan.page_size;
  row.info.capacity_pages = plan.capacity;
  row.info.pages = plan.pages->size();
  row.info.created_unix_ms = now_unix_ms();
  std::vector<uint8_t> blob;
  auto parent_row = plan.parent ? versions.find(plan.parent) : versions.end();
  if (plan.delta && parent_row != versions.end() && parent_row->second.chain_length + 1 <= kMaxChainLength &&
      parent_row->second.chain_entries + plan.delta->size() <= std::max<uint64_t>(plan.pages->size(), 1024) / 2) {
    row.base = plan.parent;
    row.chain_entries = parent_row->second.chain_entries + plan.delta->size();
    row.chain_length = parent_row->second.chain_length + 1;
    blob = encode_delta(*plan.delta);
  } else {
    blob = encode_full(*plan.pages);
  }

  // A page another commit indexed meanwhile is that commit's: ours is garbage. The others are
  // appended to the page log as packed entries, a blob per 65,536 pages: 65,536 rows of their own
  // took 30 ms to insert and dirtied a leaf of the B-tree per page when keyed by hash.
  uint64_t inserted_pages = 0;
  uint64_t inserted_bytes = 0;
  std::vector<std::vector<uint8_t>> log_blobs;
  for (Row& r : rows) {
    if (index.contains(r.hash)) continue;
    r.inserted = true;
    ++inserted_pages;
    inserted_bytes += r.where.length;
    if (log_blobs.empty() || log_blobs.back().size() >= kLogEntriesPerBlob * kLogEntryBytes) {
      log_blobs.emplace_back().reserve(std::min<size_t>(rows.size(), kLogEntriesPerBlob) * kLogEntryBytes);
    }
    append_log_entry(log_blobs.back(), r.hash, r.where);
  }
  uint64_t log_id = next_log;
  Result<sqlite::Transaction> tx = sqlite::Transaction::begin(db);
  if (!tx.ok()) return tx.status();
  for (const std::vector<uint8_t>& entries : log_blobs) DJINN_RETURN_IF_ERROR(insert_log_blob(db, log_id++, entries));
  Result<sqlite::Statement*> update_pack = db.cached(
      "INSERT INTO packs(id, committed_bytes) VALUES (?, ?) "
      "ON CONFLICT(id) DO UPDATE SET committed_bytes = max(committed_bytes, excluded.committed_bytes)");
  if (!update_pack.ok()) return update_pack.status();
  for (const auto& [id, end] : pack_ends) {
    (*update_pack)->reset();
    DJINN_RETURN_IF_ERROR((*update_pack)->bind_all(id, end));
    DJINN_RETURN_IF_ERROR((*update_pack)->run());
  }
  row.info.pages_written = inserted_pages;
  Result<sqlite::Statement*> insert_version = db.cached(
      "INSERT INTO versions(parent, page_size, capacity_pages, pages, pages_written, created_unix_ms, base, "
      "chain_entries, chain_length, manifest, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
  if (!insert_version.ok()) return insert_version.status();
  DJINN_RETURN_IF_ERROR((*insert_version)
                            ->bind_all(row.info.parent, row.info.page_size, row.info.capacity_pages, row.info.pages,
                                       row.info.pages_written, row.info.created_unix_ms, row.base, row.chain_entries,
                                       row.chain_length, blob, bytes_of(plan.record)));
  DJINN_RETURN_IF_ERROR((*insert_version)->run());
  row.info.version = static_cast<uint64_t>(db.last_insert_rowid());
  if (synced.valid()) {
    if (Status st = synced.get(); !st.ok()) {
      move_pending_from_failed_packs_locked();
      return st;
    }
  }
  DJINN_CRASH_POINT("heapstore.commit.after_pack");
  DJINN_CRASH_POINT("heapstore.commit.before_index_commit");
  *plan.phase = Phase::kIndexCommitting;
  DJINN_RETURN_IF_ERROR(tx->commit());
  DJINN_CRASH_POINT("heapstore.commit.after_index_commit");

  // 4. The version is durable; bring memory up to date.
  versions[row.info.version] = row;
  if (plan.pin) ++version_pins[row.info.version];  // under the lock that makes it visible
  next_log = log_id;
  uint64_t own_used = 0;
  reserve_index(index, inserted_pages);
  for (const Row& r : rows) {
    if (r.inserted) index[r.hash] = r.where;
    if (r.inserted && r.own) ++own_used;
  }
  pages_stored += inserted_pages;
  bytes_stored += inserted_bytes;
  if (!pending.empty()) {
    // A put_page page this version holds is an ordinary page now; its bytes are garbage unless
    // the index took them. A held page stays held, as the index's page, until released.
    HashSet taken;
    for (const Row& r : rows) {
      if (!r.own && r.inserted) taken.insert(r.hash);
    }
    if (referenced.empty()) refer();
    for (const PageHash& h : referenced) {
      auto p = pending.find(h);
      if (p == pending.end()) continue;
      auto ix = index.find(h);
      if (p->second.where && (ix == index.end() || !ix->second.same_place(*p->second.where))) {
        pending_garbage.push_back(Range{p->second.where->pack, p->second.where->offset, p->second.where->length});
      }
      if (p->second.holds > 0) {
        p->second.where.reset();
        p->second.until_version = false;
      } else {
        pending.erase(p);
      }
    }
  }
  if (own_used < plan.own->size()) {
    // Appended but not indexed from here: overwritten later in the same version, or stored by
    // another commit first.
    HashSet used;
    for (const Row& r : rows) {
      if (r.inserted && r.own) used.insert(r.hash);
    }
    for (const auto& [h, where] : *plan.own) {
      if (where.pack != 0 && !used.contains(h)) garbage.push_back(Range{where.pack, where.offset, where.length});
    }
  }
  end_session_locked(plan.session);
  cache_locked(row.info.version, plan.pages);
  *plan.phase = Phase::kDone;
  lock.unlock();
  // Outside the lock: giving back what the pin held before takes it.
  if (plan.pin) *plan.pin = VersionPin(this, row.info.version);
  packs->punch(std::move(garbage));
  if (!pending_garbage.empty()) {
    std::unique_lock reclaim(reclaim_mu);
    packs->punch(std::move(pending_garbage));
  }
  return row.info;
}

Result<std::vector<Location>> StoreCore::append(std::span<const std::span<const std::byte>> pages) {
  std::vector<Location> out;
  if (pages.empty()) return out;
  out.reserve(pages.size());
  uint64_t total = 0;
  std::vector<std::span<const std::byte>> parts;
  // Reused: a fresh megabyte per batch would cost a page fault per 4 KiB.
  thread_local std::vector<std::byte> encoded;
  if (options.compression_level == 0) {
    // Raw pages go to the file straight from the caller's buffers.
    for (std::span<const std::byte> page : pages) {
      out.push_back(Location{0, total, static_cast<uint32_t>(page.size()), static_cast<uint32_t>(page.size()),
                             kFlagChecked, stored_checksum(page)});
      total += page.size();
    }
    parts.assign(pages.begin(), pages.end());
  } else {
    encoded.clear();
    for (std::span<const std::byte> page : pages) {
      uint64_t at = encoded.size();
      Encoded e = encode_page(page, options.compression_level, encoded);
      out.push_back(Location{0, at, e.length, static_cast<uint32_t>(page.size()), e.flags | kFlagChecked,
                             stored_checksum(std::span<const std::byte>(encoded).subspan(at, e.length))});
    }
    total = encoded.size();
    parts.push_back(encoded);
  }
  Result<PackSet::Reservation> r = packs->reserve(total);
  if (!r.ok()) return r.status();
  DJINN_RETURN_IF_ERROR(r->file->write_parts_at(r->offset, parts));
  if (options.durable) r->file->start_writeback(r->offset, total);
  for (Location& where : out) {
    where.pack = r->file->id();
    where.offset += r->offset;
  }
  return out;
}

void StoreCore::move_pending_from_failed_packs_locked() {
  std::vector<std::pair<const PageHash, PendingPage>*> stranded;
  for (auto& entry : pending) {
    if (!entry.second.where) continue;
    std::shared_ptr<PackFile> file = packs->get(entry.second.where->pack);
    if (file && file->failed()) stranded.push_back(&entry);
  }
  move_pending_locked(stranded);
}

void StoreCore::move_pending_locked(std::span<std::pair<const PageHash, PendingPage>* const> entries) {
  // The bytes come back from the page cache (a lost write-back leaves them there until the kernel
  // drops them), checked against the page's name so a copy is never a wrong one; then appended
  // together to the current pack.
  std::vector<std::vector<std::byte>> copies;
  std::vector<std::pair<const PageHash, PendingPage>*> moving;
  size_t unreadable = 0;
  for (auto* entry : entries) {
    const Location& at = *entry->second.where;
    std::shared_ptr<PackFile> file = packs->get(at.pack);
    std::vector<std::byte> stored(at.length), page(at.size);
    if (!file || !file->read_at(at.offset, stored).ok() || !decode_page(at, stored, page).ok() ||
        PageHash::of(page) != entry->first) {
      ++unreadable;
      continue;
    }
    copies.push_back(std::move(page));
    moving.push_back(entry);
  }
  if (unreadable > 0) {
    DJINN_LOG(kError, "heapstore") << unreadable << " pages in a pack whose sync failed no longer read back as "
                                   << "themselves: versions that need them will not commit";
  }
  if (moving.empty()) return;
  std::vector<std::span<const std::byte>> parts(copies.begin(), copies.end());
  Result<std::vector<Location>> moved = append(parts);
  if (!moved.ok()) {
    DJINN_LOG(kError, "heapstore") << "moving " << moving.size() << " pages out of a pack whose sync failed: "
                                   << moved.status().to_string();
    return;
  }
  for (size_t i = 0; i < moving.size(); ++i) moving[i]->second.where = (*moved)[i];
  DJINN_LOG(kWarn, "heapstore") << "moved " << moving.size() << " pages out of a pack whose sync failed";
}

// =================================================================================================
// Helpers (mu held)

Status StoreCore::load_versions_locked() {
  versions.clear();
  Result<sqlite::Statement> st = db.prepare(
      "SELECT version, parent, page_size, capacity_pages, pages, pages_written, created_unix_ms, base, "
      "chain_entries, chain_length FROM versions ORDER BY version");
  if (!st.ok()) return st.status();
  for (;;) {
    Result<bool> more = st->step();
    if (!more.ok()) return more.status();
    if (!*more) break;
    VersionRow row;
    row.info.version = static_cast<uint64_t>(st->column_int64(0));
    row.info.parent = static_cast<uint64_t>(st->column_int64(1));
    row.info.page_size = static_cast<uint32_t>(st->column_int64(2));
    row.info.capacity_pages = static_cast<uint64_t>(st->column_int64(3));
    row.info.pages = static_cast<uint64_t>(st->column_int64(4));
    row.info.pages_written = static_cast<uint64_t>(st->column_int64(5));
    row.info.created_unix_ms = st->column_int64(6);
    row.base = static_cast<uint64_t>(st->column_int64(7));
    row.chain_entries = static_cast<uint64_t>(st->column_int64(8));
    row.chain_length = static_cast<uint32_t>(st->column_int64(9));
    versions[row.info.version] = row;
  }
  return Status();
}

std::optional<Location> StoreCore::lookup_locked(const PageHash& hash) const {
  auto it = index.find(hash);
  return it == index.end() ? std::nullopt : std::optional<Location>(it->second);
}

Status StoreCore::load_index_locked(const std::map<uint64_t, uint64_t>& committed) {
  Result<sqlite::Statement> all = db.prepare("SELECT id, pages FROM page_log ORDER BY id");
  if (!all.ok()) return all.status();
  index.clear();
  pages_stored = 0;
  bytes_stored = 0;
  next_log = 1;
  for (;;) {
    Result<bool> more = all->step();
    if (!more.ok()) return more.status();
    if (!*more) return Status();
    uint64_t id = static_cast<uint64_t>(all->column_int64(0));
    std::vector<uint8_t> blob = all->column_blob(1);
    reserve_index(index, blob.size() / kLogEntryBytes);
    DJINN_RETURN_IF_ERROR(for_each_log_entry(blob, id, [&](const PageHash& h, const Location& where) {
      // A second entry of a hash (none is written) loses to the first; collect_garbage drops it.
      if (index.try_emplace(h, where).second) {
        ++pages_stored;
        bytes_stored += where.length;
      }
    }, &committed));
    next_log = std::max(next_log, id + 1);
  }
}

bool StoreCore::knows_locked(const PageHash& hash) const { return pending.contains(hash) || index.contains(hash); }

Result<std::vector<uint8_t>> StoreCore::blob_locked(uint64_t version, const char* column) {
  Result<sqlite::Statement*> st = db.cached(std::string("SELECT ") + column + " FROM versions WHERE version = ?");
  if (!st.ok()) return st.status();
  DJINN_RETURN_IF_ERROR((*st)->bind_all(version));
  Result<bool> row = (*st)->step();
  if (!row.ok()) return row.status();
  if (!*row) return not_found("version " + std::to_string(version) + " is not in the store");
  std::vector<uint8_t> out = (*st)->column_blob(0);
  (*st)->reset();
  return out;
}

Result<std::shared_ptr<const PageList>> StoreCore::pages_locked(uint64_t version) {
  for (auto it = cache.begin(); it != cache.end(); ++it) {
    if (it->first == version) {
      cache.splice(cache.begin(), cache, it);
      return cache.front().second;
    }
  }
  // Walk back to a full manifest (or a version in the cache), then replay the deltas forward.
  std::vector<uint64_t> chain;
  std::shared_ptr<const PageList> start;
  uint64_t v = version;
  for (;;) {
    auto row = versions.find(v);
    if (row == versions.end()) {
      return v == version ? Status(not_found("version " + std::to_string(version) + " is not in the store"))
                          : Status(data_loss("version " + std::to_string(v) + ", a base of version " +
                                             std::to_string(version) + ", is missing"));
    }
    if (v != version) {
      for (const auto& [cached_version, cached_pages] : cache) {
        if (cached_version == v) start = cached_pages;
      }
      if (start) break;
    }
    chain.push_back(v);
    if (row->second.base == 0) break;
    v = row->second.base;
  }
  PageList pages;
  if (start) pages = *start;
  for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
    const VersionRow& row = versions.at(*it);
    Result<std::vector<uint8_t>> blob = blob_locked(*it, "manifest");
    if (!blob.ok()) return blob.status();
    Result<DecodedManifest> decoded =
        decode_manifest(*blob, row.info.capacity_pages, "version " + std::to_string(*it));
    if (!decoded.ok()) return decoded.status();
    if (decoded->full != (row.base == 0)) {
      return data_loss("the stored manifest of version " + std::to_string(*it) + " is not of the kind its row says");
    }
    pages = decoded->full ? std::move(decoded->pages) : apply_delta(pages, decoded->delta);
  }
  auto shared = std::make_shared<const PageList>(std::move(pages));
  cache_locked(version, shared);
  return shared;
}

void StoreCore::cache_locked(uint64_t version, std::shared_ptr<const PageList> pages) {
  for (auto it = cache.begin(); it != cache.end(); ++it) {
    if (it->first == version) {
      cache.erase(it);
      break;
    }
  }
  cache.emplace_front(version, std::move(pages));
  size_t entries = 0;
  size_t kept = 0;
  for (auto it = cache.begin(); it != cache.end();) {
    entries += it->second->size();
    if (kept > 0 && (kept >= kCachedManifests || entries > kCachedManifestEntries)) {
      it = cache.erase(it);
    } else {
      ++kept;
      ++it;
    }
  }
}

// Deletes `version`'s row (inside the caller's transaction). Versions stored as deltas against it
// are rewritten first: onto its own base (their delta merged with its), or as full manifests when
// it was one.
Status StoreCore::remove_locked(uint64_t version) {
  const VersionRow removed = versions.at(version);
  std::vector<uint64_t> children;
  for (const auto& [v, row] : versions) {
    if (row.base == version) children.push_back(v);
  }
  Result<sqlite::Statement*> update = db.cached(
      "UPDATE versions SET base = ?, chain_entries = ?, chain_length = ?, manifest = ? WHERE version = ?");
  if (!update.ok()) return update.status();
  std::optional<std::vector<DeltaEntry>> removed_delta;
  for (uint64_t child : children) {
    VersionRow& row = versions.at(child);
    std::vector<uint8_t> blob;
    if (removed.base == 0) {
      Result<std::shared_ptr<const PageList>> pages = pages_locked(child);
      if (!pages.ok()) return pages.status();
      blob = encode_full(**pages);
      row.base = 0;
      row.chain_entries = 0;
      row.chain_length = 0;
    } else {
      if (!removed_delta) {
        Result<std::vector<uint8_t>> own = blob_locked(version, "manifest");
        if (!own.ok()) return own.status();
        Result<DecodedManifest> decoded =
            decode_manifest(*own, removed.info.capacity_pages, "version " + std::to_string(version));
        if (!decoded.ok()) return decoded.status();
        removed_delta = std::move(decoded->delta);
      }
      Result<std::vector<uint8_t>> theirs = blob_locked(child, "manifest");
      if (!theirs.ok()) return theirs.status();
      Result<DecodedManifest> decoded =
          decode_manifest(*theirs, row.info.capacity_pages, "version " + std::to_string(child));
      if (!decoded.ok()) return decoded.status();
      std::vector<DeltaEntry> merged = merge_deltas(*removed_delta, decoded->delta);
      blob = encode_delta(merged);
      row.base = removed.base;
      row.chain_length = removed.chain_length;
      row.chain_entries = removed.chain_entries - std::min<uint64_t>(removed.chain_entries, removed_delta->size()) +
                          merged.size();
    }
    (*update)->reset();
    DJINN_RETURN_IF_ERROR((*update)->bind_all(row.base, row.chain_entries, row.chain_length, blob, child));
    DJINN_RETURN_IF_ERROR((*update)->run());
  }
  Result<sqlite::Statement*> del = db.cached("DELETE FROM versions WHERE version = ?");
  if (!del.ok()) return del.status();
  DJINN_RETURN_IF_ERROR((*del)->bind_all(version));
  DJINN_RETURN_IF_ERROR((*del)->run());
  versions.erase(version);
  for (auto it = cache.begin(); it != cache.end(); ++it) {
    if (it->first == version) {
      cache.erase(it);
      break;
    }
  }
  return Status();
}

void StoreCore::unpin_version(uint64_t version) {
  std::lock_guard lock(mu);
  auto it = version_pins.find(version);
  if (it != version_pins.end() && --it->second == 0) version_pins.erase(it);
}

StoreCore::~StoreCore() {
  if (!version_pins.empty()) {
    // Each of them will give itself back to a store that is gone.
    DJINN_LOG(kError, "heapstore") << "page store " << dir.string() << " closed with " << version_pins.size()
                                   << " versions pinned (version " << version_pins.begin()->first
                                   << " among them): a VersionPin outlived its store";
    assert(version_pins.empty() && "a VersionPin must not outlive its PageStore");
  }
  workers.reset();
  if (checkpointer) {
    checkpointer->detach(db);
    checkpointer.reset();
  }
  // put_page pages no version took: nothing refers to their bytes once the store is closed. Rows
  // a commit wrote but memory never learnt of (a crash point between the two) are asked too.
  if (pending.empty()) return;
  std::set<std::pair<uint64_t, uint64_t>> indexed_late;  // pack, offset
  if (Result<sqlite::Statement> late = db.prepare("SELECT id, pages FROM page_log WHERE id >= ?");
      late.ok() && late->bind_all(next_log).ok()) {
    for (Result<bool> more = late->step(); more.ok() && *more; more = late->step()) {
      (void)for_each_log_entry(late->column_blob(1), static_cast<uint64_t>(late->column_int64(0)),
                               [&](const PageHash&, const Location& where) {
                                 indexed_late.emplace(where.pack, where.offset);
                               });
    }
  }
  std::vector<Range> garbage;
  for (const auto& [h, p] : pending) {
    if (!p.where || indexed_late.contains({p.where->pack, p.where->offset})) continue;
    auto it = index.find(h);
    if (it != index.end() && it->second.same_place(*p.where)) continue;
    garbage.push_back(Range{p.where->pack, p.where->offset, p.where->length});
  }
  if (packs) packs->punch(std::move(garbage));
}

}  // namespace djinn::heapstore::internal
