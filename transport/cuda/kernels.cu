// The batched copy and unpack kernels. Both are memory-bound: the design is
// about keeping enough 16-byte loads in flight and never idling a warp.
//
//  - Work is cut into equal-size items (pieces of extents), so thousands of
//    small blocks and a few huge ones balance the same way. The two default
//    kernels find item i's extent themselves in the packed plan (extents +
//    prefix sum of their item counts, see copy_plan.hpp), so the host never
//    lists items; the bulk and cta-per-item variants read a host-cut list.
//  - Extents of 16 KiB and more (copy_tuning::block_per_item_from): a thread
//    block per item and a grid with a block for every item, which the GPU
//    hands out in plan order -- the items in flight are neighbours in memory.
//  - Smaller extents: one warp per item in a persistent grid (as many blocks
//    as the SMs keep resident), warps claiming items from a counter: one
//    search per 4 KiB block would cost more than the copy.
//  - Each lane issues UNROLL independent 16-byte loads before its first
//    store; the last partial pass is predicated rather than looped so small
//    items keep all their loads in flight too.
//  - Streaming hints (__ldcs/__stcs): copied bytes are touched once, so they
//    should not evict anything from L2.
#include <cuda_runtime.h>

#include "kernels.hpp"

namespace kvferry::transport::kernels {

namespace {

constexpr unsigned warp_lanes = 32;

// Cache hints, a template parameter of the copy kernels:
//   0 plain loads and stores; 1 streaming (__ldcs/__stcs: evict first);
//   2 non-coherent loads that prefetch whole 256-byte L2 sectors, streaming
//     stores; 3 the same loads with plain stores.
template<int Hint>
__device__ __forceinline__ uint4 load16(const uint4* p) {
  if constexpr (Hint == 1) {
    return __ldcs(p);
  } else if constexpr (Hint >= 2) {
    uint4 v;
    asm volatile(
        "ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
  } else {
    return *p;
  }
}

template<int Hint>
__device__ __forceinline__ void store16(uint4* p, uint4 v) {
  if constexpr (Hint == 1 || Hint == 2)
    __stcs(p, v);
  else
    *p = v;
}

// The whole warp copies `len` bytes from s to d. Fast path when both are
// 16-byte aligned (KV blocks always are); 4-byte and byte paths keep odd
// plans correct.
template<int Unroll, int Hint>
__device__ __forceinline__ void warp_copy(const char* s, char* d,
                                          std::uint64_t len, unsigned lane) {
  const auto s_addr = reinterpret_cast<std::uintptr_t>(s);
  const auto d_addr = reinterpret_cast<std::uintptr_t>(d);
  if (((s_addr | d_addr) & 15u) == 0) {
    const auto* vs = reinterpret_cast<const uint4*>(s);
    auto* vd = reinterpret_cast<uint4*>(d);
    const std::uint64_t vectors = len >> 4;
    constexpr std::uint64_t pass = warp_lanes * Unroll;
    std::uint64_t v = 0;
    for (; v + pass <= vectors; v += pass) {
      uint4 r[Unroll];
#pragma unroll
      for (int k = 0; k < Unroll; ++k)
        r[k] = load16<Hint>(vs + v + k * warp_lanes + lane);
#pragma unroll
      for (int k = 0; k < Unroll; ++k)
        store16<Hint>(vd + v + k * warp_lanes + lane, r[k]);
    }
    if (v < vectors) { // one predicated partial pass
      uint4 r[Unroll];
#pragma unroll
      for (int k = 0; k < Unroll; ++k) {
        const std::uint64_t i = v + k * warp_lanes + lane;
        if (i < vectors)
          r[k] = load16<Hint>(vs + i);
      }
#pragma unroll
      for (int k = 0; k < Unroll; ++k) {
        const std::uint64_t i = v + k * warp_lanes + lane;
        if (i < vectors)
          store16<Hint>(vd + i, r[k]);
      }
    }
    for (std::uint64_t b = (vectors << 4) + lane; b < len; b += warp_lanes)
      d[b] = s[b];
  } else if (((s_addr | d_addr) & 3u) == 0) {
    const auto* ws = reinterpret_cast<const unsigned*>(s);
    auto* wd = reinterpret_cast<unsigned*>(d);
    const std::uint64_t words = len >> 2;
    for (std::uint64_t w = lane; w < words; w += warp_lanes)
      wd[w] = ws[w];
    for (std::uint64_t b = (words << 2) + lane; b < len; b += warp_lanes)
      d[b] = s[b];
  } else {
    for (std::uint64_t b = lane; b < len; b += warp_lanes)
      d[b] = s[b];
  }
}

template<int Unroll, int Hint>
__global__ void batched_copy_kernel(const copy_work_item* __restrict__ items,
                                    std::uint32_t item_count, const char* src,
                                    char* dst) {
  const unsigned lane = threadIdx.x % warp_lanes;
  const std::uint32_t warp =
      (blockIdx.x * blockDim.x + threadIdx.x) / warp_lanes;
  const std::uint32_t warps = (gridDim.x * blockDim.x) / warp_lanes;
  for (std::uint32_t i = warp; i < item_count; i += warps) {
    const copy_work_item item = items[i];
    warp_copy<Unroll, Hint>(src + item.src_offset, dst + item.dst_offset,
                            item.length, lane);
  }
}

// The extent of work item i (find_extent_of_item), searched by the whole
// warp from extent `from`: each lane loads one of the 32 probes and a ballot
// counts those at or below i.
__device__ __forceinline__ std::uint32_t
warp_find_extent(const std::uint32_t* __restrict__ first_item,
                 std::uint32_t from, std::uint32_t extent_count,
                 std::uint32_t i, unsigned lane) {
  return find_extent_of_item(
      from, extent_count,
      [&](std::uint32_t lo, std::uint32_t step, std::uint32_t hi) {
        const std::uint32_t ahead = lane * step; // < 32 * step: no overflow
        const bool at_or_below = ahead < hi - lo && first_item[lo + ahead] <= i;
        return static_cast<std::uint32_t>(
            __popc(__ballot_sync(0xffffffffu, at_or_below)));
      });
}

// Items of a launch handed out by a counter in device memory: a warp's
// claims are tickets base, base + 1, ...; every warp claims until it draws a
// ticket past the items, so a launch draws exactly items + warps tickets and
// the host knows the next launch's base without resetting the counter.
struct item_claims {
  unsigned long long* counter = nullptr; // null: static striding
  unsigned long long base = 0;
};

// Lane 0 draws a ticket; the result is read (shuffled to the warp) only
// after the current item's copy, so the atomic's latency hides behind it.
__device__ __forceinline__ unsigned long long draw_ticket(const item_claims& c,
                                                          unsigned lane) {
  return lane == 0 ? atomicAdd(c.counter, 1ull) : 0ull;
}

__device__ __forceinline__ std::uint32_t
item_of_ticket(const item_claims& c, unsigned long long drawn,
               std::uint32_t item_count) {
  const unsigned long long ticket = __shfl_sync(0xffffffffu, drawn, 0);
  const unsigned long long item = ticket - c.base;
  return item < item_count ? static_cast<std::uint32_t>(item) : item_count;
}

// Extent `e` of a packed plan as a kernel copies it: launch-relative
// offsets as they are, or virtual ones translated through the launch's
// region bases (table_plan.hpp: each kept extent lies in one region, so its
// start's region is every item's).
template<bool Virtual>
__device__ __forceinline__ copy_extent placed(copy_extent e,
                                              const kernels::plan_bases& at) {
  if constexpr (Virtual) {
    e.src_offset = at.src.translate(e.src_offset);
    e.dst_offset = at.dst.translate(e.dst_offset);
  }
  return e;
}

// The default copy: warp w copies items w, w + warps, ... of the packed plan
// (or the items it claims, see item_claims), finding each one's extent with
// the 32 lanes probing 32 places of first_item per round
// (find_extent_of_item). A warp's items only grow, so each search starts at
// the extent of its previous item.
template<int Unroll, int Hint, bool Virtual = false>
__global__ void
extent_copy_kernel(const copy_extent* __restrict__ extents,
                   const std::uint32_t* __restrict__ first_item,
                   std::uint32_t extent_count, std::uint32_t item_count,
                   std::uint32_t item_bytes, const char* src, char* dst,
                   item_claims claims, kernels::plan_bases at = {}) {
  const unsigned lane = threadIdx.x % warp_lanes;
  const std::uint32_t warp =
      (blockIdx.x * blockDim.x + threadIdx.x) / warp_lanes;
  const std::uint32_t warps = (gridDim.x * blockDim.x) / warp_lanes;
  const bool claiming = claims.counter != nullptr;
  std::uint32_t i =
      claiming ? item_of_ticket(claims, draw_ticket(claims, lane), item_count)
               : warp;
  std::uint32_t extent = 0;
  while (i < item_count) {
    const unsigned long long next_ticket =
        claiming ? draw_ticket(claims, lane) : 0ull;
    extent = warp_find_extent(first_item, extent, extent_count, i, lane);
    const copy_extent e = placed<Virtual>(extents[extent], at);
    const std::uint64_t offset =
        std::uint64_t{i - first_item[extent]} * item_bytes;
    warp_copy<Unroll, Hint>(
        src + e.src_offset + offset, dst + e.dst_offset + offset,
        min(std::uint64_t{item_bytes}, e.length - offset), lane);
    if (claiming)
      i = item_of_ticket(claims, next_ticket, item_count);
    else // i + warps could wrap past 2^32 - 1 on the largest plans
      i = item_count - i > warps ? i + warps : item_count;
  }
}

// The whole block copies `len` bytes from s to d, thread t taking vectors t,
// t + blockDim, ... so that one load instruction of the block covers
// blockDim * 16 bytes of contiguous memory (a warp's covers 512 B).
template<int Unroll, int Hint>
__device__ __forceinline__ void block_copy(const char* s, char* d,
                                           std::uint64_t len) {
  const auto addr =
      reinterpret_cast<std::uintptr_t>(s) | reinterpret_cast<std::uintptr_t>(d);
  if ((addr & 15u) != 0) {
    for (std::uint64_t b = threadIdx.x; b < len; b += blockDim.x)
      d[b] = s[b];
    return;
  }
  const auto* vs = reinterpret_cast<const uint4*>(s);
  auto* vd = reinterpret_cast<uint4*>(d);
  const std::uint32_t vectors = static_cast<std::uint32_t>(len >> 4);
  for (std::uint32_t v = 0; v < vectors; v += blockDim.x * Unroll) {
    uint4 r[Unroll];
#pragma unroll
    for (int k = 0; k < Unroll; ++k) {
      const std::uint32_t j = v + k * blockDim.x + threadIdx.x;
      if (j < vectors)
        r[k] = load16<Hint>(vs + j);
    }
#pragma unroll
    for (int k = 0; k < Unroll; ++k) {
      const std::uint32_t j = v + k * blockDim.x + threadIdx.x;
      if (j < vectors)
        store16<Hint>(vd + j, r[k]);
    }
  }
  for (std::uint64_t b = (std::uint64_t{vectors} << 4) + threadIdx.x; b < len;
       b += blockDim.x)
    d[b] = s[b];
}

// Variant: a persistent grid in which a whole block copies each item of a
// host-cut list.
template<int Unroll, int Hint>
__global__ void cta_copy_kernel(const copy_work_item* __restrict__ items,
                                std::uint32_t item_count, const char* src,
                                char* dst) {
  for (std::uint32_t i = blockIdx.x; i < item_count; i += gridDim.x) {
    const copy_work_item item = items[i];
    block_copy<Unroll, Hint>(src + item.src_offset, dst + item.dst_offset,
                             item.length);
  }
}

// The default copy: one thread block per work item of the packed plan, and a
// grid with a block for every item (not a persistent loop). The GPU's block
// scheduler then hands the items out in plan order as SMs free up, so the
// items in flight at any moment are neighbours in the plan -- each extent's
// items run side by side, as a plain copy kernel's blocks cover consecutive
// memory -- and balancing is the hardware's. Every warp finds its block's
// extent with the same 32-way search as extent_copy_kernel (from the first
// extent: the probes after the block's first warp hit L1).
template<int Unroll, int Hint, bool Virtual = false>
__global__ void
extent_block_copy_kernel(const copy_extent* __restrict__ extents,
                         const std::uint32_t* __restrict__ first_item,
                         std::uint32_t extent_count, std::uint32_t item_count,
                         std::uint32_t item_bytes, const char* src, char* dst,
                         kernels::plan_bases at = {}) {
  const unsigned lane = threadIdx.x % warp_lanes;
  std::uint32_t i = blockIdx.x; // a grid smaller than the items loops
  while (i < item_count) {
    const std::uint32_t extent =
        warp_find_extent(first_item, 0, extent_count, i, lane);
    const copy_extent e = placed<Virtual>(extents[extent], at);
    const std::uint64_t offset =
        std::uint64_t{i - first_item[extent]} * item_bytes;
    block_copy<Unroll, Hint>(src + e.src_offset + offset,
                             dst + e.dst_offset + offset,
                             min(std::uint64_t{item_bytes}, e.length - offset));
    // i + gridDim.x could wrap past 2^32 - 1 on the largest plans.
    i = item_count - i > gridDim.x ? i + gridDim.x : item_count;
  }
}

template<int Unroll, int Hint>
cudaError_t launch_copy_variant(const copy_work_item* items, std::uint32_t n,
                                const char* src, char* dst, int threads,
                                int grid, bool cta, cudaStream_t stream) {
  if (cta)
    cta_copy_kernel<Unroll, Hint>
        <<<grid, threads, 0, stream>>>(items, n, src, dst);
  else
    batched_copy_kernel<Unroll, Hint>
        <<<grid, threads, 0, stream>>>(items, n, src, dst);
  return cudaGetLastError();
}

// The plain kernel (copy_tuning::plain), the baseline issue #18 measured
// against: a thread block per work item of the packed plan, blocks striding
// over the items, each thread copying 16 bytes at a time with plain loads
// and stores. Nothing else: no unrolling, no cache hints, no balancing. With
// item_bytes at least every extent's length (2 MiB in plain_copy_tuning())
// an item is an extent -- a block per extent -- and no search is needed;
// only a plan with longer extents (cut into items) searches, once per warp.
template<bool Virtual = false>
__global__ void plain_copy_kernel(const copy_extent* __restrict__ extents,
                                  const std::uint32_t* __restrict__ first_item,
                                  std::uint32_t extent_count,
                                  std::uint32_t item_count,
                                  std::uint32_t item_bytes, const char* src,
                                  char* dst, kernels::plan_bases at = {}) {
  const unsigned lane = threadIdx.x % warp_lanes;
  const bool item_is_extent = item_count == extent_count;
  std::uint32_t i = blockIdx.x;
  while (i < item_count) {
    const std::uint32_t k =
        item_is_extent ? i
                       : warp_find_extent(first_item, 0, extent_count, i, lane);
    const copy_extent e = placed<Virtual>(extents[k], at);
    const std::uint64_t offset = std::uint64_t{i - first_item[k]} * item_bytes;
    const char* s = src + e.src_offset + offset;
    char* d = dst + e.dst_offset + offset;
    const std::uint64_t len = min(std::uint64_t{item_bytes}, e.length - offset);
    std::uint64_t done = 0;
    if (((reinterpret_cast<std::uintptr_t>(s) |
          reinterpret_cast<std::uintptr_t>(d)) &
         15u) == 0) {
      const auto* vs = reinterpret_cast<const uint4*>(s);
      auto* vd = reinterpret_cast<uint4*>(d);
      const std::uint64_t vectors = len >> 4;
      for (std::uint64_t v = threadIdx.x; v < vectors; v += blockDim.x)
        vd[v] = vs[v];
      done = vectors << 4;
    }
    for (std::uint64_t b = done + threadIdx.x; b < len; b += blockDim.x)
      d[b] = s[b];
    // i + gridDim.x could wrap past 2^32 - 1 on the largest plans.
    i = item_count - i > gridDim.x ? i + gridDim.x : item_count;
  }
}

template<typename Kernel>
int blocks_per_sm_of(Kernel kernel, int threads) {
  int blocks = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads,
                                                    0) != cudaSuccess)
    return 1;
  return blocks > 0 ? blocks : 1;
}

// Occupancy of the SIMT kernel this tuning launches.
template<int Unroll, int Hint>
int blocks_per_sm_variant(int threads, bool item_list) {
  return item_list
             ? blocks_per_sm_of(batched_copy_kernel<Unroll, Hint>, threads)
             : blocks_per_sm_of(extent_copy_kernel<Unroll, Hint>, threads);
}

int hint_of(const copy_tuning& t) {
  return t.prefetch_l2_256 ? (t.streaming ? 2 : 3) : (t.streaming ? 1 : 0);
}

template<int Unroll, typename Fn>
auto dispatch_hint(int hint, Fn&& fn) {
  switch (hint) {
  case 0:
    return fn.template operator()<Unroll, 0>();
  case 2:
    return fn.template operator()<Unroll, 2>();
  case 3:
    return fn.template operator()<Unroll, 3>();
  default:
    return fn.template operator()<Unroll, 1>();
  }
}

// Runs `fn.template operator()<Unroll, Hint>()` for the tuning's variant.
template<typename Fn>
auto dispatch(const copy_tuning& t, Fn&& fn) {
  if (t.unroll <= 4)
    return dispatch_hint<4>(hint_of(t), fn);
  if (t.unroll <= 8)
    return dispatch_hint<8>(hint_of(t), fn);
  return dispatch_hint<16>(hint_of(t), fn);
}

struct occupancy_query {
  int threads;
  bool item_list;
  template<int U, int S>
  int operator()() const {
    return blocks_per_sm_variant<U, S>(threads, item_list);
  }
};

// Either packed-plan kernel: a block per item, or the warp kernel.
struct extent_copy_launch {
  const copy_extent* extents;
  const std::uint32_t* first_item;
  std::uint32_t extent_count;
  std::uint32_t item_count;
  std::uint32_t item_bytes;
  const char* src;
  char* dst;
  int threads;
  int grid;
  item_claims claims; // warp kernel only
  cudaStream_t stream;
  bool block_per_item = false;
  const kernels::plan_bases* at = nullptr; // a plan in virtual offsets
  template<int U, int S>
  cudaError_t operator()() const {
    if (at != nullptr)
      return run<U, S, true>();
    return run<U, S, false>();
  }
  template<int U, int S, bool Virtual>
  cudaError_t run() const {
    const kernels::plan_bases bases =
        at != nullptr ? *at : kernels::plan_bases{};
    if (block_per_item)
      extent_block_copy_kernel<U, S, Virtual><<<grid, threads, 0, stream>>>(
          extents, first_item, extent_count, item_count, item_bytes, src, dst,
          bases);
    else
      extent_copy_kernel<U, S, Virtual><<<grid, threads, 0, stream>>>(
          extents, first_item, extent_count, item_count, item_bytes, src, dst,
          claims, bases);
    return cudaGetLastError();
  }
};

struct copy_launch {
  const copy_work_item* items;
  std::uint32_t n;
  const char* src;
  char* dst;
  int threads;
  int grid;
  bool cta;
  cudaStream_t stream;
  template<int U, int S>
  cudaError_t operator()() const {
    return launch_copy_variant<U, S>(items, n, src, dst, threads, grid, cta,
                                     stream);
  }
};

// ---- bulk (TMA) copy
// ------------------------------------------------------------ One lane per
// warp keeps `Stages` bulk loads in flight (global -> shared, completing on an
// mbarrier) and streams each finished stage back out with a bulk store (shared
// -> global). The copy engine moves the bytes; the SM only issues a few
// instructions per item.

constexpr int bulk_max_warps = 8;

__device__ __forceinline__ std::uint32_t smem_addr(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(std::uint64_t* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(bar)));
}

