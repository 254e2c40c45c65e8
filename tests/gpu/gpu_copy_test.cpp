// The batched copy kernel and the unpack kernel on a real GPU, checked byte
// for byte against a host model (every destination byte, copied or not).
#include <doctest/doctest.h>

#ifdef KVFERRY_HAVE_CUDA
#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>

#include <cuda_runtime_api.h>

#include "../support/cuda_upload.hpp"
#include "kvferry/transport/copy_choice.hpp"
#include "kvferry/transport/gpu_copy.hpp"

using namespace kvferry::transport;
using namespace std::chrono_literals;

namespace {

constexpr int gpu = 0;

void cuda_ok(cudaError_t err) {
  REQUIRE_MESSAGE(err == cudaSuccess, cudaGetErrorString(err));
}

std::vector<unsigned char> to_host(const std::byte* p, std::size_t n) {
  std::vector<unsigned char> v(n);
  cuda_ok(cudaMemcpy(v.data(), p, n, cudaMemcpyDeviceToHost));
  return v;
}

// Random extents with odd lengths and unaligned offsets; destinations never
// overlap (so the expected result is unambiguous), sources may.
std::vector<copy_extent> random_extents(std::mt19937_64& rng,
                                        std::size_t region, bool aligned) {
  std::vector<copy_extent> plan;
  std::uniform_int_distribution<std::uint64_t> len(1, 20000), gap(0, 300);
  std::uint64_t dst = gap(rng);
  while (true) {
    std::uint64_t l = len(rng);
    if (aligned)
      l = (l + 15) / 16 * 16;
    if (aligned)
      dst = (dst + 15) / 16 * 16;
    if (dst + l > region)
      break;
    std::uint64_t src =
        std::uniform_int_distribution<std::uint64_t>(0, region - l)(rng);
    if (aligned)
      src = src / 16 * 16;
    plan.push_back({src, dst, l});
    dst += l + gap(rng);
  }
  std::shuffle(plan.begin(), plan.end(), rng);
  return plan;
}

struct device_buffers {
  gpu_region src, dst;
  explicit device_buffers(std::size_t bytes)
      : src(gpu_region::allocate_device(gpu, bytes)),
        dst(gpu_region::allocate_device(gpu, bytes)) {}
  void refill(std::uint64_t seed) {
    gpu_fill_pattern(gpu, src.data(), src.size(), seed);
    gpu_fill_pattern(gpu, dst.data(), dst.size(), ~seed); // poison
  }
};

void check_copy(gpu_copy_engine& engine, device_buffers& bufs,
                const std::vector<copy_extent>& plan) {
  const auto src = to_host(bufs.src.data(), bufs.src.size());
  auto expected = to_host(bufs.dst.data(), bufs.dst.size());
  for (const auto& e : plan)
    std::memcpy(expected.data() + e.dst_offset, src.data() + e.src_offset,
                e.length);
  const auto ticket = engine.copy(bufs.src.view(), bufs.dst.view(), plan);
  engine.wait(ticket, 10s);
  CHECK(to_host(bufs.dst.data(), bufs.dst.size()) == expected);
  CHECK(gpu_count_mismatches(gpu, bufs.src.data(), bufs.dst.data(), plan) == 0);
}

// The plain kernel with extents longer than its items (so items are found
// by the search, not taken as extents) and a block smaller than an item's
// vectors: blocks loop over items and vectors.
copy_tuning small_plain_items() {
  copy_tuning t = plain_copy_tuning();
  t.item_bytes = 4096;
  t.threads_per_block = 64;
  t.blocks_per_sm = 1;
  return t;
}

} // namespace

