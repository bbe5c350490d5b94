// VersionWriter: a version staged page by page, its pages hashed and stored by the store's writer
// threads while the caller goes on, then committed through StoreCore::commit_version.
#include <algorithm>
#include <condition_variable>
#include <mutex>

#include "djinn/heapstore/page_store.h"
#include "store_core.h"

namespace djinn::heapstore {

using internal::DeltaEntry;
using internal::Location;
using internal::PageList;
using internal::Phase;
using internal::Range;

namespace {
// A writer hands its pages to the workers in batches of up to this many bytes: one pwrite each.
constexpr size_t kBatchBytes = size_t{1} << 20;
// The first batch is this small and each next one twice the last, so a small checkpoint's pages
// are hashed on every worker while the rest are staged, not in one batch at commit.
constexpr size_t kFirstBatchBytes = size_t{64} << 10;
}  // namespace

struct VersionWriter::State {
  internal::StoreCore* store = nullptr;
  uint64_t parent = 0;
  uint32_t page_size = 0;
  uint64_t capacity = 0;
  std::shared_ptr<const PageList> parent_pages;
  internal::Session session;
  Phase phase = Phase::kOpen;

  // What each index becomes: zero, a known hash, or the hash a worker computes for position
  // `pos` of batch `batch`. Caller's thread only.
  struct Slot {
    enum Kind : uint8_t { kZero, kHash, kBatched } kind = kZero;
    uint32_t batch = 0;
    uint32_t pos = 0;
    PageHash hash;
  };
  // In the order staged; a later entry for an index overrides an earlier one. A vector, not a
  // map: a heap stages its dirty pages in ascending order, and 65,536 tree nodes cost more than
  // one sort at commit.
  std::vector<std::pair<uint64_t, Slot>> staged;
  std::vector<std::byte> filling;  // the batch being filled
  uint32_t batches = 0;

  std::mutex mu;  // guards the fields below, shared with the workers
  std::condition_variable cv;
  unsigned in_flight = 0;
  Status error;
  std::vector<std::vector<PageHash>> batch_hashes;
  std::vector<std::vector<std::byte>> spare;  // batch buffers to reuse
  // Pages this writer appended (pack 0 while a worker is still writing them).
  internal::HashMap<Location> new_pages;
  std::vector<Range> written;

  // A committed or aborted writer no longer touches the store, so it may outlive it.
  ~State() { abort(); }
  Status submit_filling();
  void process(uint32_t number, std::vector<std::byte> data);
  Status wait_idle();
  void abort();
  // Hands the batch buffers to the store for the next writer (as many as one can have in flight).
  void give_back_buffers();
};

void VersionWriter::State::give_back_buffers() {
  std::lock_guard lock(store->buffers_mu);
  if (filling.capacity() >= kBatchBytes) spare.push_back(std::move(filling));
  for (auto& buffer : spare) {
    if (store->buffers.size() >= 2 * store->workers->size() + 2) break;
    store->buffers.push_back(std::move(buffer));
  }
  spare.clear();
}

Status VersionWriter::State::submit_filling() {
  if (filling.empty()) return Status();
  unsigned limit = 2 * store->workers->size() + 1;  // bounds the pages held in memory
  uint32_t number;
  std::vector<std::byte> data = std::move(filling);
  filling = {};
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return in_flight < limit; });
    if (!error.ok()) return error;
    ++in_flight;
    number = batches++;
    batch_hashes.resize(batches);
    if (!spare.empty()) {
      filling = std::move(spare.back());
      spare.pop_back();
      filling.clear();
    }
  }
  store->workers->submit([this, number, data = std::move(data)]() mutable { process(number, std::move(data)); });
  return Status();
}

