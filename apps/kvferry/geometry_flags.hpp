// The KV geometry flags (--layers, --kv-heads, --head-dim, --dtype,
// --block-tokens), declared once for every command that sizes KV blocks,
// and the same flags as arguments for a child `kvferry worker`.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "kvferry/runtime/kv_geometry.hpp"
#include "kvferry/runtime/topology.hpp"

namespace kvferry::app {

/// Declares the flags on `cmd`; --dtype lands in `dtype` (resolve_dtype
/// puts it into the geometry once the flags are parsed).
inline void add_geometry_flags(CLI::App& cmd, kv_geometry& geometry,
                               std::string& dtype) {
  cmd.add_option("--layers", geometry.layers)->capture_default_str();
  cmd.add_option("--kv-heads", geometry.kv_heads)->capture_default_str();
  cmd.add_option("--head-dim", geometry.head_dim)->capture_default_str();
  cmd.add_option("--dtype", dtype, "fp16, bf16 or fp32")->capture_default_str();
  cmd.add_option("--block-tokens", geometry.block_tokens)
      ->capture_default_str();
}

/// Sets `geometry.dtype` from --dtype: empty, or the message naming it.
inline std::string resolve_dtype(kv_geometry& geometry,
                                 const std::string& dtype) {
  auto parsed = parse_dtype(dtype);
  if (!parsed)
    return fmt::format("--dtype '{}': expected fp16, bf16 or fp32", dtype);
  geometry.dtype = *parsed;
  return {};
}

/// The flags that give a child `kvferry worker` this geometry.
inline std::vector<std::string> geometry_args(std::uint32_t layers,
                                              std::uint32_t kv_heads,
                                              std::uint32_t head_dim,
                                              const std::string& dtype,
                                              std::uint32_t block_tokens) {
  return {"--layers",       std::to_string(layers),
          "--kv-heads",     std::to_string(kv_heads),
          "--head-dim",     std::to_string(head_dim),
          "--dtype",        dtype,
          "--block-tokens", std::to_string(block_tokens)};
}

inline std::vector<std::string> geometry_args(const kv_geometry& g) {
  return geometry_args(g.layers, g.kv_heads, g.head_dim,
                       std::string{to_string(g.dtype)}, g.block_tokens);
}

inline std::vector<std::string> geometry_args(const topology::model_spec& m) {
  return geometry_args(m.layers, m.kv_heads, m.head_dim, m.dtype,
                       m.block_tokens);
}

} // namespace kvferry::app
