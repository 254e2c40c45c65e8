// Copy plans over region tables (the CPU-side half of the copy engine, like
// copy_plan.hpp, whose packed plan these build): extents in virtual offsets
// (region r holds [r << shift, (r << shift) + size_r), as the actors' region
// tables lay out a worker's memory, actors/plan.hpp), translated to offsets
// from one launch base per side in the same pass that checks, coalesces and
// packs them. Plain C++, tested in CI without a GPU (test_copy_plan).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kvferry/transport/copy_plan.hpp"

namespace kvferry::transport {

/// One side of a plan whose extents carry virtual offsets (region r holds
/// [r << shift, (r << shift) + sizes[r]), as the actors' region tables lay
/// out a worker's memory, plan.hpp): where each region lies, as a byte
/// offset from the base the kernel is launched with. The arrays are the
/// caller's and must outlive the call that takes the layout.
struct region_layout {
  const std::uint64_t* offsets = nullptr; // region r starts here (bytes)
  const std::uint64_t* sizes = nullptr;   // region r's bytes
  std::size_t count = 0;
  unsigned shift = 40; // 1..63
  /// From the base to the end of the highest region: what a launch base
  /// must cover.
  std::uint64_t span() const;
};

/// check_extents for one side of a region table (virtual offsets; only the
/// sizes matter): every extent must lie inside one region. The message
/// names the extent, its offset as region + offset and the region's size
/// ("extent #3 (destination offset 1099511627776 = region 1 + 0, length 8)
/// leaves destination region 1 of 4 bytes", or "... names region 3, but the
/// source table has 2 regions").
std::optional<std::string>
check_table_side(const std::vector<copy_extent>& extents, extent_side side,
                 const region_layout& table);

/// pack_plan for extents in virtual offsets: both sides translated through
/// their layouts in the same pass (extent_error with
/// check_table_side's message for the first extent that leaves its region),
/// then coalesced and counted exactly as pack_plan packs the translated
/// extents, so the kernel runs unchanged between the two launch bases. One
/// pass instead of a translated copy of the plan and a second pass over it:
/// the host's cost per extent is what a vector call over thousands of KV
/// blocks pays (docs/engine-api.md, "What a vector call costs").
packed_plan_size pack_plan(const std::vector<copy_extent>& extents,
                           std::uint32_t item_bytes, const region_layout& src,
                           const region_layout& dst, void* buffer);

/// The translation alone, into `out` (its capacity reused), for the kernels
/// that read a host-cut work item list. Same checks and message.
void translate_extents(const std::vector<copy_extent>& extents,
                       const region_layout& src, const region_layout& dst,
                       std::vector<copy_extent>& out);

/// A plan over region tables packed in parts, for several threads
/// (pack_plan_in_parts): part k packs extents [k n / parts, (k + 1) n /
/// parts) as pack_plan packs a plan of its own, into `buffer` (a packed
/// plan of its own, capacity kept from plan to plan), then is copied into
/// its place in the joined plan, its item indices shifted by the items of
/// the parts before it. Extents that continue each other across a part
/// edge stay two extents: the same bytes are copied, by one more item.
struct packed_part {
  std::vector<std::uint64_t> buffer;
  packed_plan_size size;
  std::uint32_t extent_at = 0, item_at = 0; // its place in the joined plan
};

/// Phase one of part `k` of `parts` (any thread): translate, check,
/// coalesce and count its extents into `out.buffer`. Errors as pack_plan's,
/// naming the extent by its index in the whole plan.
void pack_part(const std::vector<copy_extent>& extents, std::size_t k,
               std::size_t parts, std::uint32_t item_bytes,
               const region_layout& src, const region_layout& dst,
               packed_part& out);

/// Between the phases (one thread): each part's place, and the joined
/// plan's size (std::invalid_argument from 2^32 work items on).
packed_plan_size place_parts(packed_part* parts, std::size_t count);

/// Phase two of one part (any thread): its extents and shifted item indices
/// into the joined plan of `joined` in `buffer` (packed_plan_bytes of the
/// whole plan's extent count); the last part also writes the joined plan's
/// closing item index.
void copy_part(const packed_part& part, bool last, packed_plan_size joined,
               void* buffer);

/// pack_plan over region tables in `count` parts (1 to parts' size), each
/// phase run as run_parts(count, job) runs job(0) .. job(count - 1) (a
/// plan_crew's run, or a loop) and returns once all have, rethrowing the
/// lowest part's exception. The joined plan copies exactly the bytes
/// pack_plan's does.
template<class RunParts>
packed_plan_size
pack_plan_in_parts(const std::vector<copy_extent>& extents,
                   std::uint32_t item_bytes, const region_layout& src,
                   const region_layout& dst, void* buffer, packed_part* parts,
                   std::size_t count, RunParts&& run_parts) {
  auto pack = [&](std::size_t k) {
    pack_part(extents, k, count, item_bytes, src, dst, parts[k]);
  };
  run_parts(count, pack);
  const auto joined = place_parts(parts, count);
  auto copy = [&](std::size_t k) {
    copy_part(parts[k], k + 1 == count, joined, buffer);
  };
  run_parts(count, copy);
  return joined;
}

} // namespace kvferry::transport
