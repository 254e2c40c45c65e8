// Copy plans: bounds checks, coalescing and the work-item partition the GPU
// kernel relies on (every byte copied exactly once).
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <stdexcept>
#include <thread>

#include <doctest/doctest.h>

#include "kvferry/transport/copy_plan.hpp"
#include "kvferry/transport/extent_lists.hpp"
#include "kvferry/transport/plan_crew.hpp"
#include "kvferry/transport/table_plan.hpp"

using namespace kvferry::transport;

namespace {

// Byte-level map dst offset -> src offset of a plan's extents or work items
// (both have src_offset, dst_offset, length); fails on a byte written twice.
template<class Piece>
std::map<std::uint64_t, std::uint64_t>
byte_map(const std::vector<Piece>& pieces) {
  std::map<std::uint64_t, std::uint64_t> m;
  bool each_byte_once = true;
  for (const auto& p : pieces)
    for (std::uint64_t b = 0; b < p.length; ++b)
      each_byte_once &= m.emplace(p.dst_offset + b, p.src_offset + b).second;
  REQUIRE(each_byte_once);
  return m;
}

std::vector<copy_extent> random_plan(std::mt19937_64& rng, std::size_t n) {
  std::vector<copy_extent> plan;
  std::uint64_t src = 0, dst = 0;
  std::uniform_int_distribution<std::uint64_t> len(0, 3000), gap(0, 3);
  for (std::size_t i = 0; i < n; ++i) {
    const auto l = len(rng);
    plan.push_back({src, dst, l});
    src += l + gap(rng) * 7; // sometimes adjacent, sometimes not
    dst += l + gap(rng) * 5;
  }
  std::shuffle(plan.begin(), plan.end(), rng);
  return plan;
}

} // namespace

TEST_CASE("extents inside both regions pass the bounds check") {
  std::vector<copy_extent> plan{{0, 0, 100}, {100, 900, 100}, {1000, 0, 0}};
  CHECK_FALSE(check_extents(plan, 1000, 1000).has_value());
}

TEST_CASE("an extent past either region is named with its index and bounds") {
  std::vector<copy_extent> plan{{0, 0, 10}, {95, 0, 10}};
  auto problem = check_extents(plan, 100, 1000);
  REQUIRE(problem.has_value());
  CHECK(problem->find("extent #1") != std::string::npos);
  CHECK(problem->find("source region of 100 bytes") != std::string::npos);

  plan = {{0, 995, 10}};
  problem = check_extents(plan, 100, 1000);
  REQUIRE(problem.has_value());
  CHECK(problem->find("destination region of 1000 bytes") != std::string::npos);
}

TEST_CASE("a one-sided check looks at that side only, with the same "
          "message") {
  // A receiver checks an announcement against its own region: the sender's
  // source offsets are not its business.
  const std::vector<copy_extent> plan{{0, 0, 100}, {5000, 900, 100}};
  CHECK_FALSE(check_extents(plan, extent_side::destination, 1000).has_value());
  auto problem = check_extents(plan, extent_side::source, 1000);
  REQUIRE(problem.has_value());
  CHECK(*problem == check_extents(plan, 1000, 1000));
  CHECK(problem->find("extent #1 (src_offset 5000, dst_offset 900, length "
                      "100) ends past the source region of 1000 bytes") !=
        std::string::npos);
  // offset + length overflows 64 bits: still rejected.
  problem = check_extents({{0, ~0ull - 5, 10}}, extent_side::destination, 1000);
  REQUIRE(problem.has_value());
  CHECK(problem->find("destination region") != std::string::npos);
}

TEST_CASE("offsets that would wrap around are rejected, not wrapped") {
  std::vector<copy_extent> plan{{~0ull - 4, 0, 16}};
  CHECK(check_extents(plan, ~0ull, 1000).has_value());
  plan = {{0, 8, ~0ull}};
  CHECK(check_extents(plan, ~0ull, ~0ull).has_value());
}

TEST_CASE(
    "coalescing merges runs contiguous on both sides and keeps every byte") {
  std::vector<copy_extent> plan{
      {4096, 0, 4096},           {8192, 4096, 4096},
      {0, 8192, 4096},           {4096 * 3, 4096 * 3, 0},
      {4096, 8192 + 4096, 4096}, {8192, 8192 + 8192, 100}};
  const auto merged = coalesce(plan);
  // {4096->0}+{8192->4096} continue each other,
  // {0->8192}+{4096->12288}+{8192->16384} too (the empty extent between them is
  // dropped).
  REQUIRE(merged.size() == 2);
  CHECK(merged[0] == copy_extent{4096, 0, 8192});
  CHECK(merged[1] == copy_extent{0, 8192, 8192 + 100});
  CHECK(byte_map(merged) == byte_map(plan));
}

TEST_CASE(
    "coalescing keeps extents that are not neighbours in plan order apart") {
  std::vector<copy_extent> plan{{0, 0, 16}, {32, 32, 16}, {16, 16, 16}};
  CHECK(coalesce(plan).size() == 3);
}

TEST_CASE("coalescing random plans never changes the bytes copied") {
  std::mt19937_64 rng{42};
  for (int round = 0; round < 8; ++round) {
    auto plan = random_plan(rng, 40);
    if (round % 2 == 0) // in order: many neighbours merge
      std::sort(plan.begin(), plan.end(),
                [](auto& a, auto& b) { return a.src_offset < b.src_offset; });
    const auto merged = coalesce(plan);
    CHECK(merged.size() <= plan.size());
    CHECK(total_bytes(merged) == total_bytes(plan));
    CHECK(byte_map(merged) == byte_map(plan));
  }
}