TEST_CASE("batched copy of random scattered extents, odd sizes and unaligned "
          "offsets") {
  device_buffers bufs{4 << 20};
  std::mt19937_64 rng{1234};
  // SIMT variants, then bulk (TMA) ones; few warps so that each warp's
  // pipeline wraps around its stages many times. Unaligned plans fall back.
  for (copy_tuning tuning :
       {copy_tuning{}, copy_tuning{16, 4, false, 128, 0, false, 4},
        copy_tuning{4096, 16, true, 256, 0, false, 4},
        copy_tuning{65536, 8, true, 512, 1, false, 4},
        copy_tuning{4096, 8, true, 32, 1, true, 4},
        copy_tuning{8192, 8, true, 64, 1, true, 3},
        copy_tuning{16384, 8, true, 128, 0, true, 2},
        copy_tuning{8192, 4, true, 128, 0, false, 4, false, true, true},
        copy_tuning{8192, 8, true, 256, 0, false, 4, false, true, false,
                    true}, // host item list (pre-#5 kernel)
        plain_copy_tuning(), small_plain_items()}) {
    CAPTURE(tuning.item_bytes);
    CAPTURE(tuning.unroll);
    CAPTURE(tuning.bulk);
    gpu_copy_engine engine{gpu, tuning};
    for (bool aligned : {true, false}) {
      CAPTURE(aligned);
      bufs.refill(rng());
      check_copy(engine, bufs, random_extents(rng, bufs.src.size(), aligned));
    }
  }
}

namespace {

// Many tiny extents (16 B .. 400 B), so that item -> extent searches take
// several rounds and warps walk past many extents between their items.
std::vector<copy_extent> tiny_extents(std::mt19937_64& rng, std::size_t region,
                                      std::size_t n) {
  std::vector<copy_extent> plan;
  std::uniform_int_distribution<std::uint64_t> len(16, 400);
  std::uint64_t dst = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t l = len(rng);
    if (dst + l > region)
      break;
    plan.push_back(
        {std::uniform_int_distribution<std::uint64_t>(0, region - l)(rng), dst,
         l});
    dst += l + 1; // never adjacent: nothing coalesces
  }
  std::shuffle(plan.begin(), plan.end(), rng);
  return plan;
}

} // namespace

TEST_CASE(
    "the default kernel finds every item of packed plans of every shape") {
  device_buffers bufs{8 << 20};
  std::mt19937_64 rng{4321};
  // The default runs the block-per-item kernel on plans of large extents and
  // the claiming warp kernel on the others (launches after the first start
  // mid-counter); the warp variants below stride, each warp taking every
  // n-th item, whatever the extents.
  copy_tuning striding;
  striding.claim_items = false;
  striding.block_per_item_from = std::numeric_limits<std::uint64_t>::max();
  copy_tuning few_warps =
      striding; // one warp per block, one per SM: long walks
  few_warps.threads_per_block = 32;
  few_warps.blocks_per_sm = 1;
  copy_tuning small_items = striding;
  small_items.item_bytes = 16;
  small_items.unroll = 4;
  copy_tuning unbalanced = striding;
  unbalanced.balance_rounds = false;
  unbalanced.streaming = false;
  copy_tuning claiming_few_warps = few_warps;
  claiming_few_warps.claim_items = true;
  // Block per item whatever the extents: one search per block.
  copy_tuning blocks;
  blocks.block_per_item_from = 0;
  copy_tuning small_blocks = blocks; // one warp per block, 16-byte items
  small_blocks.threads_per_block = 32;
  small_blocks.item_bytes = 16;
  copy_tuning big_blocks = blocks; // several passes per item
  big_blocks.item_bytes = 65536;
  big_blocks.threads_per_block = 128;
  copy_tuning blocks_in_order = blocks;
  blocks_in_order.order_by_destination = true;
  copy_tuning claiming_in_order = claiming_few_warps;
  claiming_in_order.order_by_destination = true;
  for (const copy_tuning& tuning :
       {copy_tuning{}, striding, few_warps, small_items, unbalanced,
        claiming_few_warps, blocks, small_blocks, big_blocks, blocks_in_order,
        claiming_in_order}) {
    CAPTURE(tuning.item_bytes);
    CAPTURE(tuning.threads_per_block);
    CAPTURE(tuning.claim_items);
    CAPTURE(tuning.block_per_item_from);
    CAPTURE(tuning.order_by_destination);
    gpu_copy_engine engine{gpu, tuning};
    const std::vector<std::vector<copy_extent>> plans{
        random_extents(rng, bufs.src.size(), true),
        random_extents(rng, bufs.src.size(), false),
        tiny_extents(rng, bufs.src.size(), 20000),
        {{0, 0, bufs.src.size()}},
        {{3, 1, bufs.src.size() - 5}},
        {},
        tiny_extents(rng, bufs.src.size(), 40)};
    for (const auto& plan : plans) { // small after large: slot buffers reused
      CAPTURE(plan.size());
      bufs.refill(rng());
      check_copy(engine, bufs, plan);
    }
  }
}

