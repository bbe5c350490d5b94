// etcd as a benchmark peer: one member on 127.0.0.1 with a temporary data dir and default settings
// (so fsync on), and what every driver of its grpc-gateway (HTTP/1.1 + JSON on the client port)
// needs: base64 for keys and values, the gateway's way of writing 64-bit integers, its errors.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "djinn/core/status.h"
#include "http_client.h"
#include "peer_process.h"

namespace djinn::bench {

inline constexpr const char* kEtcdPath = "/usr/bin/etcd";

class EtcdServer : public PeerServer {
 public:
  // Starts `binary` as a single member and waits until its gateway answers.
  static djinn::Result<std::unique_ptr<EtcdServer>> start(const std::string& binary);
  uint16_t client_port() const { return client_port_; }
  const std::string& data_dir() const { return data_dir_; }

 private:
  explicit EtcdServer(TempDir dir) : PeerServer(std::move(dir)) {}
  uint16_t client_port_ = 0;
  std::string data_dir_;
};

// The server's version, from /v3/maintenance/status; any answer proves the gateway is up.
djinn::Result<std::string> etcd_version(HttpConnection& http);

// The gateway carries keys and values (protobuf bytes) as standard base64.
std::string base64_encode(std::string_view bytes);
// nullopt when `text` is not base64.
std::optional<std::string> base64_decode(std::string_view text);

// The value of "key":"<digits>" in the gateway's JSON (it writes 64-bit integers as strings),
// searched from `from`; nullopt when absent.
std::optional<int64_t> gateway_quoted_int(std::string_view body, std::string_view key, size_t from = 0);

// An answer the gateway gave to `what` that is not the expected one, as a status quoting it.
Status gateway_error(const HttpResponse& response, std::string_view what);

}  // namespace djinn::bench
