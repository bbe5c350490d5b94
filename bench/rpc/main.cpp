// bench-rpc: round-trip latency and throughput of djinn RPC (the echo service) beside raw ZeroMQ
// DEALER/ROUTER and REQ/REP on the same loopback, plaintext and CURVE, with a plain TCP echo as
// the loopback's limit. Everything runs in this process; prints the JSON of DESIGN §11.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "bench_json.h"
#include "bench_run.h"
#include "bench_tcp.h"
#include "djinn/core/config.h"
#include "djinn/core/log.h"
#include "djinn/core/rpc.h"
#include "djinn/core/security.h"
#include "djinn/examples/echo.capnp.h"
#include "echo_service.h"
#include "tcp_echo.h"
#include "zmq_echo.h"

using namespace djinn;
using bench::Clock;
using bench::Plan;
using bench::seconds_of;
using bench::Window;

namespace {

// The issue's sizes: 64-byte messages, 16 concurrent clients, 64 calls in flight.
constexpr size_t kPayloadBytes = bench::kEchoPayloadBytes;
constexpr int kManyClients = 16;
constexpr int kInFlight = 64;
// An EchoParams with a 24-byte blob and no text serialises to 64 bytes (checked at start-up).
constexpr size_t kEchoBlobBytes = 24;
// Room for the whole EchoParams in the first segment: MallocMessageBuilder's default of 1024
// words would calloc 8 KiB per call, which is the caller's choice, not the RPC layer's cost.
constexpr unsigned kFirstSegmentWords = 16;
constexpr const char* kEchoMethod = "echo.echo";
constexpr int kClientTimeoutMs = 5000;

// In each run's window, calls started in [measure_from, until) are counted (per-call latency),
// or for pipelined runs, replies that arrived in it.

struct Sample {
  uint64_t calls = 0;
  uint64_t errors = 0;
  double seconds = 0;
  std::vector<double> latencies_us;  // empty for pipelined runs

  void merge(Sample&& other) {
    calls += other.calls;
    errors += other.errors;
    seconds += other.seconds;
    latencies_us.insert(latencies_us.end(), other.latencies_us.begin(), other.latencies_us.end());
  }
  double throughput() const { return seconds > 0 ? static_cast<double>(calls) / seconds : 0; }
};

void fill_params(capnp::MessageBuilder& msg) {
  static const std::array<kj::byte, kEchoBlobBytes> blob = [] {
    std::array<kj::byte, kEchoBlobBytes> b{};
    b.fill('x');
    return b;
  }();
  msg.initRoot<examples::EchoParams>().setBlob(kj::arrayPtr(blob.data(), blob.size()));
}

// The servers, djinn's echo service (echo_service.h) and bench/common's ZmqEchoServer, each serve
// from a thread of their own, as they would in a process of their own.

// ---------------------------------------------------------------------------------------------
// Clients making one blocking round trip at a time.

class DjinnCaller {
 public:
  explicit DjinnCaller(const rpc::ClientOptions& options) : client_(options) {}

  bool round_trip() {
    capnp::MallocMessageBuilder msg(kFirstSegmentWords);
    fill_params(msg);
    rpc::Reply reply = client_.call(kEchoMethod, msg);
    return reply.ok() && reply.results<examples::EchoResults>().getBlob().size() == kEchoBlobBytes;
  }

 private:
  rpc::Client client_;
};

// A blocking TCP echo client, or an exception that stops the run (as the other callers do).
std::unique_ptr<bench::TcpEchoClient> tcp_caller(uint16_t port) {
  auto client = bench::TcpEchoClient::connect(port);
  if (!client.ok()) throw std::runtime_error("TCP echo client: " + client.status().to_string());
  return std::move(*client);
}

// `clients` threads, each with a caller of its own from make_caller(), each making one blocking
// round trip after another; every call started in the window is timed.
template <class MakeCaller>
Sample run_sync(int clients, const Plan& plan, MakeCaller make_caller) {
  std::vector<Sample> per_thread(static_cast<size_t>(clients));
  bench::run_together(clients, plan, [&](int i) {
    return [&s = per_thread[static_cast<size_t>(i)], caller = make_caller()](const Window& window) {
      for (;;) {
        Clock::time_point t0 = Clock::now();
        if (t0 >= window.until) break;
        bool ok = caller->round_trip();
        Clock::time_point t1 = Clock::now();
        if (t0 < window.measure_from) continue;
        if (!ok) {
          s.errors++;
          continue;
        }
        s.calls++;
        s.latencies_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      }
    };
  });
  Sample total;
  for (auto& s : per_thread) total.merge(std::move(s));
  total.seconds = seconds_of(plan.measure);
  return total;
}

// ---------------------------------------------------------------------------------------------
// One client keeping kInFlight calls in flight.

// djinn: call_async with a callback that issues the next call. Callbacks run on the client's I/O
// thread, so the next call joins that thread's next batch without a lock or a wake-up.
class DjinnPipeline {
 public:
  DjinnPipeline(const rpc::ClientOptions& options, const Plan& plan) : client_(options), plan_(plan) {}

