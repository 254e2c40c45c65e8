#include "kvferry/actors/kv_pattern.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>

#include <fmt/format.h>
#define XXH_STATIC_LINKING_ONLY // XXH3_state_t on the stack
#include <xxhash.h>

#include "kv_pattern_device.hpp"
#include "kvferry/actors/kv_stamp.hpp"

namespace kvferry {

void fill_pattern(std::uint8_t* data, std::uint64_t bytes, std::uint64_t seed,
                  std::uint64_t request_id, std::uint32_t layer,
                  std::uint32_t block) {
  // splitmix64 of the coordinates, then an arithmetic sequence: unique per
  // block, and as cheap as a memset.
  std::uint64_t x = seed ^ (request_id * 0x9E3779B97F4A7C15ull) ^
                    (std::uint64_t{layer} << 32) ^ block;
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  x ^= x >> 31;
  auto words = bytes / 8;
  for (std::uint64_t i = 0; i < words; ++i) {
    std::uint64_t v = x + i * 0xD1B54A32D192ED03ull;
    std::memcpy(data + i * 8, &v, 8);
  }
  for (auto i = words * 8; i < bytes; ++i)
    data[i] = static_cast<std::uint8_t>(x >> (8 * (i % 8)));
}

std::uint64_t hash_blocks(const std::uint8_t* base,
                          const std::vector<std::uint64_t>& offsets,
                          std::uint64_t block_bytes) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  for (auto off : offsets)
    XXH3_64bits_update(&state, base + off, block_bytes);
  return XXH3_64bits_digest(&state);
}

namespace detail {

void pattern_device_deleter::operator()(pattern_device* device) const noexcept {
  pattern_device_destroy(device);
}

#ifndef KVFERRY_HAVE_CUDA
// A build without CUDA cannot make a cuda region, so these only run if one
// was made by hand; they say why they cannot work.
pattern_device* pattern_device_create(int, std::size_t) {
  transport::throw_no_cuda("kv pattern on a GPU region");
}
void pattern_device_destroy(pattern_device*) noexcept {
}
pattern_outcome pattern_device_run(pattern_device&, const pattern_launch&,
                                   bool) {
  transport::throw_no_cuda("kv pattern on a GPU region");
}
#endif

} // namespace detail

namespace {

detail::pattern_launch launch_of(const memory_region& region,
                                 const std::vector<std::uint64_t>& offsets,
                                 const pattern_blocks& b) {
  detail::pattern_launch l;
  l.base = region.data();
  l.offsets = offsets.data();
  l.count = offsets.size();
  l.blocks = b;
  return l;
}

using stamp::block_of;
using stamp::layer_of;

// Sampled stamps are visited a group of pages at a time, each group's stamp
// addresses computed and prefetched before any is touched: the pool is far
// larger than the caches, so every stamp is a cache miss (and a TLB miss) of
// its own, and visited one by one those misses follow one another, which
// made a request's fill and check cost more CPU than its bytes on the
// 2-core machine (docs/benchmarks.md). A group's misses overlap instead.
constexpr std::uint64_t stamp_group = 16;

// Calls visit(offset in the block, stamp) for every stamp of block i of
// `b` at `data`, prefetched a group ahead (`write`: for writing).
template<bool write, class Data, class Visit>
void visit_stamps(Data* data, const pattern_blocks& b, std::size_t i,
                  Visit&& visit) {
  auto layer = layer_of(b, i);
  auto block = block_of(b, i);
  const auto pages = stamp::pages(b.block_bytes);
  std::uint64_t at[stamp_group];
  for (std::uint64_t first = 0; first < pages; first += stamp_group) {
    const auto n = std::min(stamp_group, pages - first);
    for (std::uint64_t k = 0; k < n; ++k) {
      at[k] =
          stamp::offset(b.request_id, layer, block, first + k, b.block_bytes);
      __builtin_prefetch(data + at[k], write ? 1 : 0, 0);
    }
    for (std::uint64_t k = 0; k < n; ++k)
      if (!visit(at[k], stamp::of(b.seed, b.request_id, layer, block, first + k,
                                  b.block_bytes)))
        return;
  }
}

// Sampled: writes the stamps of block i of `b` at `data` (kv_stamp.hpp).
void write_stamps(std::uint8_t* data, const pattern_blocks& b, std::size_t i) {
  visit_stamps<true>(data, b, i, [data](std::uint64_t at, stamp::value v) {
    std::memcpy(data + at, &v.lo, 8);
    std::memcpy(data + at + 8, &v.hi, 8);
    return true;
  });
}

// Sampled: whether block i of `b` at `data` carries every stamp it should.
bool stamps_match(const std::uint8_t* data, const pattern_blocks& b,
                  std::size_t i) {
  bool match = true;
  visit_stamps<false>(data, b, i, [&](std::uint64_t at, stamp::value want) {
    stamp::value got;
    std::memcpy(&got.lo, data + at, 8);
    std::memcpy(&got.hi, data + at + 8, 8);
    match = got.lo == want.lo && got.hi == want.hi;
    return match;
  });
  return match;
}

} // namespace

