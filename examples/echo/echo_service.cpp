#include "echo_service.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "djinn/examples/echo.capnp.h"

namespace djinn::examples {

// Answers echo.later from a thread of its own, the way a blocking take is answered by a write.
struct EchoService::Later {
  std::mutex mu;  // guards queue, stop
  std::condition_variable cv;
  std::deque<std::pair<std::string, rpc::Responder>> queue;
  bool stop = false;
  std::thread thread{[this] { run(); }};

  void run() {
    std::unique_lock lock(mu);
    for (;;) {
      cv.wait(lock, [&] { return stop || !queue.empty(); });
      if (stop) return;
      auto [text, responder] = std::move(queue.front());
      queue.pop_front();
      lock.unlock();
      capnp::MallocMessageBuilder results;
      results.initRoot<EchoResults>().setText(text);
      responder.reply(Status::Ok(), results);
      lock.lock();
    }
  }
  ~Later() {
    {
      std::lock_guard lock(mu);
      stop = true;
    }
    cv.notify_all();
    thread.join();
  }
};

EchoService::EchoService(rpc::Server& server) : later_(std::make_unique<Later>()) {
  auto echo = [this](const rpc::CallContext&, EchoParams::Reader p, EchoResults::Builder r) {
    r.setText(p.getText());
    r.setBlob(p.getBlob());
    r.setServed(++served_);
    return Status::Ok();
  };
  server.method<EchoParams, EchoResults>("echo.echo", echo);
  server.method<EchoParams, EchoResults>("echo.admin", echo, {.min_role = security::Role::kAdmin});
  server.method<EchoParams, EchoResults>(
      "echo.slow",
      [this](const rpc::CallContext&, EchoParams::Reader p, EchoResults::Builder r) {
        std::this_thread::sleep_for(std::chrono::milliseconds(p.getSleepMillis()));
        r.setText(p.getText());
        r.setServed(++served_);
        return Status::Ok();
      },
      {.blocking = true});
  server.method<Chain, DepthResults>("echo.depth",
                                     [](const rpc::CallContext&, Chain::Reader c, DepthResults::Builder r) {
                                       uint32_t depth = 0;
                                       while (c.hasNext()) {
                                         c = c.getNext();
                                         ++depth;
                                       }
                                       r.setDepth(depth);
                                       return Status::Ok();
                                     });
  server.handle_deferred("echo.later", [this](const rpc::CallContext&, capnp::MessageReader& params,
                                              rpc::Responder responder) {
    std::string text = params.getRoot<EchoParams>().getText();
    ++served_;
    {
      std::lock_guard lock(later_->mu);
      later_->queue.emplace_back(std::move(text), std::move(responder));
    }
    later_->cv.notify_one();
  });
}

EchoService::~EchoService() = default;

}  // namespace djinn::examples
