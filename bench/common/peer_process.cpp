// Temporary directories, child processes and free loopback ports for the benchmarks' peers.
#include "peer_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "bench_tcp.h"

namespace djinn::bench {

namespace {

// How long a peer gets to exit after SIGTERM before SIGKILL.
constexpr auto kStopGrace = std::chrono::seconds(5);

std::string errno_text() { return std::strerror(errno); }

}  // namespace

djinn::Result<TempDir> TempDir::create(const std::string& prefix) {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/" + prefix + "XXXXXX";
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) {
    return unavailable("cannot create a directory " + pattern + ": " + errno_text());
  }
  return TempDir(std::string(buf.data()));
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

djinn::Result<std::unique_ptr<PeerProcess>> PeerProcess::spawn(const std::vector<std::string>& argv,
                                                               const std::string& log_path) {
  if (argv.empty()) return invalid_argument("no program to start");
  // Everything the child needs is prepared before fork: between fork and exec only
  // async-signal-safe calls are allowed, since other threads may hold locks.
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log_fd < 0) return unavailable("cannot open " + log_path + ": " + errno_text());
  int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(log_fd);
    if (null_fd >= 0) ::close(null_fd);
    return unavailable("fork: " + errno_text());
  }
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);  // the parent died before prctl took effect
    if (null_fd >= 0) ::dup2(null_fd, 0);
    ::dup2(log_fd, 1);
    ::dup2(log_fd, 2);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(log_fd);
  if (null_fd >= 0) ::close(null_fd);
  return std::unique_ptr<PeerProcess>(new PeerProcess(pid));
}

bool PeerProcess::running() {
  if (reaped_) return false;
  int status = 0;
  pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) reaped_ = true;
  return !reaped_;
}

PeerProcess::~PeerProcess() {
  if (!running()) return;
  ::kill(pid_, SIGTERM);
  auto give_up = std::chrono::steady_clock::now() + kStopGrace;
  while (running() && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (running()) {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    reaped_ = true;
  }
}

Status PeerServer::launch(const std::vector<std::string>& argv, const std::string& log_name,
                          std::chrono::milliseconds timeout, const std::function<bool()>& ready,
                          const std::string& what) {
  std::string log_path = dir() + "/" + log_name;
  djinn::Result<std::unique_ptr<PeerProcess>> process = PeerProcess::spawn(argv, log_path);
  if (!process.ok()) return process.status();
  process_ = std::move(process).value();
  Status st = wait_until_ready(*process_, timeout, ready, what);
  if (!st.ok()) return Status(st.code(), st.message() + "; its log ends: " + tail_of_file(log_path));
  return Status::Ok();
}

djinn::Result<uint16_t> free_loopback_port() {
  uint16_t port = 0;
  int fd = bind_loopback(port);
  if (fd < 0) return unavailable("cannot find a free port on 127.0.0.1: " + errno_text());
  ::close(fd);
  return port;
}

Status wait_until_ready(PeerProcess& process, std::chrono::milliseconds timeout, const std::function<bool()>& ready,
                        const std::string& what) {
  auto give_up = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < give_up) {
    if (!process.running()) return unavailable(what + " exited during start-up");
    if (ready()) return Status::Ok();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return deadline_exceeded(what + " did not answer within " + std::to_string(timeout.count()) + " ms");
}

std::string tail_of_file(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  return text.size() > max_bytes ? text.substr(text.size() - max_bytes) : text;
}

PausedPeers::PausedPeers(const std::vector<pid_t>& pids, pid_t keep) {
  for (pid_t pid : pids) {
    if (pid > 0 && pid != keep && ::kill(pid, SIGSTOP) == 0) paused_.push_back(pid);
  }
}

PausedPeers::~PausedPeers() {
  for (pid_t pid : paused_) ::kill(pid, SIGCONT);
}

}  // namespace djinn::bench
