// ZooKeeper as a peer: a standalone server from Debian's jars, and the records of records.h as
// znodes through the C client: multi-op registrations (asynchronous, so a client can keep several
// in flight), child listings and reads for lookups (blocking, or asynchronous ones kept in flight),
// child watches for the fan-out.
#include "zookeeper_side.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <unordered_set>

#include "records.h"

#if DJINN_BENCH_HAVE_ZOOKEEPER
#include <zookeeper/zookeeper.h>
#endif

namespace djinn::lookup_bench {

namespace {

// A JVM's start, then ZooKeeper's: a few seconds here; generous for a loaded machine.
constexpr auto kStartTimeout = std::chrono::seconds(60);
constexpr auto kProbeTimeout = std::chrono::seconds(2);
constexpr auto kConnectTimeout = std::chrono::seconds(10);
constexpr int kSessionTimeoutMs = 30000;
// As for etcd: the load's clients and the registrations each keeps in flight.
constexpr int kLoadClients = 16;
constexpr int kLoadInFlight = 8;
// Room for one item's data (item_json is about 300 bytes).
constexpr int kItemBufferBytes = 4096;

// The version in the name of the jar the package installs beside zookeeper.jar
// ("zookeeper-3.8.0.jar"), or "unknown".
std::string zookeeper_version(const std::string& jar_dir) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(jar_dir, ec)) {
    std::string name = entry.path().filename().string();
    constexpr std::string_view kPrefix = "zookeeper-";
    if (name.size() > kPrefix.size() + 4 && name.compare(0, kPrefix.size(), kPrefix) == 0 &&
        std::isdigit(static_cast<unsigned char>(name[kPrefix.size()])) && name.ends_with(".jar")) {
      return name.substr(kPrefix.size(), name.size() - kPrefix.size() - 4);
    }
  }
  return "unknown";
}

void log_setup_failure(const Status& st) { progress("zookeeper: client set-up failed: " + st.to_string()); }

}  // namespace

struct ZooKeeperSide::KnownParents {
  bool contains(const std::string& path) {
    std::lock_guard lock(mu);
    return paths.count(path) > 0;
  }
  void add(const std::string& path) {
    std::lock_guard lock(mu);
    paths.insert(path);
  }

  std::mutex mu;  // guards paths
  std::unordered_set<std::string> paths;
};

#if DJINN_BENCH_HAVE_ZOOKEEPER

bool zookeeper_client_built() { return true; }

namespace {

Status zk_error(int rc, const std::string& what) { return unavailable("zookeeper " + what + ": " + zerror(rc)); }

// A connected session, closed by the destructor.
class ZkSession {
 public:
  static Result<std::unique_ptr<ZkSession>> open(const std::string& hosts, std::chrono::milliseconds timeout) {
    std::unique_ptr<ZkSession> s(new ZkSession());
    s->zh_ = zookeeper_init(hosts.c_str(), &ZkSession::on_event, kSessionTimeoutMs, nullptr, s.get(), 0);
    if (s->zh_ == nullptr) return unavailable("zookeeper_init: " + std::string(std::strerror(errno)));
    std::unique_lock lock(s->mu_);
    if (!s->cv_.wait_for(lock, timeout, [&] { return s->state_ == ZOO_CONNECTED_STATE; })) {
      return unavailable("no ZooKeeper session with " + hosts + " within " + std::to_string(timeout.count()) + " ms");
    }
    return s;
  }
  ~ZkSession() {
    // Joins the client's I/O and completion threads: no callback runs after this.
    if (zh_ != nullptr) zookeeper_close(zh_);
  }
  ZkSession(const ZkSession&) = delete;
  ZkSession& operator=(const ZkSession&) = delete;

  zhandle_t* zh() const { return zh_; }

 private:
  ZkSession() = default;
  static void on_event(zhandle_t*, int type, int state, const char*, void* context) {
    if (type != ZOO_SESSION_EVENT) return;
    auto* self = static_cast<ZkSession*>(context);
    std::lock_guard lock(self->mu_);
    self->state_ = state;
    self->cv_.notify_all();
  }

