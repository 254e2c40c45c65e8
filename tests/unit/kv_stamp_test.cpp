// Sampled verification (`kvferry demo --verify sampled`, kv_stamp.hpp) on
// host memory: what a correct copy leaves passes, and each fault a user
// relies on it to catch is caught — a block delivered to the wrong slot, a
// page not copied (stale bytes of an earlier request), a request's blocks
// swapped, a copy that moves only part of each page. The GPU kernel's
// variant: tests/gpu/gpu_kv_test.cpp.
#include <cstring>
#include <set>
#include <vector>

#include <doctest/doctest.h>

#include "kvferry/actors/kv_pattern.hpp"
#include "kvferry/actors/kv_stamp.hpp"

using namespace kvferry;

namespace {

constexpr std::uint64_t block = 65536; // the demo's layer-block: 16 pages
constexpr std::uint32_t bpl = 3;       // 2 layers of 3 blocks per request
constexpr std::uint64_t pool_blocks = 16;

// A producer's pool and a consumer's, and the copy between them that a
// test can break. Block i of a request goes from src[i] to dst[i].
struct pools {
  std::shared_ptr<memory_region> prefill =
      memory_region::allocate_host(pool_blocks * block, "prefill");
  std::shared_ptr<memory_region> decode =
      memory_region::allocate_host(pool_blocks * block, "decode");
  kv_pattern producer{prefill};
  kv_pattern consumer{decode};
  std::vector<std::uint64_t> src{3 * block,  0,         7 * block,
                                 12 * block, 5 * block, 9 * block};
  std::vector<std::uint64_t> dst{1 * block,  8 * block, 2 * block,
                                 15 * block, 4 * block, 10 * block};

  static pattern_blocks request(std::uint64_t id) {
    return {11, id, 0, bpl, block, true};
  }
  // Fills request `id` on the producer's side.
  void fill(std::uint64_t id) { producer.fill(src, request(id)); }
  // Copies `bytes` of page `page` of source block i into destination j.
  void copy_page(std::size_t i, std::size_t j, std::uint64_t page,
                 std::uint64_t from = 0, std::uint64_t to = stamp::page_bytes) {
    auto at = page * stamp::page_bytes;
    std::memcpy(decode->data() + dst[j] + at + from,
                prefill->data() + src[i] + at + from, to - from);
  }
  void copy_block(std::size_t i, std::size_t j) {
    for (std::uint64_t p = 0; p < block / stamp::page_bytes; ++p)
      copy_page(i, j, p);
  }
  void copy_all() {
    for (std::size_t i = 0; i < src.size(); ++i)
      copy_block(i, i);
  }
  std::optional<std::size_t> check(std::uint64_t id) {
    return consumer.check(dst, request(id));
  }
};

} // namespace

TEST_CASE("sampled: a correct copy passes, request after request") {
  pools p;
  for (std::uint64_t id = 100; id < 110; ++id) {
    p.fill(id);
    p.copy_all();
    CHECK_FALSE(p.check(id).has_value());
  }
}

TEST_CASE("sampled: the fill writes a 16-byte stamp per page, nothing else") {
  auto region = memory_region::allocate_host(2 * block, "pool");
  std::memset(region->data(), 0xAB, region->size());
  kv_pattern pattern{region};
  pattern_blocks where{11, 42, 4, 2, block, true};
  pattern.fill({block}, where);
  std::uint64_t changed = 0;
  for (std::uint64_t k = 0; k < region->size(); ++k)
    changed += region->data()[k] != 0xAB;
  CHECK(changed <= 16 * stamp::stamp_bytes); // a byte may be 0xAB by chance
  CHECK(changed > 15 * stamp::stamp_bytes);
  for (std::uint64_t page = 0; page < 16; ++page) {
    auto want = stamp::of(11, 42, 4, 0, page, block);
    auto at = block + stamp::offset(42, 4, 0, page, block);
    CHECK(std::memcmp(region->data() + at, &want.lo, 8) == 0);
    CHECK(std::memcmp(region->data() + at + 8, &want.hi, 8) == 0);
  }
  // Zeroed memory and another seed's stamps do not pass.
  CHECK(pattern.check({0}, where) == std::optional<std::size_t>{0});
  where.seed = 12;
  CHECK(pattern.check({block}, where) == std::optional<std::size_t>{0});
}

TEST_CASE("sampled: a block delivered to the wrong slot is caught") {
  pools p;
  p.fill(1);
  p.copy_all();
  REQUIRE_FALSE(p.check(1).has_value());
  p.fill(2);
  for (std::size_t i = 0; i < p.src.size(); ++i)
    if (i != 4 && i != 5)
      p.copy_block(i, i);
  p.copy_block(4, 5); // block 4 lands in block 5's slot, 5 nowhere
  // Slot 4 still holds request 1's block 4; slot 5 request 2's block 4.
  CHECK(p.check(2) == std::optional<std::size_t>{4});
  p.copy_block(4, 4);
  CHECK(p.check(2) == std::optional<std::size_t>{5});
}