__device__ __forceinline__ void bulk_load(void* smem, const void* gmem,
                                          std::uint32_t bytes,
                                          std::uint64_t* bar) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(
                   smem_addr(bar)),
               "r"(bytes)
               : "memory");
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::"
               "bytes [%0], [%1], %2, [%3];" ::"r"(smem_addr(smem)),
               "l"(gmem), "r"(bytes), "r"(smem_addr(bar))
               : "memory");
}

__device__ __forceinline__ void mbar_wait(std::uint64_t* bar,
                                          std::uint32_t parity) {
  asm volatile("{\n"
               ".reg .pred done;\n"
               "wait_%=:\n"
               "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
               "@!done bra wait_%=;\n"
               "}\n" ::"r"(smem_addr(bar)),
               "r"(parity)
               : "memory");
}

__device__ __forceinline__ void bulk_store(void* gmem, const void* smem,
                                           std::uint32_t bytes) {
  asm volatile(
      "cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(gmem),
      "r"(smem_addr(smem)), "r"(bytes)
      : "memory");
  asm volatile("cp.async.bulk.commit_group;" ::: "memory");
}

// Waits until at most N bulk stores still read shared memory.
template<int N>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(N) : "memory");
}

template<int Stages>
__global__ void bulk_copy_kernel(const copy_work_item* __restrict__ items,
                                 std::uint32_t n, const char* src, char* dst,
                                 std::uint32_t stage_bytes) {
  extern __shared__ __align__(128) unsigned char stage_memory[];
  __shared__ __align__(8) std::uint64_t barriers[bulk_max_warps * Stages];
  const unsigned lane = threadIdx.x % warp_lanes;
  const unsigned warp_in_block = threadIdx.x / warp_lanes;
  if (lane != 0)
    return; // one issuing lane per warp; the bulk engine does the copying
  const std::uint32_t warps_per_block = blockDim.x / warp_lanes;
  const std::uint32_t warp = blockIdx.x * warps_per_block + warp_in_block;
  const std::uint32_t warps = gridDim.x * warps_per_block;
  unsigned char* buffers = stage_memory + warp_in_block * Stages * stage_bytes;
  std::uint64_t* bar = barriers + warp_in_block * Stages;
  for (int s = 0; s < Stages; ++s)
    mbar_init(bar + s);
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");

  // This warp's k-th item is items[warp + k * warps].
  auto load_item = [&](std::uint32_t k) {
    const std::uint64_t i = warp + std::uint64_t{k} * warps;
    if (i < n) {
      const copy_work_item item = items[i];
      bulk_load(buffers + (k % Stages) * stage_bytes, src + item.src_offset,
                item.length, bar + (k % Stages));
    }
  };
  for (std::uint32_t k = 0; k < Stages; ++k)
    load_item(k);
  for (std::uint32_t k = 0;; ++k) {
    const std::uint64_t i = warp + std::uint64_t{k} * warps;
    if (i >= n)
      break;
    const std::uint32_t s = k % Stages;
    mbar_wait(bar + s, (k / Stages) & 1u);
    const copy_work_item item = items[i];
    bulk_store(dst + item.dst_offset, buffers + s * stage_bytes, item.length);
    // Refill the previous stage once its store has read shared memory.
    if (k >= 1) {
      bulk_wait_read<1>();
      load_item(k - 1 + Stages);
    }
  }
  asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
}

