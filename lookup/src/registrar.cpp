// The registrar engine: items in memory with their indexes, persisted in SQLite, leased through the
// embedded landlord, and notify registrations evaluated on every change.
#include "djinn/lookup/registrar.h"

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <thread>
#include <cstring>
#include <limits>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <unordered_map>
#include <unordered_set>

#include "djinn/core/fault.h"
#include "djinn/core/log.h"
#include "djinn/core/model_capnp.h"
#include "djinn/core/shared_mutex.h"
#include "djinn/core/sqlite.h"
#include "djinn/proto/lookup.capnp.h"
#include "djinn/proto/model.capnp.h"

namespace djinn::lookup {
namespace {

// The registrar's tables live in its landlord's SQLite file (Landlord::transact), so a
// registration and its lease commit in one transaction. Their version is kept in `meta`.
// 2: watch.by_ref, whether a registration's event kind names its lease's ref (1) or, made before
// version 2, its lease id (0).
constexpr int64_t kSchemaVersion = 2;
constexpr std::string_view kCreateSchema =
    // Items are appended in write order and found by row number (the registrar keeps each item's
    // row in memory): a group of registrations fills pages in order, where rows keyed by random
    // ServiceIDs dirtied a page anywhere in the table for each one.
    "CREATE TABLE IF NOT EXISTS service_item("
    "  seq INTEGER PRIMARY KEY,"
    "  sid BLOB NOT NULL,"              // the 16 bytes of the ServiceID
    "  lease INTEGER NOT NULL,"         // registration lease id (signed twin); 0 = the registrar's own
    "  data BLOB NOT NULL"              // the item, a Cap'n Proto ServiceItem message
    ");"
    "CREATE TABLE IF NOT EXISTS watch("
    "  id INTEGER PRIMARY KEY,"         // notify registration = its lease id
    "  mask INTEGER NOT NULL,"
    "  template BLOB NOT NULL"          // a Cap'n Proto ServiceTemplate message
    ");"
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);";
constexpr std::string_view kInsertItem = "INSERT INTO service_item(sid, lease, data) VALUES (?1, ?2, ?3)";
constexpr std::string_view kDeleteItem = "DELETE FROM service_item WHERE seq = ?1";
constexpr std::string_view kUpgradeV1ToV2 = "ALTER TABLE watch ADD COLUMN by_ref INTEGER NOT NULL DEFAULT 0";
constexpr std::string_view kInsertWatch = "INSERT INTO watch(id, mask, template, by_ref) VALUES (?1, ?2, ?3, ?4)";
constexpr std::string_view kDeleteWatch = "DELETE FROM watch WHERE id = ?1";

// Keyed (seeded_hash): ServiceIDs are the registering client's choice.
using IdHash = std::hash<ServiceId>;

using Posting = std::unordered_set<uint32_t>;

std::span<const uint8_t> id_bytes(const ServiceId& id) { return std::span<const uint8_t>(id.bytes().data(), 16); }

template <class Message>
std::string encode(const Message& value) {
  capnp::MallocMessageBuilder message;
  if constexpr (std::is_same_v<Message, ServiceItem>) {
    to_capnp(value, message.initRoot<proto::ServiceItem>());
  } else {
    to_capnp(value, message.initRoot<proto::ServiceTemplate>());
  }
  return flat_bytes(message);
}

// About what `item` takes in a reply (a little over its Cap'n Proto encoding), for bounding pages.
size_t reply_bytes_of(const ServiceItem& item) {
  // Cap'n Proto: a pointer (8 bytes) per text and list, text rounded up to words, a struct of a few
  // words per value, entry and item.
  auto text = [](const std::string& s) { return s.size() + 16; };
  size_t bytes = 128 + text(item.endpoints.rpc) + text(item.endpoints.events) + text(item.public_key);
  for (const std::string& t : item.interface_types) bytes += text(t);
  for (const Entry& e : item.attributes) {
    bytes += 32 + text(e.type);
    for (const std::string& t : e.supertypes) bytes += text(t);
    for (const auto& [name, value] : e.fields) {
      bytes += 48 + text(name);
      if (value.type() == ValueType::kText) bytes += value.as_text().size();
      if (value.type() == ValueType::kBytes) bytes += value.as_bytes().size();
    }
  }
  return bytes;
}

}  // namespace

std::string_view transition_name(Transition t) {
  switch (t) {
    case kNoMatchToMatch: return "nomatch->match";
    case kMatchToNoMatch: return "match->nomatch";
    case kMatchToMatch: return "match->match";
    default: return "?";
  }
}

std::string notify_event_kind(uint64_t notify_id) { return "lookup.notify." + public_ref_hex(notify_id); }
std::string id_notify_event_kind(uint64_t notify_id) { return "lookup.notify." + std::to_string(notify_id); }

namespace {
std::string watch_kind(uint64_t notify_id, bool by_ref) {
  return by_ref ? notify_event_kind(notify_id) : id_notify_event_kind(notify_id);
}
}  // namespace

struct Registrar::Impl {
  struct Watch {
    ServiceTemplate tmpl;
    uint8_t mask;
    std::string kind;
    bool by_ref = true;  // false: made before refs, or by a client of an earlier release
  };

  RegistrarOptions options;
  lease::Landlord& landlord;

  // Serializes changes: held across the durable write and the in-memory update, so file and memory
  // change in the same order. Lock order: write_mu_, then mu_.
  std::mutex write_mu_;
  std::unordered_map<ServiceId, int64_t, IdHash> rows_;  // each stored item's row (write_mu_)

