// A KV cache in host memory for kvferry::node tests: one allocation per
// region of a kv_layout, filled with a seeded pattern (a prefill's) or a
// sentinel (a decode's), and the oracle that says what a decode cache must
// hold after blocks moved into it (a byte-by-byte reference copy).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "kvferry/node.hpp"

namespace kvferry::test {

constexpr std::uint8_t node_sentinel = 0xa5;

struct host_cache {
  kv_layout layout;
  std::vector<std::vector<std::uint8_t>> regions;

  /// `seed` 0: every byte the sentinel; else a pattern of the seed.
  host_cache(kv_layout l, std::uint64_t seed) : layout(std::move(l)) {
    for (std::size_t r = 0; r < layout.region_count(); ++r) {
      std::vector<std::uint8_t> bytes(layout.region_bytes(), node_sentinel);
      if (seed != 0)
        for (std::size_t i = 0; i < bytes.size(); ++i)
          bytes[i] =
              static_cast<std::uint8_t>(i * 131 + r * 71 + seed * 17 + i / 251);
      regions.push_back(std::move(bytes));
    }
  }

  kv_cache cache() {
    kv_cache c;
    c.layout = layout;
    for (auto& r : regions)
      c.bases.push_back(r.data());
    return c;
  }

  /// What this cache holds after src_blocks[i] of `src` (all layers, or
  /// `layers` only) landed in dst_blocks[i] here, from `before`.
  std::vector<std::vector<std::uint8_t>>
  expected(const std::vector<std::vector<std::uint8_t>>& before,
           const host_cache& src, const std::vector<std::uint64_t>& src_blocks,
           const std::vector<std::uint64_t>& dst_blocks) const {
    auto out = before;
    for (std::size_t i = 0; i < src_blocks.size(); ++i)
      for (std::uint32_t l = 0; l < layout.layers(); ++l)
        for (auto h : {kv_half::k, kv_half::v}) {
          auto from = src.layout.locate(l, h, src_blocks[i]);
          auto to = layout.locate(l, h, dst_blocks[i]);
          std::memcpy(out[to.region].data() + to.offset,
                      src.regions[from.region].data() + from.offset, to.bytes);
        }
    return out;
  }
};

} // namespace kvferry::test
