// A minimal HTTP/1.1 client over one persistent loopback connection (keep-alive, TCP_NODELAY):
// POST a body, read the status and the whole body, plain or chunked. Enough to drive etcd's
// grpc-gateway at the speed of its server rather than of a client library.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "djinn/core/status.h"
#include "tcp_connection.h"

namespace djinn::lease_bench {

struct HttpResponse {
  int status = 0;
  std::string body;  // de-chunked
};

class HttpConnection {
 public:
  static Result<HttpConnection> connect(uint16_t port, std::chrono::milliseconds timeout);

  Result<HttpResponse> post(std::string_view path, std::string_view body);

 private:
  HttpConnection(TcpConnection conn, uint16_t port) : conn_(std::move(conn)), port_(port) {}
  Status read_body_chunked(std::string& body);

  TcpConnection conn_;
  uint16_t port_;
  std::string request_;  // reused for every request
};

}  // namespace djinn::lease_bench
