// RPC under CURVE: the keyring decides who gets in, roles decide which methods they may call.
#include <doctest/doctest.h>

#include "djinn/core/rpc.h"
#include "djinn/core/security.h"
#include "djinn/examples/echo.capnp.h"
#include "echo_service.h"

using namespace djinn;
using djinn::examples::EchoParams;
using djinn::examples::EchoResults;
using security::Role;

namespace {

rpc::Reply echo(rpc::Client& c, const std::string& method = "echo.echo") {
  capnp::MallocMessageBuilder msg;
  msg.initRoot<EchoParams>().setText("secret");
  return c.call(method, msg, {.timeout = std::chrono::milliseconds(2000)});
}

struct Federation {
  security::KeyPair server = security::generate_keypair();
  security::KeyPair service = security::generate_keypair();
  security::KeyPair admin = security::generate_keypair();
  security::KeyPair stranger = security::generate_keypair();
  std::shared_ptr<security::Keyring> keyring = std::make_shared<security::Keyring>();

  Federation() {
    REQUIRE(keyring->add(Role::kService, service.public_key, "a service").ok());
    REQUIRE(keyring->add(Role::kAdmin, admin.public_key, "the operator").ok());
  }
  rpc::ClientOptions client(const std::string& endpoint, const security::KeyPair& me) const {
    return {.endpoint = endpoint, .curve = rpc::CurveClient{me, server.public_key}};
  }
};

}  // namespace

TEST_CASE("CURVE: known keys are admitted in their role, unknown and plaintext clients are refused") {
  Federation fed;
  rpc::Server server({.curve = rpc::CurveServer{fed.server, fed.keyring}});
  examples::EchoService echo_service(server);
  REQUIRE(server.start().ok());
  const std::string ep = server.endpoints()[0];

  SUBCASE("a key in the keyring is admitted") {
    rpc::Client c(fed.client(ep, fed.service));
    rpc::Reply r = echo(c);
    REQUIRE_MESSAGE(r.ok(), r.status().to_string());
    CHECK(std::string(r.results<EchoResults>().getText().cStr()) == "secret");
    // The async path too.
    capnp::MallocMessageBuilder msg;
    msg.initRoot<EchoParams>().setText("async");
    CHECK(c.call_async("echo.echo", msg).get().ok());
  }
  SUBCASE("a role check refuses a method to a lesser role") {
    rpc::Client c(fed.client(ep, fed.service));
    rpc::Reply r = echo(c, "echo.admin");
    CHECK(r.status().code() == Code::kPermissionDenied);
    CHECK(r.status().message().find("needs role admin") != std::string::npos);
    rpc::Client a(fed.client(ep, fed.admin));
    CHECK(echo(a, "echo.admin").ok());
  }
  SUBCASE("an unknown key is refused, promptly and clearly") {
    rpc::Client c(fed.client(ep, fed.stranger));
    auto start = rpc::Clock::now();
    rpc::Reply r = echo(c);
    CHECK(r.status().code() == Code::kUnauthenticated);
    CHECK(r.status().message().find("refused this client's key") != std::string::npos);
    CHECK(rpc::Clock::now() - start < std::chrono::milliseconds(1500));
    // Asynchronous calls on a refused connection fail the same way.
    capnp::MallocMessageBuilder msg;
    msg.initRoot<EchoParams>().setText("async");
    CHECK(c.call_async("echo.echo", msg).get().status().code() == Code::kUnauthenticated);
  }
  SUBCASE("a plaintext client cannot talk to a CURVE server") {
    rpc::Client c({.endpoint = ep});
    rpc::Reply r = echo(c);
    CHECK_FALSE(r.ok());
    CHECK((r.status().code() == Code::kUnauthenticated || r.status().code() == Code::kDeadlineExceeded));
  }
  SUBCASE("a client that expects another server key is refused") {
    security::KeyPair impostor = security::generate_keypair();
    rpc::Client c({.endpoint = ep, .curve = rpc::CurveClient{fed.service, impostor.public_key}});
    CHECK_FALSE(echo(c).ok());
  }
  CHECK(echo_service.served() <= 2);
}

TEST_CASE("without CURVE every client has the configured plaintext role") {
  rpc::Server server({.plaintext_role = Role::kClient});
  examples::EchoService echo_service(server);
  REQUIRE(server.start().ok());
  rpc::Client c({.endpoint = server.endpoints()[0]});
  CHECK(echo(c).ok());
  CHECK(echo(c, "echo.admin").status().code() == Code::kPermissionDenied);
}
