// SpaceClient and TxnClient: typed calls over one rpc::Client each.
#include "djinn/space/client.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <future>
#include <random>

#include <kj/exception.h>

#include "djinn/core/model_capnp.h"
#include "djinn/proto/space.capnp.h"

namespace djinn::space {
namespace {

rpc::CallOptions idempotent(rpc::CallOptions call) {
  call.idempotent = true;
  return call;
}

// What a call carries besides its payload's bulk (the RPC header, list pointers), kept free when a
// call is sized against kMaxCallBytes.
constexpr size_t kCallRoomBytes = 64u << 10;
// How often an upload keeps its chunks when the space does not say how long it keeps them, and
// the longest keeping believed (a larger figure is no reason never to ask).
constexpr std::chrono::milliseconds kKeepChunksEvery{60'000};
constexpr uint64_t kMaxKeptMs = 24ull * 3600 * 1000;

// A list of 32-byte names, as space.putValue, space.hasChunks and space.getChunks take them.
void set_hashes(capnp::List<capnp::Data>::Builder list, std::span<const ContentHash> hashes) {
  for (size_t i = 0; i < hashes.size(); ++i) list.set(static_cast<unsigned>(i), capnp::Data::Reader(hashes[i].data(), 32));
}

std::string fresh_key() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return std::to_string(rng()) + "-" + std::to_string(rng());
}

rpc::CallOptions keyed(rpc::CallOptions call) {
  if (call.idempotency_key.empty()) call.idempotency_key = fresh_key();
  return call;
}

void set_txn(proto::TxnRef::Builder out, const std::optional<TxnRef>& txn) {
  if (!txn) return;
  out.initId().setHi(txn->id.hi);
  out.getId().setLo(txn->id.lo);
  out.setManager(txn->manager);
}

Result<std::vector<Entry>> entries_of(capnp::List<proto::Entry>::Reader list, std::string_view method) {
  std::vector<Entry> out;
  out.reserve(list.size());
  for (auto e : list) {
    Result<Entry> entry = from_capnp(e);
    if (!entry.ok()) return internal_error("the space sent a bad entry in reply to " + std::string(method) + ": " + entry.status().message());
    out.push_back(std::move(*entry));
  }
  return out;
}

Result<std::optional<Entry>> first(Result<std::vector<Entry>> r) {
  if (!r.ok()) return r.status();
  if (r->empty()) return std::optional<Entry>();
  return std::optional<Entry>(std::move(r->front()));
}

txn::Outcome outcome_of(proto::Outcome o) {
  switch (o) {
    case proto::Outcome::COMMITTED: return txn::Outcome::kCommitted;
    case proto::Outcome::ABORTED: return txn::Outcome::kAborted;
    default: return txn::Outcome::kActive;
  }
}

}  // namespace

lease::HeldLease WriteReceipt::held_lease() const {
  lease::Lease l;
  l.id = written.lease_id;
  l.resource = std::string(kEntryResource);
  l.expiration_ms = written.expiration_ms;
  // written.granted_ms is 0 (not known) for a keyed write answered from the stored entry, or from
  // a space of before.
  l.granted_ms = lease::first_grant_ms(written.granted_ms, written.expiration_ms);
  return lease::HeldLease{std::move(l), landlord};
}

SpaceClient::SpaceClient(rpc::ClientOptions options, std::string holder)
    : options_(options), holder_(std::move(holder)), client_(std::make_unique<rpc::Client>(std::move(options))) {}
SpaceClient::~SpaceClient() = default;
rpc::Client& SpaceClient::rpc() { return *client_; }
const std::string& SpaceClient::endpoint() const { return client_->endpoint(); }

Result<WriteReceipt> SpaceClient::write(const Entry& entry, int64_t duration_ms, const std::optional<TxnRef>& txn,
                                        rpc::CallOptions call) {
  capnp::MallocMessageBuilder message(rpc::kSmallMessageWords);
  auto p = message.initRoot<proto::WriteParams>();
  to_capnp(entry, p.initEntry());
  p.setDurationMs(duration_ms);
  if (txn) set_txn(p.initTxn(), txn);
  if (!holder_.empty()) p.setHolder(holder_);
  rpc::Reply reply = client_->call("space.write", message, keyed(call));
  return rpc::read_reply<WriteReceipt>(reply, "space.write", [](rpc::Reply& r) -> Result<WriteReceipt> {
    auto res = r.results<proto::WriteResult>();
    return WriteReceipt{Written{res.getLease().getId(), res.getLease().getExpirationMillis(), res.getGrantedMs()},
                        std::string(res.getLandlord().cStr())};
  });
}

Result<std::vector<Result<WriteReceipt>>> SpaceClient::write_many(std::span<const Entry> entries, int64_t duration_ms,
                                                                  const std::optional<TxnRef>& txn, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  auto p = message.initRoot<proto::WriteManyParams>();
  auto list = p.initEntries(static_cast<unsigned>(entries.size()));
  for (size_t i = 0; i < entries.size(); ++i) to_capnp(entries[i], list[static_cast<unsigned>(i)]);
  p.setDurationMs(duration_ms);
  if (txn) set_txn(p.initTxn(), txn);
  if (!holder_.empty()) p.setHolder(holder_);
  // A call over the space's frame limit would be refused by the space: refused here, saying what to do.
  size_t bytes = capnp::computeSerializedSizeInWords(message) * sizeof(capnp::word);
  if (bytes + kCallRoomBytes > kMaxCallBytes) {
    return resource_exhausted("space.writeMany: " + std::to_string(entries.size()) + " entries take " +
                              std::to_string(bytes) + " bytes, over what a call to the space carries (" +
                              std::to_string(kMaxCallBytes - kCallRoomBytes) + "): split the list");
  }
  rpc::Reply reply = client_->call("space.writeMany", message, keyed(call));
  const size_t n = entries.size();
  return rpc::read_reply<std::vector<Result<WriteReceipt>>>(
      reply, "space.writeMany", [n](rpc::Reply& r) -> Result<std::vector<Result<WriteReceipt>>> {
        auto res = r.results<proto::WriteManyResult>();
        auto items = res.getItems();
        if (items.size() != n) return internal_error("space.writeMany: the reply answers for a different number of entries");
        std::string landlord(res.getLandlord().cStr());
        std::vector<Result<WriteReceipt>> out;
        out.reserve(n);
        for (auto item : items) {
          Status st = status_from_wire(item.getCode(), item.getMessage().cStr());
          if (!st.ok()) {
            out.emplace_back(std::move(st));
            continue;
          }
          out.emplace_back(WriteReceipt{
              Written{item.getLease().getId(), item.getLease().getExpirationMillis(), item.getGrantedMs()}, landlord});
        }
        return out;
      });
}

Result<std::vector<Entry>> SpaceClient::match(const char* method, const Template& tmpl, std::chrono::milliseconds timeout,
                                              size_t max, const std::optional<TxnRef>& txn, rpc::CallOptions call,
                                              bool is_read) {
  capnp::MallocMessageBuilder message(rpc::kSmallMessageWords);
  auto p = message.initRoot<proto::MatchParams>();
  to_capnp(tmpl, p.initTemplate());
  p.setTimeoutMs(timeout.count());
  p.setMaxEntries(static_cast<uint32_t>(max));
  if (txn) set_txn(p.initTxn(), txn);
  if (call.timeout.count() == 0) call.timeout = options_.default_timeout;
  // The server answers by `timeout`; the call waits for that answer (each capped, so the sum
  // cannot overflow).
  call.timeout = std::min(call.timeout, rpc::kMaxCallTimeout) + std::min(timeout, rpc::kMaxCallTimeout);
  call = is_read ? idempotent(call) : keyed(call);
  rpc::Reply reply = client_->call(method, message, call);
  return rpc::read_reply<std::vector<Entry>>(reply, method, [method](rpc::Reply& r) {
    return entries_of(r.results<proto::MatchResult>().getEntries(), method);
  });
}

Result<std::optional<Entry>> SpaceClient::read(const Template& tmpl, std::chrono::milliseconds timeout,
                                               const std::optional<TxnRef>& txn, rpc::CallOptions call) {
  return first(match("space.read", tmpl, timeout, 1, txn, call, true));
}
Result<std::optional<Entry>> SpaceClient::take(const Template& tmpl, std::chrono::milliseconds timeout,
                                               const std::optional<TxnRef>& txn, rpc::CallOptions call) {
  return first(match("space.take", tmpl, timeout, 1, txn, call, false));
}
Result<std::optional<Entry>> SpaceClient::read_if_exists(const Template& tmpl, const std::optional<TxnRef>& txn,
                                                         rpc::CallOptions call) {
  return first(match("space.readIfExists", tmpl, {}, 1, txn, call, true));
}
Result<std::optional<Entry>> SpaceClient::take_if_exists(const Template& tmpl, const std::optional<TxnRef>& txn,
                                                         rpc::CallOptions call) {
  return first(match("space.takeIfExists", tmpl, {}, 1, txn, call, false));
}
Result<std::vector<Entry>> SpaceClient::take_many(const Template& tmpl, size_t max, std::chrono::milliseconds timeout,
                                                  const std::optional<TxnRef>& txn, rpc::CallOptions call) {
  return match("space.takeMany", tmpl, timeout, max, txn, call, false);
}

Result<ContentsPage> SpaceClient::contents(const Template& tmpl, uint64_t cursor, size_t max,
                                           const std::optional<TxnRef>& txn, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  auto p = message.initRoot<proto::ContentsParams>();
  to_capnp(tmpl, p.initTemplate());
  p.setCursor(cursor);
  p.setMaxEntries(static_cast<uint32_t>(max));
  if (txn) set_txn(p.initTxn(), txn);
  rpc::Reply reply = client_->call("space.contents", message, idempotent(call));
  return rpc::read_reply<ContentsPage>(reply, "space.contents", [](rpc::Reply& r) -> Result<ContentsPage> {
    auto res = r.results<proto::ContentsResult>();
    Result<std::vector<Entry>> entries = entries_of(res.getEntries(), "space.contents");
    if (!entries.ok()) return entries.status();
    return ContentsPage{std::move(*entries), res.getCursor(), res.getDone()};
  });
}

Result<std::vector<Entry>> SpaceClient::contents_all(const Template& tmpl, size_t page, rpc::CallOptions call) {
  std::vector<Entry> all;
  uint64_t cursor = 0;
  for (;;) {
    Result<ContentsPage> p = contents(tmpl, cursor, page, std::nullopt, call);
    if (!p.ok()) return p.status();
    for (Entry& e : p->entries) all.push_back(std::move(e));
    if (p->done) return all;
    cursor = p->cursor;
  }
}

ContentsIterator::ContentsIterator(SpaceClient& client, Template tmpl, size_t page, std::optional<TxnRef> txn)
    : client_(client), tmpl_(std::move(tmpl)), page_(page), txn_(std::move(txn)) {}

Result<std::optional<Entry>> ContentsIterator::next() {
  while (at_ == buffer_.size()) {
    if (done_) return std::optional<Entry>();
    Result<ContentsPage> p = client_.contents(tmpl_, cursor_, page_, txn_);
    if (!p.ok()) return p.status();
    buffer_ = std::move(p->entries);
    at_ = 0;
    cursor_ = p->cursor;
    done_ = p->done;
  }
  return std::optional<Entry>(std::move(buffer_[at_++]));
}

Result<NotifyHandle> SpaceClient::notify(const Template& tmpl, int64_t duration_ms, const std::string& holder,
                                         rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  auto p = message.initRoot<proto::SpaceNotifyParams>();
  to_capnp(tmpl, p.initTemplate());
  p.setDurationMs(duration_ms);
  p.setHolder(holder);
  rpc::Reply reply = client_->call("space.notify", message, keyed(call));
  return rpc::read_reply<NotifyHandle>(reply, "space.notify", [](rpc::Reply& r) -> Result<NotifyHandle> {
    auto res = r.results<proto::SpaceNotifyResult>();
    return NotifyHandle{res.getId(), res.getExpirationMs(), res.getEventKind().cStr(), res.getEventsEndpoint().cStr(),
                        res.getLandlord().cStr()};
  });
}

Result<RemoteStats> SpaceClient::stats(rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  message.initRoot<proto::StatsParams>();
  rpc::Reply reply = client_->call("space.stats", message, idempotent(call));
  return rpc::read_reply<RemoteStats>(reply, "space.stats", [](rpc::Reply& r) -> Result<RemoteStats> {
    auto s = r.results<proto::StatsResult>();
    return RemoteStats{s.getEntries(),  s.getValues(),  s.getChunks(),        s.getChunkBytes(),
                       s.getWaiters(),  s.getInDoubt(), s.getManifestBytes(), s.getMaxValueBytes()};
  });
}

Result<bool> SpaceClient::put_chunk(const ContentHash& hash, std::span<const uint8_t> data, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  auto p = message.initRoot<proto::PutChunkParams>();
  p.setHash(capnp::Data::Reader(hash.data(), hash.size()));
  p.setData(capnp::Data::Reader(data.data(), data.size()));
  rpc::Reply reply = client_->call("space.putChunk", message, idempotent(call));
  return rpc::read_reply<bool>(reply, "space.putChunk", [](rpc::Reply& r) -> Result<bool> {
    return r.results<proto::PutChunkResult>().getStored();
  });
}

Status SpaceClient::get_chunk(const ContentHash& hash, std::vector<uint8_t>& out, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  message.initRoot<proto::GetChunkParams>().setHash(capnp::Data::Reader(hash.data(), hash.size()));
  rpc::Reply reply = client_->call("space.getChunk", message, idempotent(call));
  Result<bool> got = rpc::read_reply<bool>(reply, "space.getChunk", [&](rpc::Reply& r) -> Result<bool> {
    auto d = r.results<proto::GetChunkResult>().getData();
    out.assign(d.begin(), d.end());
    return true;
  });
  if (!got.ok()) return got.status();
  if (hash_bytes(out) != hash) return data_loss("space.getChunk: the chunk received does not match its hash " + to_hex(hash));
  return Status::Ok();
}

namespace {

// Calls outstanding at once in a value's transfer: each holds a chunk in memory.
constexpr int kMaxInFlight = 64;

Status check_in_flight(const ValueTransfer& transfer, std::string_view what) {
  if (transfer.in_flight >= 1 && transfer.in_flight <= kMaxInFlight) return Status::Ok();
  return invalid_argument(std::string(what) + ": " + std::to_string(transfer.in_flight) +
                          " chunk calls in flight: must be 1.." + std::to_string(kMaxInFlight));
}

}  // namespace

Result<ContentHash> SpaceClient::put_value(const ValueReader& read, ValueTransfer transfer) {
  if (transfer.chunk_bytes == 0 || transfer.chunk_bytes > kMaxChunkBytes) {
    return invalid_argument("put_value: chunk size " + std::to_string(transfer.chunk_bytes) + ": must be 1.." +
                            std::to_string(kMaxChunkBytes));
  }
  DJINN_RETURN_IF_ERROR(check_in_flight(transfer, "put_value"));
  rpc::CallOptions call;
  call.timeout = transfer.call_timeout;
  call.idempotent = true;  // storing a chunk twice stores it once
  // The space names each chunk (one BLAKE2b pass over the content, on its side): the manifest is
  // made of the names it answers, in order.
  std::vector<ContentHash> chunks;
  struct Sent {
    std::future<rpc::Reply> reply;
    std::chrono::steady_clock::time_point at;
  };
  std::deque<Sent> pending;
  uint64_t total = 0;
  std::vector<uint8_t> buffer(transfer.chunk_bytes);
  // The space keeps a chunk no value names for a while (its --value-grace, told in each putChunk
  // reply) after the chunk's last put or hasChunks: an upload that takes longer asks about the
  // chunks it has put, which keeps them, every half of that while.
  std::chrono::milliseconds kept{0};
  std::chrono::steady_clock::time_point kept_from;  // every chunk in `chunks` was put or asked about since
  auto settle_front = [&]() -> Status {
    rpc::Reply r = pending.front().reply.get();
    auto sent_at = pending.front().at;
    pending.pop_front();
    Result<ContentHash> h = rpc::read_reply<ContentHash>(r, "space.putChunk", [&](rpc::Reply& reply) -> Result<ContentHash> {
      auto res = reply.results<proto::PutChunkResult>();
      auto d = res.getHash();
      std::optional<ContentHash> got = hash_from_bytes(std::span<const uint8_t>(d.begin(), d.size()));
      if (!got) return internal_error("space.putChunk: the reply names no 32-byte hash");
      if (res.getKeptMs() > 0) kept = std::chrono::milliseconds(std::min<uint64_t>(res.getKeptMs(), kMaxKeptMs));
      return *got;
    });
    if (!h.ok()) return h.status();
    kept_from = chunks.empty() ? sent_at : std::min(kept_from, sent_at);
    chunks.push_back(*h);
    return Status::Ok();
  };
  auto keep_chunks = [&]() -> Status {
    // Chunks answered already are named, so they can be asked about.
    while (!pending.empty() && pending.front().reply.wait_for(std::chrono::seconds(0)) == std::future_status::ready) {
      DJINN_RETURN_IF_ERROR(settle_front());
    }
    auto every = kept.count() > 0 ? kept / 2 : kKeepChunksEvery;
    auto now = std::chrono::steady_clock::now();
    if (chunks.empty() || now - kept_from < every) return Status::Ok();
    Result<std::vector<bool>> present = has_chunks(chunks, call);
    if (!present.ok()) return present.status();
    for (size_t i = 0; i < present->size(); ++i) {
      if (!(*present)[i]) {
        std::string how_long = kept.count() > 0 ? std::to_string(kept.count()) + " ms (its --value-grace)" : "its --value-grace";
        return failed_precondition("space.putValue: chunk " + std::to_string(i) + " (" + to_hex(chunks[i]) +
                                   ") is no longer stored: the space keeps a chunk no value names for " + how_long +
                                   " and collected it before the upload ended; store the value again");
      }
    }
    kept_from = now;
    return Status::Ok();
  };
  auto settle = [&]() -> Status {
    DJINN_RETURN_IF_ERROR(settle_front());
    return keep_chunks();
  };
  for (;;) {
    size_t filled = 0;
    while (filled < buffer.size()) {
      DJINN_RETURN_IF_ERROR(keep_chunks());  // a slow reader may take longer than a grace to fill one
      Result<size_t> n = read(buffer.data() + filled, buffer.size() - filled);
      if (!n.ok()) return n.status();
      if (*n == 0) break;
      filled += *n;
    }
    if (filled == 0) break;
    if (chunks.size() + pending.size() >= kMaxValueChunks) {  // told before the rest is read and sent
      return invalid_argument("put_value: more than " + std::to_string(kMaxValueChunks) + " chunks of " +
                              std::to_string(transfer.chunk_bytes) + " bytes, the most a value may have; use "
                              "larger chunks (up to " + std::to_string(kMaxChunkBytes) + " bytes)");
    }
    total += filled;
    if (static_cast<int>(pending.size()) >= transfer.in_flight) DJINN_RETURN_IF_ERROR(settle());
    capnp::MallocMessageBuilder message;
    message.initRoot<proto::PutChunkParams>().setData(capnp::Data::Reader(buffer.data(), filled));
    auto sent_at = std::chrono::steady_clock::now();
    pending.push_back({client_->call_async("space.putChunk", message, call), sent_at});  // the message is copied out here
    if (filled < buffer.size()) break;
  }
  while (!pending.empty()) DJINN_RETURN_IF_ERROR(settle());
  DJINN_RETURN_IF_ERROR(keep_chunks());
  return put_manifest(total, chunks, call);
}

Result<ContentHash> SpaceClient::put_manifest(uint64_t size, std::span<const ContentHash> chunks, rpc::CallOptions call) {
  if (chunks.size() > kMaxValueChunks) {
    return invalid_argument("put_manifest: " + std::to_string(chunks.size()) + " chunks: at most " +
                            std::to_string(kMaxValueChunks) + " per value");
  }
  // One segment: a hash then costs 40 bytes on the wire (a pointer and its 32 bytes), not 48 with
  // the landing pads of pointers between segments, so kMaxValueChunks fit in one call.
  capnp::MallocMessageBuilder message(static_cast<unsigned>(16 + chunks.size() * 5), capnp::AllocationStrategy::FIXED_SIZE);
  auto p = message.initRoot<proto::PutValueParams>();
  p.setSize(size);
  auto list = p.initChunks(static_cast<unsigned>(chunks.size()));
  set_hashes(list, chunks);
  size_t bytes = capnp::computeSerializedSizeInWords(message) * sizeof(capnp::word);
  if (bytes + kCallRoomBytes > kMaxCallBytes) {
    return resource_exhausted("space.putValue: a manifest of " + std::to_string(chunks.size()) + " chunks takes " +
                              std::to_string(bytes) + " bytes, over what a call to the space carries");
  }
  // Storing the same manifest twice stores it once.
  rpc::Reply reply = client_->call("space.putValue", message, idempotent(call));
  return rpc::read_reply<ContentHash>(reply, "space.putValue", [](rpc::Reply& r) -> Result<ContentHash> {
    auto id = r.results<proto::PutValueResult>().getValueId();
    std::optional<ContentHash> h = hash_from_bytes(std::span<const uint8_t>(id.begin(), id.size()));
    if (!h) return internal_error("space.putValue: the value id in the reply is not 32 bytes");
    return *h;
  });
}

Result<std::vector<Result<bool>>> SpaceClient::put_chunks(std::span<const std::span<const uint8_t>> chunks,
                                                          std::span<const ContentHash> hashes, rpc::CallOptions call) {
  if (!hashes.empty() && hashes.size() != chunks.size()) {
    return invalid_argument("put_chunks: " + std::to_string(hashes.size()) + " hashes for " +
                            std::to_string(chunks.size()) + " chunks");
  }
  std::vector<Result<bool>> out;
  out.reserve(chunks.size());
  for (size_t at = 0; at < chunks.size();) {
    // As many as fit in one call (at least one).
    size_t end = at, bytes = 0;
    while (end < chunks.size() && end - at < kMaxHashesPerCall &&
           (end == at || bytes + chunks[end].size() + 64 <= kMaxCallBytes - kCallRoomBytes)) {
      bytes += chunks[end].size() + 64;
      ++end;
    }
    capnp::MallocMessageBuilder message;
    auto list = message.initRoot<proto::PutChunksParams>().initChunks(static_cast<unsigned>(end - at));
    for (size_t i = at; i < end; ++i) {
      auto item = list[static_cast<unsigned>(i - at)];
      if (!hashes.empty()) item.setHash(capnp::Data::Reader(hashes[i].data(), hashes[i].size()));
      item.setData(capnp::Data::Reader(chunks[i].data(), chunks[i].size()));
    }
    rpc::Reply reply = client_->call("space.putChunks", message, idempotent(call));  // storing twice stores once
    const size_t n = end - at;
    Status st = rpc::read_reply<bool>(reply, "space.putChunks", [&](rpc::Reply& r) -> Result<bool> {
      auto items = r.results<proto::PutChunksResult>().getItems();
      if (items.size() != n) return internal_error("space.putChunks: the reply answers for a different number of chunks");
      for (auto item : items) {
        Status s = status_from_wire(item.getCode(), item.getMessage().cStr());
        if (s.ok()) {
          out.emplace_back(item.getStored());
        } else {
          out.emplace_back(std::move(s));
        }
      }
      return true;
    }).status();
    if (!st.ok()) return st;
    at = end;
  }
  return out;
}

Status SpaceClient::get_chunks(std::span<const ContentHash> hashes,
                               const std::function<Status(const ContentHash&, std::span<const uint8_t>)>& deliver,
                               rpc::CallOptions call) {
  std::optional<ContentHash> first_missing;
  // Asks for as many as the last reply held and as many again: large chunks come a few a reply,
  // and asking for 10,000 each time would send their names over and over.
  size_t ask = kMaxHashesPerCall;
  for (size_t at = 0; at < hashes.size();) {
    std::span<const ContentHash> part = hashes.subspan(at, std::min(ask, hashes.size() - at));
    capnp::MallocMessageBuilder message;
    auto list = message.initRoot<proto::GetChunksParams>().initHashes(static_cast<unsigned>(part.size()));
    set_hashes(list, part);
    rpc::Reply reply = client_->call("space.getChunks", message, idempotent(call));
    Result<size_t> answered = rpc::read_reply<size_t>(reply, "space.getChunks", [&](rpc::Reply& r) -> Result<size_t> {
      auto res = r.results<proto::GetChunksResult>();
      size_t n = res.getAnswered();
      auto chunks = res.getChunks();
      if (n == 0 || n > part.size() || chunks.size() < n) {
        return internal_error("space.getChunks: the reply answers for " + std::to_string(n) + " of " +
                              std::to_string(part.size()) + " chunks");
      }
      for (size_t i = 0; i < n; ++i) {
        auto d = chunks[static_cast<unsigned>(i)];
        std::span<const uint8_t> data(d.begin(), d.size());
        if (data.empty()) {
          if (!first_missing) first_missing = part[i];
          continue;
        }
        if (hash_bytes(data) != part[i]) {
          return data_loss("space.getChunks: the chunk received does not match its hash " + to_hex(part[i]));
        }
        DJINN_RETURN_IF_ERROR(deliver(part[i], data));
      }
      return n;
    });
    if (!answered.ok()) return answered.status();
    at += *answered;
    if (*answered < part.size()) ask = std::clamp<size_t>(*answered * 2, 16, kMaxHashesPerCall);
  }
  if (first_missing) return not_found("space.getChunks: chunk " + to_hex(*first_missing) + " is not stored");
  return Status::Ok();
}

Result<std::vector<bool>> SpaceClient::has_chunks(std::span<const ContentHash> hashes, rpc::CallOptions call) {
  std::vector<bool> present;
  present.reserve(hashes.size());
  for (size_t at = 0; at < hashes.size(); at += kMaxHashesPerCall) {
    std::span<const ContentHash> part = hashes.subspan(at, std::min(kMaxHashesPerCall, hashes.size() - at));
    capnp::MallocMessageBuilder message;
    auto list = message.initRoot<proto::HasChunksParams>().initHashes(static_cast<unsigned>(part.size()));
    set_hashes(list, part);
    rpc::Reply reply = client_->call("space.hasChunks", message, idempotent(call));
    Status st = rpc::read_reply<bool>(reply, "space.hasChunks", [&](rpc::Reply& r) -> Result<bool> {
      auto got = r.results<proto::HasChunksResult>().getPresent();
      if (got.size() != part.size()) return internal_error("space.hasChunks: the reply answers for a different number of chunks");
      for (bool b : got) present.push_back(b);
      return true;
    }).status();
    if (!st.ok()) return st;
  }
  return present;
}

Result<ContentHash> SpaceClient::put_value(std::span<const uint8_t> bytes, ValueTransfer transfer) {
  size_t at = 0;
  return put_value([&](uint8_t* out, size_t max) -> Result<size_t> {
    size_t n = std::min(max, bytes.size() - at);
    std::copy(bytes.begin() + at, bytes.begin() + at + n, out);
    at += n;
    return n;
  }, transfer);
}

Result<Manifest> SpaceClient::get_manifest(const ContentHash& value_id, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  message.initRoot<proto::GetValueParams>().setValueId(capnp::Data::Reader(value_id.data(), 32));
  rpc::Reply reply = client_->call("space.getValue", message, idempotent(call));
  return rpc::read_reply<Manifest>(reply, "space.getValue", [&value_id](rpc::Reply& r) -> Result<Manifest> {
    auto res = r.results<proto::GetValueResult>();
    Manifest m;
    m.size = res.getSize();
    auto sizes = res.getChunkSizes();
    auto chunks = res.getChunks();  // read once: each get counts against the traversal limit
    if (sizes.size() != chunks.size()) return internal_error("space.getValue: chunk and size lists differ");
    for (unsigned i = 0; i < chunks.size(); ++i) {
      auto c = chunks[i];
      std::optional<ContentHash> h = hash_from_bytes(std::span<const uint8_t>(c.begin(), c.size()));
      if (!h) return internal_error("space.getValue: a chunk hash is not 32 bytes");
      m.chunks.push_back(*h);
      m.chunk_sizes.push_back(sizes[i]);
    }
    // Each chunk is checked against the manifest as it arrives; the manifest against the id here.
    if (value_id_of(m) != value_id) {
      return data_loss("space.getValue: the manifest served for value " + to_hex(value_id) +
                       " is not that value's (its hash differs); the space's store may be damaged");
    }
    return m;
  });
}

Status SpaceClient::get_value(const ContentHash& value_id, const ValueWriter& write, ValueTransfer transfer) {
  DJINN_RETURN_IF_ERROR(check_in_flight(transfer, "get_value"));
  rpc::CallOptions call;
  call.timeout = transfer.call_timeout;
  call.idempotent = true;
  Result<Manifest> m = get_manifest(value_id, call);
  if (!m.ok()) return m.status();
  std::deque<std::pair<size_t, std::future<rpc::Reply>>> pending;
  size_t next = 0;
  uint64_t total = 0;
  auto issue = [&] {
    capnp::MallocMessageBuilder message;
    message.initRoot<proto::GetChunkParams>().setHash(capnp::Data::Reader(m->chunks[next].data(), 32));
    pending.emplace_back(next, client_->call_async("space.getChunk", message, call));
    ++next;
  };
  while (next < m->chunks.size() && static_cast<int>(pending.size()) < transfer.in_flight) issue();
  while (!pending.empty()) {
    auto [index, future] = std::move(pending.front());
    pending.pop_front();
    rpc::Reply reply = future.get();
    if (!reply.ok()) return Status(reply.status().code(), "get_value chunk " + std::to_string(index) + ": " + reply.status().message());
    Status written;
    try {
      auto d = reply.results<proto::GetChunkResult>().getData();
      std::span<const uint8_t> bytes(d.begin(), d.size());
      if (bytes.size() != m->chunk_sizes[index] || hash_bytes(bytes) != m->chunks[index]) {
        return data_loss("get_value: chunk " + std::to_string(index) + " does not match its hash");
      }
      total += bytes.size();
      if (next < m->chunks.size()) issue();  // keep the window full while this one is written
      written = write(bytes);
    } catch (const kj::Exception& e) {
      return internal_error(std::string("get_value: malformed chunk reply: ") + e.getDescription().cStr());
    }
    DJINN_RETURN_IF_ERROR(written);
  }
  if (total != m->size) return data_loss("get_value: the chunks hold " + std::to_string(total) + " bytes, the manifest says " + std::to_string(m->size));
  return Status::Ok();
}

Result<lease::HeldLease> SpaceClient::renew(uint64_t lease_id, int64_t duration_ms, rpc::CallOptions call) {
  std::call_once(leases_once_, [this] { leases_ = std::make_unique<lease::LeaseClient>(options_); });
  return leases_->renew(lease_id, duration_ms, call);
}

Status SpaceClient::cancel(uint64_t lease_id, rpc::CallOptions call) {
  std::call_once(leases_once_, [this] { leases_ = std::make_unique<lease::LeaseClient>(options_); });
  return leases_->cancel(lease_id, call);
}

Result<Entry> decode_notify_event(const events::Event& event) {
  try {
    auto reader = event.reader();
    Result<Entry> e = from_capnp(reader.getRoot<proto::SpaceNotifyEvent>().getEntry());
    if (!e.ok()) return invalid_argument("space notify event: " + e.status().message());
    return e;
  } catch (const kj::Exception& e) {
    return invalid_argument(std::string("malformed space notify event: ") + e.getDescription().cStr());
  }
}

// ---- TxnClient ----

TxnClient::TxnClient(rpc::ClientOptions options) : client_(std::make_unique<rpc::Client>(std::move(options))) {}
TxnClient::~TxnClient() = default;
rpc::Client& TxnClient::rpc() { return *client_; }

Result<TxnRef> TxnClient::create(std::chrono::milliseconds lease, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  message.initRoot<proto::CreateTxnParams>().setLeaseMs(lease.count());
  rpc::Reply reply = client_->call("txn.create", message, keyed(call));
  return rpc::read_reply<TxnRef>(reply, "txn.create", [](rpc::Reply& r) -> Result<TxnRef> {
    auto t = r.results<proto::CreateTxnResult>().getTxn();
    return TxnRef{txn::TxnId{t.getId().getHi(), t.getId().getLo()}, t.getManager().cStr()};
  });
}

namespace {
void txn_params(capnp::MallocMessageBuilder& message, const txn::TxnId& id, int64_t lease_ms = 0) {
  auto p = message.initRoot<proto::TxnParams>();
  p.initTxn().setHi(id.hi);
  p.getTxn().setLo(id.lo);
  p.setLeaseMs(lease_ms);
}
}  // namespace

Result<txn::Outcome> TxnClient::commit(const txn::TxnId& id, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  txn_params(message, id);
  rpc::Reply reply = client_->call("txn.commit", message, idempotent(call));  // a repeat returns the outcome
  return rpc::read_reply<txn::Outcome>(reply, "txn.commit", [](rpc::Reply& r) -> Result<txn::Outcome> {
    return outcome_of(r.results<proto::OutcomeResult>().getOutcome());
  });
}

Status TxnClient::abort(const txn::TxnId& id, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  txn_params(message, id);
  return client_->call("txn.abort", message, idempotent(call)).status();
}

Status TxnClient::renew(const txn::TxnId& id, std::chrono::milliseconds lease, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  txn_params(message, id, lease.count());
  return client_->call("txn.renew", message, idempotent(call)).status();
}

Status TxnClient::join(const txn::TxnId& id, std::string_view participant, uint64_t incarnation,
                       rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  auto p = message.initRoot<proto::JoinParams>();
  p.initTxn().setHi(id.hi);
  p.getTxn().setLo(id.lo);
  p.setParticipant(std::string(participant));
  p.setIncarnation(incarnation);
  return client_->call("txn.join", message, idempotent(call)).status();  // joining twice is a no-op
}

Result<txn::Outcome> TxnClient::outcome(const txn::TxnId& id, rpc::CallOptions call) {
  capnp::MallocMessageBuilder message;
  txn_params(message, id);
  rpc::Reply reply = client_->call("txn.outcome", message, idempotent(call));
  return rpc::read_reply<txn::Outcome>(reply, "txn.outcome", [](rpc::Reply& r) -> Result<txn::Outcome> {
    return outcome_of(r.results<proto::OutcomeResult>().getOutcome());
  });
}

}  // namespace djinn::space