TEST_CASE("destination order sorts a copy and leaves an ordered plan as it "
          "is") {
  std::mt19937_64 rng{11};
  std::vector<copy_extent> scratch;
  const auto plan = random_plan(rng, 50); // shuffled
  const auto& ordered = in_destination_order(plan, scratch);
  CHECK(&ordered == &scratch);
  CHECK(std::is_sorted(ordered.begin(), ordered.end(), [](auto& a, auto& b) {
    return a.dst_offset < b.dst_offset;
  }));
  CHECK(byte_map(ordered) == byte_map(plan));
  // Already in order (and empty): handed back untouched, nothing copied.
  const auto sorted = scratch;
  scratch.clear();
  CHECK(&in_destination_order(sorted, scratch) == &sorted);
  CHECK(scratch.empty());
  const std::vector<copy_extent> none;
  CHECK(&in_destination_order(none, scratch) == &none);
  // Sorting again reuses the scratch buffer's capacity.
  scratch.reserve(plan.size());
  const auto* storage = scratch.data();
  in_destination_order(plan, scratch);
  CHECK(scratch.data() == storage);
}

TEST_CASE(
    "work items cover every byte exactly once and none exceeds the item size") {
  std::mt19937_64 rng{7};
  for (std::uint32_t item_bytes : {16u, 256u, 4096u, 8192u}) {
    const auto plan = coalesce(random_plan(rng, 30));
    const auto items = partition_into_work_items(plan, item_bytes);
    CHECK(items.size() == count_work_items(plan, item_bytes));
    std::uint64_t sum = 0;
    for (const auto& it : items) {
      CHECK(it.length > 0);
      CHECK(it.length <= item_bytes);
      sum += it.length;
    }
    CHECK(sum == total_bytes(plan));
    CHECK(byte_map(items) == byte_map(plan));
  }
}

TEST_CASE("pieces of an aligned extent stay 16-byte aligned; only the last is "
          "short") {
  const std::vector<copy_extent> plan{{16 * 3, 16 * 1000, 10000}};
  const auto items = partition_into_work_items(plan, 4096);
  REQUIRE(items.size() == 3);
  for (const auto& it : items) {
    CHECK(it.src_offset % 16 == 0);
    CHECK(it.dst_offset % 16 == 0);
  }
  CHECK(items[0].length == 4096);
  CHECK(items[2].length == 10000 - 2 * 4096);
}

TEST_CASE("an item size that is not a multiple of 16 is refused") {
  CHECK_THROWS_AS(partition_into_work_items({{0, 0, 10}}, 100),
                  std::invalid_argument);
  CHECK_THROWS_AS(partition_into_work_items({{0, 0, 10}}, 0),
                  std::invalid_argument);
}

// ---- the packed plan and the kernel's item -> extent search ----

namespace {

constexpr std::uint64_t no_limit = ~0ull; // regions as large as offsets go

// A packed plan in an 8-byte aligned host buffer, as the copy engine stages it.
struct packed_plan {
  std::vector<std::uint64_t> buffer;
  packed_plan_size size;
  packed_plan_view view;
  packed_plan(const std::vector<copy_extent>& plan, std::uint32_t item_bytes)
      : buffer((packed_plan_bytes(plan.size()) + 7) / 8),
        size(pack_plan(plan, item_bytes, no_limit, no_limit, buffer.data())),
        view(packed_plan_view::in(buffer.data(), size.extents)) {}
  copy_work_item item(std::uint32_t i, std::uint32_t item_bytes) const {
    return work_item_of_packed(view.extents, view.first_item, size.extents,
                               item_bytes, i);
  }
};

bool same_item(const copy_work_item& a, const copy_work_item& b) {
  return a.src_offset == b.src_offset && a.dst_offset == b.dst_offset &&
         a.length == b.length;
}

// The extent of `item` counted the kernel's way but probing on the host.
std::uint32_t find_on_host(const packed_plan& p, std::uint32_t lo,
                           std::uint32_t item) {
  return find_extent_of_item(
      lo, p.size.extents,
      [&](std::uint32_t l, std::uint32_t step, std::uint32_t h) {
        std::uint32_t count = 0;
        for (std::uint32_t k = 0; k < extent_search_fanout; ++k)
          count += k * step < h - l && p.view.first_item[l + k * step] <= item;
        return count;
      });
}

} // namespace

TEST_CASE("the packed plan maps every item index to the same item the host cut "
          "would") {
  std::mt19937_64 rng{11};
  for (std::uint32_t item_bytes : {16u, 256u, 4096u, 8192u}) {
    for (std::size_t n : {1u, 2u, 31u, 32u, 33u, 300u, 1100u}) {
      CAPTURE(item_bytes);
      CAPTURE(n);
      const auto plan = random_plan(rng, n);
      const packed_plan packed{plan, item_bytes};
      const auto merged = coalesce(plan);
      REQUIRE(packed.size.extents == merged.size());
      for (std::uint32_t k = 0; k < packed.size.extents; ++k)
        CHECK(packed.view.extents[k] == merged[k]);
      const auto items = partition_into_work_items(merged, item_bytes);
      REQUIRE(packed.size.items == items.size());
      CHECK(packed.view.first_item[packed.size.extents] == items.size());
      bool all_same = true;
      for (std::uint32_t i = 0; i < items.size(); ++i)
        all_same &= same_item(packed.item(i, item_bytes), items[i]);
      CHECK(all_same);
    }
  }
}

