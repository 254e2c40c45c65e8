// CUDA IPC over region tables on a real GPU (issue #15), across two
// processes (CUDA IPC cannot open a process's own handles). Both sides hold
// a table of the caller's own memory wrapped in place: two regions inside
// one larger cudaMalloc (as PyTorch's caching allocator hands out tensors of
// one segment) and one allocation of its own, sizes not page multiples. The
// child (this executable again, running only the "owner" case) serves its
// transfer actor on loopback; this process is the other side.
//
// Checked, every byte against a byte-by-byte oracle:
//  - a push from the child's table into ours over CUDA IPC (no plugin
//    channel opened), extents ending at regions' ends, unaligned and odd;
//  - a one-sided read of the child's table into ours (the child's transfer
//    actor gets no message: its counters do not move);
//  - a read and a push whose order carries a CUDA event of this process:
//    the source (or, for the read, the destination) is written on another
//    stream behind a gate the test opens only after the transfer actor has
//    taken the order; the copy must wait for the event on the GPU, so the
//    bytes that land are the ones written after the gate;
//  - the same over the plugin (kvsock): the transfer actor polls the event
//    and posts the send only once it completed;
//  - a read that waits for the child's interprocess event (export_ipc_event
//    there, ipc_event_cache here), released by a file.
// And in one process: memory CUDA IPC cannot share (managed, pinned host,
// a stream-ordered pool) is named and leaves the table to the plugin; an
// interior region's export carries its offset; regions of one allocation
// share its handle.
#include <doctest/doctest.h>

#ifdef KVFERRY_HAVE_CUDA
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <cuda_runtime.h>

#include "eventually.hpp"
#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/plan.hpp"
#include "kvferry/actors/transfer.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "kvferry/transport/gpu_copy.hpp"
#include "kvferry/transport/gpu_event.hpp"
#include "kvferry/transport/gpu_memory.hpp"
#include "kvferry/transport/plugin.hpp"
#include "region_table_pair.hpp"
#include "scratch_dir.hpp"
#include "test_child.hpp"
#include "why.hpp"

using namespace kvferry;
using namespace std::chrono;
namespace fs = std::filesystem;
using bytes_t = std::vector<std::uint8_t>;
using test::table_move;

namespace {

constexpr int gpu = 0;
constexpr std::uint64_t seed = 0x7ab1e;
constexpr std::uint8_t sentinel = 0x5a;
const char* const child_env = "KVFERRY_TEST_IPC_TABLE_DIR";

void cuda_ok(cudaError_t err, const char* what) {
  REQUIRE_MESSAGE(err == cudaSuccess, what, ": ", cudaGetErrorString(err));
}

bytes_t device_bytes(const void* p, std::size_t n) {
  bytes_t out(n);
  cuda_ok(cudaMemcpy(out.data(), p, n, cudaMemcpyDeviceToHost), "read back");
  return out;
}

// What gpu_fill_pattern writes into `n` bytes (it depends on the index only).
bytes_t pattern_bytes(std::size_t n, std::uint64_t s) {
  auto scratch = transport::gpu_region::allocate_device(gpu, n);
  transport::gpu_fill_pattern(gpu, scratch.data(), n, s);
  cuda_ok(cudaDeviceSynchronize(), "fill");
  return device_bytes(scratch.data(), n);
}

// The caller's memory: regions 0 and 1 inside one allocation (at 64 KiB and
// past region 0 with a gap), region 2 an allocation of its own.
struct caller_table {
  std::vector<std::uint64_t> sizes;
  void* segment = nullptr;
  void* single = nullptr;
  std::vector<std::byte*> regions;

  explicit caller_table(std::vector<std::uint64_t> s) : sizes(std::move(s)) {
    const std::uint64_t first = 65536;
    const std::uint64_t second = (first + sizes[0] + 8191) / 4096 * 4096;
    cuda_ok(cudaSetDevice(gpu), "cudaSetDevice");
    cuda_ok(cudaMalloc(&segment, second + sizes[1] + 65536), "segment");
    cuda_ok(cudaMalloc(&single, sizes[2]), "single");
    auto* base = static_cast<std::byte*>(segment);
    regions = {base + first, base + second, static_cast<std::byte*>(single)};
  }
  ~caller_table() {
    cudaFree(segment);
    cudaFree(single);
  }
  caller_table(const caller_table&) = delete;
  caller_table& operator=(const caller_table&) = delete;

