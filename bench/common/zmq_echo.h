// A bare ZeroMQ echo: DESIGN §3's transport with no RPC layer and no work. A ROUTER (or REP)
// thread sends back whatever arrives; a DEALER (or REQ) client sends 64 bytes and waits for them.
// Beside a service's figures it shows what ZeroMQ alone allows on this machine, as tcp_echo.h
// shows what the loopback allows.
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include <zmq.hpp>

#include "djinn/core/rpc.h"
#include "djinn/core/security.h"
#include "tcp_echo.h"

namespace djinn::bench {

class ZmqEchoServer {
 public:
  // Binds 127.0.0.1 on a free port and serves from a thread of its own, with the sockets of
  // `context` (give it a context of its own, as a server in its own process would have).
  ZmqEchoServer(zmq::context_t& context, zmq::socket_type type,
                const std::optional<security::KeyPair>& curve = std::nullopt);
  ~ZmqEchoServer();
  ZmqEchoServer(const ZmqEchoServer&) = delete;
  ZmqEchoServer& operator=(const ZmqEchoServer&) = delete;

  const std::string& endpoint() const { return endpoint_; }

 private:
  void run();

  zmq::socket_t socket_;  // bound here, then used by thread_ only
  std::string endpoint_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// A client socket of `type` connected to `endpoint`, with a receive timeout.
zmq::socket_t zmq_echo_client_socket(zmq::context_t& context, zmq::socket_type type, const std::string& endpoint,
                                     const std::optional<rpc::CurveClient>& curve = std::nullopt);

// A DEALER or REQ making one blocking round trip of kEchoPayloadBytes at a time.
class ZmqEchoCaller {
 public:
  ZmqEchoCaller(zmq::context_t& context, zmq::socket_type type, const std::string& endpoint,
                const std::optional<rpc::CurveClient>& curve = std::nullopt);

  // False on a timeout or a socket error.
  bool round_trip();

 private:
  zmq::socket_t socket_;
  std::array<char, kEchoPayloadBytes> payload_;
};

// The transport's limit beside a service's figures: a ROUTER echo with a ZeroMQ context of its own,
// as a server in its own process has, and DEALER callers sharing another (one I/O thread each).
class ZmqEchoLimit {
 public:
  ZmqEchoLimit() : server_(server_context_, zmq::socket_type::router) {}
  std::unique_ptr<ZmqEchoCaller> caller() {
    return std::make_unique<ZmqEchoCaller>(client_context_, zmq::socket_type::dealer, server_.endpoint());
  }

 private:
  zmq::context_t server_context_{1};
  zmq::context_t client_context_{1};
  ZmqEchoServer server_;  // after its context: stopped before it
};

}  // namespace djinn::bench
