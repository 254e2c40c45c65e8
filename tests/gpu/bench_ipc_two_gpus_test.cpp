// `kvferry bench ipc --src-gpu 0 --dst-gpu 1`: the producer's pool on GPU 0,
// the consumer's on GPU 1, the kernels on GPU 1 reading GPU 0 over peer
// access, every copy verified, measured against cudaMemcpyPeer. Needs two
// GPUs that can reach each other: skipped (exit 77) with the reason otherwise
// (support/two_gpu_test_main.cpp), so it runs for real on a multi-GPU machine
// and nowhere else.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <unistd.h>

#include <doctest/doctest.h>

#include "run_kvferry.hpp"

namespace {

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

} // namespace

TEST_CASE(
    "bench ipc copies from GPU 0 to GPU 1, verified, against cudaMemcpyPeer") {
  const std::string json =
      "/tmp/kvferry_bench_ipc_two_gpus_" + std::to_string(::getpid()) + ".json";
  const std::string args =
      "bench ipc --src-gpu 0 --dst-gpu 1 --sizes 64K,2M --total 64M "
      "--repeats 5 --no-unpack --json " +
      json;
  const auto r = kvferry::test::run_kvferry(args, 300);
  const auto& output = r.output;
  INFO(args);
  INFO(output);
  CHECK(r.status == 0); // exited (not killed), with 0
  CHECK(has(output, "from GPU 0"));
  CHECK(has(output, "to GPU 1"));
  CHECK(has(output, "cudaMemcpyPeerAsync"));
  CHECK_FALSE(has(output, "BAD"));

  std::ifstream file(json);
  REQUIRE(file);
  std::stringstream text;
  text << file.rdbuf();
  const auto doc = text.str();
  CHECK(has(doc, "\"src_gpu\": 0"));
  CHECK(has(doc, "\"dst_gpu\": 1"));
  CHECK_FALSE(has(doc, "\"verified\": false"));
  std::remove(json.c_str());
}
