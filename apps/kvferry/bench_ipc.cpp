// kvferry bench ipc — same-host GPU copies across two processes.
//
// The parent (the producer) allocates the source pool on --src-gpu, fills it,
// exports a CUDA IPC handle and starts a child (this binary again, with
// --child-handle). The child (the consumer) opens the handle, allocates the
// destination pool on --dst-gpu and, for each block size, copies
// N blocks scattered at random in the source pool to N random places in its
// own pool with, in the same run:
//   - kvferry's batched kernel as the workers run it: the kernel chosen for
//     this GPU and block size (copy_choice.hpp: KVFERRY_COPY_KERNEL, the
//     cache, or an autotune now) -- one launch; plan uploaded once, and again
//     with the plan's preparation and upload counted,
//   - the two kernels the choice must match or beat: kvferry's default
//     kernel and the plain kernel (a block per extent, issue #18),
//   - a per-block cudaMemcpyAsync loop,
//   - cudaMemcpyBatchAsync (CUDA 12.8+),
//   - one contiguous copy of the same total (the ceiling): cudaMemcpyAsync on
//     one GPU, cudaMemcpyPeerAsync between two (the kernels run on the
//     destination GPU and read the source over peer access).
// The same blocks also move over region tables of --table-layers regions per
// side (a serving stack's per-layer KV tensors, wrapped in place: one launch
// through the address translation the transfer actor uses), beside the
// one-pool kernel of the same row.
// Then the UNPACK kernel on a synthetic ring (4 KiB fragments) against plain
// copies of the same bytes. Every method's destination is poisoned before
// and verified after its timed runs. Times: CUDA events, warm-up, median.
#include <iostream>

#include "commands.hpp"
#include "exec_vector.hpp"
#include "size_list.hpp"

#ifdef KVFERRY_HAVE_CUDA
#include <algorithm>
#include <chrono>
#include <fstream>
#include <limits>
#include <numeric>
#include <poll.h>
#include <random>
#include <signal.h>
#include <sstream>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cuda_runtime_api.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "kvferry/actors/ipc_table.hpp"
#include "kvferry/transport/copy_choice.hpp"
#include "kvferry/transport/gpu_copy.hpp"
#include "kvferry/transport/gpu_info.hpp"
#include "kvferry/transport/gpu_topology.hpp"
#endif

