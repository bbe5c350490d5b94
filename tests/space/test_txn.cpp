// Transactions: visibility of writes and takes under a transaction, commit, abort, a take under an
// aborted transaction coming back (and waking a blocked taker), and the atomic move of an entry
// from one space to another through the transaction manager: in-process over RPC, then with two
// real djinn-space processes, one of them killed while prepared (back at once, and back only after
// the manager gave up on it) and while committing; and, on the engine, how a space restarted with
// transactions in doubt asks their managers.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <future>
#include <mutex>
#include <set>
#include <thread>

#include "djinn/core/fault.h"
#include "djinn/lease/landlord.h"
#include "djinn/space/client.h"
#include "djinn/space/service.h"
#include "djinn/space/space.h"
#include "djinn/space/txn_manager.h"
#include "djinn/space/values.h"
#include "support/test_support.h"

using namespace djinn;
using namespace djinn::space;
using namespace std::chrono_literals;

namespace {

std::unique_ptr<SpaceService> start_space(const test::TempDir& dir, const std::string& name, bool manager,
                                          std::chrono::milliseconds join_timeout = SpaceServiceOptions{}.join_timeout) {
  SpaceServiceOptions o;
  o.data_dir = dir.file(name);
  o.name = name;
  o.txn_manager = manager;
  o.join_timeout = join_timeout;
  o.policy.max_duration = 1h;
  auto s = SpaceService::start(o);
  REQUIRE_MESSAGE(s.ok(), s.status().to_string());
  return std::move(*s);
}

Entry entry(std::string type, Fields fields) {
  Entry e;
  e.type = std::move(type);
  e.fields = std::move(fields);
  return e;
}

Template tmpl(std::string type, Fields fields = {}) { return Template{std::move(type), std::move(fields)}; }

}  // namespace