std::size_t bulk_smem_bytes(int warps_per_block, int stages,
                            std::uint32_t stage_bytes) {
  return static_cast<std::size_t>(warps_per_block) * stages * stage_bytes;
}

template<int Stages>
cudaError_t launch_bulk_variant(const copy_work_item* items, std::uint32_t n,
                                const char* src, char* dst, int threads,
                                int grid, std::uint32_t stage_bytes,
                                cudaStream_t stream) {
  const std::size_t smem =
      bulk_smem_bytes(threads / warp_lanes, Stages, stage_bytes);
  auto err = cudaFuncSetAttribute(bulk_copy_kernel<Stages>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(smem));
  if (err != cudaSuccess)
    return err;
  bulk_copy_kernel<Stages>
      <<<grid, threads, smem, stream>>>(items, n, src, dst, stage_bytes);
  return cudaGetLastError();
}

template<int Stages>
int bulk_blocks_per_sm_variant(int threads, std::uint32_t stage_bytes) {
  const std::size_t smem =
      bulk_smem_bytes(threads / warp_lanes, Stages, stage_bytes);
  int device = 0, limit = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                             device) != cudaSuccess ||
      smem > static_cast<std::size_t>(limit))
    return 0; // this shape does not fit: the SIMT kernel runs instead
  if (cudaFuncSetAttribute(bulk_copy_kernel<Stages>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem)) != cudaSuccess) {
    cudaGetLastError(); // don't leave the failure for the next launch to report
    return 0;
  }
  int blocks = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(
          &blocks, bulk_copy_kernel<Stages>, threads, smem) != cudaSuccess)
    return 0;
  return blocks;
}

