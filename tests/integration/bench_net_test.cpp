// `kvferry bench net` end to end, tiny: two processes, both measurements,
// the JSON fields a dashboard reads. (Timing numbers are not asserted: a
// benchmark is not a timed test.)
#include <doctest/doctest.h>

#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

namespace {
bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}
}  // namespace

TEST_CASE("bench net runs kvsock against raw TCP and writes one JSON object per size") {
  std::string json = KVFERRY_BINARY_DIR "/tests/bench_net_test.json";
  std::remove(json.c_str());
  std::string command = "timeout 120 " KVFERRY_BINARY_DIR
                        "/bin/kvferry bench net --plugin kvsock --sizes 4K,1M --iters 20 "
                        "--rtt-iters 20 --timeout-s 30 --json " + json + " 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  REQUIRE(pipe);
  std::string output;
  char buffer[4096];
  while (size_t n = std::fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, n);
  int raw = ::pclose(pipe);
  INFO(output);
  CHECK(WIFEXITED(raw));
  CHECK(WEXITSTATUS(raw) == 0);
  CHECK(has(output, "8-byte round trip"));
  CHECK(has(output, "peak RSS: sender"));
  CHECK_FALSE(has(output, "DATA CORRUPT"));

  std::ifstream file(json);
  REQUIRE(file);
  std::stringstream text;
  text << file.rdbuf();
  auto doc = text.str();
  for (auto key : {"\"size\": 4096", "\"size\": 1048576", "\"gbps\"", "\"baseline_gbps\"",
                   "\"p50_us\"", "\"p99_us\"", "\"ratio\"", "\"rss_kb\"", "\"rtt_8b\"",
                   "\"verified\": true"})
    CHECK_MESSAGE(has(doc, key), key);
}
