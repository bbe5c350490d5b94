// Shared helpers for tests: the seeded generator, temporary directories, child processes.
#pragma once

#include <signal.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace djinn::test {

// One seeded generator per test process. The seed comes from DJINN_TEST_SEED when set, else from
// the clock; it is printed at start so a failing run can be replayed with the same seed.
void init_seed();
uint64_t seed();
std::mt19937_64& rng();

// Runs SQL on the SQLite file at `path`, as a test does to make a store look as an earlier release
// left it: empty when every statement ran, else the first failure.
std::string run_sql(const std::string& path, const std::vector<std::string>& statements);

// A fresh directory under the system temp dir, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// A child process started with fork/exec, killed (SIGKILL) and reaped on destruction.
class ChildProcess {
 public:
  ChildProcess(const std::string& program, const std::vector<std::string>& args,
               const std::vector<std::string>& extra_env = {});
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  int pid() const { return pid_; }
  // Sends SIGKILL and reaps; returns the wait status.
  int kill9();
  // Waits for exit up to timeout_ms; returns the wait status or -1 on timeout.
  int wait(int timeout_ms);
  bool running();

 private:
  int pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
};

// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close).
int free_tcp_port();

// Polls `pred` every millisecond until it holds or `timeout_ms` passes; returns whether it held.
bool eventually(const std::function<bool()>& pred, int timeout_ms = 5000);

// Path of a program built in this build tree (DJINN_BUILD_DIR is set by ctest).
std::string build_path(const std::string& relative);

// Runs a program of this build tree (build_path) to its end, up to 10 s: its exit code, or -1 when
// it did not exit by itself in time.
int exit_code_of(const std::string& relative_program, const std::vector<std::string>& args);

// A daemon's command line: `base` with `extra` after it.
std::vector<std::string> args_with(const std::vector<std::string>& base, const std::vector<std::string>& extra);
// Command lines every daemon that holds leases refuses the same way (core's daemon flags, lease
// policy flags), each with exit code 2: `base` alone (neither CURVE nor --insecure), a keyring
// that does not exist, an unknown --plaintext-role, a default lease above the maximum.
std::vector<std::vector<std::string>> shared_refusals(const std::vector<std::string>& base, const TempDir& dir);

// While alive, `signal` has a handler that does nothing, installed without SA_RESTART (as a timer
// or a child watcher installs one): a blocking system call of a thread it lands on returns EINTR.
// The handler before it comes back on destruction.
class InterruptingSignal {
 public:
  explicit InterruptingSignal(int signal);
  ~InterruptingSignal();
  InterruptingSignal(const InterruptingSignal&) = delete;
  InterruptingSignal& operator=(const InterruptingSignal&) = delete;

 private:
  int signal_;
  struct sigaction before_ {};
};

}  // namespace djinn::test
