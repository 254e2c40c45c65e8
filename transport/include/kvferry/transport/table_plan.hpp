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
/// (pack_plan_in_parts). Part k packs extents [k n / parts, (k + 1) n /
/// parts) as pack_plan packs a plan of its own, straight into the joined
/// plan's buffer, where they lie if no extent before them was dropped or
/// merged: its extents from index `begin` on, its item indices (counted from
/// its own first item) from first_item[begin] of a plan of n extents. When
/// no part dropped or merged any (KV blocks at scattered slots: the large
/// plans), that is their place, and only the item indices of the later
/// parts are shifted by the items of the parts before them. Otherwise the
/// parts are moved down to their places (save_part, move_part), with what
/// a move would overwrite kept in `buffer` meanwhile (capacity kept from
/// plan to plan). Extents that continue each other
/// across a part edge stay two extents: the same bytes are copied, by one
/// more item.
struct packed_part {
  std::vector<std::uint64_t> buffer; // used only while a part is moved
  packed_plan_size size;
  std::size_t begin = 0;                    // its first extent, in place
  std::uint32_t extent_at = 0, item_at = 0; // its place in the joined plan
};

/// Phase one of part `k` of `parts` (any thread): translate, check,
/// coalesce and count its extents into its in-place share of `buffer`
/// (packed_plan_bytes(extents.size()) bytes). Errors as pack_plan's,
/// naming the extent by its index in the whole plan.
void pack_part(const std::vector<copy_extent>& extents, std::size_t k,
               std::size_t parts, std::uint32_t item_bytes,
               const region_layout& src, const region_layout& dst, void* buffer,
               packed_part& out);

/// Between the phases (one thread): each part's place, and the joined
/// plan's size (std::invalid_argument from 2^32 work items on).
packed_plan_size place_parts(packed_part* parts, std::size_t count);

/// Phase two of one part (any thread) when the joined plan keeps every
/// extent (joined.extents == extents.size()): its item indices shifted in
/// place; the last part also writes the joined plan's closing item index.
void shift_part(const packed_part& part, bool last, packed_plan_size joined,
                void* buffer);

/// Otherwise phase two, then three. save_part keeps in part.buffer what
/// the parts' moves would overwrite before it is read: the part's item
/// indices (the joined plan's indices lie where the last parts' extents
/// were) and the tail of its extents that the later parts' places cover
/// (as many as were dropped or merged before it: few, when few were). Once
/// every part has, move_part moves the part's other extents down to their
/// place (memmove: no other part writes or reads there), writes back its
/// tail, and its item indices shifted; the last part also the closing
/// index. So a plan with a few merges costs about one copy of the plan, as
/// it did before the parts packed in place.
void save_part(packed_part& part, std::size_t extent_count, const void* buffer);
void move_part(const packed_part& part, bool last, packed_plan_size joined,
               void* buffer);

/// The phases after phase one of a plan of `n` extents packed in `count`
/// parts into `buffer` (pack_plan_in_parts' below, whatever packed the
/// parts: pack_part, or packing.hpp's pack_part_from): the parts placed
/// and shifted, or saved and moved. Each phase runs as run_parts(count,
/// job) runs job(0) .. job(count - 1) (a plan_crew's run, or a loop) and
/// returns once all have, rethrowing the lowest part's exception.
template<class RunParts>
packed_plan_size join_parts(std::size_t n, void* buffer, packed_part* parts,
                            std::size_t count, RunParts&& run_parts) {
  const auto joined = place_parts(parts, count);
  const auto last = [count](std::size_t k) { return k + 1 == count; };
  if (joined.extents == n) { // every part is in its place
    auto shift = [&](std::size_t k) {
      shift_part(parts[k], last(k), joined, buffer);
    };
    run_parts(count, shift);
    return joined;
  }
  auto save = [&](std::size_t k) { save_part(parts[k], n, buffer); };
  run_parts(count, save);
  auto move = [&](std::size_t k) {
    move_part(parts[k], last(k), joined, buffer);
  };
  run_parts(count, move);
  return joined;
}

/// pack_plan over region tables in `count` parts (1 to parts' size): phase
/// one, pack_part, then join_parts, each phase run as run_parts runs it. The
/// joined plan copies exactly the bytes pack_plan's does; a plan that coalesces
/// nothing is pack_plan's to the byte.
template<class RunParts>
packed_plan_size
pack_plan_in_parts(const std::vector<copy_extent>& extents,
                   std::uint32_t item_bytes, const region_layout& src,
                   const region_layout& dst, void* buffer, packed_part* parts,
                   std::size_t count, RunParts&& run_parts) {
  auto pack = [&](std::size_t k) {
    pack_part(extents, k, count, item_bytes, src, dst, buffer, parts[k]);
  };
  run_parts(count, pack);
  return join_parts(extents.size(), buffer, parts, count, run_parts);
}

// ---- plans in virtual offsets, translated by the kernel (issue #16) ----
//
// A packed plan whose extents keep their virtual offsets (region r at
// r << shift) needs no address of either side: whoever makes the extents
// (an endpoint's caller, one_sided_plan.hpp) can pack it, checking each
// extent against the regions' sizes alone, and the side that launches only
// hands the kernel both sides' region bases (a few per launch). Coalescing
// stops at region edges (packing.hpp, region_edges), so each kept extent,
// and each of its work items, lies inside one region: a work item's offsets
// are translated as one (region_bases::translate).

/// Where one side's regions lie for a launch: region r at base[r] (a byte
/// offset from the launch base, region_layout's offsets). What the kernel
/// reads per side of a virtual plan; the caller of the pack checked every
/// extent against the regions' sizes.
struct region_bases {
  const std::uint64_t* base = nullptr;
  std::uint32_t count = 0;
  std::uint32_t shift = 40;
  /// The launch-relative offset of virtual offset `virt` (inside region
  /// virt >> shift, which is below count: the pack checked it).
  KVFERRY_HOST_DEVICE std::uint64_t translate(std::uint64_t virt) const {
    return base[virt >> shift] + (virt & ((std::uint64_t{1} << shift) - 1));
  }
};

/// pack_plan over region tables with the extents kept in virtual offsets:
/// the same checks against the layouts' sizes (their offsets are not read;
/// extent_error with check_table_side's message), dropping and coalescing,
/// except across a region's start. What the kernel copies through
/// region_bases of the layouts' offsets is what pack_plan's translated plan
/// copies.
packed_plan_size pack_virtual_plan(const std::vector<copy_extent>& extents,
                                   std::uint32_t item_bytes,
                                   const region_layout& src,
                                   const region_layout& dst, void* buffer);

/// Work item `item` of a virtual packed plan, translated as the kernel
/// translates it (host reference for tests; work_item_of_packed's search).
copy_work_item work_item_of_virtual(const copy_extent* extents,
                                    const std::uint32_t* first_item,
                                    std::uint32_t extent_count,
                                    std::uint32_t item_bytes,
                                    std::uint32_t item, const region_bases& src,
                                    const region_bases& dst);

} // namespace kvferry::transport
