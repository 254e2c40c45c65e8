// The deterministic KV pattern a "prefill" writes and a consumer verifies,
// on either kind of memory: host regions use fill_pattern (below) on
// the CPU; cuda regions run one kernel per call over all the blocks it
// covers and compare on the GPU too (only a mismatch index comes back, never
// the data). With `pattern_blocks::sampled` a fill writes, and a check
// reads, only the 16-byte stamps of kv_stamp.hpp (one per 4 KiB page), on
// the CPU or in a kernel alike. One instance per app actor; used from one
// actor at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "kvferry/actors/memory_region.hpp"
#include "kvferry/actors/pattern_blocks.hpp"

namespace kvferry {

namespace detail {
struct pattern_device; // stream and reused buffers of the CUDA path
struct pattern_device_deleter {
  void operator()(pattern_device* device) const noexcept;
};
} // namespace detail

class kv_pattern {
public:
  explicit kv_pattern(std::shared_ptr<memory_region> region);
  ~kv_pattern();
  kv_pattern(const kv_pattern&) = delete;
  kv_pattern& operator=(const kv_pattern&) = delete;

  /// Writes the pattern into every block (done when this returns). Throws
  /// std::out_of_range naming the block when one lies outside the region,
  /// transport::gpu_error when a CUDA call fails.
  void fill(const std::vector<std::uint64_t>& offsets,
            const pattern_blocks& blocks);
  /// fill, then the hash_blocks of the same blocks where the CPU can read
  /// them (host memory; nothing on a GPU, nor when sampled). On the CPU each
  /// block is hashed right after it is written, while it is still in cache: one
  /// pass over memory instead of two.
  std::optional<std::uint64_t>
  fill_and_hash(const std::vector<std::uint64_t>& offsets,
                const pattern_blocks& blocks);
  /// Index (into `offsets`) of the first block whose bytes (sampled: whose
  /// stamps) differ from the pattern, or nothing when all match. Same
  /// errors as fill.
  std::optional<std::size_t> check(const std::vector<std::uint64_t>& offsets,
                                   const pattern_blocks& blocks);
  /// On a GPU: makes the stream and buffers now, for calls of up to
  /// `max_blocks` blocks, so that no call allocates (a buffer grown during a
  /// run frees the old one, and cudaFree waits for the whole GPU). Nothing
  /// on the CPU. Throws transport::gpu_error.
  void prepare(std::size_t max_blocks);
  /// The GPU time of the last fill or check's kernel (ns); 0 on the CPU.
  std::int64_t last_gpu_ns() const { return last_gpu_ns_; }

private:
  void check_bounds(const std::vector<std::uint64_t>& offsets,
                    const pattern_blocks& blocks) const;
  std::shared_ptr<memory_region> region_;
  std::vector<std::uint8_t> host_scratch_; // one block, for host checks
  void ensure_device(std::size_t max_blocks);
  std::unique_ptr<detail::pattern_device, detail::pattern_device_deleter>
      device_; // made by prepare, else on first use
  std::int64_t last_gpu_ns_ = 0;
};

/// The byte pattern block `block` of layer `layer` of a request gets from its
/// "prefill": deterministic in (seed, request, layer, block), cheap to write.
void fill_pattern(std::uint8_t* data, std::uint64_t bytes, std::uint64_t seed,
                  std::uint64_t request_id, std::uint32_t layer,
                  std::uint32_t block);

/// XXH3-64 of the blocks at `offsets` (each `block_bytes`), in that order.
std::uint64_t hash_blocks(const std::uint8_t* base,
                          const std::vector<std::uint64_t>& offsets,
                          std::uint64_t block_bytes);

} // namespace kvferry
