// RPC under CURVE: the keyring decides who gets in, roles decide which methods they may call.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <string>
#include <thread>

#include "djinn/core/rpc.h"
#include "djinn/core/security.h"
#include "djinn/examples/echo.capnp.h"
#include "echo_service.h"
#include "support/test_support.h"

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

TEST_CASE("CURVE handshakes go on while the process handles signals") {
  // ZeroMQ calls on any thread, the ZAP handler's included, then fail with EINTR while a signal
  // is pending.
  test::InterruptingSignal usr1(SIGUSR1);
  Federation fed;
  rpc::Server server({.curve = rpc::CurveServer{fed.server, fed.keyring}});
  examples::EchoService echo_service(server);
  REQUIRE(server.start().ok());
  std::atomic<bool> done{false};
  // Every thread of the process in turn, the ZAP handler's among them (a process-wide signal
  // mostly lands on the main thread).
  std::thread signaller([&] {
    while (!done.load()) {
      for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
        pid_t tid = static_cast<pid_t>(std::stol(task.path().filename().string()));
        if (tid != static_cast<pid_t>(syscall(SYS_gettid))) syscall(SYS_tgkill, getpid(), tid, SIGUSR1);
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  });
  int failed = 0;
  for (int i = 0; i < 100; ++i) {
    rpc::Client c(fed.client(server.endpoints()[0], fed.service));  // a handshake each
    for (int k = 0; k < 20; ++k) {
      if (!echo(c).ok()) ++failed;
    }
  }
  done = true;
  signaller.join();
  CHECK(failed == 0);
}

TEST_CASE("without CURVE every client has the configured plaintext role") {
  rpc::Server server({.plaintext_role = Role::kClient});
  examples::EchoService echo_service(server);
  REQUIRE(server.start().ok());
  rpc::Client c({.endpoint = server.endpoints()[0]});
  CHECK(echo(c).ok());
  CHECK(echo(c, "echo.admin").status().code() == Code::kPermissionDenied);
}
