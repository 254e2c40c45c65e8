// Internal: the CUDA side of kv_pattern, with plain types only so that nvcc
// never parses CAF's headers. Built from kv_pattern.cu; kv_pattern.cpp has
// the stubs of a build without CUDA.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvferry/actors/pattern_blocks.hpp"

namespace kvferry::detail {

struct pattern_device;

/// A stream, a check's counters and a pinned buffer, mapped for the GPU,
/// for `max_blocks` block offsets (larger calls grow it) on `gpu`. Throws
/// transport::gpu_error.
pattern_device* pattern_device_create(int gpu, std::size_t max_blocks);
void pattern_device_destroy(pattern_device* device) noexcept;

struct pattern_launch {
  std::uint8_t* base = nullptr;           // device address of the region
  const std::uint64_t* offsets = nullptr; // host array
  std::size_t count = 0;
  pattern_blocks blocks;
};

struct pattern_outcome {
  /// Fill: UINT64_MAX. Check: the lowest mismatching block index, or
  /// UINT64_MAX when every block matches.
  std::uint64_t value = 0;
  std::int64_t gpu_ns = 0; // the kernel's GPU time
};

/// One kernel over all blocks (fill: writes the pattern; check: compares),
/// then waits for it: no copy before or after it (kv_pattern.cu says how).
/// Not thread-safe: one caller per device. Throws transport::gpu_error.
pattern_outcome pattern_device_run(pattern_device& device,
                                   const pattern_launch& launch, bool check);

} // namespace kvferry::detail