  transfer_config config(std::string name) const {
    transfer_config tc;
    tc.name = std::move(name);
    tc.net = transport::plugin::load("kvsock"); // KVFERRY_PLUGIN_PATH
    for (std::size_t r = 0; r < regions.size(); ++r) {
      auto region = memory_region::wrap(regions[r], sizes[r], memory_kind::cuda,
                                        gpu, "layer " + std::to_string(r));
      if (r == 0)
        tc.region = std::move(region);
      else
        tc.more_regions.push_back(std::move(region));
    }
    tc.use_ipc = true;
    tc.host_id = local_host_id();
    tc.open_timeout_ms = 5000;
    return tc;
  }
};

std::vector<std::uint64_t> owner_sizes() {
  return {(1 << 20) + 4096, (768 << 10) + 100, 512 << 10};
}
std::vector<std::uint64_t> our_sizes() {
  return {1 << 20, (640 << 10) + 48, 896 << 10};
}

// Holds a stream until the test opens it (at most 30 s): the "long kernel"
// before the event a copy must wait for.
struct gate {
  std::atomic<bool> open{false};
  static void CUDART_CB hold(void* g) {
    test::eventually([g] { return static_cast<gate*>(g)->open.load(); },
                     seconds(30));
  }
};

// The same across processes: holds the child's stream until the parent
// creates the file (at most 60 s).
void CUDART_CB hold_until_file(void* path) {
  test::eventually(
      [path] { return fs::exists(*static_cast<const fs::path*>(path)); },
      seconds(60));
}

// Where the child's interprocess event gates: its region 1 from here.
constexpr std::uint64_t gated_offset = 700000, gated_bytes = 65536;
constexpr std::uint8_t gated_value = 0x77;

} // namespace

// Skipped (doctest reports it so) unless the test starts it with --no-skip
// in its child process.
TEST_CASE("ipc table owner (runs only when started by the test)" *
          doctest::skip()) {
  const char* dir = std::getenv(child_env);
  if (dir == nullptr)
    return;
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  caller_table mine{owner_sizes()};
  for (std::size_t r = 0; r < mine.regions.size(); ++r)
    transport::gpu_fill_pattern(gpu, mine.regions[r], mine.sizes[r], seed + r);
  cuda_ok(cudaDeviceSynchronize(), "fill");
  // "Layer written" as a prefill stack would signal it to a reader in
  // another process: an interprocess event recorded after a write that
  // waits for the parent's `release` file; its handle goes in `event`.
  // Armed only when the parent reaches that step (its `arm` file): a stream
  // held by a host function from the start stalled this process's own copy
  // kernels of the earlier steps on the H200 (the kernel launched, its event
  // never completed while the host function ran; two streams sharing one of
  // CUDA's hardware queues would do that), which a test of the transfer
  // actor must not depend on.
  static const fs::path release = fs::path{dir} / "release"; // outlives us
  std::byte* const gated = mine.regions[1] + gated_offset;
  std::thread{[dir = fs::path{dir}, gated] {
    if (!test::eventually([&] { return fs::exists(dir / "arm"); },
                          seconds(150)))
      return;
    // No doctest assertion off the test's thread: a failure leaves `event`
    // unwritten, which the parent reports.
    auto ok = [](cudaError_t err, const char* what) {
      if (err != cudaSuccess)
        std::fprintf(stderr, "ipc table owner: %s: %s\n", what,
                     cudaGetErrorString(err));
      return err == cudaSuccess;
    };
    cudaStream_t stream = nullptr;
    cudaEvent_t written = nullptr;
    if (!ok(cudaSetDevice(gpu), "cudaSetDevice") ||
        !ok(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
            "stream") ||
        !ok(cudaEventCreateWithFlags(&written, cudaEventInterprocess |
                                                   cudaEventDisableTiming),
            "interprocess event") ||
        !ok(cudaLaunchHostFunc(stream, &hold_until_file,
                               const_cast<fs::path*>(&release)),
            "cudaLaunchHostFunc") ||
        !ok(cudaMemsetAsync(gated, gated_value, gated_bytes, stream),
            "cudaMemsetAsync") ||
        !ok(cudaEventRecord(written, stream), "cudaEventRecord"))
      return;
    {
      std::ofstream out{dir / "event.tmp"};
      out << transport::export_ipc_event(
          static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(written)),
          gpu);
    }
    fs::rename(dir / "event.tmp", dir / "event");
  }}.detach();
  auto transfer = spawn_transfer(sys, mine.config("prefill-0"));
  auto port = sys.middleman().publish(transfer, 0, "127.0.0.1", true);
  REQUIRE_MESSAGE(port, test::why(port));
  test::serve_until_stopped(dir, *port, seconds(150));
  // The parent's proxy would hold the actor system's shutdown until that
  // connection closes (see worker.cpp): end here.
  std::_Exit(0);
}