TEST_CASE(
    "many one-item extents need several search rounds and still map exactly") {
  // 70000 separate 4 KiB blocks with 8 KiB items: one item per extent, and
  // the search narrows 70000 -> 2188 -> 69 -> 3 -> 1.
  std::vector<copy_extent> plan;
  for (std::uint64_t b = 0; b < 70000; ++b)
    plan.push_back({b * 8192, (69999 - b) * 4096 * 3, 4096});
  const packed_plan packed{plan, 8192};
  REQUIRE(packed.size.extents == 70000);
  REQUIRE(packed.size.items == 70000);
  bool all_same = true;
  for (std::uint32_t i = 0; i < 70000; ++i)
    all_same &= same_item(
        packed.item(i, 8192),
        copy_work_item{plan[i].src_offset, plan[i].dst_offset, 4096, 0});
  CHECK(all_same);
}

TEST_CASE("a warp's search from its previous extent finds what a fresh search "
          "finds") {
  std::mt19937_64 rng{12};
  const packed_plan packed{random_plan(rng, 2000), 256};
  for (std::uint32_t stride : {1u, 7u, 2112u, 8448u}) {
    for (std::uint32_t warp = 0; warp < 3; ++warp) {
      std::uint32_t extent = 0;
      bool all_same = true;
      for (std::uint32_t i = warp; i < packed.size.items; i += stride) {
        extent = find_on_host(packed, extent, i);
        all_same &= extent == find_on_host(packed, 0, i);
        all_same &= packed.view.first_item[extent] <= i &&
                    i < packed.view.first_item[extent + 1];
      }
      CHECK(all_same);
    }
  }
}

TEST_CASE("empty plans pack to no items") {
  for (const auto& plan : {std::vector<copy_extent>{},
                           std::vector<copy_extent>{{5, 7, 0}, {0, 0, 0}}}) {
    const packed_plan packed{plan, 8192};
    CHECK(packed.size.extents == 0);
    CHECK(packed.size.items == 0);
    CHECK(packed.view.first_item[0] == 0);
    CHECK(packed.size.bytes() == sizeof(std::uint32_t));
    CHECK_THROWS_AS(packed.item(0, 8192), std::out_of_range);
  }
}

TEST_CASE("one huge extent: items at its start, middle and odd-sized end") {
  const std::uint64_t length = (1ull << 40) + 5; // 1 TiB + 5 bytes
  const packed_plan packed{{{16, 32, length}}, 8192};
  REQUIRE(packed.size.extents == 1);
  REQUIRE(packed.size.items == (1u << 27) + 1);
  CHECK(same_item(packed.item(0, 8192), copy_work_item{16, 32, 8192, 0}));
  CHECK(same_item(
      packed.item(12345, 8192),
      copy_work_item{16 + 12345ull * 8192, 32 + 12345ull * 8192, 8192, 0}));
  CHECK(same_item(packed.item(1u << 27, 8192),
                  copy_work_item{16 + (1ull << 40), 32 + (1ull << 40), 5, 0}));
  CHECK_THROWS_AS(packed.item((1u << 27) + 1, 8192), std::out_of_range);
}

TEST_CASE("a plan of 2^32 work items or more is refused, not wrapped") {
  std::vector<std::uint64_t> buffer(16);
  const std::vector<copy_extent> plan{
      {0, 0, 1ull << 44}}; // 2^32 items of 4 KiB
  CHECK_THROWS_AS(pack_plan(plan, 4096, no_limit, no_limit, buffer.data()),
                  std::invalid_argument);
  CHECK_THROWS_AS(
      pack_plan({{0, 0, 10}}, 100, no_limit, no_limit, buffer.data()),
      std::invalid_argument);
}

TEST_CASE(
    "packing checks the bounds in its pass, with check_extents' message") {
  std::vector<std::uint64_t> buffer(64);
  const std::vector<copy_extent> plan{{0, 0, 10}, {10, 10, 10}, {95, 0, 10}};
  const auto expected = check_extents(plan, 100, 1000);
  REQUIRE(expected.has_value());
  CHECK_THROWS_WITH_AS(pack_plan(plan, 4096, 100, 1000, buffer.data()),
                       expected->c_str(), std::invalid_argument);
  const std::vector<copy_extent> wraps{{8, ~0ull - 4, 16}};
  CHECK_THROWS_WITH_AS(pack_plan(wraps, 4096, 100, ~0ull, buffer.data()),
                       check_extents(wraps, 100, ~0ull)->c_str(),
                       std::invalid_argument);
  CHECK(pack_plan(plan, 4096, 105, 1000, buffer.data()).extents == 2);
}

TEST_CASE("item counts round up for item sizes that are not powers of two") {
  std::vector<std::uint64_t> buffer(64);
  // 48-byte items: 100 bytes = 3 items, 96 bytes = 2, 1 byte = 1.
  const std::vector<copy_extent> plan{
      {0, 0, 100}, {200, 200, 96}, {400, 400, 1}};
  const auto size = pack_plan(plan, 48, no_limit, no_limit, buffer.data());
  CHECK(size.items == 6);
  CHECK(size.items == count_work_items(plan, 48));
  const auto view = packed_plan_view::in(buffer.data(), size.extents);
  CHECK(view.first_item[1] == 3);
  CHECK(view.first_item[2] == 5);
}

// ---- plans over region tables (table_plan.hpp) ----

namespace {

constexpr unsigned shift = 40;

constexpr std::uint64_t virt(std::uint64_t region, std::uint64_t offset) {
  return (region << shift) + offset;
}

// Two tables: the source's regions 0 and 1 lie back to back in memory (an
// extent ending region 0 and one starting region 1 continue each other once
// translated), region 2 far off; the destination's in reverse order.
struct two_tables {
  std::vector<std::uint64_t> src_offsets{0, 4000, 20000},
      src_sizes{4000, 8000, 3000};
  std::vector<std::uint64_t> dst_offsets{9000, 0}, dst_sizes{5000, 9000};
  region_layout src{src_offsets.data(), src_sizes.data(), 3, shift};
  region_layout dst{dst_offsets.data(), dst_sizes.data(), 2, shift};

