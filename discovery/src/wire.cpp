// TXT records, multicast packets and locators: encoders and the hostile-input-safe decoders.
#include "djinn/discovery/wire.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstring>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include "djinn/core/model_capnp.h"
#include "djinn/proto/discovery.capnp.h"

namespace djinn::discovery {
namespace {

std::string host_part(const std::string& host) {
  return host.find(':') != std::string::npos ? "[" + host + "]" : host;
}

std::optional<uint32_t> parse_uint(std::string_view text, uint32_t max) {
  if (text.empty() || text.size() > 10) return std::nullopt;
  uint32_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || v > max) return std::nullopt;
  return v;
}

Result<std::vector<std::string>> split_groups(std::string_view text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string_view::npos) comma = text.size();
    std::string_view g = text.substr(start, comma - start);
    if (!g.empty()) {
      DJINN_RETURN_IF_ERROR(check_group(g));
      if (out.size() == kMaxGroups) return invalid_argument("more than " + std::to_string(kMaxGroups) + " groups");
      out.emplace_back(g);
    }
    start = comma + 1;
  }
  return out;
}

Status check_text(std::string_view what, std::string_view text, size_t max) {
  if (text.size() > max) return invalid_argument(std::string(what) + " of " + std::to_string(text.size()) + " bytes: at most " + std::to_string(max));
  for (unsigned char c : text) {
    if (c < 0x20 || c == 0x7f) return invalid_argument(std::string(what) + " holds a control character");
  }
  return Status::Ok();
}

Status check_host(std::string_view host) {
  DJINN_RETURN_IF_ERROR(check_text("host", host, kMaxHostBytes));
  for (char c : host) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-' ||
              c == ':' || c == '_' || c == '%';
    if (!ok) return invalid_argument("host '" + std::string(host) + "': only letters, digits and . - : _ % are allowed");
  }
  return Status::Ok();
}

}  // namespace

std::string Announcement::rpc_endpoint() const { return "tcp://" + host_part(host) + ":" + std::to_string(rpc_port); }

std::string Announcement::events_endpoint() const {
  if (events_port == 0) return "";
  return "tcp://" + host_part(host) + ":" + std::to_string(events_port);
}

Status check_group(std::string_view group) {
  if (group.empty() || group.size() > kMaxGroupBytes) {
    return invalid_argument("group of " + std::to_string(group.size()) + " bytes: groups are 1.." + std::to_string(kMaxGroupBytes) + " bytes");
  }
  for (unsigned char c : group) {
    if (c == ',' || c <= 0x20 || c == 0x7f) {
      return invalid_argument("group '" + std::string(group) + "': no commas, spaces or control characters");
    }
  }
  return Status::Ok();
}

bool groups_match(const std::vector<std::string>& wanted, const std::vector<std::string>& served) {
  if (wanted.empty()) return true;
  return std::any_of(wanted.begin(), wanted.end(),
                     [&](const std::string& g) { return std::find(served.begin(), served.end(), g) != served.end(); });
}

Result<std::vector<std::string>> encode_txt(const Announcement& a) {
  std::vector<std::string> out;
  out.push_back("version=" + std::to_string(a.version));
  std::string groups = "groups=";
  for (size_t i = 0; i < a.groups.size(); ++i) {
    DJINN_RETURN_IF_ERROR(check_group(a.groups[i]));
    if (i) groups += ',';
    groups += a.groups[i];
  }
  if (a.groups.empty()) return invalid_argument("a lookup announces at least one group");
  if (groups.size() > 255) {
    return invalid_argument("groups take " + std::to_string(groups.size()) + " bytes in TXT: a TXT string holds at most 255");
  }
  out.push_back(std::move(groups));
  if (a.service_id) out.push_back("id=" + a.service_id->to_string());
  out.push_back("rpc=" + std::to_string(a.rpc_port));
  if (a.events_port) out.push_back("events=" + std::to_string(a.events_port));
  if (!a.name.empty()) {
    DJINN_RETURN_IF_ERROR(check_text("name", a.name, 250));
    out.push_back("name=" + a.name);
  }
  return out;
}