namespace kvferry::app {

namespace {

struct bench_ipc_options {
  std::string json_path;
  std::string sizes = "4K,16K,64K,256K,2M";
  std::string total = "256M";
  int repeats = 20;
  int src_gpu = 0; // the producer's pool
  int dst_gpu = 0; // the consumer's pool; every kernel runs here
  bool sweep = false;
  bool no_unpack = false;
  int table_layers = 32;    // 0: no region-table case
  std::string copy_kernel;  // sets KVFERRY_COPY_KERNEL for this run
  std::string child_handle; // internal: set in the child process
};

#ifdef KVFERRY_HAVE_CUDA

using json = nlohmann::json;
using namespace kvferry::transport;

long peak_rss_kib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw gpu_error(std::string{what} + ": " + cudaGetErrorString(err));
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Times `enqueue` (work put on `stream`) with CUDA events: `warmup` untimed
// runs, then repeats until `repeats` samples or `budget_s` seconds are used
// (slow baselines get fewer samples, at least 3). Returns the median in s.
template<typename Enqueue>
double time_on_stream(cudaStream_t stream, int warmup, int repeats,
                      double budget_s, Enqueue&& enqueue) {
  cudaEvent_t start, stop;
  cuda_check(cudaEventCreate(&start), "cudaEventCreate");
  cuda_check(cudaEventCreate(&stop), "cudaEventCreate");
  for (int i = 0; i < warmup; ++i)
    enqueue();
  cuda_check(cudaStreamSynchronize(stream), "warm-up");
  std::vector<double> samples;
  double spent = 0;
  for (int i = 0; i < repeats && (samples.size() < 3 || spent < budget_s);
       ++i) {
    cuda_check(cudaEventRecord(start, stream), "cudaEventRecord");
    enqueue();
    cuda_check(cudaEventRecord(stop, stream), "cudaEventRecord");
    cuda_check(cudaEventSynchronize(stop), "timed run");
    float ms = 0;
    cuda_check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    samples.push_back(ms / 1e3);
    spent += ms / 1e3;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return median(samples);
}

double gbps(std::uint64_t bytes, double seconds) {
  return seconds > 0 ? static_cast<double>(bytes) / seconds / 1e9 : 0.0;
}

// N distinct block slots out of `slots`, in random order.
std::vector<std::uint64_t> random_slots(std::mt19937_64& rng,
                                        std::uint64_t slots, std::uint64_t n) {
  std::vector<std::uint64_t> all(slots);
  std::iota(all.begin(), all.end(), 0ull);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(n);
  return all;
}

// ---- the child: all measurements

struct child_context {
  gpu_pair pair;
  int gpu;         // the destination GPU, where every copy runs
  memory_view src; // the parent's pool, opened over IPC
  gpu_region dst;
  cudaStream_t stream;
  int repeats;
  std::vector<named_band> chosen; // the copy kernel per block size
  int table_layers = 0;           // regions per side of the table case
  std::uint64_t poison_seed = 1;

  void poison() {
    gpu_fill_pattern(gpu, dst.data(), dst.size(), 0xdead0000 + poison_seed++);
  }
  std::uint64_t mismatches(const std::vector<copy_extent>& plan) {
    return gpu_count_mismatches(gpu, src.base, dst.data(), plan);
  }
  // The plain copy the kernel is measured against (see plan_gpu_pair).
  void enqueue_ceiling_copy(std::uint64_t bytes) {
    if (pair.ceiling == copy_ceiling::same_device_memcpy)
      cuda_check(cudaMemcpyAsync(dst.data(), src.base, bytes,
                                 cudaMemcpyDeviceToDevice, stream),
                 "contiguous cudaMemcpyAsync");
    else
      cuda_check(cudaMemcpyPeerAsync(dst.data(), pair.dst, src.base, pair.src,
                                     bytes, stream),
                 "contiguous cudaMemcpyPeerAsync");
  }
};

json method_result(double seconds, std::uint64_t bytes, double ceiling_s,
                   std::uint64_t bad) {
  return json{{"seconds", seconds},
              {"gbps", gbps(bytes, seconds)},
              {"ratio_to_contiguous", seconds > 0 ? ceiling_s / seconds : 0.0},
              {"verified", bad == 0},
              {"mismatched_bytes", bad}};
}

// The kernel variants `--sweep` times (see docs/gpu.md for what each showed).
struct kernel_variant {
  const char* kind;
  copy_tuning tuning;
  /// The plan packed in virtual offsets and translated by the kernel
  /// (prepare_virtual), as an endpoint caller's pass would pack it (issue
  /// #16): what the translation costs the kernel.
  bool virtual_offsets = false;
};

// The warp kernel (claim_items) whatever the plan's extents: the default
// for extents under copy_tuning::block_per_item_from.
copy_tuning warp_kernel() {
  copy_tuning t;
  t.block_per_item_from = std::numeric_limits<std::uint64_t>::max();
  return t;
}

// The SIMT variants stride over the items (each warp takes every n-th), as
// the default did before claim_items: the sweep's rows keep their meaning.
copy_tuning striding() {
  copy_tuning t = warp_kernel();
  t.claim_items = false;
  return t;
}

// The block-per-item kernel whatever the plan's extents.
copy_tuning block_kernel(std::uint32_t item = 8192, int threads = 256) {
  copy_tuning t;
  t.block_per_item_from = 0;
  t.item_bytes = item;
  t.threads_per_block = threads;
  return t;
}

copy_tuning in_destination_order(copy_tuning t) {
  t.order_by_destination = true;
  return t;
}

// Cache hints (kernels.cu load16/store16): 0 plain, 1 streaming (the
// default), 2 L2::256B loads + streaming stores, 3 those loads + plain stores.
copy_tuning cached(copy_tuning t, int hint) {
  t.streaming = hint == 1 || hint == 2;
  t.prefetch_l2_256 = hint >= 2;
  return t;
}

std::vector<kernel_variant> sweep_variants() {
  auto simt = [](std::uint32_t item, int unroll, bool streaming = true,
                 bool prefetch = false) {
    copy_tuning t = striding();
    t.item_bytes = item;
    t.unroll = unroll;
    t.streaming = streaming;
    t.prefetch_l2_256 = prefetch;
    return t;
  };
  auto bulk = [](std::uint32_t item, int threads, int stages) {
    copy_tuning t;
    t.bulk = true;
    t.item_bytes = item;
    t.threads_per_block = threads;
    t.bulk_stages = stages;
    return t;
  };
  auto cta = [](std::uint32_t item, int unroll, int threads) {
    copy_tuning t;
    t.cta_per_item = true;
    t.item_bytes = item;
    t.unroll = unroll;
    t.threads_per_block = threads;
    return t;
  };
  // The warp kernel at another occupancy. Its registers (ptxas, sm_90: 72 /
  // 118 / 184 per thread at unroll 4 / 8 / 16) cap it at 2 blocks of 256
  // threads per SM at unroll 8, 1 at 16.
  auto occupancy = [](int threads, int blocks_per_sm, int unroll) {
    copy_tuning t = warp_kernel();
    t.threads_per_block = threads;
    t.blocks_per_sm = blocks_per_sm;
    t.unroll = unroll;
    return t;
  };
  copy_tuning unbalanced = striding();
  unbalanced.balance_rounds = false;
  copy_tuning host_items = striding(); // the kernel before issue #5
  host_items.host_item_list = true;
  copy_tuning claiming_16k = warp_kernel();
  claiming_16k.item_bytes = 16384;
  return {
      {"default", copy_tuning{}},
      {"claim-items (warp kernel)", warp_kernel()},
      {"claim-items, virtual offsets (kernel translates)", warp_kernel(), true},
      {"block-per-item", block_kernel()},
      {"block-per-item", block_kernel(16384, 512)},
      {"block-per-item", block_kernel(16384, 256)},
      {"block-per-item, destination order",
       in_destination_order(block_kernel())},
      {"claim-items, destination order", in_destination_order(warp_kernel())},
      {"block-per-item, plain stores", cached(block_kernel(), 0)},
      {"block-per-item, nc L2::256B loads", cached(block_kernel(), 2)},
      {"block-per-item, nc L2::256B loads, plain stores",
       cached(block_kernel(), 3)},
      {"block-per-item, destination order, plain stores",
       cached(in_destination_order(block_kernel()), 0)},
      {"simt-cs-packed-plan (striding)", striding()},
      {"simt-cs-host-item-list (pre-#5)", host_items},
      {"simt-cs-claim-items", claiming_16k},
      {"simt-cs-unbalanced-grid", unbalanced},
      {"simt-plain", simt(8192, 8, false)},
      {"simt-cs", simt(4096, 8)},
      {"simt-cs", simt(16384, 8)},
      {"simt-cs", simt(8192, 16)},
      {"simt-nc256-cs", simt(8192, 8, true, true)},
      {"simt-cs", simt(4096, 4)},
      {"claim-occupancy", occupancy(256, 1, 8)},
      {"claim-occupancy", occupancy(128, 2, 16)},
      {"claim-occupancy", occupancy(256, 3, 4)},
      {"bulk", bulk(16384, 32, 4)},
      {"bulk", bulk(16384, 32, 2)},
      {"cta-per-item", cta(32768, 8, 256)},
      {"cta-per-item", cta(16384, 4, 256)}};
}

// `extents` packed in virtual offsets over one region per side (at the
// launch bases) and prepared for the kernel to translate.
copy_plan_id prepare_in_virtual_offsets(gpu_copy_engine& engine,
                                        const std::vector<copy_extent>& extents,
                                        std::uint64_t src_bytes,
                                        std::uint64_t dst_bytes) {
  const std::uint64_t origin = 0;
  const region_layout src{&origin, &src_bytes, 1, 40},
      dst{&origin, &dst_bytes, 1, 40};
  std::vector<std::uint64_t> packed((packed_plan_bytes(extents.size()) + 7) /
                                    8);
  const auto size = pack_virtual_plan(extents, engine.tuning().item_bytes, src,
                                      dst, packed.data());
  return engine.prepare_virtual(packed.data(), size, src, dst);
}

// One kernel variant on `extents`, timed and verified: a row of the sweep.
json time_kernel_variant(child_context& ctx, const kernel_variant& variant,
                         const std::vector<copy_extent>& extents,
                         std::uint64_t bytes, double ceiling_s) {
  gpu_copy_engine engine{ctx.gpu, variant.tuning};
  auto* s = static_cast<cudaStream_t>(engine.native_stream());
  const auto id = variant.virtual_offsets
                      ? prepare_in_virtual_offsets(
                            engine, extents, ctx.src.bytes, ctx.dst.size())
                      : engine.prepare(extents, ctx.src.bytes, ctx.dst.size());
  ctx.poison();
  const double sec = time_on_stream(s, 2, ctx.repeats, 1.0, [&] {
    engine.launch(id, ctx.src.base, ctx.dst.data());
  });
  engine.release(id);
  const auto& t = engine.tuning();
  return json{{"kernel", variant.kind},
              {"item_bytes", t.item_bytes},
              {"unroll", t.unroll},
              {"threads", t.threads_per_block},
              {"stages", t.bulk ? t.bulk_stages : 0},
              {"grid_blocks", engine.grid_blocks()},
              {"gbps", gbps(bytes, sec)},
              {"ratio_to_contiguous", ceiling_s / sec},
              {"verified", ctx.mismatches(extents) == 0}};
}

// Every variant on the same scattered plan, then the default kernel on one
// contiguous extent, which separates "scattered" from "kernel" costs.
json sweep_kernels(child_context& ctx, const std::vector<copy_extent>& plan,
                   std::uint64_t bytes, double ceiling_s) {
  json variants = json::array();
  for (const auto& variant : sweep_variants())
    variants.push_back(
        time_kernel_variant(ctx, variant, plan, bytes, ceiling_s));
  const std::vector<copy_extent> whole{{0, 0, bytes}};
  for (const auto& variant : std::vector<kernel_variant>{
           {"default on one contiguous extent", copy_tuning{}},
           {"claim-items on one contiguous extent", warp_kernel()},
           {"striding on one contiguous extent", striding()}})
    variants.push_back(
        time_kernel_variant(ctx, variant, whole, bytes, ceiling_s));
  // Which part of "scattered" costs: the gaps, or the random order on the
  // source or the destination side? The same n blocks in other layouts.
  const std::uint64_t n = plan.size(), block = plan.front().length;
  std::vector<std::uint64_t> shuffled(n);
  std::iota(shuffled.begin(), shuffled.end(), 0ull);
  std::mt19937_64 rng{7};
  std::shuffle(shuffled.begin(), shuffled.end(), rng);
  auto layout = [&](auto src_slot, auto dst_slot) {
    std::vector<copy_extent> p(n);
    for (std::uint64_t i = 0; i < n; ++i)
      p[i] = copy_extent{src_slot(i) * block, dst_slot(i) * block, block};
    return p;
  };
  const std::vector<std::pair<const char*, std::vector<copy_extent>>> shapes{
      {"every other slot, same slots",
       layout([](auto i) { return 2 * i; }, [](auto i) { return 2 * i; })},
      {"every other slot, destination one slot on",
       layout([](auto i) { return 2 * i; }, [](auto i) { return 2 * i + 1; })},
      {"source in order, destination shuffled",
       layout([](auto i) { return i; }, [&](auto i) { return shuffled[i]; })},
      {"source shuffled, destination in order",
       layout([&](auto i) { return shuffled[i]; }, [](auto i) { return i; })},
      {"both shuffled alike", layout([&](auto i) { return shuffled[i]; },
                                     [&](auto i) { return shuffled[i]; })}};
  for (const auto& [shape, extents] : shapes)
    for (const auto& [kernel, tuning] :
         {std::pair{"warp kernel", warp_kernel()},
          std::pair{"block per item", block_kernel()}})
      variants.push_back(time_kernel_variant(
          ctx,
          {(std::string{"layout: "} + shape + " / " + kernel).c_str(), tuning},
          extents, bytes, ceiling_s));
  return variants;
}

// One kernel on the plan, launched as the kvferry column is (plan prepared
// once): the same-run baselines of the chosen kernel.
json time_baseline_kernel(child_context& ctx, const copy_tuning& tuning,
                          const std::vector<copy_extent>& plan,
                          std::uint64_t bytes, double contiguous_s) {
  gpu_copy_engine engine{ctx.gpu, tuning};
  auto* s = static_cast<cudaStream_t>(engine.native_stream());
  ctx.poison();
  const auto id = engine.prepare(plan, ctx.src.bytes, ctx.dst.size());
  const double sec = time_on_stream(s, 3, ctx.repeats, 2.0, [&] {
    engine.launch(id, ctx.src.base, ctx.dst.data());
  });
  engine.release(id);
  return method_result(sec, bytes, contiguous_s, ctx.mismatches(plan));
}

std::uint64_t address_of(const void* p) {
  return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(p));
}

std::byte* pointer_at(std::uint64_t address) {
  return reinterpret_cast<std::byte*>(static_cast<std::uintptr_t>(address));
}

// The row's blocks between region tables of ctx.table_layers regions per
// side, as a serving stack registers its per-layer KV tensors: the source
// pool seen as that many slices (regions inside one IPC allocation), the
// destination as that many allocations of their own (vLLM: one per layer).
// Slot k of a side is block k % per-region of region k / per-region. The
// plan's virtual offsets become ONE launch through to_address_plan, as in
// the transfer actor; the kernel is the row's choice.
json time_over_table(child_context& ctx, std::uint64_t block,
                     const std::vector<std::uint64_t>& src_slots,
                     const std::vector<std::uint64_t>& dst_slots,
                     double contiguous_s) {
  const auto layers = static_cast<std::uint64_t>(ctx.table_layers);
  const std::uint64_t src_total = ctx.src.bytes / block;
  const std::uint64_t dst_total = ctx.dst.size() / block;
  const std::uint64_t src_per = (src_total + layers - 1) / layers;
  const std::uint64_t dst_per = (dst_total + layers - 1) / layers;
  address_table src, dst;
  std::vector<gpu_region> layer_memory;
  for (std::uint64_t l = 0; l < layers; ++l) {
    const auto first = std::min(l * src_per, src_total);
    src.bases.push_back(address_of(ctx.src.base) + first * block);
    src.sizes.push_back((std::min(first + src_per, src_total) - first) * block);
    layer_memory.push_back(
        gpu_region::allocate_device(ctx.gpu, dst_per * block));
    gpu_fill_pattern(ctx.gpu, layer_memory.back().data(),
                     layer_memory.back().size(), 0xbad0000 + l);
    dst.bases.push_back(address_of(layer_memory.back().data()));
    dst.sizes.push_back(dst_per * block);
  }
  std::vector<extent> virt(src_slots.size());
  for (std::size_t i = 0; i < virt.size(); ++i)
    virt[i] = {
        table_offset(src_slots[i] / src_per, src_slots[i] % src_per * block),
        table_offset(dst_slots[i] / dst_per, dst_slots[i] % dst_per * block),
        block};
  const auto plan = to_address_plan(virt, src, dst);
  gpu_copy_engine engine{ctx.gpu, copy_bands_of(ctx.chosen)};
  auto* stream = static_cast<cudaStream_t>(engine.native_stream());
  const auto id = engine.prepare(plan.extents, plan.src_span, plan.dst_span);
  const double seconds = time_on_stream(stream, 3, ctx.repeats, 2.0, [&] {
    engine.launch(id, pointer_at(plan.src_origin), pointer_at(plan.dst_origin));
  });
  engine.release(id);
  const auto bad =
      gpu_count_mismatches(ctx.gpu, pointer_at(plan.src_origin),
                           pointer_at(plan.dst_origin), plan.extents);
  auto result = method_result(seconds, total_bytes(virt), contiguous_s, bad);
  result["layers"] = layers;
  return result;
}

json measure_block_size(child_context& ctx, std::uint64_t block,
                        std::uint64_t total, bool sweep, std::mt19937_64& rng) {
  const std::uint64_t n = total / block;
  const std::uint64_t bytes = n * block;
  const std::uint64_t slots = ctx.dst.size() / block;
  const auto src_slots = random_slots(rng, ctx.src.bytes / block, n);
  const auto dst_slots = random_slots(rng, slots, n);
  std::vector<copy_extent> plan(n);
  for (std::uint64_t i = 0; i < n; ++i)
    plan[i] = copy_extent{src_slots[i] * block, dst_slots[i] * block, block};
  json row{{"block_bytes", block}, {"blocks", n}, {"bytes", bytes}};
  const int r = ctx.repeats;

  // The ceiling: one contiguous copy of the same total.
  ctx.poison();
  const double contiguous_s = time_on_stream(
      ctx.stream, 3, r, 2.0, [&] { ctx.enqueue_ceiling_copy(bytes); });
  const std::vector<copy_extent> whole{{0, 0, bytes}};
  row["contiguous"] =
      method_result(contiguous_s, bytes, contiguous_s, ctx.mismatches(whole));

  // kvferry: the plan prepared (packed, uploaded) once, then launched.
  {
    const auto bands = copy_bands_of(ctx.chosen);
    row["kernel"] = ctx.chosen[band_for_extents(bands, plan)].kernel;
    gpu_copy_engine engine{ctx.gpu, bands};
    auto* s = static_cast<cudaStream_t>(engine.native_stream());
    ctx.poison();
    const auto id = engine.prepare(plan, ctx.src.bytes, ctx.dst.size());
    const double kernel_s = time_on_stream(
        s, 3, r, 2.0, [&] { engine.launch(id, ctx.src.base, ctx.dst.data()); });
    row["work_items"] = engine.work_items(id);
    row["grid_blocks"] = engine.grid_blocks();
    engine.release(id);
    row["kvferry"] =
        method_result(kernel_s, bytes, contiguous_s, ctx.mismatches(plan));

    // kvferry with the plan built and uploaded each time (host wall clock).
    // Completion is polled without sleeping, as a progress loop with work
    // would; engine.wait()'s 20 us naps would add their overshoot here.
    auto wait_polling = [&](copy_ticket ticket) {
      const auto deadline =
          std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (!engine.done(ticket))
        if (std::chrono::steady_clock::now() > deadline)
          throw gpu_error("kvferry+plan: copy did not complete within 10 s");
    };
    ctx.poison();
    std::vector<double> samples, prepare_samples;
    // Round -1 is a warm-up, not kept: the engine's staging grows there.
    for (int i = -1; i < std::max(3, r / 2); ++i) {
      using clock = std::chrono::steady_clock;
      const auto t0 = clock::now();
      const auto plan_id = engine.prepare(plan, ctx.src.bytes, ctx.dst.size());
      const auto t1 = clock::now();
      const auto ticket = engine.launch(plan_id, ctx.src.base, ctx.dst.data());
      engine.release(plan_id);
      wait_polling(ticket);
      if (i < 0)
        continue;
      samples.push_back(
          std::chrono::duration<double>(clock::now() - t0).count());
      prepare_samples.push_back(std::chrono::duration<double>(t1 - t0).count());
    }
    row["kvferry_with_plan"] = method_result(
        median(samples), bytes, contiguous_s, ctx.mismatches(plan));
    row["kvferry_with_plan"]["prepare_host_seconds"] = median(prepare_samples);
    if (ctx.table_layers > 0) {
      row["kvferry_table"] =
          time_over_table(ctx, block, src_slots, dst_slots, contiguous_s);
      row["kvferry_table"]["vs_one_pool"] =
          kernel_s / row["kvferry_table"]["seconds"].get<double>();
    }
  }
  // The baselines the choice must match or beat (issue #18), and the ratio
  // of the better one to the chosen kernel's time.
  row["default_kernel"] =
      time_baseline_kernel(ctx, copy_tuning{}, plan, bytes, contiguous_s);
  row["plain_kernel"] =
      time_baseline_kernel(ctx, plain_copy_tuning(), plan, bytes, contiguous_s);
  row["kvferry_vs_best_baseline"] =
      std::min(row["default_kernel"]["seconds"].get<double>(),
               row["plain_kernel"]["seconds"].get<double>()) /
      row["kvferry"]["seconds"].get<double>();

  if (sweep) {
    row["sweep"] = sweep_kernels(ctx, plan, bytes, contiguous_s);
    // The ceiling again: did the GPU's speed drift during the sweep?
    row["contiguous_after_sweep"] =
        method_result(time_on_stream(ctx.stream, 3, r, 2.0,
                                     [&] { ctx.enqueue_ceiling_copy(bytes); }),
                      bytes, contiguous_s, 0);
  }

  // Per-block cudaMemcpyAsync.
  ctx.poison();
  const double per_block_s = time_on_stream(ctx.stream, 1, r, 1.5, [&] {
    for (const auto& e : plan)
      cuda_check(cudaMemcpyAsync(ctx.dst.data() + e.dst_offset,
                                 ctx.src.base + e.src_offset, e.length,
                                 cudaMemcpyDeviceToDevice, ctx.stream),
                 "per-block cudaMemcpyAsync");
  });
  row["memcpy_per_block"] =
      method_result(per_block_s, bytes, contiguous_s, ctx.mismatches(plan));

  // cudaMemcpyBatchAsync: one call for all blocks.
  {
    std::vector<void*> dsts(n);
    std::vector<const void*> srcs(n);
    std::vector<std::size_t> sizes(n, block);
    for (std::uint64_t i = 0; i < n; ++i) {
      dsts[i] = ctx.dst.data() + plan[i].dst_offset;
      srcs[i] = ctx.src.base + plan[i].src_offset;
    }
    cudaMemcpyAttributes attrs{};
    attrs.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    std::size_t attr_index = 0;
    ctx.poison();
    try {
      const double batch_s = time_on_stream(ctx.stream, 1, r, 1.5, [&] {
        cuda_check(cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(),
                                        n, &attrs, &attr_index, 1, ctx.stream),
                   "cudaMemcpyBatchAsync");
      });
      row["memcpy_batch"] =
          method_result(batch_s, bytes, contiguous_s, ctx.mismatches(plan));
    } catch (const gpu_error& e) {
      cudaGetLastError();
      row["memcpy_batch"] = json{{"error", e.what()}};
    }
  }
  return row;
}

// UNPACK: 16 receives of 4 MiB in 4 KiB fragments, shuffled in the bounce
// buffer, unpacked into (a) contiguous destinations, (b) scattered 16 KiB
// blocks; against 16 plain 4 MiB copies and one 64 MiB copy of the same bytes.
json measure_unpack(int gpu, int repeats, std::mt19937_64& rng) {
  constexpr std::uint64_t receive = 4 << 20, page = NCCL_NET_UNPACK_PAGE;
  constexpr int slots = NCCL_NET_UNPACK_SLOTS;
  constexpr std::uint64_t all = receive * slots;
  auto meta = gpu_region::allocate_device(gpu, sizeof(ncclNetUnpackMeta));
  auto bounce = gpu_region::allocate_device(gpu, all);
  auto dst = gpu_region::allocate_device(gpu, 2 * all);
  auto handle_mem =
      gpu_region::allocate_device(gpu, sizeof(ncclNetUnpackHandle));
  gpu_fill_pattern(gpu, bounce.data(), all, 77);
  ncclNetUnpackHandle handle{reinterpret_cast<ncclNetUnpackMeta*>(meta.data()),
                             reinterpret_cast<char*>(bounce.data()), 0};
  cuda_check(cudaMemcpy(handle_mem.data(), &handle, sizeof(handle),
                        cudaMemcpyHostToDevice),
             "handle");
  std::vector<std::vector<ncclNetUnpackRecord>> records(slots);
  auto host_meta = std::make_unique<ncclNetUnpackMeta>();
  for (int s = 0; s < slots; ++s) {
    const std::uint64_t pages = receive / page;
    std::vector<std::uint64_t> order(pages);
    std::iota(order.begin(), order.end(), 0ull);
    std::shuffle(order.begin(), order.end(), rng);
    for (std::uint64_t p = 0; p < pages; ++p)
      host_meta->records[s][p] = ncclNetUnpackRecord{
          static_cast<std::uint32_t>(s * receive + order[p] * page),
          static_cast<std::uint32_t>(page), p * page};
    host_meta->count[s] = pages;
    records[s].assign(&host_meta->records[s][0],
                      &host_meta->records[s][0] + pages);
  }
  cuda_check(cudaMemcpy(meta.data(), host_meta.get(), sizeof(ncclNetUnpackMeta),
                        cudaMemcpyHostToDevice),
             "meta");

  const std::uint64_t block = 16384;
  const auto block_slots = random_slots(rng, dst.size() / block, all / block);
  std::vector<unpack_destination> contiguous, blocks;
  for (int s = 0; s < slots; ++s) {
    contiguous.push_back(unpack_destination::contiguous(s * receive));
    std::vector<std::uint64_t> offs;
    for (std::uint64_t b = 0; b < receive / block; ++b)
      offs.push_back(block_slots[s * (receive / block) + b] * block);
    blocks.push_back(unpack_destination::blocks(block, std::move(offs)));
  }

  gpu_copy_engine engine{gpu};
  auto* stream = static_cast<cudaStream_t>(engine.native_stream());
  auto verify = [&](const std::vector<unpack_destination>& where) {
    std::vector<copy_extent> ext;
    for (int s = 0; s < slots; ++s) {
      auto e = unpack_records_to_extents(records[s].data(), records[s].size(),
                                         where[s]);
      ext.insert(ext.end(), e.begin(), e.end());
    }
    return gpu_count_mismatches(gpu, bounce.data(), dst.data(), ext);
  };
  std::uint64_t seq = 0;
  auto run_unpacks = [&](const std::vector<unpack_destination>& where) {
    std::vector<copy_ticket> tickets;
    for (int s = 0; s < slots; ++s, ++seq)
      tickets.push_back(engine.unpack(handle_mem.data(), seq, all, dst.view(),
                                      where[seq % slots]));
    return tickets;
  };
  auto timed = [&](const std::vector<unpack_destination>& where) {
    gpu_fill_pattern(gpu, dst.data(), dst.size(), 5);
    std::vector<double> samples;
    for (int i = 0; i < repeats + 2; ++i) {
      cudaEvent_t a, b;
      cudaEventCreate(&a);
      cudaEventCreate(&b);
      cudaEventRecord(a, stream);
      auto tickets = run_unpacks(where);
      cudaEventRecord(b, stream);
      for (auto t : tickets)
        engine.wait(t, std::chrono::seconds(10));
      float ms = 0;
      cudaEventElapsedTime(&ms, a, b);
      if (i >= 2)
        samples.push_back(ms / 1e3);
      cudaEventDestroy(a);
      cudaEventDestroy(b);
    }
    return median(samples);
  };
  // All 16 receives in one launch.
  auto timed_batch = [&](const std::vector<unpack_destination>& where) {
    gpu_fill_pattern(gpu, dst.data(), dst.size(), 6);
    std::vector<double> samples;
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    for (int i = 0; i < repeats + 2; ++i, seq += slots) {
      cudaEventRecord(a, stream);
      auto ticket =
          engine.unpack_batch(handle_mem.data(), seq, where, all, dst.view());
      cudaEventRecord(b, stream);
      engine.wait(ticket, std::chrono::seconds(10));
      float ms = 0;
      cudaEventElapsedTime(&ms, a, b);
      if (i >= 2)
        samples.push_back(ms / 1e3);
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return median(samples);
  };
  const double batch_contig_s = timed_batch(contiguous);
  const auto bad_batch_contig = verify(contiguous);
  const double batch_blocks_s = timed_batch(blocks);
  const auto bad_batch_blocks = verify(blocks);
  const double unpack_contig_s = timed(contiguous);
  const auto bad_contig = verify(contiguous);
  const double unpack_blocks_s = timed(blocks);
  const auto bad_blocks = verify(blocks);

  const double copies_s = time_on_stream(stream, 2, repeats, 1.0, [&] {
    for (int s = 0; s < slots; ++s)
      cudaMemcpyAsync(dst.data() + s * receive, bounce.data() + s * receive,
                      receive, cudaMemcpyDeviceToDevice, stream);
  });
  const double one_copy_s = time_on_stream(stream, 2, repeats, 1.0, [&] {
    cudaMemcpyAsync(dst.data(), bounce.data(), all, cudaMemcpyDeviceToDevice,
                    stream);
  });
  auto entry = [&](double s, std::uint64_t bad) {
    json j = method_result(s, all, copies_s, bad);
    j["ratio_to_one_copy"] = one_copy_s / s;
    return j;
  };
  return json{
      {"receives", slots},
      {"receive_bytes", receive},
      {"fragment_bytes", page},
      {"unpack_contiguous", entry(unpack_contig_s, bad_contig)},
      {"unpack_16k_blocks", entry(unpack_blocks_s, bad_blocks)},
      {"unpack_batch_contiguous", entry(batch_contig_s, bad_batch_contig)},
      {"unpack_batch_16k_blocks", entry(batch_blocks_s, bad_batch_blocks)},
      {"memcpy_16x4MiB",
       json{{"seconds", copies_s}, {"gbps", gbps(all, copies_s)}}},
      {"memcpy_one_64MiB",
       json{{"seconds", one_copy_s}, {"gbps", gbps(all, one_copy_s)}}}};
}

json copy_choice_json(const copy_choice& c) {
  json j{
      {"bands", format_bands(c.bands)}, {"source", c.source}, {"why", c.why}};
  if (c.table) {
    json table = json::object();
    for (std::size_t k = 0; k < c.table->kernels.size(); ++k)
      for (std::size_t s = 0; s < c.table->block_bytes.size(); ++s)
        table[c.table->kernels[k]][std::to_string(c.table->block_bytes[s])] =
            c.table->seconds[k][s];
    j["tuned_seconds"] = table;
  }
  return j;
}

int run_child(const bench_ipc_options& opt) {
  // The copy-kernel choice logs; stdout carries the result to the parent.
  spdlog::set_default_logger(spdlog::stderr_color_mt("bench-ipc"));
  try {
    auto topology = system_gpu_topology();
    const gpu_pair pair = plan_gpu_pair(*topology, opt.src_gpu, opt.dst_gpu);
    if (!pair.same_device())
      topology->enable_peer_access(pair.dst, pair.src);
    cuda_check(cudaSetDevice(pair.dst), "cudaSetDevice");
    ipc_region_cache cache{pair.dst};
    const auto handle = ipc_handle::from_hex(opt.child_handle);
    child_context ctx{
        pair,
        pair.dst,
        cache.open(handle),
        gpu_region::allocate_device(pair.dst, handle.region_bytes),
        nullptr,
        opt.repeats,
        {}};
    cuda_check(cudaStreamCreateWithFlags(&ctx.stream, cudaStreamNonBlocking),
               "cudaStreamCreate");
    const auto choice = choose_copy_kernel(pair.dst);
    ctx.chosen = choice.bands;
    ctx.table_layers = opt.table_layers;
    std::mt19937_64 rng{2026};
    // Bring clocks up before the first measurement (the first size measured
    // otherwise reads low): ~0.3 s of large copies.
    for (int i = 0; i < 200; ++i)
      cuda_check(cudaMemcpyAsync(ctx.dst.data(), ctx.src.base,
                                 ctx.dst.size() / 2, cudaMemcpyDeviceToDevice,
                                 ctx.stream),
                 "warm-up copy");
    cuda_check(cudaStreamSynchronize(ctx.stream), "warm-up");
    json result{{"sizes", json::array()},
                {"copy_choice", copy_choice_json(choice)}};
    const std::uint64_t total = parse_size(opt.total);
    for (auto block : parse_sizes(opt.sizes)) {
      std::cerr << "bench ipc: block size " << block << " ...\n";
      result["sizes"].push_back(
          measure_block_size(ctx, block, total, opt.sweep, rng));
    }
    if (!opt.no_unpack) {
      std::cerr << "bench ipc: unpack ...\n";
      result["unpack"] = measure_unpack(pair.dst, opt.repeats, rng);
    }
    cudaStreamDestroy(ctx.stream);
    result["child_peak_rss_kib"] = peak_rss_kib();
    std::cout << result.dump() << std::endl;
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "kvferry bench ipc (child): " << e.what() << "\n";
    return 1;
  }
}

// ---- the parent: owns the source pool, runs the child, reports

// Starts this binary as the child with its stdout on a pipe; returns what it
// printed, or throws naming the failure. Kills the child past `timeout`.
std::string run_child_process(const bench_ipc_options& opt,
                              const std::string& handle_hex,
                              std::chrono::seconds timeout) {
  int out[2];
  if (pipe(out) != 0)
    throw std::runtime_error("pipe failed");
  std::vector<std::string> args{"kvferry",
                                "bench",
                                "ipc",
                                "--child-handle",
                                handle_hex,
                                "--sizes",
                                opt.sizes,
                                "--total",
                                opt.total,
                                "--repeats",
                                std::to_string(opt.repeats),
                                "--src-gpu",
                                std::to_string(opt.src_gpu),
                                "--dst-gpu",
                                std::to_string(opt.dst_gpu)};
  if (opt.sweep)
    args.push_back("--sweep");
  if (opt.no_unpack)
    args.push_back("--no-unpack");
  args.push_back("--table-layers");
  args.push_back(std::to_string(opt.table_layers));
  // Built before fork: the child of a process with threads (CUDA's, the
  // crew's) must not allocate before exec (a lock held at the fork).
  auto argv = exec_vector(args);
  const pid_t pid = fork();
  if (pid < 0)
    throw std::runtime_error("fork failed");
  if (pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    close(out[0]);
    close(out[1]);
    execv("/proc/self/exe", argv.data());
    _exit(127);
  }
  close(out[1]);
  std::string text;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  char buf[65536];
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
    if (left <= 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      close(out[0]);
      throw std::runtime_error("the child process did not finish within " +
                               std::to_string(timeout.count()) + " s; killed");
    }
    pollfd p{out[0], POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000))) <= 0)
      continue;
    const ssize_t got = read(out[0], buf, sizeof(buf));
    if (got <= 0)
      break;
    text.append(buf, static_cast<std::size_t>(got));
  }
  close(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw std::runtime_error("the child process failed (status " +
                             std::to_string(status) +
                             "); see its message above");
  return text;
}

