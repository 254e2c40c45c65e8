// Transfer plans and the KV block pool: pure C++, no actors, unit-tested.
//
// A plan is a list of extents (src offset, dst offset, length). Plans are
// built from block lists, coalesced where both sides are contiguous (per-block
// calls are the enemy: a 64 KiB block is too small to move alone), split into
// chunks no bigger than the plugin accepts in one call, and checked against
// the registered region before any byte moves. Coalescing and the bounds
// check are the transport's (copy_plan.hpp): the network path and the copy
// kernel share them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kvferry/runtime/protocol.hpp"
#include "kvferry/transport/copy_plan.hpp"

namespace kvferry {

using proto::extent;
using transport::check_extents;
using transport::coalesce;
using transport::extent_side;
using transport::total_bytes;

// ---- region tables
//
// A worker's memory is a table of regions (e.g. a serving stack's KV cache,
// one allocation per layer). Extent offsets are virtual: region i occupies
// [i << 40, (i << 40) + size_i), so a one-region table's offsets are plain
// offsets, coalescing never merges across regions (a region is smaller than
// 2^40 bytes, so the next one never continues it), and the wire form of an
// extent stays 24 bytes.

inline constexpr unsigned region_shift = 40;
inline constexpr std::uint64_t max_region_bytes = std::uint64_t{1}
                                                  << region_shift;

/// Virtual offset of byte `offset` of region `region`.
constexpr std::uint64_t table_offset(std::size_t region, std::uint64_t offset) {
  return (static_cast<std::uint64_t>(region) << region_shift) + offset;
}

/// A virtual offset split into its region and the offset inside it.
struct region_offset {
  std::size_t region;
  std::uint64_t offset;
};
constexpr region_offset locate(std::uint64_t table_offset) {
  return {static_cast<std::size_t>(table_offset >> region_shift),
          table_offset & (max_region_bytes - 1)};
}

/// check_extents for one side of a region table of `region_sizes` (region
/// i's bytes): every extent must lie inside one region. A one-region table
/// gives check_extents' own message; otherwise the message names the extent,
/// the region and its size ("... leaves region 1 of 4096 bytes" or "... names
/// region 3, but the table has 2 regions").
std::optional<std::string>
check_table_extents(const std::vector<extent>& extents, extent_side side,
                    const std::vector<std::uint64_t>& region_sizes);

/// Both sides at once: one pass that only asks whether every extent fits
/// (a vector call brings tens of thousands), then, only when one does not,
/// the message of check_table_extents for the source side, else for the
/// destination side, as two calls would give it.
std::optional<std::string>
check_table_extents(const std::vector<extent>& extents,
                    const std::vector<std::uint64_t>& src_sizes,
                    const std::vector<std::uint64_t>& dst_sizes);

/// Builds the plan that moves block i of `src_offsets` to block i of
/// `dst_offsets` (each `block_bytes` long), coalesced. Sizes must match.
std::vector<extent> plan_blocks(const std::vector<std::uint64_t>& src_offsets,
                                const std::vector<std::uint64_t>& dst_offsets,
                                std::uint64_t block_bytes);

/// Splits every extent into chunks of at most `max_chunk` bytes (>0), the
/// unit of one isend/irecv. v7 sizes are int, so max_chunk is also clamped to
/// 2^31-1.
std::vector<extent> split_chunks(const std::vector<extent>& extents,
                                 std::uint64_t max_chunk);

/// A free-list allocator of fixed-size blocks over one registered region.
/// Allocation prefers the lowest free blocks so that a request's blocks tend
/// to be contiguous (and its plan coalesces). Memory: one bit per block plus
/// nothing per allocation; no heap allocation after construction except in
/// the caller's output vector (which callers reuse).
class block_pool {
public:
  block_pool(std::uint64_t block_count, std::uint64_t block_bytes);

  /// Appends the offsets of `n` blocks to `out`; false (and `out`
  /// unchanged) when fewer than `n` are free.
  bool allocate(std::uint64_t n, std::vector<std::uint64_t>& out);

  /// Returns blocks by offset. Throws std::invalid_argument naming the
  /// offset on a double free or an offset that is not a block of this pool
  /// (a bug worth stopping for: two requests would share memory).
  void release(const std::vector<std::uint64_t>& offsets);

  std::uint64_t free_blocks() const { return free_; }
  std::uint64_t block_count() const { return count_; }
  std::uint64_t block_bytes() const { return block_bytes_; }
  std::uint64_t region_bytes() const { return count_ * block_bytes_; }

private:
  std::uint64_t count_;
  std::uint64_t block_bytes_;
  std::uint64_t free_;
  std::vector<std::uint64_t> used_bits_; // bit set = block in use
  std::uint64_t first_maybe_free_word_ = 0;
};

} // namespace kvferry
