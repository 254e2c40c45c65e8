// The CUDA IPC quarantine on a real GPU, across two processes (CUDA IPC
// cannot open a process's own handles): this process is the decode worker
// (its GPU pool, transfer actor and consumer), a child (this executable
// again, running only the "sender" case) the prefill worker's transfer
// actor, published on loopback. The child runs with KVFERRY_IPC_TEST_HOLD,
// so its copy kernel is launched but held back behind a host function on
// its stream, as on a hung GPU, until the hold file is deleted.
//
// Checked: the request fails at once with the timeout naming the sender;
// its blocks stay quarantined (not reused: the next request gets others)
// while the kernel is held; a timed-out request with no kernel behind it is
// released at once, and a send order for it arriving later is refused; once
// the kernel runs, the blocks come back only after it wrote them (the
// destination holds the source's bytes when they do).
#include <doctest/doctest.h>

#ifdef KVFERRY_HAVE_CUDA
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <future>
#include <string>
#include <thread>

#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <cuda_runtime.h>

#include "disjoint.hpp"
#include "eventually.hpp"
#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/app.hpp"
#include "kvferry/actors/node_actor.hpp"
#include "kvferry/actors/plan.hpp"
#include "kvferry/actors/transfer.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "kvferry/transport/gpu_copy.hpp"
#include "scratch_dir.hpp"
#include "test_child.hpp"
#include "why.hpp"

using namespace kvferry;
using namespace std::chrono;
namespace fs = std::filesystem;

namespace {

constexpr int gpu = 0;
constexpr std::uint64_t pool_blocks = 16;
constexpr std::uint64_t seed = 0x9a7a;
const char* const child_env = "KVFERRY_TEST_QUARANTINE_DIR";

kv_geometry geometry() { // 4 layers of 64 KiB blocks
  kv_geometry g;
  g.layers = 4;
  g.kv_heads = 8;
  g.head_dim = 128;
  g.block_tokens = 16;
  return g;
}

using kvferry::test::eventually;

// Starts the sender child: its hold file and port file live in `dir`.
pid_t start_sender(const fs::path& dir) {
  return test::start_test_child(
      "ipc quarantine sender*",
      {std::string{child_env} + "=" + dir.string(),
       "KVFERRY_IPC_TEST_HOLD=" + (dir / "hold").string()});
}

using test::child_guard;

using kvferry::test::disjoint;

// True when every byte of the given blocks of a device pool is zero.
bool blocks_zero(const memory_region& pool,
                 const std::vector<std::uint64_t>& blocks,
                 std::uint64_t block_bytes) {
  std::vector<std::uint8_t> host(block_bytes);
  for (auto off : blocks) {
    REQUIRE(cudaMemcpy(host.data(), pool.data() + off, block_bytes,
                       cudaMemcpyDeviceToHost) == cudaSuccess);
    if (std::any_of(host.begin(), host.end(), [](auto b) { return b != 0; }))
      return false;
  }
  return true;
}

} // namespace

// Skipped (doctest reports it so, instead of a pass with nothing asserted)
// unless the test starts it with --no-skip in its child process.
TEST_CASE("ipc quarantine sender (runs only when started by the test)" *
          doctest::skip()) {
  const char* dir = std::getenv(child_env);
  if (dir == nullptr)
    return;
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  auto geo = geometry();
  transfer_config tc;
  tc.name = "prefill-0";
  tc.region = memory_region::allocate_cuda(
      gpu, pool_blocks * geo.layer_block_bytes(), "prefill pool");
  transport::gpu_fill_pattern(gpu,
                              reinterpret_cast<std::byte*>(tc.region->data()),
                              tc.region->size(), seed);
  tc.use_ipc = true;
  tc.host_id = local_host_id();
  auto transfer = spawn_transfer(sys, tc);
  auto port = sys.middleman().publish(transfer, 0, "127.0.0.1", true);
  REQUIRE_MESSAGE(port, test::why(port));
  test::serve_until_stopped(dir, *port, seconds(150));
  // The parent's proxy of our transfer actor would hold the actor system's
  // shutdown until that connection closes (see worker.cpp): end here.
  std::_Exit(0);
}

