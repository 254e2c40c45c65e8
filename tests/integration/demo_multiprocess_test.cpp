// `kvferry demo` end to end: a directory, a prefill and a decode worker as
// separate processes, KV moved over kvsock and verified byte for byte.
#include <string>

#include <doctest/doctest.h>

#include "run_kvferry.hpp"

namespace {

using kvferry::test::run_result;

run_result run_kvferry(const std::string& args) {
  return kvferry::test::run_kvferry(args, 100);
}

void check_demo(const std::string& extra) {
  auto r = run_kvferry("demo --requests 20 --max-tokens 512 --quiet " + extra);
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("every byte of 20 requests verified") !=
        std::string::npos);
  CHECK(r.output.find("| 20 | 0 |") != std::string::npos);
}

} // namespace

TEST_CASE("demo: push, whole requests") {
  check_demo("");
}

TEST_CASE("demo: push, layer by layer") {
  check_demo("--layerwise");
}

TEST_CASE("demo: pull") {
  check_demo("--pull");
}

// The control-plane benchmark's shape (64 KiB requests, one in flight, so
// nearly every request rides on credit): checked for correctness only; its
// timing is measured by running the command, never asserted here.
TEST_CASE("demo: 64 KiB requests one at a time (the control run)") {
  auto r = run_kvferry("demo --requests 200 --min-tokens 16 --max-tokens 16 "
                       "--layers 1 --inflight 1 --quiet");
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("every byte of 200 requests verified") !=
        std::string::npos);
  CHECK(r.output.find("| 200 | 0 |") != std::string::npos);
}

TEST_CASE("demo: bad options fail with a clear message") {
  auto r = run_kvferry("demo --dtype int3");
  CHECK(r.status == 2);
  CHECK(r.output.find("--dtype 'int3'") != std::string::npos);
}