std::string ratio_cell(const json& m) {
  if (m.contains("error"))
    return "error";
  return fmt::format("{:7.1f} ({:.2f}x){}", m["gbps"].get<double>(),
                     m["ratio_to_contiguous"].get<double>(),
                     m["verified"].get<bool>() ? "" : " BAD");
}

void print_table(const json& r) {
  const int src = r["src_gpu"].get<int>(), dst = r["dst_gpu"].get<int>();
  if (src == dst)
    std::cout << fmt::format(
        "kvferry bench ipc on GPU {} {} (two processes, one GPU", src,
        r["device"].get<std::string>());
  else
    std::cout << fmt::format("kvferry bench ipc from GPU {} {} to GPU {} {} "
                             "(two processes; kernels on GPU {}",
                             src, r["src_device"].get<std::string>(), dst,
                             r["device"].get<std::string>(), dst);
  std::cout << fmt::format(
      "; GB/s, median; x = ratio to the ceiling, {}, in the same run)\n",
      r["ceiling"].get<std::string>());
  // "prepare us": host time of gpu_copy_engine::prepare per plan (median),
  // the part of kvferry+plan that is not the kernel.
  // "kernel": the copy kernel chosen for this block size; "vs best": the
  // better of the default and the plain kernel's time over kvferry's
  // (>= 1: kvferry is at least as fast as both, issue #18's goal).
  const auto& choice = r["copy_choice"];
  std::cout << fmt::format(
      "copy kernel: {} ({}: {})\n", choice["bands"].get<std::string>(),
      choice["source"].get<std::string>(), choice["why"].get<std::string>());
  std::cout << fmt::format(
      "{:>8} {:>7} {:>18} {:>18} {:>10} {:>18} {:>18} {:>7} {:>18} {:>18} "
      "{:>8}  {}\n",
      "block", "blocks", "kvferry kernel", "kvferry+plan", "prepare us",
      "default kernel", "plain kernel", "vs best", "memcpy per block",
      "memcpyBatch", "ceiling", "kernel");
  for (const auto& row : r["sizes"]) {
    const double prepare_us =
        row["kvferry_with_plan"]["prepare_host_seconds"].get<double>() * 1e6;
    std::cout << fmt::format(
        "{:>8} {:>7} {:>18} {:>18} {:>10.1f} {:>18} {:>18} {:>6.3f}x {:>18} "
        "{:>18} {:>8.1f}  {}\n",
        row["block_bytes"].get<std::uint64_t>(),
        row["blocks"].get<std::uint64_t>(), ratio_cell(row["kvferry"]),
        ratio_cell(row["kvferry_with_plan"]), prepare_us,
        ratio_cell(row["default_kernel"]), ratio_cell(row["plain_kernel"]),
        row["kvferry_vs_best_baseline"].get<double>(),
        ratio_cell(row["memcpy_per_block"]), ratio_cell(row["memcpy_batch"]),
        row["contiguous"]["gbps"].get<double>(),
        row["kernel"].get<std::string>());
    if (row.contains("kvferry_table"))
      std::cout << fmt::format(
          "    over a table of {} regions per side (per-layer allocations): "
          "{}, {:.3f}x of one pool\n",
          row["kvferry_table"]["layers"].get<int>(),
          ratio_cell(row["kvferry_table"]),
          row["kvferry_table"]["vs_one_pool"].get<double>());
    if (row.contains("sweep")) {
      for (const auto& v : row["sweep"])
        std::cout << fmt::format(
            "    {} item={} unroll={} threads={} stages={} grid={}: {:.1f} "
            "GB/s ({:.3f}x){}\n",
            v["kernel"].get<std::string>(), v["item_bytes"].get<int>(),
            v["unroll"].get<int>(), v["threads"].get<int>(),
            v["stages"].get<int>(), v["grid_blocks"].get<int>(),
            v["gbps"].get<double>(), v["ratio_to_contiguous"].get<double>(),
            v["verified"].get<bool>() ? "" : " BAD");
      const auto& again = row["contiguous_after_sweep"];
      std::cout << fmt::format(
          "    contiguous copy again after the sweep: {:.1f} GB/s ({:.3f}x of "
          "the first)\n",
          again["gbps"].get<double>(),
          again["ratio_to_contiguous"].get<double>());
    }
  }
  if (r.contains("unpack")) {
    const auto& u = r["unpack"];
    for (const char* k : {"unpack_contiguous", "unpack_16k_blocks",
                          "unpack_batch_contiguous", "unpack_batch_16k_blocks"})
      std::cout << fmt::format(
          "{}: 16 x 4 MiB in 4 KiB fragments: {:.1f} GB/s, {:.2f}x of 16 plain "
          "4 MiB "
          "copies ({:.1f} GB/s), {:.2f}x of one 64 MiB copy ({:.1f} GB/s){}\n",
          k, u[k]["gbps"].get<double>(),
          u[k]["ratio_to_contiguous"].get<double>(),
          u["memcpy_16x4MiB"]["gbps"].get<double>(),
          u[k]["ratio_to_one_copy"].get<double>(),
          u["memcpy_one_64MiB"]["gbps"].get<double>(),
          u[k]["verified"].get<bool>() ? "" : " BAD");
  }
  std::cout << fmt::format("peak RSS: parent {} KiB, child {} KiB\n",
                           r["parent_peak_rss_kib"].get<long>(),
                           r["child_peak_rss_kib"].get<long>());
}