namespace {

// Host bytes unlike anything in either table.
bytes_t fresh_bytes(std::size_t n, unsigned salt) {
  bytes_t b(n);
  for (std::size_t i = 0; i < n; ++i)
    b[i] = static_cast<std::uint8_t>(i * 7 + salt + i / 509);
  return b;
}

// This process's side: its table, its transfer actor, the child's, and the
// oracle of what our regions must hold.
struct ipc_table_pair {
  test::scratch_dir dir{"kvferry-ipc-table"};
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  caf::scoped_actor self{sys};
  test::child_guard child{0};
  caller_table ours{our_sizes()};
  transfer_actor transfer;
  transfer_actor owner; // the child's
  proto::endpoint our_ep, owner_ep;
  std::vector<bytes_t> owner_bytes, expected;
  cudaStream_t stream = nullptr;
  cudaEvent_t event = nullptr;

  ipc_table_pair() {
    child.pid = test::start_test_child(
        "ipc table owner*", {std::string{child_env} + "=" + dir.path.string()});
    for (std::size_t r = 0; r < ours.regions.size(); ++r) {
      cuda_ok(cudaMemset(ours.regions[r], sentinel, ours.sizes[r]), "memset");
      expected.emplace_back(ours.sizes[r], sentinel);
    }
    const auto sizes = owner_sizes();
    for (std::size_t r = 0; r < sizes.size(); ++r)
      owner_bytes.push_back(pattern_bytes(sizes[r], seed + r));
    cuda_ok(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
            "stream");
    cuda_ok(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "event");
    transfer = spawn_transfer(sys, ours.config("decode-0"));
    const auto port = test::child_port(dir.path);
    REQUIRE(port != 0);
    auto remote =
        sys.middleman().remote_actor<transfer_actor>("127.0.0.1", port);
    REQUIRE_MESSAGE(remote, test::why(remote));
    owner = *remote;
    our_ep = endpoint_of(transfer);
    owner_ep = endpoint_of(owner);
  }
  ~ipc_table_pair() {
    self->send_exit(transfer, caf::exit_reason::user_shutdown);
    self->wait_for(transfer); // before our memory goes
    test::stop_test_child(child.pid, dir.path);
    child.pid = 0;
    cudaEventDestroy(event);
    cudaStreamDestroy(stream);
  }

  proto::endpoint endpoint_of(const transfer_actor& a) {
    proto::endpoint ep;
    self->request(a, seconds(10), proto::endpoint_atom::value)
        .receive([&](proto::endpoint& e) { ep = std::move(e); },
                 [&](caf::error& err) { FAIL(render(err)); });
    return ep;
  }

  proto::transfer_stats stats_of(const transfer_actor& a) {
    proto::transfer_stats s;
    self->request(a, seconds(10), proto::stats_atom::value)
        .receive([&](proto::transfer_stats& x) { s = x; },
                 [&](caf::error& err) { FAIL(render(err)); });
    return s;
  }

