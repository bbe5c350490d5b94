// The ZooKeeper side of bench-lookup: one standalone ZooKeeper (Debian's jars) started for the run
// with a temporary zoo.cfg, and the records of records.h as znodes, driven by ZooKeeper's C client
// (libzookeeper_mt): a registration is one multi-op, a lookup a child listing and a read, and
// subscribers hold child watches, re-armed after each event since they fire once.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "djinn/core/status.h"
#include "peer_process.h"
#include "side.h"

namespace djinn::lookup_bench {

inline constexpr const char* kJavaPath = "/usr/bin/java";
inline constexpr const char* kZooKeeperJarDir = "/usr/share/java";

// Whether this build has ZooKeeper's C client (libzookeeper-mt-dev); without it the side cannot
// run and its figures are null.
bool zookeeper_client_built();

class ZooKeeperServer : public bench::PeerServer {
 public:
  // Starts org.apache.zookeeper.server.ZooKeeperServerMain with `java` and `jar_dir`/zookeeper.jar
  // (whose manifest names the jars it needs), standalone, on a free port of 127.0.0.1, with its
  // data dir in a temporary directory, transaction log fsync'd (forceSync=yes, the default), the
  // admin server and the four-letter words off, no limit on connections per address. Waits until
  // a session can be opened.
  static Result<std::unique_ptr<ZooKeeperServer>> start(const std::string& java, const std::string& jar_dir);

  uint16_t port() const { return port_; }
  // The C client's connect string: "127.0.0.1:<port>".
  std::string hosts() const { return "127.0.0.1:" + std::to_string(port_); }
  ~ZooKeeperServer();

 private:
  explicit ZooKeeperServer(bench::TempDir dir) : PeerServer(std::move(dir)) {}
  uint16_t port_ = 0;
  // The C client's log, which is process-wide: a file beside the server's log rather than stderr,
  // where progress goes. Open while the server is.
  std::FILE* client_log_ = nullptr;
};

class ZooKeeperSide : public Side {
 public:
  // Creates the layout's fixed nodes (/svc, /type/<interface> for every interface of the bench,
  // /attr/<entry type>, /events).
  static Result<std::unique_ptr<ZooKeeperSide>> create(const ZooKeeperServer& server);

  std::string name() const override { return "zookeeper"; }
  pid_t server_pid() const override { return pid_; }
  LoadSample load(uint64_t count) override;
  ThroughputSample registrations(ItemCounter& items, int clients, int in_flight, const Plan& plan) override;
  ThroughputSample lookups(LookupKind kind, uint64_t loaded, int clients, int in_flight, const Plan& plan) override;
  FanoutSample fanout(const FanoutRun& run, ItemCounter& items, const Plan& plan) override;

  // The parent nodes known to exist, shared by the side's clients: a registration creates, in its
  // own multi-op, the parents of its index nodes that are not known yet.
  struct KnownParents;

 private:
  ZooKeeperSide(std::string hosts, pid_t pid);
  // A session of its own for one client's registrations (nullptr, logged, when it cannot be
  // opened). With `events_parent`, each registration also creates <events_parent>/<sid>: the node
  // the fan-out's subscribers watch.
  std::shared_ptr<Pipeline> registration_session(const std::string& events_parent = "");

  std::string hosts_;
  pid_t pid_;
  std::shared_ptr<KnownParents> known_;
  int fanout_rounds_ = 0;
};

}  // namespace djinn::lookup_bench
