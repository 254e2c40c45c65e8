// The stand-in model's KV content on host memory (content_formula.hpp has
// the formulas): the model step's host loop and the every-byte verifier.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "content_formula.hpp"
#include "kvferry/actors/kv_layout.hpp"

namespace example {

/// Block halves must be whole words (checked where the geometry is read).
inline bool whole_words(std::uint64_t block_bytes) {
  return block_bytes > 0 && block_bytes % 8 == 0;
}

/// The model step on host memory: writes K and V of `layer` for every
/// block of the request (bases: the cache's allocations, host memory).
void write_layer_host(const kvferry::kv_layout& layout,
                      const std::vector<void*>& bases, std::uint64_t request,
                      std::uint32_t layer,
                      const std::vector<std::uint64_t>& blocks);

/// Checks every byte of every layer of the request in host memory. Returns
/// "" when all match, else the first mismatch: "request 7 layer 2 V block
/// #3 (id 41) word 17: 0x... != expected 0x...".
std::string verify_request_host(const kvferry::kv_layout& layout,
                                const std::vector<void*>& bases,
                                std::uint64_t request,
                                const std::vector<std::uint64_t>& blocks);

} // namespace example
