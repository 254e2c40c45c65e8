// kv_layout and plan_kv (issue #15): every pair of layouts, random block
// lists, all layers and one layer. The oracle is independent of plan_kv: a
// byte-by-byte copy of each (layer, half, block) from where locate() says it
// is, using the tensor shapes written out here, not plan_kv's strides.
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <stdexcept>

#include <doctest/doctest.h>

#include "kvferry/actors/kv_layout.hpp"

using namespace kvferry;

namespace {

constexpr std::uint32_t layers = 3;
constexpr std::uint64_t blocks = 12;
constexpr std::uint64_t block_bytes = 48;

// The caller's allocations for one layout, as a region table.
using table = std::vector<std::vector<std::uint8_t>>;

table allocate(const kv_layout& l, std::uint8_t fill) {
  return table(l.region_count(),
               std::vector<std::uint8_t>(l.region_bytes(), fill));
}

// The byte offset of element (layer, half, block) in each layout, written
// from its tensor shape (the reference, independent of kv_layout's strides).
struct shape {
  const char* name;
  std::function<kv_layout()> make;
  std::function<kv_location(std::uint32_t, int, std::uint64_t)> where;
};

std::vector<shape> shapes() {
  const auto bb = block_bytes;
  return {
      {"vllm_per_layer [2, blocks, ...] per layer",
       [] { return kv_layout::vllm_per_layer(layers, blocks, block_bytes); },
       [bb](std::uint32_t l, int h, std::uint64_t b) {
         return kv_location{l, (h * blocks + b) * bb, bb};
       }},
      {"per_layer_block_first [blocks, 2, ...] per layer",
       [] {
         return kv_layout::per_layer_block_first(layers, blocks, block_bytes);
       },
       [bb](std::uint32_t l, int h, std::uint64_t b) {
         return kv_location{l, (b * 2 + h) * bb, bb};
       }},
      {"block_major [blocks, layers, 2, ...]",
       [] { return kv_layout::block_major(layers, blocks, block_bytes); },
       [bb](std::uint32_t l, int h, std::uint64_t b) {
         return kv_location{0, ((b * layers + l) * 2 + h) * bb, bb};
       }},
      {"layer_major [layers, 2, blocks, ...]",
       [] { return kv_layout::layer_major(layers, blocks, block_bytes); },
       [bb](std::uint32_t l, int h, std::uint64_t b) {
         return kv_location{0, ((l * 2 + h) * blocks + b) * bb, bb};
       }},
  };
}

void apply(const std::vector<extent>& plan, const table& src, table& dst) {
  for (const auto& e : plan) {
    auto s = locate(e.src_offset), d = locate(e.dst_offset);
    REQUIRE(s.region < src.size());
    REQUIRE(d.region < dst.size());
    REQUIRE(s.offset + e.length <= src[s.region].size());
    REQUIRE(d.offset + e.length <= dst[d.region].size());
    std::memcpy(dst[d.region].data() + d.offset,
                src[s.region].data() + s.offset, e.length);
  }
}

void reference_copy(const shape& from, const table& src,
                    const std::vector<std::uint64_t>& src_blocks,
                    const shape& to, table& dst,
                    const std::vector<std::uint64_t>& dst_blocks,
                    std::uint32_t first_layer, std::uint32_t end_layer) {
  for (std::uint32_t l = first_layer; l < end_layer; ++l)
    for (int h = 0; h < 2; ++h)
      for (std::size_t i = 0; i < src_blocks.size(); ++i) {
        auto s = from.where(l, h, src_blocks[i]);
        auto d = to.where(l, h, dst_blocks[i]);
        for (std::uint64_t k = 0; k < block_bytes; ++k)
          dst[d.region][d.offset + k] = src[s.region][s.offset + k];
      }
}

std::vector<std::uint64_t> pick(std::mt19937_64& rng, std::size_t n) {
  std::vector<std::uint64_t> all(blocks);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(n);
  return all;
}

} // namespace

