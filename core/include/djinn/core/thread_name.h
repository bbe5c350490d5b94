// Names the calling thread, so `top -H`, perf and gdb tell a daemon's threads apart.
#pragma once

#include <pthread.h>

#include <string>
#include <string_view>

namespace djinn {

inline void name_this_thread(std::string_view name) {
  std::string short_name(name.substr(0, 15));  // the kernel keeps 15 bytes
  pthread_setname_np(pthread_self(), short_name.c_str());
}

}  // namespace djinn