  // The translation done by hand, extent by extent.
  std::vector<copy_extent> by_hand(const std::vector<copy_extent>& plan) const {
    std::vector<copy_extent> out;
    const auto mask = (std::uint64_t{1} << shift) - 1;
    for (const auto& e : plan)
      out.push_back({src_offsets[e.src_offset >> shift] + (e.src_offset & mask),
                     dst_offsets[e.dst_offset >> shift] + (e.dst_offset & mask),
                     e.length});
    return out;
  }
};

// Random extents inside the tables' regions: runs of neighbours (which
// coalesce), zero-length ones, and some that end a region.
std::vector<copy_extent> random_table_plan(std::mt19937_64& rng,
                                           const two_tables& t, std::size_t n) {
  std::vector<copy_extent> plan;
  std::uniform_int_distribution<std::uint64_t> len(0, 700), pick(0, 5);
  while (plan.size() < n) {
    const std::uint64_t sr = pick(rng) % 3, dr = pick(rng) % 2;
    const std::uint64_t l = len(rng);
    const std::uint64_t s = t.src_sizes[sr], d = t.dst_sizes[dr];
    if (l > s || l > d)
      continue;
    std::uniform_int_distribution<std::uint64_t> so(0, s - l), dof(0, d - l);
    const std::uint64_t src = pick(rng) == 0 ? s - l : so(rng);
    const std::uint64_t dst = dof(rng);
    plan.push_back({virt(sr, src), virt(dr, dst), l});
    if (pick(rng) < 2 && src + 2 * l <= s && dst + 2 * l <= d) // a neighbour
      plan.push_back({virt(sr, src + l), virt(dr, dst + l), l});
  }
  return plan;
}

std::vector<std::uint64_t> packed_bytes(const std::vector<copy_extent>& plan,
                                        std::uint32_t item_bytes,
                                        const region_layout& src,
                                        const region_layout& dst,
                                        packed_plan_size& size) {
  std::vector<std::uint64_t> buffer((packed_plan_bytes(plan.size()) + 7) / 8);
  size = pack_plan(plan, item_bytes, src, dst, buffer.data());
  return buffer;
}

std::string refusal(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "accepted";
}

} // namespace

TEST_CASE("a plan over region tables packs exactly as its translated extents "
          "would") {
  std::mt19937_64 rng{21};
  const two_tables t;
  for (std::uint32_t item_bytes : {16u, 4096u, 8192u}) {
    for (std::size_t n : {1u, 2u, 33u, 500u, 3000u}) {
      CAPTURE(item_bytes);
      CAPTURE(n);
      const auto plan = random_table_plan(rng, t, n);
      const auto translated = t.by_hand(plan);
      packed_plan_size size;
      const auto fused = packed_bytes(plan, item_bytes, t.src, t.dst, size);
      std::vector<std::uint64_t> reference(
          (packed_plan_bytes(translated.size()) + 7) / 8);
      const auto expected =
          pack_plan(translated, item_bytes, ~0ull, ~0ull, reference.data());
      REQUIRE(size.extents == expected.extents);
      REQUIRE(size.items == expected.items);
      CHECK(std::memcmp(fused.data(), reference.data(), size.bytes()) == 0);
      std::vector<copy_extent> out{{1, 2, 3}}; // overwritten, not appended to
      translate_extents(plan, t.src, t.dst, out);
      CHECK(out == translated);
    }
  }
}

TEST_CASE("extents that continue each other in memory coalesce across a "
          "region edge, others never") {
  const two_tables t;
  // Source region 0 ends where region 1 begins (4000); the destination
  // continues too (region 1 offset 100.. then 150..): one extent.
  const std::vector<copy_extent> across{{virt(0, 3950), virt(1, 100), 50},
                                        {virt(1, 0), virt(1, 150), 30}};
  packed_plan_size size;
  auto packed = packed_bytes(across, 8192, t.src, t.dst, size);
  CHECK(size.extents == 1);
  CHECK(packed_plan_view::in(packed.data(), 1).extents[0] ==
        copy_extent{3950, 100, 80});
  // The same virtual neighbours in regions that are not neighbours in
  // memory (source regions 1 and 2) stay two extents.
  const std::vector<copy_extent> apart{{virt(1, 7950), virt(1, 100), 50},
                                       {virt(2, 0), virt(1, 150), 30}};
  packed_bytes(apart, 8192, t.src, t.dst, size);
  CHECK(size.extents == 2);
  CHECK(size.items == 2);
}

