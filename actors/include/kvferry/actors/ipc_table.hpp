// CUDA IPC over region tables (plan.hpp): where each region of a table is as
// a device address, and a plan's virtual offsets turned into offsets from one
// origin per side, so that a transfer over many regions (a serving stack's
// per-layer KV tensors, mapped from another process or our own) is still ONE
// copy-kernel launch: the kernel adds one base per side to every offset, as
// it always did, and runs unchanged (every kernel of the per-GPU choice).
// Pure C++, no CUDA, no CAF: unit-tested in CI.
#pragma once

#include <cstdint>
#include <vector>

#include "kvferry/actors/plan.hpp"
#include "kvferry/transport/table_plan.hpp"

namespace kvferry {

/// One side's regions as addresses: region i is [bases[i], bases[i] +
/// sizes[i]) in this process (our own memory, or a peer's mapped over IPC).
struct address_table {
  std::vector<std::uint64_t> bases;
  std::vector<std::uint64_t> sizes;
  /// The lowest base: the origin the kernel's offsets are counted from.
  std::uint64_t origin() const;
  /// From the origin to the highest region end: what the engine checks the
  /// offsets against.
  std::uint64_t span() const;
};

/// One side of a plan as the copy engine translates it while packing
/// (gpu_copy_engine::prepare over region layouts, one pass): each region's
/// offset from `t.origin()`, written into `offsets`, whose capacity is
/// reused (a copy allocates nothing once it has grown). Launch with
/// t.origin() as that side's base. The layout points into `t` and
/// `offsets`: use it while both live unchanged.
transport::region_layout layout_of(const address_table& t,
                                   std::vector<std::uint64_t>& offsets);

/// A plan ready for gpu_copy_engine::prepare/launch: `extents` count from
/// `src.origin()` and `dst.origin()`; launch with those as bases and prepare
/// against the spans.
struct address_plan {
  std::vector<extent> extents;
  std::uint64_t src_origin = 0, dst_origin = 0;
  std::uint64_t src_span = 0, dst_span = 0;
};

/// Translates `virt` (virtual offsets: region << 40 | offset, both sides) in
/// one pass. Throws std::invalid_argument with check_table_extents' message
/// (naming the extent, side and region) when an extent leaves its region or
/// names a region the table does not have: nothing is copied then.
address_plan to_address_plan(const std::vector<extent>& virt,
                             const address_table& src,
                             const address_table& dst);

} // namespace kvferry