  std::mutex mu_;  // guards state_
  std::condition_variable cv_;
  int state_ = 0;
  zhandle_t* zh_ = nullptr;
};

// Creates `path` with no data, unless it exists.
Status ensure_node(zhandle_t* zh, const std::string& path) {
  int rc = zoo_create(zh, path.c_str(), nullptr, -1, &ZOO_OPEN_ACL_UNSAFE, ZOO_PERSISTENT, nullptr, 0);
  if (rc != ZOK && rc != ZNODEEXISTS) return zk_error(rc, "create " + path);
  return Status::Ok();
}

// One registration's multi-op: creates of the parents of its index nodes that are not known to
// exist, then the item, then its index nodes. Owns every string and array the C client reads
// until the operation completes.
class ZkRegistration {
 public:
  ZkRegistration(uint64_t item, const std::string& events_parent) {
    ServiceItem it = bench_item(item);
    json_ = item_json(it);
    paths_ = item_paths(it);
    if (!events_parent.empty()) paths_.index.push_back(events_parent + "/" + it.service_id.to_string());
  }

  // (Re)builds the ops, leaving out the parents that `known` holds.
  void build(ZooKeeperSide::KnownParents& known) {
    nodes_.clear();
    for (const std::string& p : paths_.index) {
      std::string parent = parent_path(p);
      if (!known.contains(parent) && std::find(nodes_.begin(), nodes_.end(), parent) == nodes_.end()) {
        nodes_.push_back(parent);
      }
    }
    parents_ = nodes_.size();
    nodes_.push_back(paths_.item);
    nodes_.insert(nodes_.end(), paths_.index.begin(), paths_.index.end());
    ops_.assign(nodes_.size(), zoo_op_t{});
    results_.assign(nodes_.size(), zoo_op_result_t{});
    for (size_t i = 0; i < nodes_.size(); ++i) {
      bool is_item = i == parents_;
      zoo_create_op_init(&ops_[i], nodes_[i].c_str(), is_item ? json_.data() : nullptr,
                         is_item ? static_cast<int>(json_.size()) : -1, &ZOO_OPEN_ACL_UNSAFE, ZOO_PERSISTENT, nullptr,
                         0);
    }
  }

  // The parents this registration's multi creates (all of them exist once it has succeeded).
  std::vector<std::string> created_parents() const { return {nodes_.begin(), nodes_.begin() + parents_}; }

  // After a multi failed with ZNODEEXISTS: the parent that already existed, when that is what
  // failed (the first result that is neither ZOK nor the ZRUNTIMEINCONSISTENCY of the ops the
  // server did not try).
  std::optional<std::string> existing_parent() const {
    for (size_t i = 0; i < results_.size(); ++i) {
      int err = results_[i].err;
      if (err == ZOK || err == ZRUNTIMEINCONSISTENCY) continue;
      if (err == ZNODEEXISTS && i < parents_) return nodes_[i];
      return std::nullopt;
    }
    return std::nullopt;
  }

  int send(zhandle_t* zh, void_completion_t done, const void* context) {
    return zoo_amulti(zh, static_cast<int>(ops_.size()), ops_.data(), results_.data(), done, context);
  }

 private:
  std::string json_;
  ItemPaths paths_;
  std::vector<std::string> nodes_;
  size_t parents_ = 0;
  std::vector<zoo_op_t> ops_;
  std::vector<zoo_op_result_t> results_;
};

// One session's registrations, sent with zoo_amulti and completed in order (a session's requests
// are answered in order).
class ZkPipeline : public Pipeline {
 public:
  ZkPipeline(std::unique_ptr<ZkSession> session, std::shared_ptr<ZooKeeperSide::KnownParents> known,
             std::string events_parent)
      : session_(std::move(session)), known_(std::move(known)), events_parent_(std::move(events_parent)) {}
  ~ZkPipeline() override {
    while (in_flight() > 0) complete_one();
  }

  bool submit(uint64_t item) override {
    auto slot = std::make_unique<Slot>(this, item, events_parent_);
    slot->registration.build(*known_);
    Slot* raw = slot.get();
    {
      std::lock_guard lock(mu_);
      slots_.push_back(std::move(slot));
    }
    int rc = raw->registration.send(session_->zh(), &ZkPipeline::on_done, raw);
    if (rc != ZOK) {
      std::lock_guard lock(mu_);
      slots_.pop_back();
      return false;
    }
    return true;
  }