int run_parent(const bench_ipc_options& opt) {
  const auto inventory = list_gpus();
  if (inventory.devices.empty()) {
    std::cerr << "kvferry bench ipc: needs a CUDA GPU: " << inventory.why_none
              << "\n";
    return 1;
  }
  try {
    const gpu_pair pair =
        plan_gpu_pair(*system_gpu_topology(), opt.src_gpu, opt.dst_gpu);
    if (!opt.copy_kernel.empty()) { // the child inherits it
      if (opt.copy_kernel != "tune" && !parse_bands(opt.copy_kernel))
        throw std::invalid_argument("--copy-kernel '" + opt.copy_kernel +
                                    "': not a kernel name, bands or 'tune'");
      setenv(copy_kernel_variable, opt.copy_kernel.c_str(), 1);
    }
    const std::uint64_t total = parse_size(opt.total);
    const auto sizes = parse_sizes(opt.sizes);
    if (total < (1ull << 20) || sizes.empty())
      throw std::invalid_argument(
          "--total must be at least 1M and --sizes non-empty");
    for (auto s : sizes)
      if (s == 0 || s % 16 != 0 || s > total)
        throw std::invalid_argument(
            "block size " + std::to_string(s) +
            " must be a positive multiple of 16 no larger than --total");
    // Pools twice the total, so blocks scatter with gaps around them.
    auto src = gpu_region::allocate_device(pair.src, 2 * total);
    gpu_fill_pattern(pair.src, src.data(), src.size(), 0xfeed);
    const auto handle = export_ipc_handle(src);
    const std::string out =
        run_child_process(opt, handle.to_hex(), std::chrono::seconds(540));
    const auto line = out.find('{');
    if (line == std::string::npos)
      throw std::runtime_error("the child printed no result");
    json result = json::parse(out.substr(line));
    result["device"] =
        inventory.devices[static_cast<std::size_t>(pair.dst)].name;
    result["src_device"] =
        inventory.devices[static_cast<std::size_t>(pair.src)].name;
    result["src_gpu"] = pair.src;
    result["dst_gpu"] = pair.dst;
    result["ceiling"] = describe(pair.ceiling);
    result["total_bytes"] = total;
    result["repeats"] = opt.repeats;
    result["parent_peak_rss_kib"] = peak_rss_kib();
    print_table(result);
    if (!opt.json_path.empty()) {
      std::ofstream file(opt.json_path);
      if (!file)
        throw std::runtime_error("cannot write " + opt.json_path);
      file << result.dump(2) << "\n";
    }
    bool all_verified = true;
    for (const auto& row : result["sizes"])
      for (const char* k : {"kvferry", "kvferry_with_plan", "default_kernel",
                            "plain_kernel", "memcpy_per_block", "contiguous"})
        all_verified &= row[k]["verified"].get<bool>();
    if (!all_verified)
      std::cerr
          << "kvferry bench ipc: some copies did not verify (see BAD above)\n";
    return all_verified ? 0 : 3;
  } catch (const std::exception& e) {
    std::cerr << "kvferry bench ipc: " << e.what() << "\n";
    return 1;
  }
}