kv_pattern::kv_pattern(std::shared_ptr<memory_region> region)
    : region_(std::move(region)) {
}

kv_pattern::~kv_pattern() = default;

void kv_pattern::check_bounds(const std::vector<std::uint64_t>& offsets,
                              const pattern_blocks& blocks) const {
  if (blocks.blocks_per_layer == 0)
    throw std::invalid_argument("kv pattern: blocks_per_layer is 0");
  for (std::size_t i = 0; i < offsets.size(); ++i)
    if (offsets[i] > region_->size() ||
        region_->size() - offsets[i] < blocks.block_bytes)
      throw std::out_of_range(fmt::format(
          "kv pattern: block {} at offset {} (+{} bytes) lies outside region "
          "'{}' of {} bytes",
          i, offsets[i], blocks.block_bytes, region_->name(), region_->size()));
}

void kv_pattern::fill(const std::vector<std::uint64_t>& offsets,
                      const pattern_blocks& blocks) {
  check_bounds(offsets, blocks);
  if (region_->is_model_only())
    return; // a simulation: no bytes
  if (region_->host_accessible() && blocks.sampled) {
    for (std::size_t i = 0; i < offsets.size(); ++i)
      write_stamps(region_->data() + offsets[i], blocks, i);
    return;
  }
  if (region_->host_accessible()) {
    for (std::size_t i = 0; i < offsets.size(); ++i)
      fill_pattern(region_->data() + offsets[i], blocks.block_bytes,
                   blocks.seed, blocks.request_id, layer_of(blocks, i),
                   block_of(blocks, i));
    return;
  }
  ensure_device(offsets.size());
  last_gpu_ns_ = detail::pattern_device_run(
                     *device_, launch_of(*region_, offsets, blocks), false)
                     .gpu_ns;
}

std::optional<std::uint64_t>
kv_pattern::fill_and_hash(const std::vector<std::uint64_t>& offsets,
                          const pattern_blocks& blocks) {
  // Sampled: the consumer reads the stamps, not a hash of every byte.
  if (!region_->host_accessible() || region_->is_model_only() ||
      blocks.sampled) {
    fill(offsets, blocks);
    return std::nullopt;
  }
  check_bounds(offsets, blocks);
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  for (std::size_t i = 0; i < offsets.size(); ++i) {
    auto* block = region_->data() + offsets[i];
    fill_pattern(block, blocks.block_bytes, blocks.seed, blocks.request_id,
                 layer_of(blocks, i), block_of(blocks, i));
    XXH3_64bits_update(&state, block, blocks.block_bytes);
  }
  return XXH3_64bits_digest(&state);
}

std::optional<std::size_t>
kv_pattern::check(const std::vector<std::uint64_t>& offsets,
                  const pattern_blocks& blocks) {
  check_bounds(offsets, blocks);
  if (region_->is_model_only())
    return std::nullopt; // a simulation: what was not written matches
  if (region_->host_accessible() && blocks.sampled) {
    for (std::size_t i = 0; i < offsets.size(); ++i)
      if (!stamps_match(region_->data() + offsets[i], blocks, i))
        return i;
    return std::nullopt;
  }
  if (region_->host_accessible()) {
    // Regenerate each block next to it: one block of scratch, reused.
    host_scratch_.resize(blocks.block_bytes);
    for (std::size_t i = 0; i < offsets.size(); ++i) {
      fill_pattern(host_scratch_.data(), blocks.block_bytes, blocks.seed,
                   blocks.request_id, layer_of(blocks, i), block_of(blocks, i));
      if (std::memcmp(host_scratch_.data(), region_->data() + offsets[i],
                      blocks.block_bytes) != 0)
        return i;
    }
    return std::nullopt;
  }
  ensure_device(offsets.size());
  auto out = detail::pattern_device_run(
      *device_, launch_of(*region_, offsets, blocks), true);
  last_gpu_ns_ = out.gpu_ns;
  if (out.value == std::numeric_limits<std::uint64_t>::max())
    return std::nullopt;
  return static_cast<std::size_t>(out.value);
}

void kv_pattern::prepare(std::size_t max_blocks) {
  if (!region_->host_accessible() && !region_->is_model_only())
    ensure_device(max_blocks);
}

void kv_pattern::ensure_device(std::size_t max_blocks) {
  if (!device_)
    device_.reset(detail::pattern_device_create(region_->gpu(), max_blocks));
}

} // namespace kvferry
