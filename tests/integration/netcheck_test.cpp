// `kvferry netcheck` as a user runs it: against the bundled kvsock plugin,
// against the fake plugin in its awkward mode (NULL requests, slow connects),
// and against plugins that must fail with a clear line.
#include <initializer_list>
#include <string>

#include <doctest/doctest.h>

#include "run_kvferry.hpp"

namespace {
using kvferry::test::run_result;

run_result run_with_env(const std::string& env, const std::string& args) {
  return kvferry::test::run_kvferry(args, 60, env);
}
bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}
const std::string fixtures = KVFERRY_FIXTURE_DIR;

// netcheck as a user runs it, one row per plugin and environment: the exit
// status, lines that must be in its report and lines that must not.
struct run_case {
  const char* what;
  const char* env;
  std::string args;
  int status;
  std::initializer_list<const char*> has;
  std::initializer_list<const char*> lacks;
};

void check_run(const run_case& c) {
  CAPTURE(c.what);
  auto r = run_with_env(c.env, c.args);
  INFO(r.output);
  CHECK(r.status == c.status);
  for (const char* part : c.has)
    CHECK_MESSAGE(has(r.output, part), "missing: ", part);
  for (const char* part : c.lacks)
    CHECK_MESSAGE(!has(r.output, part), "unexpected: ", part);
}

std::string fixture(const std::string& name) {
  return "netcheck --plugin " + fixtures + "/libnccl-net-" + name + ".so";
}
} // namespace

TEST_CASE("netcheck passes kvsock and NCCL's quirks, fails what NCCL "
          "refuses, each with a clear line") {
  const run_case cases[] = {
      {"kvsock, found by name",
       "",
       "netcheck --plugin kvsock --connect-timeout-s 20",
       0,
       {"PASS  probe in a child process", "PASS  32 requests in flight",
        "PASS  grouped receive with tags", " 0 failed"},
       {"FAIL"}},
      {"a plugin that exits in init",
       "",
       fixture("bad-exit"),
       1,
       {"FAIL  probe in a child process",
        "init exited with status 1 in the probe process"},
       {}},
      {"a plugin with no v7 table",
       "",
       fixture("bad-v8only"),
       1,
       {"it exports ncclNetPlugin_v8 instead"},
       {}},
      // kvsock's fault injection flips one payload byte.
      {"corrupted data",
       "KVSOCK_FAULT_CORRUPT=1",
       "netcheck --plugin kvsock --op-timeout-s 5",
       1,
       {"differs"},
       {}},
      {"an UNPACK plugin, verified by gathering its host ring",
       "KVSOCK_UNPACK=1",
       "netcheck --plugin kvsock",
       0,
       {"UNPACK v7", "PASS  UNPACK device handle",
        "gathered from the UNPACK ring on the host"},
       {}},
      // A real third-party plugin reports speed 0 where it cannot read the
      // link speed, and sets up lazily in its first listen: NCCL runs with
      // both, so netcheck must pass it, warning where a default was
      // substituted.
      {"speed 0, maxRecvs 0, latency -1: NCCL's defaults, a warning",
       "",
       fixture("quirk-speed0"),
       0,
       {"WARN  properties of device 0", "speed 0 Mbit/s: taken as 10000 Mbit/s",
        "maxRecvs 0: taken as 1", "latency -1 us: taken as 0",
        "PASS  8 MiB message, verified", "SKIP  grouped receive with tags",
        " 0 failed"},
       {}},
      // Its first listen takes 1.5 s: over the 1 s limit of later calls,
      // within the 5 s allowed to the first call of each kind.
      {"a slow first listen",
       "",
       fixture("quirk-slow-listen"),
       0,
       {"PASS  listen/connect/accept", "first calls: listen 1", " 0 failed"},
       {}},
      // A property NCCL refuses fails its check, and every data check still
      // runs.
      {"maxComms 0",
       "",
       fixture("quirk-nocomms"),
       1,
       {"FAIL  properties of device 0", "maxComms 0",
        "PASS  send/recv one message", "PASS  32 requests in flight",
        "PASS  close in every order", " 1 failed"},
       {}},
  };
  for (const auto& c : cases)
    check_run(c);
}

TEST_CASE(
    "netcheck retries thousands of NULL requests and waits out slow connects") {
  auto r =
      run_with_env("KVFERRY_FAKE_NULL_RUN=50 KVFERRY_FAKE_CONNECT_ROUNDS=200 "
                   "KVFERRY_FAKE_MAX_RECVS=1",
                   fixture("fake"));
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(has(r.output, "over 201 rounds"));
  CHECK(has(r.output, "PASS  NULL requests tolerated"));
  auto nulls = r.output.substr(r.output.find("NULL requests tolerated") + 23);
  CHECK(std::stol(nulls) >= 1000);
  CHECK(has(r.output, "SKIP  grouped receive with tags"));
  CHECK(has(r.output, "maxRecvs is 1"));
}

// netcheck's own checks, each seen to fail: a build of the fake plugin that
// breaks exactly one rule of the v7 contract (transport_fake_plugin.cpp)
// must make the check that guards it FAIL, naming what went wrong, while the
// plugin's other behaviour still passes.
TEST_CASE("each netcheck check fails on a plugin that breaks its rule") {
  struct broken {
    const char* rule;
    const char* check;
    const char* detail;
  };
  const broken cases[] = {
      {"order", "FAIL  posting-order matching",
       "receive 0: test reported 33333 bytes, 100 were sent"},
      {"tags", "FAIL  grouped receive with tags", "buffer with tag 100:"},
      {"sizes", "FAIL  receive larger than send",
       "test reported 65536 bytes, 1000 were sent"},
      {"close", "FAIL  close in every order",
       "closeRecv (recv first) returned"},
      {"iflush", "FAIL  iflush", "iflush returned"},
      {"table", "FAIL  load and init", "NULL entries in the v7 table: test"},
  };
  for (const auto& b : cases) {
    CAPTURE(b.rule);
    auto r = run_with_env("", fixture(std::string{"broken-"} + b.rule));
    INFO(r.output);
    CHECK(r.status == 1);
    auto line = r.output.find(b.check);
    REQUIRE(line != std::string::npos);
    auto end = r.output.find('\n', line);
    CHECK(has(r.output.substr(line, end - line), b.detail));
    if (std::string{b.rule} != "table") // the rest of the suite runs
      CHECK(has(r.output, "PASS  send/recv one message"));
  }
}
