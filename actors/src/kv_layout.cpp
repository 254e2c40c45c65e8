#include "kvferry/actors/kv_layout.hpp"

#include <algorithm>
#include <array>
#include <stdexcept>

#include <fmt/format.h>

namespace kvferry {

namespace {

// One dimension of a layout inside a region: how many, how far apart.
struct dim {
  std::uint64_t count;
  std::uint64_t stride;
};

// Dimensions sorted by stride; each must clear the previous one's span so
// that no two block halves share a byte.
void require_disjoint(std::vector<dim> dims, std::uint64_t block_bytes,
                      const std::string& name) {
  dims.erase(std::remove_if(dims.begin(), dims.end(),
                            [](const dim& d) { return d.count <= 1; }),
             dims.end());
  std::sort(dims.begin(), dims.end(),
            [](const dim& a, const dim& b) { return a.stride < b.stride; });
  std::uint64_t span = block_bytes; // bytes one step of the next dim must clear
  for (const auto& d : dims) {
    if (d.stride < span)
      throw std::invalid_argument(fmt::format(
          "kv layout '{}': a stride of {} bytes is less than the {} bytes "
          "below it (block halves would overlap)",
          name, d.stride, span));
    span = d.stride * d.count;
  }
}

} // namespace

kv_layout kv_layout::strided(std::uint32_t layers, std::uint64_t num_blocks,
                             std::uint64_t block_bytes, bool region_per_layer,
                             std::uint64_t layer_stride,
                             std::uint64_t kv_stride,
                             std::uint64_t block_stride, std::string name) {
  if (layers == 0 || num_blocks == 0 || block_bytes == 0)
    throw std::invalid_argument(fmt::format(
        "kv layout '{}': {} layers, {} blocks of {} bytes (each must be "
        "positive)",
        name, layers, num_blocks, block_bytes));
  std::vector<dim> dims{{2, kv_stride}, {num_blocks, block_stride}};
  if (!region_per_layer)
    dims.push_back({layers, layer_stride});
  require_disjoint(dims, block_bytes, name);
  kv_layout l;
  l.layers_ = layers;
  l.num_blocks_ = num_blocks;
  l.block_bytes_ = block_bytes;
  l.region_per_layer_ = region_per_layer;
  l.layer_stride_ = region_per_layer ? 0 : layer_stride;
  l.kv_stride_ = kv_stride;
  l.block_stride_ = block_stride;
  l.region_bytes_ = block_bytes;
  for (const auto& d : dims) // the last byte of the last block half
    l.region_bytes_ += (d.count - 1) * d.stride;
  if (l.region_bytes_ >= max_region_bytes)
    throw std::invalid_argument(fmt::format(
        "kv layout '{}': a region of {} bytes (a region of a table must be "
        "smaller than 2^{})",
        name, l.region_bytes_, region_shift));
  l.name_ = std::move(name);
  return l;
}

kv_layout kv_layout::vllm_per_layer(std::uint32_t layers,
                                    std::uint64_t num_blocks,
                                    std::uint64_t block_bytes) {
  return strided(layers, num_blocks, block_bytes, true, 0,
                 num_blocks * block_bytes, block_bytes, "vllm_per_layer");
}

kv_layout kv_layout::per_layer_block_first(std::uint32_t layers,
                                           std::uint64_t num_blocks,
                                           std::uint64_t block_bytes) {
  return strided(layers, num_blocks, block_bytes, true, 0, block_bytes,
                 2 * block_bytes, "per_layer_block_first");
}

kv_layout kv_layout::block_major(std::uint32_t layers, std::uint64_t num_blocks,
                                 std::uint64_t block_bytes) {
  return strided(layers, num_blocks, block_bytes, false, 2 * block_bytes,
                 block_bytes, 2 * std::uint64_t{layers} * block_bytes,
                 "block_major");
}

kv_layout kv_layout::layer_major(std::uint32_t layers, std::uint64_t num_blocks,
                                 std::uint64_t block_bytes) {
  return strided(layers, num_blocks, block_bytes, false,
                 2 * num_blocks * block_bytes, num_blocks * block_bytes,
                 block_bytes, "layer_major");
}

namespace {

void check_blocks(const kv_layout& l, const std::vector<std::uint64_t>& blocks,
                  const char* side) {
  for (std::size_t i = 0; i < blocks.size(); ++i)
    if (blocks[i] >= l.num_blocks())
      throw std::invalid_argument(fmt::format(
          "plan_kv: {} block #{} is block {}, but the {} layout '{}' has {} "
          "blocks",
          side, i, blocks[i], side, l.name(), l.num_blocks()));
}

void check_plan(const kv_layout& src,
                const std::vector<std::uint64_t>& src_blocks,
                const kv_layout& dst,
                const std::vector<std::uint64_t>& dst_blocks,
                std::optional<std::uint32_t> layer) {
  if (src_blocks.size() != dst_blocks.size())
    throw std::invalid_argument(
        fmt::format("plan_kv: {} source blocks but {} destination blocks",
                    src_blocks.size(), dst_blocks.size()));
  if (src.layers() != dst.layers() || src.block_bytes() != dst.block_bytes())
    throw std::invalid_argument(fmt::format(
        "plan_kv: the source layout '{}' has {} layers of {}-byte block "
        "halves, the destination '{}' {} of {}",
        src.name(), src.layers(), src.block_bytes(), dst.name(), dst.layers(),
        dst.block_bytes()));
  if (layer && *layer >= src.layers())
    throw std::invalid_argument(fmt::format(
        "plan_kv: layer {} of a KV cache of {} layers", *layer, src.layers()));
  check_blocks(src, src_blocks, "source");
  check_blocks(dst, dst_blocks, "destination");
}

// The loop order that walks the source in memory order (outermost first),
// so that runs of consecutive blocks coalesce: 0 = layer, 1 = half,
// 2 = block. Layer is outermost when each layer is its own region.
std::array<int, 3> walk_order(const kv_layout& l) {
  std::array<std::uint64_t, 3> stride{l.region_per_layer() ? ~std::uint64_t{0}
                                                           : l.layer_stride(),
                                      l.kv_stride(), l.block_stride()};
  std::array<int, 3> order{0, 1, 2};
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return stride[a] > stride[b]; });
  return order;
}

