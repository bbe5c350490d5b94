// The wire formats of discovery: TXT records, multicast packets (round trips, and hostile input
// that must be rejected without a crash or a hang), unicast locators.
#include <doctest/doctest.h>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "djinn/discovery/announcer.h"
#include "djinn/discovery/wire.h"
#include "djinn/proto/discovery.capnp.h"
#include "support/test_support.h"

using namespace djinn;
using namespace djinn::discovery;

namespace {

Announcement sample() {
  Announcement a;
  a.service_id = ServiceId::random();
  a.groups = {"public", "lab"};
  a.host = "10.77.0.1";
  a.rpc_port = 4162;
  a.events_port = 4163;
  a.name = "lookup-a";
  return a;
}

}  // namespace

TEST_CASE("TXT: a round trip keeps every field; the SRV port stands in for rpc=") {
  Announcement a = sample();
  auto txt = encode_txt(a);
  REQUIRE(txt.ok());
  CHECK(txt->front() == "version=1");
  CHECK(std::find(txt->begin(), txt->end(), "groups=public,lab") != txt->end());
  auto back = decode_txt(*txt, "10.77.0.1", 9999);
  REQUIRE(back.ok());
  CHECK(*back == a);
  CHECK(back->rpc_endpoint() == "tcp://10.77.0.1:4162");
  CHECK(back->events_endpoint() == "tcp://10.77.0.1:4163");

  // What `avahi-publish -s x _djinn-lookup._tcp 4160 groups=public version=1` announces.
  auto minimal = decode_txt({"groups=public", "version=1"}, "10.77.0.2", 4160);
  REQUIRE(minimal.ok());
  CHECK(minimal->rpc_port == 4160);
  CHECK(minimal->groups == std::vector<std::string>{"public"});
  CHECK(!minimal->service_id);
  CHECK(minimal->events_port == 0);

  // Keys are case-insensitive, unknown keys and boolean attributes are ignored, the first of a
  // repeated key wins (RFC 6763 §6.4).
  auto extra = decode_txt({"VERSION=1", "groups=a,,b", "future=x", "flag", "groups=c", "Name=n"}, "h", 1);
  REQUIRE(extra.ok());
  CHECK(extra->groups == std::vector<std::string>{"a", "b"});
  CHECK(extra->name == "n");
}

TEST_CASE("TXT: what is not a djinn lookup record is refused with the reason") {
  auto refused = [](std::vector<std::string> txt, std::string host = "10.0.0.1", uint16_t port = 4162) {
    auto r = decode_txt(txt, host, port);
    return !r.ok() && r.status().code() == Code::kInvalidArgument;
  };
  CHECK(refused({"groups=public"}));                         // no version
  CHECK(refused({"version=2", "groups=public"}));            // another version
  CHECK(refused({"version=x", "groups=public"}));
  CHECK(refused({"version=1"}));                             // no groups
  CHECK(refused({"version=1", "groups="}));
  CHECK(refused({"version=1", "groups=a b"}));
  CHECK(refused({"version=1", "groups=public", "id=nope"}));
  CHECK(refused({"version=1", "groups=public", "id=00000000-0000-0000-0000-000000000000"}));
  CHECK(refused({"version=1", "groups=public", "rpc=0"}));
  CHECK(refused({"version=1", "groups=public", "rpc=70000"}));
  CHECK(refused({"version=1", "groups=public", "events=-1"}));
  CHECK(refused({"version=1", "groups=public"}, "10.0.0.1", 0));  // no port at all
  CHECK(refused({"version=1", "groups=public"}, "bad host!"));
  CHECK(refused({"version=1", "groups=public"}, ""));
  CHECK(refused({"version=1", "groups=public", "name=a\nb"}));
  CHECK(refused({"version=1", "groups=public", std::string(300, 'x')}));
  // Encoding refuses what would not fit or not parse back.
  Announcement a = sample();
  a.groups = {std::string(200, 'g'), std::string(200, 'h')};
  CHECK(!encode_txt(a).ok());
  a.groups = {};
  CHECK(!encode_txt(a).ok());
  a.groups = {"a,b"};
  CHECK(!encode_txt(a).ok());
}

TEST_CASE("packets: requests and announcements round-trip") {
  Request r{{"public", "lab"}, {ServiceId::random(), ServiceId::random()}};
  auto decoded = decode_packet(encode_packet(r));
  REQUIRE(decoded.ok());
  REQUIRE(std::holds_alternative<Request>(*decoded));
  CHECK(std::get<Request>(*decoded) == r);

  Announcement a = sample();
  a.interval_ms = 5000;
  auto bytes = encode_packet(a);
  REQUIRE(bytes.ok());
  CHECK(bytes->size() <= kMaxPacketBytes);
  auto back = decode_packet(*bytes);
  REQUIRE(back.ok());
  REQUIRE(std::holds_alternative<Announcement>(*back));
  CHECK(std::get<Announcement>(*back) == a);

  Announcement leaving = a;
  leaving.host = "";  // the receiver fills in the source address
  leaving.leaving = true;
  back = decode_packet(*encode_packet(leaving));
  REQUIRE(back.ok());
  CHECK(std::get<Announcement>(*back) == leaving);

  Announcement no_id = a;
  no_id.service_id.reset();
  CHECK(!encode_packet(no_id).ok());
}