  bool complete_one() override {
    std::unique_ptr<Slot> oldest;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return slots_.front()->done; });
      oldest = std::move(slots_.front());
      slots_.pop_front();
    }
    return oldest->rc == ZOK;
  }

  size_t in_flight() const override {
    std::lock_guard lock(mu_);
    return slots_.size();
  }

 private:
  struct Slot {
    Slot(ZkPipeline* p, uint64_t item, const std::string& events_parent)
        : pipeline(p), registration(item, events_parent) {}
    ZkPipeline* pipeline;
    ZkRegistration registration;
    bool done = false;  // guarded by the pipeline's mu_
    int rc = ZOK;
  };

  // On the session's completion thread. The parents a multi made are remembered; a parent that
  // another registration made meanwhile fails the multi: it is remembered and the registration
  // sent again without it.
  static void on_done(int rc, const void* context) {
    auto* slot = static_cast<Slot*>(const_cast<void*>(context));
    ZkPipeline* self = slot->pipeline;
    if (rc == ZOK) {
      for (const std::string& parent : slot->registration.created_parents()) self->known_->add(parent);
    } else if (rc == ZNODEEXISTS) {
      if (std::optional<std::string> parent = slot->registration.existing_parent()) {
        self->known_->add(*parent);
        slot->registration.build(*self->known_);
        if (slot->registration.send(self->session_->zh(), &ZkPipeline::on_done, slot) == ZOK) return;
      }
    }
    {
      std::lock_guard lock(self->mu_);
      slot->rc = rc;
      slot->done = true;
    }
    self->cv_.notify_all();
  }

  std::unique_ptr<ZkSession> session_;  // first member: closed last, after the slots completed
  std::shared_ptr<ZooKeeperSide::KnownParents> known_;
  std::string events_parent_;
  mutable std::mutex mu_;  // guards slots_ and their done and rc
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Slot>> slots_;
};

// A session for lookups: list the children of an index node, read the item of the first.
class ZkReader {
 public:
  explicit ZkReader(std::unique_ptr<ZkSession> session) : session_(std::move(session)), buffer_(kItemBufferBytes) {}

  Result<std::string> first_item_under(std::string_view prefix) {
    std::string parent(prefix.substr(0, prefix.size() - 1));  // the prefix ends in '/'
    String_vector children{};
    int rc = zoo_get_children(session_->zh(), parent.c_str(), 0, &children);
    if (rc == ZNONODE) return not_found("zookeeper: no " + parent);
    if (rc != ZOK) return zk_error(rc, "get_children " + parent);
    if (children.count == 0) {
      deallocate_String_vector(&children);
      return not_found("zookeeper: nothing under " + parent);
    }
    std::string path = "/svc/" + std::string(children.data[0]);
    deallocate_String_vector(&children);
    int len = static_cast<int>(buffer_.size());
    rc = zoo_get(session_->zh(), path.c_str(), 0, buffer_.data(), &len, nullptr);
    if (rc != ZOK) return zk_error(rc, "get " + path);
    return std::string(buffer_.data(), static_cast<size_t>(std::max(len, 0)));
  }

 private:
  std::unique_ptr<ZkSession> session_;
  std::vector<char> buffer_;
};

// One session's lookups kept in flight with the asynchronous calls: zoo_aget_children of the index
// node, then, from its completion, zoo_aget of the first child's item. Completed in order of
// submission, each when its get has answered (or its listing failed).
class ZkLookupPipeline : public LookupPipeline {
 public:
  ZkLookupPipeline(std::unique_ptr<ZkSession> session, LookupKind kind) : session_(std::move(session)), kind_(kind) {}
  ~ZkLookupPipeline() override {
    while (in_flight() > 0) complete_one();
  }

  bool submit(const Query& q) override {
    auto slot = std::make_unique<Slot>();
    slot->pipeline = this;
    std::string prefix = index_prefix(kind_, q);
    slot->parent = prefix.substr(0, prefix.size() - 1);  // the prefix ends in '/'
    slot->mark = q.mark;
    Slot* raw = slot.get();
    {
      std::lock_guard lock(mu_);
      slots_.push_back(std::move(slot));
    }
    if (zoo_aget_children(session_->zh(), raw->parent.c_str(), 0, &ZkLookupPipeline::on_children, raw) != ZOK) {
      std::lock_guard lock(mu_);
      slots_.pop_back();
      return false;
    }
    return true;
  }

