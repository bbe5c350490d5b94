// Security of DESIGN §3: CURVE key pairs and their files, the keyring of admitted client keys, and
// the ZAP handler (ZeroMQ RFC 27) that admits a CURVE client only when its key is in the keyring of
// the server socket's ZAP domain.
#include "djinn/core/security.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>
#include <sstream>
#include <stdexcept>

#include "djinn/core/files.h"
#include "djinn/core/log.h"
#include "djinn/core/thread_name.h"
#include "wire.h"

namespace djinn::security {
namespace {

constexpr size_t kZ85KeyLength = 40;
constexpr size_t kBinaryKeyLength = 32;
constexpr std::string_view kZ85Alphabet =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
// RFC 27: libzmq connects every ZAP request to this endpoint of the socket's own context.
constexpr const char* kZapEndpoint = "inproc://zeromq.zap.01";
// How long the handler thread blocks before it looks at stop_ again; bounds destructor latency.
constexpr int kZapPollMs = 100;
// Denials are logged once per (domain, key); a client with a bad key reconnects every 100 ms, so
// logging each attempt would flood the log. The set is cleared when it grows past this bound so a
// stream of random keys cannot grow it without limit.
constexpr size_t kMaxDenialsRemembered = 4096;
constexpr const char* kRoleProperty = "X-Role";
constexpr const char* kKeyFileLineHelp = "'public = <40-char Z85 key>'";

std::string trim(std::string_view s) {
  size_t b = s.find_first_not_of(" \t\r");
  if (b == std::string_view::npos) return "";
  size_t e = s.find_last_not_of(" \t\r");
  return std::string(s.substr(b, e - b + 1));
}

std::string errno_text(int err) { return std::strerror(err); }

// Owns a file descriptor.
class UniqueFd {
 public:
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  int get() const { return fd_; }
  // Closes now so the caller sees the error (close can report a failed delayed write).
  int close() {
    int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

Result<std::string> read_file(const std::string& path, const std::string& what) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    int err = errno;
    std::string msg = what + " '" + path + "': cannot open: " + errno_text(err);
    if (err == ENOENT) return not_found(msg);
    return Status(Code::kUnavailable, msg);
  }
  std::string text;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status(Code::kUnavailable, what + " '" + path + "': read failed: " + errno_text(errno));
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  return text;
}

// Writes a temp file beside `path` (created 0600 by mkstemp, then chmod-ed to `mode`), fsyncs it and
// renames it over `path`, so a reader sees the old file or the new one, never a torn one.
Status write_file_atomically(const std::string& path, const std::string& content, mode_t mode,
                             const std::string& what) {
  std::string tmp = path + ".tmp-XXXXXX";
  UniqueFd fd(::mkstemp(tmp.data()));
  auto fail = [&](const std::string& step) {
    int err = errno;
    ::unlink(tmp.c_str());
    return Status(Code::kUnavailable, what + " '" + path + "': " + step + ": " + errno_text(err));
  };
  if (fd.get() < 0) {
    int err = errno;
    return Status(Code::kUnavailable, what + " '" + path + "': cannot create a file beside it: " + errno_text(err));
  }
  if (::fchmod(fd.get(), mode) != 0) return fail("chmod");
  size_t done = 0;
  while (done < content.size()) {
    ssize_t n = ::write(fd.get(), content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail("write");
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return fail("fsync");
  if (fd.close() != 0) return fail("close");
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail("rename");
  // The rename is durable only once the directory is synced.
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  if (Status synced = files::sync_directory(dir); !synced.ok()) {
    return Status(synced.code(), what + " '" + path + "': written, but " + synced.message() +
                                     ": it may not survive a power loss; write it again");
  }
  return Status::Ok();
}

bool file_exists(const std::string& path) {
  struct stat st{};
  return ::stat(path.c_str(), &st) == 0;
}

// The `public = ...` / `secret = ...` lines of a key file.
struct KeyFileFields {
  std::string public_key;
  std::string secret_key;
};

Result<KeyFileFields> parse_key_file(const std::string& text, const std::string& path) {
  KeyFileFields fields;
  int public_line = 0;
  int secret_line = 0;
  std::istringstream in(text);
  std::string raw;
  int n = 0;
  while (std::getline(in, raw)) {
    ++n;
    std::string line = trim(raw);
    // '#' only opens a comment at the start of a line: it is a Z85 character.
    if (line.empty() || line[0] == '#') continue;
    std::string where = "key file '" + path + "': line " + std::to_string(n) + ": ";
    size_t eq = line.find('=');
    std::string name = eq == std::string::npos ? "" : trim(std::string_view(line).substr(0, eq));
    std::string value = eq == std::string::npos ? "" : trim(std::string_view(line).substr(eq + 1));
    if (name == "public") {
      if (!is_z85_key(value)) return invalid_argument(where + "expected " + kKeyFileLineHelp);
      if (public_line != 0) {
        return invalid_argument(where + "a second 'public' line (the first is line " + std::to_string(public_line) + ")");
      }
      fields.public_key = value;
      public_line = n;
    } else if (name == "secret") {
      if (!is_z85_key(value)) return invalid_argument(where + "expected 'secret = <40-char Z85 key>'");
      if (secret_line != 0) {
        return invalid_argument(where + "a second 'secret' line (the first is line " + std::to_string(secret_line) + ")");
      }
      fields.secret_key = value;
      secret_line = n;
    } else {
      return invalid_argument(where + "expected " + kKeyFileLineHelp + " or 'secret = <40-char Z85 key>'");
    }
  }
  if (public_line == 0) return invalid_argument("key file '" + path + "': no line " + kKeyFileLineHelp);
  return fields;
}

std::string z85_encode_key(const uint8_t* key) {
  char out[kZ85KeyLength + 1];
  if (zmq_z85_encode(out, key, kBinaryKeyLength) == nullptr) return "";
  return std::string(out, kZ85KeyLength);
}

// ZMTP metadata (RFC 23 §"Property"): 1-byte name length, name, 4-byte big-endian value length,
// value. libzmq adds the properties of a ZAP reply to every message from that peer.
std::string zmtp_property(std::string_view name, std::string_view value) {
  std::string out;
  out.push_back(static_cast<char>(name.size()));
  out.append(name);
  uint32_t len = static_cast<uint32_t>(value.size());
  out.push_back(static_cast<char>((len >> 24) & 0xff));
  out.push_back(static_cast<char>((len >> 16) & 0xff));
  out.push_back(static_cast<char>((len >> 8) & 0xff));
  out.push_back(static_cast<char>(len & 0xff));
  out.append(value);
  return out;
}

struct ZapReply {
  std::string status_code;
  std::string status_text;
  std::string user_id;
  std::string metadata;
};

// The handlers of all contexts, keyed by the libzmq context handle. Destroyed at exit (before the
// logger it was built after), which stops and joins every handler thread.
std::mutex g_handlers_mu;  // guards handlers()
std::map<void*, std::unique_ptr<ZapHandler>>& handlers() {
  static std::map<void*, std::unique_ptr<ZapHandler>> map;
  return map;
}

}  // namespace

std::string_view role_name(Role role) {
  switch (role) {
    case Role::kNone: return "none";
    case Role::kClient: return "client";
    case Role::kService: return "service";
    case Role::kAdmin: return "admin";
  }
  return "none";
}

std::optional<Role> parse_role(std::string_view text) {
  if (text == "admin") return Role::kAdmin;
  if (text == "service") return Role::kService;
  if (text == "client") return Role::kClient;
  return std::nullopt;
}

KeyPair generate_keypair() {
  char pub[kZ85KeyLength + 1];
  char sec[kZ85KeyLength + 1];
  if (zmq_curve_keypair(pub, sec) != 0) {
    // Only a libzmq built without CURVE support fails here; nothing secure can run then.
    throw std::runtime_error(std::string("zmq_curve_keypair: ") + zmq_strerror(zmq_errno()) +
                             " (libzmq built without CURVE?)");
  }
  return KeyPair{std::string(pub, kZ85KeyLength), std::string(sec, kZ85KeyLength)};
}

bool is_z85_key(std::string_view text) {
  if (text.size() != kZ85KeyLength) return false;
  for (char c : text) {
    if (kZ85Alphabet.find(c) == std::string_view::npos) return false;
  }
  // Some 5-char groups of valid characters overflow 32 bits; zmq_z85_decode rejects them.
  std::string copy(text);
  uint8_t bytes[kBinaryKeyLength];
  return zmq_z85_decode(bytes, copy.c_str()) != nullptr;
}

Result<std::string> public_of(std::string_view secret_z85) {
  if (!is_z85_key(secret_z85)) return invalid_argument("secret key: expected 40 characters of Z85");
  std::string secret(secret_z85);
  char pub[kZ85KeyLength + 1];
  if (zmq_curve_public(pub, secret.c_str()) != 0) {
    return internal_error(std::string("zmq_curve_public: ") + zmq_strerror(zmq_errno()));
  }
  return std::string(pub, kZ85KeyLength);
}

Result<KeyPair> load_keypair(const std::string& path) {
  auto text = read_file(path, "key file");
  if (!text.ok()) return text.status();
  auto fields = parse_key_file(*text, path);
  if (!fields.ok()) return fields.status();
  if (fields->secret_key.empty()) {
    return invalid_argument("key file '" + path +
                            "': no 'secret = <40-char Z85 key>' line (a .pub file holds only the public half)");
  }
  auto derived = public_of(fields->secret_key);
  if (!derived.ok()) return derived.status();
  if (*derived != fields->public_key) {
    return invalid_argument("key file '" + path + "': the public key does not belong to the secret key");
  }
  struct stat st{};
  if (::stat(path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    DJINN_LOG(kWarn, "security") << "key file '" << path << "' can be read by others (mode "
                                 << std::oct << (st.st_mode & 0777) << std::dec << "); run chmod 600 on it";
  }
  return KeyPair{fields->public_key, fields->secret_key};
}

Status save_keypair(const KeyPair& pair, const std::string& path) {
  if (!is_z85_key(pair.public_key) || !is_z85_key(pair.secret_key)) {
    return invalid_argument("key file '" + path + "': key pair is not two 40-char Z85 keys");
  }
  auto derived = public_of(pair.secret_key);
  if (!derived.ok()) return derived.status();
  if (*derived != pair.public_key) {
    return invalid_argument("key file '" + path + "': the public key does not belong to the secret key");
  }
  std::string pub = "# CURVE public key (Z85); give it to the keyring's owner.\npublic = " + pair.public_key + "\n";
  std::string both = "# CURVE key pair (Z85). Keep this file secret (mode 0600).\npublic = " +
                     pair.public_key + "\nsecret = " + pair.secret_key + "\n";
  DJINN_RETURN_IF_ERROR(write_file_atomically(path, both, 0600, "key file"));
  return write_file_atomically(path + ".pub", pub, 0644, "key file");
}

Result<std::string> load_public_key(const std::string& path_or_key) {
  // A Z85 key can look like a relative path ('.', '/' are Z85 characters): an existing file wins.
  if (is_z85_key(path_or_key) && !file_exists(path_or_key)) return path_or_key;
  auto text = read_file(path_or_key, "key file");
  if (!text.ok()) {
    if (text.status().code() == Code::kNotFound) {
      return not_found("'" + path_or_key + "' is neither a 40-char Z85 public key nor a readable key file");
    }
    return text.status();
  }
  auto fields = parse_key_file(*text, path_or_key);
  if (!fields.ok()) return fields.status();
  return fields->public_key;
}

// --- Keyring ---

Result<Keyring> Keyring::parse(const std::string& text, const std::string& origin) {
  Keyring ring;
  std::map<std::string, int> line_of_key;
  std::istringstream in(text);
  std::string raw;
  int n = 0;
  while (std::getline(in, raw)) {
    ++n;
    std::string line = trim(raw);
    if (line.empty() || line[0] == '#') continue;
    std::string where = "keyring '" + origin + "': line " + std::to_string(n) + ": ";
    size_t role_end = line.find_first_of(" \t");
    std::string role_text = line.substr(0, role_end);
    std::string rest = role_end == std::string::npos ? "" : trim(std::string_view(line).substr(role_end));
    size_t key_end = rest.find_first_of(" \t");
    std::string key = rest.substr(0, key_end);
    std::string name = key_end == std::string::npos ? "" : trim(std::string_view(rest).substr(key_end));
    auto role = parse_role(role_text);
    if (!role) {
      return invalid_argument(where + "unknown role '" + role_text + "' (expected admin, service or client)");
    }
    if (key.empty()) return invalid_argument(where + "expected '<role> <40-char Z85 public key> [name]'");
    if (!is_z85_key(key)) return invalid_argument(where + "'" + key + "' is not a 40-char Z85 public key");
    auto [it, inserted] = line_of_key.emplace(key, n);
    if (!inserted) {
      return invalid_argument(where + "key " + key + " is already listed on line " + std::to_string(it->second));
    }
    ring.entries_.push_back(KeyringEntry{*role, key, name});
  }
  return ring;
}

Result<Keyring> Keyring::load(const std::string& path) {
  auto text = read_file(path, "keyring");
  if (!text.ok()) return text.status();
  return parse(*text, path);
}

std::optional<KeyringEntry> Keyring::find(std::string_view public_key) const {
  for (const auto& e : entries_) {
    if (e.public_key == public_key) return e;
  }
  return std::nullopt;
}

Status Keyring::add(Role role, const std::string& public_key, const std::string& name) {
  if (role == Role::kNone) return invalid_argument("role none: expected admin, service or client");
  if (!is_z85_key(public_key)) return invalid_argument("'" + public_key + "' is not a 40-char Z85 public key");
  if (name.find_first_of("\r\n") != std::string::npos) {
    return invalid_argument("key name '" + name + "': must be a single line");
  }
  std::string trimmed = trim(name);
  for (auto& e : entries_) {
    if (e.public_key == public_key) {
      e.role = role;
      e.name = trimmed;
      return Status::Ok();
    }
  }
  entries_.push_back(KeyringEntry{role, public_key, trimmed});
  return Status::Ok();
}

bool Keyring::remove(std::string_view public_key) {
  return std::erase_if(entries_, [&](const KeyringEntry& e) { return e.public_key == public_key; }) > 0;
}

std::string Keyring::serialize() const {
  std::string out = "# djinn keyring: <role> <CURVE public key, Z85> [name]; roles: admin, service, client.\n";
  for (const auto& e : entries_) {
    out += role_name(e.role);
    out += ' ';
    out += e.public_key;
    if (!e.name.empty()) out += ' ' + e.name;
    out += '\n';
  }
  return out;
}

Status Keyring::save(const std::string& path) const {
  return write_file_atomically(path, serialize(), 0644, "keyring");
}

// --- ZAP handler ---

ZapHandler& ZapHandler::for_context(zmq::context_t& context) {
  std::lock_guard lock(g_handlers_mu);
  auto& map = handlers();
  auto& slot = map[context.handle()];
  if (slot && slot->finished_.load()) slot.reset();
  if (!slot) slot.reset(new ZapHandler(context));
  return *slot;
}

ZapHandler::ZapHandler(zmq::context_t& context) : socket_(context, zmq::socket_type::rep) {
  socket_.set(zmq::sockopt::linger, 0);
  // Bound before for_context() returns, so no CURVE server can accept a client unchecked.
  rpc::internal::past_signals([&] { socket_.bind(kZapEndpoint); });
  thread_ = std::thread([this] {
    name_this_thread("zap");
    run();
  });
}

ZapHandler::~ZapHandler() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

void ZapHandler::set_domain(const std::string& domain, std::shared_ptr<const Keyring> keyring) {
  std::lock_guard lock(mu_);
  domains_[domain] = std::move(keyring);
  ++domains_version_;
}

void ZapHandler::remove_domain(const std::string& domain) {
  std::lock_guard lock(mu_);
  domains_.erase(domain);
  ++domains_version_;
}

void ZapHandler::run() {
  // "domain client" pairs already logged since the keyrings last changed; owned by this thread.
  std::set<std::string> denials_logged;
  uint64_t denials_version = 0;
  auto deny = [&](const std::string& domain, const std::string& who, const std::string& why) {
    {
      std::lock_guard lock(mu_);
      if (denials_version != domains_version_) denials_logged.clear();
      denials_version = domains_version_;
    }
    if (denials_logged.size() >= kMaxDenialsRemembered) denials_logged.clear();
    if (denials_logged.insert(domain + " " + who).second) {
      DJINN_LOG(kWarn, "security") << "denied " << who << " in ZAP domain '" << domain << "': " << why
                                   << " (further denials of it are not logged)";
    }
    return ZapReply{"400", why, "", ""};
  };
  // RFC 27 request: version, request id, domain, address, identity, mechanism, credentials...
  auto decide = [&](const std::vector<zmq::message_t>& req) -> ZapReply {
    if (req.size() < 6) return ZapReply{"500", "malformed ZAP request", "", ""};
    if (req[0].to_string_view() != "1.0") return ZapReply{"500", "unsupported ZAP version", "", ""};
    std::string domain = req[2].to_string();
    std::string mechanism = req[5].to_string();
    if (mechanism != "CURVE") {
      return deny(domain, "a " + mechanism + " client", "mechanism " + mechanism + " is not allowed, only CURVE");
    }
    if (req.size() != 7 || req[6].size() != kBinaryKeyLength) {
      return ZapReply{"500", "malformed CURVE credentials", "", ""};
    }
    std::string key = z85_encode_key(static_cast<const uint8_t*>(req[6].data()));
    std::shared_ptr<const Keyring> keyring;
    {
      std::lock_guard lock(mu_);
      auto it = domains_.find(domain);
      if (it != domains_.end()) keyring = it->second;
    }
    if (!keyring) return deny(domain, "client key " + key, "no keyring for this domain");
    auto entry = keyring->find(key);
    if (!entry || entry->role == Role::kNone) return deny(domain, "client key " + key, "not in the keyring");
    DJINN_LOG(kDebug, "security") << "admitted client key " << key << " (" << role_name(entry->role)
                                  << (entry->name.empty() ? "" : ", " + entry->name) << ") in ZAP domain '"
                                  << domain << "'";
    return ZapReply{"200", "OK", key, zmtp_property(kRoleProperty, role_name(entry->role))};
  };

  try {
    while (!stop_.load()) {
      zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
      rpc::internal::poll_sockets(&item, 1, std::chrono::milliseconds(kZapPollMs));
      if ((item.revents & ZMQ_POLLIN) == 0) continue;
      std::vector<zmq::message_t> request;
      if (!rpc::internal::recv_parts(socket_, request, zmq::recv_flags::dontwait)) continue;
      ZapReply reply = decide(request);
      // A REP socket must answer every request, even a malformed one, to take the next.
      std::string request_id = request.size() > 1 ? request[1].to_string() : "";
      const std::string_view parts[] = {"1.0", request_id, reply.status_code, reply.status_text, reply.user_id,
                                        reply.metadata};
      for (size_t i = 0; i < std::size(parts); ++i) {
        zmq::message_t part(parts[i].data(), parts[i].size());
        rpc::internal::send_frame(socket_, part, i + 1 < std::size(parts) ? zmq::send_flags::sndmore : zmq::send_flags::none);
      }
    }
  } catch (const zmq::error_t& e) {
    // ETERM: the context is being terminated and waits for this socket to close.
    if (e.num() != ETERM) {
      DJINN_LOG(kError, "security") << "ZAP handler stopped: " << e.what();
    }
  }
  finished_.store(true);
  socket_.close();
}

std::optional<Role> role_of_message(zmq::message_t& msg) {
  const char* value = zmq_msg_gets(msg.handle(), kRoleProperty);
  if (value == nullptr) return std::nullopt;
  return parse_role(value);
}

std::string client_key_of_message(zmq::message_t& msg) {
  const char* value = zmq_msg_gets(msg.handle(), "User-Id");
  return value == nullptr ? "" : value;
}

}  // namespace djinn::security