TEST_CASE("thousands of equal KV blocks copy in one launch") {
  constexpr std::size_t block = 16384, blocks = 200;
  device_buffers bufs{block * blocks};
  bufs.refill(99);
  std::vector<std::uint32_t> perm(blocks);
  std::iota(perm.begin(), perm.end(), 0u);
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64{5});
  std::vector<copy_extent> plan;
  for (std::uint32_t i = 0; i < blocks; ++i)
    plan.push_back(
        {std::uint64_t{i} * block, std::uint64_t{perm[i]} * block, block});
  for (bool bulk : {false, true}) {
    copy_tuning tuning;
    tuning.bulk = bulk;
    gpu_copy_engine engine{gpu, tuning};
    bufs.refill(bulk ? 100 : 101);
    check_copy(engine, bufs, plan);
  }
}

TEST_CASE("a prepared plan is launched again at other bases (one per layer)") {
  constexpr std::size_t layer = 1 << 20;
  device_buffers bufs{3 * layer};
  bufs.refill(7);
  std::mt19937_64 rng{8};
  const auto plan = random_extents(rng, layer, true);
  gpu_copy_engine engine{gpu};
  const auto id = engine.prepare(plan, layer, layer);
  std::vector<copy_ticket> tickets;
  for (std::size_t l = 0; l < 3; ++l)
    tickets.push_back(engine.launch(id, bufs.src.data() + l * layer,
                                    bufs.dst.data() + l * layer));
  for (auto t : tickets)
    engine.wait(t, 10s);
  engine.release(id);
  for (std::size_t l = 0; l < 3; ++l)
    CHECK(gpu_count_mismatches(gpu, bufs.src.data() + l * layer,
                               bufs.dst.data() + l * layer, plan) == 0);
}

// A caller preparing one plan at a time (prepare, launch, wait, release)
// must keep reusing one plan slot: every other slot's first use allocates
// pinned staging, milliseconds each. Plans held at once take distinct slots.
TEST_CASE("one plan at a time reuses one slot; plans held at once do not") {
  constexpr std::size_t layer = 1 << 20;
  device_buffers bufs{layer};
  bufs.refill(9);
  std::mt19937_64 rng{10};
  const auto plan = random_extents(rng, layer, true);
  gpu_copy_engine engine{gpu};
  std::vector<std::uint32_t> slots;
  for (int i = 0; i < 12; ++i) {
    const auto id = engine.prepare(plan, layer, layer);
    slots.push_back(id.slot);
    engine.wait(engine.launch(id, bufs.src.data(), bufs.dst.data()), 10s);
    engine.release(id);
  }
  CHECK(std::count(slots.begin(), slots.end(), slots.front()) ==
        static_cast<long>(slots.size()));
  CHECK(gpu_count_mismatches(gpu, bufs.src.data(), bufs.dst.data(), plan) == 0);

  std::vector<copy_plan_id> held;
  for (int i = 0; i < 4; ++i)
    held.push_back(engine.prepare(plan, layer, layer));
  for (std::size_t i = 0; i < held.size(); ++i)
    for (std::size_t j = i + 1; j < held.size(); ++j)
      CHECK(held[i].slot != held[j].slot);
  for (auto id : held)
    engine.release(id);
}

