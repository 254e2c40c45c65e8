// End to end on a GPU: the kvsock plugin in UNPACK mode (KVSOCK_UNPACK=1)
// receives into its bounce pages and publishes ring records; the unpack
// kernel moves the bytes into scattered KV blocks; irecvConsumed frees the
// slot. More receives than ring slots, so the ring wraps.
#include <doctest/doctest.h>

#ifdef KVFERRY_HAVE_CUDA
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <numeric>
#include <random>
#include <string>

#include <cuda_runtime_api.h>

#include "kvferry/transport/gpu_copy.hpp"
#include "kvferry/transport/net_v7.h"

using namespace kvferry::transport;
using namespace std::chrono_literals;

namespace {

constexpr int gpu = 0;
constexpr std::size_t receive_bytes =
    4 << 20; // kvsock's UNPACK maximum per irecv
constexpr std::size_t block_bytes = 64 << 10;
constexpr std::size_t blocks_per_receive = receive_bytes / block_bytes;
// kvsock's bounce buffer: one 4 MiB page run per ring slot. The v7 ABI does
// not carry its size, so the receiver must know it.
constexpr std::uint64_t bounce_bytes = NCCL_NET_UNPACK_SLOTS * receive_bytes;

void quiet_logger(ncclDebugLogLevel, unsigned long, const char*, int,
                  const char*, ...) {
}

std::string plugin_path() {
  const char* dir = std::getenv("KVFERRY_PLUGIN_PATH");
  return std::string{dir ? dir : KVFERRY_BINARY_DIR "/lib"} +
         "/libnccl-net-kvsock.so";
}

// Polls `test` until the request completes (deadline 10 s).
void complete(ncclNet_v7_t* net, void* request) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  int done = 0, size = 0;
  while (!done) {
    REQUIRE(net->test(request, &done, &size) == ncclSuccess);
    REQUIRE_MESSAGE(std::chrono::steady_clock::now() < deadline,
                    "request did not complete in 10 s");
  }
}

} // namespace

