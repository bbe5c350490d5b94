// Plain TCP on 127.0.0.1 for the benchmarks' own servers, clients and peer drivers: sockets set up
// the same way everywhere (TCP_NODELAY, so a small message leaves at once), whole writes.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace djinn::bench {

void set_nodelay(int fd);
// SO_RCVTIMEO or SO_SNDTIMEO (`option`) of `fd`.
void set_timeout(int fd, int option, std::chrono::milliseconds timeout);

// A socket bound to an ephemeral port on 127.0.0.1, its port in `port`; -1 with errno set on
// failure. The caller owns the descriptor.
int bind_loopback(uint16_t& port);
// A socket connected to 127.0.0.1:`port`, TCP_NODELAY on; -1 with errno set on failure. The caller
// owns the descriptor.
int connect_loopback(uint16_t port);

// Writes all `n` bytes, retrying short writes and EINTR; false when the connection is gone (with
// no SIGPIPE).
bool write_all(int fd, const char* data, size_t n);

}  // namespace djinn::bench