TEST_CASE("an extent outside its region is refused with check_table_side's "
          "message, by the packing pass and by translate_extents") {
  const two_tables t;
  std::vector<std::uint64_t> buffer(64);
  const std::vector<std::vector<copy_extent>> bad{
      // the destination's region 1 has 9000 bytes
      {{virt(0, 0), virt(1, 0), 16}, {virt(0, 16), virt(1, 0), 9001}},
      // the source table has 3 regions
      {{virt(3, 0), virt(0, 0), 16}},
      // an offset plus a length that would wrap
      {{virt(2, 8), virt(0, 0), ~0ull - 4}},
      // past the region by one byte, at its very end
      {{virt(2, 3000), virt(0, 0), 1}}};
  for (const auto& plan : bad) {
    CAPTURE(plan.size());
    auto expected = check_table_side(plan, extent_side::source, t.src);
    if (!expected)
      expected = check_table_side(plan, extent_side::destination, t.dst);
    REQUIRE(expected.has_value());
    CHECK(refusal([&] {
            pack_plan(plan, 8192, t.src, t.dst, buffer.data());
          }) == *expected);
    std::vector<copy_extent> out;
    CHECK(refusal([&] { translate_extents(plan, t.src, t.dst, out); }) ==
          *expected);
  }
  // A type of its own, so that the transfer actor reports the caller's
  // plan at fault (invalid_extent), not the engine.
  CHECK_THROWS_AS(pack_plan(bad[0], 8192, t.src, t.dst, buffer.data()),
                  extent_error);
  CHECK_THROWS_AS(pack_plan({{0, 0, 17}}, 8192, 16, 64, buffer.data()),
                  extent_error);
  CHECK(*check_table_side(bad[0], extent_side::destination, t.dst) ==
        "extent #1 (destination offset 1099511627776 = region 1 + 0, length "
        "9001) leaves destination region 1 of 9000 bytes");
  CHECK(*check_table_side(bad[1], extent_side::source, t.src) ==
        "extent #0 (source offset 3298534883328 = region 3 + 0, length 16) "
        "names region 3, but the source table has 3 regions");
  // A zero-length extent at a region's end fits.
  CHECK(pack_plan({{virt(2, 3000), virt(1, 9000), 0}}, 8192, t.src, t.dst,
                  buffer.data())
            .extents == 0);
}

// ---- plans in virtual offsets, translated by the kernel (issue #16) ----

namespace {

// Every (destination byte, source byte) the items of a packed plan copy,
// sorted; `item(i)` is work item i as the kernel runs it.
template<typename Item>
std::vector<std::pair<std::uint64_t, std::uint64_t>>
bytes_copied(std::uint32_t items, Item&& item) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
  for (std::uint32_t i = 0; i < items; ++i) {
    const copy_work_item w = item(i);
    for (std::uint32_t b = 0; b < w.length; ++b)
      out.emplace_back(w.dst_offset + b, w.src_offset + b);
  }
  std::sort(out.begin(), out.end());
  return out;
}

} // namespace

TEST_CASE("a plan packed in virtual offsets, translated item by item through "
          "region bases, copies what the translated plan copies") {
  std::mt19937_64 rng{16};
  const two_tables t;
  const region_bases src{t.src_offsets.data(), 3, shift},
      dst{t.dst_offsets.data(), 2, shift};
  for (std::uint32_t item_bytes : {16u, 64u, 8192u}) {
    for (std::size_t n : {1u, 2u, 33u, 400u}) {
      CAPTURE(item_bytes);
      CAPTURE(n);
      const auto plan = random_table_plan(rng, t, n);
      std::vector<std::uint64_t> virtual_buffer(
          (packed_plan_bytes(plan.size()) + 7) / 8);
      const auto size = pack_virtual_plan(plan, item_bytes, t.src, t.dst,
                                          virtual_buffer.data());
      packed_plan_size translated_size;
      const auto translated =
          packed_bytes(plan, item_bytes, t.src, t.dst, translated_size);
      CHECK(size.copied == translated_size.copied);
      const auto v = packed_plan_view::in(virtual_buffer.data(), size.extents);
      for (std::uint32_t e = 0; e < size.extents; ++e) { // one region each
        const auto& x = v.extents[e];
        CHECK(x.length > 0);
        CHECK((x.src_offset >> shift) ==
              ((x.src_offset + x.length - 1) >> shift));
        CHECK((x.dst_offset >> shift) ==
              ((x.dst_offset + x.length - 1) >> shift));
      }
      const auto tv =
          packed_plan_view::in(translated.data(), translated_size.extents);
      CHECK(bytes_copied(size.items, [&](std::uint32_t i) {
              return work_item_of_virtual(v.extents, v.first_item, size.extents,
                                          item_bytes, i, src, dst);
            }) == bytes_copied(translated_size.items, [&](std::uint32_t i) {
              return work_item_of_packed(tv.extents, tv.first_item,
                                         translated_size.extents, item_bytes,
                                         i);
            }));
    }
  }
}

TEST_CASE("a virtual plan coalesces within a region, never across a "
          "region's start, and refuses what pack_plan refuses") {
  // Regions of exactly 2^12 bytes: region 0's end is region 1's start in
  // virtual offsets, while in memory they lie apart.
  constexpr unsigned small = 12;
  const std::vector<std::uint64_t> offsets{0, 10000}, sizes{4096, 4096};
  const region_layout layout{offsets.data(), sizes.data(), 2, small};
  const auto at = [](std::uint64_t region, std::uint64_t offset) {
    return (region << small) + offset;
  };
  const std::vector<copy_extent> plan{{at(0, 4000), at(0, 4000), 96},
                                      {at(1, 0), at(1, 0), 100},
                                      {at(1, 100), at(1, 100), 50}};
  std::vector<std::uint64_t> buffer(64);
  const auto size =
      pack_virtual_plan(plan, 8192, layout, layout, buffer.data());
  REQUIRE(size.extents == 2);
  REQUIRE(size.items == 2);
  CHECK(size.copied == 246);
  const auto v = packed_plan_view::in(buffer.data(), 2);
  CHECK(v.extents[0] == copy_extent{at(0, 4000), at(0, 4000), 96});
  CHECK(v.extents[1] == copy_extent{at(1, 0), at(1, 0), 150});
  const region_bases bases{offsets.data(), 2, small};
  const auto second =
      work_item_of_virtual(v.extents, v.first_item, 2, 8192, 1, bases, bases);
  CHECK(second.src_offset == 10000);
  CHECK(second.dst_offset == 10000);
  CHECK(second.length == 150);

  const two_tables t; // pack_plan's refusals, word for word
  const std::vector<copy_extent> bad{{virt(0, 0), virt(1, 0), 16},
                                     {virt(0, 16), virt(1, 0), 9001}};
  CHECK(refusal([&] {
          pack_virtual_plan(bad, 8192, t.src, t.dst, buffer.data());
        }) ==
        refusal([&] { pack_plan(bad, 8192, t.src, t.dst, buffer.data()); }));
  CHECK_THROWS_AS(pack_virtual_plan(bad, 8192, t.src, t.dst, buffer.data()),
                  extent_error);
}

