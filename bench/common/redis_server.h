// Redis as a peer of the benchmarks: redis-server on 127.0.0.1 (by default in memory only: no RDB
// snapshots, no AOF; other persistence by extra arguments), and a client speaking RESP directly,
// with pipelining for batches.
#pragma once

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "djinn/core/status.h"
#include "peer_process.h"
#include "tcp_connection.h"

namespace djinn::bench {

inline constexpr const char* kRedisPath = "/usr/bin/redis-server";

class RedisServer : public PeerServer {
 public:
  // `persistence` replaces the default "--save '' --appendonly no", e.g. {"--appendonly", "yes",
  // "--appendfsync", "always"}.
  static djinn::Result<std::unique_ptr<RedisServer>> start(
      const std::string& binary, const std::vector<std::string>& persistence = {"--save", "", "--appendonly", "no"});
  uint16_t port() const { return port_; }

 private:
  explicit RedisServer(TempDir dir) : PeerServer(std::move(dir)) {}
  uint16_t port_ = 0;
};

struct RespValue {
  char type = 0;  // '+' simple string, '-' error, ':' integer, '$' bulk (null: is_null), '*' array
  bool is_null = false;
  int64_t integer = 0;
  std::string text;  // simple string, error or bulk
  std::vector<RespValue> elements;
};

class RedisConnection {
 public:
  static djinn::Result<RedisConnection> connect(uint16_t port, std::chrono::milliseconds timeout = std::chrono::seconds(10));

  // Queues a command; nothing is sent until flush() (pipelining).
  void append(std::initializer_list<std::string_view> args);
  void append(std::span<const std::string> args);
  bool flush();
  djinn::Result<RespValue> read_reply();
  // append + flush + read_reply; an error reply ('-') comes back as a Status.
  djinn::Result<RespValue> command(std::initializer_list<std::string_view> args);
  bool wait_readable(std::chrono::milliseconds timeout) { return conn_.wait_readable(timeout); }

 private:
  explicit RedisConnection(TcpConnection conn) : conn_(std::move(conn)) {}
  void append_arg(std::string_view arg);

  TcpConnection conn_;
  std::string out_;
};

// A field of INFO's answer ("used_memory"), as a number.
djinn::Result<int64_t> redis_info_int(RedisConnection& conn, std::string_view section, std::string_view field);

}  // namespace djinn::bench
