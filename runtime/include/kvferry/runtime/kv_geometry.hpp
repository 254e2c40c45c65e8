// The shape of a model's KV cache, which sets every block size kvferry moves.
//
// One "layer-block" is the K and V of one layer for `block_tokens` tokens:
//   2 (K,V) * kv_heads * head_dim * dtype_bytes * block_tokens.
// The default is Llama-3-8B with vLLM's 16-token blocks: 2*8*128*2*16 = 64 KiB.
// Header-only so that transport-only code and tests can use it without actors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kvferry {

enum class kv_dtype : std::uint8_t { fp16, bf16, fp32 };

inline std::size_t dtype_bytes(kv_dtype t) {
  return t == kv_dtype::fp32 ? 4 : 2;
}

inline std::string_view to_string(kv_dtype t) {
  switch (t) {
  case kv_dtype::fp16:
    return "fp16";
  case kv_dtype::bf16:
    return "bf16";
  case kv_dtype::fp32:
    return "fp32";
  }
  return "?";
}

inline std::optional<kv_dtype> parse_dtype(std::string_view s) {
  if (s == "fp16")
    return kv_dtype::fp16;
  if (s == "bf16")
    return kv_dtype::bf16;
  if (s == "fp32")
    return kv_dtype::fp32;
  return std::nullopt;
}

/// One layer-block is at most this big (a pool is a whole number of them).
inline constexpr std::size_t max_layer_block_bytes = std::size_t{1} << 30;

struct kv_geometry {
  std::uint32_t layers = 32;
  std::uint32_t kv_heads = 8;
  std::uint32_t head_dim = 128;
  kv_dtype dtype = kv_dtype::fp16;
  std::uint32_t block_tokens = 16;

  /// Bytes of K+V of one layer for one block of tokens (the unit of a pool).
  std::size_t layer_block_bytes() const {
    return std::size_t{2} * kv_heads * head_dim * dtype_bytes(dtype) *
           block_tokens;
  }
  /// Blocks (per layer) that hold `tokens` tokens.
  std::uint32_t blocks_for_tokens(std::uint64_t tokens) const {
    return static_cast<std::uint32_t>((tokens + block_tokens - 1) /
                                      block_tokens);
  }
  /// Bytes of a whole request of `tokens` tokens across all layers.
  std::size_t request_bytes(std::uint64_t tokens) const {
    return std::size_t{blocks_for_tokens(tokens)} * layers *
           layer_block_bytes();
  }
  /// Empty when usable, else what is wrong (for a clear CLI error). The
  /// geometry rule of runtime::check_worker_params (worker_limits.hpp).
  std::string validate() const {
    if (layers == 0 || kv_heads == 0 || head_dim == 0 || block_tokens == 0)
      return "KV geometry: layers, kv-heads, head-dim and block-tokens must "
             "all be positive";
    if (layer_block_bytes() > max_layer_block_bytes)
      return "KV geometry: one layer-block (2 x kv-heads " +
             std::to_string(kv_heads) + " x head-dim " +
             std::to_string(head_dim) + " x " +
             std::to_string(dtype_bytes(dtype)) + " bytes x block-tokens " +
             std::to_string(block_tokens) + ") is " +
             std::to_string(layer_block_bytes()) +
             " bytes, over the 1 GiB limit";
    return {};
  }
  bool operator==(const kv_geometry& o) const {
    return layers == o.layers && kv_heads == o.kv_heads &&
           head_dim == o.head_dim && dtype == o.dtype &&
           block_tokens == o.block_tokens;
  }
  bool operator!=(const kv_geometry& o) const { return !(*this == o); }
};

} // namespace kvferry
