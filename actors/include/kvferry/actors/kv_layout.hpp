// Where a serving stack's KV cache keeps each block (issue #15): pure C++,
// no actors, unit-tested against a byte-by-byte reference copy.
//
// A KV cache has `layers` layers; each layer has a K and a V half; each half
// has `num_blocks` blocks of `block_bytes` (block_tokens x kv_heads x
// head_dim x dtype size). A kv_layout maps (layer, K or V, block id) to
// (region, offset, bytes) over the caller's allocations, registered as a
// transfer actor's region table (plan.hpp: region i at virtual offset
// i << 40). Every layout is strided: offset = layer * layer_stride + kv *
// kv_stride + block * block_stride inside region (layer if region_per_layer,
// else 0). The named ones:
//   - vllm_per_layer: one allocation per layer, [2, num_blocks, block_tokens,
//     kv_heads, head_dim] (vLLM's FlashAttention backend);
//   - per_layer_block_first: one allocation per layer, [num_blocks, 2, ...]
//     (vLLM's FlashInfer backend: K and V of a block side by side);
//   - block_major: one allocation, [num_blocks, layers, 2, ...] (a block's
//     whole KV contiguous, as LMCache and Mooncake store it);
//   - layer_major: one allocation, [layers, 2, num_blocks, ...].
// plan_kv() turns (source layout, source block ids) -> (destination layout,
// destination block ids) into the coalesced extent list a send order takes,
// for all layers or one (layer-by-layer streaming).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kvferry/actors/plan.hpp"

namespace kvferry {

enum class kv_half : std::uint8_t { k = 0, v = 1 };

/// One block half of one layer: its region in the table, its offset in that
/// region, its size.
struct kv_location {
  std::size_t region = 0;
  std::uint64_t offset = 0;
  std::uint64_t bytes = 0;
};

class kv_layout {
public:
  /// An empty layout (no layers), to assign one of the named ones to
  /// (kvferry::node refuses it).
  kv_layout() = default;
  static kv_layout vllm_per_layer(std::uint32_t layers,
                                  std::uint64_t num_blocks,
                                  std::uint64_t block_bytes);
  static kv_layout per_layer_block_first(std::uint32_t layers,
                                         std::uint64_t num_blocks,
                                         std::uint64_t block_bytes);
  static kv_layout block_major(std::uint32_t layers, std::uint64_t num_blocks,
                               std::uint64_t block_bytes);
  static kv_layout layer_major(std::uint32_t layers, std::uint64_t num_blocks,
                               std::uint64_t block_bytes);
  /// Any other strided layout. Throws std::invalid_argument when a block
  /// half would overlap another or a region reaches max_region_bytes.
  static kv_layout strided(std::uint32_t layers, std::uint64_t num_blocks,
                           std::uint64_t block_bytes, bool region_per_layer,
                           std::uint64_t layer_stride, std::uint64_t kv_stride,
                           std::uint64_t block_stride, std::string name);

  std::uint32_t layers() const { return layers_; }
  std::uint64_t num_blocks() const { return num_blocks_; }
  std::uint64_t block_bytes() const { return block_bytes_; }
  const std::string& name() const { return name_; }
  /// How many regions the table holds (layers, or 1).
  std::size_t region_count() const { return region_per_layer_ ? layers_ : 1; }
  /// The bytes each region must have at least (what register checks).
  std::uint64_t region_bytes() const { return region_bytes_; }

  /// Where (layer, half, block) lives; no bounds check (see check_block).
  kv_location locate(std::uint32_t layer, kv_half half,
                     std::uint64_t block) const {
    return {region_per_layer_ ? layer : 0,
            (region_per_layer_ ? 0 : layer * layer_stride_) +
                static_cast<std::uint64_t>(half) * kv_stride_ +
                block * block_stride_,
            block_bytes_};
  }
  /// The same as a virtual offset of the region table.
  std::uint64_t table_offset_of(std::uint32_t layer, kv_half half,
                                std::uint64_t block) const {
    const auto at = locate(layer, half, block);
    return table_offset(at.region, at.offset);
  }

  /// The strides (bytes) of layer, half and block inside a region; layer's
  /// is 0 with region_per_layer.
  std::uint64_t layer_stride() const { return layer_stride_; }
  std::uint64_t kv_stride() const { return kv_stride_; }
  std::uint64_t block_stride() const { return block_stride_; }
  bool region_per_layer() const { return region_per_layer_; }

private:
  std::uint32_t layers_ = 0;
  std::uint64_t num_blocks_ = 0;
  std::uint64_t block_bytes_ = 0;
  bool region_per_layer_ = false;
  std::uint64_t layer_stride_ = 0;
  std::uint64_t kv_stride_ = 0;
  std::uint64_t block_stride_ = 0;
  std::uint64_t region_bytes_ = 0;
  std::string name_;
};

/// The extents that copy block src_blocks[i] of `src` to block dst_blocks[i]
/// of `dst`, K and V, for every layer or only `layer`, coalesced (in virtual
/// table offsets of each side). Appends to `out` (callers reuse it; nothing
/// else is allocated). Throws std::invalid_argument naming the problem: list
/// sizes that differ, a block id past a layout's num_blocks, layers or block
/// sizes that differ, a layer out of range.
void plan_kv(const kv_layout& src, const std::vector<std::uint64_t>& src_blocks,
             const kv_layout& dst, const std::vector<std::uint64_t>& dst_blocks,
             std::optional<std::uint32_t> layer, std::vector<extent>& out);

/// The same, returning a new list.
std::vector<extent> plan_kv(const kv_layout& src,
                            const std::vector<std::uint64_t>& src_blocks,
                            const kv_layout& dst,
                            const std::vector<std::uint64_t>& dst_blocks,
                            std::optional<std::uint32_t> layer = std::nullopt);

} // namespace kvferry