Result<Announcement> decode_txt(const std::vector<std::string>& records, const std::string& host, uint16_t srv_port) {
  Announcement a;
  a.host = host;
  a.rpc_port = srv_port;
  bool have_version = false, have_groups = false, have_rpc = false, have_events = false, have_id = false, have_name = false;
  for (const std::string& r : records) {
    if (r.size() > 255) return invalid_argument("a TXT string of " + std::to_string(r.size()) + " bytes: at most 255");
    size_t eq = r.find('=');
    if (eq == std::string::npos || eq == 0) continue;  // boolean attributes and junk: not ours
    std::string key = r.substr(0, eq);
    std::transform(key.begin(), key.end(), key.begin(), [](unsigned char c) { return std::tolower(c); });
    std::string_view value = std::string_view(r).substr(eq + 1);
    if (key == "version" && !have_version) {
      have_version = true;
      auto v = parse_uint(value, 65535);
      if (!v) return invalid_argument("TXT version='" + std::string(value) + "': expected a number");
      a.version = *v;
    } else if (key == "groups" && !have_groups) {
      have_groups = true;
      Result<std::vector<std::string>> g = split_groups(value);
      if (!g.ok()) return Status(g.status().code(), "TXT groups: " + g.status().message());
      a.groups = std::move(*g);
    } else if (key == "id" && !have_id) {
      have_id = true;
      std::optional<ServiceId> id = ServiceId::parse(value);
      if (!id || id->is_nil()) return invalid_argument("TXT id='" + std::string(value) + "': expected a ServiceID (8-4-4-4-12 hex)");
      a.service_id = *id;
    } else if (key == "rpc" && !have_rpc) {
      have_rpc = true;
      auto p = parse_uint(value, 65535);
      if (!p || *p == 0) return invalid_argument("TXT rpc='" + std::string(value) + "': expected a port 1..65535");
      a.rpc_port = static_cast<uint16_t>(*p);
    } else if (key == "events" && !have_events) {
      have_events = true;
      auto p = parse_uint(value, 65535);
      if (!p || *p == 0) return invalid_argument("TXT events='" + std::string(value) + "': expected a port 1..65535");
      a.events_port = static_cast<uint16_t>(*p);
    } else if (key == "name" && !have_name) {
      have_name = true;
      DJINN_RETURN_IF_ERROR(check_text("TXT name", value, kMaxNameBytes));
      a.name = std::string(value);
    }
  }
  if (!have_version) return invalid_argument("TXT has no version=: not a djinn lookup record");
  if (a.version != kProtocolVersion) {
    return invalid_argument("TXT version=" + std::to_string(a.version) + ": this build speaks version " + std::to_string(kProtocolVersion));
  }
  if (!have_groups || a.groups.empty()) return invalid_argument("TXT has no groups=: a lookup serves at least one group");
  if (a.rpc_port == 0) return invalid_argument("no RPC port (SRV port 0 and no rpc=)");
  DJINN_RETURN_IF_ERROR(check_host(a.host));
  if (a.host.empty()) return invalid_argument("no address for the lookup");
  return a;
}

std::vector<uint8_t> encode_packet(const Request& r) {
  capnp::MallocMessageBuilder msg(256);
  auto root = msg.initRoot<proto::DiscoveryPacket>();
  root.setVersion(kProtocolVersion);
  auto req = root.initRequest();
  size_t ng = std::min(r.groups.size(), kMaxGroups);
  auto groups = req.initGroups(static_cast<unsigned>(ng));
  for (size_t i = 0; i < ng; ++i) groups.set(static_cast<unsigned>(i), r.groups[i]);
  size_t nk = std::min(r.known.size(), kMaxKnown);
  auto known = req.initKnown(static_cast<unsigned>(nk));
  for (size_t i = 0; i < nk; ++i) to_capnp(r.known[i], known[static_cast<unsigned>(i)]);
  auto words = capnp::messageToFlatArray(msg);
  auto bytes = words.asBytes();
  return std::vector<uint8_t>(bytes.begin(), bytes.end());
}