#endif // KVFERRY_HAVE_CUDA

} // namespace

void add_bench_ipc(CLI::App& bench, int& exit_code) {
  auto opt = std::make_shared<bench_ipc_options>();
  auto* cmd = bench.add_subcommand(
      "ipc",
      "Same-host GPU copies across two processes (CUDA IPC): kvferry's batched "
      "kernel vs per-block cudaMemcpyAsync, cudaMemcpyBatchAsync and one "
      "contiguous copy");
  cmd->add_option("--json", opt->json_path,
                  "Write the full results to this JSON file");
  cmd->add_option("--sizes", opt->sizes,
                  "Block sizes, comma-separated (K, M suffixes)")
      ->capture_default_str();
  cmd->add_option("--total", opt->total, "Bytes copied per run, per block size")
      ->capture_default_str();
  cmd->add_option("--repeats", opt->repeats, "Timed repeats (median reported)")
      ->capture_default_str();
  auto* src = cmd->add_option("--src-gpu", opt->src_gpu,
                              "CUDA device of the producer's (source) pool")
                  ->capture_default_str();
  auto* dst = cmd->add_option("--dst-gpu", opt->dst_gpu,
                              "CUDA device of the consumer's (destination) "
                              "pool; the copies run there")
                  ->capture_default_str();
  cmd->add_option_function<int>(
         "--gpu", [opt](int gpu) { opt->src_gpu = opt->dst_gpu = gpu; },
         "Both pools on this CUDA device (same as --src-gpu N --dst-gpu N)")
      ->excludes(src)
      ->excludes(dst);
  cmd->add_flag("--sweep", opt->sweep,
                "Also time the kernel's tuning variants");
  cmd->add_flag("--no-unpack", opt->no_unpack,
                "Skip the UNPACK kernel measurement");
  cmd->add_option("--table-layers", opt->table_layers,
                  "Also copy the blocks between region tables of this many "
                  "regions per side (per-layer KV tensors; 0: not)")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
  cmd->add_option("--copy-kernel", opt->copy_kernel,
                  "The kvferry column's kernel: a name (default, warp, block, "
                  "block-16k-512, plain), bands ('0:default,65536:plain') or "
                  "'tune' to tune again and rewrite the cache; sets "
                  "KVFERRY_COPY_KERNEL for this run (docs/gpu.md, 'Kernel "
                  "choice')");
  cmd->add_option("--child-handle", opt->child_handle)->group(""); // internal
  cmd->callback([opt, &exit_code] {
#ifdef KVFERRY_HAVE_CUDA
    exit_code = opt->child_handle.empty() ? run_parent(*opt) : run_child(*opt);
#else
    std::cerr << "kvferry bench ipc: this build has no CUDA support (no nvcc "
                 "at configure "
                 "time); it needs a CUDA build and a GPU\n";
    exit_code = 1;
#endif
  });
}

} // namespace kvferry::app