  // The oracle: `moves` copied the child's bytes into ours.
  void expect_read(const std::vector<table_move>& moves) {
    for (const auto& m : moves)
      std::copy_n(owner_bytes[m.src_region].begin() + m.src_offset, m.length,
                  expected[m.dst_region].begin() + m.dst_offset);
  }

  void check_ours() {
    for (std::size_t r = 0; r < ours.regions.size(); ++r) {
      CAPTURE(r);
      CHECK(device_bytes(ours.regions[r], ours.sizes[r]) == expected[r]);
    }
  }

  proto::read_order read_order(std::uint64_t id,
                               const std::vector<table_move>& moves) {
    proto::read_order o;
    o.transfer_id = id;
    o.peer = owner_ep;
    o.extents = test::virtual_extents(moves);
    o.timeout_ms = 30000;
    return o;
  }

  caf::expected<proto::recv_report> read(const proto::read_order& o) {
    caf::expected<proto::recv_report> result{make_error(ec::timeout, "none")};
    self->request(transfer, seconds(60), proto::read_atom::value, o)
        .receive([&](proto::recv_report& r) { result = r; },
                 [&](caf::error& err) { result = std::move(err); });
    return result;
  }

  // Sends `order` (carrying an event) to `to`, makes sure `to` has taken
  // it (a stats request behind it was answered: one mailbox, in order),
  // then lets the work before the event run (`release`), and returns the
  // order's reply.
  template<class Reply, class Atom, class Order, class Release>
  caf::expected<Reply> behind_gate(const transfer_actor& to, Atom atom,
                                   const Order& order, Release release) {
    struct released { // also when a check throws: the stream never hangs
      Release& release;
      ~released() { release(); }
    } on_exit{release};
    auto pending = self->request(to, seconds(60), atom, order);
    stats_of(to);
    release();
    caf::expected<Reply> result{make_error(ec::timeout, "none")};
    std::move(pending).receive(
        [&](Reply& r) { result = std::move(r); },
        [&](caf::error& err) { result = std::move(err); });
    return result;
  }

  // Queues on our stream: wait for the gate, then `write`, then the event.
  template<class Write>
  void write_behind_gate(gate& g, Write write) {
    cuda_ok(cudaLaunchHostFunc(stream, &gate::hold, &g), "cudaLaunchHostFunc");
    write();
    cuda_ok(cudaEventRecord(event, stream), "cudaEventRecord");
  }

  // Pushes `m` (our region m.src_region to the peer's m.dst_region) of
  // fresh bytes written into our source behind a gate, the order waiting
  // for the event recorded after them; the oracles learn the bytes.
  void push_after_event(std::uint64_t id, const proto::endpoint& to,
                        const table_move& m, unsigned salt) {
    const auto fresh = fresh_bytes(m.length, salt);
    // Pinned, so that the copy waits on the stream, not in the call.
    void* pinned = nullptr;
    cuda_ok(cudaMallocHost(&pinned, fresh.size()), "cudaMallocHost");
    std::unique_ptr<void, cudaError_t (*)(void*)> pinned_owner{pinned,
                                                               &cudaFreeHost};
    std::memcpy(pinned, fresh.data(), fresh.size());
    gate g;
    write_behind_gate(g, [&] {
      cuda_ok(cudaMemcpyAsync(ours.regions[m.src_region] + m.src_offset, pinned,
                              fresh.size(), cudaMemcpyHostToDevice, stream),
              "cudaMemcpyAsync");
    });
    proto::send_order o;
    o.transfer_id = id;
    o.peer = to;
    o.extents = {m.virt()};
    o.timeout_ms = 30000;
    o.wait_event = event_value();
    auto sent = behind_gate<std::uint64_t>(transfer, proto::send_atom::value, o,
                                           [&] { g.open = true; });
    REQUIRE_MESSAGE(sent, test::why(sent));
    CHECK(*sent == fresh.size());
    std::copy(fresh.begin(), fresh.end(),
              expected[m.src_region].begin() + m.src_offset);
    std::copy(fresh.begin(), fresh.end(),
              owner_bytes[m.dst_region].begin() + m.dst_offset);
  }