Result<std::vector<uint8_t>> encode_packet(const Announcement& a) {
  if (!a.service_id) return invalid_argument("a multicast announcement carries the lookup's ServiceID");
  if (a.groups.empty() || a.groups.size() > kMaxGroups) return invalid_argument("an announcement carries 1.." + std::to_string(kMaxGroups) + " groups");
  for (const std::string& g : a.groups) DJINN_RETURN_IF_ERROR(check_group(g));
  DJINN_RETURN_IF_ERROR(check_host(a.host));
  DJINN_RETURN_IF_ERROR(check_text("name", a.name, kMaxNameBytes));
  capnp::MallocMessageBuilder msg(512);
  auto root = msg.initRoot<proto::DiscoveryPacket>();
  root.setVersion(static_cast<uint16_t>(a.version));
  auto out = root.initAnnouncement();
  to_capnp(*a.service_id, out.initServiceId());
  auto groups = out.initGroups(static_cast<unsigned>(a.groups.size()));
  for (size_t i = 0; i < a.groups.size(); ++i) groups.set(static_cast<unsigned>(i), a.groups[i]);
  out.setRpcPort(a.rpc_port);
  out.setEventsPort(a.events_port);
  out.setHost(a.host);
  out.setName(a.name);
  out.setIntervalMs(a.interval_ms);
  out.setLeaving(a.leaving);
  auto words = capnp::messageToFlatArray(msg);
  auto bytes = words.asBytes();
  if (bytes.size() > kMaxPacketBytes) return invalid_argument("announcement of " + std::to_string(bytes.size()) + " bytes: at most " + std::to_string(kMaxPacketBytes));
  return std::vector<uint8_t>(bytes.begin(), bytes.end());
}

Result<Packet> decode_packet(std::span<const uint8_t> bytes) {
  if (bytes.size() < 8 || bytes.size() > kMaxPacketBytes) {
    return invalid_argument("packet of " + std::to_string(bytes.size()) + " bytes: expected 8.." + std::to_string(kMaxPacketBytes));
  }
  if (bytes.size() % sizeof(capnp::word) != 0) return invalid_argument("packet length is not a whole number of words");
  // A copy into aligned words: the datagram buffer carries no alignment promise.
  kj::Array<capnp::word> words = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), bytes.data(), bytes.size());
  try {
    capnp::ReaderOptions options;
    options.traversalLimitInWords = words.size() * 4;
    options.nestingLimit = 8;
    capnp::FlatArrayMessageReader reader(words, options);
    auto root = reader.getRoot<proto::DiscoveryPacket>();
    if (root.getVersion() != kProtocolVersion) {
      return invalid_argument("packet version " + std::to_string(root.getVersion()) + ": this build speaks " + std::to_string(kProtocolVersion));
    }
    switch (root.which()) {
      case proto::DiscoveryPacket::REQUEST: {
        auto in = root.getRequest();
        Request r;
        auto groups = in.getGroups();
        if (groups.size() > kMaxGroups) return invalid_argument("request with " + std::to_string(groups.size()) + " groups");
        for (auto g : groups) {
          std::string_view text(g.begin(), g.size());
          DJINN_RETURN_IF_ERROR(check_group(text));
          r.groups.emplace_back(text);
        }
        auto known = in.getKnown();
        if (known.size() > kMaxKnown) return invalid_argument("request naming " + std::to_string(known.size()) + " known lookups");
        for (auto k : known) {
          Result<ServiceId> id = from_capnp(k);
          if (!id.ok()) return id.status();
          r.known.push_back(*id);
        }
        return Packet(std::move(r));
      }
      case proto::DiscoveryPacket::ANNOUNCEMENT: {
        auto in = root.getAnnouncement();
        Announcement a;
        a.version = root.getVersion();
        if (!in.hasServiceId()) return invalid_argument("announcement without a ServiceID");
        Result<ServiceId> id = from_capnp(in.getServiceId());
        if (!id.ok()) return id.status();
        if (id->is_nil()) return invalid_argument("announcement with the nil ServiceID");
        a.service_id = *id;
        auto groups = in.getGroups();
        if (groups.size() == 0 || groups.size() > kMaxGroups) {
          return invalid_argument("announcement with " + std::to_string(groups.size()) + " groups: expected 1.." + std::to_string(kMaxGroups));
        }
        for (auto g : groups) {
          std::string_view text(g.begin(), g.size());
          DJINN_RETURN_IF_ERROR(check_group(text));
          a.groups.emplace_back(text);
        }
        a.rpc_port = in.getRpcPort();
        if (a.rpc_port == 0) return invalid_argument("announcement with RPC port 0");
        a.events_port = in.getEventsPort();
        auto host = in.getHost();
        std::string_view host_text(host.begin(), host.size());
        DJINN_RETURN_IF_ERROR(check_host(host_text));
        a.host = std::string(host_text);
        auto name = in.getName();
        std::string_view name_text(name.begin(), name.size());
        DJINN_RETURN_IF_ERROR(check_text("name", name_text, kMaxNameBytes));
        a.name = std::string(name_text);
        a.interval_ms = in.getIntervalMs();
        a.leaving = in.getLeaving();
        return Packet(std::move(a));
      }
      default:
        return invalid_argument("packet of an unknown kind");
    }
  } catch (const kj::Exception& e) {
    return invalid_argument(std::string("malformed packet: ") + e.getDescription().cStr());
  }
}

