#include "support/test_support.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <thread>

#include "djinn/core/sqlite.h"

namespace djinn::test {
namespace {
uint64_t g_seed = 0;
std::mt19937_64 g_rng;
}  // namespace

void init_seed() {
  if (const char* s = std::getenv("DJINN_TEST_SEED")) {
    g_seed = std::strtoull(s, nullptr, 10);
  } else {
    g_seed = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  }
  g_rng.seed(g_seed);
  std::fprintf(stderr, "test seed: %llu (replay with DJINN_TEST_SEED=%llu)\n",
               static_cast<unsigned long long>(g_seed), static_cast<unsigned long long>(g_seed));
}

uint64_t seed() { return g_seed; }
std::mt19937_64& rng() { return g_rng; }

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "djinn-test-XXXXXX").string();
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

ChildProcess::ChildProcess(const std::string& program, const std::vector<std::string>& args,
                           const std::vector<std::string>& extra_env) {
  pid_ = fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    for (const auto& kv : extra_env) putenv(const_cast<char*>(kv.c_str()));
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(program.c_str()));
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(program.c_str(), argv.data());
    std::perror("execv");
    _exit(127);
  }
}

ChildProcess::~ChildProcess() {
  if (!reaped_) kill9();
}

int ChildProcess::kill9() {
  if (reaped_) return status_;
  ::kill(pid_, SIGKILL);
  waitpid(pid_, &status_, 0);
  reaped_ = true;
  return status_;
}

int ChildProcess::wait(int timeout_ms) {
  if (reaped_) return status_;
  auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < until) {
    int r = waitpid(pid_, &status_, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      return status_;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return -1;
}

bool ChildProcess::running() {
  if (reaped_) return false;
  int r = waitpid(pid_, &status_, WNOHANG);
  if (r == pid_) reaped_ = true;
  return !reaped_;
}

int free_tcp_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    throw std::runtime_error("bind to a free port failed");
  }
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

bool eventually(const std::function<bool()>& pred, int timeout_ms) {
  auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

std::string build_path(const std::string& relative) {
  const char* dir = std::getenv("DJINN_BUILD_DIR");
  std::string base = dir ? dir : ".";
  return base + "/" + relative;
}

std::vector<std::string> args_with(const std::vector<std::string>& base, const std::vector<std::string>& extra) {
  std::vector<std::string> out = base;
  out.insert(out.end(), extra.begin(), extra.end());
  return out;
}

std::vector<std::vector<std::string>> shared_refusals(const std::vector<std::string>& base, const TempDir& dir) {
  return {base,
          args_with(base, {"--keyring", dir.file("none")}),
          args_with(base, {"--insecure", "--plaintext-role", "root"}),
          args_with(base, {"--insecure", "--default-lease", "1h", "--max-lease", "1m"})};
}

int exit_code_of(const std::string& relative_program, const std::vector<std::string>& args) {
  ChildProcess p(build_path(relative_program), args);
  int status = p.wait(10000);
  if (status == -1 || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

InterruptingSignal::InterruptingSignal(int signal) : signal_(signal) {
  struct sigaction ignore {};
  ignore.sa_handler = [](int) {};
  sigemptyset(&ignore.sa_mask);
  if (sigaction(signal_, &ignore, &before_) != 0) throw std::runtime_error("sigaction failed");
}

InterruptingSignal::~InterruptingSignal() { sigaction(signal_, &before_, nullptr); }

std::string run_sql(const std::string& path, const std::vector<std::string>& statements) {
  Result<sqlite::Database> db = sqlite::Database::open(path);
  if (!db.ok()) return db.status().to_string();
  for (const std::string& sql : statements) {
    if (Status st = db->exec(sql); !st.ok()) return st.to_string();
  }
  return "";
}

}  // namespace djinn::test
