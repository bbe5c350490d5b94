// The space over RPC against an in-process SpaceService on real sockets: write, read, take and
// their IfExists forms, contents with a cursor, take of many, matching by supertype and field
// (a property test against a plain list), blocking takes woken by writes and their timeouts,
// notify events for matching writes only, lease expiry (and, on the engine with injected clocks,
// expiry on the landlord's monotonic clock whatever the wall clock does), eight concurrent takers
// over 10,000 entries, bad input refused without effect, and persistence across a restart.
#include <doctest/doctest.h>

#include <atomic>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "djinn/core/events.h"
#include "djinn/core/fault.h"
#include "djinn/core/model_capnp.h"
#include "djinn/proto/lease.capnp.h"
#include "djinn/proto/space.capnp.h"
#include "djinn/space/client.h"
#include "djinn/space/service.h"
#include "djinn/space/space.h"
#include "djinn/lease/client.h"
#include "djinn/lease/landlord.h"
#include "support/fake_clocks.h"
#include "support/test_support.h"

using namespace djinn;
using namespace djinn::space;
using namespace std::chrono_literals;

namespace {

struct Harness {
  explicit Harness(size_t max_entry_bytes = 4096) : data_dir(dir.file("space")), max_entry_bytes(max_entry_bytes) {
    start();
  }
  void start() {
    SpaceServiceOptions o;
    o.data_dir = data_dir;
    o.policy.max_duration = 1h;
    o.policy.default_duration = 10min;
    o.policy.min_duration = 10ms;
    o.max_entry_bytes = max_entry_bytes;
    auto s = SpaceService::start(o);
    REQUIRE_MESSAGE(s.ok(), s.status().to_string());
    service = std::move(*s);
    client = std::make_unique<SpaceClient>(rpc::ClientOptions{.endpoint = service->rpc_endpoint()});
  }
  void stop() {
    client.reset();
    service.reset();
  }
  test::TempDir dir;
  std::string data_dir;
  size_t max_entry_bytes;
  std::unique_ptr<SpaceService> service;
  std::unique_ptr<SpaceClient> client;
};

// The engine alone on a landlord of its own, the landlord's events forwarded to it.
struct Engine {
  explicit Engine(lease::LandlordOptions lo) {
    lo.on_event = [this](const lease::LeaseEvent& e) {
      if (Space* s = target.load()) s->on_lease_event(e);
    };
    auto l = lease::Landlord::open(std::move(lo));
    REQUIRE_MESSAGE(l.ok(), l.status().to_string());
    landlord = std::move(*l);
    space = open();
  }
  ~Engine() {
    target = nullptr;
    space.reset();
  }
  // A space on the landlord, which sends its events there from now on.
  std::unique_ptr<Space> open() {
    SpaceOptions so;
    so.landlord = landlord.get();
    auto opened = Space::open(so);
    REQUIRE_MESSAGE(opened.ok(), opened.status().to_string());
    target = opened->get();
    return std::move(*opened);
  }
  std::atomic<Space*> target{nullptr};
  std::unique_ptr<lease::Landlord> landlord;
  std::unique_ptr<Space> space;
};

Entry entry(std::string type, Fields fields, std::vector<std::string> supertypes = {}) {
  Entry e;
  e.type = std::move(type);
  e.fields = std::move(fields);
  e.supertypes = std::move(supertypes);
  return e;
}

Template tmpl(std::string type, Fields fields = {}) { return Template{std::move(type), std::move(fields)}; }

WriteReceipt must_write(SpaceClient& c, const Entry& e, int64_t ms = 600'000) {
  auto r = c.write(e, ms);
  REQUIRE_MESSAGE(r.ok(), r.status().to_string());
  return *r;
}

}  // namespace

TEST_CASE("write, read, take, IfExists, contents and take of many") {
  Harness h;
  SpaceClient& c = *h.client;
  must_write(c, entry("demo.Task", {{"n", 1}, {"queue", "a"}}, {"demo.Work"}));
  must_write(c, entry("demo.Task", {{"n", 2}, {"queue", "b"}}, {"demo.Work"}));
  must_write(c, entry("demo.Note", {{"n", 3}}));

  auto r = c.read_if_exists(tmpl("demo.Task", {{"queue", "b"}}));
  REQUIRE(r.ok());
  REQUIRE(r->has_value());
  CHECK((*r)->field("n")->as_int() == 2);
  // By supertype, and the empty type matches everything.
  auto all = c.contents_all(tmpl("demo.Work"));
  REQUIRE(all.ok());
  CHECK(all->size() == 2);
  CHECK(c.contents_all(tmpl(""))->size() == 3);
  // A field of another type (int 1 vs float 1.0) does not match.
  CHECK(!c.read_if_exists(tmpl("demo.Task", {{"n", 1.0}}))->has_value());
  // A null field is a wildcard.
  CHECK(c.read_if_exists(tmpl("demo.Task", {{"n", Value()}}))->has_value());

  // Contents pages in write order with a cursor.
  for (int i = 10; i < 25; ++i) must_write(c, entry("demo.Task", {{"n", i}, {"queue", "p"}}));
  std::vector<int64_t> seen;
  uint64_t cursor = 0;
  for (;;) {
    auto page = c.contents(tmpl("demo.Task", {{"queue", "p"}}), cursor, 4);
    REQUIRE(page.ok());
    CHECK(page->entries.size() <= 4);
    for (const Entry& e : page->entries) seen.push_back(e.field("n")->as_int());
    if (page->done) break;
    cursor = page->cursor;
  }
  REQUIRE(seen.size() == 15);
  for (int i = 0; i < 15; ++i) CHECK(seen[i] == 10 + i);
  // The same through the iterator, three at a time.
  ContentsIterator it(c, tmpl("demo.Task", {{"queue", "p"}}), 3);
  for (int i = 0; i < 15; ++i) {
    auto e = it.next();
    REQUIRE(e.ok());
    REQUIRE(e->has_value());
    CHECK((*e)->field("n")->as_int() == 10 + i);
  }
  CHECK(!it.next()->has_value());

  auto taken = c.take_if_exists(tmpl("demo.Task", {{"n", 1}}));
  REQUIRE(taken.ok());
  REQUIRE(taken->has_value());
  CHECK(!c.read_if_exists(tmpl("demo.Task", {{"n", 1}}))->has_value());
  CHECK(!c.take_if_exists(tmpl("demo.Task", {{"n", 1}}))->has_value());

  auto many = c.take_many(tmpl("demo.Task", {{"queue", "p"}}), 10);
  REQUIRE(many.ok());
  CHECK(many->size() == 10);
  CHECK(c.contents_all(tmpl("demo.Task", {{"queue", "p"}}))->size() == 5);

  // Persistence: after a restart everything not taken is still there.
  size_t before = h.service->space().size();
  h.stop();
  h.start();
  CHECK(h.service->space().size() == before);
  CHECK(h.client->contents_all(tmpl("demo.Task", {{"queue", "p"}}))->size() == 5);
  CHECK(!h.client->read_if_exists(tmpl("demo.Task", {{"n", 1}}))->has_value());
}

