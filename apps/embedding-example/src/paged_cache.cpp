#include "paged_cache.hpp"

#include <algorithm>
#include <cstdlib>
#include <stdexcept>

#include "gpu.hpp"

namespace example {

std::string kv_geometry::describe() const {
  return std::to_string(layers) + " layers x " + std::to_string(blocks) +
         " blocks x " + std::to_string(block_tokens) + " tokens x " +
         std::to_string(token_bytes) + " B";
}

paged_cache::paged_cache(const kv_geometry& g, int gpu)
    : layout_(kvferry::kv_layout::vllm_per_layer(g.layers, g.blocks,
                                                 g.block_bytes())),
      gpu_(gpu) {
  const auto bytes = layout_.region_bytes();
  for (std::size_t l = 0; l < layout_.region_count(); ++l) {
    void* p = gpu < 0 ? std::calloc(1, bytes) : gpu_alloc(gpu, bytes);
    if (p == nullptr) {
      free_all();
      throw std::runtime_error("paged cache: cannot allocate layer " +
                               std::to_string(l) + " (" +
                               std::to_string(bytes) + " bytes)");
    }
    bases_.push_back(p);
  }
}

paged_cache::~paged_cache() {
  free_all();
}

void paged_cache::free_all() noexcept {
  for (void* p : bases_)
    gpu_ < 0 ? std::free(p) : gpu_free(gpu_, p);
  bases_.clear();
}

gpu_cache_view paged_cache::view() const {
  gpu_cache_view v;
  for (std::uint32_t l = 0; l < layout_.layers(); ++l) {
    const auto at = layout_.locate(l, kvferry::kv_half::k, 0);
    v.layer_base.push_back(static_cast<char*>(bases_[at.region]) + at.offset);
  }
  v.kv_stride = layout_.kv_stride();
  v.block_stride = layout_.block_stride();
  v.block_bytes = layout_.block_bytes();
  return v;
}

block_manager::block_manager(std::uint64_t blocks) : in_use_(blocks, false) {
  free_.reserve(blocks);
  for (std::uint64_t b = blocks; b-- > 0;) // block 0 is handed out first
    free_.push_back(b);
}

std::optional<std::vector<std::uint64_t>>
block_manager::allocate(std::uint64_t count) {
  if (count > free_.size())
    return std::nullopt;
  std::vector<std::uint64_t> ids(free_.end() - count, free_.end());
  free_.resize(free_.size() - count);
  std::reverse(ids.begin(), ids.end());
  for (auto b : ids)
    in_use_[b] = true;
  return ids;
}

void block_manager::release(const std::vector<std::uint64_t>& ids) {
  for (auto b : ids) // all checked first: a bad list changes nothing
    if (b >= in_use_.size() || !in_use_[b])
      throw std::logic_error(
          "block manager: block " + std::to_string(b) +
          (b >= in_use_.size() ? " released, but the cache has " +
                                     std::to_string(in_use_.size()) + " blocks"
                               : " released while free (a double free)"));
  auto sorted = ids;
  std::sort(sorted.begin(), sorted.end());
  auto twice = std::adjacent_find(sorted.begin(), sorted.end());
  if (twice != sorted.end())
    throw std::logic_error("block manager: block " + std::to_string(*twice) +
                           " is twice in one release");
  for (auto b : ids) {
    in_use_[b] = false;
    free_.push_back(b);
  }
}

} // namespace example
