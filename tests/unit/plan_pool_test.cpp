// Transfer plans and the block pool: what the transfer actor relies on.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include <climits>
#include <doctest/doctest.h>

#include "kvferry/actors/plan.hpp"
#include "kvferry/runtime/kv_geometry.hpp"
#include "kvferry/runtime/node_shelf.hpp"

using kvferry::extent;

TEST_CASE("default geometry is Llama-3-8B with 64 KiB layer-blocks") {
  kvferry::kv_geometry g;
  CHECK(g.layer_block_bytes() == 64 * 1024);
  CHECK(g.blocks_for_tokens(1) == 1);
  CHECK(g.blocks_for_tokens(16) == 1);
  CHECK(g.blocks_for_tokens(17) == 2);
  CHECK(g.request_bytes(32) == 2u * 32 * 64 * 1024);
  CHECK(g.validate().empty());
  g.block_tokens = 0;
  CHECK_FALSE(g.validate().empty());
  CHECK(kvferry::parse_dtype("bf16") == kvferry::kv_dtype::bf16);
  CHECK_FALSE(kvferry::parse_dtype("int8"));
}

TEST_CASE("plan_blocks coalesces runs contiguous on both sides") {
  // src blocks 0,1,2 then 7; dst blocks 10,11 then 20,21 (block = 100 B)
  auto plan =
      kvferry::plan_blocks({0, 100, 200, 700}, {1000, 1100, 2000, 2100}, 100);
  REQUIRE(plan.size() == 3);
  CHECK(plan[0] == extent{0, 1000, 200});
  CHECK(plan[1] == extent{200, 2000, 100});
  CHECK(plan[2] == extent{700, 2100, 100});
  CHECK(kvferry::total_bytes(plan) == 400);
  CHECK_THROWS_AS(kvferry::plan_blocks({0}, {}, 100), std::invalid_argument);
}

TEST_CASE("split_chunks cuts at the chunk size and at the v7 int limit") {
  auto out = kvferry::split_chunks({{0, 100, 10}}, 4);
  REQUIRE(out.size() == 3);
  CHECK(out[0] == extent{0, 100, 4});
  CHECK(out[2] == extent{8, 108, 2});
  auto big = kvferry::split_chunks({{0, 0, std::uint64_t{1} << 32}},
                                   std::uint64_t{1} << 40);
  for (auto& e : big)
    CHECK(e.length <= static_cast<std::uint64_t>(INT_MAX));
  CHECK(kvferry::total_bytes(big) == std::uint64_t{1} << 32);
  CHECK_THROWS_AS(kvferry::split_chunks({}, 0), std::invalid_argument);
}

TEST_CASE("block pool allocates lowest blocks first and reuses freed ones") {
  kvferry::block_pool pool(130, 64);
  std::vector<std::uint64_t> a, b;
  REQUIRE(pool.allocate(3, a));
  CHECK(a == std::vector<std::uint64_t>{0, 64, 128});
  REQUIRE(pool.allocate(127, b));
  CHECK(pool.free_blocks() == 0);
  std::vector<std::uint64_t> none;
  CHECK_FALSE(pool.allocate(1, none));
  CHECK(none.empty());
  pool.release(a);
  CHECK(pool.free_blocks() == 3);
  std::vector<std::uint64_t> again;
  REQUIRE(pool.allocate(3, again));
  CHECK(again == a);
  CHECK_THROWS_AS(pool.release({5}), std::invalid_argument); // not a block
  CHECK_THROWS_AS(pool.release({130 * 64}), std::invalid_argument);
  pool.release({0});
  CHECK_THROWS_AS(pool.release({0}), std::invalid_argument); // double free
}

TEST_CASE("a fresh pool yields contiguous blocks, so plans coalesce") {
  kvferry::block_pool src(64, 4096), dst(64, 4096);
  std::vector<std::uint64_t> s, d;
  REQUIRE(src.allocate(40, s));
  REQUIRE(dst.allocate(40, d));
  CHECK(kvferry::plan_blocks(s, d, 4096).size() == 1);
}

TEST_CASE("checking both sides of a plan in one pass says what the two "
          "one-sided checks say") {
  using kvferry::table_offset;
  const std::vector<std::uint64_t> src{4096, 8192}, dst{65536};
  const std::vector<std::vector<extent>> plans{
      {{table_offset(1, 0), 0, 8192}, {0, 8192, 4096}}, // fits
      {{table_offset(1, 4096), 0, 8192}},               // source region 1
      {{table_offset(2, 0), 0, 16}},                    // no source region 2
      {{0, 65536 - 8, 16}},                             // the destination
      {{0, table_offset(1, 0), 16}},                    // one-region table
      // a destination misfit first, a source misfit later: the source's
      {{0, 65536, 16}, {table_offset(1, 8190), 0, 4}},
  };
  for (const auto& plan : plans) {
    CAPTURE(plan.size());
    auto expected =
        kvferry::check_table_extents(plan, kvferry::extent_side::source, src);
    if (!expected)
      expected = kvferry::check_table_extents(
          plan, kvferry::extent_side::destination, dst);
    CHECK(kvferry::check_table_extents(plan, src, dst) == expected);
  }
  CHECK_FALSE(kvferry::check_table_extents(plans[0], src, dst).has_value());
  CHECK(kvferry::check_table_extents(plans[5], src, dst)->find("extent #1") !=
        std::string::npos);
}

// A table of transfers in flight (the endpoint's ops, its control actor's)
// keeps the nodes of ended entries for the next ones: the same memory serves
// entry after entry, a new entry starts from a default value, and what is
// kept stays bounded.
TEST_CASE("node shelf: erased nodes serve later entries, reset, bounded") {
  using table = std::unordered_map<std::uint64_t, std::string>;
  table t;
  kvferry::node_shelf<table> shelf{2};
  shelf.emplace(t, 1) = "an entry long enough to own heap memory";
  const auto* node = &t.at(1);
  shelf.erase(t, t.find(1));
  CHECK(t.empty());
  CHECK(shelf.kept() == 1);

  auto& again = shelf.emplace(t, 2);
  CHECK(&again == node); // the same node, under its new key
  CHECK(again.empty());  // nothing of the entry it was
  CHECK(t.count(2) == 1);
  CHECK(shelf.kept() == 0);

  // A key already there keeps its entry (as try_emplace); the node stays.
  shelf.erase(t, t.find(2));
  shelf.emplace(t, 3) = "three";
  shelf.emplace(t, 4);
  shelf.erase(t, t.find(4));
  CHECK(shelf.emplace(t, 3) == "three");
  CHECK(shelf.kept() == 1);

  // Bounded: beyond max_kept an erased node is freed.
  for (std::uint64_t k = 10; k < 15; ++k)
    shelf.emplace(t, k);
  for (std::uint64_t k = 10; k < 15; ++k)
    shelf.erase(t, t.find(k));
  CHECK(shelf.kept() == 2);
  CHECK(t.size() == 1);
}