  // Notify events of the changes made under mu_, numbered there (so a lookupMany, under mu_
  // shared, reports a number that covers every change it sees) and sent once it is released
  // (write_mu_, still held, keeps them in the order of the changes, and the watches as they are):
  // queries do not wait for a fan-out to many registrations. A change's event is encoded once for
  // each of its transitions and shared by every registration it goes to; the kind names the
  // registration.
  struct PendingNotify {
    const std::string* kind;  // the watch's, in watches_
    uint64_t seq;
    std::shared_ptr<const std::string> key;  // the item's ServiceID
    std::shared_ptr<const events::SharedPayload> payload;
    // For a registration of a client of an earlier release (payload null): its event names its id,
    // so it is encoded for it alone, when it is sent, from the change's item (shared).
    std::shared_ptr<const ServiceItem> item;
    uint64_t legacy_id = 0;
    Transition transition = kNoMatchToMatch;
    bool removed = false;
  };
  std::vector<PendingNotify> pending_;  // (write_mu_, and mu_ exclusive to add)
  // A batch of changes publishes what is pending once it holds this many events, releasing mu_
  // meanwhile: a batch of 1,000 registrations matching 100,000 watches is 10^8 events.
  static constexpr size_t kPublishPendingAt = 1 << 18;
  // Declared after the write_mu_ guard and before the mu_ lock of a change, so that it publishes
  // between the two releases.
  struct PublishPending {
    Impl& m;
    ~PublishPending() { m.publish_pending(); }
  };

  // Guards everything below: shared for queries, exclusive for changes (and their events).
  mutable SharedMutex mu_;
  std::vector<std::optional<ServiceItem>> slots_;
  // Each slot's lease deadline on the landlord's monotonic clock (INT64_MAX: no lease). Queries
  // skip an item from its deadline on, before the remover thread has taken it out.
  std::vector<int64_t> deadlines_;
  std::vector<uint32_t> free_;
  std::unordered_map<ServiceId, uint32_t, IdHash> by_id_;
  std::unordered_map<uint64_t, uint32_t> by_lease_;
  Posting all_;
  std::unordered_map<std::string, Posting> by_interface_;
  std::unordered_map<std::string, Posting> by_attr_type_;  // "" holds every item with an attribute
  // Keyed by IndexHasher::field(type or supertype or "", name, value): eight bytes a key, where the
  // value itself, kept once for each supertype of its attribute, cost megabytes for one item.
  IndexHasher hasher_;
  std::unordered_map<uint64_t, Posting> by_field_;
  std::unordered_map<uint64_t, Watch> watches_;
  ServiceId self_id_;
  bool has_store_ = false;  // the landlord persists: the registrar's tables are in its file

  // Leases that ended, waiting for the remover thread: (lease id, registration or notify).
  std::mutex ended_mu_;
  std::condition_variable ended_cv_;
  std::deque<std::pair<uint64_t, bool>> ended_;
  uint64_t ended_reported_ = 0;   // lease ends queued so far
  uint64_t ended_processed_ = 0;  // of them, removed
  std::condition_variable processed_cv_;
  bool stopping_ = false;
  std::thread remover_;

  Impl(RegistrarOptions opts) : options(std::move(opts)), landlord(*options.landlord) {}

  // ---- indexes (mu_ exclusive) ----

  // Every index key an item is filed under, each once.
  void keys_of(const ServiceItem& item, std::vector<std::string>& types, std::vector<std::string>& attr_types,
               std::vector<uint64_t>& fields) const {
    types.assign(item.interface_types.begin(), item.interface_types.end());
    attr_types.clear();
    fields.clear();
    std::string scratch;
    for (const Entry& e : item.attributes) {
      auto file = [&](std::string_view type) {
        attr_types.emplace_back(type);
        for (const auto& [name, value] : e.fields) {
          if (!value.is_null()) fields.push_back(hasher_.field(type, name, value, scratch));
        }
      };
      file(e.type);
      for (const std::string& s : e.supertypes) file(s);
      file("");
    }
    std::sort(attr_types.begin(), attr_types.end());
    attr_types.erase(std::unique(attr_types.begin(), attr_types.end()), attr_types.end());
    std::sort(fields.begin(), fields.end());
    fields.erase(std::unique(fields.begin(), fields.end()), fields.end());
  }

  void index(uint32_t slot, bool add) {
    std::vector<std::string> types, attr_types;
    std::vector<uint64_t> fields;
    keys_of(*slots_[slot], types, attr_types, fields);
    auto apply = [&](auto& map, const auto& keys) {
      for (const auto& k : keys) {
        if (add) {
          map[k].insert(slot);
        } else {
          auto it = map.find(k);
          if (it == map.end()) continue;
          it->second.erase(slot);
          if (it->second.empty()) map.erase(it);
        }
      }
    };
    apply(by_interface_, types);
    apply(by_attr_type_, attr_types);
    apply(by_field_, fields);
    if (add) all_.insert(slot); else all_.erase(slot);
  }

  // Puts `item` in memory (replacing the item of the same id), publishing the transitions.
  void put_locked(ServiceItem item, int64_t deadline_ns) {
    std::optional<ServiceItem> before;
    uint32_t slot;
    auto it = by_id_.find(item.service_id);
    if (it != by_id_.end()) {
      slot = it->second;
      index(slot, false);  // while the slot still holds the item its keys come from
      before = std::move(*slots_[slot]);
      if (before->lease.id) by_lease_.erase(before->lease.id);
    } else if (!free_.empty()) {
      slot = free_.back();
      free_.pop_back();
    } else {
      slot = static_cast<uint32_t>(slots_.size());
      slots_.emplace_back();
      deadlines_.emplace_back();
    }
    slots_[slot] = std::move(item);
    deadlines_[slot] = deadline_ns;
    const ServiceItem& now = *slots_[slot];
    by_id_[now.service_id] = slot;
    if (now.lease.id) by_lease_[now.lease.id] = slot;
    index(slot, true);
    transitions_locked(before ? &*before : nullptr, &now);
  }

  void remove_locked(uint32_t slot) {
    index(slot, false);  // while the slot still holds the item its keys come from
    ServiceItem before = std::move(*slots_[slot]);
    slots_[slot].reset();
    free_.push_back(slot);
    by_id_.erase(before.service_id);
    if (before.lease.id) by_lease_.erase(before.lease.id);
    transitions_locked(&before, nullptr);
  }