bool bulk_usable(const copy_tuning& t) {
  return t.bulk &&
         t.threads_per_block / static_cast<int>(warp_lanes) <= bulk_max_warps;
}

int bulk_blocks_per_sm(const copy_tuning& t) {
  switch (t.bulk_stages) {
  case 2:
    return bulk_blocks_per_sm_variant<2>(t.threads_per_block, t.item_bytes);
  case 3:
    return bulk_blocks_per_sm_variant<3>(t.threads_per_block, t.item_bytes);
  default:
    return bulk_blocks_per_sm_variant<4>(t.threads_per_block, t.item_bytes);
  }
}

cudaError_t launch_bulk(const copy_work_item* items, std::uint32_t n,
                        const char* src, char* dst, const copy_tuning& t,
                        int grid, cudaStream_t stream) {
  switch (t.bulk_stages) {
  case 2:
    return launch_bulk_variant<2>(items, n, src, dst, t.threads_per_block, grid,
                                  t.item_bytes, stream);
  case 3:
    return launch_bulk_variant<3>(items, n, src, dst, t.threads_per_block, grid,
                                  t.item_bytes, stream);
  default:
    return launch_bulk_variant<4>(items, n, src, dst, t.threads_per_block, grid,
                                  t.item_bytes, stream);
  }
}

