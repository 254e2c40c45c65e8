#include "kvferry/actors/ipc_table.hpp"

#include <algorithm>
#include <stdexcept>

namespace kvferry {

std::uint64_t address_table::origin() const {
  return bases.empty() ? 0 : *std::min_element(bases.begin(), bases.end());
}

std::uint64_t address_table::span() const {
  std::uint64_t end = origin();
  for (std::size_t i = 0; i < bases.size(); ++i)
    end = std::max(end, bases[i] + sizes[i]);
  return end - origin();
}

transport::region_layout layout_of(const address_table& t,
                                   std::vector<std::uint64_t>& offsets) {
  if (t.bases.size() != t.sizes.size())
    throw std::invalid_argument("layout_of: a table has not one size per base");
  const auto origin = t.origin();
  offsets.resize(t.bases.size());
  for (std::size_t i = 0; i < t.bases.size(); ++i)
    offsets[i] = t.bases[i] - origin;
  transport::region_layout layout;
  layout.offsets = offsets.data();
  layout.sizes = t.sizes.data();
  layout.count = t.sizes.size();
  layout.shift = region_shift;
  return layout;
}

namespace {

// The address offset (from the origin) of virtual offset `v` of a `length`
// bytes extent, or false when it leaves its region.
bool translate(std::uint64_t v, std::uint64_t length, const address_table& t,
               std::uint64_t origin, std::uint64_t& out) {
  const auto at = locate(v);
  if (at.region >= t.bases.size())
    return false;
  const auto size = t.sizes[at.region];
  if (at.offset > size || length > size - at.offset)
    return false;
  out = t.bases[at.region] - origin + at.offset;
  return true;
}

[[noreturn]] void refuse(const std::vector<extent>& virt,
                         const address_table& src, const address_table& dst) {
  // Only on a fault: the second pass finds it and names it.
  for (auto [side, table] : {std::pair{extent_side::source, &src},
                             std::pair{extent_side::destination, &dst}})
    if (auto bad = check_table_extents(virt, side, table->sizes))
      throw std::invalid_argument(*bad);
  throw std::invalid_argument("to_address_plan: an extent leaves its region");
}

} // namespace

address_plan to_address_plan(const std::vector<extent>& virt,
                             const address_table& src,
                             const address_table& dst) {
  if (src.bases.size() != src.sizes.size() ||
      dst.bases.size() != dst.sizes.size())
    throw std::invalid_argument(
        "to_address_plan: a table has not one size per base");
  address_plan plan;
  plan.src_origin = src.origin();
  plan.dst_origin = dst.origin();
  plan.src_span = src.span();
  plan.dst_span = dst.span();
  plan.extents.resize(virt.size());
  for (std::size_t i = 0; i < virt.size(); ++i) {
    const auto& e = virt[i];
    auto& out = plan.extents[i];
    out.length = e.length;
    if (!translate(e.src_offset, e.length, src, plan.src_origin,
                   out.src_offset) ||
        !translate(e.dst_offset, e.length, dst, plan.dst_origin,
                   out.dst_offset))
      refuse(virt, src, dst);
  }
  return plan;
}

} // namespace kvferry
