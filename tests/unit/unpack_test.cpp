// UNPACK ring records -> copies, on the host: the mapping the GPU kernel
// implements, checked byte for byte, and the bounds checks naming the record.
#include <algorithm>
#include <numeric>
#include <random>

#include <doctest/doctest.h>

#include "kvferry/transport/unpack.hpp"

using namespace kvferry::transport;

namespace {

std::vector<unsigned char> pattern(std::size_t n, unsigned seed) {
  std::vector<unsigned char> v(n);
  std::mt19937 rng{seed};
  for (auto& b : v)
    b = static_cast<unsigned char>(rng());
  return v;
}

} // namespace

TEST_CASE("the ring slot of a receive is its sequence number mod 16") {
  CHECK(unpack_slot_of(0) == 0);
  CHECK(unpack_slot_of(15) == 15);
  CHECK(unpack_slot_of(16) == 0);
  CHECK(unpack_slot_of(35) == 3);
}

TEST_CASE("records into a contiguous destination land at base + dst_off") {
  const auto bounce = pattern(3 * 4096, 1);
  std::vector<unsigned char> dst(20000, 0);
  // Fragments arrive out of order in the bounce buffer.
  const ncclNetUnpackRecord recs[] = {
      {8192, 4096, 0}, {0, 4096, 4096}, {4096, 100, 8192}};
  const auto where = unpack_destination::contiguous(1000);
  REQUIRE_FALSE(check_unpack_slot(recs, 3, 0, bounce.size(), where, dst.size())
                    .has_value());
  unpack_on_host(recs, 3, bounce.data(), dst.data(), where);
  CHECK(std::equal(bounce.begin() + 8192, bounce.end(), dst.begin() + 1000));
  CHECK(std::equal(bounce.begin(), bounce.begin() + 4096,
                   dst.begin() + 1000 + 4096));
  CHECK(std::equal(bounce.begin() + 4096, bounce.begin() + 4196,
                   dst.begin() + 1000 + 8192));
  CHECK(dst[999] == 0);
  CHECK(dst[1000 + 8192 + 100] == 0);
}

TEST_CASE("records into scattered KV blocks are split at block boundaries") {
  // Receive of 4 blocks of 1000 bytes placed at region offsets 3000, 0, 5000,
  // 1000.
  const auto where = unpack_destination::blocks(1000, {3000, 0, 5000, 1000});
  const ncclNetUnpackRecord recs[] = {{0, 2500, 500}, {2500, 1000, 3000}};
  const auto extents = unpack_records_to_extents(recs, 2, where);
  // 500..1000 of block 0, blocks 1 and 2 whole, then the second record fills
  // block 3.
  REQUIRE(extents.size() == 4);
  CHECK(extents[0] == copy_extent{0, 3500, 500});
  CHECK(extents[1] == copy_extent{500, 0, 1000});
  CHECK(extents[2] == copy_extent{1500, 5000, 1000});
  CHECK(extents[3] == copy_extent{2500, 1000, 1000});

  const auto bounce = pattern(3500, 2);
  std::vector<unsigned char> dst(6000, 0);
  unpack_on_host(recs, 2, bounce.data(), dst.data(), where);
  // Logical receive byte k lives in block k/1000 at offset k%1000.
  std::uint64_t wrong = 0;
  for (std::uint64_t k = 500; k < 4000; ++k) {
    const std::uint64_t region_off = where.block_offsets[k / 1000] + k % 1000;
    const std::uint64_t src = k < 3000 ? k - 500 : 2500 + (k - 3000);
    wrong += dst[region_off] != bounce[src];
  }
  CHECK(wrong == 0);
}

TEST_CASE("a record past the bounce buffer is named by slot and index") {
  const ncclNetUnpackRecord recs[] = {{0, 4096, 0}, {4096, 4096, 4096}};
  auto problem = check_unpack_slot(recs, 2, 5, 6000,
                                   unpack_destination::contiguous(), 1 << 20);
  REQUIRE(problem.has_value());
  CHECK(problem->find("slot 5 record #1") != std::string::npos);
  CHECK(problem->find("bounce buffer") != std::string::npos);
}

TEST_CASE("a record past the destination blocks or region is refused") {
  const ncclNetUnpackRecord recs[] = {{0, 1500, 1000}};
  auto problem =
      check_unpack_slot(recs, 1, 0, 1 << 20,
                        unpack_destination::blocks(1000, {0, 1000}), 1 << 20);
  REQUIRE(problem.has_value());
  CHECK(problem->find("destination") != std::string::npos);

  problem = check_unpack_slot(recs, 1, 0, 1 << 20,
                              unpack_destination::contiguous(), 2000);
  REQUIRE(problem.has_value());
  CHECK(problem->find("region of 2000 bytes") != std::string::npos);
}

TEST_CASE("a slot claiming more records than the ring holds is refused") {
  ncclNetUnpackRecord rec{0, 16, 0};
  auto problem =
      check_unpack_slot(&rec, NCCL_NET_UNPACK_RECORDS + 1, 3, 1 << 20,
                        unpack_destination::contiguous(), 1 << 20);
  REQUIRE(problem.has_value());
  CHECK(problem->find("at most 2048") != std::string::npos);
}
