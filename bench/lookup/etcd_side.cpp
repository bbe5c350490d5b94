// etcd through its grpc-gateway: registrations as txns, lookups as a keys-only range and a get
// (several kept in flight on as many connections), fan-out as watches on the item prefix.
#include "etcd_side.h"

#include <algorithm>
#include <memory>

#include "records.h"

namespace djinn::lookup_bench {

namespace {

constexpr auto kCallTimeout = std::chrono::milliseconds(10000);
// The load's clients and the registrations each keeps in flight: 128 txns in flight, the same as
// the in-flight registrations figure and as ZooKeeper's load.
constexpr int kLoadClients = 16;
constexpr int kLoadInFlight = 8;

// The key just past every key that starts with `prefix`: etcd's range_end for a prefix.
std::string prefix_end(std::string_view prefix) {
  std::string end(prefix);
  end.back() = static_cast<char>(end.back() + 1);  // every prefix here ends in '/'
  return end;
}

// The base64 text after `"<field>":"` at or after `from`, decoded, its closing quote's position in
// *end when `end` is given; nullopt when there is none.
std::optional<std::string> decoded_field(std::string_view body, std::string_view field, size_t from, size_t* end) {
  std::string pattern = "\"" + std::string(field) + "\":\"";
  size_t at = body.find(pattern, from);
  if (at == std::string_view::npos) return std::nullopt;
  at += pattern.size();
  size_t close = body.find('"', at);
  if (close == std::string_view::npos) return std::nullopt;
  if (end) *end = close;
  return bench::base64_decode(body.substr(at, close - at));
}

void log_setup_failure(const Status& st) { progress("etcd: client set-up failed: " + st.to_string()); }

// A client's connections, each with at most one registration in flight, used in turn: the
// gateway answers one request at a time per HTTP/1.1 connection, so requests in flight need as
// many connections (etcd's own clients multiplex them on one HTTP/2 connection instead).
class EtcdPipeline : public Pipeline {
 public:
  explicit EtcdPipeline(std::vector<EtcdRecordClient> conns) : conns_(std::move(conns)) {}
  ~EtcdPipeline() override {
    while (in_flight_ > 0) complete_one();
  }

  bool submit(uint64_t item) override {
    EtcdRecordClient& c = conns_[(head_ + in_flight_) % conns_.size()];
    if (!c.send_registration(bench_item(item)).ok()) return false;
    in_flight_++;
    return true;
  }
  bool complete_one() override {
    Status st = conns_[head_].read_registration();
    head_ = (head_ + 1) % conns_.size();
    in_flight_--;
    return st.ok();
  }
  size_t in_flight() const override { return in_flight_; }

 private:
  std::vector<EtcdRecordClient> conns_;
  size_t head_ = 0;  // the connection with the oldest registration in flight
  size_t in_flight_ = 0;
};

// A client's lookups, each on a connection of its own (one request at a time per connection, as
// for registrations), used in turn. A lookup is two round trips: its range, then its get, sent as
// soon as the range's answer has been read.
class EtcdLookupPipeline : public LookupPipeline {
 public:
  EtcdLookupPipeline(LookupKind kind, std::vector<EtcdRecordClient> conns) : kind_(kind) {
    for (EtcdRecordClient& c : conns) lookups_.push_back(Lookup{std::move(c), Stage::kIdle, {}});
  }
  ~EtcdLookupPipeline() override {
    while (in_flight_ > 0) complete_one();
  }

  bool submit(const Query& q) override {
    Lookup& l = lookups_[(head_ + in_flight_) % lookups_.size()];
    if (!l.conn.send_range(index_prefix(kind_, q)).ok()) return false;
    l.stage = Stage::kRange;
    l.mark = q.mark;
    in_flight_++;
    return true;
  }

  bool complete_one() override {
    // Every lookup whose range is out moves on to its get first (at steady state only the newest
    // one), so that each connection has a request at the server while this one waits for the
    // oldest's item.
    for (size_t k = 0; k < in_flight_; ++k) {
      Lookup& l = lookups_[(head_ + k) % lookups_.size()];
      if (l.stage != Stage::kRange) continue;
      Result<std::string> sid = l.conn.read_range();
      l.stage = sid.ok() && l.conn.send_get(*sid).ok() ? Stage::kGet : Stage::kFailed;
    }
    Lookup& oldest = lookups_[head_];
    bool ok = false;
    if (oldest.stage == Stage::kGet) {
      Result<std::string> item = oldest.conn.read_get();
      ok = item.ok() && item->find(oldest.mark) != std::string::npos;
    }
    oldest.stage = Stage::kIdle;
    head_ = (head_ + 1) % lookups_.size();
    in_flight_--;
    return ok;
  }

  size_t in_flight() const override { return in_flight_; }

 private:
  enum class Stage { kIdle, kRange, kGet, kFailed };
  struct Lookup {
    EtcdRecordClient conn;
    Stage stage;
    std::string mark;  // what the answer must hold
  };

