// Copy plans: the CPU-side half of the batched copy engine.
//
// A plan is a list of extents (src offset, dst offset, length) relative to a
// source and a destination region. Before a kernel sees it the plan is checked
// against the regions' sizes and adjacent extents are coalesced. The kernel
// balances its load by cutting extents into equal-size work items (one warp
// copies one item) whatever the extent sizes are. The host does not list the
// items: it uploads the coalesced extents and, per extent, the index of its
// first item (a prefix sum, one pass); the kernel maps an item index to its
// extent with find_extent_of_item below. All of this is plain C++ (the search
// is shared with the kernel): CI tests it without a GPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "kvferry/transport/host_device.hpp"

namespace kvferry::transport {

/// One contiguous piece of a transfer, in bytes, relative to the base of the
/// source and destination regions. The one extent type of kvferry: the
/// transfer messages carry it (proto::extent is this type; the runtime adds
/// its CAF inspect, so transport stays free of CAF) and the copy kernel reads
/// it as it is.
struct copy_extent {
  std::uint64_t src_offset = 0;
  std::uint64_t dst_offset = 0;
  std::uint64_t length = 0;

  friend bool operator==(const copy_extent& a, const copy_extent& b) {
    return a.src_offset == b.src_offset && a.dst_offset == b.dst_offset &&
           a.length == b.length;
  }
};
static_assert(sizeof(copy_extent) == 24,
              "extent layout is shared with the kernel");

/// True when [offset, offset + length) lies inside [0, region), with no
/// wrap-around: the one bounds rule every extent check applies.
inline bool fits(std::uint64_t offset, std::uint64_t length,
                 std::uint64_t region) {
  return offset <= region && length <= region - offset;
}

/// What the bounds checks throw for an extent that leaves its region: the
/// caller's plan is at fault, not the engine (the transfer actor reports it
/// as ec::invalid_extent). Thrown before any byte of the plan moves.
class extent_error : public std::invalid_argument {
public:
  using std::invalid_argument::invalid_argument;
};

/// What the kernel reads: one per warp-task. 24 bytes; the device array of a
/// plan holds exactly these, uploaded once per plan.
struct copy_work_item {
  std::uint64_t src_offset;
  std::uint64_t dst_offset;
  std::uint32_t length;   // at most copy_tuning::item_bytes
  std::uint32_t reserved; // keeps the struct 8-byte aligned without padding
};
static_assert(sizeof(copy_work_item) == 24,
              "work item layout is shared with the kernel");

/// Returns a description of the first extent that falls outside its region
/// (naming its index, its offsets and length, and the region's size), or
/// nullopt when every extent fits. Zero-length extents are allowed and copy
/// nothing. Overflowing offsets are reported, never wrapped.
std::optional<std::string>
check_extents(const std::vector<copy_extent>& extents,
              std::uint64_t src_region_bytes, std::uint64_t dst_region_bytes);

/// Which side of its extents a one-sided check is about.
enum class extent_side { source, destination };

/// The same check for one side only (a receiver knows its own region, not
/// the sender's), with the same message.
std::optional<std::string>
check_extents(const std::vector<copy_extent>& extents, extent_side side,
              std::uint64_t region_bytes);

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
std::vector<copy_work_item>
partition_into_work_items(const std::vector<copy_extent>& extents,
                          std::uint32_t item_bytes);

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

// ---- the packed plan: extents + prefix sum of their work items ----

/// Bytes of the packed plan of at most `extent_count` extents: the extents,
/// then `extent_count + 1` item indices (uint32). The copy engine's staging
/// and device buffers have this size and are uploaded with one copy.
constexpr std::size_t packed_plan_bytes(std::size_t extent_count) {
  return extent_count * sizeof(copy_extent) +
         (extent_count + 1) * sizeof(std::uint32_t);
}

/// The two arrays of a packed plan of `extent_count` extents in its buffer.
struct packed_plan_view {
  const copy_extent* extents = nullptr;      // extent_count
  const std::uint32_t* first_item = nullptr; // extent_count + 1
  static packed_plan_view in(const void* buffer, std::size_t extent_count) {
    const auto* extents = static_cast<const copy_extent*>(buffer);
    return {extents,
            reinterpret_cast<const std::uint32_t*>(extents + extent_count)};
  }
};

struct packed_plan_size {
  std::uint32_t extents = 0; // after coalescing
  std::uint32_t items = 0;   // work items in all (first_item[extents])
  std::uint64_t copied = 0;  // bytes the plan copies (counted while packed)
  std::size_t bytes() const { return packed_plan_bytes(extents); }
};

/// One pass over `extents` that checks them against the regions as
/// check_extents does (extent_error with its message for the first
/// extent that does not fit) and writes the packed plan into `buffer`
/// (packed_plan_bytes(extents.size()) bytes, 8-byte aligned): empty extents
/// dropped and neighbours coalesced exactly as coalesce() does, then
/// first_item[k] = the index of extent k's first work item of `item_bytes`,
/// first_item[kept] = all items. Read it back with
/// packed_plan_view::in(buffer, result.extents); its first result.bytes()
/// bytes are the whole plan. Also throws std::invalid_argument when
/// item_bytes is not a positive multiple of 16 or the plan has 2^32 work
/// items or more (the kernel counts them in 32 bits).
packed_plan_size pack_plan(const std::vector<copy_extent>& extents,
                           std::uint32_t item_bytes,
                           std::uint64_t src_region_bytes,
                           std::uint64_t dst_region_bytes, void* buffer);

/// `extents` in increasing destination offset: `extents` itself when they
/// already are (checked in one pass), else a copy sorted into `scratch`,
/// whose capacity is reused (no allocation once it has grown). Extents of
/// one plan never overlap at the destination, so their order does not
/// change what is copied, only which bytes the kernel moves together.
const std::vector<copy_extent>&
in_destination_order(const std::vector<copy_extent>& extents,
                     std::vector<copy_extent>& scratch);

/// How many places the kernel's warp probes at once (one per lane).
inline constexpr std::uint32_t extent_search_fanout = 32;

/// The extent that holds work item `item`: the last e in [lo, hi) with
/// first_item[e] <= item, given first_item[lo] <= item (a caller that walks
/// items in increasing order may start from the previous answer). Each round
/// asks `count_at_or_below(lo, step, hi)` how many of the probes lo + k*step
/// (k = 0 .. fanout-1 with k*step < hi - lo, which cannot overflow) have
/// first_item <= item -- on the GPU
/// every lane of a warp loads one probe and a ballot counts them -- and
/// narrows [lo, hi) to one step: about log32(extents) dependent loads, 4 for
/// 65536 extents, instead of 16 for a binary search.
template<typename CountAtOrBelow>
KVFERRY_HOST_DEVICE inline std::uint32_t
find_extent_of_item(std::uint32_t lo, std::uint32_t hi,
                    CountAtOrBelow&& count_at_or_below) {
  while (hi - lo > 1) {
    const std::uint32_t step =
        (hi - lo + extent_search_fanout - 1) / extent_search_fanout;
    const std::uint32_t at_or_below =
        count_at_or_below(lo, step, hi); // >= 1: probe lo
    lo += (at_or_below - 1) * step;
    if (hi - lo > step)
      hi = lo + step;
  }
  return lo;
}

/// The work item `item` of a packed plan, found as the kernel finds it (host
/// reference for tests: the same search, probes counted in a loop).
copy_work_item work_item_of_packed(const copy_extent* extents,
                                   const std::uint32_t* first_item,
                                   std::uint32_t extent_count,
                                   std::uint32_t item_bytes,
                                   std::uint32_t item);

} // namespace kvferry::transport
