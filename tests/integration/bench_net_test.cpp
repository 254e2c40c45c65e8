// `kvferry bench net` end to end, tiny: two processes, both measurements (and
// GPU memory beside host memory where a GPU exists), the JSON fields a
// dashboard reads, and clear refusals of GPU memory that isn't there. (Timing
// numbers are not asserted: a benchmark is not a timed test.)
#include <fstream>
#include <sstream>
#include <string>

#include <doctest/doctest.h>

#include "kvferry/transport/gpu_info.hpp"
#include "run_kvferry.hpp"
#include "skip_case.hpp"

namespace {
bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

using kvferry::test::run_result;

run_result run_kvferry(const std::string& args) {
  return kvferry::test::run_kvferry(args, 120);
}

std::string read_file(const std::string& path) {
  std::ifstream file(path);
  REQUIRE(file);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

bool have_gpu() {
  return !kvferry::transport::list_gpus().devices.empty();
}
} // namespace

TEST_CASE("bench net runs kvsock against raw TCP and writes one JSON object "
          "per size") {
  std::string json = KVFERRY_BINARY_DIR "/tests/bench_net_test.json";
  std::remove(json.c_str());
  auto run = run_kvferry(
      "bench net --plugin kvsock --sizes 4K,1M --iters 20 --rtt-iters 20 "
      "--timeout-s 30 --json " +
      json);
  INFO(run.output);
  CHECK(run.status == 0);
  CHECK(has(run.output, "8-byte round trip"));
  CHECK(has(run.output, "peak RSS: sender"));
  CHECK_FALSE(has(run.output, "DATA CORRUPT"));
  // The baseline is a polling TCP loop with messages in flight (issue #18).
  CHECK(has(run.output, "baseline: raw TCP, one loopback connection, 8 "
                        "messages in flight, non-blocking and polling"));

  auto doc = read_file(json);
  for (auto key :
       {"\"size\": 4096", "\"size\": 1048576", "\"host\": {", "\"gbps\"",
        "\"baseline_gbps\"", "\"p50_us\"", "\"p99_us\"", "\"ratio\"",
        "\"rss_kb\"", "\"rtt_8b\"", "\"verified\": true", "\"memories\"",
        "\"baseline\": \"raw TCP"})
    CHECK_MESSAGE(has(doc, key), key);
  CHECK_FALSE(has(doc, "\"verified\": false"));
  // Where a GPU exists both memories run side by side by default.
  if (have_gpu()) {
    CHECK(has(doc, "\"cuda\": {"));
    CHECK(has(doc, "\"cuda_over_host\""));
    CHECK(has(run.output, "cuda/host"));
  } else {
    CHECK(has(run.output, "memory: host only (no CUDA GPU"));
  }
}

TEST_CASE("bench net --memory cuda without a GPU fails and says why") {
  if (have_gpu())
    return kvferry::test::skip_case(
        "this machine has a GPU (the case above covers CUDA memory there)");
  auto run = run_kvferry(
      "bench net --plugin kvsock --memory cuda --sizes 4K --iters 4");
  INFO(run.output);
  CHECK(run.status == 1);
  CHECK(has(run.output, "--memory cuda needs a CUDA GPU"));
}

TEST_CASE("bench net with GPU memory rejects a GPU that does not exist, naming "
          "it and the count") {
  auto run = run_kvferry(
      "bench net --plugin kvsock --memory both --gpu 99 --sizes 4K --iters 4");
  INFO(run.output);
  CHECK(run.status == 1);
  if (have_gpu())
    CHECK(has(run.output, "--gpu 99: no such GPU; this machine has "));
  else
    CHECK(has(run.output, "needs a CUDA GPU"));
}
