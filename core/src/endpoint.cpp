#include <unistd.h>

#include <climits>

#include "djinn/core/rpc.h"

namespace djinn::rpc {

std::string advertised_endpoint(const std::string& bound, const std::string& host) {
  constexpr std::string_view kTcp = "tcp://";
  if (bound.rfind(kTcp, 0) != 0) return bound;
  size_t colon = bound.rfind(':');
  if (colon == std::string::npos || colon < kTcp.size()) return bound;
  std::string bound_host = bound.substr(kTcp.size(), colon - kTcp.size());
  if (bound_host != "*" && bound_host != "0.0.0.0" && bound_host != "[::]" && bound_host != "::") return bound;
  std::string name = host;
  if (name.empty()) {
    char buf[HOST_NAME_MAX + 1] = {};
    if (gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return bound;
    name = buf;
  }
  return std::string(kTcp) + name + bound.substr(colon);
}

}  // namespace djinn::rpc
