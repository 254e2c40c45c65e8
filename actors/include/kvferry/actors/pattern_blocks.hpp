// What one fill or check of the KV test pattern covers (kv_pattern.hpp),
// in plain types only, so that the CUDA side (kv_pattern.cu) takes the same
// struct without parsing CAF's headers.
#pragma once

#include <cstdint>

namespace kvferry {

/// Block i of a call's offsets list is block `i % blocks_per_layer` of layer
/// `first_layer + i / blocks_per_layer` of request `request_id`, each
/// `block_bytes` long. `sampled`: only a 16-byte stamp per 4 KiB page of
/// each block (kv_stamp.hpp) instead of every byte.
struct pattern_blocks {
  std::uint64_t seed = 0;
  std::uint64_t request_id = 0;
  std::uint32_t first_layer = 0;
  std::uint32_t blocks_per_layer = 1;
  std::uint64_t block_bytes = 0;
  bool sampled = false;
};

} // namespace kvferry