  LookupKind kind_;
  std::vector<Lookup> lookups_;  // one per connection
  size_t head_ = 0;              // the oldest lookup in flight
  size_t in_flight_ = 0;
};

}  // namespace

// ---------------------------------------------------------------------------------------------

Result<EtcdRecordClient> EtcdRecordClient::connect(uint16_t port) {
  Result<bench::HttpConnection> http = bench::HttpConnection::connect(port, kCallTimeout);
  if (!http.ok()) return http.status();
  return EtcdRecordClient(std::move(http).value());
}

Status EtcdRecordClient::register_item(const ServiceItem& item) {
  DJINN_RETURN_IF_ERROR(send_registration(item));
  return read_registration();
}

Status EtcdRecordClient::send_registration(const ServiceItem& item) {
  ItemPaths paths = item_paths(item);
  body_ = "{\"success\":[{\"request_put\":{\"key\":\"";
  body_ += bench::base64_encode(paths.item);
  body_ += "\",\"value\":\"";
  body_ += bench::base64_encode(item_json(item));
  body_ += "\"}}";
  for (const std::string& key : paths.index) {
    body_ += ",{\"request_put\":{\"key\":\"";
    body_ += bench::base64_encode(key);
    body_ += "\"}}";
  }
  body_ += "]}";
  return http_.send_post("/v3/kv/txn", body_);
}

Status EtcdRecordClient::read_registration() {
  Result<bench::HttpResponse> r = http_.read_response();
  if (!r.ok()) return r.status();
  if (r->status != 200 || r->body.find("\"succeeded\":true") == std::string::npos) {
    return bench::gateway_error(*r, "txn");
  }
  return Status::Ok();
}

Result<std::string> EtcdRecordClient::first_item_under(std::string_view prefix) {
  DJINN_RETURN_IF_ERROR(send_range(prefix));
  Result<std::string> sid = read_range();
  if (!sid.ok()) return sid.status();
  DJINN_RETURN_IF_ERROR(send_get(*sid));
  return read_get();
}

Status EtcdRecordClient::send_range(std::string_view prefix) {
  body_ = "{\"key\":\"" + bench::base64_encode(prefix) + "\",\"range_end\":\"" +
          bench::base64_encode(prefix_end(prefix)) + "\",\"limit\":1,\"keys_only\":true,\"serializable\":true}";
  return http_.send_post("/v3/kv/range", body_);
}

Result<std::string> EtcdRecordClient::read_range() {
  Result<bench::HttpResponse> r = http_.read_response();
  if (!r.ok()) return r.status();
  if (r->status != 200) return bench::gateway_error(*r, "range");
  size_t kvs = r->body.find("\"kvs\":[");
  if (kvs == std::string::npos) return not_found("etcd: nothing under the prefix");
  std::optional<std::string> key = decoded_field(r->body, "key", kvs, nullptr);
  if (!key) return bench::gateway_error(*r, "range (no key)");
  return key->substr(key->rfind('/') + 1);
}

Status EtcdRecordClient::send_get(std::string_view sid) {
  body_ = "{\"key\":\"" + bench::base64_encode("/svc/" + std::string(sid)) + "\",\"serializable\":true}";
  return http_.send_post("/v3/kv/range", body_);
}

Result<std::string> EtcdRecordClient::read_get() {
  Result<bench::HttpResponse> r = http_.read_response();
  if (!r.ok()) return r.status();
  if (r->status != 200) return bench::gateway_error(*r, "get");
  std::optional<std::string> value = decoded_field(r->body, "value", 0, nullptr);
  if (!value) return not_found("etcd: no such item");
  return *value;
}

// ---------------------------------------------------------------------------------------------

Result<EtcdWatcher> EtcdWatcher::watch(uint16_t port, std::string_view prefix) {
  Result<bench::HttpConnection> http = bench::HttpConnection::connect(port, kCallTimeout);
  if (!http.ok()) return http.status();
  EtcdWatcher w(std::move(http).value());
  std::string body = "{\"create_request\":{\"key\":\"" + bench::base64_encode(prefix) + "\",\"range_end\":\"" +
                     bench::base64_encode(prefix_end(prefix)) + "\"}}";
  Result<int> status = w.http_.open_stream("/v3/watch", body);
  if (!status.ok()) return status.status();
  if (*status != 200) return unavailable("etcd watch: HTTP " + std::to_string(*status));
  // The first message confirms the watch; events follow in later ones.
  auto give_up = Clock::now() + kCallTimeout;
  while (w.pending_.find('\n') == std::string::npos) {
    if (Clock::now() >= give_up) return deadline_exceeded("etcd watch: not confirmed");
    Result<bool> got = w.http_.read_chunk(w.pending_, std::chrono::milliseconds(100));
    if (!got.ok()) return got.status();
  }
  std::string first = w.pending_.substr(0, w.pending_.find('\n'));
  if (first.find("\"created\":true") == std::string::npos) {
    return unavailable("etcd watch: unexpected first message " + first.substr(0, 200));
  }
  w.pending_.erase(0, first.size() + 1);
  return w;
}

Result<bool> EtcdWatcher::next(std::vector<uint64_t>& items, std::chrono::milliseconds wait) {
  Result<bool> got = http_.read_chunk(pending_, wait);
  if (!got.ok()) return got.status();
  if (!*got) return false;
  take_events(items);
  return true;
}

void EtcdWatcher::take_events(std::vector<uint64_t>& items) {
  size_t consumed = 0;
  for (;;) {
    size_t newline = pending_.find('\n', consumed);
    if (newline == std::string::npos) break;
    std::string_view message = std::string_view(pending_).substr(consumed, newline - consumed);
    // Each event of the message: {"kv":{"key":"<base64 of /svc/<sid>>",...}}
    for (size_t at = 0;;) {
      at = message.find("\"kv\":{", at);
      if (at == std::string_view::npos) break;
      size_t end = at;
      std::optional<std::string> key = decoded_field(message, "key", at, &end);
      at = end + 1;
      if (!key || key->size() < 5 || key->compare(0, 5, "/svc/") != 0) continue;
      if (std::optional<uint64_t> n = item_number(std::string_view(*key).substr(5))) items.push_back(*n);
    }
    consumed = newline + 1;
  }
  pending_.erase(0, consumed);
}

// ---------------------------------------------------------------------------------------------

Worker EtcdSide::registering(ItemCounter& items, int in_flight) {
  std::vector<EtcdRecordClient> conns;
  for (int k = 0; k < in_flight; ++k) {
    Result<EtcdRecordClient> c = EtcdRecordClient::connect(port_);
    if (!c.ok()) {
      log_setup_failure(c.status());
      return {};
    }
    conns.push_back(std::move(c).value());
  }
  return pipelined(std::make_shared<EtcdPipeline>(std::move(conns)), items, static_cast<size_t>(in_flight));
}

LoadSample EtcdSide::load(uint64_t count) {
  ItemCounter items(0, count);
  return run_load(kLoadClients, count, [&](int) { return registering(items, kLoadInFlight); }, "etcd");
}

ThroughputSample EtcdSide::registrations(ItemCounter& items, int clients, int in_flight, const Plan& plan) {
  return run_clients(clients, plan, [&](int) { return registering(items, in_flight); });
}

Worker EtcdSide::looking_up(LookupKind kind, uint64_t loaded, int i, int in_flight) {
  std::vector<EtcdRecordClient> conns;
  for (int k = 0; k < std::max(in_flight, 1); ++k) {
    Result<EtcdRecordClient> c = EtcdRecordClient::connect(port_);
    if (!c.ok()) {
      log_setup_failure(c.status());
      return {};
    }
    conns.push_back(std::move(c).value());
  }
  auto queries = std::make_shared<QueryStream>(kind, loaded, i);
  if (in_flight > 1) {
    return pipelined_lookups(std::make_shared<EtcdLookupPipeline>(kind, std::move(conns)), queries,
                             static_cast<size_t>(in_flight));
  }
  auto client = std::make_shared<EtcdRecordClient>(std::move(conns.front()));
  return [client, queries, kind]() {
    const Query& q = queries->next();
    Result<std::string> item = client->first_item_under(index_prefix(kind, q));
    return Step::one(item.ok() && item->find(q.mark) != std::string::npos);
  };
}

ThroughputSample EtcdSide::lookups(LookupKind kind, uint64_t loaded, int clients, int in_flight, const Plan& plan) {
  return run_clients(clients, plan, [&, kind, loaded](int i) { return looking_up(kind, loaded, i, in_flight); });
}

FanoutSample EtcdSide::fanout(const FanoutRun& run, ItemCounter& items, const Plan& plan) {
  auto subscriber = [this](int) -> Subscriber {
    Result<EtcdWatcher> w = EtcdWatcher::watch(port_, "/svc/");
    if (!w.ok()) {
      log_setup_failure(w.status());
      return {};
    }
    auto watcher = std::make_shared<EtcdWatcher>(std::move(w).value());
    return [watcher](std::vector<uint64_t>& got, Clock::time_point until) {
      auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
      Result<bool> r = watcher->next(got, std::max(wait, std::chrono::milliseconds(0)));
      return r.ok();
    };
  };
  auto registrar = [this](int) -> Registrar {
    Result<EtcdRecordClient> c = EtcdRecordClient::connect(port_);
    if (!c.ok()) {
      log_setup_failure(c.status());
      return {};
    }
    auto client = std::make_shared<EtcdRecordClient>(std::move(c).value());
    return [client](uint64_t n) { return client->register_item(bench_item(n)).ok(); };
  };
  return run_fanout(run, plan, items, subscriber, registrar);
}

}  // namespace djinn::lookup_bench