// Appends e, merged into the last extent when both sides continue it.
inline void append(std::vector<extent>& out, const extent& e) {
  if (!out.empty()) {
    auto& last = out.back();
    if (last.src_offset + last.length == e.src_offset &&
        last.dst_offset + last.length == e.dst_offset) {
      last.length += e.length;
      return;
    }
  }
  out.push_back(e);
}

} // namespace

void plan_kv(const kv_layout& src, const std::vector<std::uint64_t>& src_blocks,
             const kv_layout& dst, const std::vector<std::uint64_t>& dst_blocks,
             std::optional<std::uint32_t> layer, std::vector<extent>& out) {
  check_plan(src, src_blocks, dst, dst_blocks, layer);
  const std::uint64_t first_layer = layer ? *layer : 0;
  const std::uint64_t layer_end = layer ? *layer + 1 : src.layers();
  const std::array<std::uint64_t, 3> begin{first_layer, 0, 0};
  const std::array<std::uint64_t, 3> end{layer_end, 2, src_blocks.size()};
  const auto order = walk_order(src);
  const auto bytes = src.block_bytes();
  std::array<std::uint64_t, 3> at{};
  for (at[order[0]] = begin[order[0]]; at[order[0]] < end[order[0]];
       ++at[order[0]])
    for (at[order[1]] = begin[order[1]]; at[order[1]] < end[order[1]];
         ++at[order[1]])
      for (at[order[2]] = begin[order[2]]; at[order[2]] < end[order[2]];
           ++at[order[2]]) {
        const auto l = static_cast<std::uint32_t>(at[0]);
        const auto h = static_cast<kv_half>(at[1]);
        append(out, {src.table_offset_of(l, h, src_blocks[at[2]]),
                     dst.table_offset_of(l, h, dst_blocks[at[2]]), bytes});
      }
}

std::vector<extent> plan_kv(const kv_layout& src,
                            const std::vector<std::uint64_t>& src_blocks,
                            const kv_layout& dst,
                            const std::vector<std::uint64_t>& dst_blocks,
                            std::optional<std::uint32_t> layer) {
  std::vector<extent> out;
  plan_kv(src, src_blocks, dst, dst_blocks, layer, out);
  return out;
}

} // namespace kvferry
