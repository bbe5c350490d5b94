// A program outside the tree that finds an installed djinn with find_package(djinn).
#include <cstdio>

#include "djinn/core/model.h"
#include "djinn/core/rpc.h"

int main() {
  djinn::rpc::Server server({});
  if (!server.start().ok()) return 1;
  djinn::rpc::Client client({.endpoint = server.endpoints()[0]});
  auto reply = client.call("no.such.method", {.timeout = std::chrono::seconds(2)});
  std::printf("%s %s\n", djinn::ServiceId::random().to_string().c_str(), reply.status().to_string().c_str());
  return reply.status().code() == djinn::Code::kUnimplemented ? 0 : 1;
}