  Sample run() {
    window_ = Window::from_now(plan_);
    outstanding_ = kInFlight;  // set before the first call, so before any callback
    for (int i = 0; i < kInFlight; ++i) issue();
    std::unique_lock lock(mu_);
    done_cv_.wait(lock, [&] { return done_; });
    Sample s;
    s.calls = calls_;
    s.errors = errors_;
    s.seconds = seconds_of(plan_.measure);
    return s;
  }
  rpc::ClientStats stats() const { return client_.stats(); }

 private:
  void issue() {
    capnp::MallocMessageBuilder msg(kFirstSegmentWords);
    fill_params(msg);
    client_.call_async(kEchoMethod, msg, {}, [this](rpc::Reply reply) { on_reply(std::move(reply)); });
  }

  void on_reply(rpc::Reply reply) {
    Clock::time_point now = Clock::now();
    bool ok = reply.ok() && reply.results<examples::EchoResults>().getBlob().size() == kEchoBlobBytes;
    if (now >= window_.measure_from && now < window_.until) (ok ? calls_ : errors_)++;
    if (now < window_.until) return issue();
    if (--outstanding_ == 0) {
      std::lock_guard lock(mu_);
      done_ = true;
      done_cv_.notify_all();
    }
  }

  rpc::Client client_;
  Plan plan_;
  Window window_;
  // Touched by callbacks only, all on the client's I/O thread; read by run() after done_.
  int outstanding_ = 0;
  uint64_t calls_ = 0;
  uint64_t errors_ = 0;
  std::mutex mu_;  // guards done_
  std::condition_variable done_cv_;
  bool done_ = false;
};

// Raw ZeroMQ: one DEALER sends kInFlight messages, then one more for each reply.
Sample run_raw_pipelined(zmq::context_t& context, const std::string& endpoint,
                         const std::optional<rpc::CurveClient>& curve, const Plan& plan) {
  zmq::socket_t dealer = bench::zmq_echo_client_socket(context, zmq::socket_type::dealer, endpoint, curve);
  std::array<char, kPayloadBytes> payload;
  payload.fill('x');
  Window window = Window::from_now(plan);
  for (int i = 0; i < kInFlight; ++i) dealer.send(zmq::buffer(payload), zmq::send_flags::none);
  Sample s;
  for (int outstanding = kInFlight; outstanding > 0;) {
    zmq::message_t reply;
    if (!dealer.recv(reply)) {
      s.errors += static_cast<uint64_t>(outstanding);
      break;
    }
    Clock::time_point now = Clock::now();
    if (now >= window.measure_from && now < window.until) (reply.size() == kPayloadBytes ? s.calls : s.errors)++;
    if (now < window.until) {
      dealer.send(zmq::buffer(payload), zmq::send_flags::none);
    } else {
      --outstanding;
    }
  }
  s.seconds = seconds_of(plan.measure);
  return s;
}

// Plain TCP: kInFlight 64-byte messages on one connection, one more for each that comes back.
Sample run_tcp_pipelined(uint16_t port, const Plan& plan) {
  int fd = bench::connect_loopback(port);
  if (fd < 0) throw std::runtime_error(std::string("TCP echo client: cannot connect: ") + std::strerror(errno));
  bench::set_timeout(fd, SO_RCVTIMEO, std::chrono::milliseconds(kClientTimeoutMs));
  std::vector<char> out(kPayloadBytes * kInFlight, 'x');
  std::vector<char> in(64 * 1024);
  Window window = Window::from_now(plan);
  Sample s;
  bool ok = bench::write_all(fd, out.data(), out.size());
  size_t partial = 0;  // bytes of a message not yet complete
  for (int outstanding = ok ? kInFlight : 0; outstanding > 0;) {
    ssize_t n = ::read(fd, in.data(), in.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      s.errors += static_cast<uint64_t>(outstanding);
      break;
    }
    partial += static_cast<size_t>(n);
    size_t complete = partial / kPayloadBytes;
    partial %= kPayloadBytes;
    Clock::time_point now = Clock::now();
    if (now >= window.measure_from && now < window.until) s.calls += complete;
    if (now < window.until) {
      if (!bench::write_all(fd, out.data(), complete * kPayloadBytes)) {
        s.errors += static_cast<uint64_t>(outstanding);
        break;
      }
    } else {
      outstanding -= static_cast<int>(complete);
    }
  }
  ::close(fd);
  s.seconds = seconds_of(plan.measure);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Running contenders side by side.

using Contender = bench::Contender<Sample>;

void run_side_by_side(const std::vector<Contender*>& contenders, const Plan& plan) {
  bench::run_side_by_side(contenders, plan, {"bench-rpc", 40, "calls/s"},
                          [](const Sample& s) { return std::string(s.errors ? " (with errors)" : ""); });
}

struct Figures {
  double throughput = 0;
  bench::Summary latency;
  uint64_t errors = 0;
};

Figures figures_of(Contender& c) {
  Figures f;
  f.throughput = bench::round_to(c.total.throughput(), 0);
  f.latency = bench::summarize(c.total.latencies_us);
  f.latency.p50 = bench::round_to(f.latency.p50, 2);
  f.latency.p99 = bench::round_to(f.latency.p99, 2);
  f.errors = c.total.errors;
  return f;
}

// Adds throughput, p50 and p99 of djinn's blocking calls with `clients` clients, beside the raw
// DEALER/ROUTER peer and the TCP limit, with the issue's targets.
void add_sync_results(bench::Report& report, const std::string& prefix, const std::string& peer_prefix, int clients,
                      const Figures& djinn, const Figures& raw, const Figures& tcp) {
  std::string tag = "sync_" + bench::clients_tag(clients);
  auto peer = [&](const std::string& what, double v) {
    return bench::Reference{peer_prefix + "dealer_router_" + tag + what, v};
  };
  auto limit = [&](const std::string& what, double v) { return bench::Reference{"tcp_pingpong_" + tag + what, v}; };
  report.add({prefix + tag + "_throughput", djinn.throughput, "calls/s", peer("_throughput", raw.throughput),
              limit("_throughput", tcp.throughput), bench::Target::at_least(bench::Target::Of::kPeer, 0.7)});
  report.add({prefix + tag + "_p50_us", djinn.latency.p50, "us", peer("_p50_us", raw.latency.p50),
              limit("_p50_us", tcp.latency.p50), std::nullopt});
  report.add({prefix + tag + "_p99_us", djinn.latency.p99, "us", peer("_p99_us", raw.latency.p99),
              limit("_p99_us", tcp.latency.p99), bench::Target::at_most(bench::Target::Of::kPeer, 2.0)});
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg("bench-rpc",
             "Round-trip latency (p50, p99) and throughput of djinn RPC's echo.echo with 1 and 16 blocking\n"
             "clients and with 64 calls in flight, beside raw ZeroMQ DEALER/ROUTER and REQ/REP and a plain TCP\n"
             "echo on 127.0.0.1, plaintext and CURVE. Prints one JSON object (DESIGN §11) on stdout.");
  cfg.add_bool("quick", false, "small sizes: about 1 s per figure, well under a minute in all");
  const Plan quick_plan{std::chrono::milliseconds(200), std::chrono::milliseconds(1000), 1};
  const Plan full_plan{std::chrono::milliseconds(500), std::chrono::milliseconds(2000), 3};
  bench::add_plan_flags(cfg, quick_plan, full_plan);
  if (Status st = cfg.parse(argc, argv); !st.ok()) return cfg.exit_code(st);
  log::set_level(log::Level::kWarn);

  const bool quick = cfg.get_bool("quick");
  const Plan plan = bench::plan_from_flags(cfg, quick_plan, full_plan);

  {
    capnp::MallocMessageBuilder msg(kFirstSegmentWords);
    fill_params(msg);
    size_t bytes = capnp::computeSerializedSizeInWords(msg) * sizeof(capnp::word);
    if (bytes != kPayloadBytes) {
      std::fprintf(stderr, "bench-rpc: the EchoParams payload is %zu bytes, expected %zu\n", bytes, kPayloadBytes);
      return 1;
    }
  }

  // Server side and client side get ZeroMQ contexts of their own (one I/O thread each), as two
  // processes would; the CURVE servers get theirs so that the djinn ZAP handler, bound in its
  // server's context, sees no raw socket.
  zmq::context_t djinn_server_context(1);
  zmq::context_t djinn_curve_server_context(1);
  zmq::context_t raw_server_context(1);
  zmq::context_t client_context(1);

  security::KeyPair server_keys = security::generate_keypair();
  security::KeyPair client_keys = security::generate_keypair();
  auto keyring = std::make_shared<security::Keyring>();
  if (Status st = keyring->add(security::Role::kClient, client_keys.public_key, "bench"); !st.ok()) {
    std::fprintf(stderr, "bench-rpc: %s\n", st.to_string().c_str());
    return 1;
  }
  rpc::CurveClient client_curve{client_keys, server_keys.public_key};

  rpc::Server djinn_server({.context = &djinn_server_context, .name = "bench-echo"});
  examples::EchoService echo(djinn_server);
  rpc::ServerOptions curve_options{.context = &djinn_curve_server_context, .name = "bench-echo-curve"};
  curve_options.curve = rpc::CurveServer{server_keys, keyring};
  rpc::Server djinn_curve_server(curve_options);
  examples::EchoService curve_echo(djinn_curve_server);
  for (rpc::Server* s : {&djinn_server, &djinn_curve_server}) {
    if (Status st = s->start(); !st.ok()) {
      std::fprintf(stderr, "bench-rpc: cannot start the echo server: %s\n", st.to_string().c_str());
      return 1;
    }
  }
  bench::ZmqEchoServer raw_router(raw_server_context, zmq::socket_type::router, std::nullopt);
  bench::ZmqEchoServer raw_curve_router(raw_server_context, zmq::socket_type::router, server_keys);
  bench::ZmqEchoServer raw_rep(raw_server_context, zmq::socket_type::rep, std::nullopt);
  auto tcp_echo_started = bench::TcpEchoServer::start();
  if (!tcp_echo_started.ok()) throw std::runtime_error("TCP echo server: " + tcp_echo_started.status().to_string());
  bench::TcpEchoServer& tcp_echo = **tcp_echo_started;

  rpc::ClientOptions plain_client{.endpoint = djinn_server.endpoints()[0],
                                  .default_timeout = std::chrono::milliseconds(kClientTimeoutMs),
                                  .context = &client_context};
  rpc::ClientOptions curve_client = plain_client;
  curve_client.endpoint = djinn_curve_server.endpoints()[0];
  curve_client.curve = client_curve;

  // A failed set-up (a refused CURVE handshake) fails here, not as a page of zeros.
  for (const rpc::ClientOptions* o : {&plain_client, &curve_client}) {
    DjinnCaller probe(*o);
    if (!probe.round_trip()) {
      rpc::Client client(*o);
      capnp::MallocMessageBuilder msg(kFirstSegmentWords);
      fill_params(msg);
      std::fprintf(stderr, "bench-rpc: the echo call to %s fails: %s\n", o->endpoint.c_str(),
                   client.call(kEchoMethod, msg).status().to_string().c_str());
      return 1;
    }
  }

  auto djinn_sync = [&](const rpc::ClientOptions& o, int clients) {
    return [&o, clients](const Plan& p) {
      return run_sync(clients, p, [&o] { return std::make_unique<DjinnCaller>(o); });
    };
  };
  auto raw_sync = [&](const std::string& endpoint, zmq::socket_type type, std::optional<rpc::CurveClient> curve,
                      int clients) {
    return [&client_context, endpoint, type, curve, clients](const Plan& p) {
      return run_sync(clients, p, [&] { return std::make_unique<bench::ZmqEchoCaller>(client_context, type, endpoint, curve); });
    };
  };
  auto tcp_sync = [&](int clients) {
    return [port = tcp_echo.port(), clients](const Plan& p) {
      return run_sync(clients, p, [port] { return tcp_caller(port); });
    };
  };
  uint64_t pipelined_calls = 0, pipelined_batches = 0;
  auto djinn_pipelined = [&](const rpc::ClientOptions& o, bool count_batches) {
    return [&, count_batches](const Plan& p) {
      DjinnPipeline pipeline(o, p);
      Sample s = pipeline.run();
      if (count_batches) {
        pipelined_calls += pipeline.stats().calls;
        pipelined_batches += pipeline.stats().batches;
      }
      return s;
    };
  };

  bench::Report report("rpc");
  uint64_t total_errors = 0;
  auto figures = [&](Contender& c) {
    Figures f = figures_of(c);
    if (f.errors) std::fprintf(stderr, "bench-rpc: %s: %llu failed calls\n", c.label.c_str(),
                               static_cast<unsigned long long>(f.errors));
    total_errors += f.errors;
    return f;
  };

  // Blocking calls, plaintext, with the REQ/REP and TCP figures measured beside them.
  Figures tcp_sync_figures[2];
  Figures reqrep_figures[2];
  int sizes[2] = {1, kManyClients};
  for (int k = 0; k < 2; ++k) {
    int n = sizes[k];
    std::fprintf(stderr, "bench-rpc: blocking calls, %d client(s), plaintext\n", n);
    Contender djinn_call{"djinn rpc::Client::call", djinn_sync(plain_client, n), {}};
    Contender raw{"raw DEALER/ROUTER", raw_sync(raw_router.endpoint(), zmq::socket_type::dealer, std::nullopt, n), {}};
    Contender reqrep{"raw REQ/REP", raw_sync(raw_rep.endpoint(), zmq::socket_type::req, std::nullopt, n), {}};
    Contender tcp{"TCP ping-pong (limit)", tcp_sync(n), {}};
    run_side_by_side({&djinn_call, &raw, &reqrep, &tcp}, plan);
    Figures d = figures(djinn_call), r = figures(raw);
    reqrep_figures[k] = figures(reqrep);
    tcp_sync_figures[k] = figures(tcp);
    add_sync_results(report, "", "raw_", n, d, r, tcp_sync_figures[k]);
  }

  std::fprintf(stderr, "bench-rpc: %d calls in flight, plaintext\n", kInFlight);
  Contender djinn_pipe{"djinn rpc::Client::call_async", djinn_pipelined(plain_client, true), {}};
  Contender raw_pipe{"raw DEALER/ROUTER", [&](const Plan& p) {
                       return run_raw_pipelined(client_context, raw_router.endpoint(), std::nullopt, p);
                     }, {}};
  Contender tcp_pipe{"TCP (limit)", [&](const Plan& p) { return run_tcp_pipelined(tcp_echo.port(), p); }, {}};
  run_side_by_side({&djinn_pipe, &raw_pipe, &tcp_pipe}, plan);
  Figures tcp_pipe_figures = figures(tcp_pipe);
  std::string pipe_tag = "pipelined_" + std::to_string(kInFlight);
  report.add({pipe_tag + "_throughput", figures(djinn_pipe).throughput, "calls/s",
              bench::Reference{"raw_dealer_router_" + pipe_tag + "_throughput", figures(raw_pipe).throughput},
              bench::Reference{"tcp_" + pipe_tag + "_throughput", tcp_pipe_figures.throughput},
              bench::Target::at_least(bench::Target::Of::kPeer, 0.5)});
  report.add({pipe_tag + "_calls_per_batch",
              bench::round_to(pipelined_batches ? double(pipelined_calls) / double(pipelined_batches) : 0, 2),
              "calls", std::nullopt, std::nullopt, std::nullopt});

  for (int k = 0; k < 2; ++k) {
    std::string tag = "raw_reqrep_sync_" + bench::clients_tag(sizes[k]);
    std::string limit_tag = "tcp_pingpong_sync_" + bench::clients_tag(sizes[k]);
    const Figures& f = reqrep_figures[k];
    const Figures& t = tcp_sync_figures[k];
    report.add({tag + "_throughput", f.throughput, "calls/s", std::nullopt,
                bench::Reference{limit_tag + "_throughput", t.throughput}, std::nullopt});
    report.add({tag + "_p50_us", f.latency.p50, "us", std::nullopt,
                bench::Reference{limit_tag + "_p50_us", t.latency.p50}, std::nullopt});
    report.add({tag + "_p99_us", f.latency.p99, "us", std::nullopt,
                bench::Reference{limit_tag + "_p99_us", t.latency.p99}, std::nullopt});
  }

  // The same with CURVE on both ends; the limit stays the plaintext TCP round trip.
  for (int k = 0; k < 2; ++k) {
    int n = sizes[k];
    std::fprintf(stderr, "bench-rpc: blocking calls, %d client(s), CURVE\n", n);
    Contender djinn_call{"djinn rpc::Client::call, CURVE", djinn_sync(curve_client, n), {}};
    Contender raw{"raw DEALER/ROUTER, CURVE",
                  raw_sync(raw_curve_router.endpoint(), zmq::socket_type::dealer, client_curve, n), {}};
    run_side_by_side({&djinn_call, &raw}, plan);
    add_sync_results(report, "curve_", "raw_curve_", n, figures(djinn_call), figures(raw), tcp_sync_figures[k]);
  }
  std::fprintf(stderr, "bench-rpc: %d calls in flight, CURVE\n", kInFlight);
  Contender djinn_curve_pipe{"djinn rpc::Client::call_async, CURVE", djinn_pipelined(curve_client, false), {}};
  Contender raw_curve_pipe{"raw DEALER/ROUTER, CURVE", [&](const Plan& p) {
                             return run_raw_pipelined(client_context, raw_curve_router.endpoint(), client_curve, p);
                           }, {}};
  run_side_by_side({&djinn_curve_pipe, &raw_curve_pipe}, plan);
  report.add({"curve_" + pipe_tag + "_throughput", figures(djinn_curve_pipe).throughput, "calls/s",
              bench::Reference{"raw_curve_dealer_router_" + pipe_tag + "_throughput",
                               figures(raw_curve_pipe).throughput},
              bench::Reference{"tcp_" + pipe_tag + "_throughput", tcp_pipe_figures.throughput},
              bench::Target::at_least(bench::Target::Of::kPeer, 0.5)});

  // Stopped before the echo services they call into go away.
  djinn_curve_server.stop();
  djinn_server.stop();

  unsigned cores = std::thread::hardware_concurrency();
  int major = 0, minor = 0, patch = 0;
  zmq_version(&major, &minor, &patch);
  report.note("one process over tcp://127.0.0.1: each server (djinn rpc::Server with the echo service, raw "
              "ROUTER or REP echo loop, TCP echo) serves from a thread of its own, each client runs on a thread "
              "of its own; servers and clients use separate ZeroMQ contexts of one I/O thread each, as two "
              "processes would; libzmq " + std::to_string(major) + "." + std::to_string(minor) + "." +
              std::to_string(patch));
  report.note("this machine has " + std::to_string(cores) + " hardware threads, shared by the server thread, "
              "both ZeroMQ I/O threads and the clients: with 16 clients (and with djinn's extra client I/O "
              "thread in the pipelined runs) the figures measure contention for the cores as much as the "
              "RPC layer");
  report.note("messages: djinn sends an EchoParams of 64 bytes (a 24-byte blob) plus its request header "
              "(id, method, deadline) in the same frame, and gets an EchoResults back; raw ZeroMQ and TCP send 64-byte messages");
  report.note("per figure: " + std::to_string(plan.rounds) + " round(s) of " +
              std::to_string(bench::ms_of(plan.measure)) +
              " ms measured after " +
              std::to_string(bench::ms_of(plan.warmup)) +
              " ms of warm-up, djinn and its peers interleaved round by round; percentiles are nearest-rank "
              "over every call of every round, timed with steady_clock around each blocking call");
  report.note("limit: TCP echo with no messaging layer (one poll() server thread, blocking clients, "
              "TCP_NODELAY); with CURVE the limit is still the plaintext TCP figure");
  report.note("CURVE: the raw peers run CURVE on both ends without a ZAP handler; djinn's server checks the "
              "client's key against its keyring through its ZAP handler (at the handshake only)");
  if (quick) report.note("--quick: short runs; the targets are the issue's, for the full sizes");
  if (total_errors) report.note(std::to_string(total_errors) + " calls failed during the measured windows");
  bench::print_verdicts(report, "bench-rpc", 8, "?");
  report.print();
  return 0;
}