// ---- unpack -----------------------------------------------------------------

__device__ __forceinline__ bool fits(std::uint64_t off, std::uint64_t len,
                                     std::uint64_t size) {
  return off <= size && len <= size - off;
}

// Copies one ring record into its destination, split at block boundaries;
// returns false when any piece falls outside the bounce buffer or the
// destination (pieces before it were copied, the rest is not).
template<typename BlockOffset>
__device__ __forceinline__ bool
unpack_record(const ncclNetUnpackRecord& r, const char* bounce,
              std::uint64_t bounce_bytes, char* dst, std::uint64_t dst_bytes,
              std::uint64_t base_offset, std::uint64_t block_bytes,
              std::uint64_t block_count, BlockOffset&& block_offset,
              unsigned lane) {
  if (!fits(r.src_off, r.len, bounce_bytes))
    return false;
  if (block_bytes == 0) {
    const std::uint64_t off = base_offset + r.dst_off;
    if (off < r.dst_off || !fits(off, r.len, dst_bytes))
      return false;
    warp_copy<8, 1>(bounce + r.src_off, dst + off, r.len, lane);
    return true;
  }
  for (std::uint64_t done = 0; done < r.len;) {
    const std::uint64_t logical = r.dst_off + done;
    const std::uint64_t block = logical / block_bytes;
    const std::uint64_t within = logical % block_bytes;
    const std::uint64_t piece =
        min(std::uint64_t{r.len} - done, block_bytes - within);
    if (block >= block_count)
      return false;
    const std::uint64_t off = block_offset(block) + within;
    if (!fits(off, piece, dst_bytes))
      return false;
    warp_copy<8, 1>(bounce + r.src_off + done, dst + off, piece, lane);
    done += piece;
  }
  return true;
}