TEST_CASE("a region layout's span, and layouts that cannot be read") {
  const two_tables t;
  CHECK(t.src.span() == 23000);
  CHECK(t.dst.span() == 14000);
  CHECK(region_layout{}.span() == 0);
  std::vector<std::uint64_t> buffer(64);
  auto no_shift = t.src;
  no_shift.shift = 0;
  CHECK_THROWS_AS(pack_plan({}, 8192, no_shift, t.dst, buffer.data()),
                  std::invalid_argument);
  auto no_offsets = t.dst;
  no_offsets.offsets = nullptr;
  CHECK_THROWS_AS(pack_plan({}, 8192, t.src, no_offsets, buffer.data()),
                  std::invalid_argument);
  // Sizes alone are enough for a check.
  CHECK_FALSE(
      check_table_side({{virt(1, 0), 0, 9000}}, extent_side::source, no_offsets)
          .has_value());
}

// ---- large plans packed in parts (pack_plan_in_parts, plan_crew) ----

namespace {

// The extents and item indices of a packed plan in `buffer`.
struct unpacked {
  std::vector<copy_extent> extents;
  std::vector<std::uint32_t> first_item;
};

unpacked unpack(const std::vector<std::uint64_t>& buffer,
                packed_plan_size size) {
  const auto view = packed_plan_view::in(buffer.data(), size.extents);
  return {{view.extents, view.extents + size.extents},
          {view.first_item, view.first_item + size.extents + 1}};
}

// Runs a phase's parts one after the other, as pack_plan_in_parts allows.
auto in_a_loop = [](std::size_t count, auto& job) {
  for (std::size_t k = 0; k < count; ++k)
    job(k);
};

} // namespace

TEST_CASE("a plan packed in parts copies exactly what pack_plan's copies, "
          "on one thread or on a crew") {
  std::mt19937_64 rng{31};
  const two_tables t;
  plan_crew crew{4};
  std::vector<packed_part> parts(5);
  auto on_the_crew = [&](std::size_t count, auto& job) {
    crew.run(count, job);
  };
  for (std::size_t n : {0u, 1u, 7u, 100u, 3000u}) {
    const auto plan = random_table_plan(rng, t, n);
    packed_plan_size whole_size;
    const auto whole =
        unpack(packed_bytes(plan, 4096, t.src, t.dst, whole_size), whole_size);
    for (std::size_t count = 1; count <= 5; ++count) {
      CAPTURE(n);
      CAPTURE(count);
      std::vector<std::uint64_t> a((packed_plan_bytes(plan.size()) + 7) / 8),
          b(a.size());
      const auto in_loop = pack_plan_in_parts(
          plan, 4096, t.src, t.dst, a.data(), parts.data(), count, in_a_loop);
      const auto on_crew = pack_plan_in_parts(
          plan, 4096, t.src, t.dst, b.data(), parts.data(), count, on_the_crew);
      REQUIRE(in_loop.extents == on_crew.extents);
      CHECK(std::memcmp(a.data(), b.data(), in_loop.bytes()) == 0);
      // The pass counts the bytes too: no caller needs a pass of its own.
      CHECK(in_loop.copied == total_bytes(plan));
      CHECK(on_crew.copied == total_bytes(plan));
      CHECK(whole_size.copied == total_bytes(plan));
      const auto joined = unpack(a, in_loop);
      // Neighbours split by a part edge are the only difference: coalesced,
      // the same extents; every extent's items counted where they belong.
      CHECK(coalesce(joined.extents) == whole.extents);
      CHECK(in_loop.extents <= whole_size.extents + count - 1);
      CHECK(in_loop.items == count_work_items(joined.extents, 4096));
      CHECK(joined.first_item.front() == 0);
      bool counted = true;
      for (std::size_t k = 0; k < joined.extents.size(); ++k)
        counted &= joined.first_item[k + 1] - joined.first_item[k] ==
                   count_work_items({joined.extents[k]}, 4096);
      CHECK(counted);
      CHECK(joined.first_item.back() == in_loop.items);
    }
  }
}

TEST_CASE("a plan packed in parts names its first bad extent, whichever part "
          "holds it") {
  const two_tables t;
  plan_crew crew{3};
  std::vector<packed_part> parts(4);
  std::vector<copy_extent> plan(400, copy_extent{virt(0, 0), virt(0, 0), 16});
  plan[250] = {virt(7, 0), virt(0, 0), 16};    // part 2 of 4
  plan[380] = {virt(0, 0), virt(1, 9000), 16}; // part 3
  const auto expected =
      check_table_side(plan, extent_side::source, t.src).value();
  CHECK(expected.find("extent #250") == 0);
  std::vector<std::uint64_t> buffer((packed_plan_bytes(plan.size()) + 7) / 8);
  CHECK(refusal([&] {
          pack_plan_in_parts(
              plan, 4096, t.src, t.dst, buffer.data(), parts.data(), 4,
              [&](std::size_t count, auto& job) { crew.run(count, job); });
        }) == expected);
  // The crew works on after a part threw.
  std::atomic<int> ran{0};
  auto count_one = [&](std::size_t) { ++ran; };
  crew.run(4, count_one);
  CHECK(ran == 4);
}

