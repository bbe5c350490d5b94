// The etcd driver of bench-lease: leases through etcd's grpc-gateway (HTTP/1.1 + JSON on the
// client port) of the member that bench/common's EtcdServer starts.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "djinn/core/status.h"
#include "etcd_server.h"
#include "http_client.h"

namespace djinn::lease_bench {

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
  explicit EtcdLeaseClient(bench::HttpConnection http) : http_(std::move(http)) {}
  bench::HttpConnection http_;
  std::string body_;
};

}  // namespace djinn::lease_bench
