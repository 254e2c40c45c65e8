#include "kvferry/transport/copy_plan.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "kvferry/transport/packing.hpp"
#include "kvferry/transport/table_plan.hpp"

namespace kvferry::transport {

using packing::first_items_after;
using packing::require_valid_item_size;

namespace {

std::string describe(std::size_t index, const copy_extent& e) {
  return "extent #" + std::to_string(index) + " (src_offset " +
         std::to_string(e.src_offset) + ", dst_offset " +
         std::to_string(e.dst_offset) + ", length " + std::to_string(e.length) +
         ")";
}

// check_extents' message for an extent whose `side` does not fit, else
// nullopt.
std::optional<std::string> misfit(std::size_t index, const copy_extent& e,
                                  extent_side side,
                                  std::uint64_t region_bytes) {
  const bool source = side == extent_side::source;
  if (fits(source ? e.src_offset : e.dst_offset, e.length, region_bytes))
    return std::nullopt;
  return describe(index, e) + " ends past the " +
         (source ? "source" : "destination") + " region of " +
         std::to_string(region_bytes) + " bytes";
}

std::optional<std::string> misfit(std::size_t index, const copy_extent& e,
                                  std::uint64_t src_region_bytes,
                                  std::uint64_t dst_region_bytes) {
  if (auto problem = misfit(index, e, extent_side::source, src_region_bytes))
    return problem;
  return misfit(index, e, extent_side::destination, dst_region_bytes);
}

} // namespace

std::optional<std::string>
check_extents(const std::vector<copy_extent>& extents,
              std::uint64_t src_region_bytes, std::uint64_t dst_region_bytes) {
  for (std::size_t i = 0; i < extents.size(); ++i)
    if (auto problem =
            misfit(i, extents[i], src_region_bytes, dst_region_bytes))
      return problem;
  return std::nullopt;
}

std::optional<std::string>
check_extents(const std::vector<copy_extent>& extents, extent_side side,
              std::uint64_t region_bytes) {
  for (std::size_t i = 0; i < extents.size(); ++i)
    if (auto problem = misfit(i, extents[i], side, region_bytes))
      return problem;
  return std::nullopt;
}

const std::vector<copy_extent>&
in_destination_order(const std::vector<copy_extent>& extents,
                     std::vector<copy_extent>& scratch) {
  auto by_destination = [](const copy_extent& a, const copy_extent& b) {
    return a.dst_offset < b.dst_offset;
  };
  if (std::is_sorted(extents.begin(), extents.end(), by_destination))
    return extents;
  scratch.assign(extents.begin(), extents.end());
  std::sort(scratch.begin(), scratch.end(), by_destination);
  return scratch;
}

std::vector<copy_extent> coalesce(std::vector<copy_extent> extents) {
  // One linear pass in plan order, no sort: plans list a request's blocks in
  // order, so runs of consecutive blocks are neighbours already, and sorting
  // 64k extents would cost milliseconds of host time per plan.
  std::size_t kept = 0;
  for (const auto& e : extents) {
    if (e.length == 0)
      continue;
    if (kept > 0 && packing::merged_into(extents[kept - 1], e, {}))
      continue;
    extents[kept++] = e;
  }
  extents.resize(kept);
  return extents;
}

std::size_t count_work_items(const std::vector<copy_extent>& extents,
                             std::uint32_t item_bytes) {
  require_valid_item_size(item_bytes);
  std::size_t items = 0;
  for (const auto& e : extents)
    items += static_cast<std::size_t>((e.length + item_bytes - 1) / item_bytes);
  return items;
}

void partition_into_work_items(const std::vector<copy_extent>& extents,
                               std::uint32_t item_bytes,
                               std::vector<copy_work_item>& out) {
  require_valid_item_size(item_bytes);
  for (const auto& e : extents) {
    for (std::uint64_t done = 0; done < e.length; done += item_bytes) {
      const auto piece = std::min<std::uint64_t>(item_bytes, e.length - done);
      out.push_back(copy_work_item{e.src_offset + done, e.dst_offset + done,
                                   static_cast<std::uint32_t>(piece), 0});
    }
  }
}

std::vector<copy_work_item>
partition_into_work_items(const std::vector<copy_extent>& extents,
                          std::uint32_t item_bytes) {
  std::vector<copy_work_item> items;
  items.reserve(count_work_items(extents, item_bytes));
  partition_into_work_items(extents, item_bytes, items);
  return items;
}

namespace {

// One side of a region table as the packing pass reads it: a virtual offset
// to its offset from the launch base (or kept, for a virtual plan), false
// when the extent leaves its region. Holds the layout's fields by value: as a
// local of the packing pass they stay in registers (through a reference they
// would be reloaded after every extent written, which may alias them).
class table_side {
public:
  explicit table_side(const region_layout& t)
      : offsets_(t.offsets), sizes_(t.sizes), count_(t.count), shift_(t.shift),
        mask_(t.shift > 0 && t.shift < 64 ? (std::uint64_t{1} << t.shift) - 1
                                          : 0) {
  } // a bad shift is refused (table_placer)
  template<bool Translate>
  bool place(std::uint64_t virt, std::uint64_t length,
             std::uint64_t& out) const {
    const std::uint64_t region = virt >> shift_;
    if (region >= count_)
      return false;
    const std::uint64_t offset = virt & mask_;
    if (!fits(offset, length, sizes_[region]))
      return false;
    if constexpr (Translate)
      out = offsets_[region] + offset;
    else
      out = virt;
    return true;
  }

private:
  const std::uint64_t* offsets_;
  const std::uint64_t* sizes_;
  std::size_t count_;
  unsigned shift_;
  std::uint64_t mask_;
};

// A layout's shift and sizes (and its offsets, when `placed`) are usable.
void require_valid_layout(const region_layout& t, bool placed) {
  if (t.shift == 0 || t.shift > 63 ||
      (t.count > 0 && (!t.sizes || (placed && !t.offsets))))
    throw std::invalid_argument(
        "copy plan: a region layout needs a shift of 1..63 and an offset and "
        "a size per region");
}

// Extent `index` on one side of table `t`: its region, and its offset there.
struct table_place {
  std::uint64_t virt, region, offset;
};
table_place place_in(const copy_extent& e, extent_side side,
                     const region_layout& t) {
  const std::uint64_t virt =
      side == extent_side::source ? e.src_offset : e.dst_offset;
  return {virt, virt >> t.shift, virt & ((std::uint64_t{1} << t.shift) - 1)};
}

// Why extent `index` does not fit `t`. Out of line and cold: a check that
// passes builds no string (every send and announcement checks each extent).
[[gnu::cold, gnu::noinline]] std::string
describe_misfit(std::size_t index, const copy_extent& e, extent_side side,
                const region_layout& t) {
  const char* which = side == extent_side::source ? "source" : "destination";
  const auto [virt, region, offset] = place_in(e, side, t);
  const std::string what =
      "extent #" + std::to_string(index) + " (" + which + " offset " +
      std::to_string(virt) + " = region " + std::to_string(region) + " + " +
      std::to_string(offset) + ", length " + std::to_string(e.length) + ")";
  if (region >= t.count)
    return what + " names region " + std::to_string(region) + ", but the " +
           which + " table has " + std::to_string(t.count) + " regions";
  return what + " leaves " + which + " region " + std::to_string(region) +
         " of " + std::to_string(t.sizes[region]) + " bytes";
}

std::optional<std::string> table_misfit(std::size_t index, const copy_extent& e,
                                        extent_side side,
                                        const region_layout& t) {
  const auto at = place_in(e, side, t);
  if (at.region < t.count && fits(at.offset, e.length, t.sizes[at.region]))
    return std::nullopt;
  return describe_misfit(index, e, side, t);
}

[[noreturn, gnu::cold, gnu::noinline]] void
refuse_misfit(std::size_t index, const copy_extent& e,
              std::uint64_t src_region_bytes, std::uint64_t dst_region_bytes) {
  throw extent_error(*misfit(index, e, src_region_bytes, dst_region_bytes));
}

// pack_pass over `extents` [begin, end), each checked and translated by
// `place(index, e, out)` (which throws extent_error when it does not fit).
template<typename Place>
packed_plan_size
pack_placed(const std::vector<copy_extent>& extents, std::size_t begin,
            std::size_t end, std::uint32_t item_bytes,
            const packing::region_edges& edges, copy_extent* out,
            std::uint32_t* first_item, Place place) {
  return packing::pack_pass(
      begin, end, item_bytes, edges, out, first_item,
      [&extents, place](std::size_t index, copy_extent& e) {
        place(index, extents[index], e);
        return true;
      });
}

// The whole plan in one pass: its item indices written past room for every
// extent (the kept count is not known yet), then moved down behind the kept
// ones when some were dropped or merged.
template<typename Place>
packed_plan_size pack_whole(const std::vector<copy_extent>& extents,
                            std::uint32_t item_bytes, void* buffer,
                            Place&& place,
                            const packing::region_edges& edges = {}) {
  auto* out = static_cast<copy_extent*>(buffer);
  auto* first_item = first_items_after(out, extents.size());
  const auto size = pack_placed(extents, 0, extents.size(), item_bytes, edges,
                                out, first_item, place);
  first_item[size.extents] = size.items;
  if (size.extents < extents.size())
    std::memmove(first_items_after(out, size.extents), first_item,
                 (size.extents + 1) * sizeof(std::uint32_t));
  return size;
}

// Translates extent `index` through both layouts into `out` (or, for a
// virtual plan, checks it against their sizes and keeps its offsets);
// throws check_table_side's message when it leaves a region.
template<bool Translate>
class placer_on_tables {
public:
  placer_on_tables(const region_layout& src, const region_layout& dst)
      : src_(src), dst_(dst), src_side_(src), dst_side_(dst) {
    require_valid_layout(src, Translate);
    require_valid_layout(dst, Translate);
  }
  void operator()(std::size_t index, const copy_extent& e,
                  copy_extent& out) const {
    out.length = e.length;
    if (src_side_.template place<Translate>(e.src_offset, e.length,
                                            out.src_offset) &&
        dst_side_.template place<Translate>(e.dst_offset, e.length,
                                            out.dst_offset))
      return;
    refuse(index, e);
  }

private:
  // Out of line and cold: the packing loop inlines operator() only while
  // it stays small.
  [[noreturn, gnu::cold, gnu::noinline]] void
  refuse(std::size_t index, const copy_extent& e) const {
    auto problem = table_misfit(index, e, extent_side::source, src_);
    if (!problem)
      problem = table_misfit(index, e, extent_side::destination, dst_);
    throw extent_error(*problem);
  }