__device__ __forceinline__ void reject_slot_count(unsigned* rejected,
                                                  std::uint64_t count) {
  atomicAdd(rejected,
            static_cast<unsigned>(count > 0xffffffffu ? 0xffffffffu : count));
}

__global__ void unpack_kernel(unpack_args a) {
  const unsigned lane = threadIdx.x % warp_lanes;
  const std::uint32_t warp =
      (blockIdx.x * blockDim.x + threadIdx.x) / warp_lanes;
  const std::uint32_t warps = (gridDim.x * blockDim.x) / warp_lanes;
  const ncclNetUnpackMeta* meta = a.handle->meta;
  const char* bounce = a.handle->bounce_buf;
  const std::uint64_t count = meta->count[a.slot];
  if (count > NCCL_NET_UNPACK_RECORDS) {
    if (blockIdx.x == 0 && threadIdx.x == 0)
      reject_slot_count(a.rejected, count);
    return;
  }
  auto block_offset = [&](std::uint64_t b) {
    return a.block_offsets ? a.block_offsets[b] : a.inline_offsets[b];
  };
  for (std::uint64_t i = warp; i < count; i += warps) {
    const bool ok = unpack_record(
        meta->records[a.slot][i], bounce, a.bounce_bytes,
        reinterpret_cast<char*>(a.dst_region), a.dst_region_bytes,
        a.base_offset, a.block_bytes, a.block_count, block_offset, lane);
    if (!ok && lane == 0)
      atomicAdd(a.rejected, 1u);
  }
}

// Several completed receives in one launch: warps stride over (receive,
// record) positions; positions past a slot's count are skipped.
__global__ void unpack_batch_kernel(unpack_batch_args a) {
  const unsigned lane = threadIdx.x % warp_lanes;
  const std::uint32_t warp =
      (blockIdx.x * blockDim.x + threadIdx.x) / warp_lanes;
  const std::uint32_t warps = (gridDim.x * blockDim.x) / warp_lanes;
  const ncclNetUnpackMeta* meta = a.handle->meta;
  const char* bounce = a.handle->bounce_buf;
  const std::uint32_t positions = a.receives * NCCL_NET_UNPACK_RECORDS;
  for (std::uint32_t g = warp; g < positions; g += warps) {
    const std::uint32_t i = g / a.receives; // record index
    const unpack_receive& rcv = a.receive[g % a.receives];
    const std::uint64_t count = meta->count[rcv.slot];
    if (count > NCCL_NET_UNPACK_RECORDS) {
      if (i == 0 && lane == 0)
        reject_slot_count(a.rejected, count);
      continue;
    }
    if (i >= count)
      continue;
    const std::uint64_t* table = rcv.block_offsets;
    const bool ok = unpack_record(
        meta->records[rcv.slot][i], bounce, a.bounce_bytes,
        reinterpret_cast<char*>(a.dst_region), a.dst_region_bytes,
        rcv.base_offset, rcv.block_bytes, rcv.block_count,
        [table](std::uint64_t b) { return table[b]; }, lane);
    if (!ok && lane == 0)
      atomicAdd(a.rejected, 1u);
  }
}