  void transitions_locked(const ServiceItem* before, const ServiceItem* after) {
    if (!options.publisher || watches_.empty()) return;
    std::shared_ptr<const events::SharedPayload> payloads[3];  // by transition
    std::shared_ptr<const ServiceItem> items[2];                // before, after: for legacy events
    std::shared_ptr<const std::string> key;
    const bool removed = after == nullptr;
    for (const auto& [id, w] : watches_) {
      bool was = before && matches(w.tmpl, *before);
      bool is = after && matches(w.tmpl, *after);
      Transition t;
      if (!was && is) {
        t = kNoMatchToMatch;
      } else if (was && !is) {
        t = kMatchToNoMatch;
      } else if (was && is && !(*before == *after)) {
        t = kMatchToMatch;
      } else {
        continue;
      }
      if (!(w.mask & t)) continue;
      const ServiceItem& item = t == kMatchToNoMatch ? *before : *after;
      if (!key) key = std::make_shared<const std::string>(item.service_id.to_string());
      PendingNotify p{&w.kind, options.publisher->number(w.kind), key, nullptr};
      if (w.by_ref) {
        auto& shared = payloads[t == kNoMatchToMatch ? 0 : t == kMatchToNoMatch ? 1 : 2];
        if (!shared) shared = notify_payload(t, item, 0, removed);
        p.payload = shared;
      } else {
        auto& shared = items[t == kMatchToNoMatch ? 0 : 1];
        if (!shared) shared = std::make_shared<const ServiceItem>(item);
        p.item = shared;
        p.legacy_id = id;
        p.transition = t;
        p.removed = removed;
      }
      pending_.push_back(std::move(p));
    }
  }

  // A change's event; `id` only for a registration of a client of an earlier release, whose
  // events name it.
  static std::shared_ptr<const events::SharedPayload> notify_payload(Transition t, const ServiceItem& item, uint64_t id,
                                                                     bool removed) {
    capnp::MallocMessageBuilder message;
    auto ev = message.initRoot<proto::NotifyEvent>();
    ev.setNotifyId(id);
    ev.setTransition(t == kNoMatchToMatch   ? proto::Transition::NO_MATCH_TO_MATCH
                     : t == kMatchToNoMatch ? proto::Transition::MATCH_TO_NO_MATCH
                                            : proto::Transition::MATCH_TO_MATCH);
    to_capnp(item.service_id, ev.initServiceId());
    to_capnp(item, ev.initItem());
    ev.setRemoved(removed);
    return std::make_shared<const events::SharedPayload>(message);
  }

  // Publishes the pending notify events (write_mu_ held, mu_ not).
  void publish_pending() {
    std::vector<PendingNotify> pending;
    pending.swap(pending_);
    if (pending.empty()) return;
    DJINN_CRASH_POINT("lookup.notify.publishing");
    for (const PendingNotify& p : pending) {
      if (p.payload) {
        options.publisher->send_numbered(*p.kind, *p.key, *p.payload, p.seq);
      } else {
        options.publisher->send_numbered(*p.kind, *p.key, *notify_payload(p.transition, *p.item, p.legacy_id, p.removed),
                                         p.seq);
      }
    }
  }

  // ---- queries (mu_ shared) ----

  // The smallest posting list that every match is in (nullptr: nothing can match), and whether
  // every member of it matches (the template is that one index constraint and nothing more, and
  // the constraint a type: a field key is a hash, whose candidates are checked).
  std::pair<const Posting*, bool> candidates_locked(const ServiceTemplate& t) const {
    static const Posting kEmpty;
    const Posting* best = &all_;
    int constraints = 0;
    bool single_exact = false;
    std::string scratch;
    auto consider = [&](const auto& map, const auto& key, bool exact) {
      ++constraints;
      auto it = map.find(key);
      const Posting* p = it == map.end() ? &kEmpty : &it->second;
      if (p->size() < best->size() || constraints == 1) best = p;
      single_exact = exact;
    };
    for (const std::string& type : t.interface_types) consider(by_interface_, type, true);
    for (const Template& a : t.attributes) {
      size_t given = 0;
      for (const auto& [name, value] : a.fields) {
        if (value.is_null()) continue;
        ++given;
        consider(by_field_, hasher_.field(a.type, name, value, scratch), false);
      }
      if (given == 0) consider(by_attr_type_, a.type, true);
    }
    if (t.service_id) return {best, false};
    return {best, constraints == 0 || (constraints == 1 && single_exact)};
  }

  bool live_locked(uint32_t slot, int64_t now_ns) const { return deadlines_[slot] > now_ns; }

  // The slot of a live item of that id, or nullopt.
  std::optional<uint32_t> live_slot_locked(const ServiceId& id) const {
    auto it = by_id_.find(id);
    if (it == by_id_.end() || !live_locked(it->second, landlord.now_ns())) return std::nullopt;
    return it->second;
  }

  // Visits matches until `visit` returns false. False when it stopped after checking
  // `max_candidates` items that did not match (or were past their deadline) instead.
  template <class Visit>
  bool for_each_match_locked(const ServiceTemplate& t, Visit&& visit, size_t max_candidates = SIZE_MAX) const {
    if (t.service_id) {
      std::optional<uint32_t> slot = live_slot_locked(*t.service_id);
      if (slot && matches(t, *slots_[*slot])) visit(*slots_[*slot]);
      return true;
    }
    const int64_t now = landlord.now_ns();
    auto [posting, exact] = candidates_locked(t);
    size_t missed = 0;
    for (uint32_t slot : *posting) {
      if (missed >= max_candidates) return false;  // and more to check
      if (live_locked(slot, now)) {
        const ServiceItem& item = *slots_[slot];
        if (exact || matches(t, item)) {
          if (!visit(item)) return true;
          continue;
        }
      }
      ++missed;
    }
    return true;
  }

  // ---- durable writes (write_mu_ held) ----

  template <class Body>
  Status durable(sqlite::Sync sync, Body&& body) {
    return landlord.transact(sync, std::forward<Body>(body));
  }


  // Rows written by a transaction not yet committed: ServiceID -> its new row.
  using RowChanges = std::unordered_map<ServiceId, int64_t, IdHash>;