TEST_CASE("visibility, commit and abort under a transaction") {
  test::TempDir dir;
  auto a = start_space(dir, "a", true);
  SpaceClient c({.endpoint = a->rpc_endpoint()});
  TxnClient tm({.endpoint = a->rpc_endpoint()});

  REQUIRE(c.write(entry("demo.Slot", {{"i", 1}}), 600'000).ok());
  auto t = tm.create(30s);
  REQUIRE_MESSAGE(t.ok(), t.status().to_string());

  // Written under T: visible to T only.
  REQUIRE(c.write(entry("demo.Slot", {{"i", 2}}), 600'000, *t).ok());
  CHECK(!c.read_if_exists(tmpl("demo.Slot", {{"i", 2}}))->has_value());
  CHECK(c.read_if_exists(tmpl("demo.Slot", {{"i", 2}}), *t)->has_value());
  // Taken under T: hidden from others, and from T itself.
  auto taken = c.take_if_exists(tmpl("demo.Slot", {{"i", 1}}), *t);
  REQUIRE(taken.ok());
  REQUIRE(taken->has_value());
  CHECK(!c.read_if_exists(tmpl("demo.Slot", {{"i", 1}}))->has_value());
  CHECK(!c.take_if_exists(tmpl("demo.Slot", {{"i", 1}}))->has_value());
  CHECK(c.contents_all(tmpl("demo.Slot"))->empty());

  auto outcome = tm.commit(t->id);
  REQUIRE_MESSAGE(outcome.ok(), outcome.status().to_string());
  CHECK(*outcome == txn::Outcome::kCommitted);
  CHECK(c.read_if_exists(tmpl("demo.Slot", {{"i", 2}}))->has_value());
  CHECK(!c.read_if_exists(tmpl("demo.Slot", {{"i", 1}}))->has_value());
  // Operations under an ended transaction are refused, nothing changed.
  CHECK(!c.write(entry("demo.Slot", {{"i", 9}}), 600'000, *t).ok());
  CHECK(!c.read_if_exists(tmpl("demo.Slot", {{"i", 9}}))->has_value());

  // Abort: the write vanishes, the take comes back and wakes a taker blocked on it.
  auto u = tm.create(30s);
  REQUIRE(u.ok());
  REQUIRE(c.write(entry("demo.Slot", {{"i", 3}}), 600'000, *u).ok());
  REQUIRE(c.take_if_exists(tmpl("demo.Slot", {{"i", 2}}), *u)->has_value());
  std::promise<Result<std::optional<Entry>>> woken;
  std::thread taker([&] {
    SpaceClient own({.endpoint = a->rpc_endpoint()});
    woken.set_value(own.take(tmpl("demo.Slot", {{"i", 2}}), 10s));
  });
  REQUIRE(test::eventually([&] { return a->space().stats().waiters == 1; }));
  REQUIRE(tm.abort(u->id).ok());
  auto w = woken.get_future().get();
  taker.join();
  REQUIRE(w.ok());
  REQUIRE(w->has_value());
  CHECK((*w)->field("i")->as_int() == 2);
  CHECK(!c.read_if_exists(tmpl("demo.Slot", {{"i", 3}}))->has_value());
  CHECK(*tm.outcome(u->id) == txn::Outcome::kAborted);

  // A transaction that expires aborts: its take comes back.
  REQUIRE(c.write(entry("demo.Slot", {{"i", 4}}), 600'000).ok());
  auto v = tm.create(300ms);
  REQUIRE(v.ok());
  REQUIRE(c.take_if_exists(tmpl("demo.Slot", {{"i", 4}}), *v)->has_value());
  CHECK(!c.read_if_exists(tmpl("demo.Slot", {{"i", 4}}))->has_value());
  CHECK(test::eventually([&] { return c.read_if_exists(tmpl("demo.Slot", {{"i", 4}}))->has_value(); }, 5000));

  // Everything survives a restart as committed.
  a.reset();
  a = start_space(dir, "a", true);
  SpaceClient c2({.endpoint = a->rpc_endpoint()});
  auto all = c2.contents_all(tmpl("demo.Slot"));
  REQUIRE(all.ok());
  CHECK(all->size() == 1);  // i = 4 (i = 2 went to the taker)
}

TEST_CASE("waiters under a transaction: woken by its own writes, answered when it completes") {
  test::TempDir dir;
  auto a = start_space(dir, "a", true);
  SpaceClient c({.endpoint = a->rpc_endpoint()});
  TxnClient tm({.endpoint = a->rpc_endpoint()});
  auto blocked = [&](const TxnRef& t, std::string type) {
    return std::async(std::launch::async, [&a, t, type] {
      SpaceClient own({.endpoint = a->rpc_endpoint()});
      return own.take(tmpl(type), 30s, t);
    });
  };

  // A take under T is woken by a write under T, the only operations that see the entry.
  auto t = tm.create(30s);
  REQUIRE(t.ok());
  auto own = blocked(*t, "demo.Own");
  REQUIRE(test::eventually([&] { return a->space().stats().waiters == 1; }));
  REQUIRE(c.write(entry("demo.Own", {{"i", 1}}), 600'000, *t).ok());
  REQUIRE(own.wait_for(10s) == std::future_status::ready);
  auto got = own.get();
  REQUIRE_MESSAGE(got.ok(), got.status().to_string());
  CHECK(got->has_value());

  // A take under T still waiting when T commits is answered then, not at its timeout, and takes
  // nothing written afterwards.
  auto late = blocked(*t, "demo.Later");
  REQUIRE(test::eventually([&] { return a->space().stats().waiters == 1; }));
  REQUIRE(*tm.commit(t->id) == txn::Outcome::kCommitted);
  REQUIRE(late.wait_for(10s) == std::future_status::ready);
  auto ended = late.get();
  CHECK(ended.status().code() == Code::kFailedPrecondition);
  CHECK(a->space().stats().waiters == 0);
  REQUIRE(c.write(entry("demo.Later", {}), 600'000).ok());
  CHECK(c.read_if_exists(tmpl("demo.Later"))->has_value());
  CHECK(!c.read_if_exists(tmpl("demo.Own"))->has_value());  // written and taken by T

  // The same when T aborts.
  auto u = tm.create(30s);
  REQUIRE(u.ok());
  auto aborting = blocked(*u, "demo.Never");
  REQUIRE(test::eventually([&] { return a->space().stats().waiters == 1; }));
  REQUIRE(tm.abort(u->id).ok());
  REQUIRE(aborting.wait_for(10s) == std::future_status::ready);
  CHECK(aborting.get().status().code() == Code::kFailedPrecondition);
}

TEST_CASE("a participant restarted during a transaction: the manager aborts it rather than commit half of it") {
  test::TempDir dir;
  auto a = start_space(dir, "a", true);
  SpaceServiceOptions bo;
  bo.data_dir = dir.file("b");
  bo.name = "b";
  bo.txn_manager = false;
  bo.policy.max_duration = 1h;
  bo.rpc_endpoint = "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port());  // the same after a restart
  auto start_b = [&] {
    auto s = SpaceService::start(bo);
    REQUIRE_MESSAGE(s.ok(), s.status().to_string());
    return std::move(*s);
  };
  auto b = start_b();
  const std::string b_name = b->participant_name();
  rpc::ClientOptions co{.endpoint = bo.rpc_endpoint};
  co.reconnect_interval_max = 50ms;
  SpaceClient ca({.endpoint = a->rpc_endpoint()});
  SpaceClient cb(co);
  TxnClient tm({.endpoint = a->rpc_endpoint()});
  for (int i = 0; i < 2; ++i) REQUIRE(ca.write(entry("demo.Part", {{"i", i}}), 600'000).ok());
  auto t = tm.create(60s);
  REQUIRE(t.ok());
  auto move = [&](int i) -> Status {
    auto e = ca.take_if_exists(tmpl("demo.Part", {{"i", i}}), *t);
    REQUIRE(e.ok());
    REQUIRE(e->has_value());
    return cb.write(**e, 600'000, *t).status();
  };
  REQUIRE(move(0).ok());

  // B restarts under the same name and loses entry 0's write, staged in memory until prepare.
  b.reset();
  b = start_b();
  REQUIRE(b->participant_name() == b_name);
  Status second = move(1);
  CHECK(second.code() == Code::kAborted);
  CHECK_MESSAGE(second.message().find("restarted") != std::string::npos, second.to_string());
  CHECK(*tm.outcome(t->id) == txn::Outcome::kAborted);
  auto committed = tm.commit(t->id);  // too late: it stays aborted
  CHECK((!committed.ok() || *committed == txn::Outcome::kAborted));
  // Both entries are back in A, none is in B.
  CHECK(test::eventually([&] { return ca.contents_all(tmpl("demo.Part"))->size() == 2; }, 10000));
  CHECK(cb.contents_all(tmpl("demo.Part"))->empty());
}

TEST_CASE("a manager that does not answer holds up only the operations under its own transactions") {
  test::TempDir dir;
  auto a = start_space(dir, "a", true);
  TxnClient tm({.endpoint = a->rpc_endpoint()});
  auto good = tm.create(30s);
  REQUIRE(good.ok());
  TxnRef lost{txn::TxnId::random(), "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port())};

  // Three writers under the transaction whose manager is gone, each waiting for its join, and
  // readers of its contents, more than the space has workers...
  std::vector<std::future<Result<WriteReceipt>>> stuck;
  for (int i = 0; i < 3; ++i) {
    stuck.push_back(std::async(std::launch::async, [&, i] {
      SpaceClient c({.endpoint = a->rpc_endpoint(), .default_timeout = 10s});
      return c.write(entry("demo.Slot", {{"i", 100 + i}}), 600'000, lost);
    }));
  }
  std::vector<std::future<Result<ContentsPage>>> stuck_pages;
  for (int i = 0; i < SpaceServiceOptions{}.workers + 2; ++i) {
    stuck_pages.push_back(std::async(std::launch::async, [&] {
      SpaceClient c({.endpoint = a->rpc_endpoint(), .default_timeout = 10s});
      return c.contents(tmpl("demo.Slot"), 0, 100, lost);
    }));
  }
  std::this_thread::sleep_for(200ms);
  // ...while a write under a transaction whose manager answers goes through at once, and so
  // does a page of contents, which runs on a worker.
  SpaceClient c({.endpoint = a->rpc_endpoint()});
  auto started = std::chrono::steady_clock::now();
  auto w = c.write(entry("demo.Slot", {{"i", 1}}), 600'000, *good);
  CHECK_MESSAGE(w.ok(), w.status().to_string());
  auto page = c.contents(tmpl("demo.Slot"), 0, 100);
  CHECK_MESSAGE(page.ok(), page.status().to_string());
  CHECK(std::chrono::steady_clock::now() - started < 1s);
  for (auto& f : stuck) {
    auto r = f.get();
    CHECK(!r.ok());
    CHECK(r.status().message().find("txn.join") != std::string::npos);
  }
  for (auto& f : stuck_pages) {
    auto r = f.get();
    CHECK(!r.ok());
    CHECK(r.status().message().find("txn.join") != std::string::npos);
  }
  CHECK(c.contents_all(tmpl("demo.Slot"))->empty());  // nothing written, and nothing visible before commit

  // Stopping does not wait for joins queued behind one that hangs.
  for (int i = 0; i < 3; ++i) {
    stuck[static_cast<size_t>(i)] = std::async(std::launch::async, [&, i] {
      SpaceClient c2({.endpoint = a->rpc_endpoint(), .default_timeout = 10s});
      return c2.write(entry("demo.Slot", {{"i", 200 + i}}), 600'000, lost);
    });
  }
  std::this_thread::sleep_for(200ms);
  started = std::chrono::steady_clock::now();
  a->stop();
  CHECK(std::chrono::steady_clock::now() - started < 3s);
  for (auto& f : stuck) CHECK(!f.get().ok());
}

TEST_CASE("commits waiting on a participant that does not answer hold up none of the space's own methods") {
  test::TempDir dir;
  SpaceServiceOptions o;
  o.data_dir = dir.file("a");
  o.workers = 2;
  o.participant_timeout = 1500ms;
  auto started_space = SpaceService::start(o);
  REQUIRE_MESSAGE(started_space.ok(), started_space.status().to_string());
  auto& a = *started_space;
  TxnClient tm({.endpoint = a->rpc_endpoint()});
  // A port bound and never listened on: it refuses every connection, and no other test takes it.
  int held = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in at{};
  at.sin_family = AF_INET;
  at.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof at;
  REQUIRE(::bind(held, reinterpret_cast<sockaddr*>(&at), sizeof at) == 0);
  REQUIRE(::getsockname(held, reinterpret_cast<sockaddr*>(&at), &len) == 0);
  struct Close {
    int fd;
    ~Close() { ::close(fd); }
  } close_held{held};
  const std::string dead = "space:dead@tcp://127.0.0.1:" + std::to_string(ntohs(at.sin_port));

  // Four transactions, each with a participant that never answers, committing at once: each
  // commit waits 1.5 s for its prepare, then as long for its abort.
  std::vector<std::future<Result<txn::Outcome>>> commits;
  for (int i = 0; i < 4; ++i) {
    auto t = tm.create(30s);
    REQUIRE(t.ok());
    REQUIRE(tm.join(t->id, dead).ok());
    REQUIRE(tm.join(t->id, dead).ok());  // again: a no-op
    commits.push_back(std::async(std::launch::async, [&, id = t->id] {
      TxnClient own({.endpoint = a->rpc_endpoint(), .default_timeout = 20s});
      return own.commit(id);
    }));
  }
  std::this_thread::sleep_for(300ms);
  // Meanwhile the space's blocking methods (contents runs on its two workers) answer at once.
  SpaceClient c({.endpoint = a->rpc_endpoint()});
  for (int i = 0; i < 5; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    auto page = c.contents(tmpl("demo.Slot"), 0, 10, std::nullopt, {.timeout = 5s});
    CHECK_MESSAGE(page.ok(), page.status().to_string());
    CHECK(std::chrono::steady_clock::now() - t0 < 700ms);
  }
  for (auto& f : commits) CHECK(f.wait_for(0s) == std::future_status::timeout);  // still waiting
  for (auto& f : commits) {
    auto outcome = f.get();
    REQUIRE_MESSAGE(outcome.ok(), outcome.status().to_string());
    CHECK(*outcome == txn::Outcome::kAborted);
  }
  // Joins of ended, unknown and malformed transactions and names are refused.
  CHECK(tm.join(txn::TxnId::random(), dead).code() == Code::kNotFound);
  auto t = tm.create(30s);
  REQUIRE(t.ok());
  CHECK(tm.join(t->id, "no-endpoint").code() == Code::kInvalidArgument);
  REQUIRE(tm.abort(t->id).ok());
  CHECK(tm.join(t->id, dead).code() == Code::kAborted);
}

TEST_CASE("a commit whose decision is being logged holds up none of the space's own methods") {
  test::TempDir dir;
  auto a = start_space(dir, "a", true);
  SpaceClient c({.endpoint = a->rpc_endpoint()});
  TxnClient tm({.endpoint = a->rpc_endpoint()});
  auto t = tm.create(30s);
  REQUIRE(t.ok());
  REQUIRE(c.write(entry("demo.Slot", {{"i", 1}}), 600'000, *t).ok());
  auto other = tm.create(30s);
  REQUIRE(other.ok());
  // On the committing thread while the decision is written: a call to the manager (txn.outcome,
  // which needs its lock, held by none across the write), then one that needs only the I/O thread.
  TxnClient asker({.endpoint = a->rpc_endpoint()});
  SpaceClient reader({.endpoint = a->rpc_endpoint()});
  std::future<Result<txn::Outcome>> pending;
  Status read = internal_error("not run");
  std::chrono::steady_clock::duration took{};
  fault::arm_call("txn.coordinator.logging_decision", [&] {
    pending = std::async(std::launch::async, [&] { return asker.outcome(other->id); });
    std::this_thread::sleep_for(100ms);
    auto start = std::chrono::steady_clock::now();
    read = reader.read_if_exists(tmpl("demo.None"), std::nullopt, {.timeout = 2s}).status();
    took = std::chrono::steady_clock::now() - start;
  });
  auto committed = tm.commit(t->id);
  fault::disarm_all();
  REQUIRE_MESSAGE(committed.ok(), committed.status().to_string());
  CHECK(*committed == txn::Outcome::kCommitted);
  CHECK_MESSAGE(read.ok(), read.to_string());
  CHECK(took < 5s);  // against 2 s and a DEADLINE_EXCEEDED when the I/O thread waited for the commit
  REQUIRE(pending.valid());
  auto o = pending.get();
  REQUIRE(o.ok());
  CHECK(*o == txn::Outcome::kActive);
}

TEST_CASE("joins awaiting their managers keep their connections; past 64 such managers a join is refused") {
  test::TempDir dir;
  // Joins time out after 8 s: all 80 writes are in before the first does, however loaded the machine.
  auto a = start_space(dir, "a", true, 8s);
  // More managers than the space keeps connections to (64), none answering: the first one's join
  // ends at its own timeout, not cancelled by its connection being dropped for the others; joins
  // at managers past the 64th are refused at once, and a client for each is never made.
  std::vector<std::future<Result<WriteReceipt>>> writes;
  for (int i = 0; i < 80; ++i) {
    TxnRef gone{txn::TxnId::random(), "tcp://127.0.0.1:" + std::to_string(1 + i)};
    writes.push_back(std::async(std::launch::async, [&, gone] {
      SpaceClient c({.endpoint = a->rpc_endpoint(), .default_timeout = 20s});
      return c.write(entry("demo.Slot", {{"i", 1}}), 600'000, gone);
    }));
    if (i == 0) std::this_thread::sleep_for(100ms);
  }
  int timed_out = 0, refused = 0;
  for (auto& f : writes) {
    auto r = f.get();
    REQUIRE(!r.ok());
    if (r.status().code() == Code::kDeadlineExceeded) ++timed_out;
    if (r.status().code() == Code::kUnavailable) {
      CHECK(r.status().message().find("retry later") != std::string::npos);
      ++refused;
    }
  }
  CHECK(timed_out == 64);
  CHECK(refused == 16);
  // Once they have answered (timed out), joins go out again.
  TxnRef later{txn::TxnId::random(), "tcp://127.0.0.1:200"};
  SpaceClient c({.endpoint = a->rpc_endpoint(), .default_timeout = 20s});
  CHECK(c.write(entry("demo.Slot", {{"i", 1}}), 600'000, later).status().code() == Code::kDeadlineExceeded);
}

TEST_CASE("take from one space and write to another, atomically, in-process over RPC") {
  test::TempDir dir;
  auto a = start_space(dir, "a", true);
  auto b = start_space(dir, "b", false);
  SpaceClient ca({.endpoint = a->rpc_endpoint()});
  SpaceClient cb({.endpoint = b->rpc_endpoint()});
  TxnClient tm({.endpoint = a->rpc_endpoint()});
  for (int i = 0; i < 3; ++i) REQUIRE(ca.write(entry("demo.Token", {{"i", i}}), 600'000).ok());

  auto move = [&](int i, bool commit) {
    auto t = tm.create(30s);
    REQUIRE(t.ok());
    auto e = ca.take_if_exists(tmpl("demo.Token", {{"i", i}}), *t);
    REQUIRE(e.ok());
    REQUIRE(e->has_value());
    REQUIRE(cb.write(**e, 600'000, *t).ok());
    CHECK(!ca.read_if_exists(tmpl("demo.Token", {{"i", i}}))->has_value());
    CHECK(!cb.read_if_exists(tmpl("demo.Token", {{"i", i}}))->has_value());
    if (commit) {
      auto o = tm.commit(t->id);
      REQUIRE_MESSAGE(o.ok(), o.status().to_string());
      CHECK(*o == txn::Outcome::kCommitted);
    } else {
      REQUIRE(tm.abort(t->id).ok());
    }
  };
  move(0, true);
  CHECK(!ca.read_if_exists(tmpl("demo.Token", {{"i", 0}}))->has_value());
  // Several writes under one transaction: visible together at its commit, or never.
  for (bool commit : {false, true}) {
    auto t = tm.create(30s);
    REQUIRE(t.ok());
    std::vector<Entry> batch{entry("demo.Many", {{"i", 1}}), entry("demo.Many", {{"i", 2}})};
    auto w = cb.write_many(batch, 600'000, *t);
    REQUIRE(w.ok());
    for (const auto& r : *w) CHECK(r.ok());
    CHECK(cb.contents_all(tmpl("demo.Many"))->empty());
    if (commit) {
      CHECK(*tm.commit(t->id) == txn::Outcome::kCommitted);
    } else {
      REQUIRE(tm.abort(t->id).ok());
    }
    CHECK(cb.contents_all(tmpl("demo.Many"))->size() == (commit ? 2u : 0u));
  }
  CHECK(cb.read_if_exists(tmpl("demo.Token", {{"i", 0}}))->has_value());
  move(1, false);
  CHECK(ca.read_if_exists(tmpl("demo.Token", {{"i", 1}}))->has_value());
  CHECK(!cb.read_if_exists(tmpl("demo.Token", {{"i", 1}}))->has_value());
  CHECK(a->space().stats().transactions == 0);
  CHECK(b->space().stats().transactions == 0);
}

TEST_CASE("a coordinator of one's own: a manager embedded on another server, driven in-process") {
  test::TempDir dir;
  auto a = start_space(dir, "a", false);
  auto b = start_space(dir, "b", false);
  // The migrator's side: its own RPC server, where the spaces join its transactions.
  rpc::Server server({});
  TxnManagerOptions options;
  options.log_path = dir.file("migrator-txn.db");
  TxnManager manager(options, server);
  REQUIRE(server.start().ok());
  const std::string name = server.endpoints().front();
  CHECK(manager.begin(30s).status().code() == Code::kUnavailable);
  REQUIRE(manager.start(name).ok());

  SpaceClient ca({.endpoint = a->rpc_endpoint()});
  SpaceClient cb({.endpoint = b->rpc_endpoint()});
  REQUIRE(ca.write(entry("demo.Checkpoint", {{"v", 1}}), 600'000).ok());
  auto move = [&](bool commit) {
    Result<txn::TxnId> id = manager.begin(30s);
    REQUIRE(id.ok());
    CHECK(manager.renew(*id, 60s).ok());
    TxnRef ref{*id, name};
    auto e = ca.take_if_exists(tmpl("demo.Checkpoint"), ref);
    REQUIRE(e.ok());
    REQUIRE(e->has_value());
    REQUIRE(cb.write(**e, 600'000, ref).ok());
    if (commit) {
      Result<txn::Outcome> o = manager.commit(*id);
      REQUIRE_MESSAGE(o.ok(), o.status().to_string());
      CHECK(*o == txn::Outcome::kCommitted);
      CHECK(manager.outcome(*id) == txn::Outcome::kCommitted);
    } else {
      REQUIRE(manager.abort(*id).ok());
      CHECK(manager.outcome(*id) == txn::Outcome::kAborted);
    }
  };
  move(false);
  CHECK(ca.read_if_exists(tmpl("demo.Checkpoint"))->has_value());
  CHECK(!cb.read_if_exists(tmpl("demo.Checkpoint"))->has_value());
  move(true);
  CHECK(!ca.read_if_exists(tmpl("demo.Checkpoint"))->has_value());
  CHECK(cb.read_if_exists(tmpl("demo.Checkpoint"))->has_value());
  CHECK(a->space().stats().transactions == 0);
  CHECK(b->space().stats().transactions == 0);
  manager.stop();
  server.stop();
}

TEST_CASE("a manager restarted with outcomes to deliver to participants that do not answer serves at once") {
  test::TempDir dir;
  TxnManagerOptions options;
  options.log_path = dir.file("migrator-txn.db");
  options.call_timeout = 2s;
  const std::string gone = "space:gone@tcp://127.0.0.1:" + std::to_string(test::free_tcp_port());
  {
    rpc::Server server({});
    TxnManager manager(options, server);
    REQUIRE(server.start().ok());
    REQUIRE(manager.start(server.endpoints().front()).ok());
    TxnClient client({.endpoint = server.endpoints().front()});
    for (int i = 0; i < 3; ++i) {
      Result<txn::TxnId> id = manager.begin(30s);
      REQUIRE(id.ok());
      REQUIRE(client.join(*id, gone).ok());
    }
    manager.stop();
    server.stop();
  }
  // Reopened, it aborts the three and must tell a participant that never answers: a call timeout
  // each. That goes on in the background; the manager serves meanwhile.
  rpc::Server server({});
  TxnManager manager(options, server);
  REQUIRE(server.start().ok());
  auto started = std::chrono::steady_clock::now();
  REQUIRE(manager.start(server.endpoints().front()).ok());
  CHECK(std::chrono::steady_clock::now() - started < 2s);  // it took 6 s and more before
  CHECK(manager.begin(30s).ok());
  manager.stop();
  server.stop();
}

namespace {

// A djinn-space process on fixed ports, so a restart comes back where callers look for it.
struct Daemon {
  Daemon(const test::TempDir& dir, std::string data, bool manager)
      : endpoint("tcp://127.0.0.1:" + std::to_string(test::free_tcp_port())),
        args{"--data-dir", dir.file(data), "--listen", endpoint, "--events",
             "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port()), "--max-lease", "1h", "--log-level", "warn",
             "--insecure", manager ? "--txn-manager" : "--no-txn-manager"} {}
  void start(const std::vector<std::string>& env = {}) {
    process = std::make_unique<test::ChildProcess>(test::build_path("space/djinn-space"), args, env);
    SpaceClient probe({.endpoint = endpoint});
    REQUIRE_MESSAGE(test::eventually([&] {
                      rpc::CallOptions call;
                      call.timeout = 200ms;
                      return probe.stats(call).ok();
                    }, 10000),
                    "djinn-space did not come up on ", endpoint);
  }
  std::string endpoint;
  std::vector<std::string> args;
  std::unique_ptr<test::ChildProcess> process;
};

}  // namespace

TEST_CASE("two djinn-space processes: atomic move, abort, and a participant killed while prepared or committing") {
  if (!std::getenv("DJINN_BUILD_DIR")) {
    MESSAGE("DJINN_BUILD_DIR is not set (run through ctest): skipped");
    return;
  }
  test::TempDir dir;
  Daemon a(dir, "a", true), b(dir, "b", false);
  a.start();
  b.start();
  SpaceClient ca({.endpoint = a.endpoint});
  rpc::ClientOptions bo{.endpoint = b.endpoint};
  bo.reconnect_interval_max = 50ms;
  SpaceClient cb(bo);
  TxnClient tm({.endpoint = a.endpoint});
  for (int i = 0; i < 5; ++i) REQUIRE(ca.write(entry("demo.Token", {{"i", i}}), 3'600'000).ok());

  auto begin_move = [&](int i) {
    auto t = tm.create(60s);
    REQUIRE(t.ok());
    auto e = ca.take_if_exists(tmpl("demo.Token", {{"i", i}}), *t);
    REQUIRE(e.ok());
    REQUIRE(e->has_value());
    REQUIRE(cb.write(**e, 3'600'000, *t).ok());
    return *t;
  };
  auto in_a = [&](int i) { return ca.read_if_exists(tmpl("demo.Token", {{"i", i}}))->has_value(); };
  auto in_b = [&](int i) {
    auto r = cb.read_if_exists(tmpl("demo.Token", {{"i", i}}));
    return r.ok() && r->has_value();
  };

  // Commit, and abort.
  TxnRef t0 = begin_move(0);
  rpc::CallOptions long_call;
  long_call.timeout = 30s;
  CHECK(*tm.commit(t0.id, long_call) == txn::Outcome::kCommitted);
  CHECK(!in_a(0));
  CHECK(in_b(0));
  TxnRef t1 = begin_move(1);
  REQUIRE(tm.abort(t1.id).ok());
  CHECK(in_a(1));
  CHECK(!in_b(1));

  // B dies right after its prepared state is durable, before it votes; it comes back at once and
  // the outcome, whichever it is, holds in both spaces.
  b.process.reset();
  b.start({"DJINN_CRASH_AT=space.prepare.after_commit"});
  TxnRef t2 = begin_move(2);
  std::future<Result<txn::Outcome>> committing = std::async(std::launch::async, [&] { return tm.commit(t2.id, long_call); });
  REQUIRE(test::eventually([&] { return !b.process->running(); }, 10000));
  b.start();
  auto o2 = committing.get();
  REQUIRE_MESSAGE(o2.ok(), o2.status().to_string());
  MESSAGE("outcome with the participant killed while prepared: ", txn::outcome_name(*o2));
  REQUIRE(test::eventually([&] {
    auto s = cb.stats();
    return s.ok() && s->in_doubt == 0;
  }, 15000));
  if (*o2 == txn::Outcome::kCommitted) {
    CHECK(!in_a(2));
    CHECK(in_b(2));
  } else {
    CHECK(in_a(2));
    CHECK(!in_b(2));
  }

  // B dies in phase 2, after the commit point: the commit completes after its restart (the
  // manager retries, or B asks the outcome of what it had prepared).
  b.process.reset();
  b.start({"DJINN_CRASH_AT=txn.participant.before_resolved"});
  TxnRef t3 = begin_move(3);
  auto o3 = tm.commit(t3.id, long_call);
  REQUIRE_MESSAGE(o3.ok(), o3.status().to_string());
  CHECK(*o3 == txn::Outcome::kCommitted);
  REQUIRE(test::eventually([&] { return !b.process->running(); }, 10000));
  CHECK(!in_a(3));
  b.start();
  CHECK(test::eventually([&] { return in_b(3); }, 15000));
  auto s = cb.stats();
  REQUIRE(s.ok());
  CHECK(s->in_doubt == 0);
  // B dies after its durable prepare and stays down past the manager's call timeout: the manager
  // aborts (A gets its entry back); B, restarted with the transaction in doubt, asks the manager,
  // learns ABORTED and drops what it had prepared.
  b.process.reset();
  b.start({"DJINN_CRASH_AT=space.prepare.after_commit"});
  TxnRef t4 = begin_move(4);
  auto o4 = tm.commit(t4.id, long_call);
  REQUIRE(o4.ok());
  CHECK(*o4 == txn::Outcome::kAborted);
  CHECK(in_a(4));
  CHECK(!b.process->running());
  b.start();
  REQUIRE(test::eventually([&] {
    auto st = cb.stats();
    return st.ok() && st->in_doubt == 0;
  }, 15000));
  CHECK(!in_b(4));

  // Exactly one token per index across both spaces.
  auto all_a = ca.contents_all(tmpl("demo.Token"));
  auto all_b = cb.contents_all(tmpl("demo.Token"));
  REQUIRE(all_a.ok());
  REQUIRE(all_b.ok());
  CHECK(all_a->size() + all_b->size() == 5);
}

namespace {

// The engine on its own landlord file, joined to any transaction at once.
struct Engine {
  Engine(const std::string& path, std::function<txn::Outcome(const txn::InDoubt&)> ask,
         const std::function<void(SpaceOptions&)>& tune = {}) {
    lease::LandlordOptions lo;
    lo.path = path;
    lo.on_event = [this](const lease::LeaseEvent& e) {
      if (Space* s = target.load()) s->on_lease_event(e);
    };
    auto l = lease::Landlord::open(std::move(lo));
    REQUIRE_MESSAGE(l.ok(), l.status().to_string());
    landlord = std::move(*l);
    SpaceOptions so;
    so.landlord = landlord.get();
    so.join = [](const TxnRef&, const std::string&, std::function<void(Status)> done) { done(Status::Ok()); };
    so.ask_outcome = std::move(ask);
    so.in_doubt_retry = 20ms;
    if (tune) tune(so);
    auto s = Space::open(so);
    REQUIRE_MESSAGE(s.ok(), s.status().to_string());
    space = std::move(*s);
    target = space.get();
  }
  ~Engine() {
    target = nullptr;
    space.reset();
    landlord.reset();
  }
  std::atomic<Space*> target{nullptr};
  std::unique_ptr<lease::Landlord> landlord;
  std::unique_ptr<Space> space;
};

}  // namespace

TEST_CASE("a space restarted in doubt asks each manager apart: one that does not answer costs one call a round") {
  test::TempDir dir;
  const std::string path = dir.file("space.db");
  // Three transactions of a manager that will not answer, one of a manager that will.
  const std::vector<txn::TxnId> lost = {{1, 1}, {1, 2}, {1, 3}};
  const txn::TxnId answered{2, 1};
  {
    Engine e(path, nullptr);
    auto prepare = [&](const txn::TxnId& id, const std::string& manager, int i) {
      WriteRequest w{entry("demo.Doubt", {{"i", i}}), 600'000};
      w.txn = TxnRef{id, manager};
      REQUIRE(e.space->write(std::move(w)).ok());
      auto vote = e.space->prepare(id, manager);
      REQUIRE_MESSAGE(vote.ok(), vote.status().to_string());
      REQUIRE(*vote == txn::Vote::kPrepared);
    };
    for (size_t i = 0; i < lost.size(); ++i) prepare(lost[i], "a-lost-manager", static_cast<int>(i));
    prepare(answered, "b-manager", 9);
  }

  // The lost manager's calls hang until the test lets them go, then answer nothing.
  std::mutex mu;
  std::condition_variable cv;
  bool released = false;
  bool abort_lost = false;
  std::set<uint64_t> asked_lost;
  int lost_calls = 0;
  auto ask = [&](const txn::InDoubt& d) {
    if (d.coordinator == "b-manager") return txn::Outcome::kCommitted;
    std::unique_lock lock(mu);
    asked_lost.insert(d.txn.lo);
    ++lost_calls;
    cv.notify_all();
    cv.wait(lock, [&] { return released; });
    return abort_lost ? txn::Outcome::kAborted : txn::Outcome::kUnknown;
  };
  Engine e(path, ask);
  struct Release {  // before the engine joins its asking thread, whatever fails
    ~Release() {
      {
        std::lock_guard lock(mu);
        released = true;
      }
      cv.notify_all();
    }
    std::mutex& mu;
    std::condition_variable& cv;
    bool& released;
  } release{mu, cv, released};
  auto visible = [&](int i) { return e.space->read(tmpl("demo.Doubt", {{"i", i}}))->has_value(); };
  CHECK(e.space->stats().in_doubt == 4);

  // The answered manager's transaction commits while the lost one's first call still hangs.
  {
    std::unique_lock lock(mu);
    REQUIRE(cv.wait_for(lock, 10s, [&] { return lost_calls == 1; }));
  }
  REQUIRE(test::eventually([&] { return visible(9); }, 10000));
  {
    std::lock_guard lock(mu);
    CHECK(lost_calls == 1);
  }
  CHECK(e.space->stats().in_doubt == 3);

  // Let the lost manager's calls end unanswered: each round asks it about one transaction only.
  {
    std::lock_guard lock(mu);
    released = true;
  }
  cv.notify_all();
  {
    std::unique_lock lock(mu);
    REQUIRE(cv.wait_for(lock, 10s, [&] { return lost_calls >= 5; }));
    CHECK(asked_lost == std::set<uint64_t>{1});
  }
  CHECK(e.space->stats().in_doubt == 3);
  for (int i = 0; i < 3; ++i) CHECK_FALSE(visible(i));

  // Once it answers, the rest follow in the same round.
  {
    std::lock_guard lock(mu);
    abort_lost = true;
  }
  REQUIRE(test::eventually([&] { return e.space->stats().in_doubt == 0; }, 10000));
  {
    std::lock_guard lock(mu);
    CHECK(asked_lost == std::set<uint64_t>{1, 2, 3});
  }
  for (int i = 0; i < 3; ++i) CHECK_FALSE(visible(i));
  CHECK(visible(9));
}

TEST_CASE("a transaction not yet voting is aborted here once its manager says it aborted, or stays silent too long") {
  test::TempDir dir;
  // "live" still runs its transaction, "forgot" lost it (a manager answers ABORTED for an id it
  // does not know), "silent" never answers.
  auto ask = [](const txn::InDoubt& d) {
    if (d.coordinator == "live") return txn::Outcome::kActive;
    if (d.coordinator == "forgot") return txn::Outcome::kAborted;
    return txn::Outcome::kUnknown;
  };
  Engine e(dir.file("space.db"), ask, [](SpaceOptions& o) {
    o.txn_check_interval = 20ms;
    o.abandon_txn_after = 2s;
  });
  const std::vector<std::string> managers = {"live", "forgot", "silent"};
  for (size_t i = 0; i < managers.size(); ++i) {
    REQUIRE(e.space->write({entry("demo.Held", {{"i", static_cast<int>(i)}}), 600'000}).ok());
  }
  const auto started = std::chrono::steady_clock::now();
  for (size_t i = 0; i < managers.size(); ++i) {
    TxnRef t{txn::TxnId{7, i + 1}, managers[i]};
    WriteRequest w{entry("demo.Staged", {{"i", static_cast<int>(i)}}), 600'000};
    w.txn = t;
    REQUIRE(e.space->write(std::move(w)).ok());
    auto taken = e.space->take(tmpl("demo.Held", {{"i", static_cast<int>(i)}}), 0ms, t);
    REQUIRE(taken.ok());
    REQUIRE(taken->has_value());
  }
  auto held_back = [&](int i) { return e.space->read(tmpl("demo.Held", {{"i", i}}))->has_value(); };
  CHECK(e.space->stats().transactions == 3);

  // The forgotten one is aborted at the first check: what it took is back, what it wrote gone.
  REQUIRE(test::eventually([&] { return held_back(1); }, 10000));
  CHECK(e.space->stats().transactions == 2);
  // The silent one once its manager has not answered for abandon_txn_after.
  REQUIRE(test::eventually([&] { return held_back(2); }, 10000));
  CHECK(std::chrono::steady_clock::now() - started >= 2s);
  CHECK(e.space->stats().transactions == 1);
  // The live one stays, its take held and its write staged.
  std::this_thread::sleep_for(100ms);
  CHECK(!held_back(0));
  CHECK(e.space->stats().transactions == 1);
  CHECK(e.space->contents(tmpl("demo.Staged"), 0, 10)->entries.empty());
  // A prepare that comes after all finds nothing of the aborted ones and votes ABORTED.
  auto vote = e.space->prepare(txn::TxnId{7, 2}, "forgot");
  REQUIRE(vote.ok());
  CHECK(*vote == txn::Vote::kAborted);

  // The silent manager answers again, after more transactions have ended here than the space
  // keeps among the last ended: an operation under the abandoned transaction must not join it
  // afresh (its manager would take the join, and the transaction would commit without the take
  // this space gave back).
  for (uint64_t i = 0; i < 4200; ++i) {
    TxnRef other{txn::TxnId{8, i + 1}, "live"};
    REQUIRE(e.space->take(tmpl("demo.Nothing"), 0ms, other).ok());
    auto nothing = e.space->prepare(other.id, other.manager);
    REQUIRE(nothing.ok());
    REQUIRE(*nothing == txn::Vote::kNotChanged);
  }
  auto again = e.space->take(tmpl("demo.Held", {{"i", 2}}), 0ms, TxnRef{txn::TxnId{7, 3}, "silent"});
  CHECK(again.status().code() == Code::kAborted);
  CHECK(held_back(2));
}

namespace {

// Disarms every fault point when it goes, whatever fails first.
struct Disarm {
  ~Disarm() { fault::disarm_all(); }
};

// Which of two things happened first, for a call that lands in another's window.
class FirstOf {
 public:
  void mark(int what) {
    std::lock_guard lock(mu_);
    if (first_ == 0) first_ = what;
    cv_.notify_all();
  }
  // 0 when neither happened within `timeout`.
  int wait(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return first_ != 0; });
    return first_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int first_ = 0;
};
constexpr int kWaited = 1;    // the late call reached the point where it waits for the first's write
constexpr int kAnswered = 2;  // it answered without waiting

// Gives transaction `t` of the engine `e` something to prepare: it takes demo.Kept n (written
// first, outside it) and, with `write`, writes demo.Staged n; n is t's id's low half.
void stage(Engine& e, const TxnRef& t, bool write = true) {
  const int n = static_cast<int>(t.id.lo);
  REQUIRE(e.space->write({entry("demo.Kept", {{"n", n}}), 600'000}).ok());
  auto taken = e.space->take(tmpl("demo.Kept", {{"n", n}}), 0ms, t);
  REQUIRE_MESSAGE(taken.ok(), taken.status().to_string());
  REQUIRE(taken->has_value());
  if (!write) return;
  WriteRequest w{entry("demo.Staged", {{"n", n}}), 600'000};
  w.txn = t;
  REQUIRE(e.space->write(std::move(w)).ok());
}

TxnRef txn_ref(uint64_t n, std::string manager = "manager") { return TxnRef{txn::TxnId{11, n}, std::move(manager)}; }

bool visible(Engine& e, const std::string& type, uint64_t n) {
  auto r = e.space->read(tmpl(type, {{"n", static_cast<int>(n)}}));
  return r.ok() && r->has_value();
}

// Runs prepare(t) with `late` started on another thread while that prepare has marked t voting and
// not yet written its state; returns the prepare's vote, and says whether `late` answered before
// that write instead of waiting for it.
template <class T>
Result<txn::Vote> prepare_with(Engine& e, const TxnRef& t, std::function<T()> late, std::future<T>& answer,
                               bool& answered_early) {
  auto first = std::make_shared<FirstOf>();  // the late call may outlive this function
  fault::arm_call("space.txn.waiting", [first] { first->mark(kWaited); });
  fault::arm_call("space.prepare.before_write", [&] {
    answer = std::async(std::launch::async, [first, late] {
      T r = late();
      first->mark(kAnswered);
      return r;
    });
    answered_early = first->wait(10s) == kAnswered;
  });
  Result<txn::Vote> vote = e.space->prepare(t.id, t.manager);
  fault::disarm_all();
  return vote;
}

}  // namespace

TEST_CASE("a transaction prepared here whose outcome never comes is finished as its manager says") {
  test::TempDir dir;
  // "lost" is a manager that lost the transaction after this space voted (killed before its
  // records of it were durable): it answers ABORTED, as for any id it does not know, and never
  // sends phase 2. "decided" committed it, its phase 2 lost. "voting" still collects votes, and
  // "silent" never answers: those two stay prepared.
  auto ask = [](const txn::InDoubt& d) {
    if (d.coordinator == "lost") return txn::Outcome::kAborted;
    if (d.coordinator == "decided") return txn::Outcome::kCommitted;
    if (d.coordinator == "voting") return txn::Outcome::kActive;
    return txn::Outcome::kUnknown;
  };
  auto e = std::make_unique<Engine>(dir.file("space.db"), ask, [](SpaceOptions& o) {
    o.txn_check_interval = 100ms;
    o.abandon_txn_after = 300ms;  // for the silent one: never applied to a prepared transaction
  });
  const std::vector<std::string> managers = {"lost", "decided", "voting", "silent"};
  for (size_t i = 0; i < managers.size(); ++i) {
    const TxnRef t = txn_ref(i + 1, managers[i]);
    stage(*e, t);
    auto vote = e->space->prepare(t.id, t.manager);
    REQUIRE(vote.ok());
    REQUIRE(*vote == txn::Vote::kPrepared);
  }
  // Aborted: what it took is back, what it wrote never shows.
  REQUIRE(test::eventually([&] { return visible(*e, "demo.Kept", 1); }, 10000));
  CHECK_FALSE(visible(*e, "demo.Staged", 1));
  // Committed: what it wrote shows, what it took is gone.
  REQUIRE(test::eventually([&] { return visible(*e, "demo.Staged", 2); }, 10000));
  CHECK_FALSE(visible(*e, "demo.Kept", 2));
  std::this_thread::sleep_for(800ms);  // rounds enough to abandon an unvoted transaction twice over
  for (uint64_t n : {3, 4}) {
    CHECK_FALSE(visible(*e, "demo.Kept", n));
    CHECK_FALSE(visible(*e, "demo.Staged", n));
  }
  CHECK(e->space->stats().transactions == 2);
  // Each outcome is durable: after a restart the two finished are as they were, and the two
  // still prepared are in doubt.
  e.reset();
  Engine again(dir.file("space.db"), nullptr);
  CHECK(visible(again, "demo.Kept", 1));
  CHECK(visible(again, "demo.Staged", 2));
  CHECK_FALSE(visible(again, "demo.Kept", 2));
  CHECK(again.space->stats().in_doubt == 2);
}

TEST_CASE("operations waiting for a manager that does not answer their join are bounded") {
  test::TempDir dir;
  std::mutex mu;
  std::vector<std::function<void(Status)>> joins;  // answered by the test, at the end
  Engine e(dir.file("space.db"), nullptr, [&](SpaceOptions& o) {
    o.join = [&](const TxnRef&, const std::string&, std::function<void(Status)> done) {
      std::lock_guard lock(mu);
      joins.push_back(std::move(done));
    };
  });
  const TxnRef t{txn::TxnId{9, 1}, "silent"};
  constexpr int kWaiting = 4096;  // the bound
  std::atomic<int> written{0}, refused{0};
  auto write = [&](int i, const TxnRef& under) {
    WriteRequest w{entry("demo.Waiting", {{"i", i}}), 600'000};
    w.txn = under;
    e.space->write_async(std::move(w), [&](Result<Written> r) {
      if (r.ok()) {
        written++;
      } else {
        CHECK(r.status().code() == Code::kUnavailable);
        CHECK(r.status().message().find("retry later") != std::string::npos);
        refused++;
      }
    });
  };
  for (int i = 0; i < kWaiting; ++i) write(i, t);
  CHECK(refused == 0);
  write(kWaiting, t);  // one past the bound: refused at once
  CHECK(refused == 1);
  CHECK(written == 0);
  // The manager answers: every waiting write is made, and room is back.
  REQUIRE(test::eventually([&] {
    std::lock_guard lock(mu);
    return joins.size() == kWaiting;
  }, 20000));
  std::vector<std::function<void(Status)>> answers;
  {
    std::lock_guard lock(mu);
    answers.swap(joins);
  }
  for (auto& answer : answers) answer(Status::Ok());
  answers.clear();  // an answered join's callback goes, and with it what it held of the operation
  REQUIRE(test::eventually([&] { return written == kWaiting; }, 20000));
  write(kWaiting + 1, TxnRef{txn::TxnId{9, 2}, "silent"});  // waits again rather than refused
  CHECK(refused == 1);
  REQUIRE(test::eventually([&] {
    std::lock_guard lock(mu);
    return joins.size() == 1;
  }));
  joins.front()(Status::Ok());
  REQUIRE(test::eventually([&] { return written == kWaiting + 1; }));
}

TEST_CASE("a transaction the space aborts on its own is never voted PREPARED, wherever the prepare lands") {
  test::TempDir dir;
  // Its manager forgot it (a manager answers ABORTED for an id it does not know), so the space
  // aborts it at a check; the manager's prepare comes while that abort runs. (Only takes under
  // it, so that no operation of the test races the check.)
  Engine e(dir.file("space.db"), [](const txn::InDoubt&) { return txn::Outcome::kAborted; },
           [](SpaceOptions& o) { o.txn_check_interval = 200ms; });
  Disarm disarm;

  // From a blocked take under T, answered by the abort.
  const TxnRef t = txn_ref(1, "forgot");
  stage(e, t, /*write=*/false);
  std::promise<Result<txn::Vote>> from_callback;
  std::atomic<Code> take_answer{Code::kOk};
  e.space->match_async(MatchRequest{tmpl("demo.Never"), true, 1, 60s, t}, [&](Result<std::vector<Entry>> r) {
    take_answer = r.status().code();
    from_callback.set_value(e.space->prepare(t.id, t.manager));
  });
  auto voted = from_callback.get_future();
  REQUIRE(voted.wait_for(10s) == std::future_status::ready);
  CHECK(take_answer == Code::kFailedPrecondition);  // ended by the abort, not refused at its start
  Result<txn::Vote> vote = voted.get();
  REQUIRE_MESSAGE(vote.ok(), vote.status().to_string());
  CHECK(*vote == txn::Vote::kAborted);
  REQUIRE(test::eventually([&] { return e.space->stats().transactions == 0; }, 10000));
  // A commit that came anyway finds nothing to apply: the take is back.
  CHECK(e.space->commit(t.id).ok());
  CHECK(visible(e, "demo.Kept", 1));

  // Between the abort marking it ending and dropping what it did.
  const TxnRef u = txn_ref(2, "forgot");
  std::mutex mu;
  std::optional<Result<txn::Vote>> in_gap;
  fault::arm_call("space.finish.before_write", [&] {
    Result<txn::Vote> v = e.space->prepare(u.id, u.manager);
    std::lock_guard lock(mu);
    in_gap = v;
  });
  stage(e, u, /*write=*/false);
  REQUIRE(test::eventually([&] {
    std::lock_guard lock(mu);
    return in_gap.has_value() && e.space->stats().transactions == 0;
  }, 10000));
  REQUIRE_MESSAGE(in_gap->ok(), in_gap->status().to_string());
  CHECK(**in_gap == txn::Vote::kAborted);
  CHECK(e.space->commit(u.id).ok());
  CHECK(visible(e, "demo.Kept", 2));
}

TEST_CASE("a prepare sent again while the first one writes waits for it and gives the same vote") {
  test::TempDir dir;
  Engine e(dir.file("space.db"), nullptr);
  Disarm disarm;
  auto again = [&](const TxnRef& t) { return std::function<Result<txn::Vote>()>([&e, t] { return e.space->prepare(t.id, t.manager); }); };

  // The first write succeeds: both PREPARED, the second only once the state is durable.
  const TxnRef t = txn_ref(1);
  stage(e, t);
  std::future<Result<txn::Vote>> second;
  bool early = false;
  Result<txn::Vote> first = prepare_with(e, t, again(t), second, early);
  REQUIRE_MESSAGE(first.ok(), first.status().to_string());
  CHECK(*first == txn::Vote::kPrepared);
  CHECK_FALSE(early);
  Result<txn::Vote> repeated = second.get();
  REQUIRE_MESSAGE(repeated.ok(), repeated.status().to_string());
  CHECK(*repeated == txn::Vote::kPrepared);
  REQUIRE(e.space->commit(t.id).ok());
  CHECK(!visible(e, "demo.Kept", 1));
  CHECK(visible(e, "demo.Staged", 1));

  // The first write fails: both ABORTED, and what the transaction did is undone at once.
  const TxnRef u = txn_ref(2);
  stage(e, u);
  fault::arm("space.prepare.write_failed", fault::Action::kFail);
  first = prepare_with(e, u, again(u), second, early);
  REQUIRE_MESSAGE(first.ok(), first.status().to_string());
  CHECK(*first == txn::Vote::kAborted);
  CHECK_FALSE(early);
  repeated = second.get();
  REQUIRE_MESSAGE(repeated.ok(), repeated.status().to_string());
  CHECK(*repeated == txn::Vote::kAborted);
  CHECK(e.space->stats().transactions == 0);
  CHECK(visible(e, "demo.Kept", 2));
  CHECK(!visible(e, "demo.Staged", 2));
  CHECK(*e.space->prepare(u.id, u.manager) == txn::Vote::kAborted);
}

TEST_CASE("phase 2 arriving while the prepare writes waits for it: nothing of the prepare is left behind") {
  test::TempDir dir;
  const std::string path = dir.file("space.db");
  {
    Engine e(path, nullptr);
    Disarm disarm;
    for (bool commit : {false, true}) {
      CAPTURE(commit);
      const TxnRef t = txn_ref(commit ? 2 : 1);
      stage(e, t);
      std::future<Status> phase2;
      bool early = false;
      Result<txn::Vote> vote = prepare_with(
          e, t, std::function<Status()>([&e, t, commit] { return commit ? e.space->commit(t.id) : e.space->abort(t.id); }),
          phase2, early);
      REQUIRE_MESSAGE(vote.ok(), vote.status().to_string());
      CHECK(*vote == txn::Vote::kPrepared);
      CHECK_FALSE(early);
      Status done = phase2.get();
      REQUIRE_MESSAGE(done.ok(), done.to_string());
      CHECK(e.space->stats().transactions == 0);
    }
    CHECK(visible(e, "demo.Kept", 1));
    CHECK(!visible(e, "demo.Staged", 1));
    CHECK(!visible(e, "demo.Kept", 2));
    CHECK(visible(e, "demo.Staged", 2));
  }
  // No prepared record outlived its transaction.
  Engine e(path, [](const txn::InDoubt&) { return txn::Outcome::kUnknown; });
  CHECK(e.space->stats().in_doubt == 0);
  CHECK(visible(e, "demo.Kept", 1));
  CHECK(!visible(e, "demo.Staged", 1));
  CHECK(!visible(e, "demo.Kept", 2));
  CHECK(visible(e, "demo.Staged", 2));
}

TEST_CASE("killed while a prepare writes, with the same prepare sent again: no PREPARED vote without its record") {
  test::TempDir dir;
  const std::string path = dir.file("space.db");
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // Child: no doctest assertions; it reports each vote it gives as one byte, and its exit code
    // says how far it got if it is not killed.
    ::close(fds[0]);
    lease::LandlordOptions lo;
    lo.path = path;
    auto landlord = lease::Landlord::open(std::move(lo));
    if (!landlord.ok()) ::_exit(2);
    SpaceOptions so;
    so.landlord = landlord->get();
    so.join = [](const TxnRef&, const std::string&, std::function<void(Status)> done) { done(Status::Ok()); };
    auto space = Space::open(so);
    if (!space.ok()) ::_exit(3);
    Space& s = **space;
    const TxnRef t{txn::TxnId{11, 1}, "manager"};
    if (!s.write({entry("demo.Kept", {{"n", 1}}), 600'000}).ok()) ::_exit(4);
    auto taken = s.take(tmpl("demo.Kept"), 0ms, t);
    if (!taken.ok() || !taken->has_value()) ::_exit(5);
    auto report = [fd = fds[1]](Result<txn::Vote> v) {
      char c = !v.ok() ? 'e' : *v == txn::Vote::kPrepared ? 'P' : *v == txn::Vote::kAborted ? 'A' : 'N';
      if (::write(fd, &c, 1) != 1) ::_exit(6);
    };
    FirstOf first;
    fault::arm_call("space.txn.waiting", [&] { first.mark(kWaited); });
    fault::arm_call("space.prepare.before_write", [&] {
      std::thread([&] {
        report(s.prepare(t.id, t.manager));
        first.mark(kAnswered);
      }).detach();
      first.wait(10s);  // the resent prepare waits, or answers
      ::kill(::getpid(), SIGKILL);
    });
    report(s.prepare(t.id, t.manager));
    ::_exit(7);
  }
  ::close(fds[1]);
  std::string votes;
  char c;
  while (::read(fds[0], &c, 1) == 1) votes.push_back(c);
  ::close(fds[0]);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE_MESSAGE(WIFSIGNALED(status), "the child exited with code ", WEXITSTATUS(status));
  CHECK(WTERMSIG(status) == SIGKILL);

  Engine e(path, [](const txn::InDoubt&) { return txn::Outcome::kUnknown; });
  const uint64_t in_doubt = e.space->stats().in_doubt;
  MESSAGE("votes given before the kill: '", votes, "', transactions in doubt after it: ", in_doubt);
  // A PREPARED vote promises the record. The resent prepare waited for the first, so neither
  // answered: the transaction is gone with the process, and what it took is back.
  CHECK_FALSE((votes.find('P') != std::string::npos && in_doubt == 0));
  CHECK(votes.empty());
  CHECK(in_doubt == 0);
  CHECK(visible(e, "demo.Kept", 1));
}

TEST_CASE("an entry written after a restart never takes the place of one a transaction in doubt took") {
  test::TempDir dir;
  const std::string path = dir.file("space.db");
  std::atomic<txn::Outcome> answer{txn::Outcome::kUnknown};  // its manager is unreachable, then commits
  auto ask = [&](const txn::InDoubt&) { return answer.load(); };
  const TxnRef t = txn_ref(1);
  {
    // The space's newest entry is taken under T, which prepares; its lease ends while T is in
    // doubt, and its row goes with it.
    Engine e(path, ask);
    auto kept = e.space->write({entry("demo.Kept", {{"n", 1}}), 600'000});
    REQUIRE(kept.ok());
    REQUIRE(e.space->take(tmpl("demo.Kept"), 0ms, t)->has_value());
    REQUIRE(*e.space->prepare(t.id, t.manager) == txn::Vote::kPrepared);
    REQUIRE(e.landlord->cancel(kept->lease_id).ok());
  }
  {
    // An acknowledged write after a restart.
    Engine e(path, ask);
    CHECK(e.space->stats().in_doubt == 1);
    REQUIRE(e.space->write({entry("demo.Fresh", {{"n", 2}}), 600'000}).ok());
    CHECK(visible(e, "demo.Fresh", 2));
  }
  {
    // After another, it is not held for T, and T's commit leaves it alone.
    Engine e(path, ask);
    CHECK(visible(e, "demo.Fresh", 2));
    answer = txn::Outcome::kCommitted;
    REQUIRE(test::eventually([&] { return e.space->stats().in_doubt == 0; }, 10000));
    CHECK(visible(e, "demo.Fresh", 2));
  }
  Engine e(path, ask);
  CHECK(visible(e, "demo.Fresh", 2));
  CHECK(!visible(e, "demo.Kept", 1));
}

TEST_CASE("prepared states name what they took by sequence and lease; the first format, by sequence alone, still loads") {
  test::TempDir dir;
  const std::string path = dir.file("space.db");
  {
    // A fresh space numbers its entries from 1.
    Engine e(path, nullptr);
    REQUIRE(e.space->write({entry("demo.Kept", {{"n", 1}}), 600'000}).ok());
    REQUIRE(e.space->write({entry("demo.Kept", {{"n", 2}}), 600'000}).ok());
  }
  // T's state, in the first format, names sequence 1; U's names sequence 2 with a lease that is
  // not entry 2's, so it took another entry that had that sequence once.
  const TxnRef t = txn_ref(1), u = txn_ref(2);
  {
    lease::LandlordOptions lo;
    lo.path = path;
    auto landlord = lease::Landlord::open(std::move(lo));
    REQUIRE(landlord.ok());
    const std::vector<uint8_t> first_format = {1, 0, 0, 0, 0, 0, 0, 0};
    const std::vector<uint8_t> other_lease = {'T', 'K', 'N', '2', 2, 0, 0, 0, 0, 0, 0, 0, 0x39, 0x30, 0, 0, 0, 0, 0, 0};
    Status st = (*landlord)->transact(sqlite::Sync::kFull, [&](sqlite::Database& db) -> Status {
      Result<txn::ParticipantLog> log = txn::ParticipantLog::open(db);
      if (!log.ok()) return log.status();
      DJINN_RETURN_IF_ERROR(log->prepared(t.id, t.manager, first_format));
      return log->prepared(u.id, u.manager, other_lease);
    });
    REQUIRE_MESSAGE(st.ok(), st.to_string());
  }
  std::atomic<txn::Outcome> answer{txn::Outcome::kUnknown};
  {
    Engine e(path, [&](const txn::InDoubt&) { return answer.load(); });
    CHECK(e.space->stats().in_doubt == 2);
    CHECK(!visible(e, "demo.Kept", 1));
    CHECK(visible(e, "demo.Kept", 2));
    answer = txn::Outcome::kCommitted;
    REQUIRE(test::eventually([&] { return e.space->stats().in_doubt == 0; }, 10000));
    CHECK(!visible(e, "demo.Kept", 1));
    CHECK(visible(e, "demo.Kept", 2));
  }
  Engine e(path, nullptr);
  CHECK(e.space->size() == 1);
  CHECK(visible(e, "demo.Kept", 2));
}

TEST_CASE("every operation under a transaction that has voted is refused, readIfExists and contents included") {
  test::TempDir dir;
  Engine e(dir.file("space.db"), nullptr);
  const TxnRef t = txn_ref(1);
  stage(e, t);  // took demo.Kept 1, wrote demo.Staged 1
  auto seen = [&](const Template& which) { return e.space->read(which, 0ms, t); };
  REQUIRE(seen(tmpl("demo.Staged", {{"n", 1}}))->has_value());  // its own write, while active
  REQUIRE(*e.space->prepare(t.id, t.manager) == txn::Vote::kPrepared);

  // After its vote nothing may be read or taken under it: a read could still see its own write
  // and a take would take what its prepared state does not name.
  REQUIRE(e.space->write({entry("demo.Free", {{"n", 1}}), 600'000}).ok());
  auto refused = [](const Status& st) { return st.code() == Code::kFailedPrecondition || st.code() == Code::kAborted; };
  CHECK(refused(seen(tmpl("demo.Staged", {{"n", 1}})).status()));
  CHECK(refused(seen(tmpl("demo.Free", {{"n", 1}})).status()));
  CHECK(refused(e.space->read(tmpl("demo.Free"), 50ms, t).status()));
  CHECK(refused(e.space->take(tmpl("demo.Free"), 0ms, t).status()));
  CHECK(refused(e.space->contents(tmpl("demo.Staged"), 0, 10, t).status()));
  WriteRequest w{entry("demo.Staged", {{"n", 2}}), 600'000};
  w.txn = t;
  CHECK(!e.space->write(std::move(w)).ok());

  // Nothing changed: the commit applies what was prepared, and the free entry is still there.
  REQUIRE(e.space->commit(t.id).ok());
  CHECK(visible(e, "demo.Staged", 1));
  CHECK(!visible(e, "demo.Staged", 2));
  CHECK(!visible(e, "demo.Kept", 1));
  CHECK(visible(e, "demo.Free", 1));
}

TEST_CASE("an entry whose lease ends while its transaction prepares leaves no row behind") {
  test::TempDir dir;
  Engine e(dir.file("space.db"), nullptr);
  Disarm disarm;
  const TxnRef t = txn_ref(1);
  WriteRequest w{entry("demo.Staged", {{"n", 1}}), 600'000};
  w.txn = t;
  Result<Written> staged = e.space->write(std::move(w));
  REQUIRE(staged.ok());
  // The lease ends after the prepare took the entry's row to write and before it wrote it.
  fault::arm_call("space.prepare.before_write", [&] { REQUIRE(e.landlord->cancel(staged->lease_id).ok()); });
  REQUIRE(*e.space->prepare(t.id, t.manager) == txn::Vote::kPrepared);
  fault::disarm_all();
  REQUIRE(e.space->commit(t.id).ok());
  CHECK(!visible(e, "demo.Staged", 1));
  auto rows = [&] {
    int64_t n = -1;
    Status st = e.landlord->transact(sqlite::Sync::kNormal, [&](sqlite::Database& db) -> Status {
      Result<sqlite::Statement*> q = db.cached("SELECT COUNT(*) FROM space_entry");
      if (!q.ok()) return q.status();
      Result<bool> row = (*q)->step();
      if (!row.ok()) return row.status();
      n = (*q)->column_int64(0);
      (*q)->reset();
      return Status::Ok();
    });
    REQUIRE_MESSAGE(st.ok(), st.to_string());
    return n;
  };
  // Deleted by the space's remover thread, as every ended entry's row is (it stayed until the
  // next open before).
  CHECK(test::eventually([&] { return rows() == 0; }, 5000));
}

TEST_CASE("a value an entry refers to is kept while its write waits for the transaction's join") {
  test::TempDir dir;
  auto store = ValueStore::open({.dir = dir.file("values"), .grace = 0ms, .gc_interval = 0ms});
  REQUIRE(store.ok());
  ValueStore& values = **store;
  std::vector<uint8_t> page(4096, 7);
  ContentHash chunk = hash_bytes(page);
  REQUIRE(values.put_chunk(chunk, page).ok());
  auto value = values.put_value(page.size(), std::vector<ContentHash>{chunk});
  REQUIRE(value.ok());
  // The manager takes 400 ms to answer the join; the value is named by nothing meanwhile but the
  // write that checked it, and a collection with no grace runs then.
  std::vector<std::thread> joins;
  std::mutex joins_mu;
  Engine e(dir.file("space.db"), nullptr, [&](SpaceOptions& o) {
    o.values = &values;
    o.join = [&](const TxnRef&, const std::string&, std::function<void(Status)> done) {
      std::lock_guard lock(joins_mu);
      joins.emplace_back([done] {
        std::this_thread::sleep_for(400ms);
        done(Status::Ok());
      });
    };
  });
  struct JoinAll {  // before the engine goes: a join answered late calls into its space
    std::vector<std::thread>& threads;
    std::mutex& mu;
    ~JoinAll() {
      std::lock_guard lock(mu);
      for (auto& j : threads) j.join();
    }
  } join_all{joins, joins_mu};
  const TxnRef t = txn_ref(1);
  WriteRequest w{entry("demo.WithValue", {{"v", value_ref(*value)}}), 600'000};
  w.txn = t;
  auto written = std::async(std::launch::async, [&] { return e.space->write(std::move(w)); });
  std::this_thread::sleep_for(150ms);
  values.collect_now(0ms);
  auto result = written.get();
  REQUIRE_MESSAGE(result.ok(), result.status().to_string());
  CHECK(values.has_value(*value));  // it was collected under the waiting write before
  REQUIRE(e.space->commit(t.id).ok());
  values.collect_now(0ms);
  CHECK(values.has_value(*value));
  std::vector<uint8_t> out;
  CHECK(values.get_chunk(chunk, out).ok());
}

TEST_CASE("a space stopped while a write naming a value awaits its transaction's join stops cleanly") {
  // The write holds a reference to its value while its join waits (a manager that is not there);
  // the stop answers the join and lets the reference go while the value store is still open (it
  // was let go after, into a store already destroyed).
  test::TempDir dir;
  auto a = start_space(dir, "a", false);
  SpaceClient c({.endpoint = a->rpc_endpoint(), .default_timeout = 5s});
  auto value = c.put_value(std::vector<uint8_t>(10'000, 3));
  REQUIRE(value.ok());
  TxnRef lost{txn::TxnId::random(), "tcp://127.0.0.1:" + std::to_string(test::free_tcp_port())};
  auto stuck = std::async(std::launch::async, [&] {
    SpaceClient w({.endpoint = a->rpc_endpoint(), .default_timeout = 3s});
    return w.write(entry("demo.WithValue", {{"v", value_ref(*value)}}), 600'000, lost);
  });
  std::this_thread::sleep_for(300ms);  // the write waits for its join
  a.reset();
  CHECK(!stuck.get().ok());
  a = start_space(dir, "a", false);  // and the store opens again whole
  SpaceClient again({.endpoint = a->rpc_endpoint()});
  size_t got = 0;
  CHECK(again.get_value(*value, [&](std::span<const uint8_t> b) {
    got += b.size();
    return Status::Ok();
  }).ok());
  CHECK(got == 10'000);
}
