// KV pools in GPU memory (issue #5): memory_region::allocate_cuda and the
// GPU side of kv_pattern — its kernel writes exactly the bytes of the host
// fill_pattern (so host and GPU workers can verify each other), and its
// GPU-side compare finds a single corrupted byte.
#include <doctest/doctest.h>

#ifdef KVFERRY_HAVE_CUDA
#include <vector>

#include <caf/all.hpp>
#include <cuda_runtime_api.h>

#include "../support/cuda_upload.hpp"
#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/kv_pattern.hpp"
#include "kvferry/actors/kv_stamp.hpp"
#include "kvferry/actors/transfer.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "kvferry/transport/gpu_memory.hpp"

using namespace kvferry;

namespace {

std::vector<std::uint8_t> to_host(const memory_region& region) {
  std::vector<std::uint8_t> bytes(region.size());
  REQUIRE(cudaMemcpy(bytes.data(), region.data(), bytes.size(),
                     cudaMemcpyDeviceToHost) == cudaSuccess);
  return bytes;
}

// Host bytes to the GPU, landed before the pattern's (non-blocking) stream
// reads them (test::upload).
void to_device(std::uint8_t* dst, const void* src, std::size_t bytes) {
  REQUIRE(test::upload(dst, src, bytes) == cudaSuccess);
}

void flip_byte(const memory_region& region, std::uint64_t offset) {
  std::uint8_t b = 0;
  REQUIRE(cudaMemcpy(&b, region.data() + offset, 1, cudaMemcpyDeviceToHost) ==
          cudaSuccess);
  b ^= 0x10;
  to_device(region.data() + offset, &b, 1);
}

// The GPU kernel and the host reference agree byte for byte.
void check_matches_host(std::uint64_t block, std::uint64_t base_shift) {
  CAPTURE(block);
  CAPTURE(base_shift);
  const std::uint32_t bpl = 3;
  auto region = memory_region::allocate_cuda(0, 16 * block + 64, "kv");
  CHECK(region->kind() == memory_kind::cuda);
  CHECK(region->gpu() == 0);
  CHECK_FALSE(region->host_accessible());
  kv_pattern pattern{region};
  std::vector<std::uint64_t> offsets;
  for (std::uint64_t i : {7, 2, 11, 0, 5, 9}) // 2 layers of 3 blocks
    offsets.push_back(base_shift + i * block);
  pattern_blocks where{99, 1234, 5, bpl, block};
  pattern.fill(offsets, where);
  auto bytes = to_host(*region);
  std::vector<std::uint8_t> expected(block);
  for (std::size_t i = 0; i < offsets.size(); ++i) {
    fill_pattern(expected.data(), block, 99, 1234,
                 5 + static_cast<std::uint32_t>(i / bpl),
                 static_cast<std::uint32_t>(i % bpl));
    CHECK(std::equal(expected.begin(), expected.end(),
                     bytes.begin() + static_cast<std::ptrdiff_t>(offsets[i])));
  }
  CHECK_FALSE(pattern.check(offsets, where).has_value());
}

} // namespace

TEST_CASE("GPU region: zeroed, and a missing GPU is named with the count") {
  auto region = memory_region::allocate_cuda(0, 1 << 20, "zeroed");
  auto bytes = to_host(*region);
  CHECK(std::all_of(bytes.begin(), bytes.end(),
                    [](std::uint8_t b) { return b == 0; }));
  CHECK_THROWS_WITH_AS(memory_region::allocate_cuda(999, 4096, "pool"),
                       doctest::Contains("GPU 999 requested, but this "
                                         "machine has"),
                       transport::gpu_error);
}

TEST_CASE("a GPU transfer endpoint advertises its pool's IPC handle") {
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  transfer_config tc;
  tc.name = "decode-0";
  tc.region = memory_region::allocate_cuda(0, 1 << 20, "pool");
  tc.host_id = local_host_id();
  caf::scoped_actor self{sys};
  for (bool ipc : {true, false}) {
    CAPTURE(ipc);
    tc.use_ipc = ipc;
    auto transfer = spawn_transfer(sys, tc);
    self->request(transfer, std::chrono::seconds(5),
                  proto::endpoint_atom::value)
        .receive(
            [&](proto::endpoint& ep) {
              CHECK(ep.gpu == 0);
              CHECK(ep.host_id == local_host_id());
              // --transport net: no handle, so no peer picks CUDA IPC.
              REQUIRE(ep.ipc_handle.empty() == !ipc);
              if (ipc) {
                auto handle = transport::ipc_handle::from_hex(ep.ipc_handle);
                CHECK(handle.region_bytes == 1 << 20);
                CHECK(handle.device == 0);
              }
            },
            [&](const caf::error& err) { FAIL(render(err)); });
    self->send_exit(transfer, caf::exit_reason::user_shutdown);
  }
}

