// libFuzzer target for the discovery decoders, which read what any host on the LAN sends: the first
// byte picks the decoder, the rest is its input. 0: a multicast packet; 1: DNS-SD TXT records
// separated by NUL bytes; 2: a djinn:// locator. Whatever a decoder accepts must encode again and
// decode to the same value. Seeds: fuzz/corpus/discovery/.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "djinn/discovery/wire.h"

namespace dd = djinn::discovery;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::span<const uint8_t> rest(data + 1, size - 1);
  const std::string_view text(reinterpret_cast<const char*>(rest.data()), rest.size());
  switch (data[0] % 3) {
    case 0: {
      djinn::Result<dd::Packet> p = dd::decode_packet(rest);
      if (!p.ok()) return 0;
      if (const auto* a = std::get_if<dd::Announcement>(&*p)) {
        djinn::Result<std::vector<uint8_t>> again = dd::encode_packet(*a);
        if (!again.ok()) std::abort();
        djinn::Result<dd::Packet> back = dd::decode_packet(*again);
        if (!back.ok() || !(std::get<dd::Announcement>(*back) == *a)) std::abort();
      } else {
        const auto& r = std::get<dd::Request>(*p);
        djinn::Result<dd::Packet> back = dd::decode_packet(dd::encode_packet(r));
        if (!back.ok() || !(std::get<dd::Request>(*back) == r)) std::abort();
      }
      return 0;
    }
    case 1: {
      std::vector<std::string> records;
      size_t at = 0;
      while (at <= text.size()) {
        size_t end = text.find('\0', at);
        if (end == std::string_view::npos) end = text.size();
        records.emplace_back(text.substr(at, end - at));
        at = end + 1;
      }
      djinn::Result<dd::Announcement> a = dd::decode_txt(records, "10.0.0.1", 4162);
      if (!a.ok()) return 0;
      djinn::Result<std::vector<std::string>> again = dd::encode_txt(*a);
      if (!again.ok()) return 0;  // a TXT set may hold what a packet's bounds refuse
      djinn::Result<dd::Announcement> back = dd::decode_txt(*again, "10.0.0.1", 4162);
      if (!back.ok() || !(*back == *a)) std::abort();
      return 0;
    }
    default: {
      djinn::Result<dd::Locator> l = dd::parse_locator(text);
      if (!l.ok()) return 0;
      djinn::Result<dd::Locator> back = dd::parse_locator(l->to_string());
      if (!back.ok() || !(*back == *l)) std::abort();
      return 0;
    }
  }
}