  // Waits until transfer `id` from us has landed at the child (a plugin
  // send completes at the sender before its receiver has every byte).
  void landed_at_owner(std::uint64_t id) {
    proto::recv_order o;
    o.transfer_id = id;
    o.peer_name = "decode-0";
    o.timeout_ms = 30000;
    self->request(owner, seconds(60), proto::recv_atom::value, o)
        .receive([&](const proto::recv_report&) {},
                 [&](caf::error& err) { FAIL(render(err)); });
  }

  // Reads `m` from the child's table into ours and checks all of ours.
  void read_back(std::uint64_t id, const table_move& m) {
    auto rep = read(read_order(id, {m}));
    REQUIRE_MESSAGE(rep, test::why(rep));
    expect_read({m});
    check_ours();
  }

  std::uint64_t event_value() const {
    return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(event));
  }
};

} // namespace

TEST_CASE_FIXTURE(ipc_table_pair,
                  "wrapped tables over CUDA IPC across two processes: push, "
                  "one-sided read, and copies that wait for a CUDA event") {
  // Both tables are exported, one entry per region, the two regions of one
  // allocation sharing its handle.
  const auto exported = transport::ipc_table_from_text(our_ep.ipc_handle);
  REQUIRE(exported.size() == 3);
  CHECK(exported[0].handle.bytes == exported[1].handle.bytes);
  CHECK(exported[0].offset == 65536);
  CHECK(exported[0].bytes == ours.sizes[0]);
  CHECK(exported[2].offset == 0);
  REQUIRE(transport::ipc_table_from_text(owner_ep.ipc_handle).size() == 3);

  // 1. Push: the child's transfer actor copies its table into ours.
  const std::vector<table_move> push{
      {0, 0, 1, 0, 65536},
      {0, (1 << 20) + 4096 - 4096, 0, (1 << 20) - 4096, 4096}, // ends to ends
      {1, 0, 2, 4096, 200000},
      {1, (768 << 10) + 100 - 100, 1, (640 << 10) + 48 - 100, 100}, // odd
      {2, 12345, 0, 500000, 777},                                   // unaligned
      {2, 0, 0, 0, 4096},
      {0, 65536, 0, 65536, 65536}, // these two coalesce
      {0, 131072, 0, 131072, 65536},
  };
  proto::send_order s;
  s.transfer_id = 1;
  s.peer = our_ep;
  s.extents = test::virtual_extents(push);
  s.timeout_ms = 30000;
  self->request(owner, seconds(60), proto::send_atom::value, s)
      .receive(
          [&](std::uint64_t bytes) { CHECK(bytes == total_bytes(s.extents)); },
          [&](caf::error& err) { FAIL(render(err)); });
  proto::recv_order r;
  r.transfer_id = 1;
  r.peer_name = "prefill-0";
  r.timeout_ms = 30000;
  self->request(transfer, seconds(60), proto::recv_atom::value, r)
      .receive(
          [&](proto::recv_report& rep) {
            CHECK(rep.bytes == total_bytes(s.extents));
          },
          [&](caf::error& err) { FAIL(render(err)); });
  expect_read(push);
  check_ours();
  const auto owner_after_push = stats_of(owner);
  CHECK(owner_after_push.comms_opened == 0); // CUDA IPC, not the plugin
  CHECK(owner_after_push.transfers_done == 1);

  // 2. One-sided read: our transfer actor copies the child's table.
  const std::vector<table_move> reads{
      {0, 300000, 2, 300000, 131072},
      {2, 7, 1, 100000, 50000},
      {1, 4096, 0, 600000, 40960},
  };
  auto got = read(read_order(2, reads));
  REQUIRE_MESSAGE(got, test::why(got));
  CHECK(got->bytes == total_bytes(test::virtual_extents(reads)));
  CHECK(got->landed_ns >= got->first_known_ns);
  expect_read(reads);
  check_ours();
  const auto owner_after_read = stats_of(owner);
  CHECK(owner_after_read.transfers_done == owner_after_push.transfers_done);
  CHECK(owner_after_read.bytes_sent == owner_after_push.bytes_sent);
  CHECK(stats_of(transfer).comms_opened == 0);

  // 2b. Extents out of a region over CUDA IPC: no pass of the order
  // handler checks them (issue #16); the pass that packs the plan refuses
  // the whole transfer, naming the extent and the region, before any byte
  // moves (not even the good extent's), and the actor works on.
  {
    const std::vector<table_move> leaves{{0, 0, 2, 0, 4096},
                                         {1, 0, 1, ours.sizes[1] - 100, 4096}};
    auto refused = read(read_order(20, leaves));
    REQUIRE_FALSE(refused);
    const auto why = render(refused.error());
    CHECK_MESSAGE(is(refused.error(), ec::invalid_extent), why);
    CHECK_MESSAGE(why.find("extent #1") != std::string::npos, why);
    CHECK_MESSAGE(why.find("leaves destination region 1") != std::string::npos,
                  why);
    check_ours();
    proto::send_order s;
    s.transfer_id = 21;
    s.peer = owner_ep; // the child's table has 3 regions
    s.extents = test::virtual_extents({{0, 0, 2, 0, 4096}, {0, 0, 7, 0, 16}});
    s.timeout_ms = 30000;
    self->request(transfer, seconds(60), proto::send_atom::value, s)
        .receive([&](std::uint64_t) { FAIL("a push into region 7 moved"); },
                 [&](caf::error& err) {
                   CHECK_MESSAGE(is(err, ec::invalid_extent), render(err));
                   CHECK_MESSAGE(render(err).find("names region 7") !=
                                     std::string::npos,
                                 render(err));
                 });
    read_back(22, {2, 0, 0, 4096, 4096}); // the child's region 2: untouched
  }

  // 3. A read that waits for an event: our destination is overwritten
  // (0x11) behind the gate, then the event; the read must land after it.
  {
    const table_move m{1, 0, 2, 700000, 65536};
    gate g;
    write_behind_gate(g, [&] {
      cuda_ok(cudaMemsetAsync(ours.regions[2] + 700000, 0x11, m.length, stream),
              "cudaMemsetAsync");
    });
    auto o = read_order(3, {m});
    o.wait_event = event_value();
    auto rep = behind_gate<proto::recv_report>(
        transfer, proto::read_atom::value, o, [&] { g.open = true; });
    REQUIRE_MESSAGE(rep, test::why(rep));
    expect_read({m});
    check_ours();
  }

  // 4. A push over CUDA IPC that waits for an event: our source is written
  // behind the gate; the child's table must get those bytes (read back).
  push_after_event(4, owner_ep, {2, 800000, 2, 400000, 65536}, 3);
  read_back(5, {2, 400000, 1, 200000, 65536});

  // 5. The same over the plugin (kvsock): the transfer actor polls the
  // event and posts the send once it completed. The peer's endpoint says
  // "another host" (so the plugin moves it) under a name of its own (our
  // transfer actor keeps one data path per peer name).
  {
    auto elsewhere = owner_ep;
    elsewhere.name = "prefill-0 over kvsock";
    elsewhere.host_id = "another host";
    const auto opened = stats_of(transfer).comms_opened;
    push_after_event(6, elsewhere, {1, 300000, 0, 900000, 32768}, 5);
    CHECK(stats_of(transfer).comms_opened > opened); // the plugin moved it
    landed_at_owner(6);
    read_back(7, {0, 900000, 0, 700000, 32768});
  }

  // 6. A read that waits for the child's interprocess event, opened here
  // once (ipc_event_cache): the child writes its source behind a file this
  // test creates only after our transfer actor has taken the read.
  {
    std::ofstream{dir.path / "arm"};
    REQUIRE_MESSAGE(
        test::eventually([&] { return fs::exists(dir.path / "event"); },
                         seconds(30)),
        "the child exported no event (see its output)");
    std::string text;
    std::ifstream{dir.path / "event"} >> text;
    transport::ipc_event_cache events;
    const auto opened = events.open(text);
    CHECK(events.open(text) == opened); // opened once
    CHECK(events.open_count() == 1);
    const table_move m{1, gated_offset, 0, 800000, gated_bytes};
    auto o = read_order(8, {m});
    o.wait_event = opened;
    auto rep = behind_gate<proto::recv_report>(
        transfer, proto::read_atom::value, o,
        [&] { std::ofstream{dir.path / "release"}; });
    REQUIRE_MESSAGE(rep, test::why(rep));
    std::fill_n(owner_bytes[1].begin() + gated_offset, gated_bytes,
                gated_value);
    expect_read({m});
    check_ours();
  }
}

