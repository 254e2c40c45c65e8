// The v7 ABI's layout is checked at compile time by static_asserts in the
// header; these tests pin the constants a plugin or NCCL relies on at run time.
#include <doctest/doctest.h>

#include "kvferry/transport/net_v7.h"

TEST_CASE("v7 constants match NCCL's") {
  CHECK(NCCL_NET_HANDLE_MAXSIZE == 128);
  CHECK(NCCL_PTR_HOST == 1);
  CHECK(NCCL_PTR_CUDA == 2);
  CHECK(NCCL_PTR_DMABUF == 4);
  CHECK(NCCL_NET_DEVICE_UNPACK_VERSION == 7);
  CHECK(static_cast<int>(ncclRemoteError) == 6);
  CHECK(static_cast<int>(NCCL_LOG_TRACE) == 5);
}

TEST_CASE("the UNPACK ring holds 16 slots of 2048 16-byte records") {
  CHECK(sizeof(ncclNetUnpackMeta) == 16 * 2048 * 16 + 16 * 8);
}
