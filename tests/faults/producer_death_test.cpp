// A prefill worker killed (SIGKILL) in the middle of a run: the router
// (kvferry demo --directory) reports the failure within 2 s, naming the
// worker, not after a timeout; the decode worker forgets the dead requests
// and frees their blocks, so a rerun with the same request ids against a
// restarted prefill worker verifies every request and leaves the decode
// pool whole. And a router whose directory dies stops at once, naming it.
#include <chrono>
#include <regex>
#include <signal.h>
#include <string>

#include <doctest/doctest.h>

#include "kvferry_processes.hpp"
#include "test_pki.hpp"

namespace {

using namespace std::chrono;
using kvferry::test::child;
using kvferry::test::deployment;
using kvferry::test::worker_args;

// A router of `requests` requests, with the same request ids every run (a
// forced --request-id-base; by default each run draws a fresh one).
child start_router(const deployment& d, const std::string& requests) {
  return child({"demo", "--directory", d.address, "--requests", requests,
                "--inflight", "4", "--seed", "7", "--request-id-base", "0",
                "--timeout-ms", "30000", "--log-level", "warn"});
}

// Waits until the router's progress line reports finished requests, so that
// a fault lands mid-stream (a fixed sleep could fire during start-up on a
// loaded or sanitized run).
void wait_for_progress(child& router) {
  REQUIRE(router.read_until_progress(seconds(30)));
  REQUIRE(router.wait_exit(milliseconds(1)) == -1); // still running
}

} // namespace

TEST_CASE("a prefill worker killed mid-run fails its requests within 2 s, "
          "naming it; a rerun with the same ids passes, the pool whole") {
  setenv("KVFERRY_SECRET", "fault-test-secret", 1);
  kvferry::test::test_pki pki{{"directory", "pdeath-prefill", "pdeath-decode"}};
  deployment d("pdeath");
  {
    auto router = start_router(d, "100000");
    wait_for_progress(router);
    auto killed_at = steady_clock::now();
    kill(d.prefill.pid, SIGKILL);
    bool reported = router.read_until("FAILED", seconds(25));
    auto took = duration_cast<milliseconds>(steady_clock::now() - killed_at);
    int status = router.wait_exit(seconds(10));
    INFO(router.text);
    INFO("the router reported after " << took.count() << " ms");
    REQUIRE(reported);
    CHECK(status == 1);
    CHECK(took < seconds(2)); // the worker deadlines are 30 s
    CHECK(router.text.find("pdeath-prefill") != std::string::npos);
    CHECK(router.text.find("peer_down") != std::string::npos);
    CHECK(router.text.find("request_timeout") == std::string::npos);
  }
  // The same worker name and the same request ids again: the decode worker
  // must have forgotten the dead run's requests ("already in flight") and
  // freed their blocks.
  child prefill(worker_args("pdeath-prefill", "prefill", d.address));
  REQUIRE(prefill.read_until(" ready", seconds(30)));
  auto rerun = start_router(d, "60");
  int status = rerun.wait_exit(seconds(180));
  INFO(rerun.text);
  CHECK(status == 0);
  CHECK(rerun.text.find("OK, every byte of 60 requests verified") !=
        std::string::npos);
  std::smatch pool;
  const std::regex pool_line{
      R"(pool ([0-9]+) free \+ ([0-9]+) lent of ([0-9]+) blocks, 0 requests open)"};
  REQUIRE(std::regex_search(rerun.text, pool, pool_line));
  auto free = std::stoull(pool[1]), lent = std::stoull(pool[2]),
       total = std::stoull(pool[3]);
  CHECK(free + lent == total);
  // Only the live worker's loan (25 %, the default cap): the dead one's
  // came back to the pool.
  CHECK(lent * 4 <= total);
}

TEST_CASE("a router whose directory died stops at once, naming the "
          "directory's address") {
  setenv("KVFERRY_SECRET", "fault-test-secret", 1);
  kvferry::test::test_pki pki{
      {"directory", "dirdeath-prefill", "dirdeath-decode"}};
  deployment d("dirdeath");
  auto router = start_router(d, "100000");
  wait_for_progress(router);
  auto killed_at = steady_clock::now();
  kill(d.dir.pid, SIGKILL);
  int status = router.wait_exit(seconds(25));
  auto took = duration_cast<milliseconds>(steady_clock::now() - killed_at);
  INFO(router.text);
  INFO("the router exited after " << took.count() << " ms");
  CHECK(status == 1);
  CHECK(took < seconds(5)); // it used to run on until its deadline
  CHECK(router.text.find("the directory at " + d.address + " is gone") !=
        std::string::npos);
}
