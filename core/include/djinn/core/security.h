// Security of DESIGN §3: CURVE key pairs, the federation's keyring (which client keys are admitted
// and in which role), and the ZAP handler that enforces the keyring on every CURVE socket of a
// ZeroMQ context.
//
// Keyring file: one key per line, `<role> <public key, Z85, 40 chars> [name...]`, `#` comments.
// Key pair file: `public = <Z85>` and `secret = <Z85>` lines (mode 0600); its public half alone is
// a `.pub` file with the single `public = <Z85>` line.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <zmq.hpp>

#include "djinn/core/status.h"

namespace djinn::security {

// Ordered: a method that needs kService admits kService and kAdmin.
enum class Role : uint8_t { kNone = 0, kClient = 1, kService = 2, kAdmin = 3 };
std::string_view role_name(Role role);
std::optional<Role> parse_role(std::string_view text);

struct KeyPair {
  std::string public_key;  // Z85, 40 chars
  std::string secret_key;  // Z85, 40 chars
};

KeyPair generate_keypair();
bool is_z85_key(std::string_view text);
// The public key of a secret key (zmq_curve_public).
Result<std::string> public_of(std::string_view secret_z85);
Result<KeyPair> load_keypair(const std::string& path);
// Writes `path` (mode 0600, both halves) and `path + ".pub"` (public half).
Status save_keypair(const KeyPair& pair, const std::string& path);
// Reads a public key from a .pub file, a key pair file, or a literal Z85 key.
Result<std::string> load_public_key(const std::string& path_or_key);

struct KeyringEntry {
  Role role = Role::kNone;
  std::string public_key;
  std::string name;
};

class Keyring {
 public:
  static Result<Keyring> parse(const std::string& text, const std::string& origin);
  static Result<Keyring> load(const std::string& path);

  std::optional<KeyringEntry> find(std::string_view public_key) const;
  // Adds or replaces the entry for this key.
  Status add(Role role, const std::string& public_key, const std::string& name);
  bool remove(std::string_view public_key);
  const std::vector<KeyringEntry>& entries() const { return entries_; }
  std::string serialize() const;
  // Atomic (write to a temp file, fsync, rename).
  Status save(const std::string& path) const;

 private:
  std::vector<KeyringEntry> entries_;
};

// ZAP (ZeroMQ RFC 27) handler for one context, serving inproc://zeromq.zap.01 on its own thread.
// Each CURVE server socket names a ZAP domain; the handler admits a client only when its key is in
// that domain's keyring, and tells the server the client's key (User-Id) and role (metadata
// property "X-Role"). A domain with no keyring, and any mechanism but CURVE, is refused.
// libzmq admits every client when no handler is bound, so servers call for_context() before they
// bind a CURVE socket.
class ZapHandler {
 public:
  // The handler of this context, started on first use; lives as long as the process.
  static ZapHandler& for_context(zmq::context_t& context);

  void set_domain(const std::string& domain, std::shared_ptr<const Keyring> keyring);
  void remove_domain(const std::string& domain);

  ~ZapHandler();
  ZapHandler(const ZapHandler&) = delete;
  ZapHandler& operator=(const ZapHandler&) = delete;

 private:
  explicit ZapHandler(zmq::context_t& context);
  void run();

  std::mutex mu_;  // guards domains_ and domains_version_
  std::map<std::string, std::shared_ptr<const Keyring>> domains_;
  uint64_t domains_version_ = 0;  // bumped by every change, so denials are logged anew after one
  zmq::socket_t socket_;  // bound in the constructor, then used by thread_ only
  std::atomic<bool> stop_{false};
  // Set by thread_ before it closes socket_ (context terminated or stopped): a handler found
  // finished is replaced, since a new context may reuse a terminated one's address.
  std::atomic<bool> finished_{false};
  std::thread thread_;
};

// Reads the role that the ZAP handler attached to a received message; nullopt without CURVE.
std::optional<Role> role_of_message(zmq::message_t& msg);
// The client's public key (Z85) attached by the ZAP handler, or empty.
std::string client_key_of_message(zmq::message_t& msg);

}  // namespace djinn::security