// ---- test helpers

__device__ __forceinline__ std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

__global__ void fill_pattern_kernel(unsigned char* data, std::size_t bytes,
                                    std::uint64_t seed) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = blockIdx.x * blockDim.x + threadIdx.x; i * 8 < bytes;
       i += stride) {
    const std::uint64_t word = splitmix64(seed ^ (i * 0x2545f4914f6cdd1dull));
    for (int b = 0; b < 8 && i * 8 + b < bytes; ++b)
      data[i * 8 + b] = static_cast<unsigned char>(word >> (8 * b));
  }
}

__global__ void count_mismatches_kernel(const copy_work_item* items,
                                        std::uint32_t n,
                                        const unsigned char* src,
                                        const unsigned char* dst,
                                        unsigned long long* mismatches) {
  const unsigned lane = threadIdx.x % warp_lanes;
  const std::uint32_t warp =
      (blockIdx.x * blockDim.x + threadIdx.x) / warp_lanes;
  const std::uint32_t warps = (gridDim.x * blockDim.x) / warp_lanes;
  unsigned long long local = 0;
  for (std::uint32_t i = warp; i < n; i += warps) {
    const copy_work_item item = items[i];
    for (std::uint32_t b = lane; b < item.length; b += warp_lanes)
      local += src[item.src_offset + b] != dst[item.dst_offset + b];
  }
  if (local)
    atomicAdd(mismatches, local);
}

int grid_for(std::uint64_t units, int threads, int cap) {
  const std::uint64_t blocks = (units + threads - 1) / threads;
  return static_cast<int>(
      blocks < 1 ? 1
                 : (blocks > static_cast<std::uint64_t>(cap) ? cap : blocks));
}

// Grid for `items` spread over warps: each warp strides over items, so the
// work takes ceil(items / warps) rounds. Launch only as many warps as those
// rounds need (all but the last warp do exactly that many items), rather than
// leaving a last round in which a few warps run alone.
int balanced_grid(std::uint64_t items, int warps_per_block, int max_blocks) {
  const std::uint64_t max_warps = std::uint64_t(max_blocks) * warps_per_block;
  const std::uint64_t rounds = (items + max_warps - 1) / max_warps;
  const std::uint64_t warps = (items + rounds - 1) / rounds;
  return grid_for(warps, warps_per_block, max_blocks);
}

} // namespace

int copy_blocks_per_sm(const copy_tuning& tuning) {
  if (tuning.plain)
    return blocks_per_sm_of(plain_copy_kernel<false>, tuning.threads_per_block);
  if (bulk_usable(tuning)) {
    const int blocks = bulk_blocks_per_sm(tuning);
    if (blocks > 0)
      return blocks;
  }
  return dispatch(tuning, occupancy_query{tuning.threads_per_block,
                                          uses_item_list(tuning)});
}

bool uses_item_list(const copy_tuning& tuning) {
  return tuning.bulk || tuning.cta_per_item || tuning.host_item_list;
}

bool bulk_eligible(const std::vector<copy_work_item>& items,
                   std::uint32_t item_bytes) {
  for (const auto& it : items)
    if ((it.src_offset | it.dst_offset | it.length) % 16 != 0 ||
        it.length > item_bytes)
      return false;
  return true;
}

cudaError_t launch_batched_copy(const copy_work_item* items,
                                std::uint32_t item_count,
                                const std::byte* src_base, std::byte* dst_base,
                                const copy_tuning& tuning, int grid_blocks,
                                bool items_bulk_eligible, cudaStream_t stream) {
  if (item_count == 0)
    return cudaSuccess;
  const auto bases = reinterpret_cast<std::uintptr_t>(src_base) |
                     reinterpret_cast<std::uintptr_t>(dst_base);
  if (items_bulk_eligible && bulk_usable(tuning) && bases % 16 == 0 &&
      bulk_blocks_per_sm(tuning) > 0) {
    const int warps_per_block =
        tuning.threads_per_block / static_cast<int>(warp_lanes);
    return launch_bulk(
        items, item_count, reinterpret_cast<const char*>(src_base),
        reinterpret_cast<char*>(dst_base), tuning,
        tuning.balance_rounds
            ? balanced_grid(item_count, warps_per_block, grid_blocks)
            : grid_for(item_count, warps_per_block, grid_blocks),
        stream);
  }
  // Never launch warps that would find no item at all.
  const int units_per_block =
      tuning.cta_per_item
          ? 1
          : tuning.threads_per_block / static_cast<int>(warp_lanes);
  const int grid = tuning.balance_rounds
                       ? balanced_grid(item_count, units_per_block, grid_blocks)
                       : grid_for(item_count, units_per_block, grid_blocks);
  return dispatch(tuning, copy_launch{items, item_count,
                                      reinterpret_cast<const char*>(src_base),
                                      reinterpret_cast<char*>(dst_base),
                                      tuning.threads_per_block, grid,
                                      tuning.cta_per_item, stream});
}

