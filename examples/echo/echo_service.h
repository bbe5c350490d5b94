// The echo service: echo.echo (inline), echo.slow (worker pool, sleeps), echo.later (deferred,
// answered from another thread), echo.admin (admin role only), echo.depth (walks a nested chain). Small, but it exercises every way
// a djinn server can run a handler.
#pragma once

#include <atomic>
#include <memory>

#include "djinn/core/rpc.h"

namespace djinn::examples {

class EchoService {
 public:
  // Registers the methods on `server` (before server.start()).
  explicit EchoService(rpc::Server& server);
  ~EchoService();
  uint64_t served() const { return served_; }

 private:
  std::atomic<uint64_t> served_{0};
  struct Later;
  std::unique_ptr<Later> later_;
};

}  // namespace djinn::examples