TEST_CASE("every layout locates each block half where its tensor shape "
          "puts it, and its regions hold exactly the cache") {
  for (const auto& s : shapes()) {
    CAPTURE(s.name);
    auto l = s.make();
    CHECK(l.region_bytes() * l.region_count() ==
          std::uint64_t{layers} * 2 * blocks * block_bytes);
    for (std::uint32_t layer = 0; layer < layers; ++layer)
      for (int h = 0; h < 2; ++h)
        for (std::uint64_t b = 0; b < blocks; ++b) {
          auto got = l.locate(layer, static_cast<kv_half>(h), b);
          auto want = s.where(layer, h, b);
          CHECK(got.region == want.region);
          CHECK(got.offset == want.offset);
          CHECK(got.bytes == block_bytes);
        }
  }
}

TEST_CASE("plan_kv between every pair of layouts moves exactly the blocks "
          "asked, all layers or one") {
  std::mt19937_64 rng{15};
  for (const auto& from : shapes())
    for (const auto& to : shapes())
      for (int trial = 0; trial < 4; ++trial) {
        CAPTURE(from.name);
        CAPTURE(to.name);
        CAPTURE(trial);
        auto src_layout = from.make(), dst_layout = to.make();
        auto src = allocate(src_layout, 0);
        for (auto& r : src)
          for (auto& b : r)
            b = static_cast<std::uint8_t>(rng());
        const auto n = 1 + rng() % blocks;
        // Trial 0: consecutive blocks on both sides (coalescing matters).
        std::vector<std::uint64_t> sb(n), db(n);
        if (trial == 0) {
          std::iota(sb.begin(), sb.end(), 0);
          std::iota(db.begin(), db.end(), blocks - n);
        } else {
          sb = pick(rng, n);
          db = pick(rng, n);
        }
        std::optional<std::uint32_t> one_layer;
        if (trial == 3)
          one_layer = static_cast<std::uint32_t>(rng() % layers);
        auto dst = allocate(dst_layout, 0xee), want = dst;
        auto plan = plan_kv(src_layout, sb, dst_layout, db, one_layer);
        apply(plan, src, dst);
        reference_copy(from, src, sb, to, want, db, one_layer ? *one_layer : 0,
                       one_layer ? *one_layer + 1 : layers);
        CHECK(dst == want);
        CHECK(total_bytes(plan) ==
              n * 2 * block_bytes * (one_layer ? 1 : layers));
        CHECK(plan == coalesce(plan)); // nothing left to merge in order
      }
}

TEST_CASE("consecutive blocks coalesce into one extent per contiguous run") {
  std::vector<std::uint64_t> first(8), later(8);
  std::iota(first.begin(), first.end(), 0);
  std::iota(later.begin(), later.end(), 4);
  auto vllm = kv_layout::vllm_per_layer(layers, blocks, block_bytes);
  // Per layer and half, one run of 8 blocks.
  CHECK(plan_kv(vllm, first, vllm, later).size() == layers * 2);
  CHECK(plan_kv(vllm, first, vllm, later, 1).size() == 2);
  // Block-major: a block's whole KV and its neighbours are one run.
  auto bm = kv_layout::block_major(layers, blocks, block_bytes);
  CHECK(plan_kv(bm, first, bm, later).size() == 1);
  auto fi = kv_layout::per_layer_block_first(layers, blocks, block_bytes);
  CHECK(plan_kv(fi, first, fi, later).size() == layers);
}

TEST_CASE("plan_kv refuses what it cannot plan, naming it") {
  auto l = kv_layout::vllm_per_layer(layers, blocks, block_bytes);
  CHECK_THROWS_WITH_AS(plan_kv(l, {1, 2}, l, {3}),
                       "plan_kv: 2 source blocks but 1 destination blocks",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(plan_kv(l, {1, 12}, l, {3, 4}),
                       "plan_kv: source block #1 is block 12, but the source "
                       "layout 'vllm_per_layer' has 12 blocks",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(plan_kv(l, {1}, l, {2}, layers),
                       "plan_kv: layer 3 of a KV cache of 3 layers",
                       std::invalid_argument);
  auto other = kv_layout::block_major(layers, blocks, block_bytes * 2);
  CHECK_THROWS_AS(plan_kv(l, {1}, other, {1}), std::invalid_argument);
  CHECK_THROWS_WITH_AS(
      kv_layout::strided(2, 4, 64, false, 64, 64, 128, "overlapping"),
      doctest::Contains("kv layout 'overlapping'"), std::invalid_argument);
  CHECK_THROWS_AS(kv_layout::vllm_per_layer(0, 4, 64), std::invalid_argument);
}
