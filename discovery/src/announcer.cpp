// LookupAnnouncer: Avahi and multicast announcers side by side, each optional.
#include "djinn/discovery/announcer.h"

#include <charconv>

#include "djinn/core/log.h"
#include "djinn/discovery/avahi.h"

namespace djinn::discovery {

struct LookupAnnouncer::Impl {
  std::unique_ptr<AvahiAnnouncer> avahi;
  std::unique_ptr<MulticastAnnouncer> multicast;
};

Result<std::unique_ptr<LookupAnnouncer>> LookupAnnouncer::start(AnnouncerOptions options) {
  Announcement& self = options.self;
  if (!self.service_id || self.service_id->is_nil()) return invalid_argument("a lookup announces its ServiceID");
  if (self.groups.empty()) return invalid_argument("a lookup announces at least one group");
  for (const std::string& g : self.groups) DJINN_RETURN_IF_ERROR(check_group(g));
  if (self.rpc_port == 0) return invalid_argument("a lookup announces its RPC port (not 0)");
  auto im = std::make_unique<Impl>();
  if (options.avahi) {
    std::string instance = options.instance_name;
    if (instance.empty()) {
      instance = (self.name.empty() ? std::string("lookup") : self.name).substr(0, 50) + " " + self.service_id->to_string().substr(0, 8);
    }
    Result<std::unique_ptr<AvahiAnnouncer>> a = AvahiAnnouncer::start(self, instance);
    if (!a.ok()) return a.status();
    im->avahi = std::move(*a);
  }
  if (options.multicast) {
    Result<std::unique_ptr<MulticastAnnouncer>> m = MulticastAnnouncer::start(self, options.interval, options.multicast_options);
    if (m.ok()) {
      im->multicast = std::move(*m);
    } else if (m.status().code() == Code::kInvalidArgument || m.status().code() == Code::kNotFound) {
      return m.status();
    } else {
      DJINN_LOG(kWarn, "discovery") << "no multicast announcements: " << m.status().message()
                                    << (options.avahi ? "; announced over Avahi and reachable by djinn:// locators"
                                                      : "; reachable by djinn:// locators only");
    }
  }
  return std::unique_ptr<LookupAnnouncer>(new LookupAnnouncer(std::move(im)));
}

LookupAnnouncer::LookupAnnouncer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LookupAnnouncer::~LookupAnnouncer() = default;
bool LookupAnnouncer::avahi_active() const { return impl_->avahi != nullptr; }
bool LookupAnnouncer::multicast_active() const { return impl_->multicast != nullptr; }

std::optional<std::pair<std::string, uint16_t>> split_tcp_endpoint(const std::string& endpoint) {
  constexpr std::string_view kTcp = "tcp://";
  if (endpoint.rfind(kTcp, 0) != 0) return std::nullopt;
  std::string rest = endpoint.substr(kTcp.size());
  size_t colon = rest.rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  std::string host = rest.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  std::string_view port_text = std::string_view(rest).substr(colon + 1);
  unsigned port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || end != port_text.data() + port_text.size() || port == 0 || port > 65535 || host.empty()) {
    return std::nullopt;
  }
  return std::make_pair(host, static_cast<uint16_t>(port));
}

}  // namespace djinn::discovery