bool runs_block_per_item(const copy_tuning& tuning, std::uint32_t extent_count,
                         std::uint32_t item_count) {
  return extent_count > 0 &&
         std::uint64_t{item_count} * tuning.item_bytes / extent_count >=
             tuning.block_per_item_from;
}

cudaError_t launch_extent_copy(const copy_extent* extents,
                               const std::uint32_t* first_item,
                               std::uint32_t extent_count,
                               std::uint32_t item_count,
                               const std::byte* src_base, std::byte* dst_base,
                               const copy_tuning& tuning, int grid_blocks,
                               claim_counter* claims, cudaStream_t stream,
                               const plan_bases* at) {
  if (item_count == 0)
    return cudaSuccess;
  if (tuning.plain) { // a block per item, never more blocks than items
    const auto grid = grid_for(item_count, 1, grid_blocks);
    const auto* s = reinterpret_cast<const char*>(src_base);
    auto* d = reinterpret_cast<char*>(dst_base);
    if (at != nullptr)
      plain_copy_kernel<true><<<grid, tuning.threads_per_block, 0, stream>>>(
          extents, first_item, extent_count, item_count, tuning.item_bytes, s,
          d, *at);
    else
      plain_copy_kernel<<<grid, tuning.threads_per_block, 0, stream>>>(
          extents, first_item, extent_count, item_count, tuning.item_bytes, s,
          d);
    return cudaGetLastError();
  }
  if (runs_block_per_item(tuning, extent_count, item_count)) {
    constexpr std::uint32_t max_grid = 0x7fffffffu;
    // Loads per thread that copy an item in one pass.
    const std::uint32_t block_bytes = 16u * tuning.threads_per_block;
    copy_tuning shape = tuning;
    shape.unroll =
        static_cast<int>((tuning.item_bytes + block_bytes - 1) / block_bytes);
    return dispatch(
        shape,
        extent_copy_launch{
            extents, first_item, extent_count, item_count, tuning.item_bytes,
            reinterpret_cast<const char*>(src_base),
            reinterpret_cast<char*>(dst_base), tuning.threads_per_block,
            static_cast<int>(item_count < max_grid ? item_count : max_grid),
            item_claims{}, stream, true, at});
  }
  const int warps_per_block =
      tuning.threads_per_block / static_cast<int>(warp_lanes);
  // Claiming warps balance themselves: every resident warp starts.
  const int grid = tuning.balance_rounds && claims == nullptr
                       ? balanced_grid(item_count, warps_per_block, grid_blocks)
                       : grid_for(item_count, warps_per_block, grid_blocks);
  const item_claims handed_out =
      claims ? item_claims{claims->device, claims->drawn} : item_claims{};
  const cudaError_t err = dispatch(
      tuning, extent_copy_launch{
                  extents, first_item, extent_count, item_count,
                  tuning.item_bytes, reinterpret_cast<const char*>(src_base),
                  reinterpret_cast<char*>(dst_base), tuning.threads_per_block,
                  grid, handed_out, stream, false, at});
  if (claims != nullptr && err == cudaSuccess) // every warp draws once more
    claims->drawn += std::uint64_t{item_count} +
                     static_cast<std::uint64_t>(grid) * warps_per_block;
  return err;
}

cudaError_t launch_unpack(const unpack_args& args, cudaStream_t stream) {
  constexpr int threads = 256;
  constexpr int grid = NCCL_NET_UNPACK_RECORDS / (threads / warp_lanes);
  unpack_kernel<<<grid, threads, 0, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t launch_unpack_batch(const unpack_batch_args& args, int grid_blocks,
                                cudaStream_t stream) {
  constexpr int threads = 256;
  const std::uint64_t positions =
      std::uint64_t(args.receives) * NCCL_NET_UNPACK_RECORDS;
  unpack_batch_kernel<<<grid_for(positions * warp_lanes, threads, grid_blocks),
                        threads, 0, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t launch_fill_pattern(std::byte* data, std::size_t bytes,
                                std::uint64_t seed, cudaStream_t stream) {
  constexpr int threads = 256;
  fill_pattern_kernel<<<grid_for(bytes / 8 + 1, threads, 4096), threads, 0,
                        stream>>>(reinterpret_cast<unsigned char*>(data), bytes,
                                  seed);
  return cudaGetLastError();
}

cudaError_t
launch_count_mismatches(const copy_work_item* items, std::uint32_t item_count,
                        const std::byte* src_base, const std::byte* dst_base,
                        unsigned long long* mismatches, cudaStream_t stream) {
  if (item_count == 0)
    return cudaSuccess;
  constexpr int threads = 256;
  count_mismatches_kernel<<<grid_for(std::uint64_t{item_count} * warp_lanes,
                                     threads, 4096),
                            threads, 0, stream>>>(
      items, item_count, reinterpret_cast<const unsigned char*>(src_base),
      reinterpret_cast<const unsigned char*>(dst_base), mismatches);
  return cudaGetLastError();
}

} // namespace kvferry::transport::kernels
