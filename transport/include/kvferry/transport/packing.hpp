// The packing pass of a copy plan (pack_plan in copy_plan.hpp and
// table_plan.hpp) for any source of extents: the pass reads each extent
// from a callable instead of a list, so a caller whose extents are made
// from something else (an endpoint's (slice, descriptor) pairs,
// one_sided_plan.hpp) packs them in the same pass that makes them, with no
// list in between (issue #16: one pass over a vector call's 65,536
// extents in all). The one definition of dropping, coalescing and item
// counting: copy_plan.cpp's packers are this pass over their lists.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

#include "kvferry/transport/copy_plan.hpp"
#include "kvferry/transport/table_plan.hpp"

namespace kvferry::transport::packing {

/// std::invalid_argument unless item_bytes is a positive multiple of 16.
void require_valid_item_size(std::uint32_t item_bytes);
/// Throws std::invalid_argument for a plan of 2^32 work items or more. Out
/// of line and cold: the pass's hot path stays small enough to be inlined.
[[noreturn]] void refuse_items(std::uint32_t item_bytes);

/// Work items in `length` bytes, rounded up without overflow. A shift when
/// item_bytes is a power of two (the default 8192): a 64-bit division per
/// extent is a large part of a plan's host time.
class item_counter {
public:
  explicit item_counter(std::uint32_t item_bytes)
      : item_bytes_(item_bytes), shift_(log2_if_power_of_two(item_bytes)) {}
  std::uint64_t operator()(std::uint64_t length) const {
    if (shift_ >= 0)
      return (length >> shift_) + ((length & (item_bytes_ - 1)) != 0);
    return length / item_bytes_ + (length % item_bytes_ != 0);
  }

private:
  static int log2_if_power_of_two(std::uint32_t n) {
    if (n == 0 || (n & (n - 1)) != 0)
      return -1;
    int log2 = 0;
    while ((1u << log2) != n)
      ++log2;
    return log2;
  }
  std::uint32_t item_bytes_;
  int shift_; // -1: not a power of two
};

/// Where an extent may not be merged into its predecessor: at an offset
/// whose bits under the mask are all zero. Plans in translated offsets have
/// no such edge (all ones: only offset 0, which nothing non-empty
/// continues); plans in virtual offsets (region r at r << shift) have one at
/// every region's start, so that a kept extent never spans two regions and
/// a kernel can translate each of its work items through its region's base
/// (region_bases, table_plan.hpp).
struct region_edges {
  std::uint64_t src_mask = ~std::uint64_t{0};
  std::uint64_t dst_mask = ~std::uint64_t{0};
  static region_edges of(const region_layout& src, const region_layout& dst) {
    return {mask(src.shift), mask(dst.shift)};
  }
  static std::uint64_t mask(unsigned shift) { // a bad shift is refused later
    return shift > 0 && shift < 64 ? (std::uint64_t{1} << shift) - 1
                                   : ~std::uint64_t{0};
  }
};

/// Coalescing's one rule: `e` joins `last` when it continues it on both
/// sides and starts at no region edge. True when it did.
inline bool merged_into(copy_extent& last, const copy_extent& e,
                        const region_edges& edges) {
  if (last.src_offset + last.length != e.src_offset ||
      last.dst_offset + last.length != e.dst_offset ||
      (e.src_offset & edges.src_mask) == 0 ||
      (e.dst_offset & edges.dst_mask) == 0)
    return false;
  last.length += e.length;
  return true;
}

/// Where a packed plan of `extent_count` extents keeps its item indices.
inline std::uint32_t* first_items_after(copy_extent* extents,
                                        std::size_t extent_count) {
  return reinterpret_cast<std::uint32_t*>(extents + extent_count);
}
inline const std::uint32_t* first_items_after(const copy_extent* extents,
                                              std::size_t extent_count) {
  return reinterpret_cast<const std::uint32_t*>(extents + extent_count);
}

/// pack_plan's one pass over extents [begin, end): `next(index, e)` writes
/// extent `index` into `e` (checked: it throws, or returns false to stop the
/// pass there, which leaves the result unusable; the caller knows why);
/// empty extents are dropped, neighbours coalesced (merged_into) and the
/// items and bytes counted. The kept extents go to `out`, the index of each
/// one's first item (counted from this pass's first) to `first_item`, both
/// with room for end - begin; the closing index is the caller's to write
/// (it knows where the plan ends). `next` is taken by value: its fields are
/// the pass's locals.
template<typename Next>
packed_plan_size pack_pass(std::size_t begin, std::size_t end,
                           std::uint32_t item_bytes, const region_edges& edges,
                           copy_extent* out, std::uint32_t* first_item,
                           Next next) {
  require_valid_item_size(item_bytes);
  const item_counter items_in{item_bytes};
  const region_edges at = edges; // a local: stays in registers
  std::size_t kept = 0;
  std::uint64_t items = 0;
  auto close_last = [&] { // the last kept extent is complete: count its items
    first_item[kept - 1] = static_cast<std::uint32_t>(items);
    items += items_in(out[kept - 1].length);
    if (items > std::numeric_limits<std::uint32_t>::max())
      refuse_items(item_bytes);
  };
  std::uint64_t copied = 0; // the byte total, so no caller needs a pass
  copy_extent e;
  for (std::size_t index = begin; index < end; ++index) {
    if (!next(index, e))
      break;
    copied += e.length;
    if (e.length == 0)
      continue;
    if (kept > 0) {
      if (merged_into(out[kept - 1], e, at)) // both fit: so does their sum
        continue;
      close_last();
    }
    out[kept++] = e;
  }
  if (kept > 0)
    close_last();
  return packed_plan_size{static_cast<std::uint32_t>(kept),
                          static_cast<std::uint32_t>(items), copied};
}

/// Phase one of part `k` of `parts` of a plan of `n` extents (pack_part's,
/// table_plan.hpp) from any source: pack_pass over the part's extents into
/// its in-place share of `buffer` (packed_plan_bytes(n) bytes).
template<typename Next>
void pack_part_from(std::size_t n, std::size_t k, std::size_t parts,
                    std::uint32_t item_bytes, const region_edges& edges,
                    void* buffer, packed_part& out, Next&& next) {
  out.begin = k * n / parts;
  const std::size_t end = (k + 1) * n / parts;
  auto* plan = static_cast<copy_extent*>(buffer);
  out.size = pack_pass(out.begin, end, item_bytes, edges, plan + out.begin,
                       first_items_after(plan, n) + out.begin, next);
}

} // namespace kvferry::transport::packing
