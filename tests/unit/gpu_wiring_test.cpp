// The CPU side of the GPU wiring (issue #5): which data path a transfer
// actor picks for a peer, the KV pattern on host memory (the reference the
// GPU kernels must match), and the errors of --gpu / --transport where no
// GPU (or no CUDA) is available. The GPU side: tests/gpu/gpu_kv_test.cpp.
#include <string>

#include <caf/all.hpp>
#include <doctest/doctest.h>

#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/kv_pattern.hpp"
#include "kvferry/actors/transfer.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "kvferry/transport/gpu_info.hpp"
#include "run_kvferry.hpp"
#include "skip_case.hpp"

using namespace kvferry;

namespace {

proto::endpoint gpu_peer(const std::string& host_id) {
  proto::endpoint ep;
  ep.name = "decode-0";
  ep.host_id = host_id;
  ep.gpu = 0;
  ep.ipc_handle = "0:4096:00"; // only its presence matters here
  return ep;
}

using kvferry::test::run_result;

run_result run_kvferry(const std::string& args) {
  return kvferry::test::run_kvferry(args, 60);
}

bool has_gpu() {
  return !transport::list_gpus().devices.empty();
}

// Plain TCP: these workers fail on their GPU options before any peer
// connects, so they need no certificates.
const std::string worker_args =
    "worker --name w0 --role prefill --directory 127.0.0.1:1 --pool-blocks 4 "
    "--insecure-plaintext ";

} // namespace

TEST_CASE("data path: CUDA IPC only between same-host GPU regions") {
  auto peer = gpu_peer("hostA/boot1");
  CHECK(choose_data_path(true, memory_kind::cuda, "hostA/boot1", peer) ==
        data_path::cuda_ipc);
  // Host memory here: the plugin, whatever the peer offers.
  CHECK(choose_data_path(true, memory_kind::host, "hostA/boot1", peer) ==
        data_path::plugin);
  // Another host (or the same name after a reboot: other boot id).
  CHECK(choose_data_path(true, memory_kind::cuda, "hostA/boot2", peer) ==
        data_path::plugin);
  // --transport net here.
  CHECK(choose_data_path(false, memory_kind::cuda, "hostA/boot1", peer) ==
        data_path::plugin);
  // The peer offers no handle (host memory, or --transport net there).
  peer.ipc_handle.clear();
  CHECK(choose_data_path(true, memory_kind::cuda, "hostA/boot1", peer) ==
        data_path::plugin);
  // No host identity is never "the same host".
  auto anonymous = gpu_peer("");
  CHECK(choose_data_path(true, memory_kind::cuda, "", anonymous) ==
        data_path::plugin);
}

TEST_CASE("a prefill worker maps same-host decode pools when they join") {
  transfer_config cfg;
  cfg.name = "prefill-0";
  cfg.host_id = "hostA/boot1";
  cfg.map_peers_ahead = true;
  worker_info decode;
  decode.name = "decode-0";
  decode.role = worker_role::decode;
  decode.host_id = "hostA/boot1";
  CHECK(maps_ahead(cfg, memory_kind::cuda, decode));
  // Not for our own pool in host memory, another host, --transport net,
  // a decode worker's transfer actor, or a peer that is not a decode worker.
  CHECK_FALSE(maps_ahead(cfg, memory_kind::host, decode));
  auto elsewhere = decode;
  elsewhere.host_id = "hostB/boot1";
  CHECK_FALSE(maps_ahead(cfg, memory_kind::cuda, elsewhere));
  auto net = cfg;
  net.use_ipc = false;
  CHECK_FALSE(maps_ahead(net, memory_kind::cuda, decode));
  auto consumer_side = cfg;
  consumer_side.map_peers_ahead = false;
  CHECK_FALSE(maps_ahead(consumer_side, memory_kind::cuda, decode));
  auto prefill = decode;
  prefill.role = worker_role::prefill;
  CHECK_FALSE(maps_ahead(cfg, memory_kind::cuda, prefill));
  // No host identity is never "the same host".
  auto anonymous = cfg;
  anonymous.host_id.clear();
  auto anonymous_peer = decode;
  anonymous_peer.host_id.clear();
  CHECK_FALSE(maps_ahead(anonymous, memory_kind::cuda, anonymous_peer));
}

TEST_CASE("a host-memory transfer endpoint offers no IPC handle") {
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  transfer_config tc;
  tc.name = "prefill-0";
  tc.region = memory_region::allocate_host(8192, "pool");
  tc.host_id = "hostA/boot1";
  auto transfer = spawn_transfer(sys, tc);
  caf::scoped_actor self{sys};
  self->request(transfer, std::chrono::seconds(5), proto::endpoint_atom::value)
      .receive(
          [&](proto::endpoint& ep) {
            CHECK(ep.name == "prefill-0");
            CHECK(ep.host_id == "hostA/boot1");
            CHECK(ep.gpu == -1);
            CHECK(ep.region_bytes == 8192);
            CHECK(ep.ipc_handle.empty()); // peers reach it through the plugin
          },
          [&](const caf::error& err) { FAIL(render(err)); });
  self->send_exit(transfer, caf::exit_reason::user_shutdown);
}