  bool complete_one() override {
    std::unique_ptr<Slot> oldest;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return slots_.front()->done; });
      oldest = std::move(slots_.front());
      slots_.pop_front();
    }
    return oldest->ok;
  }

  size_t in_flight() const override {
    std::lock_guard lock(mu_);
    return slots_.size();
  }

 private:
  struct Slot {
    ZkLookupPipeline* pipeline = nullptr;
    std::string parent;  // the index node listed
    std::string path;    // the item read: /svc/<first child>
    std::string mark;    // what the item must hold
    bool done = false;   // guarded by the pipeline's mu_
    bool ok = false;
  };

  // On the session's completion thread, as is on_item.
  static void on_children(int rc, const String_vector* children, const void* context) {
    auto* slot = static_cast<Slot*>(const_cast<void*>(context));
    if (rc == ZOK && children != nullptr && children->count > 0) {
      slot->path = "/svc/" + std::string(children->data[0]);
      if (zoo_aget(slot->pipeline->session_->zh(), slot->path.c_str(), 0, &ZkLookupPipeline::on_item, slot) == ZOK) {
        return;
      }
    }
    finish(slot, false);
  }

  static void on_item(int rc, const char* value, int len, const Stat*, const void* context) {
    auto* slot = static_cast<Slot*>(const_cast<void*>(context));
    bool ok = rc == ZOK && value != nullptr && len > 0 &&
              std::string_view(value, static_cast<size_t>(len)).find(slot->mark) != std::string_view::npos;
    finish(slot, ok);
  }

  static void finish(Slot* slot, bool ok) {
    ZkLookupPipeline* self = slot->pipeline;
    {
      std::lock_guard lock(self->mu_);
      slot->ok = ok;
      slot->done = true;
    }
    self->cv_.notify_all();
  }

  std::unique_ptr<ZkSession> session_;  // first member: closed last, after the slots completed
  LookupKind kind_;
  mutable std::mutex mu_;  // guards slots_ and their done and ok
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Slot>> slots_;
};

// A subscriber: a child watch on the fan-out's node. A watch fires once, without saying which
// child came, so after each event the subscriber lists the children again (which re-arms the
// watch) and takes those it has not seen; children added before it re-armed come in that listing.
class ZkChildWatcher {
 public:
  static Result<std::unique_ptr<ZkChildWatcher>> watch(const std::string& hosts, const std::string& path) {
    Result<std::unique_ptr<ZkSession>> s = ZkSession::open(hosts, kConnectTimeout);
    if (!s.ok()) return s.status();
    std::unique_ptr<ZkChildWatcher> w(new ZkChildWatcher(std::move(s).value(), path));
    std::vector<uint64_t> ignored;
    DJINN_RETURN_IF_ERROR(w->list(ignored));
    return w;
  }

  // Waits until `until` at most for the watch to fire, then lists.
  Status next(std::vector<uint64_t>& items, Clock::time_point until) {
    {
      std::unique_lock lock(mu_);
      if (!cv_.wait_until(lock, until, [&] { return fired_; })) return Status::Ok();
      fired_ = false;
    }
    return list(items);
  }

  ~ZkChildWatcher() { session_.reset(); }  // no watch callback after this

 private:
  ZkChildWatcher(std::unique_ptr<ZkSession> session, std::string path)
      : session_(std::move(session)), path_(std::move(path)) {}

  Status list(std::vector<uint64_t>& items) {
    String_vector children{};
    int rc = zoo_wget_children(session_->zh(), path_.c_str(), &ZkChildWatcher::on_watch, this, &children);
    if (rc != ZOK) return zk_error(rc, "wget_children " + path_);
    for (int32_t i = 0; i < children.count; ++i) {
      std::optional<uint64_t> n = item_number(std::string_view(children.data[i]));
      if (n && seen_.insert(*n).second) items.push_back(*n);
    }
    deallocate_String_vector(&children);
    return Status::Ok();
  }

  static void on_watch(zhandle_t*, int type, int, const char*, void* context) {
    if (type != ZOO_CHILD_EVENT) return;
    auto* self = static_cast<ZkChildWatcher*>(context);
    std::lock_guard lock(self->mu_);
    self->fired_ = true;
    self->cv_.notify_all();
  }

  std::unique_ptr<ZkSession> session_;
  std::string path_;
  std::unordered_set<uint64_t> seen_;  // used by the subscriber's thread only
  std::mutex mu_;                      // guards fired_
  std::condition_variable cv_;
  bool fired_ = false;
};

}  // namespace