namespace {

std::string export_refusal(void* p, std::size_t n) {
  try {
    transport::export_ipc_region(transport::memory_view{
        memory_kind::cuda, gpu, static_cast<std::byte*>(p), n, false});
  } catch (const transport::gpu_error& e) {
    return e.what();
  }
  return "exported";
}

} // namespace

TEST_CASE("memory CUDA IPC cannot share is named; an interior region's "
          "export carries its offset") {
  cuda_ok(cudaSetDevice(gpu), "cudaSetDevice");
  constexpr std::size_t n = 1 << 20;
  void* managed = nullptr;
  cuda_ok(cudaMallocManaged(&managed, n), "cudaMallocManaged");
  auto why = export_refusal(managed, n);
  CHECK_MESSAGE(why.find("managed memory") != std::string::npos, why);
  void* pinned = nullptr;
  cuda_ok(cudaMallocHost(&pinned, n), "cudaMallocHost");
  why = export_refusal(pinned, n);
  CHECK_MESSAGE(why.find("host memory") != std::string::npos, why);
  void* pooled = nullptr;
  if (cudaMallocAsync(&pooled, n, nullptr) == cudaSuccess) {
    cuda_ok(cudaStreamSynchronize(nullptr), "cudaMallocAsync");
    why = export_refusal(pooled, n);
    CHECK_MESSAGE(why.find("not made by cudaMalloc") != std::string::npos, why);
  }

  void* segment = nullptr;
  cuda_ok(cudaMalloc(&segment, n), "cudaMalloc");
  auto* base = static_cast<std::byte*>(segment);
  const auto inner = transport::export_ipc_region(
      transport::memory_view{memory_kind::cuda, gpu, base + 4096, 8192, false});
  CHECK(inner.offset == 4096);
  CHECK(inner.bytes == 8192);
  CHECK(inner.handle.region_bytes >= n);
  CHECK(inner.allocation ==
        static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(base)));
  why = export_refusal(base + 4096, inner.handle.region_bytes);
  CHECK_MESSAGE(why.find("leaves its allocation") != std::string::npos, why);

  // A table with one managed region advertises no IPC handles: peers (and
  // this actor) use the plugin for it.
  {
    runtime::system_config cfg;
    caf::actor_system sys{cfg};
    caf::scoped_actor self{sys};
    transfer_config tc;
    tc.name = "decode-0";
    tc.region = memory_region::wrap(base, 65536, memory_kind::cuda, gpu, "a");
    tc.more_regions.push_back(
        memory_region::wrap(managed, n, memory_kind::cuda, gpu, "managed"));
    tc.host_id = local_host_id();
    auto t = spawn_transfer(sys, tc);
    self->request(t, seconds(10), proto::endpoint_atom::value)
        .receive([&](proto::endpoint& ep) { CHECK(ep.ipc_handle.empty()); },
                 [&](caf::error& err) { FAIL(render(err)); });
    self->send_exit(t, caf::exit_reason::user_shutdown);
    self->wait_for(t);
  }
  cudaFree(segment);
  if (pooled != nullptr)
    cudaFreeAsync(pooled, nullptr);
  cudaFreeHost(pinned);
  cudaFree(managed);
  cuda_ok(cudaDeviceSynchronize(), "free");
}
#endif
