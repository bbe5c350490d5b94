// The process-wide ZeroMQ context that servers, clients and publishers use unless given another.
#pragma once

#include <zmq.hpp>

namespace djinn {

zmq::context_t& default_context();

}  // namespace djinn