namespace {

// `n` extents (n <= 250) of 16 or 32 bytes in 32-byte slots of the tables'
// region 1 whose destinations never continue their sources' neighbours:
// nothing coalesces, as with KV blocks at scattered slots.
std::vector<copy_extent> scattered_table_plan(std::size_t n) {
  std::vector<copy_extent> plan;
  for (std::uint64_t i = 0; i < n; ++i)
    plan.push_back(
        {virt(1, i * 32), virt(1, (i * 7 % n) * 32), i % 3 == 0 ? 32u : 16u});
  return plan;
}

// The packed plan's bytes, packed in `count` parts on `crew` (and then in a
// loop, which must give the same bytes).
std::vector<std::uint64_t> packed_in_parts(const std::vector<copy_extent>& plan,
                                           const two_tables& t, plan_crew& crew,
                                           std::size_t count,
                                           packed_plan_size& size) {
  std::vector<packed_part> parts(count);
  std::vector<std::uint64_t> a((packed_plan_bytes(plan.size()) + 7) / 8),
      b(a.size());
  size =
      pack_plan_in_parts(plan, 16, t.src, t.dst, a.data(), parts.data(), count,
                         [&](std::size_t n, auto& job) { crew.run(n, job); });
  const auto looped = pack_plan_in_parts(plan, 16, t.src, t.dst, b.data(),
                                         parts.data(), count, in_a_loop);
  REQUIRE(looped.extents == size.extents);
  CHECK(std::memcmp(a.data(), b.data(), size.bytes()) == 0);
  return a;
}

} // namespace

TEST_CASE("a plan packed in parts in place is pack_plan's to the byte when no "
          "extent continues another across a part edge") {
  const two_tables t;
  plan_crew crew{3};
  auto same_as_whole = [&](const std::vector<copy_extent>& plan) {
    packed_plan_size whole_size;
    const auto whole = packed_bytes(plan, 16, t.src, t.dst, whole_size);
    for (std::size_t count = 1; count <= 4; ++count) {
      CAPTURE(count);
      packed_plan_size size;
      const auto parts = packed_in_parts(plan, t, crew, count, size);
      REQUIRE(size.extents == whole_size.extents);
      CHECK(size.items == whole_size.items);
      CHECK(size.copied == whole_size.copied);
      CHECK(std::memcmp(parts.data(), whole.data(), size.bytes()) == 0);
    }
  };
  // Nothing coalesces: every part packs into its place.
  same_as_whole(scattered_table_plan(240));
  // Parts of 240 extents: edges at 60, 120, 180 (4 parts), 80 and 160 (3),
  // 120 (2). A merge or a dropped extent in one part moves the later ones.
  for (std::size_t at : {5u, 100u, 200u, 239u}) {
    CAPTURE(at);
    auto merged = scattered_table_plan(240);
    merged[at - 1].length = 32; // so that extent `at` continues it
    merged[at].dst_offset = merged[at - 1].dst_offset + 32;
    same_as_whole(merged);
    auto dropped = scattered_table_plan(240);
    dropped[at].length = 0;
    same_as_whole(dropped);
  }
}

TEST_CASE("a plan packed in parts in place names its first bad extent in "
          "whichever part, and the next plan packs whole") {
  const two_tables t;
  plan_crew crew{3};
  std::vector<packed_part> parts(4);
  const auto good = scattered_table_plan(240);
  std::vector<std::uint64_t> buffer((packed_plan_bytes(good.size()) + 7) / 8);
  auto pack = [&](const std::vector<copy_extent>& plan) {
    return refusal([&] {
      pack_plan_in_parts(plan, 16, t.src, t.dst, buffer.data(), parts.data(), 4,
                         [&](std::size_t n, auto& job) { crew.run(n, job); });
    });
  };
  for (std::size_t at : {0u, 59u, 60u, 130u, 239u}) { // parts 0, 0, 1, 2, 3
    CAPTURE(at);
    auto source = good, destination = good;
    source[at].src_offset = virt(7, 0);         // no region 7
    destination[at].dst_offset = virt(1, 8990); // leaves 9000 bytes
    if (at + 70 < destination.size()) // a later part's fault: not named
      destination[at + 70].src_offset = virt(9, 0);
    CHECK(pack(source) ==
          check_table_side(source, extent_side::source, t.src).value());
    CHECK(
        pack(destination) ==
        check_table_side(destination, extent_side::destination, t.dst).value());
    CHECK(pack(destination).find("extent #" + std::to_string(at) + " ") == 0);
  }
  packed_plan_size whole_size, size;
  const auto whole = packed_bytes(good, 16, t.src, t.dst, whole_size);
  const auto again = packed_in_parts(good, t, crew, 4, size);
  REQUIRE(size.extents == whole_size.extents);
  CHECK(std::memcmp(again.data(), whole.data(), size.bytes()) == 0);
}