  // Writes `item` as a new row and deletes the row it replaces (write_mu_ held, in a transaction).
  // rows_ learns of the new row through `changes` once the transaction commits (commit_rows).
  Status put_row(sqlite::Database& db, const ServiceItem& item, const std::string& data, RowChanges& changes) {
    int64_t old = 0;
    if (auto c = changes.find(item.service_id); c != changes.end()) {
      old = c->second;
    } else if (auto r = rows_.find(item.service_id); r != rows_.end()) {
      old = r->second;
    }
    if (old) DJINN_RETURN_IF_ERROR(delete_row(db, old));
    Result<sqlite::Statement*> st = db.cached(kInsertItem);
    if (!st.ok()) return st.status();
    DJINN_RETURN_IF_ERROR((*st)->bind_all(id_bytes(item.service_id), item.lease.id,
                                          std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data.data()), data.size())));
    DJINN_RETURN_IF_ERROR((*st)->run());
    changes[item.service_id] = db.last_insert_rowid();
    return Status::Ok();
  }

  static Status delete_row(sqlite::Database& db, int64_t row) {
    Result<sqlite::Statement*> st = db.cached(kDeleteItem);
    if (!st.ok()) return st.status();
    DJINN_RETURN_IF_ERROR((*st)->bind_all(row));
    return (*st)->run();
  }

  void commit_rows(const RowChanges& changes) {
    for (const auto& [sid, row] : changes) rows_[sid] = row;
  }

  Status check_item(const ServiceItem& item, std::string& encoded) const {
    DJINN_RETURN_IF_ERROR(validate(item));
    encoded = encode(item);
    if (encoded.size() > options.max_item_bytes) {
      return invalid_argument("service item of " + std::to_string(encoded.size()) + " bytes (encoded): at most " +
                              std::to_string(options.max_item_bytes) + " allowed; keep attributes small and put "
                              "large content in the space");
    }
    return Status::Ok();
  }

  // ---- leases that ended (the remover thread) ----

  void queue_ended(std::span<const std::pair<uint64_t, bool>> ended) {
    {
      std::lock_guard lock(ended_mu_);
      for (const auto& e : ended) ended_.push_back(e);
      ended_reported_ += ended.size();
    }
    ended_cv_.notify_one();
  }

  void remove_ended(uint64_t lease_id, bool registration) {
    Impl& m = *this;
    if (registration) {
      std::lock_guard write(m.write_mu_);
      ServiceId sid;
      {
        std::shared_lock lock(m.mu_);
        auto it = m.by_lease_.find(lease_id);
        if (it == m.by_lease_.end()) return;
        sid = m.slots_[it->second]->service_id;
      }
      // Like the landlord's own expiry: if the delete does not reach the file, the next open finds
      // the lease gone and drops the row then.
      auto row = m.rows_.find(sid);
      Status written = row == m.rows_.end() ? Status::Ok() : m.durable(sqlite::Sync::kNormal, [&](sqlite::Database& db) {
        return delete_row(db, row->second);
      });
      if (written.ok()) {
        if (row != m.rows_.end()) m.rows_.erase(row);
      } else {
        DJINN_LOG(kWarn, "lookup") << m.options.name << ": deleting item " << sid.to_string() << ": " << written.to_string();
      }
      Impl::PublishPending publish{m};  // after mu_ is released
      std::unique_lock lock(m.mu_);
      auto it = m.by_lease_.find(lease_id);
      if (it != m.by_lease_.end()) m.remove_locked(it->second);
      return;
    }
    std::lock_guard write(m.write_mu_);
    {
      std::shared_lock lock(m.mu_);
      if (!m.watches_.count(lease_id)) return;
    }
    Status written = m.durable(sqlite::Sync::kNormal, [&](sqlite::Database& db) -> Status {
      Result<sqlite::Statement*> st = db.cached(kDeleteWatch);
      if (!st.ok()) return st.status();
      DJINN_RETURN_IF_ERROR((*st)->bind_all(lease_id));
      return (*st)->run();
    });
    if (!written.ok()) DJINN_LOG(kWarn, "lookup") << m.options.name << ": deleting notify " << lease_id << ": " << written.to_string();
    std::unique_lock lock(m.mu_);
    auto it = m.watches_.find(lease_id);
    if (it == m.watches_.end()) return;
    if (m.options.publisher) m.options.publisher->forget(it->second.kind);
    m.watches_.erase(it);
  }

  // Removes what the queued lease ends held (`lock` holds ended_mu_, released meanwhile).
  void remove_queued(std::unique_lock<std::mutex>& lock) {
    if (ended_.empty()) return;
    std::deque<std::pair<uint64_t, bool>> batch;
    batch.swap(ended_);
    lock.unlock();
    for (const auto& [id, registration] : batch) remove_ended(id, registration);
    lock.lock();
    ended_processed_ += batch.size();
    processed_cv_.notify_all();
  }

  void remover_loop() {
    std::unique_lock lock(ended_mu_);
    for (;;) {
      ended_cv_.wait(lock, [&] { return stopping_ || !ended_.empty(); });
      if (ended_.empty() && stopping_) return;
      remove_queued(lock);
    }
  }

  // Returns once every lease end reported so far is processed: what is queued here, what the
  // remover thread is at elsewhere.
  void settle() {
    std::unique_lock lock(ended_mu_);
    const uint64_t target = ended_reported_;
    remove_queued(lock);
    processed_cv_.wait(lock, [&] { return stopping_ || ended_processed_ >= target; });
  }

  void stop_remover() {
    {
      std::lock_guard lock(ended_mu_);
      stopping_ = true;
    }
    ended_cv_.notify_all();
    processed_cv_.notify_all();
    if (remover_.joinable()) remover_.join();
  }

  // ---- open ----

  // Creates the tables if need be and loads items and watches (write_mu_ not needed yet: nothing
  // else runs). Runs inside one landlord transaction; without a store, nothing is loaded.
  Status load_store(sqlite::Database& db) {
    has_store_ = true;
    DJINN_RETURN_IF_ERROR(db.exec(kCreateSchema));
    {
      Result<sqlite::Statement> get = db.prepare("SELECT value FROM meta WHERE key = 'schema'");
      if (!get.ok()) return get.status();
      Result<bool> row = get->step();
      if (!row.ok()) return row.status();
      int64_t version = *row ? get->column_int64(0) : 0;
      if (version > kSchemaVersion) {
        return failed_precondition("the registrar's tables have schema version " + std::to_string(version) +
                                   ", newer than this build's " + std::to_string(kSchemaVersion) + " (use a newer djinn)");
      }
      get->reset();
      if (version < 2) DJINN_RETURN_IF_ERROR(db.exec(kUpgradeV1ToV2));
      Result<sqlite::Statement> put = db.prepare("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema', ?1)");
      if (!put.ok()) return put.status();
      DJINN_RETURN_IF_ERROR(put->bind_all(kSchemaVersion));
      DJINN_RETURN_IF_ERROR(put->run());
    }
    // The registrar's own ServiceID, minted once.
    {
      Result<sqlite::Statement> get = db.prepare("SELECT value FROM meta WHERE key = 'self_id'");
      if (!get.ok()) return get.status();
      Result<bool> row = get->step();
      if (!row.ok()) return row.status();
      std::vector<uint8_t> bytes = *row ? get->column_blob(0) : std::vector<uint8_t>{};
      if (bytes.size() == 16) {
        ServiceId::Bytes b;
        std::copy(bytes.begin(), bytes.end(), b.begin());
        self_id_ = ServiceId(b);
      } else {
        Result<sqlite::Statement> put = db.prepare("INSERT OR REPLACE INTO meta(key, value) VALUES ('self_id', ?1)");
        if (!put.ok()) return put.status();
        DJINN_RETURN_IF_ERROR(put->bind_all(id_bytes(self_id_)));
        DJINN_RETURN_IF_ERROR(put->run());
      }
    }
    // Items and watches whose lease the landlord no longer has lapsed while the registrar was down.
    std::vector<int64_t> lapsed_items;  // rows
    std::vector<int64_t> lapsed_watches;
    {
      Result<sqlite::Statement> select = db.prepare("SELECT seq, lease, data FROM service_item ORDER BY seq");
      if (!select.ok()) return select.status();
      std::unique_lock lock(mu_);
      for (;;) {
        Result<bool> row = select->step();
        if (!row.ok()) return row.status();
        if (!*row) break;
        uint64_t lease_id = static_cast<uint64_t>(select->column_int64(1));
        std::vector<uint8_t> data = select->column_blob(2);
        Result<ServiceItem> item = from_stored<ServiceItem, proto::ServiceItem>(data);
        if (!item.ok()) {
          DJINN_LOG(kWarn, "lookup") << options.name << ": dropping an unreadable item row: " << item.status().to_string();
          lapsed_items.push_back(select->column_int64(0));
          continue;
        }
        int64_t deadline_ns = std::numeric_limits<int64_t>::max();
        if (lease_id != 0) {
          std::optional<lease::Lease> held = landlord.find(lease_id);
          if (!held) {
            lapsed_items.push_back(select->column_int64(0));
            continue;
          }
          item->lease = LeaseInfo{lease_id, held->expiration_ms};
          deadline_ns = held->deadline_ns;
        }
        // Rows come in write order: a later row of the same ServiceID (none is ever left, as a
        // replacement deletes the old row in its own transaction) would win.
        if (auto earlier = rows_.find(item->service_id); earlier != rows_.end()) lapsed_items.push_back(earlier->second);
        rows_[item->service_id] = select->column_int64(0);
        put_locked(std::move(*item), deadline_ns);
      }
      Result<sqlite::Statement> watches = db.prepare("SELECT id, mask, template, by_ref FROM watch");
      if (!watches.ok()) return watches.status();
      for (;;) {
        Result<bool> row = watches->step();
        if (!row.ok()) return row.status();
        if (!*row) break;
        uint64_t id = static_cast<uint64_t>(watches->column_int64(0));
        Result<ServiceTemplate> tmpl = from_stored<ServiceTemplate, proto::ServiceTemplate>(watches->column_blob(2));
        if (!tmpl.ok() || !landlord.find(id)) {
          lapsed_watches.push_back(static_cast<int64_t>(id));
          continue;
        }
        bool by_ref = watches->column_int64(3) != 0;
        watches_[id] = Watch{std::move(*tmpl), static_cast<uint8_t>(watches->column_int64(1)), watch_kind(id, by_ref), by_ref};
        if (options.publisher) options.publisher->declare(watches_[id].kind);
      }
    }
    for (int64_t row : lapsed_items) DJINN_RETURN_IF_ERROR(delete_row(db, row));
    for (int64_t id : lapsed_watches) {
      Result<sqlite::Statement*> st = db.cached(kDeleteWatch);
      if (!st.ok()) return st.status();
      DJINN_RETURN_IF_ERROR((*st)->bind_all(id));
      DJINN_RETURN_IF_ERROR((*st)->run());
    }
    if (!lapsed_items.empty() || !lapsed_watches.empty()) {
      DJINN_LOG(kInfo, "lookup") << options.name << ": " << lapsed_items.size() << " registrations and "
                                 << lapsed_watches.size() << " notify registrations lapsed while closed";
    }
    return Status::Ok();
  }

  // Leases of the registrar's resources that no item or watch holds (a registrar's rows and their
  // leases commit together, so only a damaged store leaves any): cancelled, since nobody holds them.
  void cancel_orphan_leases() {
    size_t cancelled = landlord.cancel_unheld(kRegistrationResource, [&](lease::LeaseId id) {
      std::shared_lock lock(mu_);
      return by_lease_.count(id) > 0;
    });
    cancelled += landlord.cancel_unheld(kNotifyResource, [&](lease::LeaseId id) {
      std::shared_lock lock(mu_);
      return watches_.count(id) > 0;
    });
    if (cancelled) {
      DJINN_LOG(kInfo, "lookup") << options.name << ": cancelled " << cancelled
                                 << " leases granted for registrations that never committed";
    }
  }
};