TEST_CASE("a timed-out CUDA IPC copy keeps its blocks out of use until its "
          "kernel has ended") {
  test::scratch_dir dir{"kvferry-ipc-quarantine"};
  std::ofstream{dir.path / "hold"}; // the child's kernels wait for this
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  caf::scoped_actor self{sys};
  // Declared after the actor system: on an early exit the child is killed
  // first, so that no connection to it holds the system's shutdown.
  child_guard child{start_sender(dir.path)};
  auto geo = geometry();
  const auto bb = geo.layer_block_bytes();
  transfer_config rc;
  rc.name = "decode-0";
  rc.region =
      memory_region::allocate_cuda(gpu, pool_blocks * bb, "decode pool");
  rc.use_ipc = true;
  rc.host_id = local_host_id();
  auto receiver = spawn_transfer(sys, rc);
  proto::endpoint ep;
  self->request(receiver, seconds(5), proto::endpoint_atom::value)
      .receive([&](proto::endpoint& x) { ep = x; },
               [&](const caf::error& err) { FAIL(render(err)); });
  REQUIRE_FALSE(ep.ipc_handle.empty());
  app_config ac;
  ac.name = "decode-0";
  ac.geometry = geo;
  ac.region = rc.region;
  ac.transfer = receiver;
  ac.self = ep;
  ac.timeout_ms = 1000;
  ac.lend_percent = 0;
  // The pool's block ids (a block of every layer) and their layer-blocks.
  const auto layout = pool_layout(geo, rc.region->size());
  ac.node = spawn_node_actor(sys, {"decode-0", receiver, ep, layout, 1000});
  auto consumer = spawn_consumer(sys, ac);

  const auto port = test::child_port(dir.path);
  REQUIRE(port != 0);
  auto sender = sys.middleman().remote_actor<transfer_actor>("127.0.0.1", port);
  REQUIRE_MESSAGE(sender, test::why(sender));
  // The consumer receives through its node from prefill-0's node: a
  // stand-in here over the child's transfer actor (the test orders that
  // actor itself).
  proto::endpoint sender_ep;
  self->request(*sender, seconds(5), proto::endpoint_atom::value)
      .receive([&](proto::endpoint& x) { sender_ep = x; },
               [&](const caf::error& err) { FAIL(render(err)); });
  auto sender_node =
      spawn_node_actor(sys, {"prefill-0", *sender, sender_ep, layout, 1000});
  self->request(sender_node, seconds(5), proto::node_connect_atom::value,
                caf::actor_cast<caf::actor>(consumer))
      .receive([](const std::string&) {},
               [&](const caf::error& err) { FAIL(render(err)); });

  auto allocate = [&](std::uint64_t id, std::uint32_t per_layer) {
    proto::allocate_request a;
    a.request_id = id;
    a.blocks_per_layer = per_layer;
    a.layers = geo.layers;
    a.layer_block_bytes = bb;
    a.producer = "prefill-0";
    std::vector<std::uint64_t> blocks;
    self->request(consumer, seconds(5), proto::allocate_atom::value, a)
        .receive([&](proto::grant& g) { blocks = g.block_offsets; },
                 [&](const caf::error& err) { FAIL(render(err)); });
    return blocks;
  };
  auto arrived = [&](std::uint64_t id, std::uint64_t blocks) {
    proto::arrival_notice n;
    n.request_id = id;
    n.bytes = blocks * bb;
    caf::error result;
    self->request(consumer, seconds(30), proto::arrived_atom::value, n)
        .receive([&](proto::ready_report&) {},
                 [&](const caf::error& err) { result = err; });
    return result;
  };
  auto quarantined = [&] {
    std::uint64_t n = 0;
    self->request(consumer, seconds(5), proto::stats_atom::value)
        .receive([&](proto::consumer_stats& s) { n = s.quarantined_blocks; },
                 [&](const caf::error& err) { FAIL(render(err)); });
    return n;
  };

  // Request 1: the sender launches its copy (held back), we time out.
  auto first = allocate(1, 2);
  REQUIRE(first.size() == 2); // ids: 8 layer-blocks
  const auto first_at = layer_block_offsets(layout, first);
  std::vector<std::uint64_t> src(first_at.size());
  for (std::uint64_t k = 0; k < src.size(); ++k)
    src[k] = k * bb;
  proto::send_order o;
  o.transfer_id = transfer_id_of(1, 0);
  o.peer = ep;
  o.extents = plan_blocks(src, first_at, bb);
  o.timeout_ms = 60000; // the sender keeps waiting for its kernel
  // The send order's reply: the bytes once the sender saw its kernel end.
  auto sent = std::make_shared<std::promise<caf::expected<std::uint64_t>>>();
  auto sent_reply = sent->get_future();
  // (A dummy argument: CAF 0.17 spawns argument-less function actors
  // through a null argument tuple, see tests/support/actor_fixture.hpp.)
  sys.spawn(
      [sent, o, s = *sender](caf::event_based_actor* a, int) {
        a->request(s, seconds(90), proto::send_atom::value, o)
            .then([sent](std::uint64_t bytes) { sent->set_value(bytes); },
                  [sent](caf::error& err) { sent->set_value(err); });
      },
      0);
  auto t0 = steady_clock::now();
  auto err = arrived(1, first.size());
  REQUIRE(err);
  CHECK(is(err, ec::timeout));
  CHECK_MESSAGE(render(err).find("'prefill-0'") != std::string::npos,
                render(err));
  CHECK(steady_clock::now() - t0 < seconds(5)); // 1 s timeout + margin
  CHECK(quarantined() == 8);

  // Request 2: nothing is sent for it; it times out, the sender answers at
  // once that no copy of it runs, and its blocks come back, while request
  // 1's stay out: its kernel is still held.
  auto second = allocate(2, 2);
  REQUIRE(second.size() == 2);
  const auto second_at = layer_block_offsets(layout, second);
  CHECK(disjoint(first, second));
  CHECK(is(arrived(2, second.size()), ec::timeout));
  CHECK(eventually([&] { return quarantined() == 8; }, seconds(10)));
  CHECK(blocks_zero(*rc.region, first_at, bb)); // the kernel has not run

  // A send order for request 2 that reaches the sender only now (its
  // producer stuck, say on the hung GPU) is refused: its receiver gave up
  // on it and its blocks are back in the pool.
  proto::send_order late = o;
  late.transfer_id = transfer_id_of(2, 0);
  late.extents = plan_blocks(src, second_at, bb);
  self->request(*sender, seconds(10), proto::send_atom::value, late)
      .receive(
          [&](std::uint64_t) { FAIL("a stale send order was carried out"); },
          [&](const caf::error& err) {
            CHECK_MESSAGE(is(err, ec::timeout), render(err));
            CHECK_MESSAGE(render(err).find("gave up") != std::string::npos,
                          render(err));
          });
  CHECK(blocks_zero(*rc.region, second_at, bb));
  CHECK(sent_reply.wait_for(seconds(0)) == std::future_status::timeout);

  // The GPU "recovers": the kernel runs, the sender sees it end, answers;
  // the blocks come back holding what the kernel wrote.
  fs::remove(dir.path / "hold");
  CHECK(eventually([&] { return quarantined() == 0; }, seconds(60)));
  REQUIRE(sent_reply.wait_for(seconds(10)) == std::future_status::ready);
  const auto result = sent_reply.get();
  CHECK_MESSAGE(static_cast<bool>(result),
                (result ? std::string{} : render(result.error())));
  auto expected = transport::gpu_region::allocate_device(
      gpu, pool_blocks * bb); // the child's pool: same size, same seed
  transport::gpu_fill_pattern(gpu, expected.data(), expected.size(), seed);
  std::vector<transport::copy_extent> plan;
  for (const auto& e : o.extents)
    plan.push_back({e.src_offset, e.dst_offset, e.length});
  CHECK(transport::gpu_count_mismatches(
            gpu, expected.data(),
            reinterpret_cast<std::byte*>(rc.region->data()), plan) == 0);
  CHECK(allocate(3, 4).size() == pool_blocks / geo.layers); // all back

  CHECK(test::stop_test_child(child.pid, dir.path) == 0);
  child.pid = 0;
  self->send_exit(consumer, caf::exit_reason::user_shutdown);
  self->send_exit(sender_node, caf::exit_reason::user_shutdown);
  self->send_exit(receiver, caf::exit_reason::user_shutdown);
}
#endif
