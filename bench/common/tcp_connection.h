// A blocking TCP connection to 127.0.0.1 with a read buffer: what the benchmarks' drivers of their
// peers (HTTP to etcd's gateway, RESP to Redis) speak over. TCP_NODELAY is on, so a request leaves
// at once.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "djinn/core/status.h"

namespace djinn::bench {

class TcpConnection {
 public:
  static djinn::Result<TcpConnection> connect_loopback(uint16_t port, std::chrono::milliseconds timeout);
  TcpConnection(TcpConnection&& other) noexcept;
  TcpConnection& operator=(TcpConnection&& other) noexcept;
  TcpConnection(const TcpConnection&) = delete;
  TcpConnection& operator=(const TcpConnection&) = delete;
  ~TcpConnection();

  bool write_all(std::string_view data);
  // The bytes up to `delimiter` (not included; the delimiter is consumed); nullopt on a closed
  // connection or a timeout.
  std::optional<std::string_view> read_until(std::string_view delimiter);
  // Exactly `n` bytes; nullopt on a closed connection or a timeout. The view lives until the next
  // read.
  std::optional<std::string_view> read_exact(size_t n);
  // Whether a read would find data within `timeout` (already buffered, or readable on the socket).
  bool wait_readable(std::chrono::milliseconds timeout);

 private:
  explicit TcpConnection(int fd) : fd_(fd) {}
  bool fill();  // one read() into the buffer; false on close, error or timeout
  void compact();

  int fd_ = -1;
  std::string buffer_;
  size_t pos_ = 0;  // start of the unread bytes in buffer_
};

}  // namespace djinn::bench