// On a worker: hash the batch's pages, then store those neither this writer nor the store holds.
void VersionWriter::State::process(uint32_t number, std::vector<std::byte> data) {
  Status status;
  std::vector<PageHash> hashes;
  std::vector<uint32_t> to_write;
  std::vector<Location> where;
  try {
    size_t count = data.size() / page_size;
    auto page = [&](size_t i) { return std::span<const std::byte>(data.data() + i * page_size, page_size); };
    hashes.resize(count);
    for (size_t i = 0; i < count; ++i) hashes[i] = PageHash::of(page(i));

    std::vector<uint32_t> candidates;
    {
      std::lock_guard lock(mu);
      for (uint32_t i = 0; i < count; ++i) {
        if (!new_pages.contains(hashes[i])) candidates.push_back(i);
      }
    }
    std::vector<uint32_t> fresh;
    {
      std::lock_guard lock(store->mu);
      for (uint32_t i : candidates) {
        if (store->knows_locked(hashes[i])) {
          session.held.insert(hashes[i]);
        } else {
          fresh.push_back(i);
        }
      }
    }
    if (status.ok()) {
      {
        std::lock_guard lock(mu);
        for (uint32_t i : fresh) {
          if (new_pages.try_emplace(hashes[i], Location{}).second) to_write.push_back(i);
        }
      }
      std::vector<std::span<const std::byte>> pages;
      pages.reserve(to_write.size());
      for (uint32_t i : to_write) pages.push_back(page(i));
      Result<std::vector<Location>> appended = store->append(pages);
      if (appended.ok()) {
        where = std::move(*appended);
      } else {
        status = appended.status();
      }
    }
  } catch (const std::exception& e) {
    status = internal_error(std::string("storing pages: ") + e.what());
  }
  {
    std::lock_guard lock(mu);
    if (status.ok()) {
      for (size_t k = 0; k < where.size(); ++k) {
        new_pages[hashes[to_write[k]]] = where[k];
        written.push_back(Range{where[k].pack, where[k].offset, where[k].length});
      }
      batch_hashes[number] = std::move(hashes);
    } else if (error.ok()) {
      error = status;
    }
    spare.push_back(std::move(data));
    --in_flight;
    // Under the lock: once in_flight is 0 the writer may be destroyed, cv with it.
    cv.notify_all();
  }
}

Status VersionWriter::State::wait_idle() {
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return in_flight == 0; });
  return error;
}

void VersionWriter::State::abort() {
  if (!store || phase == Phase::kDone) return;
  (void)wait_idle();
  std::vector<Range> garbage;
  if (phase == Phase::kOpen) garbage = written;  // nothing committed refers to them
  {
    std::lock_guard lock(store->mu);
    store->end_session_locked(&session);
    if (parent) store->writer_parents.erase(store->writer_parents.find(parent));
  }
  phase = Phase::kDone;
  store->packs->punch(std::move(garbage));
  give_back_buffers();
}

VersionWriter::VersionWriter(std::unique_ptr<State> state) : state_(std::move(state)) {}
VersionWriter::VersionWriter(VersionWriter&&) noexcept = default;
VersionWriter& VersionWriter::operator=(VersionWriter&& other) noexcept {
  if (this != &other) {
    abort();
    state_ = std::move(other.state_);
  }
  return *this;
}
VersionWriter::~VersionWriter() = default;

namespace {
Status writer_closed(std::string_view what) {
  return failed_precondition(std::string(what) + ": the version writer is already committed or aborted");
}
}  // namespace

