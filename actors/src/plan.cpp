#include "kvferry/actors/plan.hpp"

#include <algorithm>
#include <stdexcept>
#include <utility>

#include <climits>
#include <fmt/format.h>

#include "kvferry/transport/table_plan.hpp"

namespace kvferry {

std::vector<extent> plan_blocks(const std::vector<std::uint64_t>& src_offsets,
                                const std::vector<std::uint64_t>& dst_offsets,
                                std::uint64_t block_bytes) {
  if (src_offsets.size() != dst_offsets.size())
    throw std::invalid_argument(
        fmt::format("plan_blocks: {} source blocks but {} destination blocks",
                    src_offsets.size(), dst_offsets.size()));
  std::vector<extent> out;
  out.reserve(src_offsets.size());
  for (std::size_t i = 0; i < src_offsets.size(); ++i)
    out.push_back({src_offsets[i], dst_offsets[i], block_bytes});
  return coalesce(std::move(out));
}

std::vector<extent> split_chunks(const std::vector<extent>& extents,
                                 std::uint64_t max_chunk) {
  if (max_chunk == 0)
    throw std::invalid_argument("split_chunks: chunk size must be positive");
  max_chunk = std::min<std::uint64_t>(max_chunk, INT_MAX);
  std::vector<extent> out;
  for (const auto& e : extents) {
    for (std::uint64_t done = 0; done < e.length; done += max_chunk) {
      auto len = std::min(max_chunk, e.length - done);
      out.push_back({e.src_offset + done, e.dst_offset + done, len});
    }
  }
  return out;
}

std::optional<std::string>
check_table_extents(const std::vector<extent>& extents, extent_side side,
                    const std::vector<std::uint64_t>& region_sizes) {
  if (region_sizes.size() == 1)
    return check_extents(extents, side, region_sizes[0]);
  transport::region_layout table;
  table.sizes = region_sizes.data();
  table.count = region_sizes.size();
  table.shift = region_shift;
  return transport::check_table_side(extents, side, table);
}

namespace {

// Whether `length` bytes at virtual offset `v` lie inside one region.
bool inside_table(std::uint64_t v, std::uint64_t length,
                  const std::vector<std::uint64_t>& sizes) {
  const auto at = locate(v);
  return at.region < sizes.size() &&
         transport::fits(at.offset, length, sizes[at.region]);
}

} // namespace

std::optional<std::string>
check_table_extents(const std::vector<extent>& extents,
                    const std::vector<std::uint64_t>& src_sizes,
                    const std::vector<std::uint64_t>& dst_sizes) {
  bool all_fit = true;
  for (const auto& e : extents)
    all_fit &= inside_table(e.src_offset, e.length, src_sizes) &
               inside_table(e.dst_offset, e.length, dst_sizes);
  if (all_fit)
    return std::nullopt;
  if (auto bad = check_table_extents(extents, extent_side::source, src_sizes))
    return bad;
  return check_table_extents(extents, extent_side::destination, dst_sizes);
}

// ---- block_pool

block_pool::block_pool(std::uint64_t block_count, std::uint64_t block_bytes)
    : count_(block_count), block_bytes_(block_bytes), free_(block_count),
      used_bits_((block_count + 63) / 64, 0) {
  if (block_bytes == 0)
    throw std::invalid_argument("block_pool: block size must be positive");
  // Bits past the last block count as used so the scan never returns them.
  if (auto tail = block_count % 64; tail != 0)
    used_bits_.back() = ~std::uint64_t{0} << tail;
}

bool block_pool::allocate(std::uint64_t n, std::vector<std::uint64_t>& out) {
  if (n > free_)
    return false;
  std::uint64_t taken = 0;
  for (auto w = first_maybe_free_word_; w < used_bits_.size() && taken < n;
       ++w) {
    auto& word = used_bits_[w];
    while (word != ~std::uint64_t{0} && taken < n) {
      auto bit = static_cast<std::uint64_t>(__builtin_ctzll(~word));
      word |= std::uint64_t{1} << bit;
      out.push_back((w * 64 + bit) * block_bytes_);
      ++taken;
    }
    if (word == ~std::uint64_t{0} && w == first_maybe_free_word_)
      first_maybe_free_word_ = w + 1;
  }
  free_ -= n;
  return true;
}

void block_pool::release(const std::vector<std::uint64_t>& offsets) {
  for (auto offset : offsets) {
    auto block = offset / block_bytes_;
    if (offset % block_bytes_ != 0 || block >= count_)
      throw std::invalid_argument(fmt::format(
          "block_pool: offset {} is not a block of this pool ({} blocks of {} "
          "bytes)",
          offset, count_, block_bytes_));
    auto& word = used_bits_[block / 64];
    auto mask = std::uint64_t{1} << (block % 64);
    if ((word & mask) == 0)
      throw std::invalid_argument(
          fmt::format("block_pool: block at offset {} freed twice", offset));
    word &= ~mask;
    ++free_;
    first_maybe_free_word_ = std::min(first_maybe_free_word_, block / 64);
  }
}

} // namespace kvferry
