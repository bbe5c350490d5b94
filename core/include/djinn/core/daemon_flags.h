// What every djinn daemon shares: how it secures its sockets (--curve-key, --keyring, --insecure,
// --plaintext-role) and how it waits for SIGINT or SIGTERM. One definition, so every daemon says
// the same thing in --help and refuses the same mistakes with the same advice.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "djinn/core/config.h"
#include "djinn/core/rpc.h"
#include "djinn/core/security.h"
#include "djinn/core/status.h"

namespace djinn {

struct ServerSecurity {
  std::optional<rpc::CurveServer> curve;  // absent: plaintext (--insecure)
  security::Role plaintext_role = security::Role::kAdmin;
  std::optional<security::KeyPair> key_pair;  // the daemon's own keys, with CURVE
};

void add_security_flags(Config& cfg);
// The settings the parsed flags ask for. A contradiction or a missing flag is INVALID_ARGUMENT
// naming the flag and what to do (CURVE is required unless --insecure: DESIGN §3, security is off
// by default only in the demo); an unreadable key or keyring file is that file's error.
Result<ServerSecurity> security_from_flags(const Config& cfg);

// Creates a service's data directory (and its parents) if missing; FAILED_PRECONDITION naming it
// otherwise. An empty path is left alone (a service in memory).
Status ensure_data_dir(const std::string& path);

// The flags naming where a daemon serves: --listen and --events with the daemon's default ports,
// and --advertise-host.
void add_endpoint_flags(Config& cfg, int rpc_port, int events_port);

// Blocks SIGINT and SIGTERM in the calling thread; call before starting any thread, so every
// thread inherits the mask and wait_for_stop_signal() receives them.
void block_stop_signals();
// Waits for SIGINT or SIGTERM and returns its name ("SIGINT" or "SIGTERM").
const char* wait_for_stop_signal();

// Raises this process's soft limit on open files to its hard limit: a daemon holds a descriptor
// per connection, per ZeroMQ socket and, in the space, per pack file, and the usual soft limit of
// 1,024 runs out long before the machine does. Returns the limit now in force.
uint64_t raise_open_file_limit();

}  // namespace djinn
