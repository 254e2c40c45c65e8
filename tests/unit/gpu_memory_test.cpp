// GPU memory pieces that need no GPU: block pools over a host region, the
// text form of IPC handles, and the clear error of a build without CUDA.
#include <set>

#include <doctest/doctest.h>

#include "kvferry/transport/gpu_memory.hpp"

using namespace kvferry::transport;

TEST_CASE("a block pool hands out every block once and takes them back") {
  kv_block_pool pool{gpu_region::allocate_host(10 * 4096 + 100), 4096};
  CHECK(pool.block_count() == 10);
  CHECK(pool.region().kind == memory_kind::host);
  std::set<std::uint32_t> seen;
  while (auto b = pool.acquire()) {
    CHECK(seen.insert(*b).second);
    CHECK(pool.address_of(*b) == pool.region().base + pool.offset_of(*b));
  }
  CHECK(seen.size() == 10);
  CHECK(pool.free_count() == 0);
  pool.release(3);
  CHECK(pool.acquire() == std::optional<std::uint32_t>{3});
}

TEST_CASE("releasing a free or unknown block is an error naming it") {
  kv_block_pool pool{gpu_region::allocate_host(4 * 64), 64};
  auto b = pool.acquire();
  REQUIRE(b);
  pool.release(*b);
  CHECK_THROWS_WITH_AS(pool.release(*b), doctest::Contains("is not in use"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(pool.release(99), doctest::Contains("out of range"),
                       std::invalid_argument);
}

TEST_CASE("a block pool refuses block sizes the copy kernel cannot vectorise") {
  CHECK_THROWS_AS(kv_block_pool(gpu_region::allocate_host(4096), 100),
                  std::invalid_argument);
  CHECK_THROWS_AS(kv_block_pool(gpu_region::allocate_host(64), 4096),
                  std::invalid_argument);
}

TEST_CASE("an IPC handle survives its text form") {
  ipc_handle h;
  for (std::size_t i = 0; i < h.bytes.size(); ++i)
    h.bytes[i] = static_cast<std::uint8_t>(i * 37 + 1);
  h.region_bytes = 1ull << 33;
  h.device = 3;
  const auto back = ipc_handle::from_hex(h.to_hex());
  CHECK(back.bytes == h.bytes);
  CHECK(back.region_bytes == h.region_bytes);
  CHECK(back.device == 3);
  CHECK_THROWS_AS(ipc_handle::from_hex("garbage"), std::invalid_argument);
  CHECK_THROWS_AS(ipc_handle::from_hex("0:10:abc"), std::invalid_argument);
}

TEST_CASE("moving a region moves ownership") {
  auto a = gpu_region::allocate_host(100);
  auto* base = a.data();
  gpu_region b = std::move(a);
  CHECK(b.data() == base);
  CHECK_FALSE(static_cast<bool>(
      a)); // NOLINT(bugprone-use-after-move): the point of the test
}

#ifndef KVFERRY_HAVE_CUDA
TEST_CASE("without CUDA, device memory is refused with the reason") {
  CHECK_THROWS_WITH_AS(gpu_region::allocate_device(0, 4096),
                       doctest::Contains("no CUDA support"), gpu_error);
}
#endif
