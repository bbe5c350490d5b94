// djinn-keys: makes CURVE key pairs and edits the federation's keyring (DESIGN §3), the files that
// daemons read to encrypt their sockets and to decide which client keys they admit, in which role.
// Exit codes: 0 done, 1 failed (I/O, bad file), 2 usage error.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <sys/stat.h>

#include "djinn/core/config.h"
#include "djinn/core/security.h"

namespace {

using djinn::Config;
using djinn::Status;
namespace security = djinn::security;

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

constexpr const char* kOverallUsage =
    "usage: djinn-keys COMMAND [options]\n"
    "\n"
    "CURVE key pairs and keyrings for djinn's encrypted, authenticated sockets.\n"
    "\n"
    "commands:\n"
    "  generate FILE [--force]          write a new key pair to FILE (mode 0600) and its public half\n"
    "                                   to FILE.pub; print the public key\n"
    "  public FILE                      print the public key of a key pair or .pub file\n"
    "  keyring add --keyring PATH --role ROLE KEY_OR_PUBFILE [--name NAME]\n"
    "                                   admit a client key in a role (admin, service, client);\n"
    "                                   creates the keyring if missing\n"
    "  keyring remove --keyring PATH KEY_OR_PUBFILE\n"
    "                                   stop admitting a key\n"
    "  keyring list --keyring PATH      print the keyring's entries\n"
    "\n"
    "Run `djinn-keys COMMAND --help` for a command's options.\n";

int fail(const std::string& command, const std::string& message) {
  std::fprintf(stderr, "%s: %s\n", command.c_str(), message.c_str());
  return kExitFailure;
}

int usage_error(const std::string& command, const std::string& message) {
  std::fprintf(stderr, "%s: %s (see %s --help)\n", command.c_str(), message.c_str(), command.c_str());
  return kExitUsage;
}

bool path_exists(const std::string& path) {
  struct stat st{};
  return ::stat(path.c_str(), &st) == 0;
}

// Parses a command's flags; argv[0] is the command word. Returns -1 to go on, else an exit code.
int parse_command(Config& cfg, int argc, const char* const* argv) {
  Status st = cfg.parse(argc, argv);
  if (!st.ok()) return cfg.exit_code(st);
  return -1;
}

int run_generate(int argc, const char* const* argv) {
  const std::string cmd = "djinn-keys generate";
  Config cfg(cmd,
             "arguments: FILE\n\n"
             "Writes a new CURVE key pair to FILE (mode 0600, keep it secret) and its public half to\n"
             "FILE.pub, then prints the public key.");
  cfg.add_bool("force", false, "replace FILE and FILE.pub if they exist");
  if (int rc = parse_command(cfg, argc, argv); rc >= 0) return rc;
  if (cfg.positional().size() != 1) return usage_error(cmd, "expected one FILE argument");
  const std::string& file = cfg.positional()[0];
  if (!cfg.get_bool("force")) {
    for (const std::string& p : {file, file + ".pub"}) {
      if (path_exists(p)) return fail(cmd, "'" + p + "' exists; pass --force to replace it");
    }
  }
  security::KeyPair pair = security::generate_keypair();
  if (Status st = security::save_keypair(pair, file); !st.ok()) return fail(cmd, st.message());
  std::printf("%s\n", pair.public_key.c_str());
  return 0;
}

int run_public(int argc, const char* const* argv) {
  const std::string cmd = "djinn-keys public";
  Config cfg(cmd,
             "arguments: FILE\n\n"
             "Prints the public key of a key pair file or of its .pub file.");
  if (int rc = parse_command(cfg, argc, argv); rc >= 0) return rc;
  if (cfg.positional().size() != 1) return usage_error(cmd, "expected one FILE argument");
  const std::string& file = cfg.positional()[0];
  if (!path_exists(file)) return fail(cmd, "key file '" + file + "' does not exist");
  auto key = security::load_public_key(file);
  if (!key.ok()) return fail(cmd, key.status().message());
  std::printf("%s\n", key->c_str());
  return 0;
}

void add_keyring_flag(Config& cfg) {
  cfg.add_string("keyring", "", "the keyring file (one '<role> <public key> [name]' per line)");
}

// Loads the keyring named by --keyring; a missing file is an empty keyring when `may_be_missing`.
int load_keyring(const std::string& cmd, const Config& cfg, bool may_be_missing, security::Keyring* out) {
  const std::string& path = cfg.get_string("keyring");
  auto ring = security::Keyring::load(path);
  if (ring.ok()) {
    *out = std::move(ring).value();
    return -1;
  }
  if (may_be_missing && ring.status().code() == djinn::Code::kNotFound) {
    *out = security::Keyring();
    return -1;
  }
  return fail(cmd, ring.status().message());
}

int run_keyring_add(int argc, const char* const* argv) {
  const std::string cmd = "djinn-keys keyring add";
  Config cfg(cmd,
             "arguments: KEY_OR_PUBFILE (--keyring and --role are required)\n\n"
             "Admits a client key (a 40-char Z85 key, or a key pair or .pub file) in a role; replaces\n"
             "the entry if the key is already there. Creates the keyring if it does not exist.");
  add_keyring_flag(cfg);
  cfg.add_string("role", "", "admin, service or client (a service may register and migrate)");
  cfg.add_string("name", "", "a label for the key, e.g. the host or person it belongs to");
  if (int rc = parse_command(cfg, argc, argv); rc >= 0) return rc;
  if (cfg.get_string("keyring").empty()) return usage_error(cmd, "--keyring PATH is required");
  if (cfg.get_string("role").empty()) return usage_error(cmd, "--role is required (admin, service or client)");
  auto role = security::parse_role(cfg.get_string("role"));
  if (!role) return usage_error(cmd, "--role '" + cfg.get_string("role") + "': expected admin, service or client");
  if (cfg.positional().size() != 1) return usage_error(cmd, "expected one KEY_OR_PUBFILE argument");
  auto key = security::load_public_key(cfg.positional()[0]);
  if (!key.ok()) return fail(cmd, key.status().message());
  security::Keyring ring;
  if (int rc = load_keyring(cmd, cfg, /*may_be_missing=*/true, &ring); rc >= 0) return rc;
  bool replaced = ring.find(*key).has_value();
  if (Status st = ring.add(*role, *key, cfg.get_string("name")); !st.ok()) return fail(cmd, st.message());
  if (Status st = ring.save(cfg.get_string("keyring")); !st.ok()) return fail(cmd, st.message());
  std::printf("%s %s as %s in %s\n", replaced ? "replaced" : "added", key->c_str(),
              std::string(security::role_name(*role)).c_str(), cfg.get_string("keyring").c_str());
  return 0;
}

int run_keyring_remove(int argc, const char* const* argv) {
  const std::string cmd = "djinn-keys keyring remove";
  Config cfg(cmd,
             "arguments: KEY_OR_PUBFILE (--keyring is required)\n\n"
             "Stops admitting a key. Servers that already read the keyring keep admitting it until\n"
             "they read it again.");
  add_keyring_flag(cfg);
  if (int rc = parse_command(cfg, argc, argv); rc >= 0) return rc;
  if (cfg.get_string("keyring").empty()) return usage_error(cmd, "--keyring PATH is required");
  if (cfg.positional().size() != 1) return usage_error(cmd, "expected one KEY_OR_PUBFILE argument");
  auto key = security::load_public_key(cfg.positional()[0]);
  if (!key.ok()) return fail(cmd, key.status().message());
  security::Keyring ring;
  if (int rc = load_keyring(cmd, cfg, /*may_be_missing=*/false, &ring); rc >= 0) return rc;
  if (!ring.remove(*key)) return fail(cmd, "key " + *key + " is not in keyring '" + cfg.get_string("keyring") + "'");
  if (Status st = ring.save(cfg.get_string("keyring")); !st.ok()) return fail(cmd, st.message());
  std::printf("removed %s from %s\n", key->c_str(), cfg.get_string("keyring").c_str());
  return 0;
}

int run_keyring_list(int argc, const char* const* argv) {
  const std::string cmd = "djinn-keys keyring list";
  Config cfg(cmd,
             "arguments: none (--keyring is required)\n\n"
             "Prints one '<role> <public key> [name]' line per admitted key.");
  add_keyring_flag(cfg);
  if (int rc = parse_command(cfg, argc, argv); rc >= 0) return rc;
  if (cfg.get_string("keyring").empty()) return usage_error(cmd, "--keyring PATH is required");
  if (!cfg.positional().empty()) return usage_error(cmd, "takes no arguments besides --keyring");
  security::Keyring ring;
  if (int rc = load_keyring(cmd, cfg, /*may_be_missing=*/false, &ring); rc >= 0) return rc;
  for (const auto& e : ring.entries()) {
    std::printf("%-7s %s%s%s\n", std::string(security::role_name(e.role)).c_str(), e.public_key.c_str(),
                e.name.empty() ? "" : " ", e.name.c_str());
  }
  return 0;
}

bool is_help(const char* arg) { return std::strcmp(arg, "--help") == 0 || std::strcmp(arg, "-h") == 0; }

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kOverallUsage, stderr);
    return kExitUsage;
  }
  std::string command = argv[1];
  if (is_help(argv[1]) || command == "help") {
    std::fputs(kOverallUsage, stdout);
    return 0;
  }
  // Each command parses its own flags; its argv starts at the command word.
  if (command == "generate") return run_generate(argc - 1, argv + 1);
  if (command == "public") return run_public(argc - 1, argv + 1);
  if (command == "keyring") {
    if (argc < 3 || is_help(argv[2])) {
      std::fputs(kOverallUsage, argc < 3 ? stderr : stdout);
      return argc < 3 ? kExitUsage : 0;
    }
    std::string sub = argv[2];
    if (sub == "add") return run_keyring_add(argc - 2, argv + 2);
    if (sub == "remove") return run_keyring_remove(argc - 2, argv + 2);
    if (sub == "list") return run_keyring_list(argc - 2, argv + 2);
    std::fprintf(stderr, "djinn-keys keyring: unknown command '%s'; expected add, remove or list (see djinn-keys --help)\n",
                 sub.c_str());
    return kExitUsage;
  }
  std::fprintf(stderr, "djinn-keys: unknown command '%s'; expected generate, public or keyring (see djinn-keys --help)\n",
               command.c_str());
  return kExitUsage;
}
