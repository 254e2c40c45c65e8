// The stand-in model's KV content, as formulas: every 8-byte word of a
// block half is a function of (request id, layer, the block's index in the
// request, K or V, the word's index), so the decode side can check every
// byte it received without being told what was sent, whatever block ids
// either side used. Plain inline functions (no kvferry, no CAF headers) so
// that the CUDA kernels (gpu_model.cu) compute exactly what the host loops
// (content.cpp) do.
#pragma once

#include <cstdint>
#include <string>

#ifdef __CUDACC__
#define EXAMPLE_HD __host__ __device__
#else
#define EXAMPLE_HD
#endif

namespace example {

/// splitmix64's finaliser: consecutive inputs give unrelated outputs.
EXAMPLE_HD inline std::uint64_t mix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/// The seed of one block half: `index` is the block's position in the
/// request (0, 1, ...), not its block id, which differs on the two sides.
EXAMPLE_HD inline std::uint64_t half_seed(std::uint64_t request,
                                          std::uint32_t layer,
                                          std::uint64_t index, int half) {
  return mix64(mix64(mix64(request) ^ layer) ^ (index * 2 + half));
}

/// Word `word` of the block half with seed `seed`.
EXAMPLE_HD inline std::uint64_t kv_word(std::uint64_t seed,
                                        std::uint64_t word) {
  return mix64(seed + word);
}

/// The same text for a mismatch found by a verifier: "request 7
/// layer 2 V block #3 (id 41) word 17: 0x... != expected 0x...".
std::string describe_mismatch(std::uint64_t request, std::uint32_t layer,
                              int half, std::uint64_t index,
                              std::uint64_t block, std::uint64_t word,
                              std::uint64_t got);

} // namespace example
