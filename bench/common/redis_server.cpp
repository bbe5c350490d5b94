// Redis as a peer: starting redis-server on loopback, and RESP over TCP.
#include "redis_server.h"

#include <charconv>

namespace djinn::bench {

namespace {
constexpr auto kStartTimeout = std::chrono::seconds(10);
}  // namespace

djinn::Result<std::unique_ptr<RedisServer>> RedisServer::start(const std::string& binary,
                                                                const std::vector<std::string>& persistence) {
  djinn::Result<TempDir> dir = TempDir::create("djinn-bench-redis-");
  if (!dir.ok()) return dir.status();
  std::unique_ptr<RedisServer> server(new RedisServer(std::move(dir).value()));
  djinn::Result<uint16_t> port = free_loopback_port();
  if (!port.ok()) return port.status();
  server->port_ = *port;
  std::vector<std::string> argv{binary, "--bind", "127.0.0.1", "--port", std::to_string(*port)};
  argv.insert(argv.end(), persistence.begin(), persistence.end());
  argv.insert(argv.end(), {"--dir", server->dir(), "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning"});
  Status st = server->launch(
      argv, "redis.log", kStartTimeout, [&] {
    djinn::Result<RedisConnection> c = RedisConnection::connect(*port, std::chrono::seconds(1));
    if (!c.ok()) return false;
    djinn::Result<RespValue> pong = c->command({"PING"});
    return pong.ok() && pong->text == "PONG";
  }, "redis-server");
  if (!st.ok()) return st;
  djinn::Result<RedisConnection> c = RedisConnection::connect(*port);
  if (!c.ok()) return c.status();
  djinn::Result<RespValue> info = c->command({"INFO", "server"});
  if (info.ok()) {
    size_t at = info->text.find("redis_version:");
    if (at != std::string::npos) {
      at += 14;
      server->set_version(info->text.substr(at, info->text.find_first_of("\r\n", at) - at));
    }
  }
  return server;
}

djinn::Result<RedisConnection> RedisConnection::connect(uint16_t port, std::chrono::milliseconds timeout) {
  djinn::Result<TcpConnection> conn = TcpConnection::connect_loopback(port, timeout);
  if (!conn.ok()) return conn.status();
  return RedisConnection(std::move(conn).value());
}

void RedisConnection::append_arg(std::string_view arg) {
  out_.push_back('$');
  out_.append(std::to_string(arg.size()));
  out_.append("\r\n");
  out_.append(arg);
  out_.append("\r\n");
}

void RedisConnection::append(std::initializer_list<std::string_view> args) {
  out_.push_back('*');
  out_.append(std::to_string(args.size()));
  out_.append("\r\n");
  for (std::string_view a : args) append_arg(a);
}

void RedisConnection::append(std::span<const std::string> args) {
  out_.push_back('*');
  out_.append(std::to_string(args.size()));
  out_.append("\r\n");
  for (const std::string& a : args) append_arg(a);
}

bool RedisConnection::flush() {
  bool ok = conn_.write_all(out_);
  out_.clear();
  return ok;
}

djinn::Result<RespValue> RedisConnection::read_reply() {
  auto line = conn_.read_until("\r\n");
  if (!line || line->empty()) return unavailable("redis: connection closed");
  RespValue v;
  v.type = (*line)[0];
  std::string_view rest = line->substr(1);
  switch (v.type) {
    case '+':
    case '-':
      v.text.assign(rest);
      return v;
    case ':':
      std::from_chars(rest.data(), rest.data() + rest.size(), v.integer);
      return v;
    case '$':
    case '*': {
      // A bulk string's or an array's length; -1 is RESP's null.
      int64_t n = 0;
      std::from_chars(rest.data(), rest.data() + rest.size(), n);
      if (n < 0) {
        v.is_null = true;
        return v;
      }
      if (v.type == '$') {
        auto data = conn_.read_exact(static_cast<size_t>(n) + 2);
        if (!data) return unavailable("redis: connection closed in a bulk string");
        v.text.assign(data->substr(0, static_cast<size_t>(n)));
        return v;
      }
      v.elements.reserve(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        djinn::Result<RespValue> e = read_reply();
        if (!e.ok()) return e.status();
        v.elements.push_back(std::move(e).value());
      }
      return v;
    }
    default:
      return unavailable("redis: unexpected reply type '" + std::string(1, v.type) + "'");
  }
}

djinn::Result<RespValue> RedisConnection::command(std::initializer_list<std::string_view> args) {
  append(args);
  if (!flush()) return unavailable("redis: cannot send");
  djinn::Result<RespValue> r = read_reply();
  if (r.ok() && r->type == '-') return unavailable("redis: " + r->text);
  return r;
}

djinn::Result<int64_t> redis_info_int(RedisConnection& conn, std::string_view section, std::string_view field) {
  djinn::Result<RespValue> info = conn.command({"INFO", section});
  if (!info.ok()) return info.status();
  std::string key = "\n" + std::string(field) + ":";
  size_t at = info->text.find(key);
  if (at == std::string::npos) return not_found("redis INFO has no " + std::string(field));
  at += key.size();
  int64_t v = 0;
  std::from_chars(info->text.data() + at, info->text.data() + info->text.size(), v);
  return v;
}

}  // namespace djinn::bench
