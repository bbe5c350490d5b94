// Processes inside the hosts of a LAN lab (tests/lab/lab.sh), for the lab tests and
// bench-discovery: started with nsenter into a host's network and mount namespaces, stdout read
// line by line, stdin writable, stopped by pid.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace djinn::lab {

// The lab named by $DJINN_LAB (the state directory lab.sh prints); absent outside a lab run.
class Lab {
 public:
  static std::optional<Lab> from_env();
  std::string address(int host) const;  // 10.77.0.N
  int holder_pid(int host) const;
  const std::string& state() const { return state_; }

 private:
  std::string state_;
};

class HostProcess {
 public:
  HostProcess(const Lab& lab, int host, const std::string& program, const std::vector<std::string>& args);
  ~HostProcess();  // SIGKILL and reap, if still running
  HostProcess(const HostProcess&) = delete;
  HostProcess& operator=(const HostProcess&) = delete;

  int pid() const { return pid_; }
  void kill9();
  // SIGTERM, then SIGKILL after `grace`; returns the wait status.
  int stop(std::chrono::milliseconds grace = std::chrono::milliseconds(5000));
  void send_line(const std::string& line);

  // The first line (from index `from` on) for which `match` holds, waiting up to `timeout`.
  std::optional<std::string> wait_line(const std::function<bool(const std::string&)>& match, std::chrono::milliseconds timeout,
                                       size_t from = 0);
  // Lines "<ms> WORD REST": the first whose text after the time starts with `prefix`.
  std::optional<std::string> wait_for(const std::string& prefix, std::chrono::milliseconds timeout, size_t from = 0);
  std::vector<std::string> lines() const;
  size_t line_count() const;

 private:
  void read_loop(int fd);

  int pid_ = -1;
  bool reaped_ = false;
  int stdin_fd_ = -1;
  std::thread reader_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> lines_;
};

// The monotonic time at the head of an agent's line, and its text after the time.
int64_t line_time(const std::string& line);
std::string line_text(const std::string& line);
int64_t monotonic_ms();

}  // namespace djinn::lab