Registrar::Registrar(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Registrar::~Registrar() { impl_->stop_remover(); }

Result<std::unique_ptr<Registrar>> Registrar::open(RegistrarOptions options) {
  if (!options.landlord) return invalid_argument("registrar: a landlord is required");
  auto impl = std::make_unique<Impl>(std::move(options));
  impl->self_id_ = ServiceId::random();  // kept if the store has none yet
  Impl* loading = impl.get();
  if (Status st = impl->landlord.transact(sqlite::Sync::kFull, [loading](sqlite::Database& db) { return loading->load_store(db); });
      !st.ok()) {
    return Status(st.code(), "registrar " + impl->options.name + ": " + st.message());
  }
  impl->cancel_orphan_leases();
  DJINN_CRASH_POINT("lookup.open.after_load");  // loaded; the owner has not wired on_lease_event yet
  Impl* raw = impl.get();
  impl->remover_ = std::thread([raw] { raw->remover_loop(); });
  DJINN_LOG(kInfo, "lookup") << impl->options.name << ": open"
                             << (impl->has_store_ ? "" : " in memory") << ", "
                             << impl->by_id_.size() << " items, " << impl->watches_.size() << " notify registrations";
  return std::unique_ptr<Registrar>(new Registrar(std::move(impl)));
}

std::vector<Result<Registration>> Registrar::register_batch(std::span<const RegisterRequest> requests) {
  Impl& m = *impl_;
  std::vector<std::optional<Result<Registration>>> decided(requests.size());
  struct Plan {
    size_t index;
    ServiceItem item;
    std::string encoded;
    int64_t deadline_ns = 0;
    int64_t granted_ms = 0;
  };
  std::vector<Plan> plans;
  for (size_t i = 0; i < requests.size(); ++i) {
    ServiceItem item = requests[i].item;
    item.lease = LeaseInfo{};
    if (item.service_id == m.self_id_) {
      decided[i] = Result<Registration>(invalid_argument("ServiceID " + item.service_id.to_string() +
                                                         " is this lookup service's own"));
      continue;
    }
    std::string encoded;
    if (Status bad = m.check_item(item, encoded); !bad.ok()) {
      decided[i] = Result<Registration>(Status(bad.code(), "register: " + bad.message()));
      continue;
    }
    // Stored as encoded here, without its lease: the row's lease column and the landlord hold that.
    plans.push_back(Plan{i, std::move(item), std::move(encoded)});
  }
  std::vector<lease::LeaseId> superseded;
  {
    std::lock_guard write(m.write_mu_);
    {
      // Decided per request, in order: a replacement adds nothing and always fits, and a new
      // ServiceID fits while there is room (the same one twice in a batch counts once).
      std::shared_lock lock(m.mu_);
      const size_t room = m.options.max_items > m.by_id_.size() ? m.options.max_items - m.by_id_.size() : 0;
      std::unordered_set<ServiceId, IdHash> admitted;
      std::vector<Plan> fitting;
      fitting.reserve(plans.size());
      for (Plan& p : plans) {
        if (!m.by_id_.count(p.item.service_id) && !admitted.count(p.item.service_id)) {
          if (admitted.size() >= room) {
            decided[p.index] = Result<Registration>(resource_exhausted(
                "lookup " + m.options.name + " holds " + std::to_string(m.by_id_.size()) +
                " items, its maximum (--max-items); a service already registered may still re-register"));
            continue;
          }
          admitted.insert(p.item.service_id);
        }
        fitting.push_back(std::move(p));
      }
      plans = std::move(fitting);
    }
    std::vector<lease::GrantRequest> grants;
    grants.reserve(plans.size());
    for (const Plan& p : plans) {
      grants.push_back(lease::GrantRequest{std::string(kRegistrationResource), p.item.service_id.to_string(),
                                           lease::Kind::kShared, requests[p.index].duration_ms, {}});
    }
    // The items are written in the transaction that grants their leases: one commit, one fsync.
    Impl::RowChanges rows;
    std::vector<Result<lease::Lease>> leases = m.landlord.grant_batch(
        grants, [&](sqlite::Database& db, std::span<const Result<lease::Lease>> granting) -> Status {
          for (size_t k = 0; k < plans.size(); ++k) {
            if (!granting[k].ok()) continue;
            plans[k].item.lease = LeaseInfo{granting[k]->id, granting[k]->expiration_ms};
            DJINN_RETURN_IF_ERROR(m.put_row(db, plans[k].item, plans[k].encoded, rows));
          }
          DJINN_CRASH_POINT("lookup.register.before_commit");
          return Status::Ok();
        });
    std::vector<Plan> granted;
    for (size_t k = 0; k < plans.size(); ++k) {
      if (!leases[k].ok()) {
        decided[plans[k].index] = Result<Registration>(Status(leases[k].status().code(), "register: " + leases[k].status().message()));
        continue;
      }
      plans[k].item.lease = LeaseInfo{leases[k]->id, leases[k]->expiration_ms};
      plans[k].deadline_ns = leases[k]->deadline_ns;
      plans[k].granted_ms = leases[k]->granted_ms;
      granted.push_back(std::move(plans[k]));
    }
    // A transaction that failed fails every grant of the batch: its rows were rolled back.
    if (!granted.empty()) m.commit_rows(rows);
    if (!granted.empty() && m.has_store_) DJINN_CRASH_POINT("lookup.register.after_commit");
    Impl::PublishPending publish{m};  // after mu_ is released
    std::unique_lock lock(m.mu_);
    for (Plan& p : granted) {
      bool replaced = false;
      auto it = m.by_id_.find(p.item.service_id);
      if (it != m.by_id_.end()) {
        replaced = true;
        uint64_t old = m.slots_[it->second]->lease.id;
        if (old) superseded.push_back(old);
      }
      decided[p.index] = Result<Registration>(Registration{p.item, replaced, p.granted_ms});
      m.put_locked(std::move(p.item), p.deadline_ns);
      if (m.pending_.size() >= Impl::kPublishPendingAt) {
        // Numbered already, so a query between the two holds sees a number that covers them.
        lock.unlock();
        m.publish_pending();
        lock.lock();
      }
    }
  }
  // The replaced items' leases (no item refers to them any more, so their cancel events are no-ops).
  if (!superseded.empty()) m.landlord.cancel_batch(superseded);
  std::vector<Result<Registration>> results;
  results.reserve(decided.size());
  for (auto& d : decided) results.push_back(std::move(*d));
  return results;
}

Result<Registration> Registrar::register_item(RegisterRequest request) {
  std::vector<Result<Registration>> results = register_batch(std::span<const RegisterRequest>(&request, 1));
  return std::move(results.front());
}

std::optional<ServiceItem> Registrar::lookup(const ServiceTemplate& tmpl) const {
  std::optional<ServiceItem> found;
  visit_one(tmpl, [&](const ServiceItem& item) { found = item; });
  return found;
}

bool Registrar::visit_one(const ServiceTemplate& tmpl, const std::function<void(const ServiceItem&)>& visit) const {
  return *visit_one_within(tmpl, SIZE_MAX, visit);
}

std::optional<bool> Registrar::visit_one_within(const ServiceTemplate& tmpl, size_t max_candidates,
                                                const std::function<void(const ServiceItem&)>& visit) const {
  std::shared_lock lock(impl_->mu_);
  bool found = false;
  bool finished = impl_->for_each_match_locked(tmpl, [&](const ServiceItem& item) {
    visit(item);
    found = true;
    return false;
  }, max_candidates);
  if (!finished) return std::nullopt;
  return found;
}

LookupMany Registrar::lookup_many(const ServiceTemplate& tmpl, size_t max_matches, uint64_t notify_id,
                                  const LookupPage& page) const {
  const Impl& m = *impl_;
  LookupMany out;
  std::shared_lock lock(m.mu_);
  if (notify_id && m.options.publisher) {
    auto w = m.watches_.find(notify_id);
    if (w != m.watches_.end()) out.event_seq = m.options.publisher->last_seq(w->second.kind);
  }
  // Every match is counted (items past their deadline are not), so this walks the whole
  // smallest posting list; an exact template skips matching. The first matches after the page's
  // start, by ServiceID, are kept in a heap whose top is the greatest: at most max_matches, and
  // none that the others (smaller ids, answered first) leave no room for in the page.
  struct Kept {
    const ServiceItem* item;
    size_t bytes;
  };
  auto by_id = [](const Kept& a, const Kept& b) { return a.item->service_id < b.item->service_id; };
  std::vector<Kept> first;
  size_t kept_bytes = 0;
  size_t after = 0;
  m.for_each_match_locked(tmpl, [&](const ServiceItem& item) {
    ++out.total;
    if (page.after && !(*page.after < item.service_id)) return true;
    ++after;
    if (max_matches == 0) return true;
    Kept k{&item, 0};
    // Past the greatest kept, with the count or the bytes used up: not in this page.
    if (!first.empty() && !by_id(k, first.front()) && (first.size() == max_matches || kept_bytes >= page.max_bytes)) {
      return true;
    }
    k.bytes = reply_bytes_of(item);
    first.push_back(k);
    std::push_heap(first.begin(), first.end(), by_id);
    kept_bytes += k.bytes;
    while (first.size() > max_matches || (first.size() > 1 && kept_bytes > page.max_bytes)) {
      kept_bytes -= first.front().bytes;
      std::pop_heap(first.begin(), first.end(), by_id);
      first.pop_back();
    }
    return true;
  });
  // What is kept fits in the page (or is one item): all of it is answered, in ServiceID order.
  std::sort_heap(first.begin(), first.end(), by_id);
  for (const Kept& k : first) out.items.push_back(*k.item);
  out.more = out.items.size() < after;
  return out;
}

std::optional<ServiceItem> Registrar::find(const ServiceId& id) const {
  std::shared_lock lock(impl_->mu_);
  std::optional<uint32_t> slot = impl_->live_slot_locked(id);
  if (!slot) return std::nullopt;
  return *impl_->slots_[*slot];
}

size_t Registrar::size() const {
  std::shared_lock lock(impl_->mu_);
  return impl_->by_id_.size();
}

Result<ServiceItem> Registrar::modify_attributes(uint64_t lease_id, std::span<const AttributeChange> changes,
                                                 std::span<const Entry> add) {
  Impl& m = *impl_;
  if (lease_id == 0) return invalid_argument("modifyAttributes: lease id 0 names no registration");
  std::lock_guard write(m.write_mu_);
  ServiceItem item;
  {
    std::shared_lock lock(m.mu_);
    auto it = m.by_lease_.find(lease_id);
    // An item past its deadline is gone to queries already, so it is to changes too.
    if (it == m.by_lease_.end() || !m.live_locked(it->second, m.landlord.now_ns())) {
      return not_found("modifyAttributes: no registration holds lease " + std::to_string(lease_id) +
                       " (it expired, was cancelled, or the item was registered again under a new lease)");
    }
    item = *m.slots_[it->second];
  }
  for (size_t i = 0; i < changes.size(); ++i) {
    const AttributeChange& c = changes[i];
    DJINN_RETURN_IF_ERROR(validate(c.match));
    size_t hit = 0;
    for (auto a = item.attributes.begin(); a != item.attributes.end();) {
      if (!matches(c.match, *a)) {
        ++a;
        continue;
      }
      ++hit;
      if (c.entry) {
        *a = *c.entry;
        ++a;
      } else {
        a = item.attributes.erase(a);
      }
    }
    if (hit == 0) {
      return not_found("modifyAttributes: change " + std::to_string(i) + " (template of type '" + c.match.type +
                       "') matches no attribute of service " + item.service_id.to_string() + "; nothing changed");
    }
  }
  item.attributes.insert(item.attributes.end(), add.begin(), add.end());
  std::string encoded;
  if (Status bad = m.check_item(item, encoded); !bad.ok()) {
    return Status(bad.code(), "modifyAttributes: " + bad.message() + "; nothing changed");
  }
  Impl::RowChanges rows;
  Status written = m.durable(sqlite::Sync::kFull, [&](sqlite::Database& db) { return m.put_row(db, item, encoded, rows); });
  if (!written.ok()) return Status(written.code(), "modifyAttributes: " + written.message());
  m.commit_rows(rows);
  Impl::PublishPending publish{m};  // after mu_ is released
  std::unique_lock lock(m.mu_);
  // The item is still there (write_mu_ keeps the remover out), but a renewal may have moved its
  // expiration meanwhile (renewals take mu_ alone): keep what it set.
  int64_t deadline_ns = 0;
  if (auto it = m.by_lease_.find(lease_id); it != m.by_lease_.end()) {
    item.lease = m.slots_[it->second]->lease;
    deadline_ns = m.deadlines_[it->second];
  }
  m.put_locked(item, deadline_ns);
  return item;
}

Result<NotifyRegistration> Registrar::notify(const ServiceTemplate& tmpl, uint8_t transitions, int64_t duration_ms,
                                             std::string holder, bool by_ref) {
  Impl& m = *impl_;
  DJINN_RETURN_IF_ERROR(validate(tmpl));
  if (transitions == 0) transitions = kAllTransitions;
  if (transitions > kAllTransitions) {
    return invalid_argument("notify transitions mask " + std::to_string(transitions) +
                            ": combine 1 (nomatch->match), 2 (match->nomatch), 4 (match->match)");
  }
  if (holder.empty()) holder = "anonymous";
  std::string encoded = encode(tmpl);
  std::lock_guard write(m.write_mu_);
  {
    std::shared_lock lock(m.mu_);
    if (m.watches_.size() >= m.options.max_notify) {
      return resource_exhausted("lookup " + m.options.name + " holds " + std::to_string(m.watches_.size()) +
                                " notify registrations, its maximum");
    }
  }
  lease::GrantRequest grant{std::string(kNotifyResource), holder, lease::Kind::kShared, duration_ms, {}};
  // The watch is written in the transaction that grants its lease.
  std::vector<Result<lease::Lease>> leases = m.landlord.grant_batch(
      std::span<const lease::GrantRequest>(&grant, 1),
      [&](sqlite::Database& db, std::span<const Result<lease::Lease>> granting) -> Status {
        if (!granting[0].ok()) return Status::Ok();
        Result<sqlite::Statement*> st = db.cached(kInsertWatch);
        if (!st.ok()) return st.status();
        DJINN_RETURN_IF_ERROR((*st)->bind_all(granting[0]->id, static_cast<int64_t>(transitions),
                                              std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(encoded.data()), encoded.size()),
                                              int64_t{by_ref}));
        return (*st)->run();
      });
  if (!leases[0].ok()) return Status(leases[0].status().code(), "notify: " + leases[0].status().message());
  const lease::Lease& l = *leases[0];
  std::unique_lock lock(m.mu_);
  std::string kind = watch_kind(l.id, by_ref);
  m.watches_[l.id] = Impl::Watch{tmpl, transitions, kind, by_ref};
  if (m.options.publisher) m.options.publisher->declare(kind);
  return NotifyRegistration{l.id, l.expiration_ms, kind, l.granted_ms};
}