TEST_CASE("kv pattern on host memory: fill, check, a corrupted byte") {
  constexpr std::uint64_t block = 1004; // not a multiple of 8: tail bytes
  auto region = memory_region::allocate_host(16 * block, "pattern");
  kv_pattern pattern{region};
  std::vector<std::uint64_t> offsets{5 * block, 0, 9 * block, 2 * block};
  pattern_blocks where{7, 42, 3, 2, block};
  pattern.fill(offsets, where);
  CHECK_FALSE(pattern.check(offsets, where).has_value());
  // Block 2 of the list is block 0 of layer 4: same bytes as fill_pattern.
  std::vector<std::uint8_t> expected(block);
  fill_pattern(expected.data(), block, 7, 42, 4, 0);
  CHECK(
      std::equal(expected.begin(), expected.end(), region->data() + 9 * block));
  region->data()[9 * block + 1003] ^= 1;
  auto bad = pattern.check(offsets, where);
  REQUIRE(bad.has_value());
  CHECK(*bad == 2);
  // Another seed is another pattern.
  region->data()[9 * block + 1003] ^= 1;
  where.seed = 8;
  CHECK(pattern.check(offsets, where) == std::optional<std::size_t>{0});
}

TEST_CASE("kv pattern on host memory: fill_and_hash writes what fill writes "
          "and returns what hash_blocks reads") {
  constexpr std::uint64_t block = 1004;
  auto region = memory_region::allocate_host(16 * block, "pattern");
  kv_pattern pattern{region};
  std::vector<std::uint64_t> offsets{5 * block, 0, 9 * block, 2 * block};
  pattern_blocks where{7, 42, 3, 2, block};
  auto hash = pattern.fill_and_hash(offsets, where);
  REQUIRE(hash.has_value());
  CHECK(*hash == hash_blocks(region->data(), offsets, block));
  CHECK_FALSE(pattern.check(offsets, where).has_value());
  // Order matters: the hash is of the blocks in the list's order.
  std::vector<std::uint64_t> reversed(offsets.rbegin(), offsets.rend());
  CHECK(*hash != hash_blocks(region->data(), reversed, block));
}

TEST_CASE("kv pattern refuses a block outside the region") {
  auto region = memory_region::allocate_host(4096, "small");
  kv_pattern pattern{region};
  std::vector<std::uint64_t> offsets{0, 4000};
  CHECK_THROWS_WITH_AS(pattern.fill(offsets, {1, 1, 0, 1, 512}),
                       doctest::Contains("block 1 at offset 4000"),
                       std::out_of_range);
}

TEST_CASE("a GPU region without a usable GPU fails naming the ordinal") {
  if (has_gpu())
    return kvferry::test::skip_case(
        "this machine has a GPU (covered there by tests/gpu/gpu_kv_test.cpp)");
  CHECK_THROWS_WITH_AS(memory_region::allocate_cuda(0, 4096, "pool"),
                       doctest::Contains("GPU 0"), transport::gpu_error);
}

TEST_CASE("worker --gpu and --transport: bad values exit 2 naming them") {
  auto r = run_kvferry(worker_args + "--gpu fast");
  CHECK(r.status == 2);
  CHECK(r.output.find("--gpu 'fast'") != std::string::npos);
  r = run_kvferry(worker_args + "--transport rdma");
  CHECK(r.status == 2);
  CHECK(r.output.find("--transport 'rdma'") != std::string::npos);
  r = run_kvferry("demo --gpu fast");
  CHECK(r.status == 2);
  CHECK(r.output.find("--gpu 'fast'") != std::string::npos);
}

TEST_CASE("worker --gpu 0 without a GPU (or without CUDA) fails clearly") {
  if (has_gpu())
    return kvferry::test::skip_case("this machine has a GPU");
  auto r = run_kvferry(worker_args + "--gpu 0");
  INFO(r.output);
#ifdef KVFERRY_HAVE_CUDA
  // CUDA build, no device: the allocation names the ordinal.
  CHECK(r.status == 1);
  CHECK(r.output.find("GPU 0 requested") != std::string::npos);
#else
  CHECK(r.status == 2);
  CHECK(r.output.find("no CUDA support") != std::string::npos);
#endif
}

TEST_CASE("demo --gpu auto falls back to host memory without a GPU") {
  if (has_gpu())
    return kvferry::test::skip_case(
        "this machine has a GPU (tests/gpu/gpu_demo_test.cpp checks --gpu "
        "auto picks it)");
  auto r = run_kvferry("demo --requests 3 --max-tokens 128 --quiet");
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("using host memory") != std::string::npos);
  CHECK(r.output.find("\nhost memory, kvsock, push,") != std::string::npos);
  CHECK(r.output.find("\n| 3 | 0 |") != std::string::npos);
}

TEST_CASE("demo --prefill-gpu / --decode-gpu: bad values exit 2 naming them") {
  auto r = run_kvferry("demo --prefill-gpu fast");
  CHECK(r.status == 2);
  CHECK(r.output.find("--prefill-gpu 'fast'") != std::string::npos);
  r = run_kvferry("demo --decode-gpu -1");
  CHECK(r.status == 2);
  CHECK(r.output.find("--decode-gpu '-1'") != std::string::npos);
}

TEST_CASE("demo across two GPUs without them fails before starting anything") {
  if (has_gpu())
    return kvferry::test::skip_case("this machine has a GPU (the real pair: "
                                    "tests/gpu/gpu_demo_two_gpus_test.cpp)");
  // A CUDA build finds no GPU 0; a build without CUDA refuses any ordinal.
  auto r = run_kvferry("demo --prefill-gpu 0 --decode-gpu 1 --requests 1");
  INFO(r.output);
  CHECK(r.status == 2);
  CHECK(r.output.find("--prefill-gpu 0") != std::string::npos);
}

TEST_CASE("demo: one worker in host memory and one on a GPU is refused") {
  if (has_gpu())
    return kvferry::test::skip_case("this machine has a GPU");
  auto r = run_kvferry("demo --gpu none --decode-gpu 1 --requests 1");
  INFO(r.output);
  CHECK(r.status == 2);
  // "--gpu none with --decode-gpu 1: ..." (CUDA) or "--decode-gpu 1: this
  // build of kvferry has no CUDA support" (without CUDA).
  CHECK(r.output.find("--decode-gpu 1") != std::string::npos);
}
