#include "djinn/core/context.h"

namespace djinn {

zmq::context_t& default_context() {
  // Never destroyed: sockets owned by static objects may outlive any destruction order we pick,
  // and zmq_ctx_term would block on them.
  static zmq::context_t* context = new zmq::context_t(1);
  return *context;
}

}  // namespace djinn
