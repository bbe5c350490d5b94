// etcd as a peer: starting one member on loopback and granting, keeping alive and revoking leases
// through its grpc-gateway.
#include "etcd_peer.h"

#include <charconv>
#include <string_view>

namespace djinn::lease_bench {

namespace {

constexpr auto kStartTimeout = std::chrono::seconds(20);
constexpr auto kCallTimeout = std::chrono::milliseconds(10000);

// The value of "key":"<digits>" in the gateway's JSON (it writes 64-bit integers as strings), or
// nullopt.
std::optional<int64_t> quoted_int(std::string_view body, std::string_view key, size_t from = 0) {
  std::string pattern = "\"" + std::string(key) + "\":\"";
  size_t at = body.find(pattern, from);
  if (at == std::string_view::npos) return std::nullopt;
  const char* begin = body.data() + at + pattern.size();
  int64_t v = 0;
  auto [end, ec] = std::from_chars(begin, body.data() + body.size(), v);
  if (ec != std::errc()) return std::nullopt;
  return v;
}

Status gateway_error(const HttpResponse& r, std::string_view what) {
  return unavailable("etcd " + std::string(what) + ": HTTP " + std::to_string(r.status) + " " + r.body.substr(0, 200));
}

}  // namespace

Result<std::unique_ptr<EtcdServer>> EtcdServer::start(const std::string& binary) {
  Result<TempDir> dir = TempDir::create("djinn-bench-etcd-");
  if (!dir.ok()) return dir.status();
  std::unique_ptr<EtcdServer> server(new EtcdServer(std::move(dir).value()));
  Result<uint16_t> client_port = free_loopback_port();
  Result<uint16_t> peer_port = free_loopback_port();
  if (!client_port.ok()) return client_port.status();
  if (!peer_port.ok()) return peer_port.status();
  server->client_port_ = *client_port;
  server->data_dir_ = server->dir() + "/data";
  std::string client_url = "http://127.0.0.1:" + std::to_string(*client_port);
  std::string peer_url = "http://127.0.0.1:" + std::to_string(*peer_port);
  std::string version;
  Status st = server->launch(
      {binary, "--name", "bench", "--data-dir", server->data_dir_, "--listen-client-urls", client_url,
       "--advertise-client-urls", client_url, "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls",
       peer_url, "--initial-cluster", "bench=" + peer_url, "--initial-cluster-state", "new", "--logger", "zap",
       "--log-level", "warn"},
      "etcd.log", kStartTimeout, [&] {
    Result<EtcdLeaseClient> c = EtcdLeaseClient::connect(*client_port);
    if (!c.ok()) return false;
    Result<std::string> v = c->status();
    if (!v.ok()) return false;
    version = *v;
    return true;
  }, "etcd");
  if (!st.ok()) return st;
  server->set_version(version);
  return server;
}

Result<EtcdLeaseClient> EtcdLeaseClient::connect(uint16_t port) {
  Result<HttpConnection> http = HttpConnection::connect(port, kCallTimeout);
  if (!http.ok()) return http.status();
  return EtcdLeaseClient(std::move(http).value());
}

Result<int64_t> EtcdLeaseClient::grant(int64_t ttl_s) {
  body_ = "{\"TTL\":" + std::to_string(ttl_s) + "}";
  Result<HttpResponse> r = http_.post("/v3/lease/grant", body_);
  if (!r.ok()) return r.status();
  std::optional<int64_t> id = quoted_int(r->body, "ID");
  if (r->status != 200 || !id) return gateway_error(*r, "grant");
  return *id;
}

Status EtcdLeaseClient::keep_alive(int64_t id) {
  body_ = "{\"ID\":\"" + std::to_string(id) + "\"}";
  Result<HttpResponse> r = http_.post("/v3/lease/keepalive", body_);
  if (!r.ok()) return r.status();
  if (r->status != 200) return gateway_error(*r, "keep-alive");
  // A lease that is gone comes back without a TTL.
  std::optional<int64_t> ttl = quoted_int(r->body, "TTL");
  if (!ttl || *ttl <= 0) return not_found("etcd lease " + std::to_string(id) + " is gone");
  return Status::Ok();
}

Result<size_t> EtcdLeaseClient::keep_alive_batch(std::span<const int64_t> ids) {
  body_.clear();
  for (int64_t id : ids) body_.append("{\"ID\":\"").append(std::to_string(id)).append("\"}\n");
  Result<HttpResponse> r = http_.post("/v3/lease/keepalive", body_);
  if (!r.ok()) return r.status();
  if (r->status != 200) return gateway_error(*r, "keep-alive");
  size_t renewed = 0;
  for (size_t at = 0;;) {
    size_t found = r->body.find("\"TTL\":\"", at);
    if (found == std::string::npos) break;
    std::optional<int64_t> ttl = quoted_int(r->body, "TTL", found);
    if (ttl && *ttl > 0) ++renewed;
    at = found + 1;
  }
  return renewed;
}

Status EtcdLeaseClient::revoke(int64_t id) {
  body_ = "{\"ID\":\"" + std::to_string(id) + "\"}";
  Result<HttpResponse> r = http_.post("/v3/lease/revoke", body_);
  if (!r.ok()) return r.status();
  if (r->status != 200 || r->body.find("\"error\"") != std::string::npos) return gateway_error(*r, "revoke");
  return Status::Ok();
}

Result<std::string> EtcdLeaseClient::status() {
  Result<HttpResponse> r = http_.post("/v3/maintenance/status", "{}");
  if (!r.ok()) return r.status();
  if (r->status != 200) return gateway_error(*r, "status");
  size_t at = r->body.find("\"version\":\"");
  if (at == std::string::npos) return std::string("unknown");
  at += 11;
  return r->body.substr(at, r->body.find('"', at) - at);
}

}  // namespace djinn::lease_bench