  const region_layout& src_;
  const region_layout& dst_;
  table_side src_side_, dst_side_;
};
using table_placer = placer_on_tables<true>;
using virtual_placer = placer_on_tables<false>;

} // namespace

namespace packing {

void require_valid_item_size(std::uint32_t item_bytes) {
  if (item_bytes == 0 || item_bytes % 16 != 0)
    throw std::invalid_argument("copy plan: work item size " +
                                std::to_string(item_bytes) +
                                " is not a positive multiple of 16");
}

[[gnu::cold, gnu::noinline]] void refuse_items(std::uint32_t item_bytes) {
  throw std::invalid_argument("copy plan: more than 2^32 - 1 work items of " +
                              std::to_string(item_bytes) + " bytes");
}

} // namespace packing

std::uint64_t region_layout::span() const {
  std::uint64_t end = 0;
  for (std::size_t r = 0; r < count; ++r)
    end = std::max(end, offsets[r] + sizes[r]);
  return end;
}

std::optional<std::string>
check_table_side(const std::vector<copy_extent>& extents, extent_side side,
                 const region_layout& table) {
  require_valid_layout(table, false);
  for (std::size_t i = 0; i < extents.size(); ++i)
    if (auto problem = table_misfit(i, extents[i], side, table))
      return problem;
  return std::nullopt;
}

packed_plan_size pack_plan(const std::vector<copy_extent>& extents,
                           std::uint32_t item_bytes,
                           std::uint64_t src_region_bytes,
                           std::uint64_t dst_region_bytes, void* buffer) {
  // Bounds are checked in the same pass (one read of the caller's extents).
  return pack_whole(
      extents, item_bytes, buffer,
      [src_region_bytes, dst_region_bytes](
          std::size_t index, const copy_extent& e, copy_extent& out) {
        if (!fits(e.src_offset, e.length, src_region_bytes) ||
            !fits(e.dst_offset, e.length, dst_region_bytes))
          refuse_misfit(index, e, src_region_bytes, dst_region_bytes);
        out = e;
      });
}

packed_plan_size pack_plan(const std::vector<copy_extent>& extents,
                           std::uint32_t item_bytes, const region_layout& src,
                           const region_layout& dst, void* buffer) {
  return pack_whole(extents, item_bytes, buffer, table_placer{src, dst});
}

packed_plan_size pack_virtual_plan(const std::vector<copy_extent>& extents,
                                   std::uint32_t item_bytes,
                                   const region_layout& src,
                                   const region_layout& dst, void* buffer) {
  return pack_whole(extents, item_bytes, buffer, virtual_placer{src, dst},
                    packing::region_edges::of(src, dst));
}

void pack_part(const std::vector<copy_extent>& extents, std::size_t k,
               std::size_t parts, std::uint32_t item_bytes,
               const region_layout& src, const region_layout& dst, void* buffer,
               packed_part& out) {
  const table_placer place{src, dst};
  packing::pack_part_from(extents.size(), k, parts, item_bytes, {}, buffer, out,
                          [&extents, place](std::size_t i, copy_extent& e) {
                            place(i, extents[i], e);
                            return true;
                          });
}

packed_plan_size place_parts(packed_part* parts, std::size_t count) {
  std::uint64_t extents = 0, items = 0, copied = 0;
  for (std::size_t k = 0; k < count; ++k) {
    parts[k].extent_at = static_cast<std::uint32_t>(extents);
    parts[k].item_at = static_cast<std::uint32_t>(items);
    extents += parts[k].size.extents;
    items += parts[k].size.items;
    copied += parts[k].size.copied;
    if (items > std::numeric_limits<std::uint32_t>::max())
      throw std::invalid_argument("copy plan: more than 2^32 - 1 work items");
  }
  return packed_plan_size{static_cast<std::uint32_t>(extents),
                          static_cast<std::uint32_t>(items), copied};
}

void shift_part(const packed_part& part, bool last, packed_plan_size joined,
                void* buffer) {
  auto* first_item =
      first_items_after(static_cast<copy_extent*>(buffer), joined.extents);
  if (part.item_at != 0)
    for (std::uint32_t i = 0; i < part.size.extents; ++i)
      first_item[part.extent_at + i] += part.item_at;
  if (last)
    first_item[joined.extents] = joined.items;
}

namespace {

// The extents at the end of a part's in-place output that the later parts'
// places cover: as many as were dropped or merged before it (all of them
// when it kept fewer).
std::size_t covered_tail(const packed_part& part) {
  return std::min<std::size_t>(part.size.extents, part.begin - part.extent_at);
}

} // namespace

void save_part(packed_part& part, std::size_t extent_count,
               const void* buffer) {
  const auto* plan = static_cast<const copy_extent*>(buffer);
  const std::size_t kept = part.size.extents, tail = covered_tail(part);
  part.buffer.resize(
      (tail * sizeof(copy_extent) + kept * sizeof(std::uint32_t) + 7) / 8);
  if (kept == 0)
    return;
  auto* saved = reinterpret_cast<copy_extent*>(part.buffer.data());
  std::memcpy(saved, plan + part.begin + kept - tail,
              tail * sizeof(copy_extent));
  std::memcpy(first_items_after(saved, tail),
              first_items_after(plan, extent_count) + part.begin,
              kept * sizeof(std::uint32_t));
}

void move_part(const packed_part& part, bool last, packed_plan_size joined,
               void* buffer) {
  auto* plan = static_cast<copy_extent*>(buffer);
  const std::size_t kept = part.size.extents, tail = covered_tail(part);
  const std::size_t head = kept - tail;
  if (part.extent_at != part.begin) // down, within what no other part moves
    std::memmove(plan + part.extent_at, plan + part.begin,
                 head * sizeof(copy_extent));
  auto* first_item = first_items_after(plan, joined.extents);
  if (kept > 0) { // else save_part kept nothing
    const auto* saved =
        reinterpret_cast<const copy_extent*>(part.buffer.data());
    std::memcpy(plan + part.extent_at + head, saved,
                tail * sizeof(copy_extent));
    const auto* saved_first = first_items_after(saved, tail);
    for (std::size_t i = 0; i < kept; ++i)
      first_item[part.extent_at + i] = saved_first[i] + part.item_at;
  }
  if (last)
    first_item[joined.extents] = joined.items;
}

void translate_extents(const std::vector<copy_extent>& extents,
                       const region_layout& src, const region_layout& dst,
                       std::vector<copy_extent>& out) {
  const table_placer place{src, dst};
  out.resize(extents.size());
  for (std::size_t i = 0; i < extents.size(); ++i)
    place(i, extents[i], out[i]);
}

copy_work_item work_item_of_packed(const copy_extent* extents,
                                   const std::uint32_t* first_item,
                                   std::uint32_t extent_count,
                                   std::uint32_t item_bytes,
                                   std::uint32_t item) {
  if (extent_count == 0 || item >= first_item[extent_count])
    throw std::out_of_range("copy plan: no work item #" + std::to_string(item));
  const std::uint32_t e = find_extent_of_item(
      0, extent_count,
      [&](std::uint32_t lo, std::uint32_t step, std::uint32_t hi) {
        std::uint32_t count = 0;
        for (std::uint32_t k = 0; k < extent_search_fanout; ++k) {
          count += k * step < hi - lo && first_item[lo + k * step] <= item;
        }
        return count;
      });
  const std::uint64_t offset = std::uint64_t{item - first_item[e]} * item_bytes;
  const auto& extent = extents[e];
  return copy_work_item{extent.src_offset + offset, extent.dst_offset + offset,
                        static_cast<std::uint32_t>(std::min<std::uint64_t>(
                            item_bytes, extent.length - offset)),
                        0};
}

copy_work_item work_item_of_virtual(const copy_extent* extents,
                                    const std::uint32_t* first_item,
                                    std::uint32_t extent_count,
                                    std::uint32_t item_bytes,
                                    std::uint32_t item, const region_bases& src,
                                    const region_bases& dst) {
  auto w =
      work_item_of_packed(extents, first_item, extent_count, item_bytes, item);
  w.src_offset = src.translate(w.src_offset);
  w.dst_offset = dst.translate(w.dst_offset);
  return w;
}

std::uint64_t total_bytes(const std::vector<copy_extent>& extents) {
  std::uint64_t sum = 0;
  for (const auto& e : extents)
    sum += e.length;
  return sum;
}

} // namespace kvferry::transport
