#include "djinn_daemon.h"

#include <unistd.h>

#include <fstream>

namespace djinn::bench {

djinn::Result<std::unique_ptr<DjinnDaemon>> DjinnDaemon::start(const std::string& binary,
                                                               const std::vector<std::string>& args,
                                                               const std::string& log_path,
                                                               std::chrono::milliseconds timeout,
                                                               const std::function<bool(const std::string&)>& ready) {
  djinn::Result<uint16_t> rpc_port = free_loopback_port();
  if (!rpc_port.ok()) return rpc_port.status();
  djinn::Result<uint16_t> events_port = free_loopback_port();
  for (int tries = 0; events_port.ok() && *events_port == *rpc_port && tries < 10; ++tries) {
    events_port = free_loopback_port();  // the same port twice: ask again
  }
  if (!events_port.ok()) return events_port.status();
  std::string endpoint = "tcp://127.0.0.1:" + std::to_string(*rpc_port);
  std::vector<std::string> argv{binary};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.insert(argv.end(), {"--listen", endpoint, "--events", "tcp://127.0.0.1:" + std::to_string(*events_port),
                           "--insecure", "--log-level", "warn"});
  djinn::Result<std::unique_ptr<PeerProcess>> process = PeerProcess::spawn(argv, log_path);
  if (!process.ok()) return process.status();
  std::unique_ptr<DjinnDaemon> d(new DjinnDaemon(std::move(process).value(), endpoint));
  Status st = wait_until_ready(*d->process_, timeout, [&] { return ready(endpoint); }, binary);
  if (!st.ok()) return Status(st.code(), st.message() + "; its log ends: " + tail_of_file(log_path));
  return d;
}

size_t DjinnDaemon::resident_bytes() const {
  std::ifstream statm("/proc/" + std::to_string(process_->pid()) + "/statm");
  size_t pages_total = 0, pages_resident = 0;
  if (!(statm >> pages_total >> pages_resident)) return 0;
  return pages_resident * static_cast<size_t>(::sysconf(_SC_PAGESIZE));
}

}  // namespace djinn::bench