TEST_CASE(
    "a finished copy has its kernel's timing; an unfinished one not yet") {
  constexpr std::size_t bytes = 64u << 20;
  device_buffers bufs{bytes};
  bufs.refill(11);
  const std::vector<copy_extent> plan{{0, 0, bytes}};
  for (bool high_priority : {true, false}) {
    copy_tuning tuning;
    tuning.high_priority_stream = high_priority;
    gpu_copy_engine engine{gpu, tuning};
    const auto before = std::chrono::steady_clock::now();
    const auto t = engine.copy(bufs.src.view(), bufs.dst.view(), plan);
    if (!engine.done(t)) // a 64 MiB copy takes ~50 us: usually still running
      CHECK_FALSE(engine.timing_of(t).has_value());
    engine.wait(t, 10s);
    const auto seen = std::chrono::steady_clock::now();
    const auto timing = engine.timing_of(t);
    REQUIRE(timing.has_value());
    // 128 MiB of traffic: at least ~30 us at H100 HBM speed, far below 1 s.
    CHECK(timing->gpu_time > 1us);
    CHECK(timing->gpu_time < 1s);
    CHECK(timing->ended - timing->started == timing->gpu_time);
    // On the host clock the kernel ran between the call and its completion
    // seen (the anchor may place it up to a few microseconds late).
    CHECK(timing->started > before);
    CHECK(timing->ended < seen + 20us);
    CHECK(gpu_count_mismatches(gpu, bufs.src.data(), bufs.dst.data(), plan) ==
          0);
  }
}

// A plan packed in virtual offsets (pack_virtual_plan, as an endpoint's
// caller packs one, issue #16) and translated by the kernel through the
// regions' bases lands exactly where its translated extents would, on
// every packed-plan kernel: the warp kernel (claiming items), the
// block-per-item kernel and the plain kernel.
TEST_CASE("a plan in virtual offsets, translated by the kernel, lands where "
          "its translated extents would") {
  constexpr std::size_t mib = 1 << 20;
  device_buffers bufs{4 * mib};
  constexpr unsigned shift = 40;
  const std::vector<std::uint64_t> src_offsets{0, mib + 4096, 3 * mib},
      src_sizes{mib, mib, mib / 2}, dst_offsets{2 * mib, 0},
      dst_sizes{2 * mib - 16, mib};
  const region_layout src{src_offsets.data(), src_sizes.data(), 3, shift},
      dst{dst_offsets.data(), dst_sizes.data(), 2, shift};
  std::mt19937_64 rng{19};
  // Destinations in order without overlap (runs of neighbours on both
  // sides coalesce), then shuffled; sources anywhere in a random region.
  std::vector<copy_extent> plan;
  std::uniform_int_distribution<std::uint64_t> len(1, 9000), gap(0, 64),
      pick(0, 5);
  for (std::uint64_t r = 0; r < 2; ++r)
    for (std::uint64_t at = gap(rng);;) {
      const std::uint64_t l = len(rng), sr = pick(rng) % 3;
      if (at + 2 * l > dst_sizes[r] || 2 * l > src_sizes[sr])
        break;
      const std::uint64_t from = std::uniform_int_distribution<std::uint64_t>(
          0, src_sizes[sr] - 2 * l)(rng);
      plan.push_back({(sr << shift) + from, (r << shift) + at, l});
      if (pick(rng) < 2) { // its neighbour on both sides
        plan.push_back({(sr << shift) + from + l, (r << shift) + at + l, l});
        at += l;
      }
      at += l + gap(rng);
    }
  std::vector<copy_extent> translated;
  translate_extents(plan, src, dst, translated);
  std::vector<std::uint64_t> packed((packed_plan_bytes(plan.size()) + 7) / 8);
  const auto size = pack_virtual_plan(plan, 4096, src, dst, packed.data());
  REQUIRE(size.extents < plan.size()); // some coalesced

  copy_tuning warp;
  warp.item_bytes = 4096;
  copy_tuning block = warp;
  block.block_per_item_from = 0;
  for (const copy_tuning& tuning : {warp, block, small_plain_items()}) {
    CAPTURE(tuning.plain);
    CAPTURE(tuning.block_per_item_from);
    bufs.refill(23);
    const auto from = to_host(bufs.src.data(), bufs.src.size());
    auto expected = to_host(bufs.dst.data(), bufs.dst.size());
    for (const auto& e : translated)
      std::memcpy(expected.data() + e.dst_offset, from.data() + e.src_offset,
                  e.length);
    gpu_copy_engine engine{gpu, tuning};
    const auto id = engine.prepare_virtual(packed.data(), size, src, dst);
    CHECK(engine.copied_bytes(id) == total_bytes(plan));
    const auto ticket = engine.launch(id, bufs.src.data(), bufs.dst.data());
    engine.release(id);
    engine.wait(ticket, 10s);
    CHECK(to_host(bufs.dst.data(), bufs.dst.size()) == expected);
  }
  copy_tuning listed;
  listed.host_item_list = true; // reads a host-cut list: refused
  gpu_copy_engine engine{gpu, listed};
  CHECK_THROWS_AS(engine.prepare_virtual(packed.data(), size, src, dst),
                  std::invalid_argument);
}

