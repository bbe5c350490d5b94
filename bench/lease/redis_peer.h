// The Redis peer of bench-lease: the shared one of bench/common (redis_server.h), under the names
// bench-lease has always used; started in memory only (no RDB snapshots, no AOF).
#pragma once

#include "redis_server.h"

namespace djinn::lease_bench {

using bench::kRedisPath;
using bench::redis_info_int;
using bench::RedisConnection;
using bench::RedisServer;
using bench::RespValue;

}  // namespace djinn::lease_bench
