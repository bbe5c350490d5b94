// A minimal HTTP/1.1 client over one persistent loopback connection (keep-alive, TCP_NODELAY):
// POST a body, read the status and the whole body, plain or chunked, or read a streamed response
// chunk by chunk. Enough to drive etcd's grpc-gateway at the speed of its server rather than of a
// client library.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "djinn/core/status.h"
#include "tcp_connection.h"

namespace djinn::bench {

struct HttpResponse {
  int status = 0;
  std::string body;  // de-chunked
};

class HttpConnection {
 public:
  static djinn::Result<HttpConnection> connect(uint16_t port, std::chrono::milliseconds timeout);

  // send_post + read_response.
  djinn::Result<HttpResponse> post(std::string_view path, std::string_view body);

  // The two halves of post(), for a caller that keeps requests in flight on several connections
  // and reads each answer later. Answers come back in the order of the requests.
  Status send_post(std::string_view path, std::string_view body);
  djinn::Result<HttpResponse> read_response();

  // A POST whose answer is a stream (a chunked body that stays open, as a gRPC server stream
  // behind the gateway): sends it and reads the head; returns the HTTP status. The body is then
  // read with read_chunk.
  djinn::Result<int> open_stream(std::string_view path, std::string_view body);
  // Appends the next chunk of the stream to `out`; false when none began within `wait`. An error
  // when the stream ended or the connection closed.
  djinn::Result<bool> read_chunk(std::string& out, std::chrono::milliseconds wait);

 private:
  HttpConnection(TcpConnection conn, uint16_t port) : conn_(std::move(conn)), port_(port) {}
  struct Head {
    int status = 0;
    bool chunked = false;
    size_t content_length = 0;
  };
  djinn::Result<Head> read_head();
  // One chunk appended to `body`; false for the last (empty) chunk, after its trailers.
  djinn::Result<bool> read_one_chunk(std::string& body);

  TcpConnection conn_;
  uint16_t port_;
  std::string request_;  // reused for every request
};

}  // namespace djinn::bench
