// AvahiAnnouncer and AvahiBrowser over avahi-client. Everything Avahi calls back runs on the
// threaded poll's own thread, where no lock is needed; the destructors stop that thread before
// freeing anything. A daemon that goes away (AVAHI_ERR_DISCONNECTED) is waited for again with a new
// client in NO_FAIL mode, the way avahi-browse does it.
#include "djinn/discovery/avahi.h"

#include <atomic>
#include <map>
#include <mutex>

#include <avahi-client/client.h>
#include <avahi-client/lookup.h>
#include <avahi-client/publish.h>
#include <avahi-common/address.h>
#include <avahi-common/alternative.h>
#include <avahi-common/defs.h>
#include <avahi-common/domain.h>
#include <avahi-common/error.h>
#include <avahi-common/malloc.h>
#include <avahi-common/strlst.h>
#include <avahi-common/thread-watch.h>

#include "djinn/core/log.h"

namespace djinn::discovery {
namespace {

constexpr const char* kLog = "discovery";

struct PollDeleter {
  void operator()(AvahiThreadedPoll* p) const { avahi_threaded_poll_free(p); }
};
using PollPtr = std::unique_ptr<AvahiThreadedPoll, PollDeleter>;

std::string client_error(AvahiClient* c, int error) {
  return avahi_strerror(c ? avahi_client_errno(c) : error);
}

// The labels of an unescaped dotted name such as "h2.local" or "_djinn-lookup._tcp".
std::vector<std::string> split_labels(std::string_view dotted) {
  std::vector<std::string> labels;
  size_t at = 0;
  while (at <= dotted.size()) {
    size_t dot = dotted.find('.', at);
    if (dot == std::string_view::npos) dot = dotted.size();
    if (dot > at) labels.emplace_back(dotted.substr(at, dot - at));
    at = dot + 1;
  }
  return labels;
}

// DNS wire format of a name given as its labels (no escaping: a label may hold dots or spaces).
std::string wire_name(const std::vector<std::string>& labels) {
  std::string out;
  for (const std::string& label : labels) {
    out += static_cast<char>(label.size());
    out += label;
  }
  out += '\0';
  return out;
}

// The four records avahi_entry_group_add_service publishes (RFC 6763 §4, §9), added one by one so
// that the service's unique records (SRV, TXT) skip the probing of RFC 6762 §8.1: probing holds
// an announcement back for 750-1000 ms, most of the time from a lookup's start to a service
// joined through it. The instance name carries the lookup's ServiceID, so no other host claims
// it; a conflict that did arise is still reported as a collision and renamed.
int add_service_records(AvahiEntryGroup* group, AvahiClient* client, const std::string& instance,
                        uint16_t port, const std::vector<std::string>& txt) {
  const char* host_fqdn = avahi_client_get_host_name_fqdn(client);
  const char* domain = avahi_client_get_domain_name(client);
  if (!host_fqdn || !domain) return AVAHI_ERR_INVALID_HOST_NAME;
  char service_name[AVAHI_DOMAIN_NAME_MAX], type_name[AVAHI_DOMAIN_NAME_MAX];
  const std::string type(kServiceType);
  int r = avahi_service_name_join(service_name, sizeof service_name, instance.c_str(), type.c_str(), domain);
  if (r < 0) return r;
  r = avahi_service_name_join(type_name, sizeof type_name, nullptr, type.c_str(), domain);
  if (r < 0) return r;
  std::vector<std::string> type_labels = split_labels(type);
  for (const std::string& l : split_labels(domain)) type_labels.push_back(l);
  std::vector<std::string> service_labels{instance};
  service_labels.insert(service_labels.end(), type_labels.begin(), type_labels.end());
  const std::string service_wire = wire_name(service_labels);
  const std::string type_wire = wire_name(type_labels);

  auto add = [&](AvahiPublishFlags flags, const char* name, uint16_t rr_type, uint32_t ttl, const std::string& rdata) {
    return avahi_entry_group_add_record(group, AVAHI_IF_UNSPEC, AVAHI_PROTO_INET, flags, name, AVAHI_DNS_CLASS_IN,
                                        rr_type, ttl, rdata.data(), rdata.size());
  };
  const auto unique = AvahiPublishFlags(AVAHI_PUBLISH_UNIQUE | AVAHI_PUBLISH_NO_PROBE);
  // PTR <type> -> <instance>.<type>: shared, one per instance of the type.
  if ((r = add(AvahiPublishFlags(0), type_name, AVAHI_DNS_TYPE_PTR, AVAHI_DEFAULT_TTL, service_wire)) < 0) return r;
  std::string srv(4, '\0');  // priority 0, weight 0
  srv += static_cast<char>(port >> 8);
  srv += static_cast<char>(port & 0xff);
  srv += wire_name(split_labels(host_fqdn));
  if ((r = add(unique, service_name, AVAHI_DNS_TYPE_SRV, AVAHI_DEFAULT_TTL_HOST_NAME, srv)) < 0) return r;
  std::string txt_rdata;
  for (const std::string& t : txt) {
    if (t.size() > 255) return AVAHI_ERR_INVALID_RECORD;
    txt_rdata += static_cast<char>(t.size());
    txt_rdata += t;
  }
  if (txt_rdata.empty()) txt_rdata.assign(1, '\0');  // an empty TXT record is one empty string
  if ((r = add(unique, service_name, AVAHI_DNS_TYPE_TXT, AVAHI_DEFAULT_TTL, txt_rdata)) < 0) return r;
  // PTR _services._dns-sd._udp -> <type>: service type enumeration.
  char enum_name[AVAHI_DOMAIN_NAME_MAX];
  r = avahi_service_name_join(enum_name, sizeof enum_name, nullptr, "_services._dns-sd._udp", domain);
  if (r < 0) return r;
  return add(AvahiPublishFlags(0), enum_name, AVAHI_DNS_TYPE_PTR, AVAHI_DEFAULT_TTL, type_wire);
}

// Makes `im`'s threaded poll, connects its client and starts the poll; the client is made before
// the poll runs, so its first callbacks see a complete Impl.
template <class Impl>
Status start_poll(Impl& im) {
  im.poll.reset(avahi_threaded_poll_new());
  if (!im.poll) return internal_error("avahi_threaded_poll_new failed");
  im.connect();
  if (avahi_threaded_poll_start(im.poll.get()) < 0) {
    if (im.client) avahi_client_free(im.client);
    im.client = nullptr;
    return internal_error("avahi_threaded_poll_start failed");
  }
  return Status();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
struct AvahiAnnouncer::Impl {
  Announcement self;
  std::vector<std::string> txt;
  std::string name;
  PollPtr poll;
  AvahiClient* client = nullptr;
  AvahiEntryGroup* group = nullptr;
  std::atomic<bool> established{false};
  std::atomic<bool> running{false};
  bool warned = false;  // poll thread only

  static void on_group(AvahiEntryGroup* g, AvahiEntryGroupState state, void* data) {
    auto* im = static_cast<Impl*>(data);
    im->group = g;
    switch (state) {
      case AVAHI_ENTRY_GROUP_ESTABLISHED:
        im->established = true;
        DJINN_LOG(kInfo, kLog) << "announced over Avahi as '" << im->name << "' (" << kServiceType << ")";
        break;
      case AVAHI_ENTRY_GROUP_COLLISION: {
        // Another host took the name: publish under the next alternative, as RFC 6762 §9 asks.
        char* alt = avahi_alternative_service_name(im->name.c_str());
        DJINN_LOG(kWarn, kLog) << "service name '" << im->name << "' is taken; announcing as '" << alt << "'";
        im->name = alt;
        avahi_free(alt);
        im->established = false;
        im->publish();
        break;
      }
      case AVAHI_ENTRY_GROUP_FAILURE:
        im->established = false;
        DJINN_LOG(kWarn, kLog) << "Avahi announcement failed: "
                               << avahi_strerror(avahi_client_errno(avahi_entry_group_get_client(g)));
        break;
      default:
        break;
    }
  }

  void publish() {
    if (!client) return;
    if (!group) {
      group = avahi_entry_group_new(client, &Impl::on_group, this);
      if (!group) {
        DJINN_LOG(kWarn, kLog) << "avahi_entry_group_new: " << client_error(client, 0);
        return;
      }
    } else {
      avahi_entry_group_reset(group);
    }
    int r = add_service_records(group, client, name, self.rpc_port, txt);
    if (r < 0 && r != AVAHI_ERR_COLLISION) {
      // A daemon that refuses the records one by one still takes the service whole (with probing).
      avahi_entry_group_reset(group);
      AvahiStringList* list = nullptr;
      for (auto it = txt.rbegin(); it != txt.rend(); ++it) list = avahi_string_list_add(list, it->c_str());
      // avahi_string_list_add prepends: adding in reverse keeps the documented order.
      r = avahi_entry_group_add_service_strlst(group, AVAHI_IF_UNSPEC, AVAHI_PROTO_INET, AvahiPublishFlags(0),
                                               name.c_str(), std::string(kServiceType).c_str(), nullptr, nullptr,
                                               self.rpc_port, list);
      avahi_string_list_free(list);
    }
    if (r == AVAHI_ERR_COLLISION) {
      char* alt = avahi_alternative_service_name(name.c_str());
      name = alt;
      avahi_free(alt);
      publish();
      return;
    }
    if (r < 0) {
      DJINN_LOG(kWarn, kLog) << "publishing '" << name << "' over Avahi: " << avahi_strerror(r);
      return;
    }
    r = avahi_entry_group_commit(group);
    if (r < 0) DJINN_LOG(kWarn, kLog) << "committing the Avahi record: " << avahi_strerror(r);
  }

  static void on_client(AvahiClient* c, AvahiClientState state, void* data) {
    auto* im = static_cast<Impl*>(data);
    im->client = c;
    switch (state) {
      case AVAHI_CLIENT_S_RUNNING:
        im->running = true;
        im->publish();
        break;
      case AVAHI_CLIENT_S_COLLISION:
      case AVAHI_CLIENT_S_REGISTERING:
        // The host name is being (re)negotiated: withdraw until the daemon runs again.
        if (im->group) avahi_entry_group_reset(im->group);
        im->established = false;
        break;
      case AVAHI_CLIENT_CONNECTING:
        im->running = false;
        if (!im->warned) {
          im->warned = true;
          DJINN_LOG(kWarn, kLog) << "no avahi-daemon is running: not announced over DNS-SD until one appears";
        }
        break;
      case AVAHI_CLIENT_FAILURE: {
        im->running = false;
        im->established = false;
        int err = avahi_client_errno(c);
        if (err == AVAHI_ERR_DISCONNECTED) {
          // The daemon went away: everything of the old client is gone with it; wait for a new one.
          im->group = nullptr;
          avahi_client_free(c);
          im->client = nullptr;
          im->connect();
        } else {
          DJINN_LOG(kWarn, kLog) << "Avahi client failed: " << avahi_strerror(err);
        }
        break;
      }
    }
  }

  void connect() {
    int error = 0;
    AvahiClient* c = avahi_client_new(avahi_threaded_poll_get(poll.get()), AVAHI_CLIENT_NO_FAIL, &Impl::on_client, this, &error);
    if (!c) {
      if (!warned) {
        warned = true;
        DJINN_LOG(kWarn, kLog) << "cannot reach avahi-daemon (" << avahi_strerror(error)
                               << "): not announced over DNS-SD";
      }
      return;
    }
    client = c;
  }
};

Result<std::unique_ptr<AvahiAnnouncer>> AvahiAnnouncer::start(Announcement self, std::string instance_name) {
  Result<std::vector<std::string>> txt = encode_txt(self);
  if (!txt.ok()) return txt.status();
  if (instance_name.empty() || instance_name.size() > 63) {
    return invalid_argument("DNS-SD instance name '" + instance_name + "': 1..63 bytes");
  }
  auto im = std::make_unique<Impl>();
  im->self = std::move(self);
  im->txt = std::move(*txt);
  im->name = std::move(instance_name);
  DJINN_RETURN_IF_ERROR(start_poll(*im));
  return std::unique_ptr<AvahiAnnouncer>(new AvahiAnnouncer(std::move(im)));
}

AvahiAnnouncer::AvahiAnnouncer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

AvahiAnnouncer::~AvahiAnnouncer() {
  avahi_threaded_poll_stop(impl_->poll.get());
  // Freeing the client frees its entry group, which withdraws the record (goodbye packets).
  if (impl_->client) avahi_client_free(impl_->client);
}

bool AvahiAnnouncer::established() const { return impl_->established; }
bool AvahiAnnouncer::daemon_running() const { return impl_->running; }

// ---------------------------------------------------------------------------------------------
struct AvahiBrowser::Impl {
  AvahiBrowserOptions options;
  PollPtr poll;
  AvahiClient* client = nullptr;
  AvahiServiceBrowser* browser = nullptr;
  std::map<std::string, AvahiServiceResolver*> resolvers;  // by instance key; poll thread only
  std::atomic<bool> running{false};
  bool warned = false;

  static std::string key_of(AvahiIfIndex iface, AvahiProtocol proto, const char* name, const char* domain) {
    return std::string(name) + "|" + std::to_string(iface) + "|" + std::to_string(proto) + "|" + domain;
  }

  void unavailable(const std::string& why) {
    if (warned) return;
    warned = true;
    if (options.on_unavailable) options.on_unavailable(why);
  }

  static void on_resolved(AvahiServiceResolver*, AvahiIfIndex iface, AvahiProtocol proto, AvahiResolverEvent event,
                          const char* name, const char*, const char* domain, const char*, const AvahiAddress* address,
                          uint16_t port, AvahiStringList* txt, AvahiLookupResultFlags, void* data) {
    auto* im = static_cast<Impl*>(data);
    std::string key = key_of(iface, proto, name, domain);
    if (event != AVAHI_RESOLVER_FOUND || !address) {
      DJINN_LOG(kDebug, kLog) << "resolving '" << name << "' failed: " << avahi_strerror(avahi_client_errno(im->client));
      return;
    }
    char addr[AVAHI_ADDRESS_STR_MAX];
    avahi_address_snprint(addr, sizeof addr, address);
    std::vector<std::string> records;
    for (AvahiStringList* l = txt; l; l = avahi_string_list_get_next(l)) {
      records.emplace_back(reinterpret_cast<const char*>(avahi_string_list_get_text(l)), avahi_string_list_get_size(l));
    }
    Result<Announcement> a = decode_txt(records, addr, port);
    if (!a.ok()) {
      DJINN_LOG(kDebug, kLog) << "ignoring '" << name << "' at " << addr << ": " << a.status().message();
      return;
    }
    if (im->options.on_found) im->options.on_found(key, *a);
  }

  static void on_browse(AvahiServiceBrowser*, AvahiIfIndex iface, AvahiProtocol proto, AvahiBrowserEvent event,
                        const char* name, const char* type, const char* domain, AvahiLookupResultFlags, void* data) {
    auto* im = static_cast<Impl*>(data);
    switch (event) {
      case AVAHI_BROWSER_NEW: {
        std::string key = key_of(iface, proto, name, domain);
        if (im->resolvers.count(key)) break;
        // The resolver stays open until the instance is removed, so a changed TXT is seen too.
        AvahiServiceResolver* r = avahi_service_resolver_new(im->client, iface, proto, name, type, domain,
                                                             AVAHI_PROTO_INET, AvahiLookupFlags(0), &Impl::on_resolved, im);
        if (!r) {
          DJINN_LOG(kWarn, kLog) << "cannot resolve '" << name << "': " << avahi_strerror(avahi_client_errno(im->client));
          break;
        }
        im->resolvers[key] = r;
        break;
      }
      case AVAHI_BROWSER_REMOVE: {
        std::string key = key_of(iface, proto, name, domain);
        auto it = im->resolvers.find(key);
        if (it != im->resolvers.end()) {
          avahi_service_resolver_free(it->second);
          im->resolvers.erase(it);
        }
        if (im->options.on_removed) im->options.on_removed(key);
        break;
      }
      case AVAHI_BROWSER_FAILURE:
        DJINN_LOG(kWarn, kLog) << "Avahi browsing failed: " << avahi_strerror(avahi_client_errno(im->client));
        break;
      default:
        break;
    }
  }

  void drop_browsing() {
    for (auto& [key, r] : resolvers) {
      avahi_service_resolver_free(r);
      if (options.on_removed) options.on_removed(key);
    }
    resolvers.clear();
    if (browser) avahi_service_browser_free(browser);
    browser = nullptr;
  }

  static void on_client(AvahiClient* c, AvahiClientState state, void* data) {
    auto* im = static_cast<Impl*>(data);
    im->client = c;
    switch (state) {
      case AVAHI_CLIENT_S_RUNNING:
        im->running = true;
        if (!im->browser) {
          im->browser = avahi_service_browser_new(c, AVAHI_IF_UNSPEC, AVAHI_PROTO_INET, std::string(kServiceType).c_str(),
                                                  nullptr, AvahiLookupFlags(0), &Impl::on_browse, im);
          if (!im->browser) DJINN_LOG(kWarn, kLog) << "avahi_service_browser_new: " << avahi_strerror(avahi_client_errno(c));
        }
        break;
      case AVAHI_CLIENT_CONNECTING:
        im->running = false;
        im->unavailable("no avahi-daemon is running");
        break;
      case AVAHI_CLIENT_FAILURE: {
        im->running = false;
        int err = avahi_client_errno(c);
        if (err == AVAHI_ERR_DISCONNECTED) {
          // Freeing the client frees its browser and resolvers; forget them first.
          im->browser = nullptr;
          for (auto& [key, r] : im->resolvers) {
            if (im->options.on_removed) im->options.on_removed(key);
          }
          im->resolvers.clear();
          avahi_client_free(c);
          im->client = nullptr;
          im->connect();
        } else {
          DJINN_LOG(kWarn, kLog) << "Avahi client failed: " << avahi_strerror(err);
        }
        break;
      }
      default:
        break;
    }
  }

  void connect() {
    int error = 0;
    AvahiClient* c = avahi_client_new(avahi_threaded_poll_get(poll.get()), AVAHI_CLIENT_NO_FAIL, &Impl::on_client, this, &error);
    if (!c) {
      unavailable(std::string("cannot reach avahi-daemon: ") + avahi_strerror(error));
      return;
    }
    client = c;
  }
};

Result<std::unique_ptr<AvahiBrowser>> AvahiBrowser::start(AvahiBrowserOptions options) {
  auto im = std::make_unique<Impl>();
  im->options = std::move(options);
  DJINN_RETURN_IF_ERROR(start_poll(*im));
  return std::unique_ptr<AvahiBrowser>(new AvahiBrowser(std::move(im)));
}

AvahiBrowser::AvahiBrowser(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

AvahiBrowser::~AvahiBrowser() {
  avahi_threaded_poll_stop(impl_->poll.get());
  for (auto& [key, r] : impl_->resolvers) avahi_service_resolver_free(r);
  if (impl_->browser) avahi_service_browser_free(impl_->browser);
  if (impl_->client) avahi_client_free(impl_->client);
}

bool AvahiBrowser::daemon_running() const { return impl_->running; }

}  // namespace djinn::discovery
