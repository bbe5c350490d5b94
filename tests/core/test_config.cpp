// Config (flags and file), durations, logging levels and crash points.
#include <doctest/doctest.h>

#include "djinn/core/config.h"
#include "djinn/core/fault.h"
#include "djinn/core/log.h"

using namespace djinn;

namespace {

Config make_config() {
  Config c("djinn-test", "A test program.");
  c.add_string("data-dir", "./.djinn", "where data lives");
  c.add_int("port", 0, "port", 0, 65535);
  c.add_bool("curve", false, "use CURVE");
  c.add_duration("lease-max", std::chrono::seconds(30), "longest lease");
  return c;
}

Status parse(Config& c, std::vector<const char*> args) {
  args.insert(args.begin(), "djinn-test");
  return c.parse(static_cast<int>(args.size()), args.data());
}

}  // namespace

TEST_CASE("flags set options in every accepted spelling, and defaults stand otherwise") {
  Config c = make_config();
  REQUIRE(parse(c, {"--port=8080", "--data-dir", "/tmp/x", "--curve", "--lease-max", "2m", "extra"}).ok());
  CHECK(c.get_int("port") == 8080);
  CHECK(c.get_string("data-dir") == "/tmp/x");
  CHECK(c.get_bool("curve"));
  CHECK(c.get_duration("lease-max") == std::chrono::minutes(2));
  CHECK(c.positional() == std::vector<std::string>{"extra"});
  CHECK(c.was_set("port"));

  Config d = make_config();
  REQUIRE(parse(d, {"--no-curve"}).ok());
  CHECK_FALSE(d.get_bool("curve"));
  CHECK(d.get_int("port") == 0);
  CHECK(d.get_duration("lease-max") == std::chrono::seconds(30));
  CHECK_FALSE(d.was_set("port"));
}

TEST_CASE("bad flags are refused with a message that says what is wrong") {
  struct Case {
    std::vector<const char*> args;
    const char* says;
  };
  std::vector<Case> cases = {
      {{"--nope"}, "unknown option '--nope'"},
      {{"--port", "http"}, "is not an integer"},
      {{"--port", "70000"}, "out of range [0, 65535]"},
      {{"--curve=maybe"}, "is not true or false"},
      {{"--lease-max", "5 parsecs"}, "is not one of ms, s, m, h"},
      {{"--lease-max", "-5s"}, "expected a number"},
      {{"--port"}, "needs a value"},
      {{"--log-level", "loud"}, "is not one of debug"},
      {{"--config", "/nonexistent/file"}, "cannot read config file"},
  };
  for (const auto& tc : cases) {
    Config c = make_config();
    Status st = parse(c, tc.args);
    CHECK(st.code() == Code::kInvalidArgument);
    CHECK_MESSAGE(st.message().find(tc.says) != std::string::npos, st.message());
  }
}

TEST_CASE("a config file sets options, and flags override it") {
  Config c = make_config();
  REQUIRE(c.apply_file_text("# comment\n\nport = 9000\ndata-dir = \"/var/lib/djinn\"  # trailing\ncurve = yes\n", "f.conf").ok());
  CHECK(c.get_int("port") == 9000);
  CHECK(c.get_string("data-dir") == "/var/lib/djinn");
  CHECK(c.get_bool("curve"));

  Config bad = make_config();
  Status st = bad.apply_file_text("port = 1\nwhat is this\n", "f.conf");
  CHECK(st.message().find("f.conf:2") != std::string::npos);
  Status unknown = bad.apply_file_text("colour = blue\n", "f.conf");
  CHECK(unknown.message().find("unknown option 'colour'") != std::string::npos);
}

TEST_CASE("--help prints usage listing every option") {
  Config c = make_config();
  std::string u = c.usage();
  for (const char* name : {"--data-dir", "--port", "--curve", "--lease-max", "--config", "--log-level"}) {
    CHECK(u.find(name) != std::string::npos);
  }
  CHECK(parse(c, {"--help"}).code() == Code::kCancelled);
  CHECK(c.exit_code(Status(Code::kCancelled, "")) == 0);
}

TEST_CASE("durations") {
  CHECK(*parse_duration("250ms") == std::chrono::milliseconds(250));
  CHECK(*parse_duration("1500") == std::chrono::milliseconds(1500));
  CHECK(*parse_duration("1h") == std::chrono::hours(1));
  CHECK_FALSE(parse_duration("").ok());
  CHECK_FALSE(parse_duration("s").ok());
  CHECK_FALSE(parse_duration("99999999999999999999ms").ok());
}

TEST_CASE("log levels parse, and the macro nests in an unbraced if") {
  log::Level l;
  CHECK(log::parse_level("warn", &l));
  CHECK(l == log::Level::kWarn);
  CHECK_FALSE(log::parse_level("verbose", &l));
  log::Level before = log::level();
  log::set_level(log::Level::kError);
  CHECK_FALSE(log::enabled(log::Level::kInfo));
  bool flag = true;
  if (flag)
    DJINN_LOG(kInfo, "test") << "not printed";
  else
    flag = false;
  CHECK(flag);
  log::set_level(before);
}

TEST_CASE("crash points fire on the armed hit and only there") {
  fault::disarm_all();
  fault::crash_point("test.step");  // unarmed: nothing happens
  fault::arm("test.step", fault::Action::kThrow, 3);
  fault::crash_point("test.other");
  fault::crash_point("test.step");
  fault::crash_point("test.step");
  CHECK_THROWS_AS(fault::crash_point("test.step"), fault::CrashPointHit);
  CHECK(fault::hits("test.step") == 3);
  fault::crash_point("test.step");  // past the armed hit
  fault::disarm_all();
}

TEST_CASE("fail points report a failure on the armed hit only, and never crash") {
  fault::disarm_all();
  CHECK(!fault::fail_point("test.sync"));  // unarmed
  fault::arm("test.sync", fault::Action::kFail, 2);
  CHECK(!fault::fail_point("test.sync"));
  CHECK(!fault::fail_point("test.other"));
  fault::crash_point("test.sync");  // a crash point of the same name is not one to fire
  CHECK(fault::fail_point("test.sync"));
  CHECK(!fault::fail_point("test.sync"));
  CHECK(fault::hits("test.sync") == 3);
  fault::disarm_all();
}

TEST_CASE("a point armed with a function runs it on the armed hit, on the passing thread") {
  fault::disarm_all();
  int calls = 0;
  fault::arm_call("test.between", [&] {
    ++calls;
    fault::crash_point("test.between");  // past its hit: passing it again inside does nothing
  }, 2);
  fault::crash_point("test.between");
  CHECK(calls == 0);
  fault::crash_point("test.between");
  CHECK(calls == 1);
  fault::crash_point("test.between");
  CHECK(calls == 1);
  CHECK(!fault::fail_point("test.between"));  // not a fail point
  fault::arm("test.empty", fault::Action::kCall);  // no function: passes like an unarmed point
  fault::crash_point("test.empty");
  fault::disarm_all();
}
