// The caller's pass of a one-sided endpoint call (write or read,
// endpoint.cpp): every (local slice, peer descriptor) pair checked and
// turned into one extent of virtual offsets (the transfer actor's region
// tables, actors/plan.hpp), with the call's byte total and the peer's region
// sizes the call names, in one pass. A vector call over 4 KiB KV blocks has
// 65,536 pairs and its GPU copy takes ~200 us (issue #16): the pass is a
// tight loop (no allocation, lookup or exception per pair; the message is
// built only for the pair at fault), cut into parts on a plan_crew for
// large calls. In this header so that `kvferry bench plan` times the same
// code the endpoint runs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "kvferry/endpoint.hpp"
#include "kvferry/transport/copy_plan.hpp"
#include "kvferry/transport/plan_crew.hpp"
#include "kvferry/transport/table_plan.hpp"

namespace kvferry {

/// What the pass checks the pairs against, and names in its errors.
struct one_sided_call {
  bool write = true;                // local -> peer; false: peer -> local
  std::uint64_t peer_instance = 0;  // every descriptor's owner
  conn_id conn = 0;                 // for errors
  std::string_view peer_name;       // for errors (the caller's string)
  std::vector<std::uint64_t> local; // the local region table (0: removed)
};

/// The pass's result; its buffers are reused from call to call.
struct one_sided_plan {
  /// One extent per pair, in call order (write: local -> peer). The caller
  /// passes a list of its own, sized by plan_one_sided (extent_lists).
  std::vector<transport::copy_extent> extents;
  /// The peer's regions the descriptors name: index -> bytes as advertised
  /// (0 for regions none names).
  std::vector<std::uint64_t> remote_sizes;
  std::uint64_t bytes = 0; // the pairs' total
};

/// One part's scratch (plan_one_sided keeps one per part of a crew).
struct one_sided_part {
  std::size_t bad = SIZE_MAX; // the first pair at fault in this part
  std::uint64_t bytes = 0;
  std::vector<std::uint64_t> remote_sizes;
};

/// Whether local slice `s` lies inside a registered region of `sizes` (the
/// local region table; region 0 is the transfer actor's placeholder).
inline bool slice_inside(const std::vector<std::uint64_t>& sizes,
                         const slice& s) {
  return s.region != 0 && s.region < sizes.size() && sizes[s.region] != 0 &&
         s.offset <= sizes[s.region] && s.size <= sizes[s.region] - s.offset;
}

/// Why local slice `s` (number `index` of its call) is not inside a
/// registered region of `sizes`: not_found (no such region) or
/// invalid_extent (it leaves the region); ok when it is inside.
status slice_misfit(const std::vector<std::uint64_t>& sizes, const slice& s,
                    std::size_t index);

/// Calls of at least this many pairs are cut into parts on a crew, each
/// part at least half of it.
inline constexpr std::size_t min_crew_pairs = 16384;

/// Checks `local[i]` against `remote[i]` for every i (same size, the
/// descriptor the connection's peer's and inside the peer's region as
/// advertised, the slice inside a registered local region) and writes extent i
/// into `out.extents` (resized to the pairs' count; its contents need not be
/// cleared). The status names the first pair at fault, its index and the
/// region; then `out` holds nothing usable. `parts`: one per part, at least
/// crew->size() of them (their buffers reused); with a crew, a call of
/// min_crew_pairs pairs or more is cut into parts, each run on one of the
/// crew's threads; the result is the same.
status plan_one_sided(const one_sided_call& call, items<slice> local,
                      items<descriptor> remote, one_sided_plan& out,
                      transport::plan_crew* crew, one_sided_part* parts);

/// What pack_one_sided leaves besides the plan.
struct one_sided_pack {
  transport::packed_plan_size size; // the packed plan in the caller's buffer
  /// As one_sided_plan's: the peer's regions the descriptors name.
  std::vector<std::uint64_t> remote_sizes;
  std::uint64_t bytes = 0; // the pairs' total
};

/// The caller's pass and the pack in one (issue #16): the same checks as
/// plan_one_sided, and the extents, in virtual offsets, packed as
/// transport::pack_virtual_plan packs plan_one_sided's list (dropped,
/// coalesced except across a region's start, each given its first work item
/// of `item_bytes`) straight into `buffer` (packed_plan_bytes(pairs) bytes,
/// 8-byte aligned: pinned staging, say), with no list in between: one pass
/// over the pairs in all, in parts on the crew as plan_one_sided's. The plan
/// holds no address: a kernel translates it through both sides' region
/// bases (transport::region_bases), so the side that launches checks only
/// that the regions the call names still have the sizes the pairs were
/// checked against (the local table's, and out.remote_sizes). `packs`: one
/// per part, as `parts`. The status names the first pair at fault, as
/// plan_one_sided's; std::invalid_argument from 2^32 work items.
status pack_one_sided(const one_sided_call& call, items<slice> local,
                      items<descriptor> remote, std::uint32_t item_bytes,
                      void* buffer, one_sided_pack& out,
                      transport::plan_crew* crew, one_sided_part* parts,
                      transport::packed_part* packs);

} // namespace kvferry
