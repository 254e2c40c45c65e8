// GPU memory pieces that need no GPU: the text form of IPC handles, owning
// regions, and the clear error of a build without CUDA. (KV block pools:
// plan_pool_test.cpp.)
#include <doctest/doctest.h>

#include "kvferry/transport/gpu_memory.hpp"

using namespace kvferry::transport;

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
  CHECK(a.kind() == memory_kind::host);
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