Status VersionWriter::put(uint64_t index, std::span<const std::byte> page) {
  if (!state_ || state_->phase != Phase::kOpen) return writer_closed("put");
  State& s = *state_;
  if (page.size() != s.page_size) {
    return invalid_argument("put page " + std::to_string(index) + ": " + std::to_string(page.size()) +
                            " bytes, expected the heap's page size of " + std::to_string(s.page_size));
  }
  if (index >= s.capacity) {
    return invalid_argument("put page " + std::to_string(index) + ": beyond the heap's capacity of " +
                            std::to_string(s.capacity) + " pages");
  }
  if (is_zero_page(page)) {
    s.staged.emplace_back(index, State::Slot{});
    return Status();
  }
  State::Slot slot;
  slot.kind = State::Slot::kBatched;
  slot.batch = s.batches;
  slot.pos = static_cast<uint32_t>(s.filling.size() / s.page_size);
  if (s.filling.capacity() < kBatchBytes) {
    {
      std::lock_guard lock(s.store->buffers_mu);
      if (!s.store->buffers.empty()) {
        s.filling = std::move(s.store->buffers.back());
        s.store->buffers.pop_back();
        s.filling.clear();
      }
    }
    s.filling.reserve(std::max<size_t>(kBatchBytes, s.page_size));
  }
  s.filling.insert(s.filling.end(), page.begin(), page.end());
  s.staged.emplace_back(index, slot);
  size_t limit = s.batches < 5 ? kFirstBatchBytes << s.batches : kBatchBytes;
  if (s.filling.size() + s.page_size > std::min(limit, kBatchBytes)) return s.submit_filling();
  return Status();
}

Status VersionWriter::put_hash(uint64_t index, const PageHash& hash) {
  if (!state_ || state_->phase != Phase::kOpen) return writer_closed("put_hash");
  State& s = *state_;
  if (index >= s.capacity) {
    return invalid_argument("put page " + std::to_string(index) + ": beyond the heap's capacity of " +
                            std::to_string(s.capacity) + " pages");
  }
  std::lock_guard lock(s.store->mu);
  uint32_t size = 0;
  if (auto it = s.store->pending.find(hash); it != s.store->pending.end()) {
    size = it->second.size;
  } else {
    std::optional<Location> found = s.store->lookup_locked(hash);
    if (!found) {
      return not_found("put page " + std::to_string(index) + " by hash: page " + hash.hex() +
                       " is not in the store (store it with put_page first)");
    }
    size = found->size;
  }
  if (size != s.page_size) {
    return invalid_argument("put page " + std::to_string(index) + " by hash: page " + hash.hex() + " has " +
                            std::to_string(size) + " bytes, expected the heap's page size of " +
                            std::to_string(s.page_size));
  }
  s.session.held.insert(hash);
  State::Slot slot;
  slot.kind = State::Slot::kHash;
  slot.hash = hash;
  s.staged.emplace_back(index, slot);
  return Status();
}

Status VersionWriter::zero(uint64_t index) {
  if (!state_ || state_->phase != Phase::kOpen) return writer_closed("zero");
  if (index >= state_->capacity) {
    return invalid_argument("zero page " + std::to_string(index) + ": beyond the heap's capacity of " +
                            std::to_string(state_->capacity) + " pages");
  }
  state_->staged.emplace_back(index, State::Slot{});
  return Status();
}

void VersionWriter::abort() {
  if (state_) state_->abort();
}