TEST_CASE("kvsock UNPACK receives land in scattered KV blocks through the "
          "unpack kernel") {
  setenv("KVSOCK_UNPACK", "1", 1);
  void* lib = dlopen(plugin_path().c_str(), RTLD_NOW | RTLD_LOCAL);
  REQUIRE_MESSAGE(lib != nullptr, dlerror());
  auto* net = static_cast<ncclNet_v7_t*>(dlsym(lib, "ncclNetPlugin_v7"));
  REQUIRE(net != nullptr);
  REQUIRE(net->init(&quiet_logger) == ncclSuccess);
  ncclNetProperties_v7_t props{};
  REQUIRE(net->getProperties(0, &props) == ncclSuccess);
  REQUIRE(props.netDeviceType == NCCL_NET_DEVICE_UNPACK);
  REQUIRE((props.ptrSupport & NCCL_PTR_CUDA) != 0);

  char handle[NCCL_NET_HANDLE_MAXSIZE] = {};
  void* listen_comm = nullptr;
  REQUIRE(net->listen(0, handle, &listen_comm) == ncclSuccess);
  void *send_comm = nullptr, *recv_comm = nullptr;
  // The caller allocates the receiver's device handle with type and version
  // filled in; an UNPACK plugin completes it in accept (v7 contract).
  ncclNetDeviceHandle_v7_t recv_dev_storage{
      NCCL_NET_DEVICE_UNPACK, NCCL_NET_DEVICE_UNPACK_VERSION, nullptr, 0, 0};
  ncclNetDeviceHandle_v7_t* send_dev = nullptr;
  ncclNetDeviceHandle_v7_t* recv_dev = &recv_dev_storage;
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (send_comm == nullptr || recv_comm == nullptr) {
    if (send_comm == nullptr)
      REQUIRE(net->connect(0, handle, &send_comm, &send_dev) == ncclSuccess);
    if (recv_comm == nullptr)
      REQUIRE(net->accept(listen_comm, &recv_comm, &recv_dev) == ncclSuccess);
    REQUIRE_MESSAGE(std::chrono::steady_clock::now() < deadline,
                    "connect/accept took over 10 s");
  }
  REQUIRE(recv_dev->netDeviceType == NCCL_NET_DEVICE_UNPACK);
  REQUIRE(recv_dev->handle != nullptr);

  // Destination: a pool of 64 KiB KV blocks; each receive goes to 64 random
  // ones.
  const auto pool = gpu_region::allocate_device(gpu, 4 * receive_bytes);
  const auto pool_blocks =
      static_cast<std::uint32_t>(pool.size() / block_bytes);
  std::vector<unsigned char> sent(receive_bytes);
  void *send_mr = nullptr, *recv_mr = nullptr;
  REQUIRE(net->regMr(send_comm, sent.data(), static_cast<int>(sent.size()),
                     NCCL_PTR_HOST, &send_mr) == ncclSuccess);
  REQUIRE(net->regMr(recv_comm, pool.data(), static_cast<int>(pool.size()),
                     NCCL_PTR_CUDA, &recv_mr) == ncclSuccess);

  gpu_copy_engine engine{gpu};
  std::mt19937_64 rng{11};
  constexpr std::uint64_t receives = NCCL_NET_UNPACK_SLOTS + 5;
  for (std::uint64_t seq = 0; seq < receives; ++seq) {
    CAPTURE(seq);
    for (auto& b : sent)
      b = static_cast<unsigned char>(rng());
    std::vector<std::uint32_t> ids(pool_blocks);
    std::iota(ids.begin(), ids.end(), 0u);
    std::shuffle(ids.begin(), ids.end(), rng);
    std::vector<std::uint64_t> offsets;
    for (std::size_t b = 0; b < blocks_per_receive; ++b)
      offsets.push_back(std::uint64_t{ids[b]} * block_bytes);

    void* send_req = nullptr;
    void* recv_req = nullptr;
    void* dst = pool.data();
    int size = static_cast<int>(receive_bytes), tag = 0;
    const auto post_deadline = std::chrono::steady_clock::now() + 10s;
    while (recv_req == nullptr ||
           send_req == nullptr) { // NULL request: try again
      if (recv_req == nullptr)
        REQUIRE(net->irecv(recv_comm, 1, &dst, &size, &tag, &recv_mr,
                           &recv_req) == ncclSuccess);
      if (send_req == nullptr)
        REQUIRE(net->isend(send_comm, sent.data(), size, 0, send_mr,
                           &send_req) == ncclSuccess);
      REQUIRE(std::chrono::steady_clock::now() < post_deadline);
    }
    complete(net, send_req);
    complete(net, recv_req);

    const auto ticket =
        engine.unpack(recv_dev->handle, seq, bounce_bytes, pool.view(),
                      unpack_destination::blocks(block_bytes, offsets));
    engine.wait(ticket, 10s);
    REQUIRE(net->irecvConsumed(recv_comm, 1, recv_req) == ncclSuccess);

    std::uint64_t wrong_blocks = 0;
    std::vector<unsigned char> block(block_bytes);
    for (std::size_t b = 0; b < blocks_per_receive; ++b) {
      REQUIRE(cudaMemcpy(block.data(), pool.data() + offsets[b], block_bytes,
                         cudaMemcpyDeviceToHost) == cudaSuccess);
      wrong_blocks += std::memcmp(block.data(), sent.data() + b * block_bytes,
                                  block_bytes) != 0;
    }
    CHECK(wrong_blocks == 0);
  }
  net->deregMr(send_comm, send_mr);
  net->deregMr(recv_comm, recv_mr);
  net->closeSend(send_comm);
  net->closeRecv(recv_comm);
  net->closeListen(listen_comm);
}

#else
TEST_CASE("the kvsock UNPACK test needs a CUDA build") {
}
#endif