TEST_CASE("a plan crew runs each part once per run, whatever the number of "
          "parts, and refuses more parts than it has threads") {
  plan_crew crew{2};
  CHECK(crew.size() == 3);
  for (std::size_t parts : {3u, 1u, 2u, 3u}) {
    std::vector<int> runs(3, 0);
    auto note = [&](std::size_t k) { ++runs[k]; };
    crew.run(parts, note);
    for (std::size_t k = 0; k < 3; ++k)
      CHECK(runs[k] == (k < parts ? 1 : 0));
  }
  auto fails_high = [](std::size_t k) {
    if (k >= 1)
      throw std::runtime_error("part " + std::to_string(k));
  };
  CHECK_THROWS_WITH_AS(crew.run(3, fails_high), "part 1", std::runtime_error);
  auto nothing = [](std::size_t) {};
  CHECK_THROWS_AS(crew.run(4, nothing), std::invalid_argument);
  CHECK_THROWS_AS(crew.run(0, nothing), std::invalid_argument);
  plan_crew alone{0};
  int ran = 0;
  auto once = [&](std::size_t) { ++ran; };
  alone.run(1, once);
  CHECK(ran == 1);
}

TEST_CASE("a plan crew's parts go to whichever thread is free: run after "
          "run, each part once, a part's error still its own") {
  plan_crew crew{3};
  std::vector<std::atomic<int>> runs(4);
  for (int round = 0; round < 2000; ++round) {
    const std::size_t parts = 2 + round % 3; // 2, 3 or 4
    for (auto& r : runs)
      r = 0;
    auto count = [&](std::size_t k) {
      ++runs[k];
      if (round % 7 == 0 && k == parts - 1)
        throw std::runtime_error("part " + std::to_string(k));
    };
    if (round % 7 == 0)
      CHECK_THROWS_WITH_AS(crew.run(parts, count),
                           ("part " + std::to_string(parts - 1)).c_str(),
                           std::runtime_error);
    else
      crew.run(parts, count);
    bool once = true;
    for (std::size_t k = 0; k < runs.size(); ++k)
      once &= runs[k] == (k < parts ? 1 : 0);
    REQUIRE(once);
  }
  // The parts run side by side while threads are free: part 0 can wait for
  // the last part.
  std::atomic<bool> last_ran{false};
  auto wait_for_last = [&](std::size_t k) {
    if (k == 3)
      last_ran = true;
    else
      while (!last_ran)
        std::this_thread::yield();
  };
  crew.run(4, wait_for_last);
  CHECK(last_ran);
}

// A vector call's extent list is taken from and given back to extent_lists:
// in steady state the same memory serves call after call, and what is kept
// stays bounded.
TEST_CASE("extent lists are reused, large enough, empty, and bounded") {
  constexpr auto big = extent_lists::min_kept_extents * 4;
  auto first = extent_lists::take(big);
  CHECK(first.empty());
  CHECK(first.capacity() >= big);
  first.assign(big, copy_extent{1, 2, 3});
  const auto* memory = first.data();
  const auto before = extent_lists::kept();
  extent_lists::give(std::move(first));
  CHECK(extent_lists::kept() == before + 1);

  auto again = extent_lists::take(big / 2); // the kept one is large enough
  CHECK(again.data() == memory);
  CHECK(again.empty());
  CHECK(extent_lists::kept() == before);

  // Small lists are malloc's business: not kept.
  std::vector<copy_extent> small(10);
  extent_lists::give(std::move(small));
  CHECK(extent_lists::kept() == before);

  // At most max_kept lists, whatever is given back.
  for (std::size_t i = 0; i < extent_lists::max_kept + 4; ++i)
    extent_lists::give(extent_lists::take(extent_lists::min_kept_extents));
  std::vector<std::vector<copy_extent>> many;
  for (std::size_t i = 0; i < extent_lists::max_kept + 4; ++i)
    many.push_back(extent_lists::take(extent_lists::min_kept_extents));
  for (auto& list : many)
    extent_lists::give(std::move(list));
  CHECK(extent_lists::kept() == extent_lists::max_kept);
  extent_lists::give(std::move(again));
  CHECK(extent_lists::kept() == extent_lists::max_kept);
}

// The caller's pass of a vector endpoint call writes every extent by index
// (on several threads for a large call): it takes a list of the call's size
// whose stale contents it overwrites, without zero-filling 24 bytes per
// extent on every call.
TEST_CASE("an extent list taken sized has exactly that size and reuses a kept "
          "list's memory") {
  constexpr auto big = extent_lists::min_kept_extents * 8;
  auto first = extent_lists::take_sized(big);
  CHECK(first.size() == big);
  first[big - 1] = copy_extent{1, 2, 3};
  const auto* memory = first.data();
  extent_lists::give(std::move(first));
  auto again = extent_lists::take_sized(big); // the kept one, as it was
  CHECK(again.data() == memory);
  CHECK(again.size() == big);
  CHECK(again.back() == copy_extent{1, 2, 3});
  extent_lists::give(std::move(again));
  auto fewer = extent_lists::take_sized(big - 10);
  CHECK(fewer.data() == memory);
  CHECK(fewer.size() == big - 10);
  extent_lists::give(std::move(fewer));
  auto plain = extent_lists::take(big); // take() still hands out an empty one
  CHECK(plain.data() == memory);
  CHECK(plain.empty());
  extent_lists::give(std::move(plain));
}

TEST_CASE("plan threads: a quarter of the cores, 1 to 4, unless "
          "KVFERRY_PLAN_THREADS says otherwise") {
  ::unsetenv("KVFERRY_PLAN_THREADS");
  CHECK(plan_threads(2) == 1);
  CHECK(plan_threads(16) == 4);
  CHECK(plan_threads(128) == 4);
  ::setenv("KVFERRY_PLAN_THREADS", "8", 1);
  CHECK(plan_threads(2) == 8);
  ::setenv("KVFERRY_PLAN_THREADS", "0", 1);
  CHECK_THROWS_WITH_AS(plan_threads(16),
                       doctest::Contains("KVFERRY_PLAN_THREADS=0"),
                       std::invalid_argument);
  ::unsetenv("KVFERRY_PLAN_THREADS");
}