TEST_CASE("GPU kv pattern writes the host pattern") {
  check_matches_host(65536, 0); // the demo's block size: 16-byte path
  check_matches_host(65536, 8); // 8-byte aligned only: the word path
  check_matches_host(1004, 0);  // tail bytes; odd blocks misaligned
  check_matches_host(1004, 3);  // no block 8-byte aligned: byte path
  check_matches_host(1016, 0);  // an odd word after the 16-byte pairs
}

TEST_CASE("GPU kv pattern check finds one corrupted byte") {
  constexpr std::uint64_t block = 65536;
  auto region = memory_region::allocate_cuda(0, 64 * block, "kv");
  kv_pattern pattern{region};
  std::vector<std::uint64_t> offsets;
  for (std::uint64_t i = 0; i < 64; ++i)
    offsets.push_back((i * 37 % 64) * block); // scattered, all distinct
  pattern_blocks where{3, 77, 0, 16, block};
  pattern.fill(offsets, where);
  REQUIRE_FALSE(pattern.check(offsets, where).has_value());
  flip_byte(*region, offsets[41] + block - 1); // last byte of block 41
  flip_byte(*region, offsets[50] + 8);
  auto bad = pattern.check(offsets, where);
  REQUIRE(bad.has_value());
  CHECK(*bad == 41); // the first of the two
  // A request with another id does not match at all.
  where.request_id = 78;
  CHECK(pattern.check(offsets, where) == std::optional<std::size_t>{0});
}

// A check leaves nothing behind for the next one: its last CTA resets the
// mismatch index and the CTA count on the device (kv_pattern.cu), so a clean
// check after a failed one passes, and a later failure reports its own
// first block, higher or lower, whatever the grid of the call before.
TEST_CASE("GPU kv checks in a row each report their own first mismatch") {
  constexpr std::uint64_t block = 65536;
  auto region = memory_region::allocate_cuda(0, 64 * block, "kv");
  kv_pattern pattern{region};
  std::vector<std::uint64_t> offsets;
  for (std::uint64_t i = 0; i < 64; ++i)
    offsets.push_back((i * 37 % 64) * block);
  pattern_blocks where{3, 77, 0, 16, block};
  pattern.fill(offsets, where);
  for (int round = 0; round < 3; ++round) {
    CAPTURE(round);
    CHECK_FALSE(pattern.check(offsets, where).has_value());
    flip_byte(*region, offsets[10] + 100);
    CHECK(pattern.check(offsets, where) == std::optional<std::size_t>{10});
    flip_byte(*region, offsets[10] + 100); // mended
    CHECK_FALSE(pattern.check(offsets, where).has_value());
    flip_byte(*region, offsets[60] + 7);
    CHECK(pattern.check(offsets, where) == std::optional<std::size_t>{60});
    flip_byte(*region, offsets[60] + 7);
    // A check of 3 blocks (fewer CTAs) between checks of 64.
    std::vector<std::uint64_t> three(offsets.begin(), offsets.begin() + 3);
    CHECK_FALSE(pattern.check(three, where).has_value());
    // The stamp kernel (another grid): these blocks hold no stamps.
    auto stamps = where;
    stamps.sampled = true;
    CHECK(pattern.check(offsets, stamps) == std::optional<std::size_t>{0});
  }
}

// Sampled verification (kv_stamp.hpp): the GPU writes the host's stamps,
// byte for byte, and its check catches a stale page and swapped blocks.
TEST_CASE("GPU kv stamps match the host's and catch a stale page") {
  for (std::uint64_t block : {std::uint64_t{65536}, std::uint64_t{4096 + 40}}) {
    CAPTURE(block);
    auto gpu = memory_region::allocate_cuda(0, 16 * block, "kv");
    auto host = memory_region::allocate_host(16 * block, "reference");
    std::vector<std::uint64_t> offsets{7 * block, 2 * block, 11 * block,
                                       0,         5 * block, 9 * block};
    pattern_blocks where{99, 1234, 5, 3, block, true};
    kv_pattern on_gpu{gpu};
    kv_pattern on_host{host};
    on_gpu.fill(offsets, where);
    on_host.fill(offsets, where);
    auto bytes = to_host(*gpu);
    CHECK(std::equal(bytes.begin(), bytes.end(), host->data()));
    REQUIRE_FALSE(on_gpu.check(offsets, where).has_value());
    // Request 1235 lands everywhere but page 1 of block 4 (stale: 1234's).
    where.request_id = 1235;
    on_host.fill(offsets, where);
    to_device(gpu->data(), host->data(), gpu->size());
    REQUIRE_FALSE(on_gpu.check(offsets, where).has_value());
    to_device(gpu->data() + offsets[4] + 4096, bytes.data() + offsets[4] + 4096,
              block - 4096);
    CHECK(on_gpu.check(offsets, where) == std::optional<std::size_t>{4});
    std::swap(offsets[0], offsets[1]);
    CHECK(on_gpu.check(offsets, where) == std::optional<std::size_t>{0});
  }
}

#endif
