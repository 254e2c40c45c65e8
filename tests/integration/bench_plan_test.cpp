// `kvferry bench plan` end to end, tiny: it runs without a GPU, reports both
// ways of building a plan for every size with the plan's true extent and
// item counts, and refuses a bad item size clearly. (Times are not asserted:
// a benchmark is not a timed test.)
#include <fstream>
#include <string>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "run_kvferry.hpp"

namespace {

using kvferry::test::run_result;

run_result run_kvferry(const std::string& args) {
  return kvferry::test::run_kvferry(args, 60);
}

} // namespace

TEST_CASE("bench plan times the packed plan, the item list, the plan over "
          "region tables and a vector call's host stages per size") {
  const std::string path = KVFERRY_BINARY_DIR "/tests/bench_plan_test.json";
  std::remove(path.c_str());
  const auto run = run_kvferry(
      "bench plan --sizes 4K,64K --total 4M --repeats 3 --kv-blocks 100 "
      "--kv-layers 4 --plan-threads 2 --json " +
      path);
  INFO(run.output);
  REQUIRE(run.status == 0);
  CHECK(run.output.find("peak RSS") != std::string::npos);

  std::ifstream file(path);
  REQUIRE(file);
  const auto doc = nlohmann::json::parse(file);
  REQUIRE(doc["sizes"].size() == 2);
  // 4 MiB of 4 KiB blocks: 1024 extents of one 8 KiB item each (blocks at
  // random slots never coalesce); of 64 KiB blocks: 64 extents of 8 items.
  const auto& small = doc["sizes"][0];
  CHECK(small["extents"] == 1024);
  CHECK(small["work_items"] == 1024);
  const auto& large = doc["sizes"][1];
  CHECK(large["extents"] == 64);
  CHECK(large["work_items"] == 512);
  for (const auto& row : doc["sizes"]) {
    CHECK(row["packed_seconds"].get<double>() > 0);
    CHECK(row["item_list_seconds"].get<double>() > 0);
    // The same plan over region tables: before, in one pass, in parts.
    CHECK(row["table_translate_then_pack_seconds"].get<double>() > 0);
    CHECK(row["table_one_pass_seconds"].get<double>() > 0);
    CHECK(row["table_in_parts_seconds"].get<double>() > 0);
    CHECK(row["table_parts"] == 2);
    // One vector endpoint call's host stages, before and now (issue #16).
    const auto& call = row["vector_call_us"];
    for (const char* stage :
         {"caller_before", "caller_one_thread", "caller_in_parts",
          "control_before", "transfer_before", "transfer_now"})
      CHECK_MESSAGE(call[stage].get<double>() > 0, stage);
    CHECK(call["control_now"] == 0.0);
  }
  // KV plans: 2 x 2 layouts, blocks in a row and scattered. In a row, the
  // per-layer layout coalesces to one extent per layer and half, block-major
  // to one in all.
  REQUIRE(doc["kv_plans"].size() == 8);
  const auto& in_a_row = doc["kv_plans"][0];
  CHECK(in_a_row["src_layout"] == "vllm_per_layer");
  CHECK(in_a_row["scattered"] == false);
  CHECK(in_a_row["extents"] == 4 * 2);
  CHECK(doc["kv_plans"][6]["src_layout"] == "block_major");
  CHECK(doc["kv_plans"][6]["extents"] == 1);
  for (const auto& row : doc["kv_plans"])
    CHECK(row["us_per_block"].get<double>() > 0);
}

TEST_CASE("bench plan refuses an item size that is not a multiple of 16") {
  const auto run =
      run_kvferry("bench plan --sizes 4K --total 1M --item-bytes 100");
  INFO(run.output);
  CHECK(run.status == 1);
  CHECK(
      run.output.find("work item size 100 is not a positive multiple of 16") !=
      std::string::npos);
}