Result<std::unique_ptr<ZooKeeperServer>> ZooKeeperServer::start(const std::string& java, const std::string& jar_dir) {
  const std::string jar = jar_dir + "/zookeeper.jar";
  if (::access(java.c_str(), X_OK) != 0) return not_found(java + " not found (install openjdk-17-jre-headless)");
  if (::access(jar.c_str(), R_OK) != 0) return not_found(jar + " not found (install zookeeper)");
  Result<bench::TempDir> dir = bench::TempDir::create("djinn-bench-zookeeper-");
  if (!dir.ok()) return dir.status();
  std::unique_ptr<ZooKeeperServer> server(new ZooKeeperServer(std::move(dir).value()));
  Result<uint16_t> port = bench::free_loopback_port();
  if (!port.ok()) return port.status();
  server->port_ = *port;

  const std::string cfg_path = server->dir() + "/zoo.cfg";
  {
    std::ofstream cfg(cfg_path);
    cfg << "tickTime=2000\n"
        << "dataDir=" << server->dir() << "/data\n"
        << "clientPort=" << *port << "\n"
        << "clientPortAddress=127.0.0.1\n"
        << "forceSync=yes\n"
        << "admin.enableServer=false\n"
        << "4lw.commands.whitelist=\n"
        // The fan-out opens 100 sessions and more from this one address; the default allows 60.
        << "maxClientCnxns=0\n";
    if (!cfg) return unavailable("cannot write " + cfg_path);
  }
  // zookeeper.jar's manifest names the other jars it needs; slf4j-simple, when present, makes its
  // warnings and errors reach its log (without a binding, slf4j drops them).
  std::string classpath = jar;
  if (::access((jar_dir + "/slf4j-simple.jar").c_str(), R_OK) == 0) classpath += ":" + jar_dir + "/slf4j-simple.jar";

  // The C client logs connection attempts that fail while the server starts; its log is
  // process-wide and goes to a file here rather than to stderr.
  server->client_log_ = std::fopen((server->dir() + "/client.log").c_str(), "w");
  if (server->client_log_ != nullptr) zoo_set_log_stream(server->client_log_);
  zoo_set_debug_level(ZOO_LOG_LEVEL_WARN);

  const std::string hosts = server->hosts();
  Status st = server->launch({java, "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-cp", classpath,
                              "org.apache.zookeeper.server.ZooKeeperServerMain", cfg_path},
                             "zookeeper.log", kStartTimeout,
                             [&] { return ZkSession::open(hosts, kProbeTimeout).ok(); }, "zookeeper");
  if (!st.ok()) return st;
  server->set_version(zookeeper_version(jar_dir));
  return server;
}

ZooKeeperServer::~ZooKeeperServer() {
  if (client_log_ != nullptr) {
    zoo_set_log_stream(nullptr);  // back to stderr
    std::fclose(client_log_);
  }
}

Result<std::unique_ptr<ZooKeeperSide>> ZooKeeperSide::create(const ZooKeeperServer& server) {
  std::unique_ptr<ZooKeeperSide> side(new ZooKeeperSide(server.hosts(), server.pid()));
  Result<std::unique_ptr<ZkSession>> s = ZkSession::open(side->hosts_, kConnectTimeout);
  if (!s.ok()) return s.status();
  std::vector<std::string> fixed = {"/svc", "/type", "/attr", "/events", parent_path(type_prefix(kServiceType))};
  for (int k = 0; k < kKinds; ++k) fixed.push_back(parent_path(type_prefix(kind_type(k))));
  fixed.push_back("/attr/" + std::string(kNameType));
  fixed.push_back("/attr/" + std::string(kLocationType));
  for (const std::string& path : fixed) {
    DJINN_RETURN_IF_ERROR(ensure_node((*s)->zh(), path));
    side->known_->add(path);
  }
  return side;
}

std::shared_ptr<Pipeline> ZooKeeperSide::registration_session(const std::string& events_parent) {
  Result<std::unique_ptr<ZkSession>> s = ZkSession::open(hosts_, kConnectTimeout);
  if (!s.ok()) {
    log_setup_failure(s.status());
    return nullptr;
  }
  return std::make_shared<ZkPipeline>(std::move(s).value(), known_, events_parent);
}

LoadSample ZooKeeperSide::load(uint64_t count) {
  ItemCounter items(0, count);
  return run_load(
      kLoadClients, count,
      [&](int) -> Worker {
        std::shared_ptr<Pipeline> p = registration_session();
        return p ? pipelined(p, items, kLoadInFlight) : Worker{};
      },
      "zookeeper");
}

