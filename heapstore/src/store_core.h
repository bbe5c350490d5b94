// The page store's shared state and the steps its parts share (PageStore, VersionWriter,
// imports): what is kept in memory beside the index, and the one commit every version goes
// through. See page_store.cpp for the layout on disk.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <shared_mutex>
#include <span>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "djinn/core/sqlite.h"
#include "djinn/heapstore/page_store.h"
#include "manifest_codec.h"
#include "pack_file.h"
#include "store_support.h"

namespace djinn::heapstore::internal {

using HashSet = std::unordered_set<PageHash, PageHashHasher>;
template <class V>
using HashMap = std::unordered_map<PageHash, V, PageHashHasher>;

// How far a commit got: past kIndexCommitting its pages may be referenced by a committed
// version, so an abort (the in-process stand-in for a crash) must not punch them.
enum class Phase { kOpen, kIndexCommitting, kDone };

// INVALID_ARGUMENT unless a power of two from 512 bytes to 2 MiB.
Status check_page_size(uint64_t page_size);
// INVALID_ARGUMENT unless from 1 to 2^40 pages.
Status check_capacity(uint64_t capacity_pages);

inline int64_t now_unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

inline std::span<const uint8_t> bytes_of(const PageHash& h) { return {h.bytes.data(), h.bytes.size()}; }

inline std::span<const uint8_t> bytes_of(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// What the store knows of one stored version, besides its manifest and record (kept in SQLite).
struct VersionRow {
  VersionInfo info;
  uint64_t base = 0;           // the version its stored delta applies to; 0: a full manifest
  uint64_t chain_entries = 0;  // delta entries replayed from the full manifest (an upper bound)
  uint32_t chain_length = 0;   // deltas replayed from the full manifest (an upper bound)
};

// A writer or an import: the pages it refers to that are already stored are held against garbage
// collection until it ends.
struct Session {
  HashSet held;  // guarded by StoreCore::mu
};

// A page stored with put_page that no committed version holds yet, or with hold_page and not yet
// released. It is kept while either is so.
struct PendingPage {
  std::optional<Location> where;  // its own bytes; nullopt when the index has the page
  uint32_t size = 0;
  bool until_version = false;  // put (or arrived): until a committed version holds it
  uint64_t holds = 0;          // hold_page calls not yet released
};

// The index table (page_log): each entry a blob of the pages one commit indexed, packed in
// kLogEntryBytes each (hash, pack, flags, offset, length, size, checksum; little-endian), at most
// kLogEntriesPerBlob pages a blob.
inline constexpr size_t kLogEntryBytes = 64;
inline constexpr size_t kLogEntriesPerBlob = 65536;
void append_log_entry(std::vector<uint8_t>& out, const PageHash& hash, const Location& where);
// Adds blob `entries` to the page log as entry `id` (in the caller's transaction).
Status insert_log_blob(sqlite::Database& db, uint64_t id, const std::vector<uint8_t>& entries);
// Calls `fn` for each page of page log entry `id`, checking each page's place first: DATA_LOSS,
// naming the entry and the page, for a blob that is not whole entries or a place no page could
// be stored at (an unknown pack number or flag, a size that is no page size, more bytes than a
// page of that size can take, or, where `committed` gives its pack's committed length, bytes
// beyond it). A corrupt length would otherwise become an allocation of up to 4 GiB on a read.
Status for_each_log_entry(std::span<const uint8_t> blob, uint64_t id,
                          const std::function<void(const PageHash&, const Location&)>& fn,
                          const std::map<uint64_t, uint64_t>* committed = nullptr);

// Grows `index` for `more` pages, never shrinking it.
void reserve_index(HashMap<Location>& index, size_t more);

// Page lists of versions that left the manifest cache, kept for the next version's list: a fresh
// list of 65,536 pages (2.6 MB) costs 640 page faults, 1.2 ms of a 5 ms incremental checkpoint here.
struct PageListPool {
  static constexpr size_t kKept = 2;
  std::mutex mu;  // guards spare
  std::vector<std::unique_ptr<PageList>> spare;
};
// An empty list with room for `capacity` pages, from the pool when it has one; it goes back to the
// pool (if the pool still exists) when its last holder lets go.
std::shared_ptr<PageList> new_page_list(const std::shared_ptr<PageListPool>& pool, size_t capacity);

// What commit_version needs from a writer or an import.
struct CommitPlan {
  Session* session = nullptr;
  uint64_t parent = 0;
  uint32_t page_size = 0;
  uint64_t capacity = 0;
  std::shared_ptr<const PageList> pages;         // the whole new version
  std::optional<std::vector<DeltaEntry>> delta;  // its changes against `parent`, when it has one
  std::string_view record;
  const HashMap<Location>* own = nullptr;  // pages the session appended
  bool own_all_referenced = false;          // the version holds every page in `own`
  Phase* phase = nullptr;
  VersionPin* pin = nullptr;  // takes a pin on the new version as it becomes visible
};

// The store's state and the steps shared by PageStore, VersionWriter and imports.
struct StoreCore {
  StoreCore(std::filesystem::path d, PageStoreOptions o, DirLock l, sqlite::Database database)
      : dir(std::move(d)), options(o), lock(std::move(l)), db(std::move(database)) {}
  ~StoreCore();

  std::filesystem::path dir;
  PageStoreOptions options;
  DirLock lock;
  std::unique_ptr<PackSet> packs;

  // Guards db .. cache below; page reads look pages up under it shared, side by side.
  mutable std::shared_mutex mu;
  sqlite::Database db;
  std::map<uint64_t, VersionRow> versions;
  HashMap<PendingPage> pending;
  std::set<Session*> sessions;
  std::multiset<uint64_t> writer_parents;      // parents of open writers
  std::map<uint64_t, uint64_t> version_pins;  // version -> VersionPins held on it
  uint64_t loose_appends = 0;  // put_page appends not yet recorded in `pending`
  // Every indexed page and where it is: the index table, in memory (about 100 bytes a page), so a
  // read or a dedup check never waits for SQLite. Updated once a commit or a collection is
  // durable; only crash-point tests see it lag the table.
  HashMap<Location> index;
  uint64_t next_log = 1;  // the id of the next page log entry
  uint64_t pages_stored = 0;
  uint64_t bytes_stored = 0;
  std::list<std::pair<uint64_t, std::shared_ptr<const PageList>>> cache;  // most recent first
  std::shared_ptr<PageListPool> list_pool = std::make_shared<PageListPool>();

  // Readers hold it shared from looking a page up to reading its bytes; garbage collection holds
  // it exclusively while it punches the bytes of the pages it deleted.
  mutable std::shared_mutex reclaim_mu;

  // Batch buffers of finished writers, for the next: a fresh megabyte costs a page fault per
  // 4 KiB, about a millisecond per incremental version.
  std::mutex buffers_mu;  // guards buffers
  std::vector<std::vector<std::byte>> buffers;

  std::unique_ptr<Checkpointer> checkpointer;  // after db: stopped before it closes
  // Declared last: its threads stop before anything they use is destroyed.
  std::unique_ptr<WorkerPool> workers;

  Status load_versions_locked();
  // The page's place in the index.
  std::optional<Location> lookup_locked(const PageHash& hash) const;
  // Whether the store holds `hash` (indexed or pending).
  bool knows_locked(const PageHash& hash) const;
  // `index` from the table, every place checked against `committed` (each pack's committed
  // length).
  Status load_index_locked(const std::map<uint64_t, uint64_t>& committed);
  Result<std::vector<uint8_t>> blob_locked(uint64_t version, const char* column);
  Result<std::shared_ptr<const PageList>> pages_locked(uint64_t version);
  void cache_locked(uint64_t version, std::shared_ptr<const PageList> pages);
  Status remove_locked(uint64_t version);
  void end_session_locked(Session* session) { sessions.erase(session); }
  // Gives back one VersionPin on `version`.
  void unpin_version(uint64_t version);

  Result<VersionInfo> commit_version(CommitPlan& plan);
  // Encodes and appends pages (already hashed) to the current pack; returns their locations.
  Result<std::vector<Location>> append(std::span<const std::span<const std::byte>> pages);
  // After a pack's sync failed (mu held): its put_page pages are read back, checked and appended
  // to the current pack, so the heaps that evicted them can still checkpoint.
  void move_pending_from_failed_packs_locked();
  void move_pending_locked(std::span<std::pair<const PageHash, PendingPage>* const> entries);
};

}  // namespace djinn::heapstore::internal

namespace djinn::heapstore {

struct PageStore::Impl : internal::StoreCore {
  using StoreCore::StoreCore;
};

}  // namespace djinn::heapstore
