// Starting one etcd member on loopback, and the pieces of the gateway's JSON every driver needs.
#include "etcd_server.h"

#include <array>
#include <charconv>

namespace djinn::bench {

namespace {

constexpr auto kStartTimeout = std::chrono::seconds(20);
constexpr auto kProbeTimeout = std::chrono::milliseconds(2000);
constexpr std::string_view kBase64Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

}  // namespace

djinn::Result<std::unique_ptr<EtcdServer>> EtcdServer::start(const std::string& binary) {
  djinn::Result<TempDir> dir = TempDir::create("djinn-bench-etcd-");
  if (!dir.ok()) return dir.status();
  std::unique_ptr<EtcdServer> server(new EtcdServer(std::move(dir).value()));
  djinn::Result<uint16_t> client_port = free_loopback_port();
  djinn::Result<uint16_t> peer_port = free_loopback_port();
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
    djinn::Result<HttpConnection> http = HttpConnection::connect(*client_port, kProbeTimeout);
    if (!http.ok()) return false;
    djinn::Result<std::string> v = etcd_version(*http);
    if (!v.ok()) return false;
    version = *v;
    return true;
  }, "etcd");
  if (!st.ok()) return st;
  server->set_version(version);
  return server;
}

djinn::Result<std::string> etcd_version(HttpConnection& http) {
  djinn::Result<HttpResponse> r = http.post("/v3/maintenance/status", "{}");
  if (!r.ok()) return r.status();
  if (r->status != 200) return gateway_error(*r, "status");
  size_t at = r->body.find("\"version\":\"");
  if (at == std::string::npos) return std::string("unknown");
  at += 11;
  return r->body.substr(at, r->body.find('"', at) - at);
}

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    uint32_t v = (static_cast<uint8_t>(bytes[i]) << 16) | (static_cast<uint8_t>(bytes[i + 1]) << 8) |
                 static_cast<uint8_t>(bytes[i + 2]);
    out += kBase64Alphabet[v >> 18];
    out += kBase64Alphabet[(v >> 12) & 63];
    out += kBase64Alphabet[(v >> 6) & 63];
    out += kBase64Alphabet[v & 63];
  }
  if (size_t rest = bytes.size() - i; rest > 0) {
    uint32_t v = static_cast<uint8_t>(bytes[i]) << 16;
    if (rest == 2) v |= static_cast<uint8_t>(bytes[i + 1]) << 8;
    out += kBase64Alphabet[v >> 18];
    out += kBase64Alphabet[(v >> 12) & 63];
    out += rest == 2 ? kBase64Alphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  static const std::array<int8_t, 256> value = [] {
    std::array<int8_t, 256> v{};
    v.fill(-1);
    for (size_t i = 0; i < kBase64Alphabet.size(); ++i) {
      v[static_cast<uint8_t>(kBase64Alphabet[i])] = static_cast<int8_t>(i);
    }
    return v;
  }();
  std::string out;
  out.reserve(text.size() / 4 * 3);
  uint32_t bits = 0;
  int count = 0;
  for (char c : text) {
    if (c == '=') break;
    int8_t v = value[static_cast<uint8_t>(c)];
    if (v < 0) return std::nullopt;
    bits = (bits << 6) | static_cast<uint32_t>(v);
    count += 6;
    if (count >= 8) {
      count -= 8;
      out += static_cast<char>((bits >> count) & 0xFF);
    }
  }
  return out;
}

std::optional<int64_t> gateway_quoted_int(std::string_view body, std::string_view key, size_t from) {
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

}  // namespace djinn::bench