std::string Locator::rpc_endpoint() const { return "tcp://" + host_part(host) + ":" + std::to_string(port); }
std::string Locator::to_string() const { return "djinn://" + host_part(host) + ":" + std::to_string(port); }

Result<Locator> parse_locator(std::string_view text) {
  const std::string original(text);
  auto bad = [&](const std::string& why) {
    return invalid_argument("locator '" + original + "': " + why + " (expected djinn://HOST[:PORT], e.g. djinn://10.0.0.5:4162)");
  };
  constexpr std::string_view kScheme = "djinn://";
  if (text.size() < kScheme.size() || !std::equal(kScheme.begin(), kScheme.end(), text.begin(), [](char a, char b) {
        return a == std::tolower(static_cast<unsigned char>(b));
      })) {
    return bad("the scheme is not djinn://");
  }
  text.remove_prefix(kScheme.size());
  if (!text.empty() && text.back() == '/') text.remove_suffix(1);
  Locator l;
  std::string_view port_text;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos) return bad("an IPv6 address without its closing ]");
    l.host = std::string(text.substr(1, close - 1));
    std::string_view rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return bad("junk after the address");
      port_text = rest.substr(1);
      if (port_text.empty()) return bad("an empty port");
    }
    if (l.host.find(':') == std::string::npos) return bad("brackets hold an IPv6 address");
  } else {
    size_t colon = text.find(':');
    l.host = std::string(text.substr(0, colon));
    if (colon != std::string_view::npos) {
      port_text = text.substr(colon + 1);
      if (port_text.empty()) return bad("an empty port");
    }
    if (l.host.find_first_of("/?#@[]") != std::string::npos) return bad("a path, query, user or bracket in the host");
  }
  if (l.host.empty()) return bad("no host");
  if (Status st = check_host(l.host); !st.ok()) return bad(st.message());
  if (!port_text.empty()) {
    auto p = parse_uint(port_text, 65535);
    if (!p || *p == 0) return bad("port '" + std::string(port_text) + "' is not 1..65535");
    l.port = static_cast<uint16_t>(*p);
  }
  return l;
}

}  // namespace djinn::discovery
