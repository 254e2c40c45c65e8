// `kvferry netcheck` as a user runs it: against the bundled kvsock plugin,
// against the fake plugin in its awkward mode (NULL requests, slow connects),
// and against plugins that must fail with a clear line.
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
} // namespace

TEST_CASE("netcheck passes against kvsock, found by name") {
  auto r = run_with_env("", "netcheck --plugin kvsock --connect-timeout-s 20");
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(has(r.output, "PASS  probe in a child process"));
  CHECK(has(r.output, "PASS  32 requests in flight"));
  CHECK(has(r.output, "PASS  grouped receive with tags"));
  CHECK(has(r.output, " 0 failed"));
  CHECK_FALSE(has(r.output, "FAIL"));
}

TEST_CASE(
    "netcheck retries thousands of NULL requests and waits out slow connects") {
  auto r =
      run_with_env("KVFERRY_FAKE_NULL_RUN=50 KVFERRY_FAKE_CONNECT_ROUNDS=200 "
                   "KVFERRY_FAKE_MAX_RECVS=1",
                   "netcheck --plugin " + fixtures + "/libnccl-net-fake.so");
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(has(r.output, "over 201 rounds"));
  CHECK(has(r.output, "PASS  NULL requests tolerated"));
  auto nulls = r.output.substr(r.output.find("NULL requests tolerated") + 23);
  CHECK(std::stol(nulls) >= 1000);
  CHECK(has(r.output, "SKIP  grouped receive with tags"));
  CHECK(has(r.output, "maxRecvs is 1"));
}

TEST_CASE("netcheck fails clearly on a plugin that exits in init or has no v7 "
          "table") {
  auto exits = run_with_env("", "netcheck --plugin " + fixtures +
                                    "/libnccl-net-bad-exit.so");
  INFO(exits.output);
  CHECK(exits.status == 1);
  CHECK(has(exits.output, "FAIL  probe in a child process"));
  CHECK(has(exits.output, "init exited with status 1 in the probe process"));

  auto v8 = run_with_env("", "netcheck --plugin " + fixtures +
                                 "/libnccl-net-bad-v8only.so");
  INFO(v8.output);
  CHECK(v8.status == 1);
  CHECK(has(v8.output, "it exports ncclNetPlugin_v8 instead"));
}

TEST_CASE("netcheck catches corrupted data") {
  // kvsock's fault injection flips one payload byte.
  auto r = run_with_env("KVSOCK_FAULT_CORRUPT=1",
                        "netcheck --plugin kvsock --op-timeout-s 5");
  INFO(r.output);
  CHECK(r.status == 1);
  CHECK(has(r.output, "differs"));
}

TEST_CASE("netcheck verifies an UNPACK plugin by gathering its host ring") {
  auto r = run_with_env("KVSOCK_UNPACK=1", "netcheck --plugin kvsock");
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(has(r.output, "UNPACK v7"));
  CHECK(has(r.output, "PASS  UNPACK device handle"));
  CHECK(has(r.output, "gathered from the UNPACK ring on the host"));
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
    auto r = run_with_env("", "netcheck --plugin " + fixtures +
                                  "/libnccl-net-broken-" + b.rule + ".so");
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

// A real third-party plugin reports speed 0 where it cannot read the link
// speed, and sets up lazily in its first listen: NCCL runs with both, so
// netcheck must pass it, warning where a default was substituted.
TEST_CASE("netcheck warns about defaults NCCL substitutes and passes the data "
          "checks") {
  auto speed0 = run_with_env("", "netcheck --plugin " + fixtures +
                                     "/libnccl-net-quirk-speed0.so");
  INFO(speed0.output);
  CHECK(speed0.status == 0);
  CHECK(has(speed0.output, "WARN  properties of device 0"));
  CHECK(has(speed0.output, "speed 0 Mbit/s: taken as 10000 Mbit/s"));
  CHECK(has(speed0.output, "maxRecvs 0: taken as 1"));
  CHECK(has(speed0.output, "latency -1 us: taken as 0"));
  CHECK(has(speed0.output, "PASS  8 MiB message, verified"));
  CHECK(has(speed0.output, "SKIP  grouped receive with tags"));
  CHECK(has(speed0.output, " 0 failed"));

  // Its first listen takes 1.5 s: over the 1 s limit of later calls, within
  // the 5 s allowed to the first call of each kind.
  auto slow = run_with_env("", "netcheck --plugin " + fixtures +
                                   "/libnccl-net-quirk-slow-listen.so");
  INFO(slow.output);
  CHECK(slow.status == 0);
  CHECK(has(slow.output, "PASS  listen/connect/accept"));
  CHECK(has(slow.output, "first calls: listen 1"));
  CHECK(has(slow.output, " 0 failed"));
}

TEST_CASE("a property NCCL refuses fails its check, and every data check still "
          "runs") {
  auto r = run_with_env("", "netcheck --plugin " + fixtures +
                                "/libnccl-net-quirk-nocomms.so");
  INFO(r.output);
  CHECK(r.status == 1);
  CHECK(has(r.output, "FAIL  properties of device 0"));
  CHECK(has(r.output, "maxComms 0"));
  CHECK(has(r.output, "PASS  send/recv one message"));
  CHECK(has(r.output, "PASS  32 requests in flight"));
  CHECK(has(r.output, "PASS  close in every order"));
  CHECK(has(r.output, " 1 failed"));
}
