// The etcd peer of bench-lease: one etcd member on 127.0.0.1 with a temporary data dir, and a
// driver for its leases through etcd's grpc-gateway (HTTP/1.1 + JSON on the client port).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "djinn/core/status.h"
#include "http_client.h"
#include "peer_process.h"

namespace djinn::lease_bench {

inline constexpr const char* kEtcdPath = "/usr/bin/etcd";

class EtcdServer : public PeerServer {
 public:
  // Starts `binary` as a single member and waits until its gateway answers.
  static Result<std::unique_ptr<EtcdServer>> start(const std::string& binary);
  uint16_t client_port() const { return client_port_; }
  const std::string& data_dir() const { return data_dir_; }

 private:
  explicit EtcdServer(TempDir dir) : PeerServer(std::move(dir)) {}
  uint16_t client_port_ = 0;
  std::string data_dir_;
};

// One client connection to the gateway. Each call is one HTTP request on the kept-alive
// connection; a keep-alive opens a LeaseKeepAlive stream inside the gateway for that request.
class EtcdLeaseClient {
 public:
  static Result<EtcdLeaseClient> connect(uint16_t port);

  Result<int64_t> grant(int64_t ttl_s);
  Status keep_alive(int64_t id);
  // All `ids` in one request body, so one stream carries them all; returns how many were renewed.
  Result<size_t> keep_alive_batch(std::span<const int64_t> ids);
  Status revoke(int64_t id);
  // Any call that answers; for start-up checks. Returns the server's version.
  Result<std::string> status();

 private:
  explicit EtcdLeaseClient(HttpConnection http) : http_(std::move(http)) {}
  HttpConnection http_;
  std::string body_;
};

}  // namespace djinn::lease_bench