// The checkpoint of DESIGN §7, writer side: every staged page is hashed and stored (by the
// workers, while the caller was still putting), then the new version is resolved against its
// parent and handed to commit_version, which makes it durable in one transaction.
Result<VersionInfo> VersionWriter::commit(std::string_view record, VersionPin* pin) {
  if (!state_ || state_->phase != Phase::kOpen) return writer_closed("commit");
  State& s = *state_;
  Status flushed = s.submit_filling();
  Status idle = s.wait_idle();
  if (!flushed.ok() || !idle.ok()) {
    s.abort();
    return !flushed.ok() ? flushed : idle;
  }

  // The version: the parent's pages with the staged changes; the delta: only real changes.
  std::shared_ptr<PageList> pages = internal::new_page_list(
      s.store->list_pool, std::min<uint64_t>(s.capacity, s.parent_pages->size() + s.staged.size()));
  std::vector<DeltaEntry> delta;
  const PageList& base = *s.parent_pages;
  size_t i = 0;
  auto resolve = [&](const State::Slot& slot) -> const PageHash& {
    return slot.kind == State::Slot::kBatched ? s.batch_hashes[slot.batch][slot.pos] : slot.hash;
  };
  // Ascending by index, and of several entries for one index only the last staged.
  auto by_index = [](const auto& a, const auto& b) { return a.first < b.first; };
  if (!std::is_sorted(s.staged.begin(), s.staged.end(), by_index)) {
    std::stable_sort(s.staged.begin(), s.staged.end(), by_index);
  }
  size_t overwritten = 0;  // staged entries a later one for the same index replaced
  for (size_t k = 0; k < s.staged.size(); ++k) {
    if (k + 1 < s.staged.size() && s.staged[k + 1].first == s.staged[k].first) {
      ++overwritten;
      continue;
    }
    const auto& [index, slot] = s.staged[k];
    // The parent's pages up to this index, copied as one range (a 1% checkpoint of 65,536 pages
    // copies 655 ranges, not 65,536 pages one by one).
    auto next = std::lower_bound(base.begin() + static_cast<ptrdiff_t>(i), base.end(), index,
                                 [](const PageRef& p, uint64_t x) { return p.index < x; });
    pages->insert(pages->end(), base.begin() + static_cast<ptrdiff_t>(i), next);
    i = static_cast<size_t>(next - base.begin());
    const PageRef* old = i < base.size() && base[i].index == index ? &base[i++] : nullptr;
    if (slot.kind == State::Slot::kZero) {
      if (old) delta.push_back(DeltaEntry{index, true, {}});
      continue;
    }
    const PageHash& hash = resolve(slot);
    pages->push_back(PageRef{index, hash});
    if (!old || old->hash != hash) delta.push_back(DeltaEntry{index, false, hash});
  }
  pages->insert(pages->end(), base.begin() + static_cast<ptrdiff_t>(i), base.end());

  internal::CommitPlan plan;
  plan.session = &s.session;
  plan.parent = s.parent;
  plan.page_size = s.page_size;
  plan.capacity = s.capacity;
  plan.pages = std::move(pages);
  if (s.parent) {
    plan.delta = std::move(delta);
  }
  plan.record = record;
  plan.own = &s.new_pages;
  plan.own_all_referenced = overwritten == 0;
  plan.phase = &s.phase;
  plan.pin = pin;
  Result<VersionInfo> info = s.store->commit_version(plan);
  if (!info.ok()) {
    s.abort();
    return info.status();
  }
  {
    std::lock_guard lock(s.store->mu);
    if (s.parent) s.store->writer_parents.erase(s.store->writer_parents.find(s.parent));
  }
  s.phase = Phase::kDone;
  s.give_back_buffers();
  return info;
}

// Not in page_store.cpp: it builds a State, which only this file knows.
Result<VersionWriter> PageStore::begin_version(uint64_t parent, uint32_t page_size, uint64_t capacity_pages) {
  DJINN_RETURN_IF_ERROR(internal::check_page_size(page_size));
  DJINN_RETURN_IF_ERROR(internal::check_capacity(capacity_pages));
  auto state = std::make_unique<VersionWriter::State>();
  state->parent = parent;
  state->page_size = page_size;
  state->capacity = capacity_pages;
  {
    std::lock_guard lock(impl_->mu);
    if (parent != 0) {
      auto row = impl_->versions.find(parent);
      if (row == impl_->versions.end()) {
        return not_found("begin version on parent " + std::to_string(parent) + ": no such version in the store");
      }
      if (row->second.info.page_size != page_size || row->second.info.capacity_pages != capacity_pages) {
        return invalid_argument("begin version on parent " + std::to_string(parent) + ": page size " +
                                std::to_string(page_size) + " and capacity " + std::to_string(capacity_pages) +
                                " differ from the parent's " + std::to_string(row->second.info.page_size) + " and " +
                                std::to_string(row->second.info.capacity_pages));
      }
      Result<std::shared_ptr<const PageList>> pages = impl_->pages_locked(parent);
      if (!pages.ok()) return pages.status();
      state->parent_pages = *pages;
      impl_->writer_parents.insert(parent);
    } else {
      state->parent_pages = std::make_shared<const PageList>();
    }
    impl_->sessions.insert(&state->session);
    state->store = impl_.get();
  }
  return VersionWriter(std::move(state));
}

}  // namespace djinn::heapstore
