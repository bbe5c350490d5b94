// etcd leases through the grpc-gateway: granting, keeping alive and revoking.
#include "etcd_peer.h"

#include <chrono>
#include <string_view>

namespace djinn::lease_bench {

using bench::gateway_error;
using bench::HttpResponse;

namespace {
constexpr auto kCallTimeout = std::chrono::milliseconds(10000);
}  // namespace

Result<EtcdLeaseClient> EtcdLeaseClient::connect(uint16_t port) {
  Result<bench::HttpConnection> http = bench::HttpConnection::connect(port, kCallTimeout);
  if (!http.ok()) return http.status();
  return EtcdLeaseClient(std::move(http).value());
}

Result<int64_t> EtcdLeaseClient::grant(int64_t ttl_s) {
  body_ = "{\"TTL\":" + std::to_string(ttl_s) + "}";
  Result<HttpResponse> r = http_.post("/v3/lease/grant", body_);
  if (!r.ok()) return r.status();
  std::optional<int64_t> id = bench::gateway_quoted_int(r->body, "ID");
  if (r->status != 200 || !id) return gateway_error(*r, "grant");
  return *id;
}

Status EtcdLeaseClient::keep_alive(int64_t id) {
  body_ = "{\"ID\":\"" + std::to_string(id) + "\"}";
  Result<HttpResponse> r = http_.post("/v3/lease/keepalive", body_);
  if (!r.ok()) return r.status();
  if (r->status != 200) return gateway_error(*r, "keep-alive");
  // A lease that is gone comes back without a TTL.
  std::optional<int64_t> ttl = bench::gateway_quoted_int(r->body, "TTL");
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
    std::optional<int64_t> ttl = bench::gateway_quoted_int(r->body, "TTL", found);
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

Result<std::string> EtcdLeaseClient::status() { return bench::etcd_version(http_); }

}  // namespace djinn::lease_bench
