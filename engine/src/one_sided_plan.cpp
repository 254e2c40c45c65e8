// The caller's pass of a one-sided endpoint call (one_sided_plan.hpp).
#include "kvferry/one_sided_plan.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "kvferry/actors/plan.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/transport/packing.hpp"

namespace kvferry {

namespace {

// Records that the call names the peer's region `region` of `bytes` bytes.
void name_region(std::vector<std::uint64_t>& sizes, std::uint64_t region,
                 std::uint64_t bytes) {
  if (sizes.size() <= region)
    sizes.resize(region + 1, 0);
  sizes[region] = bytes;
}

// Pair i checked and made into its extent (virtual offsets, local -> peer
// for a write), for plan_part's loop and for the packing pass
// (packing.hpp): false at a pair at fault, whose index goes to part.bad.
// Records the peer's regions the pairs name into part.remote_sizes.
// Branch-free checks per pair; the region table is looked up again only
// where the descriptors' region changes. Copied into the packing pass: its
// fields are the loop's locals.
class pair_reader {
public:
  pair_reader(const one_sided_call& call, const slice* local,
              const descriptor* remote, one_sided_part& part)
      : local_(local), remote_(remote), sizes_(call.local.data()),
        regions_(call.local.size()), peer_(call.peer_instance),
        write_(call.write), part_(&part) {}

  bool operator()(std::size_t i, transport::copy_extent& out) {
    const slice& s = local_[i];
    const descriptor& d = remote_[i];
    // Region 0 (the placeholder, always in the table) and regions past the
    // table have no bytes for a slice: one unsigned comparison for both.
    const std::uint64_t have =
        s.region - 1 < regions_ - 1 ? sizes_[s.region] : 0;
    const bool ok = (d.owner == peer_) & (s.size == d.size) & (have != 0) &
                    (s.offset <= have) & (s.size <= have - s.offset) &
                    (d.offset <= d.region_bytes) &
                    (d.size <= d.region_bytes - d.offset);
    if (!ok) {
      part_->bad = i;
      return false;
    }
    if (d.region != named_region_ || d.region_bytes != named_bytes_) {
      name_region(part_->remote_sizes, d.region, d.region_bytes);
      named_region_ = d.region;
      named_bytes_ = d.region_bytes;
    }
    const auto here = table_offset(s.region, s.offset);
    const auto there = table_offset(d.region, d.offset);
    out = write_ ? transport::copy_extent{here, there, d.size}
                 : transport::copy_extent{there, here, d.size};
    return true;
  }

private:
  const slice* local_;
  const descriptor* remote_;
  const std::uint64_t* sizes_;
  std::size_t regions_;
  std::uint64_t peer_;
  bool write_;
  one_sided_part* part_;
  std::uint64_t named_region_ = ~std::uint64_t{0}, named_bytes_ = 0;
};

// A part's scratch, emptied for a run.
void reset(one_sided_part& part) {
  part.bad = SIZE_MAX;
  part.bytes = 0;
  std::fill(part.remote_sizes.begin(), part.remote_sizes.end(), 0);
}

// Pairs [begin, end) into out[begin, end): stops at the first pair at
// fault (its index in part.bad), else leaves the part's bytes and the
// peer's regions it names.
void plan_part(const one_sided_call& call, const slice* local,
               const descriptor* remote, std::size_t begin, std::size_t end,
               transport::copy_extent* out, one_sided_part& part) {
  reset(part);
  pair_reader read{call, local, remote, part};
  std::uint64_t bytes = 0;
  for (std::size_t i = begin; i < end; ++i) {
    if (!read(i, out[i]))
      return;
    bytes += out[i].length;
  }
  part.bytes = bytes;
}

// How many parts a call of `n` pairs is cut into.
std::size_t parts_for(const transport::plan_crew* crew, std::size_t n) {
  if (crew == nullptr || n < min_crew_pairs)
    return 1;
  return std::min(crew->size(), n / (min_crew_pairs / 2));
}

// Runs job(0) .. job(count - 1) on the crew (this thread alone for one).
template<class Job>
void run_parts(transport::plan_crew* crew, std::size_t count, Job& job) {
  if (count > 1)
    crew->run(count, job);
  else
    job(0);
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
  if (d.offset > d.region_bytes || d.size > d.region_bytes - d.offset)
    return status{ec::invalid_extent,
                  fmt::format("{}: descriptor #{} (offset {}, {} bytes) "
                              "leaves the peer's region {} of {} bytes",
                              what, i, d.offset, d.size, d.region,
                              d.region_bytes)};
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

namespace {

// The parts' results in call order: the first pair at fault, else the
// call's bytes and the peer's regions it names.
status gather_parts(const one_sided_call& call, items<slice> local,
                    items<descriptor> remote, const one_sided_part* parts,
                    std::size_t count, std::vector<std::uint64_t>& remote_sizes,
                    std::uint64_t& bytes) {
  bytes = 0;
  remote_sizes.clear();
  for (std::size_t k = 0; k < count; ++k) {
    const auto& part = parts[k];
    if (part.bad != SIZE_MAX)
      return pair_error(call, local, remote, part.bad);
    bytes += part.bytes;
    for (std::size_t r = 0; r < part.remote_sizes.size(); ++r)
      if (part.remote_sizes[r] != 0)
        name_region(remote_sizes, r, part.remote_sizes[r]);
  }
  return {};
}

} // namespace

status plan_one_sided(const one_sided_call& call, items<slice> local,
                      items<descriptor> remote, one_sided_plan& out,
                      transport::plan_crew* crew, one_sided_part* parts) {
  const std::size_t n = local.size();
  out.extents.resize(n); // a list of extent_lists::take_sized: nothing to do
  const std::size_t count = parts_for(crew, n);
  auto job = [&](std::size_t k) {
    plan_part(call, local.begin(), remote.begin(), k * n / count,
              (k + 1) * n / count, out.extents.data(), parts[k]);
  };
  run_parts(crew, count, job);
  return gather_parts(call, local, remote, parts, count, out.remote_sizes,
                      out.bytes);
}

status pack_one_sided(const one_sided_call& call, items<slice> local,
                      items<descriptor> remote, std::uint32_t item_bytes,
                      void* buffer, one_sided_pack& out,
                      transport::plan_crew* crew, one_sided_part* parts,
                      transport::packed_part* packs) {
  const std::size_t n = local.size();
  const std::size_t count = parts_for(crew, n);
  const auto edge = transport::packing::region_edges::mask(region_shift);
  auto pack = [&](std::size_t k) {
    reset(parts[k]);
    transport::packing::pack_part_from(
        n, k, count, item_bytes, {edge, edge}, buffer, packs[k],
        pair_reader{call, local.begin(), remote.begin(), parts[k]});
    parts[k].bytes = packs[k].size.copied;
  };
  run_parts(crew, count, pack);
  if (auto bad = gather_parts(call, local, remote, parts, count,
                              out.remote_sizes, out.bytes);
      !bad.ok())
    return bad;
  auto run = [crew](std::size_t parts_count, auto& job) {
    run_parts(crew, parts_count, job);
  };
  out.size = transport::join_parts(n, buffer, packs, count, run);
  return {};
}

} // namespace kvferry
