// Running a peer server (etcd, Redis, ZooKeeper) for the length of a benchmark: a temporary directory, a
// child process started in it and stopped by its pid, and free ports on 127.0.0.1. Everything is
// undone by destructors, so an error path leaves no process and no data behind.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "djinn/core/status.h"

namespace djinn::bench {

// Here and in the other peer headers djinn::Result is spelled in full, since bench::Result is a
// figure of the report (bench_json.h).

// A directory under $TMPDIR (or /tmp), removed with its contents on destruction.
class TempDir {
 public:
  static djinn::Result<TempDir> create(const std::string& prefix);
  TempDir(TempDir&& other) noexcept : path_(std::move(other.path_)) { other.path_.clear(); }
  TempDir& operator=(TempDir&&) = delete;
  TempDir(const TempDir&) = delete;
  ~TempDir();

  const std::string& path() const { return path_; }

 private:
  explicit TempDir(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// A child process. It is sent SIGKILL by the kernel if this process dies first (so a crashed
// benchmark leaves no server behind), and SIGTERM, then SIGKILL after a grace period, when the
// object goes away.
class PeerProcess {
 public:
  // argv[0] is the executable's path; stdout and stderr go to `log_path`.
  static djinn::Result<std::unique_ptr<PeerProcess>> spawn(const std::vector<std::string>& argv,
                                                           const std::string& log_path);
  ~PeerProcess();
  PeerProcess(const PeerProcess&) = delete;
  PeerProcess& operator=(const PeerProcess&) = delete;

  pid_t pid() const { return pid_; }
  // False once the child has exited (it is reaped here).
  bool running();

 private:
  explicit PeerProcess(pid_t pid) : pid_(pid) {}
  pid_t pid_;
  bool reaped_ = false;
};

// What every peer server holds: its temporary directory and its process, started in that
// directory.
class PeerServer {
 public:
  PeerServer(const PeerServer&) = delete;
  PeerServer& operator=(const PeerServer&) = delete;

  const std::string& version() const { return version_; }
  pid_t pid() const { return process_ ? process_->pid() : 0; }

 protected:
  explicit PeerServer(TempDir dir) : dir_(std::move(dir)) {}
  const std::string& dir() const { return dir_.path(); }
  void set_version(std::string version) { version_ = std::move(version); }
  // Spawns `argv` with its output in dir()/`log_name`, then waits up to `timeout` for `ready`; a
  // failure to start quotes the end of that log.
  Status launch(const std::vector<std::string>& argv, const std::string& log_name, std::chrono::milliseconds timeout,
                const std::function<bool()>& ready, const std::string& what);

 private:
  TempDir dir_;  // declared first: the process stops before its directory is removed
  std::unique_ptr<PeerProcess> process_;
  std::string version_;
};

// Pauses the peer processes in `pids` other than `keep` (SIGSTOP) for its lifetime, then lets
// them go on (SIGCONT).
class PausedPeers {
 public:
  PausedPeers(const std::vector<pid_t>& pids, pid_t keep);
  ~PausedPeers();
  PausedPeers(const PausedPeers&) = delete;
  PausedPeers& operator=(const PausedPeers&) = delete;

 private:
  std::vector<pid_t> paused_;
};

// A port on 127.0.0.1 that was free a moment ago (bound to port 0, read back, closed).
djinn::Result<uint16_t> free_loopback_port();

// Calls `ready` until it returns true, the process exits, or `timeout` passes.
Status wait_until_ready(PeerProcess& process, std::chrono::milliseconds timeout, const std::function<bool()>& ready,
                        const std::string& what);

// The last `max_bytes` of a file, for error messages that quote a peer's log.
std::string tail_of_file(const std::string& path, size_t max_bytes = 600);

}  // namespace djinn::bench
