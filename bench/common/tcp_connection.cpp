// Blocking loopback TCP with a read buffer, for the benchmarks' peer drivers.
#include "tcp_connection.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "bench_tcp.h"

namespace djinn::bench {

namespace {
constexpr size_t kReadChunk = 64 * 1024;
}  // namespace

djinn::Result<TcpConnection> TcpConnection::connect_loopback(uint16_t port, std::chrono::milliseconds timeout) {
  int fd = bench::connect_loopback(port);
  if (fd < 0) return unavailable("cannot connect to 127.0.0.1:" + std::to_string(port) + ": " + std::strerror(errno));
  set_timeout(fd, SO_RCVTIMEO, timeout);
  set_timeout(fd, SO_SNDTIMEO, timeout);
  return TcpConnection(fd);
}

TcpConnection::TcpConnection(TcpConnection&& other) noexcept
    : fd_(other.fd_), buffer_(std::move(other.buffer_)), pos_(other.pos_) {
  other.fd_ = -1;
}

TcpConnection& TcpConnection::operator=(TcpConnection&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    buffer_ = std::move(other.buffer_);
    pos_ = other.pos_;
    other.fd_ = -1;
  }
  return *this;
}

TcpConnection::~TcpConnection() {
  if (fd_ >= 0) ::close(fd_);
}

bool TcpConnection::write_all(std::string_view data) { return bench::write_all(fd_, data.data(), data.size()); }

void TcpConnection::compact() {
  if (pos_ == 0) return;
  buffer_.erase(0, pos_);
  pos_ = 0;
}

bool TcpConnection::fill() {
  // Consumed bytes are dropped only here, before a read, so views handed out stay valid until the
  // next read call.
  if (pos_ > 0 && (pos_ == buffer_.size() || pos_ > kReadChunk)) compact();
  size_t old = buffer_.size();
  buffer_.resize(old + kReadChunk);
  for (;;) {
    ssize_t n = ::recv(fd_, buffer_.data() + old, kReadChunk, 0);
    if (n < 0 && errno == EINTR) continue;
    buffer_.resize(old + (n > 0 ? static_cast<size_t>(n) : 0));
    return n > 0;
  }
}

std::optional<std::string_view> TcpConnection::read_until(std::string_view delimiter) {
  size_t searched = pos_;
  for (;;) {
    size_t at = buffer_.find(delimiter, searched);
    if (at != std::string::npos) {
      size_t start = pos_;
      pos_ = at + delimiter.size();
      return std::string_view(buffer_).substr(start, at - start);
    }
    size_t unread_before = pos_;
    size_t keep = buffer_.size() - pos_;
    if (!fill()) return std::nullopt;
    // fill() may have moved the unread bytes to the front.
    size_t shift = unread_before - pos_;
    size_t scanned_end = unread_before + keep - shift;
    searched = scanned_end >= delimiter.size() ? scanned_end - delimiter.size() + 1 : pos_;
    if (searched < pos_) searched = pos_;
  }
}

std::optional<std::string_view> TcpConnection::read_exact(size_t n) {
  while (buffer_.size() - pos_ < n) {
    if (!fill()) return std::nullopt;
  }
  size_t start = pos_;
  pos_ += n;
  return std::string_view(buffer_).substr(start, n);
}

bool TcpConnection::wait_readable(std::chrono::milliseconds timeout) {
  if (pos_ < buffer_.size()) return true;
  pollfd p{fd_, POLLIN, 0};
  return ::poll(&p, 1, static_cast<int>(timeout.count())) > 0;
}

}  // namespace djinn::bench
