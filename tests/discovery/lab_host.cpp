// Lab hosts as the lab tests and bench-discovery see them: nsenter into a host, read its lines.
#include "lab_host.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <stdexcept>

namespace djinn::lab {

std::optional<Lab> Lab::from_env() {
  const char* s = std::getenv("DJINN_LAB");
  if (!s || !*s) return std::nullopt;
  Lab lab;
  lab.state_ = s;
  return lab;
}

namespace {
std::string read_first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  if (line.empty()) throw std::runtime_error("lab: cannot read " + path);
  return line;
}
}  // namespace

std::string Lab::address(int host) const { return read_first_line(state_ + "/h" + std::to_string(host) + ".addr"); }
int Lab::holder_pid(int host) const { return std::stoi(read_first_line(state_ + "/h" + std::to_string(host) + ".pid")); }

HostProcess::HostProcess(const Lab& lab, int host, const std::string& program, const std::vector<std::string>& args) {
  std::string target = std::to_string(lab.holder_pid(host));
  std::vector<std::string> argv{"nsenter", "-t", target, "-m", "-n", "--", program};
  argv.insert(argv.end(), args.begin(), args.end());
  int out[2], in[2];
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(in, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
  pid_ = fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    dup2(out[1], 1);
    dup2(in[0], 0);
    std::vector<char*> a;
    for (auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    // nsenter without --fork execs the program: this pid is the program's.
    execv("/usr/bin/nsenter", a.data());
    _exit(127);
  }
  close(out[1]);
  close(in[0]);
  stdin_fd_ = in[1];
  reader_ = std::thread([this, fd = out[0]] { read_loop(fd); });
}

HostProcess::~HostProcess() {
  kill9();
  if (stdin_fd_ >= 0) close(stdin_fd_);
  if (reader_.joinable()) reader_.join();
}

void HostProcess::read_loop(int fd) {
  std::string partial;
  char buf[4096];
  while (true) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) break;
    partial.append(buf, static_cast<size_t>(n));
    size_t nl;
    while ((nl = partial.find('\n')) != std::string::npos) {
      std::lock_guard lock(mu_);
      lines_.push_back(partial.substr(0, nl));
      partial.erase(0, nl + 1);
      cv_.notify_all();
    }
  }
  close(fd);
}

void HostProcess::kill9() {
  if (reaped_ || pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  int status;
  waitpid(pid_, &status, 0);
  reaped_ = true;
}

int HostProcess::stop(std::chrono::milliseconds grace) {
  if (reaped_) return 0;
  ::kill(pid_, SIGTERM);
  auto until = std::chrono::steady_clock::now() + grace;
  int status = 0;
  while (std::chrono::steady_clock::now() < until) {
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      reaped_ = true;
      return status;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  kill9();
  return -1;
}

void HostProcess::send_line(const std::string& line) {
  std::string s = line + "\n";
  [[maybe_unused]] ssize_t n = write(stdin_fd_, s.data(), s.size());
}

std::optional<std::string> HostProcess::wait_line(const std::function<bool(const std::string&)>& match,
                                                  std::chrono::milliseconds timeout, size_t from) {
  std::unique_lock lock(mu_);
  auto until = std::chrono::steady_clock::now() + timeout;
  size_t next = from;
  while (true) {
    for (; next < lines_.size(); ++next) {
      if (match(lines_[next])) return lines_[next];
    }
    if (cv_.wait_until(lock, until) == std::cv_status::timeout) {
      for (; next < lines_.size(); ++next) {
        if (match(lines_[next])) return lines_[next];
      }
      return std::nullopt;
    }
  }
}

std::optional<std::string> HostProcess::wait_for(const std::string& prefix, std::chrono::milliseconds timeout, size_t from) {
  return wait_line([&](const std::string& l) { return line_text(l).rfind(prefix, 0) == 0; }, timeout, from);
}

std::vector<std::string> HostProcess::lines() const {
  std::lock_guard lock(mu_);
  return lines_;
}

size_t HostProcess::line_count() const {
  std::lock_guard lock(mu_);
  return lines_.size();
}

int64_t line_time(const std::string& line) {
  try {
    return std::stoll(line.substr(0, line.find(' ')));
  } catch (...) {
    return -1;
  }
}

std::string line_text(const std::string& line) {
  size_t sp = line.find(' ');
  return sp == std::string::npos ? line : line.substr(sp + 1);
}

int64_t monotonic_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace djinn::lab