TEST_CASE("sampled: a page not copied (stale data of an earlier request) is "
          "caught") {
  pools p;
  p.fill(1);
  p.copy_all();
  p.fill(2);
  for (std::size_t i = 0; i < p.src.size(); ++i)
    for (std::uint64_t page = 0; page < 16; ++page)
      if (i != 3 || page != 9) // page 9 of block 3 keeps request 1's bytes
        p.copy_page(i, i, page);
  CHECK(p.check(2) == std::optional<std::size_t>{3});
}

TEST_CASE("sampled: a request's blocks swapped are caught") {
  pools p;
  p.fill(5);
  p.copy_all();
  p.copy_block(0, 2); // block 0 and block 2 trade places
  p.copy_block(2, 0);
  CHECK(p.check(5) == std::optional<std::size_t>{0});
  // Across layers too: block 1 of layer 0 and of layer 1.
  p.copy_all();
  p.copy_block(1, 4);
  p.copy_block(4, 1);
  CHECK(p.check(5) == std::optional<std::size_t>{1});
}

TEST_CASE("sampled: a copy that moves only part of each page is caught "
          "within a few requests") {
  // Every request, every page, only the first half is copied: the stamps
  // that fall into the second half (about half of the 96 pages of a
  // request) stay stale.
  pools p;
  for (std::uint64_t id = 1; id <= 4; ++id) {
    p.fill(id);
    for (std::size_t i = 0; i < p.src.size(); ++i)
      for (std::uint64_t page = 0; page < 16; ++page)
        p.copy_page(i, i, page, 0, stamp::page_bytes / 2);
    CHECK(p.check(id).has_value());
  }
  // All but the last 16 bytes of each page: a stamp lands there for 1 page
  // in 256, so a request of 96 pages catches it about one time in three.
  int caught = 0, first = 0;
  for (std::uint64_t id = 10; id < 30; ++id) {
    p.fill(id);
    for (std::size_t i = 0; i < p.src.size(); ++i)
      for (std::uint64_t page = 0; page < 16; ++page)
        p.copy_page(i, i, page, 0, stamp::page_bytes - stamp::stamp_bytes);
    if (p.check(id).has_value() && caught++ == 0)
      first = static_cast<int>(id - 10);
  }
  CAPTURE(first);
  CHECK(caught > 0);
  CHECK(first < 10);
}

TEST_CASE("sampled: over 256 successive requests a page's stamp visits every "
          "16-byte slot once") {
  for (std::uint64_t page : {0, 7, 15}) {
    std::set<std::uint64_t> slots;
    for (std::uint64_t id = 1000; id < 1256; ++id)
      slots.insert(stamp::offset(id, 3, 2, page, block));
    CHECK(slots.size() == 256);
    CHECK(*slots.begin() == page * stamp::page_bytes);
    CHECK(*slots.rbegin() == page * stamp::page_bytes + 4080);
  }
}

TEST_CASE("sampled: a short last page carries a stamp when it has room") {
  CHECK(stamp::pages(65536) == 16);
  CHECK(stamp::pages(4096 + 16) == 2);
  CHECK(stamp::pages(4096 + 15) == 1);
  CHECK(stamp::pages(1004) == 1);
  CHECK(stamp::pages(8) == 0);
  // Inside the block, 16-byte aligned relative to it, for any request.
  for (std::uint64_t id = 0; id < 300; ++id) {
    auto at = stamp::offset(id, 0, 0, 1, 4096 + 40);
    CHECK(at >= 4096);
    CHECK(at + 16 <= 4096 + 40);
    CHECK(at % 16 == 0);
  }
  auto region = memory_region::allocate_host(3 * 1004, "odd");
  kv_pattern pattern{region};
  pattern_blocks where{1, 9, 0, 1, 1004, true};
  std::vector<std::uint64_t> offsets{2 * 1004, 0};
  pattern.fill(offsets, where);
  CHECK_FALSE(pattern.check(offsets, where).has_value());
  std::swap(offsets[0], offsets[1]);
  CHECK(pattern.check(offsets, where) == std::optional<std::size_t>{0});
}

TEST_CASE("sampled: a block of more pages than one prefetched group (16) is "
          "stamped and checked to its last page") {
  constexpr std::uint64_t big = 37 * stamp::page_bytes + 100; // 38 stamps
  auto src = memory_region::allocate_host(2 * big, "prefill");
  auto dst = memory_region::allocate_host(2 * big, "decode");
  kv_pattern producer{src}, consumer{dst};
  pattern_blocks where{5, 3, 0, 2, big, true};
  std::vector<std::uint64_t> at{0, big};
  producer.fill(at, where);
  std::memcpy(dst->data(), src->data(), 2 * big);
  CHECK_FALSE(consumer.check(at, where).has_value());
  // The last page of block 1, in the third group, not copied: caught.
  auto last = big + 37 * stamp::page_bytes;
  std::memset(dst->data() + last, 0, big - 37 * stamp::page_bytes);
  CHECK(consumer.check(at, where) == std::optional<std::size_t>{1});
}

TEST_CASE("sampled: the fill sends no hash (the consumer reads the stamps)") {
  auto region = memory_region::allocate_host(4 * block, "pool");
  kv_pattern pattern{region};
  CHECK_FALSE(
      pattern.fill_and_hash({0, block}, {1, 2, 0, 2, block, true}).has_value());
  CHECK(pattern.fill_and_hash({0, block}, {1, 2, 0, 2, block}).has_value());
}