TEST_CASE("a plan outside its regions is refused before anything runs") {
  device_buffers bufs{4096};
  gpu_copy_engine engine{gpu};
  CHECK_THROWS_WITH_AS(
      engine.copy(bufs.src.view(), bufs.dst.view(), {{0, 4000, 200}}),
      doctest::Contains("extent #0"), std::invalid_argument);
  // An engine that sorts plans by destination names the fault by the
  // caller's index, not by its place in the sorted copy.
  copy_tuning in_order;
  in_order.order_by_destination = true;
  gpu_copy_engine sorting{gpu, in_order};
  CHECK_THROWS_WITH_AS(
      sorting.copy(bufs.src.view(), bufs.dst.view(),
                   {{0, 1024, 16}, {0, 4000, 200}, {0, 0, 16}}),
      doctest::Contains("extent #1"), std::invalid_argument);
}

namespace {

// A synthetic UNPACK ring in device memory, laid out as an UNPACK plugin does.
struct device_ring {
  gpu_region meta = gpu_region::allocate_device(gpu, sizeof(ncclNetUnpackMeta));
  gpu_region bounce;
  gpu_region handle =
      gpu_region::allocate_device(gpu, sizeof(ncclNetUnpackHandle));
  explicit device_ring(std::size_t bounce_bytes)
      : bounce(gpu_region::allocate_device(gpu, bounce_bytes)) {
    ncclNetUnpackHandle h{reinterpret_cast<ncclNetUnpackMeta*>(meta.data()),
                          reinterpret_cast<char*>(bounce.data()), 0};
    cuda_ok(kvferry::test::upload(handle.data(), &h, sizeof(h)));
  }
  void post(int slot, const std::vector<ncclNetUnpackRecord>& recs) {
    auto* m = reinterpret_cast<ncclNetUnpackMeta*>(meta.data());
    cuda_ok(kvferry::test::upload(&m->records[slot][0], recs.data(),
                                  recs.size() * sizeof(recs[0])));
    const std::uint64_t count = recs.size();
    cuda_ok(kvferry::test::upload(&m->count[slot], &count, sizeof(count)));
  }
};

// 4 KiB pages of a receive of `bytes`, shuffled in the bounce buffer.
std::vector<ncclNetUnpackRecord> shuffled_pages(std::uint64_t bytes,
                                                std::mt19937_64& rng) {
  std::vector<ncclNetUnpackRecord> recs;
  for (std::uint64_t off = 0; off < bytes; off += NCCL_NET_UNPACK_PAGE)
    recs.push_back({0,
                    static_cast<std::uint32_t>(std::min<std::uint64_t>(
                        NCCL_NET_UNPACK_PAGE, bytes - off)),
                    off});
  std::vector<std::uint32_t> page(recs.size());
  std::iota(page.begin(), page.end(), 0u);
  std::shuffle(page.begin(), page.end(), rng);
  for (std::size_t i = 0; i < recs.size(); ++i)
    recs[i].src_off = page[i] * NCCL_NET_UNPACK_PAGE;
  std::shuffle(recs.begin(), recs.end(), rng);
  return recs;
}

void check_unpack(const unpack_destination& where, std::uint64_t bytes,
                  std::uint64_t seq) {
  std::mt19937_64 rng{seq};
  device_ring ring{8 << 20};
  gpu_fill_pattern(gpu, ring.bounce.data(), ring.bounce.size(), seq);
  auto dst = gpu_region::allocate_device(gpu, 8 << 20);
  gpu_fill_pattern(gpu, dst.data(), dst.size(), seq + 1);
  const auto recs = shuffled_pages(bytes, rng);
  ring.post(unpack_slot_of(seq), recs);
  REQUIRE_FALSE(check_unpack_slot(recs.data(), recs.size(), unpack_slot_of(seq),
                                  ring.bounce.size(), where, dst.size()));
  auto expected = to_host(dst.data(), dst.size());
  const auto bounce = to_host(ring.bounce.data(), ring.bounce.size());
  unpack_on_host(recs.data(), recs.size(), bounce.data(), expected.data(),
                 where);

  gpu_copy_engine engine{gpu};
  const auto t = engine.unpack(ring.handle.data(), seq, ring.bounce.size(),
                               dst.view(), where);
  engine.wait(t, 10s);
  CHECK(to_host(dst.data(), dst.size()) == expected);
}

} // namespace

