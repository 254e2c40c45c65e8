// The caller's pass of a one-sided endpoint call (one_sided_plan.hpp).
#include "kvferry/one_sided_plan.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "kvferry/actors/plan.hpp"
#include "kvferry/runtime/error.hpp"

namespace kvferry {

namespace {

// Records that the call names the peer's region `region` of `bytes` bytes.
void name_region(std::vector<std::uint64_t>& sizes, std::uint64_t region,
                 std::uint64_t bytes) {
  if (sizes.size() <= region)
    sizes.resize(region + 1, 0);
  sizes[region] = bytes;
}

// Pairs [begin, end) into out[begin, end): stops at the first pair at
// fault (its index in part.bad), else leaves the part's bytes and the
// peer's regions it names. Branch-free checks per pair; the region table is
// looked up again only where the descriptors' region changes.
void plan_part(const one_sided_call& call, const slice* local,
               const descriptor* remote, std::size_t begin, std::size_t end,
               transport::copy_extent* out, one_sided_part& part) {
  part.bad = SIZE_MAX;
  part.bytes = 0;
  std::fill(part.remote_sizes.begin(), part.remote_sizes.end(), 0);
  const std::uint64_t* sizes = call.local.data();
  const std::size_t regions = call.local.size();
  std::uint64_t bytes = 0;
  std::uint64_t named_region = ~std::uint64_t{0}, named_bytes = 0;
  for (std::size_t i = begin; i < end; ++i) {
    const slice& s = local[i];
    const descriptor& d = remote[i];
    // Region 0 (the placeholder, always in the table) and regions past the
    // table have no bytes for a slice: one unsigned comparison for both.
    const std::uint64_t have = s.region - 1 < regions - 1 ? sizes[s.region] : 0;
    const bool ok = (d.owner == call.peer_instance) & (s.size == d.size) &
                    (have != 0) & (s.offset <= have) &
                    (s.size <= have - s.offset);
    if (!ok) {
      part.bad = i;
      return;
    }
    if (d.region != named_region || d.region_bytes != named_bytes) {
      name_region(part.remote_sizes, d.region, d.region_bytes);
      named_region = d.region;
      named_bytes = d.region_bytes;
    }
    const auto here = table_offset(s.region, s.offset);
    const auto there = table_offset(d.region, d.offset);
    out[i] = call.write ? transport::copy_extent{here, there, d.size}
                        : transport::copy_extent{there, here, d.size};
    bytes += d.size;
  }
  part.bytes = bytes;
}

// The message for pair `i`, which plan_part found at fault.
status pair_error(const one_sided_call& call, items<slice> local,
                  items<descriptor> remote, std::size_t i) {
  const char* what = call.write ? "write" : "read";
  const auto& s = local[i];
  const auto& d = remote[i];
  if (d.owner != call.peer_instance)
    return status{ec::invalid_argument,
                  fmt::format("{}: descriptor #{} belongs to another endpoint "
                              "than connection {} ('{}')",
                              what, i, call.conn, call.peer_name)};
  if (s.size != d.size)
    return status{ec::invalid_argument,
                  fmt::format("{}: local slice #{} has {} bytes, its "
                              "descriptor {}",
                              what, i, s.size, d.size)};
  auto why = slice_misfit(call.local, s, i);
  return status{why.code(), fmt::format("{}: {}", what, why.reason())};
}

} // namespace

status slice_misfit(const std::vector<std::uint64_t>& sizes, const slice& s,
                    std::size_t index) {
  if (slice_inside(sizes, s))
    return {};
  if (s.region == 0 || s.region >= sizes.size() || sizes[s.region] == 0)
    return status{ec::not_found,
                  fmt::format("local slice #{}: no registered region {}", index,
                              s.region)};
  return status{ec::invalid_extent,
                fmt::format("local slice #{} (offset {}, {} bytes) leaves "
                            "region {} of {} bytes",
                            index, s.offset, s.size, s.region,
                            sizes[s.region])};
}

status plan_one_sided(const one_sided_call& call, items<slice> local,
                      items<descriptor> remote, one_sided_plan& out,
                      transport::plan_crew* crew, one_sided_part* parts) {
  const std::size_t n = local.size();
  out.extents.resize(n); // a list of extent_lists::take_sized: nothing to do
  std::size_t count = 1;
  if (crew != nullptr && n >= min_crew_pairs)
    count = std::min(crew->size(), n / (min_crew_pairs / 2));
  auto job = [&](std::size_t k) {
    plan_part(call, local.begin(), remote.begin(), k * n / count,
              (k + 1) * n / count, out.extents.data(), parts[k]);
  };
  if (count > 1)
    crew->run(count, job);
  else
    job(0);
  out.bytes = 0;
  out.remote_sizes.clear();
  for (std::size_t k = 0; k < count; ++k) { // in call order: the first fault
    const auto& part = parts[k];
    if (part.bad != SIZE_MAX)
      return pair_error(call, local, remote, part.bad);
    out.bytes += part.bytes;
    for (std::size_t r = 0; r < part.remote_sizes.size(); ++r)
      if (part.remote_sizes[r] != 0)
        name_region(out.remote_sizes, r, part.remote_sizes[r]);
  }
  return {};
}

} // namespace kvferry
