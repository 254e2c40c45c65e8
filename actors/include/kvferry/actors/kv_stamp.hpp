// Sampled verification of the KV test pattern (`kvferry demo --verify
// sampled`): instead of a pattern over every byte, a "prefill" writes one
// 16-byte stamp into each 4 KiB page of every block, and the consumer reads
// only those stamps back. A stamp names what the page holds (request, layer,
// K or V, block, page), so a page that lands in the wrong place, or is not
// copied at all (stale bytes of an earlier request), shows a wrong stamp.
// Where in its page the stamp sits rotates with the request and differs from
// page to page, so over successive requests every 16-byte slot of every
// page gets written and checked: a copy that moves only part of each page
// is caught as soon as a stamp falls into the part it skips.
//
// The one definition of the stamp's layout and position, for the host
// (kv_pattern.cpp) and the GPU (kv_pattern.cu): plain types, inline
// functions callable from both.
#pragma once

#include <cstdint>

#include "kvferry/actors/pattern_blocks.hpp"
#include "kvferry/transport/host_device.hpp"

namespace kvferry::stamp {

inline constexpr std::uint64_t page_bytes = 4096;
inline constexpr std::uint64_t stamp_bytes = 16;

struct value {
  std::uint64_t lo = 0; // the request, masked by the seed
  std::uint64_t hi = 0; // layer, K or V, block, page, masked by the seed
};

// splitmix64: turns the seed into the masks, so that zeroed memory (or a
// run with another seed) never reads as a valid stamp.
KVFERRY_HOST_DEVICE inline std::uint64_t mix(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/// Pages of a block that carry a stamp: every 4 KiB page, the last one too
/// when it has room for one.
KVFERRY_HOST_DEVICE inline std::uint64_t pages(std::uint64_t block_bytes) {
  auto whole = block_bytes / page_bytes;
  return whole + (block_bytes % page_bytes >= stamp_bytes ? 1 : 0);
}

/// The stamp of page `page` of block `block` of layer `layer` of request
/// `request`. A layer-block holds K then V (kv_geometry::layer_block_bytes):
/// a page starting in the second half is V's.
KVFERRY_HOST_DEVICE inline value of(std::uint64_t seed, std::uint64_t request,
                                    std::uint32_t layer, std::uint32_t block,
                                    std::uint64_t page,
                                    std::uint64_t block_bytes) {
  const std::uint64_t v = page * page_bytes >= block_bytes / 2 ? 1 : 0;
  // 20 bits of layer, 1 of K/V, 27 of block, 16 of page: wider values wrap,
  // and the request (the other word) still tells requests apart.
  const std::uint64_t l = std::uint64_t{layer} & 0xFFFFF;
  const std::uint64_t b = std::uint64_t{block} & 0x7FFFFFF;
  const std::uint64_t where = l << 44 | v << 43 | b << 16 | (page & 0xFFFF);
  return {request ^ mix(seed), where ^ mix(seed ^ 0x5354414D50ull)};
}

/// Offset of that stamp inside its block: 16-byte slot k of the page, k =
/// (request x an odd step + a hash of the page's coordinates) mod the slots
/// of the page. With 256 slots (a whole page) and the odd step, 256
/// successive requests put the stamp of one (layer, block, page) in each
/// slot once.
KVFERRY_HOST_DEVICE inline std::uint64_t
offset(std::uint64_t request, std::uint32_t layer, std::uint32_t block,
       std::uint64_t page, std::uint64_t block_bytes) {
  const std::uint64_t start = page * page_bytes;
  const std::uint64_t room = block_bytes - start;
  const std::uint64_t slots =
      (room < page_bytes ? room : page_bytes) / stamp_bytes;
  const std::uint64_t spread =
      mix((std::uint64_t{layer} << 40) ^ (std::uint64_t{block} << 16) ^ page);
  return start + ((request * 167 + spread) % slots) * stamp_bytes;
}

/// Where block i of a call (pattern_blocks) belongs.
KVFERRY_HOST_DEVICE inline std::uint32_t layer_of(const pattern_blocks& b,
                                                  std::uint64_t i) {
  return b.first_layer + static_cast<std::uint32_t>(i / b.blocks_per_layer);
}
KVFERRY_HOST_DEVICE inline std::uint32_t block_of(const pattern_blocks& b,
                                                  std::uint64_t i) {
  return static_cast<std::uint32_t>(i % b.blocks_per_layer);
}

} // namespace kvferry::stamp