ThroughputSample ZooKeeperSide::registrations(ItemCounter& items, int clients, int in_flight, const Plan& plan) {
  return run_clients(clients, plan, [&](int) -> Worker {
    std::shared_ptr<Pipeline> p = registration_session();
    return p ? pipelined(p, items, static_cast<size_t>(in_flight)) : Worker{};
  });
}

ThroughputSample ZooKeeperSide::lookups(LookupKind kind, uint64_t loaded, int clients, int in_flight,
                                        const Plan& plan) {
  return run_clients(clients, plan, [&, kind, loaded](int i) -> Worker {
    Result<std::unique_ptr<ZkSession>> s = ZkSession::open(hosts_, kConnectTimeout);
    if (!s.ok()) {
      log_setup_failure(s.status());
      return {};
    }
    auto queries = std::make_shared<QueryStream>(kind, loaded, i);
    if (in_flight > 1) {
      return pipelined_lookups(std::make_shared<ZkLookupPipeline>(std::move(s).value(), kind), queries,
                               static_cast<size_t>(in_flight));
    }
    auto reader = std::make_shared<ZkReader>(std::move(s).value());
    return [reader, queries, kind]() {
      const Query& q = queries->next();
      Result<std::string> item = reader->first_item_under(index_prefix(kind, q));
      return Step::one(item.ok() && item->find(q.mark) != std::string::npos);
    };
  });
}

FanoutSample ZooKeeperSide::fanout(const FanoutRun& run, ItemCounter& items, const Plan& plan) {
  // Each round watches a node of its own, so no subscriber lists the children of earlier rounds.
  const std::string events_parent = "/events/r" + std::to_string(fanout_rounds_++);
  {
    Result<std::unique_ptr<ZkSession>> s = ZkSession::open(hosts_, kConnectTimeout);
    Status st = s.ok() ? ensure_node((*s)->zh(), events_parent) : s.status();
    if (!st.ok()) {
      log_setup_failure(st);
      FanoutSample failed;
      failed.failed = 1;
      return failed;
    }
    known_->add(events_parent);
  }
  auto subscriber = [&](int) -> Subscriber {
    Result<std::unique_ptr<ZkChildWatcher>> w = ZkChildWatcher::watch(hosts_, events_parent);
    if (!w.ok()) {
      log_setup_failure(w.status());
      return {};
    }
    std::shared_ptr<ZkChildWatcher> watcher = std::move(w).value();
    return [watcher](std::vector<uint64_t>& got, Clock::time_point until) { return watcher->next(got, until).ok(); };
  };
  auto registrar = [&](int) -> Registrar {
    std::shared_ptr<Pipeline> p = registration_session(events_parent);
    if (!p) return {};
    return [p](uint64_t n) { return p->submit(n) && p->complete_one(); };
  };
  return run_fanout(run, plan, items, subscriber, registrar);
}

#else  // !DJINN_BENCH_HAVE_ZOOKEEPER

bool zookeeper_client_built() { return false; }

Result<std::unique_ptr<ZooKeeperServer>> ZooKeeperServer::start(const std::string&, const std::string&) {
  return unavailable("bench-lookup was built without ZooKeeper's C client (install libzookeeper-mt-dev)");
}
ZooKeeperServer::~ZooKeeperServer() = default;
Result<std::unique_ptr<ZooKeeperSide>> ZooKeeperSide::create(const ZooKeeperServer&) {
  return unavailable("bench-lookup was built without ZooKeeper's C client");
}
std::shared_ptr<Pipeline> ZooKeeperSide::registration_session(const std::string&) { return nullptr; }
LoadSample ZooKeeperSide::load(uint64_t) { return LoadSample::not_measured(); }
ThroughputSample ZooKeeperSide::registrations(ItemCounter&, int, int, const Plan&) {
  return ThroughputSample::not_measured();
}
ThroughputSample ZooKeeperSide::lookups(LookupKind, uint64_t, int, int, const Plan&) {
  return ThroughputSample::not_measured();
}
FanoutSample ZooKeeperSide::fanout(const FanoutRun&, ItemCounter&, const Plan&) { return FanoutSample::not_measured(); }

#endif

ZooKeeperSide::ZooKeeperSide(std::string hosts, pid_t pid)
    : hosts_(std::move(hosts)), pid_(pid), known_(std::make_shared<KnownParents>()) {}

}  // namespace djinn::lookup_bench
