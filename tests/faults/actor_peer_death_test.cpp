// A decode worker killed (SIGKILL) in the middle of transfers: every request
// waiting on it fails promptly with kvferry.peer_down naming the peer — long
// before any timeout — and the router (kvferry demo --directory) exits
// non-zero saying so.
#include <chrono>
#include <regex>
#include <signal.h>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "kvferry_processes.hpp"

namespace {

using namespace std::chrono;
using kvferry::test::child;
using kvferry::test::deployment;

} // namespace

TEST_CASE("a decode worker killed mid-transfer fails its requests with "
          "peer_down, promptly") {
  setenv("KVFERRY_SECRET", "fault-test-secret", 1);
  deployment d("fault");
  auto& decode = d.decode;

  child router({"demo", "--directory", d.address, "--requests", "100000",
                "--inflight", "4", "--timeout-ms", "30000", "--log-level",
                "warn"});
  // Wait until the router's progress line reports finished requests, so the
  // kill lands mid-stream (a fixed sleep could fire during start-up on a
  // loaded or sanitized run), then kill the receiver without warning.
  const std::regex some_done{R"(\n  [1-9][0-9]*/100000 requests)"};
  auto started_by = steady_clock::now() + seconds(30);
  while (!std::regex_search(router.text, some_done) &&
         steady_clock::now() < started_by)
    router.read_until("\x01never", milliseconds(200));
  REQUIRE(std::regex_search(router.text, some_done));
  REQUIRE(router.wait_exit(milliseconds(1)) == -1); // still running
  auto killed_at = steady_clock::now();
  kill(decode.pid, SIGKILL);
  int status = router.wait_exit(seconds(25));
  auto took = duration_cast<milliseconds>(steady_clock::now() - killed_at);
  INFO(router.text);
  CHECK(status == 1);
  CHECK(took < seconds(10));
  CHECK(router.text.find("FAILED") != std::string::npos);
  CHECK(router.text.find("peer_down") != std::string::npos);
  CHECK(router.text.find("fault-decode") != std::string::npos);
}

// The suspicion of issue #4: a consumer that dies before the producer ever
// reached it (here: frozen with SIGSTOP while the router starts, so the
// producer's first allocate and reserve to it, and the router's monitor,
// are stuck; then killed) must still fail its requests promptly, not after
// the 30 s deadlines.
TEST_CASE("a decode worker that dies before the producer first reached it "
          "fails the requests promptly") {
  setenv("KVFERRY_SECRET", "fault-test-secret", 1);
  deployment d("early");
  auto& decode = d.decode;
  kill(decode.pid, SIGSTOP);
  child router({"demo", "--directory", d.address, "--requests", "100",
                "--inflight", "2", "--timeout-ms", "30000", "--log-level",
                "warn"});
  // The router has found both workers and sent its first requests when it
  // prints its plan; give them a moment to get stuck.
  REQUIRE(router.read_until("prefill / 1 decode workers", seconds(30)));
  std::this_thread::sleep_for(milliseconds(500));
  REQUIRE(router.wait_exit(milliseconds(1)) == -1); // still waiting
  auto killed_at = steady_clock::now();
  kill(decode.pid, SIGKILL);
  int status = router.wait_exit(seconds(40));
  auto took = duration_cast<milliseconds>(steady_clock::now() - killed_at);
  INFO(router.text);
  INFO("router exited after " << took.count() << " ms");
  CHECK(status == 1);
  CHECK(took < seconds(10));
  CHECK(router.text.find("FAILED") != std::string::npos);
  CHECK(router.text.find("early-decode") != std::string::npos);
}
