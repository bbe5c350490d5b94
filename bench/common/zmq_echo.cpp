// A bare ZeroMQ echo on loopback: the transport's own limit for request/answer figures.
#include "zmq_echo.h"

#include <iterator>
#include <vector>

#include <zmq_addon.hpp>

namespace djinn::bench {

namespace {
// How often the idle server loop looks at its stop flag.
constexpr int kServerPollMs = 100;
constexpr int kClientTimeoutMs = 5000;
}  // namespace

ZmqEchoServer::ZmqEchoServer(zmq::context_t& context, zmq::socket_type type,
                             const std::optional<security::KeyPair>& curve)
    : socket_(context, type) {
  socket_.set(zmq::sockopt::linger, 0);
  socket_.set(zmq::sockopt::rcvtimeo, kServerPollMs);
  if (curve) {
    socket_.set(zmq::sockopt::curve_server, true);
    socket_.set(zmq::sockopt::curve_secretkey, curve->secret_key);
  }
  socket_.bind("tcp://127.0.0.1:*");
  endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
  thread_ = std::thread([this] { run(); });
}

ZmqEchoServer::~ZmqEchoServer() {
  stop_.store(true);
  thread_.join();
}

void ZmqEchoServer::run() {
  std::vector<zmq::message_t> parts;
  while (!stop_.load(std::memory_order_relaxed)) {
    parts.clear();
    // ROUTER: [routing id][payload] back to the sender; REP: [payload], envelope kept by REP.
    if (!zmq::recv_multipart(socket_, std::back_inserter(parts))) continue;
    zmq::send_multipart(socket_, parts);
  }
}

zmq::socket_t zmq_echo_client_socket(zmq::context_t& context, zmq::socket_type type, const std::string& endpoint,
                                     const std::optional<rpc::CurveClient>& curve) {
  zmq::socket_t s(context, type);
  s.set(zmq::sockopt::linger, 0);
  s.set(zmq::sockopt::rcvtimeo, kClientTimeoutMs);
  if (curve) {
    s.set(zmq::sockopt::curve_serverkey, curve->server_public_key);
    s.set(zmq::sockopt::curve_publickey, curve->client.public_key);
    s.set(zmq::sockopt::curve_secretkey, curve->client.secret_key);
  }
  s.connect(endpoint);
  return s;
}

ZmqEchoCaller::ZmqEchoCaller(zmq::context_t& context, zmq::socket_type type, const std::string& endpoint,
                             const std::optional<rpc::CurveClient>& curve)
    : socket_(zmq_echo_client_socket(context, type, endpoint, curve)) {
  payload_.fill('x');
}

bool ZmqEchoCaller::round_trip() {
  try {
    if (!socket_.send(zmq::buffer(payload_), zmq::send_flags::none)) return false;
    zmq::message_t reply;
    return socket_.recv(reply) && reply.size() == payload_.size();
  } catch (const zmq::error_t&) {
    return false;  // a REQ that lost its reply can send no more; counted as errors
  }
}

}  // namespace djinn::bench
