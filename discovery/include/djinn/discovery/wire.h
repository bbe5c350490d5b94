// What lookup services say about themselves and how clients name them (DESIGN §5): the
// Announcement carried by DNS-SD TXT records and by multicast packets, the packets of the UDP
// multicast fallback, and unicast locators (djinn://host:port). Every decoder here takes untrusted
// bytes from the network: it checks everything, never throws and never reads past its input.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "djinn/core/model.h"
#include "djinn/core/status.h"

namespace djinn::discovery {

// DNS-SD service type of a lookup service.
inline constexpr std::string_view kServiceType = "_djinn-lookup._tcp";
// Version of the TXT format and of the multicast packets.
inline constexpr uint32_t kProtocolVersion = 1;
// The multicast fallback's group and port: IPv4 organization-local scope (RFC 2365, inside the
// administratively scoped 239.0.0.0/8), so routers at the site's edge never forward it; 4160 is the
// port Jini's discovery used.
inline constexpr std::string_view kMulticastGroup = "239.255.41.60";
inline constexpr uint16_t kMulticastPort = 4160;
// Largest datagram sent or accepted.
inline constexpr size_t kMaxPacketBytes = 4096;
// A lookup's RPC port when a locator names none (djinn-lookup's default --listen port).
inline constexpr uint16_t kDefaultLookupPort = 4162;
// Bounds on what an announcement may carry.
inline constexpr size_t kMaxGroups = 64;
inline constexpr size_t kMaxGroupBytes = 255;
inline constexpr size_t kMaxNameBytes = 255;
inline constexpr size_t kMaxHostBytes = 255;
inline constexpr size_t kMaxKnown = 256;

// A lookup service as it announces itself.
struct Announcement {
  uint32_t version = kProtocolVersion;
  std::optional<ServiceId> service_id;  // always in packets; a TXT record may lack it
  std::vector<std::string> groups;
  std::string host;          // the address to dial (from the packet, its source, or the resolver)
  uint16_t rpc_port = 0;
  uint16_t events_port = 0;  // 0: not said
  std::string name;
  uint32_t interval_ms = 0;  // multicast: how often it announces (0: it does not)
  bool leaving = false;      // multicast: its last announcement

  // "tcp://host:port" of the registrar (IPv6 hosts in brackets).
  std::string rpc_endpoint() const;
  std::string events_endpoint() const;  // empty when events_port is 0
  bool operator==(const Announcement&) const = default;
};

// A group name: 1..255 bytes, no comma, no whitespace, no control character.
Status check_group(std::string_view group);
// Whether a lookup serving `served` is wanted by a client of `wanted` groups (empty: any group).
bool groups_match(const std::vector<std::string>& wanted, const std::vector<std::string>& served);

// --- DNS-SD TXT records (one "key=value" string each, at most 255 bytes):
//   version=1                  required; records of another version are not ours to read
//   groups=public,lab          required; the served groups, comma-separated
//   id=<ServiceID>             the lookup's ServiceID (8-4-4-4-12)
//   rpc=<port>                 the registrar's RPC port; absent: the SRV record's port
//   events=<port>              its event port
//   name=<text>                its djinn.attr.Name
// Unknown keys are ignored (later versions may add some); a repeated key keeps its first value,
// as RFC 6763 §6.4 says.
Result<std::vector<std::string>> encode_txt(const Announcement& a);
// `host` and `srv_port` come from the resolver.
Result<Announcement> decode_txt(const std::vector<std::string>& records, const std::string& host, uint16_t srv_port);

// --- Multicast packets (discovery/proto/discovery.capnp).
struct Request {
  std::vector<std::string> groups;  // empty: every group
  std::vector<ServiceId> known;     // lookups that need not answer
  bool operator==(const Request&) const = default;
};
using Packet = std::variant<Request, Announcement>;

std::vector<uint8_t> encode_packet(const Request& r);
// Fails when the announcement breaks a bound (too many groups, a bad group, no ServiceID).
Result<std::vector<uint8_t>> encode_packet(const Announcement& a);
// INVALID_ARGUMENT for anything that is not a well-formed packet of our version, within bounds.
// An announcement's empty host stays empty: the receiver fills in the datagram's source.
Result<Packet> decode_packet(std::span<const uint8_t> bytes);

// --- Unicast locators: djinn://host[:port] (Jini's jini://host:port). host is a name, an IPv4
// address or an IPv6 address in brackets; the port defaults to 4162. Nothing may follow but a
// single "/".
struct Locator {
  std::string host;
  uint16_t port = kDefaultLookupPort;
  std::string rpc_endpoint() const;  // tcp://host:port
  std::string to_string() const;     // djinn://host:port
  bool operator==(const Locator&) const = default;
};
Result<Locator> parse_locator(std::string_view text);

}  // namespace djinn::discovery
