// Copy plans: the CPU-side half of the batched copy engine.
//
// A plan is a list of extents (src offset, dst offset, length) relative to a
// source and a destination region. Before a kernel sees it the plan is checked
// against the regions' sizes, adjacent extents are coalesced, and the result
// is cut into equal-size work items (one warp copies one item), so that the
// kernel's load is balanced whatever the extent sizes are. All of this is plain
// C++: CI tests it without a GPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kvferry::transport {

/// One contiguous piece of a transfer, in bytes, relative to the base of the
/// source and destination regions.
struct copy_extent {
  std::uint64_t src_offset = 0;
  std::uint64_t dst_offset = 0;
  std::uint64_t length = 0;

  friend bool operator==(const copy_extent& a, const copy_extent& b) {
    return a.src_offset == b.src_offset && a.dst_offset == b.dst_offset &&
           a.length == b.length;
  }
};

/// What the kernel reads: one per warp-task. 24 bytes; the device array of a
/// plan holds exactly these, uploaded once per plan.
struct copy_work_item {
  std::uint64_t src_offset;
  std::uint64_t dst_offset;
  std::uint32_t length;   // at most copy_tuning::item_bytes
  std::uint32_t reserved; // keeps the struct 8-byte aligned without padding
};
static_assert(sizeof(copy_work_item) == 24, "work item layout is shared with the kernel");

/// Returns a description of the first extent that falls outside its region
/// (naming its index and both bounds), or nullopt when every extent fits.
/// Zero-length extents are allowed and copy nothing. Overflowing offsets are
/// reported, never wrapped.
std::optional<std::string> check_extents(const std::vector<copy_extent>& extents,
                                         std::uint64_t src_region_bytes,
                                         std::uint64_t dst_region_bytes);

/// Returns an equivalent plan with fewer extents: zero-length extents dropped
/// and each extent merged into its predecessor in plan order when both its
/// source and its destination continue the predecessor's. Linear time, no
/// sort (runs of consecutive KV blocks are listed in order). The bytes copied
/// are exactly the same.
std::vector<copy_extent> coalesce(std::vector<copy_extent> extents);

/// Cuts every extent into work items of `item_bytes` (the last piece of an
/// extent may be shorter). Every byte of every extent appears in exactly one
/// item, in order. `item_bytes` must be a positive multiple of 16 so that
/// pieces of an aligned extent stay 16-byte aligned.
std::vector<copy_work_item> partition_into_work_items(
    const std::vector<copy_extent>& extents, std::uint32_t item_bytes);

/// Same, appending to `out` (callers that keep a buffer between plans use
/// this one so that steady state allocates nothing).
void partition_into_work_items(const std::vector<copy_extent>& extents,
                               std::uint32_t item_bytes,
                               std::vector<copy_work_item>& out);

/// How many items partition_into_work_items will produce.
std::size_t count_work_items(const std::vector<copy_extent>& extents,
                             std::uint32_t item_bytes);

/// Total bytes a plan copies.
std::uint64_t total_bytes(const std::vector<copy_extent>& extents);

}  // namespace kvferry::transport
