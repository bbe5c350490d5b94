// Plain TCP echo on loopback: the limit of request/answer figures.
#include "tcp_echo.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

#include "bench_tcp.h"

namespace djinn::bench {

namespace {
// How often the idle server loop looks at its stop flag.
constexpr int kServerPollMs = 50;
constexpr auto kClientTimeout = std::chrono::seconds(10);
}  // namespace

djinn::Result<std::unique_ptr<TcpEchoServer>> TcpEchoServer::start() {
  uint16_t port = 0;
  int fd = bind_loopback(port);
  if (fd < 0 || ::listen(fd, 128) != 0) {
    std::string why = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    return unavailable("TCP echo server: cannot listen on 127.0.0.1: " + why);
  }
  return std::unique_ptr<TcpEchoServer>(new TcpEchoServer(fd, port));
}

TcpEchoServer::TcpEchoServer(int listen_fd, uint16_t port) : listen_fd_(listen_fd), port_(port) {
  thread_ = std::thread([this] { run(); });
}

TcpEchoServer::~TcpEchoServer() {
  stop_.store(true);
  thread_.join();
  ::close(listen_fd_);
}

void TcpEchoServer::run() {
  std::vector<pollfd> fds = {{listen_fd_, POLLIN, 0}};
  std::vector<char> buf(64 * 1024);
  while (!stop_.load(std::memory_order_relaxed)) {
    if (::poll(fds.data(), fds.size(), kServerPollMs) <= 0) continue;
    for (size_t i = 1; i < fds.size();) {
      if (fds[i].revents == 0) {
        ++i;
        continue;
      }
      ssize_t n = ::read(fds[i].fd, buf.data(), buf.size());
      if (n > 0 && write_all(fds[i].fd, buf.data(), static_cast<size_t>(n))) {
        ++i;
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      ::close(fds[i].fd);
      fds.erase(fds.begin() + static_cast<std::ptrdiff_t>(i));
    }
    if (fds[0].revents & POLLIN) {
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd >= 0) {
        set_nodelay(fd);
        fds.push_back({fd, POLLIN, 0});
      }
    }
  }
  for (size_t i = 1; i < fds.size(); ++i) ::close(fds[i].fd);
}

djinn::Result<std::unique_ptr<TcpEchoClient>> TcpEchoClient::connect(uint16_t port) {
  int fd = connect_loopback(port);
  if (fd < 0) return unavailable(std::string("TCP echo client: cannot connect: ") + std::strerror(errno));
  set_timeout(fd, SO_RCVTIMEO, kClientTimeout);
  return std::unique_ptr<TcpEchoClient>(new TcpEchoClient(fd));
}

TcpEchoClient::TcpEchoClient(int fd) : fd_(fd) { payload_.fill('x'); }

TcpEchoClient::~TcpEchoClient() { ::close(fd_); }

bool TcpEchoClient::round_trip() {
  if (!write_all(fd_, payload_.data(), payload_.size())) return false;
  size_t got = 0;
  while (got < kEchoPayloadBytes) {
    ssize_t n = ::read(fd_, reply_.data() + got, kEchoPayloadBytes - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    got += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace djinn::bench