TEST_CASE("packets: hostile input is rejected, never crashes, never hangs") {
  auto& rng = test::rng();
  auto rejected = [](const std::vector<uint8_t>& b) { return !decode_packet(b).ok(); };
  CHECK(rejected({}));
  CHECK(rejected(std::vector<uint8_t>(7, 0)));
  CHECK(rejected(std::vector<uint8_t>(kMaxPacketBytes + 8, 0)));
  CHECK(rejected(std::vector<uint8_t>(13, 1)));  // not whole words
  CHECK(rejected(std::vector<uint8_t>(64, 0xff)));

  // A segment table that claims far more than the datagram holds.
  std::vector<uint8_t> liar(16, 0);
  liar[4] = 0xff;
  liar[5] = 0xff;
  liar[6] = 0xff;
  liar[7] = 0x0f;
  CHECK(rejected(liar));

  // Another version, a nil id, an empty group list, port 0, oversize lists: each refused.
  auto announcement = [](auto edit) {
    capnp::MallocMessageBuilder msg;
    auto root = msg.initRoot<proto::DiscoveryPacket>();
    root.setVersion(1);
    auto a = root.initAnnouncement();
    auto id = a.initServiceId();
    id.setHi(1);
    id.setLo(2);
    a.initGroups(1).set(0, "public");
    a.setRpcPort(4162);
    edit(root, a);
    auto words = capnp::messageToFlatArray(msg);
    auto bytes = words.asBytes();
    return std::vector<uint8_t>(bytes.begin(), bytes.end());
  };
  CHECK(!rejected(announcement([](auto, auto) {})));
  CHECK(rejected(announcement([](auto root, auto) { root.setVersion(2); })));
  CHECK(rejected(announcement([](auto, auto a) { a.getServiceId().setHi(0), a.getServiceId().setLo(0); })));
  CHECK(rejected(announcement([](auto, auto a) { a.initGroups(0); })));
  CHECK(rejected(announcement([](auto, auto a) { a.setRpcPort(0); })));
  CHECK(rejected(announcement([](auto, auto a) { a.initGroups(65); })));
  CHECK(rejected(announcement([](auto, auto a) { a.initGroups(1).set(0, "a,b"); })));
  CHECK(rejected(announcement([](auto, auto a) { a.setHost("x y"); })));
  CHECK(rejected(announcement([](auto, auto a) { a.disownServiceId(); })));
  CHECK(rejected(announcement([](auto root, auto) { root.initRequest().initKnown(300); })));

  // Random bytes, and every single-byte corruption and truncation of valid packets: decoding
  // returns (ok or not) for each.
  std::vector<std::vector<uint8_t>> seeds;
  seeds.push_back(encode_packet(Request{{"public"}, {ServiceId::random()}}));
  seeds.push_back(*encode_packet(sample()));
  size_t accepted = 0, total = 0;
  for (const auto& seed : seeds) {
    for (size_t i = 0; i < seed.size(); ++i) {
      for (int flip : {0x01, 0x80, 0xff}) {
        std::vector<uint8_t> b = seed;
        b[i] ^= static_cast<uint8_t>(flip);
        accepted += decode_packet(b).ok();
        ++total;
      }
      std::vector<uint8_t> cut(seed.begin(), seed.begin() + static_cast<long>(i));
      accepted += decode_packet(cut).ok();
      ++total;
    }
  }
  for (int i = 0; i < 20000; ++i) {
    std::vector<uint8_t> b((rng() % 64 + 1) * 8);
    for (auto& x : b) x = static_cast<uint8_t>(rng());
    accepted += decode_packet(b).ok();
    ++total;
  }
  MESSAGE(accepted << " of " << total << " mutated or random packets decoded (all within bounds)");
  CHECK(total > 20000);
}

TEST_CASE("locators: djinn://host[:port]") {
  auto l = parse_locator("djinn://10.77.0.2:4170");
  REQUIRE(l.ok());
  CHECK(l->host == "10.77.0.2");
  CHECK(l->port == 4170);
  CHECK(l->rpc_endpoint() == "tcp://10.77.0.2:4170");
  CHECK(l->to_string() == "djinn://10.77.0.2:4170");
  l = parse_locator("DJINN://lookup.example.org/");
  REQUIRE(l.ok());
  CHECK(l->host == "lookup.example.org");
  CHECK(l->port == kDefaultLookupPort);
  l = parse_locator("djinn://[fe80::1%eth0]:99");
  REQUIRE(l.ok());
  CHECK(l->host == "fe80::1%eth0");
  CHECK(l->rpc_endpoint() == "tcp://[fe80::1%eth0]:99");
  for (const char* bad : {"", "djinn://", "djinn://:4162", "tcp://h:1", "jini://h", "djinn://h:", "djinn://h:0",
                          "djinn://h:65536", "djinn://h:12x", "djinn://h/path", "djinn://u@h", "djinn://[::1",
                          "djinn://[h]:1", "djinn://[::1]x", "djinn://h h", "djinn://h:1:2"}) {
    auto r = parse_locator(bad);
    CHECK_MESSAGE(!r.ok(), bad);
    if (!r.ok()) CHECK(r.status().message().find("expected djinn://HOST[:PORT]") != std::string::npos);
  }
}

TEST_CASE("groups and endpoints") {
  CHECK(groups_match({}, {"x"}));
  CHECK(groups_match({"a", "b"}, {"b"}));
  CHECK(!groups_match({"a"}, {"b", "c"}));
  CHECK(check_group("public").ok());
  CHECK(!check_group("").ok());
  CHECK(!check_group("a b").ok());
  CHECK(!check_group(std::string(256, 'g')).ok());
  auto e = split_tcp_endpoint("tcp://10.0.0.1:4162");
  REQUIRE(e);
  CHECK(e->first == "10.0.0.1");
  CHECK(e->second == 4162);
  CHECK(split_tcp_endpoint("tcp://[::1]:5")->first == "::1");
  CHECK(!split_tcp_endpoint("ipc:///x"));
  CHECK(!split_tcp_endpoint("tcp://h:*"));
}