Status Registrar::set_self(ServiceItem item) {
  Impl& m = *impl_;
  item.service_id = m.self_id_;
  item.lease = LeaseInfo{0, lease::kNeverExpires};
  std::string encoded;
  DJINN_RETURN_IF_ERROR(m.check_item(item, encoded));
  std::lock_guard write(m.write_mu_);
  Impl::RowChanges rows;
  DJINN_RETURN_IF_ERROR(m.durable(sqlite::Sync::kFull, [&](sqlite::Database& db) { return m.put_row(db, item, encoded, rows); }));
  m.commit_rows(rows);
  Impl::PublishPending publish{m};  // after mu_ is released
  std::unique_lock lock(m.mu_);
  m.put_locked(std::move(item), std::numeric_limits<int64_t>::max());
  return Status::Ok();
}

ServiceId Registrar::self_id() const { return impl_->self_id_; }

void Registrar::settle_ended() { impl_->settle(); }

void Registrar::on_lease_event(const lease::LeaseEvent& event) {
  Impl& m = *impl_;
  const lease::Lease& l = event.lease;
  if (l.resource == kRegistrationResource && event.type == lease::EventType::kRenewed) {
    // Items report their lease's current expiration; a renewal is not a change of the item, so
    // it raises no transition. Two renewals' events may come in either order: the landlord's
    // current word is the one kept.
    std::optional<lease::Lease> current = m.landlord.find(l.id);
    if (!current) return;
    std::unique_lock lock(m.mu_);
    auto it = m.by_lease_.find(l.id);
    if (it != m.by_lease_.end()) {
      m.slots_[it->second]->lease.expiration_ms = current->expiration_ms;
      m.deadlines_[it->second] = current->deadline_ns;
    }
    return;
  }
  bool ended = event.type == lease::EventType::kExpired || event.type == lease::EventType::kCancelled;
  if (!ended || (l.resource != kRegistrationResource && l.resource != kNotifyResource)) return;
  // Removed on the registrar's own thread: the landlord reports from threads that may be inside
  // a registrar change (a grant, a cancel), so this must not wait for one. Queued even when no
  // item or watch holds the lease yet: one granted a moment ago may be on its way in (a lease of a
  // millisecond can end before its registration's commit returns), and the remover, which waits
  // for write_mu_, sees it once it is in; otherwise it finds nothing and moves on.
  const std::pair<uint64_t, bool> end{l.id, l.resource == kRegistrationResource};
  m.queue_ended({&end, 1});
}

size_t Registrar::drop_lapsed() {
  Impl& m = *impl_;
  std::vector<std::pair<uint64_t, bool>> ended;
  std::vector<uint64_t> watch_ids;
  {
    std::shared_lock lock(m.mu_);
    const int64_t now = m.landlord.now_ns();
    for (const auto& [lease_id, slot] : m.by_lease_) {
      if (m.deadlines_[slot] <= now) ended.emplace_back(lease_id, true);
    }
    for (const auto& [id, w] : m.watches_) watch_ids.push_back(id);
  }
  for (uint64_t id : watch_ids) {  // watches keep no deadline: the landlord says which it still holds
    if (!m.landlord.find(id)) ended.emplace_back(id, false);
  }
  if (!ended.empty()) {
    DJINN_LOG(kInfo, "lookup") << m.options.name << ": " << ended.size()
                               << " items and notify registrations whose leases ended while it opened are removed";
    m.queue_ended(ended);
  }
  return ended.size();
}

}  // namespace djinn::lookup
