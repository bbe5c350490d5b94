// A djinn daemon (djinn-space, djinn-lease, ...) measured as users run it: its own process, started
// for the run on free loopback ports, stopped by its pid when the object goes away.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "djinn/core/status.h"
#include "peer_process.h"

namespace djinn::bench {

class DjinnDaemon {
 public:
  // Runs `binary` with `args` plus --listen and --events on free ports of 127.0.0.1, --insecure
  // and --log-level warn, its output in `log_path`; ready once `ready(rpc endpoint)` returns true,
  // within `timeout`. A failure quotes the end of the log.
  static djinn::Result<std::unique_ptr<DjinnDaemon>> start(const std::string& binary,
                                                           const std::vector<std::string>& args,
                                                           const std::string& log_path,
                                                           std::chrono::milliseconds timeout,
                                                           const std::function<bool(const std::string&)>& ready);

  const std::string& rpc_endpoint() const { return rpc_endpoint_; }
  pid_t pid() const { return process_->pid(); }
  // The daemon's resident set (/proc/PID/statm), or 0 when it cannot be read.
  size_t resident_bytes() const;

 private:
  DjinnDaemon(std::unique_ptr<PeerProcess> process, std::string rpc_endpoint)
      : process_(std::move(process)), rpc_endpoint_(std::move(rpc_endpoint)) {}
  std::unique_ptr<PeerProcess> process_;
  std::string rpc_endpoint_;
};

}  // namespace djinn::bench
