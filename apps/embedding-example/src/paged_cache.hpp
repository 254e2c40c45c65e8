// The serving stack's own paged KV cache: `layers` allocations in vLLM's
// per-layer layout ([2, num_blocks, block_tokens, kv_heads, head_dim]), in
// GPU memory when the stack runs on a GPU, else in host memory, and a block
// manager handing out block ids. kvferry registers these allocations in
// place (kvferry::kv_cache); it never owns or copies them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "gpu.hpp"
#include "kvferry/actors/kv_layout.hpp"

namespace example {

/// The model's KV shape: what both servers must agree on.
struct kv_geometry {
  std::uint32_t layers = 8;
  std::uint64_t blocks = 2048;     // blocks per layer (the cache's size)
  std::uint32_t block_tokens = 16; // tokens per block
  std::uint64_t token_bytes = 512; // one token of one layer's K (or V)
  std::uint64_t block_bytes() const { return block_tokens * token_bytes; }
  std::uint64_t blocks_for(std::uint64_t tokens) const {
    return (tokens + block_tokens - 1) / block_tokens;
  }
  /// "8 layers x 2048 blocks x 16 tokens x 512 B" (for errors and reports).
  std::string describe() const;
};

/// The cache's memory: one allocation per layer, freed on destruction.
class paged_cache {
public:
  /// gpu -1: host memory; else cudaMalloc on that device (throws
  /// std::runtime_error naming the call and device when CUDA fails, or
  /// when this build has no CUDA).
  paged_cache(const kv_geometry& geometry, int gpu);
  ~paged_cache();
  paged_cache(const paged_cache&) = delete;
  paged_cache& operator=(const paged_cache&) = delete;

  const kvferry::kv_layout& layout() const { return layout_; }
  const std::vector<void*>& bases() const { return bases_; }
  int gpu() const { return gpu_; }
  std::uint64_t bytes() const {
    return layout_.region_bytes() * layout_.region_count();
  }
  /// Where each layer's blocks are, for the GPU kernels (gpu.hpp).
  gpu_cache_view view() const;

private:
  void free_all() noexcept;
  kvferry::kv_layout layout_;
  std::vector<void*> bases_;
  int gpu_;
};

/// Block ids of one cache: a free list, all-or-nothing allocation. Not
/// thread-safe (the scheduler owns it).
class block_manager {
public:
  explicit block_manager(std::uint64_t blocks);
  /// `count` free blocks, or nothing (and no change) when fewer are free.
  std::optional<std::vector<std::uint64_t>> allocate(std::uint64_t count);
  /// Returns blocks to the free list. Throws std::logic_error naming the
  /// block when one is out of range or already free (a double free would
  /// hand one block to two requests).
  void release(const std::vector<std::uint64_t>& ids);
  std::uint64_t free_blocks() const { return free_.size(); }
  std::uint64_t total_blocks() const { return in_use_.size(); }

private:
  std::vector<std::uint64_t> free_; // popped from the back
  std::vector<bool> in_use_;
};

} // namespace example
