// `kvferry bench endpoint` end to end, tiny: two rounds of the endpoint's
// rows, bench net's ceiling and the Python column, alternated, with every
// byte verified and the fields a reader of docs/benchmarks.md takes from it.
// (Timing numbers are not asserted: a benchmark is not a timed test.)
#include <fstream>
#include <sstream>
#include <string>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "run_kvferry.hpp"

TEST_CASE("bench endpoint alternates rounds of the endpoint, bench net and "
          "Python, and reports medians and per-round ratios") {
  std::string json = KVFERRY_BINARY_DIR "/tests/bench_endpoint_test.json";
  std::remove(json.c_str());
  const std::string python = KVFERRY_TEST_PYTHON; // empty: none (ASan)
  auto run = kvferry::test::run_kvferry(
      "bench endpoint --sizes 4K,64K --depths 1,16 --ops write,send "
      "--python-sizes 4K --rounds 2 --python '" +
          python + "' --json " + json,
      240);
  INFO(run.output);
  REQUIRE(run.status == 0);
  CHECK(run.output.find("2 round(s)") != std::string::npos);
  CHECK(run.output.find("bench endpoint:") == std::string::npos); // errors
  CHECK(run.output.find("load average (1 min) at each round's start") !=
        std::string::npos);

  std::ifstream in(json);
  REQUIRE(in);
  auto doc = nlohmann::json::parse(in);
  REQUIRE(doc.size() == 8); // 2 ops x 2 sizes x 2 depths
  bool python_seen = false;
  for (const auto& row : doc) {
    INFO(row.dump());
    CHECK(row["verified"].get<bool>());
    CHECK(row["rounds"].get<int>() == 2);
    CHECK(row["gbps_rounds"].size() == 2);
    CHECK(row["call_p50_us"].get<double>() > 0);
    // The load-insensitive figures: CPU per operation, the slowest one.
    CHECK(row["cpu_us_per_op"].get<double>() > 0);
    CHECK(row["max_us"].get<double>() >= row["p50_us"].get<double>());
    // bench net ran in each round; its ratio for each.
    REQUIRE(row.contains("ratio_rounds"));
    CHECK(row["ratio_rounds"].size() == 2);
    if (row.contains("python_call_p50_us")) {
      python_seen = true;
      CHECK(row["op"] == "write");
      CHECK(row["depth"].get<int>() == 1);
      CHECK(row["size"].get<int>() == 4096);
      CHECK(row["python_call_p50_us"].get<double>() > 0);
      CHECK(row.contains("python_added_us"));
    }
  }
  CHECK(python_seen == !python.empty());
}

// --gpu: the CUDA IPC rows, the vector form among them (each operation one
// call over --total bytes of shuffled blocks, bench ipc beside it), every
// block verified; without a GPU, skipped with the reason and no failure.
TEST_CASE("bench endpoint --gpu 0: vector rows beside bench ipc, or skipped "
          "with the reason") {
  std::string json = KVFERRY_BINARY_DIR "/tests/bench_endpoint_gpu_test.json";
  std::remove(json.c_str());
  auto run = kvferry::test::run_kvferry(
      "bench endpoint --gpu 0 --sizes 64K --depths 1,16 --ops write "
      "--python '' --no-net --vector-sizes 4K,64K --total 4M --json " +
          json,
      240);
  INFO(run.output);
  REQUIRE(run.status == 0);
  std::ifstream in(json);
  REQUIRE(in);
  auto doc = nlohmann::json::parse(in);
  if (run.output.find("CUDA IPC rows skipped: --gpu 0: ") !=
      std::string::npos) {
    MESSAGE("no GPU here: the CUDA IPC rows were skipped");
    CHECK(doc.size() == 2); // the plugin rows only
    return;
  }
  CHECK(run.output.find("cuda_ipc for every transfer") != std::string::npos);
  int vector_rows = 0;
  for (const auto& row : doc) {
    INFO(row.dump());
    CHECK(row["verified"].get<bool>());
    if (row.value("form", "") != "vector")
      continue;
    ++vector_rows;
    CHECK(row["blocks"].get<std::uint64_t>() *
              row["block"].get<std::uint64_t>() ==
          std::uint64_t{4} << 20);
    CHECK(row.contains("ratio")); // bench ipc ran beside it
  }
  CHECK(vector_rows == 8); // write and read x 2 block sizes x 2 depths
}