TEST_CASE("unpack into a contiguous destination") {
  check_unpack(unpack_destination::contiguous(4096 * 3), 4 << 20, 17);
}

TEST_CASE(
    "unpack into scattered KV blocks, pages straddling block boundaries") {
  // 6000-byte blocks: 4 KiB pages straddle them.
  std::vector<std::uint64_t> offsets;
  for (std::uint64_t b = 0; b < 700; ++b)
    offsets.push_back(((b * 389) % 1300) * 6000);
  check_unpack(unpack_destination::blocks(6000, offsets), 4100 * 1000, 3);
}

TEST_CASE("one launch unpacks all 16 ring slots, contiguous and block "
          "destinations mixed") {
  constexpr std::uint64_t receive = 1 << 20;
  std::mt19937_64 rng{21};
  device_ring ring{NCCL_NET_UNPACK_SLOTS * receive};
  gpu_fill_pattern(gpu, ring.bounce.data(), ring.bounce.size(), 21);
  auto dst =
      gpu_region::allocate_device(gpu, 2 * NCCL_NET_UNPACK_SLOTS * receive);
  gpu_fill_pattern(gpu, dst.data(), dst.size(), 22);
  auto expected = to_host(dst.data(), dst.size());
  const auto bounce = to_host(ring.bounce.data(), ring.bounce.size());
  const std::uint64_t first_seq = 37; // starts mid-ring: slots 5..15, then 0..4
  std::vector<unpack_destination> where;
  for (std::uint64_t k = 0; k < NCCL_NET_UNPACK_SLOTS; ++k) {
    auto recs = shuffled_pages(receive, rng);
    for (auto& r : recs)
      r.src_off += static_cast<std::uint32_t>(k * receive);
    ring.post(unpack_slot_of(first_seq + k), recs);
    if (k % 2 == 0) {
      where.push_back(unpack_destination::contiguous(k * 2 * receive));
    } else {
      std::vector<std::uint64_t>
          offsets; // 16 KiB blocks, reversed, in this receive's 2 MiB
      for (std::uint64_t b = 0; b < receive / 16384; ++b)
        offsets.push_back(k * 2 * receive +
                          (2 * receive / 16384 - 1 - b) * 16384);
      where.push_back(unpack_destination::blocks(16384, offsets));
    }
    unpack_on_host(recs.data(), recs.size(), bounce.data(), expected.data(),
                   where.back());
  }
  gpu_copy_engine engine{gpu};
  engine.wait(engine.unpack_batch(ring.handle.data(), first_seq, where,
                                  ring.bounce.size(), dst.view()),
              10s);
  CHECK(to_host(dst.data(), dst.size()) == expected);
  // The slots are busy until that launch is done, free after.
  CHECK_NOTHROW(
      engine.wait(engine.unpack(ring.handle.data(), first_seq + 16,
                                ring.bounce.size(), dst.view(), where[0]),
                  10s));
}

TEST_CASE("unpack reports records outside the bounce buffer instead of copying "
          "them") {
  device_ring ring{1 << 20};
  auto dst = gpu_region::allocate_device(gpu, 1 << 20);
  ring.post(2, {{0, 4096, 0}, {(1 << 20) - 100, 4096, 4096}});
  gpu_copy_engine engine{gpu};
  const auto t = engine.unpack(ring.handle.data(), 18, ring.bounce.size(),
                               dst.view(), unpack_destination::contiguous());
  bool threw = false;
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  try {
    while (!engine.done(t) && std::chrono::steady_clock::now() < deadline) {
    }
  } catch (const gpu_error& e) {
    threw = true;
    CHECK(std::string{e.what()}.find("1 record(s)") != std::string::npos);
  }
  CHECK(threw);
}

#else
TEST_CASE("GPU copy tests need a CUDA build") {
}
#endif
