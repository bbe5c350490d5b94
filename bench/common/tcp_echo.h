// The loopback's limit for request/answer figures: plain TCP echo on 127.0.0.1, no messaging
// layer at all. The server is one poll() loop on its own thread, the way a ZeroMQ I/O thread or an
// event loop serves all its connections; a client makes one blocking round trip at a time.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <thread>

#include "djinn/core/status.h"

namespace djinn::bench {

// What one round trip carries each way: about a small request or a short answer.
inline constexpr size_t kEchoPayloadBytes = 64;

class TcpEchoServer {
 public:
  static djinn::Result<std::unique_ptr<TcpEchoServer>> start();
  ~TcpEchoServer();
  TcpEchoServer(const TcpEchoServer&) = delete;
  TcpEchoServer& operator=(const TcpEchoServer&) = delete;

  uint16_t port() const { return port_; }

 private:
  TcpEchoServer(int listen_fd, uint16_t port);
  void run();

  int listen_fd_;
  uint16_t port_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

class TcpEchoClient {
 public:
  static djinn::Result<std::unique_ptr<TcpEchoClient>> connect(uint16_t port);
  ~TcpEchoClient();
  TcpEchoClient(const TcpEchoClient&) = delete;
  TcpEchoClient& operator=(const TcpEchoClient&) = delete;

  // Sends kEchoPayloadBytes and waits for them to come back; false on a closed connection or a
  // timeout.
  bool round_trip();

 private:
  explicit TcpEchoClient(int fd);
  int fd_;
  std::array<char, kEchoPayloadBytes> payload_;
  std::array<char, kEchoPayloadBytes> reply_;
};

}  // namespace djinn::bench