TEST_CASE("takeMany and a contents page stop short of 8 MiB of entries: what is taken is always answered") {
  Harness h(64 * 1024);
  SpaceClient& c = *h.client;
  // 300 entries of 60 KB: 18 MB, more than a client reads in one reply.
  std::vector<Entry> batch(50, entry("demo.Heavy", {{"blob", Value(Value::Bytes(60'000, 7))}}));
  for (int i = 0; i < 6; ++i) REQUIRE(c.write_many(batch, 600'000).ok());
  auto page = c.contents(tmpl("demo.Heavy"), 0, 1000);
  REQUIRE_MESSAGE(page.ok(), page.status().to_string());
  CHECK(!page->done);
  CHECK(page->entries.size() > 100);
  CHECK(page->entries.size() * 60'000 <= kMaxEntriesReplyBytes);
  CHECK(c.contents_all(tmpl("demo.Heavy"))->size() == 300);
  auto taken = c.take_many(tmpl("demo.Heavy"), 1000);
  REQUIRE_MESSAGE(taken.ok(), taken.status().to_string());
  CHECK(taken->size() == page->entries.size());
  CHECK(c.contents_all(tmpl("demo.Heavy"))->size() == 300 - taken->size());
}

TEST_CASE("an index key gathering many entries pages in write order as it grows past its inline size, and after takes") {
  // A key's entries sit in a short vector until they are many, then in chunks: paging with a
  // cursor, takes and new writes must see the same order on both sides of that change.
  Harness h;
  SpaceClient& c = *h.client;
  auto page_all = [&](size_t page_size) {
    std::vector<int64_t> seen;
    uint64_t cursor = 0;
    for (;;) {
      auto page = c.contents(tmpl("demo.Job", {{"queue", "q"}}), cursor, page_size);
      REQUIRE(page.ok());
      for (const Entry& e : page->entries) seen.push_back(e.field("n")->as_int());
      if (page->done) return seen;
      cursor = page->cursor;
    }
  };
  std::vector<int64_t> expected;
  for (int i = 0; i < 80; ++i) {
    must_write(c, entry("demo.Job", {{"n", i}, {"queue", "q"}}));
    must_write(c, entry("demo.Job", {{"n", 1000 + i}, {"queue", "other"}}));
    expected.push_back(i);
    if (i == 20 || i == 79) CHECK(page_all(7) == expected);
  }
  auto taken = c.take_many(tmpl("demo.Job", {{"queue", "q"}}), 70);
  REQUIRE(taken.ok());
  REQUIRE(taken->size() == 70);
  for (size_t i = 0; i < taken->size(); ++i) CHECK((*taken)[i].field("n")->as_int() == static_cast<int64_t>(i));
  expected.erase(expected.begin(), expected.begin() + 70);
  CHECK(page_all(3) == expected);
  for (int i = 80; i < 90; ++i) {
    must_write(c, entry("demo.Job", {{"n", i}, {"queue", "q"}}));
    expected.push_back(i);
  }
  CHECK(page_all(4) == expected);
  CHECK(c.contents_all(tmpl("demo.Job", {{"queue", "other"}}))->size() == 80);
  CHECK(c.read_if_exists(tmpl("demo.Job", {{"n", 1042}}))->value().field("queue")->as_text() == "other");
}

TEST_CASE("matching agrees with a plain list under random writes and takes") {
  Harness h;
  SpaceClient& c = *h.client;
  auto& rng = test::rng();
  std::vector<Entry> model;
  const char* types[] = {"t.A", "t.B", "t.C", "t.Base"};  // t.Base is also the others' supertype
  for (int i = 0; i < 300; ++i) {
    const char* type = types[rng() % 4];
    bool sub = std::string_view(type) != "t.Base" && rng() % 2;
    Entry e = entry(type, {{"x", static_cast<int64_t>(rng() % 4)}, {"y", std::string(1, char('a' + rng() % 3))}, {"id", i}},
                    sub ? std::vector<std::string>{"t.Base"} : std::vector<std::string>{});
    must_write(c, e);
    model.push_back(e);
  }
  for (int round = 0; round < 200; ++round) {
    Template t;
    int pick = static_cast<int>(rng() % 5);
    t.type = pick < 3 ? types[pick] : (pick == 3 ? "t.Base" : "");
    if (rng() % 2) t.fields["x"] = static_cast<int64_t>(rng() % 4);
    if (rng() % 2) t.fields["y"] = std::string(1, char('a' + rng() % 3));
    size_t expected = std::count_if(model.begin(), model.end(), [&](const Entry& e) { return matches(t, e); });
    auto got = c.contents_all(t);
    REQUIRE(got.ok());
    CHECK_MESSAGE(got->size() == expected, "seed ", test::seed(), " round ", round);
    if (rng() % 3 == 0) {
      auto taken = c.take_if_exists(t);
      REQUIRE(taken.ok());
      CHECK(taken->has_value() == (expected > 0));
      if (*taken) {
        auto it = std::find(model.begin(), model.end(), **taken);
        REQUIRE(it != model.end());
        model.erase(it);
      }
    }
  }
}

TEST_CASE("a template of a type finds its entries by field whether or not other entries are kinds of it") {
  // Fields are filed under the entry's own type and under any type: a template of a type that some
  // live entry lists as a supertype must look beyond entries of that exact type, and one of a type
  // nobody extends any more must still find its own.
  Harness h;
  SpaceClient& c = *h.client;
  auto count = [&](const char* type, int64_t q) {
    auto all = c.contents_all(tmpl(type, {{"q", q}}));
    REQUIRE(all.ok());
    return all->size();
  };
  must_write(c, entry("t.Base", {{"q", 1}}));
  must_write(c, entry("t.Sub", {{"q", 1}}, {"t.Base"}));
  must_write(c, entry("t.Other", {{"q", 1}}));
  CHECK(count("t.Base", 1) == 2);
  CHECK(count("t.Sub", 1) == 1);
  CHECK(count("t.Other", 1) == 1);
  CHECK(count("", 1) == 3);
  auto taken = c.take_if_exists(tmpl("t.Sub"));
  REQUIRE(taken.ok());
  REQUIRE(taken->has_value());
  CHECK(count("t.Base", 1) == 1);  // no t.Sub left: its own entry, found under its own type
  must_write(c, entry("t.Sub", {{"q", 2}}, {"t.Base"}));
  CHECK(count("t.Base", 2) == 1);
  CHECK(count("t.Base", 1) == 1);
  CHECK(count("t.Other", 2) == 0);
  CHECK(c.read_if_exists(tmpl("t.Base", {{"q", 2}}))->value().type == "t.Sub");
}

TEST_CASE("a blocking take is woken by a matching write; timeouts are honoured; notify sees matching writes only") {
  Harness h;
  SpaceClient& c = *h.client;

  // Timeout honoured: nothing matches, the take returns empty after its timeout.
  auto t0 = std::chrono::steady_clock::now();
  auto none = c.take(tmpl("demo.Job"), 300ms);
  auto waited = std::chrono::steady_clock::now() - t0;
  REQUIRE(none.ok());
  CHECK(!none->has_value());
  CHECK(waited >= 290ms);
  CHECK(waited < 2s);

  // Woken: a take waits, a write of another type does not wake it, a matching write does.
  std::promise<Result<std::optional<Entry>>> got;
  std::thread taker([&] {
    SpaceClient own({.endpoint = h.service->rpc_endpoint()});
    got.set_value(own.take(tmpl("demo.Job", {{"kind", "build"}}), 10s));
  });
  REQUIRE(test::eventually([&] { return h.service->space().stats().waiters == 1; }));
  must_write(c, entry("demo.Job", {{"kind", "test"}}));
  must_write(c, entry("demo.Other", {{"kind", "build"}}));
  auto f = got.get_future();
  CHECK(f.wait_for(200ms) == std::future_status::timeout);
  auto woke_at = std::chrono::steady_clock::now();
  must_write(c, entry("demo.Job", {{"kind", "build"}, {"id", 7}}));
  REQUIRE(f.wait_for(5s) == std::future_status::ready);
  auto r = f.get();
  auto latency = std::chrono::steady_clock::now() - woke_at;
  taker.join();
  REQUIRE(r.ok());
  REQUIRE(r->has_value());
  CHECK((*r)->field("id")->as_int() == 7);
  CHECK(latency < 1s);
  // The entry went to the taker: it is not in the space.
  CHECK(!c.read_if_exists(tmpl("demo.Job", {{"kind", "build"}}))->has_value());
  CHECK(c.read_if_exists(tmpl("demo.Job", {{"kind", "test"}}))->has_value());

  // A blocking read is woken too, and leaves the entry.
  std::thread reader([&] {
    SpaceClient own({.endpoint = h.service->rpc_endpoint()});
    auto rr = own.read(tmpl("demo.Read"), 10s);
    CHECK(rr.ok());
    CHECK(rr->has_value());
  });
  REQUIRE(test::eventually([&] { return h.service->space().stats().waiters == 1; }));
  must_write(c, entry("demo.Read", {}));
  reader.join();
  CHECK(c.read_if_exists(tmpl("demo.Read"))->has_value());

  // Notify: numbered events for matching writes only.
  auto n = c.notify(tmpl("demo.Event", {{"level", "high"}}), 60'000, "test");
  REQUIRE(n.ok());
  events::Subscriber sub({.endpoint = n->events_endpoint});
  std::mutex mu;
  std::vector<std::pair<uint64_t, Entry>> seen;
  sub.subscribe(n->event_kind);
  sub.on_event([&](const events::Event& ev) {
    auto e = decode_notify_event(ev);
    REQUIRE(e.ok());
    std::lock_guard lock(mu);
    seen.emplace_back(ev.seq, *e);
  });
  REQUIRE(sub.start().ok());
  // The subscription reaches the publisher (slow joiner): the kind's first heartbeat arrives.
  REQUIRE(test::eventually([&] { return sub.heard(); }, 5000));
  must_write(c, entry("demo.Event", {{"level", "low"}, {"i", 0}}));
  must_write(c, entry("demo.Event", {{"level", "high"}, {"i", 1}}));
  must_write(c, entry("demo.Other", {{"level", "high"}, {"i", 2}}));
  must_write(c, entry("demo.Event", {{"level", "high"}, {"i", 3}}));
  REQUIRE(test::eventually([&] {
    std::lock_guard lock(mu);
    return seen.size() >= 2;
  }));
  std::this_thread::sleep_for(200ms);
  sub.stop();
  std::lock_guard lock(mu);
  REQUIRE(seen.size() == 2);
  CHECK(seen[0].first == 1);
  CHECK(seen[1].first == 2);
  CHECK(seen[0].second.field("i")->as_int() == 1);
  CHECK(seen[1].second.field("i")->as_int() == 3);
}

TEST_CASE("events name leases by their refs: a subscriber learns no entry's or registration's lease id") {
  Harness h;
  SpaceClient& c = *h.client;
  auto n = c.notify(tmpl("demo.Secret"), 60'000, "owner");
  REQUIRE(n.ok());
  // The kind every subscriber sees names the registration's ref, not its id.
  CHECK(n->event_kind == notify_event_kind(n->id));
  CHECK(n->event_kind == "space.notify." + public_ref_hex(n->id));
  CHECK(n->event_kind.find(std::to_string(n->id)) == std::string::npos);

  // A stranger listening to the space's lease events and to the registration's kind (which
  // heartbeats show to any subscriber).
  events::Subscriber stranger({.endpoint = h.service->events_endpoint()});
  std::mutex mu;
  struct Seen {
    std::string kind;
    uint64_t id, ref;
  };
  std::vector<Seen> seen;
  for (const std::string& kind : {std::string("lease.granted"), std::string("lease.cancelled"), n->event_kind}) {
    stranger.subscribe(kind);
  }
  stranger.on_event([&](const events::Event& ev) {
    auto reader = ev.reader();
    std::lock_guard lock(mu);
    if (ev.kind.rfind("space.notify.", 0) == 0) {
      auto p = reader.getRoot<proto::SpaceNotifyEvent>();
      seen.push_back({ev.kind, p.getNotifyId(), lease::lease_ref(n->id)});  // the kind names it
    } else {
      auto l = reader.getRoot<proto::LeaseEvent>().getLease();
      seen.push_back({ev.kind, l.getId(), l.getRef()});
    }
  });
  REQUIRE(stranger.start().ok());
  REQUIRE(test::eventually([&] { return stranger.heard(); }, 5000));
  auto seen_kind = [&](const std::string& kind) {
    std::lock_guard lock(mu);
    return std::any_of(seen.begin(), seen.end(), [&](const Seen& s) { return s.kind == kind; });
  };
  WriteReceipt w;
  REQUIRE(test::eventually([&] {  // PUB/SUB joins asynchronously: write until both events come
    w = must_write(c, entry("demo.Secret", {{"n", 1}}));
    return seen_kind(n->event_kind) && seen_kind("lease.granted");
  }, 5000));
  REQUIRE(c.cancel(w.written.lease_id).ok());
  REQUIRE(test::eventually([&] { return seen_kind("lease.cancelled"); }, 5000));
  std::lock_guard lock(mu);
  for (const Seen& s : seen) {
    CAPTURE(s.kind);
    CHECK(s.id == 0);
    CHECK(s.ref != 0);
    CHECK(s.kind.find(std::to_string(w.written.lease_id)) == std::string::npos);
    if (s.kind == "lease.cancelled") CHECK(s.ref == lease::lease_ref(w.written.lease_id));
  }
}

TEST_CASE("a notify registration made before kinds named refs keeps its kind across the upgrade") {
  Harness h;
  auto n = h.client->notify(tmpl("demo.Old"), 600'000, "owner");
  REQUIRE(n.ok());
  h.stop();
  // The store as schema version 1 left it: no by_ref column.
  REQUIRE(test::run_sql(h.data_dir + "/space.db", {"ALTER TABLE space_watch DROP COLUMN by_ref",
                                                   "UPDATE space_meta SET value = 1 WHERE key = 'schema'"}) == "");
  h.start();
  // Its subscriber listens on the kind it was given then, which named the id.
  std::string old_kind = "space.notify." + std::to_string(n->id);
  events::Subscriber sub({.endpoint = h.service->events_endpoint()});
  std::atomic<int> got{0};
  sub.subscribe(old_kind);
  sub.on_event([&](const events::Event&) { ++got; });
  REQUIRE(sub.start().ok());
  REQUIRE(test::eventually([&] { return sub.heard(); }, 5000));
  must_write(*h.client, entry("demo.Old", {{"n", 1}}));
  CHECK(test::eventually([&] { return got.load() == 1; }, 5000));
  // New registrations are named by their refs.
  auto fresh = h.client->notify(tmpl("demo.Old"), 600'000, "owner");
  REQUIRE(fresh.ok());
  CHECK(fresh->event_kind == notify_event_kind(fresh->id));
  sub.stop();
  // And both stay as they are across another restart.
  h.stop();
  h.start();
  events::Subscriber again({.endpoint = h.service->events_endpoint()});
  std::atomic<int> old_events{0}, new_events{0};
  again.subscribe(old_kind);
  again.subscribe(fresh->event_kind);
  again.on_event([&](const events::Event& ev) { ++(ev.kind == old_kind ? old_events : new_events); });
  REQUIRE(again.start().ok());
  REQUIRE(test::eventually([&] { return again.heard(); }, 5000));
  must_write(*h.client, entry("demo.Old", {{"n", 2}}));
  CHECK(test::eventually([&] { return old_events.load() == 1 && new_events.load() == 1; }, 5000));
  again.stop();
}

TEST_CASE("an expired entry disappears and is never returned afterwards") {
  Harness h;
  SpaceClient& c = *h.client;
  auto w = must_write(c, entry("demo.Short", {{"i", 1}}), 300);
  must_write(c, entry("demo.Short", {{"i", 2}}), 600'000);
  CHECK(c.contents_all(tmpl("demo.Short"))->size() == 2);
  // From the expiration on, no read sees it, even before the expiry event is processed.
  int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  std::this_thread::sleep_for(std::chrono::milliseconds(std::max<int64_t>(0, w.written.expiration_ms - now_ms) + 1));
  for (int i = 0; i < 20; ++i) {
    auto all = c.contents_all(tmpl("demo.Short"));
    REQUIRE(all.ok());
    REQUIRE(all->size() == 1);
    CHECK(all->front().field("i")->as_int() == 2);
    std::this_thread::sleep_for(10ms);
  }
  CHECK(!c.take_if_exists(tmpl("demo.Short", {{"i", 1}}))->has_value());
  REQUIRE(test::eventually([&] { return h.service->space().size() == 1; }));
  // Renewal keeps an entry; cancelling removes it.
  auto w3 = must_write(c, entry("demo.Short", {{"i", 3}}), 400);
  REQUIRE(c.renew(w3.written.lease_id, 600'000).ok());
  std::this_thread::sleep_for(600ms);
  CHECK(c.read_if_exists(tmpl("demo.Short", {{"i", 3}}))->has_value());
  REQUIRE(c.cancel(w3.written.lease_id).ok());
  CHECK(!c.read_if_exists(tmpl("demo.Short", {{"i", 3}}))->has_value());
  // Nor after a restart.
  h.stop();
  h.start();
  auto all = h.client->contents_all(tmpl("demo.Short"));
  REQUIRE(all.ok());
  CHECK(all->size() == 1);
}

TEST_CASE("expiry follows the landlord's monotonic clock: a wall-clock step hides or shows nothing") {
  // The engine on a landlord with both clocks in the test's hands and no expiry thread, so what
  // reads see between a deadline and its expiry is visible.
  test::FakeClocks clocks;
  lease::LandlordOptions lo;
  lo.clocks = clocks.clocks();
  lo.run_expiry_thread = false;
  Space* target = nullptr;
  lo.on_event = [&](const lease::LeaseEvent& e) {
    if (target) target->on_lease_event(e);
  };
  auto landlord = lease::Landlord::open(std::move(lo));
  REQUIRE(landlord.ok());
  SpaceOptions so;
  so.landlord = landlord->get();
  auto opened = Space::open(so);
  REQUIRE_MESSAGE(opened.ok(), opened.status().to_string());
  std::unique_ptr<Space> space = std::move(*opened);
  target = space.get();
  auto present = [&](int64_t i) {
    auto r = space->read(tmpl("demo.Clock", {{"i", i}}));
    REQUIRE(r.ok());
    return r->has_value();
  };
  REQUIRE(space->write({entry("demo.Clock", {{"i", 1}}), 1000}).ok());
  Result<Written> renewable = space->write({entry("demo.Clock", {{"i", 2}}), 1000});
  REQUIRE(renewable.ok());

  clocks.wall += 3'600'000;  // an hour ahead: nothing expired
  CHECK(present(1));
  clocks.wall -= 7'200'000;  // an hour behind
  CHECK(present(1));
  clocks.mono_ns += 500'000'000;
  REQUIRE((*landlord)->renew({renewable->lease_id, 1000}).ok());  // to t = 1.5 s
  clocks.mono_ns += 500'000'000;  // t = 1 s: entry 1's deadline, before any expiry ran
  CHECK_FALSE(present(1));
  CHECK(present(2));
  CHECK(space->contents(tmpl("demo.Clock"), 0, 10)->entries.size() == 1);
  CHECK((*landlord)->expire_due() == 1);
  CHECK(space->size() == 1);
  clocks.mono_ns += 500'000'000;  // t = 1.5 s
  CHECK_FALSE(present(2));
  CHECK((*landlord)->expire_due() == 1);
  CHECK(space->size() == 0);
}

TEST_CASE("writeMany: entries written together, each refused on its own, a resend applied once, takers woken") {
  Harness h;
  SpaceClient& c = *h.client;
  // A taker waits for one of them.
  std::promise<Result<std::optional<Entry>>> taken;
  std::thread taker([&] { taken.set_value(c.take(tmpl("demo.Batch", {{"i", 2}}), 30s)); });
  struct Join {
    std::thread& t;
    ~Join() { t.join(); }
  } join_taker{taker};
  REQUIRE(test::eventually([&] { return h.service->space().stats().waiters == 1; }, 10'000));
  std::vector<Entry> batch;
  for (int i = 0; i < 5; ++i) batch.push_back(entry("demo.Batch", {{"i", i}}));
  batch[3].type.clear();  // refused on its own
  rpc::CallOptions keyed;
  keyed.idempotency_key = "batch-1";
  auto written = c.write_many(batch, 600'000, std::nullopt, keyed);
  REQUIRE_MESSAGE(written.ok(), written.status().to_string());
  REQUIRE(written->size() == 5);
  std::set<uint64_t> leases;
  for (int i = 0; i < 5; ++i) {
    if (i == 3) {
      CHECK((*written)[3].status().code() == Code::kInvalidArgument);
      continue;
    }
    REQUIRE((*written)[i].ok());
    leases.insert((*written)[i]->written.lease_id);
  }
  CHECK(leases.size() == 4);
  auto got = taken.get_future().get();
  REQUIRE(got.ok());
  REQUIRE(got->has_value());
  CHECK((*got)->field("i")->as_int() == 2);
  CHECK(c.contents_all(tmpl("demo.Batch"))->size() == 3);
  // The same call again (a reply lost on the way): each entry's first outcome, nothing added.
  auto again = c.write_many(batch, 600'000, std::nullopt, keyed);
  REQUIRE(again.ok());
  for (int i : {0, 1, 4}) {
    REQUIRE((*again)[i].ok());
    CHECK((*again)[i]->written.lease_id == (*written)[i]->written.lease_id);
  }
  CHECK(c.contents_all(tmpl("demo.Batch"))->size() == 3);
  // Lists that are empty or too long are refused whole.
  CHECK(c.write_many({}, 600'000).status().code() == Code::kInvalidArgument);
  std::vector<Entry> too_many(kMaxWriteMany + 1, entry("demo.Batch", {{"i", 9}}));
  CHECK(c.write_many(too_many, 600'000).status().code() == Code::kInvalidArgument);
  CHECK(c.contents_all(tmpl("demo.Batch"))->size() == 3);
  // They survive a restart, written in one durable transaction; a resend after it is answered
  // from the keys stored with the entries (the one handed to the taker was never stored).
  h.stop();
  h.start();
  CHECK(h.client->contents_all(tmpl("demo.Batch"))->size() == 3);
  auto after = h.client->write_many(batch, 600'000, std::nullopt, keyed);
  REQUIRE(after.ok());
  for (int i : {0, 1, 4}) {
    REQUIRE((*after)[i].ok());
    CHECK((*after)[i]->written.lease_id == (*written)[i]->written.lease_id);
  }
  CHECK(h.client->contents_all(tmpl("demo.Batch"))->size() == 4);  // i = 2 again
  // A list over what a call to the space carries (5 MiB) is refused before it is sent.
  std::vector<Entry> heavy(100, entry("demo.Batch", {{"blob", Value(Value::Bytes(60'000, 7))}}));
  auto refused = h.client->write_many(heavy, 600'000);
  CHECK(refused.status().code() == Code::kResourceExhausted);
  CHECK(refused.status().message().find("split the list") != std::string::npos);
}

TEST_CASE("an application's entries: held by it, found by holder, ended within a grace unless renewed") {
  Harness h;
  SpaceClient app({.endpoint = h.service->rpc_endpoint()}, "app-9");
  lease::LeaseClient leases({.endpoint = h.service->rpc_endpoint()});
  auto kept = must_write(app, entry("demo.Job", {{"i", 1}}));
  auto dropped = must_write(app, entry("demo.Job", {{"i", 2}}));
  must_write(*h.client, entry("demo.Job", {{"i", 3}}));  // someone else's: held by its type
  auto held = leases.leases_of_holder("app-9");
  REQUIRE(held.ok());
  CHECK(held->size() == 2);
  REQUIRE(leases.leases_of_holder("demo.Job").ok());
  CHECK(leases.leases_of_holder("demo.Job")->size() == 1);
  // The application moves: its leases end within the grace; its new node keeps one by renewing it.
  auto ending = leases.expire_all_of_holder("app-9", 5000ms);
  REQUIRE(ending.ok());
  CHECK(ending->leases.size() == 2);
  CHECK(app.contents_all(tmpl("demo.Job"))->size() == 3);  // still there meanwhile
  REQUIRE(leases.renew(kept.written.lease_id, 600'000).ok());
  CHECK(test::eventually([&] { return h.service->space().size() == 2; }, 20'000));
  CHECK(app.read_if_exists(tmpl("demo.Job", {{"i", 1}}))->has_value());
  CHECK(!app.read_if_exists(tmpl("demo.Job", {{"i", 2}}))->has_value());
  CHECK(app.read_if_exists(tmpl("demo.Job", {{"i", 3}}))->has_value());
  CHECK(leases.get(dropped.written.lease_id).status().code() == Code::kNotFound);
  // A holder over the landlord's limit is refused, nothing written.
  SpaceClient long_named({.endpoint = h.service->rpc_endpoint()}, std::string(5000, 'h'));
  auto refused = long_named.write(entry("demo.Job", {{"i", 4}}), 600'000);
  CHECK(refused.status().code() == Code::kInvalidArgument);
  CHECK(refused.status().message().find("holder") != std::string::npos);
  CHECK(h.service->space().size() == 2);
}

// `count` entries in each of two groups that share none, written through the engine: a template
// asking for both (`both_lamps`) walks the smaller group whole.
void write_lamps(Space& space, int count) {
  for (int done = 0; done < count; done += 500) {
    std::vector<WriteRequest> writes;
    for (int i = 0; i < 500; ++i) {
      writes.push_back(WriteRequest{.entry = entry("demo.Lamp", {{"color", Value("red")}}), .duration_ms = 600'000});
      writes.push_back(WriteRequest{.entry = entry("demo.Lamp", {{"shape", Value("round")}}), .duration_ms = 600'000});
    }
    for (const auto& r : space.write_many(std::move(writes))) REQUIRE_MESSAGE(r.ok(), r.status().to_string());
  }
}

const Template both_lamps = tmpl("demo.Lamp", {{"color", Value("red")}, {"shape", Value("round")}});

Entry purple_lamp(int n) { return entry("demo.Lamp", {{"color", Value("red")}, {"shape", Value("round")}, {"n", n}}); }

// A space on an in-memory landlord that joins every transaction at once.
struct JoiningEngine {
  JoiningEngine() {
    auto l = lease::Landlord::open(lease::LandlordOptions{});
    REQUIRE_MESSAGE(l.ok(), l.status().to_string());
    landlord = std::move(*l);
    SpaceOptions so;
    so.landlord = landlord.get();
    so.join = [](const TxnRef&, const std::string&, std::function<void(Status)> done) { done(Status::Ok()); };
    auto opened = Space::open(so);
    REQUIRE_MESSAGE(opened.ok(), opened.status().to_string());
    space = std::move(*opened);
  }
  std::unique_ptr<lease::Landlord> landlord;
  std::unique_ptr<Space> space;
};

TEST_CASE("a contents page walks a bounded slice of a long list and says where to go on") {
  Harness h;
  write_lamps(h.service->space(), 6000);  // more candidates than a page walks
  const Template& both = both_lamps;
  auto first = h.client->contents(both, 0, 100);
  REQUIRE(first.ok());
  CHECK(first->entries.empty());
  CHECK_FALSE(first->done);
  CHECK(first->cursor > 0);
  // Matches past the first slice: every one listed once, in write order, page by page.
  for (int n = 1; n <= 3; ++n) must_write(*h.client, purple_lamp(n));
  auto listed = h.client->contents_all(both, 2);
  REQUIRE(listed.ok());
  REQUIRE(listed->size() == 3);
  for (int n = 1; n <= 3; ++n) CHECK((*listed)[n - 1].field("n")->as_int() == n);
  ContentsIterator it(*h.client, both, 100);
  int seen = 0;
  for (;;) {
    auto e = it.next();
    REQUIRE(e.ok());
    if (!e->has_value()) break;
    ++seen;
  }
  CHECK(seen == 3);
}

TEST_CASE("reads and takes that walk long lists leave the server to other calls, and answer rightly") {
  Harness h;
  write_lamps(h.service->space(), 6000);  // more candidates than the arriving thread walks
  const Template& both = both_lamps;
  // While the walk waits for a scan thread, another client's call is answered.
  SpaceClient other({.endpoint = h.service->rpc_endpoint()});
  std::atomic<bool> answered_in_time{false};
  fault::arm_call("space.match.long", [&] {
    auto found = other.read_if_exists(tmpl("demo.Lamp", {{"color", Value("red")}}), std::nullopt, rpc::CallOptions{.timeout = 2000ms});
    answered_in_time = found.ok() && found->has_value();
  });
  auto none = h.client->read_if_exists(both);
  fault::disarm_all();
  REQUIRE_MESSAGE(none.ok(), none.status().to_string());
  CHECK_FALSE(none->has_value());
  CHECK(answered_in_time);
  auto no_take = h.client->take_if_exists(both);
  REQUIRE(no_take.ok());
  CHECK_FALSE(no_take->has_value());
  // Matches past the slices: found by a read, taken by a take of many in write order, and a
  // blocking take woken by a write once it waits.
  for (int n = 1; n <= 3; ++n) must_write(*h.client, purple_lamp(n));
  auto one = h.client->read_if_exists(both);
  REQUIRE(one.ok());
  REQUIRE(one->has_value());
  CHECK((*one)->field("n")->as_int() == 1);
  auto taken = h.client->take_many(both, 10, 0ms);
  REQUIRE(taken.ok());
  REQUIRE(taken->size() == 3);
  for (int n = 1; n <= 3; ++n) CHECK((*taken)[n - 1].field("n")->as_int() == n);
  auto waiting = std::async(std::launch::async, [&] { return other.take(both, 5000ms); });
  REQUIRE(test::eventually([&] { return h.service->space().stats().waiters == 1; }, 5000));
  must_write(*h.client, purple_lamp(4));
  auto woken = waiting.get();
  REQUIRE_MESSAGE(woken.ok(), woken.status().to_string());
  REQUIRE(woken->has_value());
  CHECK((*woken)->field("n")->as_int() == 4);
  CHECK(h.service->space().stats().entries == 12000);
}

TEST_CASE("a walk held up past its caller's deadline takes nothing; a wait counts from the call's arrival") {
  Harness h;
  write_lamps(h.service->space(), 6000);
  must_write(*h.client, purple_lamp(1));  // past the first slice
  // The caller stops listening while the take waits for a scan thread: the entry stays.
  fault::arm_call("space.match.long", [] { std::this_thread::sleep_for(600ms); });
  auto late = h.client->take_if_exists(both_lamps, std::nullopt, rpc::CallOptions{.timeout = 300ms});
  CHECK_FALSE(late.ok());
  REQUIRE(test::eventually([&] { return fault::hits("space.match.long") >= 1; }, 2000));
  std::this_thread::sleep_for(500ms);  // the walk ran out of its caller's time
  fault::disarm_all();
  auto still = h.client->read_if_exists(both_lamps);
  REQUIRE(still.ok());
  CHECK(still->has_value());
  // A blocking read of another template held up as long as its timeout is answered at once
  // after, not a timeout later.
  REQUIRE(h.client->take_if_exists(both_lamps).ok());
  fault::arm_call("space.match.long", [] { std::this_thread::sleep_for(400ms); });
  auto t0 = std::chrono::steady_clock::now();
  auto nothing = h.client->read(both_lamps, 300ms);
  auto waited = std::chrono::steady_clock::now() - t0;
  fault::disarm_all();
  REQUIRE_MESSAGE(nothing.ok(), nothing.status().to_string());
  CHECK_FALSE(nothing->has_value());
  CHECK(waited < 650ms);
}

TEST_CASE("takers walking long lists in slices, side by side: every match taken exactly once") {
  Harness h;
  Space& space = h.service->space();
  // 200 matches spread among 24,000 candidates, so that takes hold some and go on walking.
  constexpr int kMatches = 200;
  for (int n = 0; n < kMatches; ++n) {
    if (n % 20 == 0) write_lamps(space, 1000);
    REQUIRE(space.write({purple_lamp(n), 600'000}).ok());
  }
  write_lamps(space, 2000);
  std::mutex mu;
  std::map<int64_t, int> taken;
  std::atomic<int> count{0}, errors{0};
  std::vector<std::thread> takers;
  for (int t = 0; t < 4; ++t) {
    takers.emplace_back([&, t] {
      SpaceClient c({.endpoint = h.service->rpc_endpoint()});
      while (count.load() < kMatches && errors.load() == 0) {
        auto got = c.take_many(both_lamps, t % 2 == 0 ? 1 : 7, 200ms);
        if (!got.ok()) {
          errors++;
          MESSAGE(got.status().to_string());
          return;
        }
        std::lock_guard lock(mu);
        for (const Entry& e : *got) taken[e.field("n")->as_int()]++;
        count += static_cast<int>(got->size());
      }
    });
  }
  for (auto& t : takers) t.join();
  CHECK(errors.load() == 0);
  CHECK(taken.size() == kMatches);
  for (const auto& [n, times] : taken) {
    CAPTURE(n);
    CHECK(times == 1);
  }
  auto left = h.client->read_if_exists(both_lamps);
  REQUIRE(left.ok());
  CHECK_FALSE(left->has_value());
}

TEST_CASE("a take whose match goes between finding and holding it walks on to the next") {
  Harness h;
  write_lamps(h.service->space(), 5000);
  must_write(*h.client, purple_lamp(1));  // past the arriving thread's walk: found by a scan thread
  write_lamps(h.service->space(), 3000);
  must_write(*h.client, purple_lamp(2));
  // Another client takes the first match after the slice found it and before it is held.
  SpaceClient other({.endpoint = h.service->rpc_endpoint()});
  bool taken_between = false;
  fault::arm_call("space.match.found", [&] {
    auto t = other.take_if_exists(tmpl("demo.Lamp", {{"n", 1}}));
    taken_between = t.ok() && t->has_value();
  });
  auto got = h.client->take_if_exists(both_lamps);
  fault::disarm_all();
  CHECK(taken_between);
  REQUIRE_MESSAGE(got.ok(), got.status().to_string());
  REQUIRE_MESSAGE(got->has_value(), "the take answered none beside a visible match");
  CHECK((*got)->field("n")->as_int() == 2);
}

TEST_CASE("a blocking read from a completion on a scan thread is refused rather than left to wait for it") {
  JoiningEngine e;
  write_lamps(*e.space, 5000);  // a walk long enough for a scan thread
  std::promise<Status> inner;
  e.space->match_async(MatchRequest{both_lamps, false, 1, 0ms, std::nullopt}, [&](Result<std::vector<Entry>> r) {
    REQUIRE(r.ok());
    inner.set_value(e.space->read(both_lamps, 0ms).status());
  });
  auto answered = inner.get_future();
  REQUIRE(answered.wait_for(5s) == std::future_status::ready);
  CHECK(answered.get().code() == Code::kFailedPrecondition);
  CHECK(e.space->read(both_lamps, 0ms).ok());  // from any other thread, as ever
}

TEST_CASE("blocking calls from a completion on the group-commit thread are refused rather than left to wait for it") {
  JoiningEngine e;
  REQUIRE(e.space->write({purple_lamp(1), 600'000}).ok());
  // A write's completion and a take's both run on the group-commit thread; a blocking call made
  // there would wait for a batch that thread is to write after it.
  std::promise<std::vector<Status>> from_write;
  e.space->write_async({purple_lamp(2), 600'000}, [&](Result<Written> w) {
    std::vector<Status> got{w.status(), e.space->write({purple_lamp(3), 600'000}).status()};
    got.push_back(e.space->write_many({{purple_lamp(4), 600'000}}).front().status());
    got.push_back(e.space->take(both_lamps, 0ms).status());
    got.push_back(e.space->read(both_lamps, 0ms).status());
    got.push_back(e.space->take_many(both_lamps, 2, 0ms).status());
    from_write.set_value(std::move(got));
  });
  auto answered = from_write.get_future();
  REQUIRE(answered.wait_for(5s) == std::future_status::ready);
  std::vector<Status> got = answered.get();
  CHECK_MESSAGE(got[0].ok(), got[0].to_string());
  for (size_t i = 1; i < got.size(); ++i) {
    CAPTURE(i);
    CHECK_MESSAGE(got[i].code() == Code::kFailedPrecondition, got[i].to_string());
  }
  std::promise<Status> from_take;
  e.space->match_async(MatchRequest{both_lamps, true, 1, 0ms, std::nullopt}, [&](Result<std::vector<Entry>> r) {
    from_take.set_value(r.ok() ? e.space->take(both_lamps, 0ms).status() : r.status());
  });
  auto taken = from_take.get_future();
  REQUIRE(taken.wait_for(5s) == std::future_status::ready);
  CHECK(taken.get().code() == Code::kFailedPrecondition);
  // Nothing was changed by the refusals; from any other thread the calls work as ever.
  auto rest = e.space->take_many(both_lamps, 10, 0ms);
  REQUIRE(rest.ok());
  CHECK(rest->size() == 1);
  CHECK(e.space->write({purple_lamp(5), 600'000}).ok());
}

TEST_CASE("a walk in slices sees an entry that came back behind it: a blocking take, and IfExists") {
  JoiningEngine e;
  Space& space = *e.space;
  // The match, first in write order, is held by a transaction; thousands of candidates follow it.
  REQUIRE(space.write({purple_lamp(1), 600'000}).ok());
  write_lamps(space, 12000);
  for (bool blocking : {true, false}) {
    CAPTURE(blocking);
    const TxnRef t{txn::TxnId{11, blocking ? 1u : 2u}, "manager"};
    auto held = space.take(both_lamps, 0ms, t);
    REQUIRE(held.ok());
    REQUIRE(held->has_value());
    // Between two slices of the walk the transaction aborts: the entry is back, behind the walk.
    fault::arm_call("space.match.between_slices", [&] { REQUIRE(space.abort(t.id).ok()); });
    auto t0 = std::chrono::steady_clock::now();
    auto got = blocking ? space.read(both_lamps, 3000ms) : space.read(both_lamps);
    auto waited = std::chrono::steady_clock::now() - t0;
    fault::disarm_all();
    REQUIRE_MESSAGE(got.ok(), got.status().to_string());
    REQUIRE_MESSAGE(got->has_value(), "the read passed the entry that came back");
    CHECK((*got)->field("n")->as_int() == 1);
    CHECK(waited < 2s);
  }
  // The same for a take that would wait.
  const TxnRef t{txn::TxnId{11, 3}, "manager"};
  REQUIRE(space.take(both_lamps, 0ms, t)->has_value());
  fault::arm_call("space.match.between_slices", [&] { REQUIRE(space.abort(t.id).ok()); });
  auto got = space.take(both_lamps, 3000ms);
  fault::disarm_all();
  REQUIRE(got.ok());
  REQUIRE_MESSAGE(got->has_value(), "the take waited out its timeout beside a matching entry");
  CHECK((*got)->field("n")->as_int() == 1);
}

TEST_CASE("a write is stored while long template reads keep coming on several threads") {
  Harness h;
  Space& space = h.service->space();
  write_lamps(space, 4000);  // within one slice: each read walks them in one hold
  const Template& both = both_lamps;
  // Four threads read with it over and over (readIfExists, a contents page): their holds of the
  // space's lock overlap, so it is never free of readers.
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> walks{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t) {
    readers.emplace_back([&, t] {
      while (!stop) {
        if (t % 2 == 0) {
          (void)space.read(both);
        } else {
          (void)space.contents(both, 0, 100);
        }
        walks++;
      }
    });
  }
  REQUIRE(test::eventually([&] { return walks.load() >= 8; }, 5000));
  auto written = std::async(std::launch::async, [&] { return h.client->write(entry("demo.Lamp", {{"color", Value("blue")}}), 600'000); });
  bool in_time = written.wait_for(3s) == std::future_status::ready;
  stop = true;
  for (auto& t : readers) t.join();
  CHECK_MESSAGE(in_time, "the write waited for the readers to stop");
  auto r = written.get();
  CHECK_MESSAGE(r.ok(), r.status().to_string());
}

TEST_CASE("eight concurrent takers over 10,000 entries: every entry taken exactly once") {
  Harness h;
  constexpr int kEntries = 10'000;
  constexpr int kWriters = 4;
  constexpr int kTakers = 8;
  std::atomic<int> written{0};
  std::mutex mu;
  std::map<int64_t, int> taken_count;
  std::atomic<int> taken{0};
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  // Half written before the takers start, half while they take.
  auto write_range = [&](int from, int to, int w) {
    SpaceClient c({.endpoint = h.service->rpc_endpoint()});
    for (int i = from + w; i < to; i += kWriters) {
      auto r = c.write(entry("demo.Item", {{"id", i}, {"parity", i % 2}}), 600'000);
      if (!r.ok()) {
        errors++;
        continue;
      }
      written++;
    }
  };
  for (int w = 0; w < kWriters; ++w) threads.emplace_back(write_range, 0, kEntries / 2, w);
  for (auto& t : threads) t.join();
  threads.clear();
  for (int w = 0; w < kWriters; ++w) threads.emplace_back(write_range, kEntries / 2, kEntries, w);
  for (int t = 0; t < kTakers; ++t) {
    threads.emplace_back([&, t] {
      SpaceClient c({.endpoint = h.service->rpc_endpoint()});
      // Some take one at a time, blocking; some take many; one takes by field.
      while (taken.load() < kEntries) {
        Result<std::vector<Entry>> got = std::vector<Entry>{};
        if (t % 3 == 0) {
          got = c.take_many(tmpl("demo.Item"), 7, 100ms);
        } else if (t == 1) {
          auto one = c.take(tmpl("demo.Item", {{"parity", 1}}), 100ms);
          if (!one.ok()) {
            got = one.status();
          } else if (*one) {
            got = std::vector<Entry>{**one};
          }
        } else {
          auto one = c.take(tmpl("demo.Item"), 100ms);
          if (!one.ok()) {
            got = one.status();
          } else if (*one) {
            got = std::vector<Entry>{**one};
          }
        }
        if (!got.ok()) {
          errors++;
          continue;
        }
        std::lock_guard lock(mu);
        for (const Entry& e : *got) {
          taken_count[e.field("id")->as_int()]++;
          taken++;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(errors.load() == 0);
  CHECK(written.load() == kEntries);
  CHECK(taken.load() == kEntries);
  CHECK(taken_count.size() == static_cast<size_t>(kEntries));
  for (const auto& [id, n] : taken_count) {
    if (n != 1) FAIL_CHECK("entry ", id, " taken ", n, " times");
  }
  CHECK(h.service->space().size() == 0);
  h.stop();
  h.start();
  CHECK(h.service->space().size() == 0);
}

TEST_CASE("bad input gets a clear status and changes nothing") {
  Harness h;
  SpaceClient& c = *h.client;
  must_write(c, entry("demo.Keep", {{"i", 1}}));
  auto code_of = [](const auto& r) { return r.status().code(); };

  // Oversized entry (--max-entry-bytes 4096 here).
  auto big = c.write(entry("demo.Big", {{"blob", Value(Value::Bytes(8000, 1))}}));
  CHECK(code_of(big) == Code::kInvalidArgument);
  CHECK(big.status().message().find("at most 4096") != std::string::npos);
  // Malformed entries and templates.
  CHECK(code_of(c.write(entry("not a type!", {}))) == Code::kInvalidArgument);
  CHECK(code_of(c.write(entry("", {}))) == Code::kInvalidArgument);
  CHECK(code_of(c.read_if_exists(tmpl("bad type"))) == Code::kInvalidArgument);
  CHECK(code_of(c.write(entry("demo.X", {}), 0)) == Code::kInvalidArgument);
  CHECK(code_of(c.write(entry("demo.X", {}), -7)) == Code::kInvalidArgument);
  CHECK(code_of(c.take_many(tmpl("demo.Keep"), 0)) == Code::kInvalidArgument);
  CHECK(code_of(c.take_many(tmpl("demo.Keep"), 100'000)) == Code::kInvalidArgument);
  CHECK(code_of(c.contents(tmpl("demo.Keep"), 0, 0)) == Code::kInvalidArgument);
  // A template larger than the largest entry, waited on or stored with a notify.
  Template huge = tmpl("demo.Keep", {{"blob", Value(Value::Bytes(8000, 1))}});
  auto too_big = c.read_if_exists(huge);
  CHECK(code_of(too_big) == Code::kInvalidArgument);
  CHECK(too_big.status().message().find("template of") != std::string::npos);
  CHECK(code_of(c.take(huge, 1000ms)) == Code::kInvalidArgument);
  CHECK(code_of(c.notify(huge, 60'000)) == Code::kInvalidArgument);
  // A holder is plain text: holderLeases and cancelHolder could never name one with a NUL.
  Space& space = h.service->space();
  std::string nul("app\0x", 5);
  auto held = space.write(WriteRequest{.entry = entry("demo.Held", {}), .duration_ms = 60'000, .holder = nul});
  CHECK(code_of(held) == Code::kInvalidArgument);
  CHECK(held.status().message().find("NUL") != std::string::npos);
  CHECK(code_of(space.notify(tmpl("demo.Held"), 60'000, nul)) == Code::kInvalidArgument);
  // A reference to a value that is not stored.
  ContentHash fake{};
  fake[0] = 1;
  CHECK(code_of(c.write(entry("demo.X", {{"v", value_ref(fake)}}))) == Code::kNotFound);
  // Unknown transaction: the manager does not know it.
  TxnRef unknown{txn::TxnId::random(), h.service->rpc_endpoint()};
  auto w = c.write(entry("demo.X", {}), 60'000, unknown);
  CHECK(code_of(w) == Code::kNotFound);
  CHECK(code_of(c.take_if_exists(tmpl("demo.Keep"), unknown)) == Code::kNotFound);
  CHECK(code_of(c.read_if_exists(tmpl("demo.Keep"), TxnRef{txn::TxnId::random(), ""})) == Code::kInvalidArgument);
  CHECK(code_of(c.write(entry("demo.X", {}), 60'000, TxnRef{txn::TxnId::random(), "bogus"})) == Code::kInvalidArgument);
  // A transaction without an id is refused, not taken as none.
  TxnRef nil{txn::TxnId{}, h.service->rpc_endpoint()};
  CHECK(code_of(c.write(entry("demo.X", {}), 60'000, nil)) == Code::kInvalidArgument);
  CHECK(code_of(c.take_if_exists(tmpl("demo.Keep"), nil)) == Code::kInvalidArgument);
  // Garbage payloads.
  for (const char* method : {"space.write", "space.writeMany", "space.take", "space.read", "space.contents", "space.takeMany",
                             "space.notify", "space.putChunk", "space.putChunks", "space.getChunk", "space.getChunks", "space.putValue", "txn.commit",
                             "participant.prepare"}) {
    kj::Array<capnp::word> junk = kj::heapArray<capnp::word>(3);
    memset(static_cast<void*>(junk.begin()), 0xff, junk.size() * sizeof(capnp::word));
    std::promise<rpc::Reply> p;
    c.rpc().call_async_raw(method, std::move(junk), {}, [&](rpc::Reply r) { p.set_value(std::move(r)); });
    auto r = p.get_future().get();
    CHECK_MESSAGE(!r.ok(), method);
  }
  // Values: wrong hash, wrong sizes, unknown chunks.
  std::vector<uint8_t> data(1000, 7);
  CHECK(code_of(c.put_chunk(fake, data)) == Code::kInvalidArgument);
  CHECK(code_of(c.put_chunk(hash_bytes({}), {})) == Code::kInvalidArgument);
  std::vector<uint8_t> out;
  CHECK(c.get_chunk(fake, out).code() == Code::kNotFound);
  CHECK(c.get_value(fake, [](std::span<const uint8_t>) { return Status::Ok(); }).code() == Code::kNotFound);

  // Nothing changed.
  auto all = c.contents_all(tmpl(""));
  REQUIRE(all.ok());
  CHECK(all->size() == 1);
  CHECK(h.service->values().stats().chunks == 0);
  CHECK(h.service->space().stats().transactions == 0);
}

TEST_CASE("writes the landlord refuses, batched with takes, leave the takes done and the space serving") {
  // A group commit whose every write is refused before anything is written still writes its
  // takes, on their own.
  Harness h;
  constexpr int kEntries = 800;
  constexpr int kThreads = 4;
  std::vector<Entry> fill;
  for (int i = 0; i < kEntries; ++i) fill.push_back(entry("demo.Fill", {{"i", i}}));
  auto written = h.client->write_many(fill, 600'000);
  REQUIRE(written.ok());
  std::atomic<int> refused{0}, other{0}, taken{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      SpaceClient own({.endpoint = h.service->rpc_endpoint()});
      for (int i = 0; i < kEntries / kThreads; ++i) {
        auto w = own.write(entry("demo.Forever", {}), lease::kDurationForever);
        (w.status().code() == Code::kPermissionDenied ? refused : other)++;
      }
    });
    threads.emplace_back([&] {
      SpaceClient own({.endpoint = h.service->rpc_endpoint()});
      for (int i = 0; i < kEntries / kThreads; ++i) {
        auto e = own.take_if_exists(tmpl("demo.Fill"));
        if (e.ok() && e->has_value()) taken++;
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(refused == kEntries);
  CHECK(other == 0);
  CHECK(taken == kEntries);
  CHECK(h.client->contents_all(tmpl(""))->empty());
  h.stop();
  h.start();
  CHECK(h.client->contents_all(tmpl(""))->empty());
}

TEST_CASE("an entry whose lease ends during a take that then fails is gone, not back") {
  Harness h;
  WriteReceipt r = must_write(*h.client, entry("demo.Brief", {{"i", 1}}));
  Status cancelled = internal_error("the take never reached its commit");
  fault::arm_call("space.take.before_commit", [&] { cancelled = h.service->landlord().cancel(r.written.lease_id); });
  fault::arm("space.batch.write_failed", fault::Action::kFail);
  auto taken = h.client->take_if_exists(tmpl("demo.Brief"));
  fault::disarm_all();
  REQUIRE_MESSAGE(cancelled.ok(), cancelled.to_string());
  CHECK(taken.status().code() == Code::kInternal);
  CHECK(!h.client->read_if_exists(tmpl("demo.Brief"))->has_value());
  CHECK(h.service->space().size() == 0);
  h.stop();
  h.start();
  CHECK(h.service->space().size() == 0);
  CHECK(!h.client->read_if_exists(tmpl("demo.Brief"))->has_value());
}

TEST_CASE("an entry whose lease ends between its commit and its arrival in memory is not left behind") {
  // The expiry runs in that instant, as a landlord's expiry thread may: it finds no entry yet.
  test::TempDir dir;
  test::FakeClocks clocks;
  lease::LandlordOptions lo;
  lo.path = dir.file("space.db");
  lo.clocks = clocks.clocks();
  lo.run_expiry_thread = false;
  Engine e(std::move(lo));
  std::unique_ptr<Space>& space = e.space;
  size_t expired = 0;
  fault::arm_call("space.batch.after_commit", [&] {
    clocks.mono_ns += 2'000'000'000;
    expired = e.landlord->expire_due();
  });
  auto w = space->write({entry("demo.Brief", {{"i", 1}}), 1000});
  fault::disarm_all();
  REQUIRE_MESSAGE(w.ok(), w.status().to_string());
  CHECK(expired == 1);
  CHECK(space->size() == 0);

  // The same with a cancel of the holder's leases (a migration's) in that instant.
  size_t cancelled = 0;
  fault::arm_call("space.batch.after_commit", [&] {
    auto c = e.landlord->cancel_all_of_holder("demo.Gone");
    if (c.ok()) cancelled = c->size();
  });
  auto g = space->write({entry("demo.Gone", {{"i", 2}}), 60'000});
  fault::disarm_all();
  REQUIRE_MESSAGE(g.ok(), g.status().to_string());
  CHECK(cancelled == 1);
  CHECK(space->size() == 0);
}

TEST_CASE("entries whose leases end while the space opens are dropped once it is wired") {
  Harness h;
  must_write(*h.client, entry("demo.Brief", {{"i", 1}}), 1500);
  must_write(*h.client, entry("demo.Stays", {{"i", 2}}));
  h.stop();
  // The load finds the entry alive; its lease ends before the landlord's events reach the space.
  fault::arm_call("space.open.after_load", [] { std::this_thread::sleep_for(2500ms); });
  h.start();
  fault::disarm_all();
  CHECK(h.service->space().size() == 1);
  CHECK(!h.client->read_if_exists(tmpl("demo.Brief"))->has_value());
  CHECK(h.client->read_if_exists(tmpl("demo.Stays"))->has_value());
}

TEST_CASE("until its endpoint is known a space answers 'starting', never a receipt without a landlord") {
  test::TempDir dir;
  SpaceServiceOptions o;
  o.data_dir = dir.file("space");
  o.rpc_endpoint = "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port());
  Status early = Status::Ok();
  fault::arm_call("space.service.after_server_start", [&] {
    SpaceClient c({.endpoint = o.rpc_endpoint});
    early = c.write(entry("demo.Early", {}), 60'000).status();
  });
  auto s = SpaceService::start(o);
  fault::disarm_all();
  REQUIRE_MESSAGE(s.ok(), s.status().to_string());
  CHECK(early.code() == Code::kUnavailable);
  CHECK(early.message().find("starting") != std::string::npos);
  SpaceClient c({.endpoint = (*s)->rpc_endpoint()});
  auto w = c.write(entry("demo.Later", {}), 60'000);
  REQUIRE(w.ok());
  CHECK(w->landlord == (*s)->rpc_endpoint());
  CHECK((*s)->space().size() == 1);
}

TEST_CASE("roles: clients use entries and values; participant, join and collect need service or admin") {
  test::TempDir dir;
  SpaceServiceOptions o;
  o.data_dir = dir.file("space");
  o.plaintext_role = security::Role::kClient;
  auto s = SpaceService::start(o);
  REQUIRE(s.ok());
  SpaceClient c({.endpoint = (*s)->rpc_endpoint()});
  CHECK(c.write(entry("demo.R", {}), 60'000).ok());
  CHECK(c.take_if_exists(tmpl("demo.R")).ok());
  std::vector<uint8_t> data(100, 1);
  CHECK(c.put_value(data).ok());
  auto denied = [&](const char* method, auto fill) {
    capnp::MallocMessageBuilder message;
    fill(message);
    return c.rpc().call(method, message).status().code() == Code::kPermissionDenied;
  };
  CHECK(denied("space.collect", [](capnp::MallocMessageBuilder& m) { m.initRoot<proto::StatsParams>(); }));
  CHECK(denied("participant.prepare", [](capnp::MallocMessageBuilder& m) {
    auto p = m.initRoot<proto::ParticipantParams>();
    p.setCoordinator("x");
  }));
  CHECK(denied("participant.commit", [](capnp::MallocMessageBuilder& m) { m.initRoot<proto::ParticipantParams>(); }));
  CHECK(denied("txn.join", [](capnp::MallocMessageBuilder& m) {
    m.initRoot<proto::JoinParams>().setParticipant("space:x@tcp://127.0.0.1:1");
  }));
  // A client still creates and ends transactions.
  TxnClient tm({.endpoint = (*s)->rpc_endpoint()});
  auto t = tm.create(std::chrono::seconds(10));
  REQUIRE(t.ok());
  CHECK(c.write(entry("demo.R", {{"i", 2}}), 60'000, *t).ok());
  CHECK(tm.abort(t->id).ok());
  CHECK(!c.read_if_exists(tmpl("demo.R", {{"i", 2}}))->has_value());
}

TEST_CASE("a space destroyed while its commit thread writes a batch: the take that batch hands an entry to is answered") {
  // The batch is durable and its entry not yet in memory when a taker comes and another thread
  // starts destroying the space; putting the entry in then hands it to the taker, whose take is
  // posted to the group commit the destructor is stopping.
  test::TempDir dir;
  lease::LandlordOptions lo;
  lo.path = dir.file("space.db");
  Engine e(std::move(lo));
  std::unique_ptr<Space>& space = e.space;

  std::promise<void> posted, stopping;
  std::promise<Result<std::vector<Entry>>> take_answer;
  std::promise<Result<Written>> write_answer;
  std::thread closer;
  fault::arm_call("group_commit.stopping", [&] { stopping.set_value(); });
  fault::arm_call("space.batch.after_commit", [&, s = space.get()] {
    posted.get_future().wait();  // the writer has left write_async
    s->match_async(MatchRequest{tmpl("demo.Last"), true, 1, 60s, std::nullopt},
                   [&](Result<std::vector<Entry>> r) { take_answer.set_value(std::move(r)); });
    e.target = nullptr;
    closer = std::thread([&] { space.reset(); });
    stopping.get_future().wait_for(5s);
  });
  space->write_async({entry("demo.Last", {{"i", 1}}), 600'000}, [&](Result<Written> w) { write_answer.set_value(w); });
  posted.set_value();
  auto written = write_answer.get_future();
  REQUIRE(written.wait_for(10s) == std::future_status::ready);
  CHECK(written.get().ok());
  auto taken = take_answer.get_future();
  REQUIRE(taken.wait_for(10s) == std::future_status::ready);
  Result<std::vector<Entry>> t = taken.get();
  CHECK(t.status().code() == Code::kUnavailable);
  closer.join();
  fault::disarm_all();

  // The take was never written: the entry is still there.
  space = e.open();
  auto found = space->read(tmpl("demo.Last"));
  REQUIRE(found.ok());
  CHECK(found->has_value());
}
