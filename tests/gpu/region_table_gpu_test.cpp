// The region table on GPU memory (issue #15): two real transfer actors over
// kvsock, each with three regions of the caller's own cudaMalloc'd memory
// (memory_region::wrap, kind cuda), move the same scattered plan as the host
// test (tests/unit/region_table_test.cpp); every byte is checked against the
// byte-by-byte reference copy. kvsock takes the CUDA pointers directly or
// stages them (whichever its ptrSupport says). The same tables over CUDA IPC:
// tests/gpu/ipc_table_gpu_test.cpp.
#include <doctest/doctest.h>

#ifdef KVFERRY_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "../support/cuda_upload.hpp"
#include "../support/region_table_pair.hpp"
#include "kvferry/transport/gpu_memory.hpp"
#include "why.hpp"

using namespace kvferry;

namespace {

struct cuda_memory {
  static constexpr memory_kind kind = memory_kind::cuda;
  static constexpr int gpu = 0;
  static void* allocate(std::size_t bytes) {
    void* p = nullptr;
    REQUIRE(cudaSetDevice(gpu) == cudaSuccess);
    REQUIRE(cudaMalloc(&p, bytes) == cudaSuccess);
    return p;
  }
  static void release(void* p) { cudaFree(p); }
  static void write(void* dst, const std::vector<std::uint8_t>& bytes) {
    REQUIRE(test::upload(dst, bytes.data(), bytes.size()) == cudaSuccess);
  }
  static std::vector<std::uint8_t> read(const void* src, std::size_t bytes) {
    std::vector<std::uint8_t> out(bytes);
    REQUIRE(cudaMemcpy(out.data(), src, bytes, cudaMemcpyDeviceToHost) ==
            cudaSuccess);
    return out;
  }
};

} // namespace

TEST_CASE_FIXTURE(test::region_table_pair<cuda_memory>,
                  "a scattered plan over three caller GPU regions per side "
                  "lands byte for byte") {
  auto ep = receiver_endpoint();
  CHECK(proto::region_sizes_of(ep) == dst_sizes);
  // cudaMalloc'd and wrapped: exported for CUDA IPC, one entry per region;
  // these actors have no host id, so the plugin moves it all the same.
  CHECK(transport::ipc_table_from_text(ep.ipc_handle).size() == 3);
  auto moves = test::scattered_moves();
  auto sent = send(ep, 1, test::virtual_extents(moves));
  REQUIRE_MESSAGE(sent, test::why(sent));
  auto got = recv(1);
  REQUIRE_MESSAGE(got, test::why(got));
  CHECK(got->bytes == *sent);
  auto expected = expected_after(moves);
  auto actual = receiver_bytes();
  for (std::size_t r = 0; r < expected.size(); ++r) {
    CAPTURE(r);
    CHECK(actual[r] == expected[r]);
  }
}

TEST_CASE_FIXTURE(test::region_table_pair<cuda_memory>,
                  "on GPU memory too, an extent crossing a region's end is "
                  "refused, writing nothing") {
  auto sent = send(receiver_endpoint(), 2,
                   test::virtual_extents({{1, 9904, 0, 0, 192}}));
  REQUIRE_FALSE(sent);
  CHECK(is(sent.error(), ec::invalid_extent));
  CHECK(receiver_bytes() == dst_before);
}

#endif
