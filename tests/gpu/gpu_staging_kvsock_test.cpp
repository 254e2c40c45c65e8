// On a GPU: kvsock forced host-only (KVSOCK_PTR_SUPPORT=host) carries CUDA
// regions through the channel wrapper's pinned bounce slots: cudaMemcpyAsync
// device-to-host into a slot before each send, host-to-device out of a slot
// after each receive. Every byte that arrives is copied back and compared.
// Prints one line per check: what moved, how many bytes, PASS or FAIL.
#include <doctest/doctest.h>

#ifdef KVFERRY_HAVE_CUDA
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "channel_pair.hpp"
#include "kvferry/transport/channel.hpp"
#include "kvferry/transport/gpu_memory.hpp"

using namespace kvferry::transport;
using namespace std::chrono_literals;

namespace {

constexpr int gpu = 0;
constexpr size_t chunk = 1 << 20;
constexpr int comms = 2, slots = 4;

using pair_of_channels = kvferry::test::channel_pair;

pair_of_channels connect_kvsock() {
  ::setenv("KVSOCK_PTR_SUPPORT", "host",
           1); // read at getProperties and per comm
  // No probe child: this process already initialised CUDA (the GPU check in
  // main), and CUDA in a child forked after that is undefined.
  load_options no_probe;
  no_probe.probe_first = false;
  auto net =
      plugin::load("kvsock", no_probe); // KVFERRY_PLUGIN_PATH is set by ctest
  REQUIRE_MESSAGE(
      !net->device(0).supports_cuda(),
      "kvsock still declares NCCL_PTR_CUDA with KVSOCK_PTR_SUPPORT=host");
  channel_options options;
  options.comms = comms;
  options.chunk_bytes = chunk;
  options.staging_slots = slots; // default copier: CUDA
  options.peer = "kvsock-loopback";
  return kvferry::test::connect_channel_pair(net, options, options, 20s);
}

std::vector<unsigned char> pattern(size_t bytes, unsigned seed) {
  std::vector<unsigned char> data(bytes);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& b : data) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    b = static_cast<unsigned char>(x);
  }
  return data;
}

// A region of `kind` filled with `content` (device or pinned host).
gpu_region make_region(memory_kind kind,
                       const std::vector<unsigned char>& content) {
  auto region = kind == memory_kind::cuda
                    ? gpu_region::allocate_device(gpu, content.size())
                    : gpu_region::allocate_host(content.size());
  REQUIRE(cudaMemcpy(region.data(), content.data(), content.size(),
                     cudaMemcpyDefault) == cudaSuccess);
  return region;
}

std::vector<unsigned char> read_back(const gpu_region& region) {
  std::vector<unsigned char> out(region.size());
  REQUIRE(cudaMemcpy(out.data(), region.data(), out.size(),
                     cudaMemcpyDefault) == cudaSuccess);
  return out;
}

int nccl_type(memory_kind kind) {
  return kind == memory_kind::cuda ? NCCL_PTR_CUDA : NCCL_PTR_HOST;
}
const char* name_of(memory_kind kind) {
  return kind == memory_kind::cuda ? "GPU" : "host";
}

// Sends `sizes` back to back from one region to another (all posted before
// any completes, so bounce slots run out), waits for every completion
// (deadline 60 s), copies the destination back and counts wrong bytes.
void check_transfer(pair_of_channels& ch, memory_kind from, memory_kind to,
                    const std::vector<size_t>& sizes, const char* what) {
  size_t total = 0;
  for (size_t s : sizes)
    total += s;
  auto expected = pattern(total, static_cast<unsigned>(total));
  auto source = make_region(from, expected);
  auto sink = make_region(to, std::vector<unsigned char>(total, 0));
  auto send_mr = ch.tx.register_memory(source.data(), total, nccl_type(from));
  auto recv_mr = ch.rx.register_memory(sink.data(), total, nccl_type(to));
  CHECK(send_mr.staged() == (from == memory_kind::cuda));
  CHECK(recv_mr.staged() == (to == memory_kind::cuda));

  size_t offset = 0;
  for (size_t s : sizes) {
    ch.rx.post_recv(sink.data() + offset, s, recv_mr);
    ch.tx.post_send(source.data() + offset, s, send_mr);
    offset += s;
  }
  size_t sends_ok = 0, receives_ok = 0, failed = 0, received_bytes = 0;
  std::string first_error;
  auto deadline = std::chrono::steady_clock::now() + 60s;
  while (sends_ok + receives_ok + failed < 2 * sizes.size() &&
         std::chrono::steady_clock::now() < deadline) {
    ch.tx.poll([&](const completion& c) {
      c.ok ? ++sends_ok : ++failed;
      if (!c.ok && first_error.empty())
        first_error = c.error;
    });
    ch.rx.poll([&](const completion& c) {
      c.ok ? ++receives_ok : ++failed;
      if (!c.ok && first_error.empty())
        first_error = c.error;
      received_bytes += c.bytes;
    });
  }
  auto got = read_back(sink);
  size_t wrong = 0;
  for (size_t i = 0; i < total; ++i)
    wrong += got[i] != expected[i];
  bool pass = sends_ok == sizes.size() && receives_ok == sizes.size() &&
              wrong == 0 && received_bytes == total;
  std::printf("staging check: %-44s %s -> %s, %zu operations, %zu bytes moved, "
              "%zu wrong bytes, %zu failed operations: %s\n",
              what, name_of(from), name_of(to), sizes.size(), received_bytes,
              wrong, failed, pass ? "PASS" : "FAIL");
  if (!first_error.empty())
    std::printf("  first error: %s\n", first_error.c_str());
  std::fflush(stdout);
  CHECK(sends_ok == sizes.size());
  CHECK(receives_ok == sizes.size());
  CHECK(received_bytes == total);
  CHECK(wrong == 0);
}

} // namespace

TEST_CASE("kvsock forced host-only carries CUDA regions through pinned "
          "staging, every byte") {
  std::printf("staging check: kvsock with KVSOCK_PTR_SUPPORT=host, %d comms, "
              "%zu-byte chunks, "
              "%d bounce slots per comm (%zu pinned bytes per channel)\n",
              comms, chunk, slots, comms * slots * chunk);
  auto ch = connect_kvsock();
  CHECK(ch.tx.stages_cuda());
  CHECK(ch.rx.stages_cuda());

  check_transfer(ch, memory_kind::cuda, memory_kind::cuda,
                 {1, 4097, chunk, 7 * chunk + 3},
                 "odd sizes, one and several chunks");
  CHECK(ch.tx.staging_bytes() == comms * slots * chunk);
  check_transfer(ch, memory_kind::cuda, memory_kind::cuda,
                 std::vector<size_t>(64, chunk + 5),
                 "64 operations posted at once (slots run out)");
  check_transfer(ch, memory_kind::cuda, memory_kind::cuda, {size_t{256} << 20},
                 "one 256 MiB operation");
  check_transfer(ch, memory_kind::cuda, memory_kind::host,
                 {3 * chunk + 1, 100, 5 * chunk},
                 "staged sender, host receiver");
  check_transfer(ch, memory_kind::host, memory_kind::cuda,
                 {3 * chunk + 1, 100, 5 * chunk},
                 "host sender, staged receiver");
  CHECK(ch.tx.in_flight() == 0);
  CHECK(ch.rx.in_flight() == 0);
}

#else
TEST_CASE("the staging GPU test needs a CUDA build") {
}
#endif
