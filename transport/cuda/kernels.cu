// The batched copy and unpack kernels. Both are memory-bound: the design is
// about keeping enough 16-byte loads in flight and never idling a warp.
//
//  - One warp copies one work item (an equal-size piece of an extent, cut on
//    the host by partition_into_work_items), so thousands of small blocks and
//    a few huge ones balance the same way.
//  - Persistent grid: as many blocks as the SMs keep resident; each warp
//    strides over the items. No per-block launch, no tail of idle SMs.
//  - Each lane issues UNROLL independent 16-byte loads before its first
//    store; the last partial pass is predicated rather than looped so small
//    items keep all their loads in flight too.
//  - Streaming hints (__ldcs/__stcs): copied bytes are touched once, so they
//    should not evict anything from L2.
#include "kernels.hpp"

#include <cuda_runtime.h>

namespace kvferry::transport::kernels {

namespace {

constexpr unsigned warp_lanes = 32;

template <bool Streaming>
__device__ __forceinline__ uint4 load16(const uint4* p) {
  if constexpr (Streaming)
    return __ldcs(p);
  else
    return *p;
}

template <bool Streaming>
__device__ __forceinline__ void store16(uint4* p, uint4 v) {
  if constexpr (Streaming)
    __stcs(p, v);
  else
    *p = v;
}

// The whole warp copies `len` bytes from s to d. Fast path when both are
// 16-byte aligned (KV blocks always are); 4-byte and byte paths keep odd
// plans correct.
template <int Unroll, bool Streaming>
__device__ __forceinline__ void warp_copy(const char* s, char* d, std::uint64_t len,
                                          unsigned lane) {
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
        r[k] = load16<Streaming>(vs + v + k * warp_lanes + lane);
#pragma unroll
      for (int k = 0; k < Unroll; ++k)
        store16<Streaming>(vd + v + k * warp_lanes + lane, r[k]);
    }
    if (v < vectors) {  // one predicated partial pass
      uint4 r[Unroll];
#pragma unroll
      for (int k = 0; k < Unroll; ++k) {
        const std::uint64_t i = v + k * warp_lanes + lane;
        if (i < vectors)
          r[k] = load16<Streaming>(vs + i);
      }
#pragma unroll
      for (int k = 0; k < Unroll; ++k) {
        const std::uint64_t i = v + k * warp_lanes + lane;
        if (i < vectors)
          store16<Streaming>(vd + i, r[k]);
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

template <int Unroll, bool Streaming>
__global__ void batched_copy_kernel(const copy_work_item* __restrict__ items,
                                    std::uint32_t item_count, const char* src, char* dst) {
  const unsigned lane = threadIdx.x % warp_lanes;
  const std::uint32_t warp = (blockIdx.x * blockDim.x + threadIdx.x) / warp_lanes;
  const std::uint32_t warps = (gridDim.x * blockDim.x) / warp_lanes;
  for (std::uint32_t i = warp; i < item_count; i += warps) {
    const copy_work_item item = items[i];
    warp_copy<Unroll, Streaming>(src + item.src_offset, dst + item.dst_offset, item.length,
                                 lane);
  }
}

template <int Unroll, bool Streaming>
cudaError_t launch_copy_variant(const copy_work_item* items, std::uint32_t n, const char* src,
                                char* dst, int threads, int grid, cudaStream_t stream) {
  batched_copy_kernel<Unroll, Streaming><<<grid, threads, 0, stream>>>(items, n, src, dst);
  return cudaGetLastError();
}

template <int Unroll, bool Streaming>
int blocks_per_sm_variant(int threads) {
  int blocks = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(
          &blocks, batched_copy_kernel<Unroll, Streaming>, threads, 0) != cudaSuccess)
    return 1;
  return blocks > 0 ? blocks : 1;
}

// Runs `fn.template operator()<Unroll, Streaming>()` for the tuning's variant.
template <typename Fn>
auto dispatch(const copy_tuning& t, Fn&& fn) {
  if (t.unroll <= 4)
    return t.streaming ? fn.template operator()<4, true>() : fn.template operator()<4, false>();
  if (t.unroll <= 8)
    return t.streaming ? fn.template operator()<8, true>() : fn.template operator()<8, false>();
  return t.streaming ? fn.template operator()<16, true>() : fn.template operator()<16, false>();
}

struct occupancy_query {
  int threads;
  template <int U, bool S>
  int operator()() const { return blocks_per_sm_variant<U, S>(threads); }
};

struct copy_launch {
  const copy_work_item* items;
  std::uint32_t n;
  const char* src;
  char* dst;
  int threads;
  int grid;
  cudaStream_t stream;
  template <int U, bool S>
  cudaError_t operator()() const {
    return launch_copy_variant<U, S>(items, n, src, dst, threads, grid, stream);
  }
};

// ---- unpack -----------------------------------------------------------------

__device__ __forceinline__ bool fits(std::uint64_t off, std::uint64_t len, std::uint64_t size) {
  return off <= size && len <= size - off;
}

__global__ void unpack_kernel(unpack_args a) {
  const unsigned lane = threadIdx.x % warp_lanes;
  const std::uint32_t warp = (blockIdx.x * blockDim.x + threadIdx.x) / warp_lanes;
  const std::uint32_t warps = (gridDim.x * blockDim.x) / warp_lanes;
  const ncclNetUnpackMeta* meta = a.handle->meta;
  const char* bounce = a.handle->bounce_buf;
  const std::uint64_t count = meta->count[a.slot];
  if (count > NCCL_NET_UNPACK_RECORDS) {
    if (blockIdx.x == 0 && threadIdx.x == 0)
      atomicAdd(a.rejected, static_cast<unsigned>(count > 0xffffffffu ? 0xffffffffu : count));
    return;
  }
  for (std::uint64_t i = warp; i < count; i += warps) {
    const ncclNetUnpackRecord r = meta->records[a.slot][i];
    bool ok = fits(r.src_off, r.len, a.bounce_bytes);
    if (ok && a.block_bytes == 0) {
      const std::uint64_t off = a.base_offset + r.dst_off;
      ok = off >= r.dst_off && fits(off, r.len, a.dst_region_bytes);
      if (ok)
        warp_copy<8, true>(bounce + r.src_off, reinterpret_cast<char*>(a.dst_region) + off,
                           r.len, lane);
    } else if (ok) {
      std::uint64_t done = 0;
      while (ok && done < r.len) {
        const std::uint64_t logical = r.dst_off + done;
        const std::uint64_t block = logical / a.block_bytes;
        const std::uint64_t within = logical % a.block_bytes;
        const std::uint64_t piece = min(std::uint64_t{r.len} - done, a.block_bytes - within);
        ok = block < a.block_count;
        if (!ok)
          break;
        const std::uint64_t off = a.block_offsets[block] + within;
        ok = fits(off, piece, a.dst_region_bytes);
        if (ok)
          warp_copy<8, true>(bounce + r.src_off + done,
                             reinterpret_cast<char*>(a.dst_region) + off, piece, lane);
        done += piece;
      }
    }
    if (!ok && lane == 0)
      atomicAdd(a.rejected, 1u);
  }
}

// ---- test helpers -------------------------------------------------------------

__device__ __forceinline__ std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

__global__ void fill_pattern_kernel(unsigned char* data, std::size_t bytes, std::uint64_t seed) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = blockIdx.x * blockDim.x + threadIdx.x; i * 8 < bytes; i += stride) {
    const std::uint64_t word = splitmix64(seed ^ (i * 0x2545f4914f6cdd1dull));
    for (int b = 0; b < 8 && i * 8 + b < bytes; ++b)
      data[i * 8 + b] = static_cast<unsigned char>(word >> (8 * b));
  }
}

__global__ void count_mismatches_kernel(const copy_work_item* items, std::uint32_t n,
                                        const unsigned char* src, const unsigned char* dst,
                                        unsigned long long* mismatches) {
  const unsigned lane = threadIdx.x % warp_lanes;
  const std::uint32_t warp = (blockIdx.x * blockDim.x + threadIdx.x) / warp_lanes;
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
  return static_cast<int>(blocks < 1 ? 1 : (blocks > static_cast<std::uint64_t>(cap) ? cap : blocks));
}

}  // namespace

int copy_blocks_per_sm(const copy_tuning& tuning) {
  return dispatch(tuning, occupancy_query{tuning.threads_per_block});
}

cudaError_t launch_batched_copy(const copy_work_item* items, std::uint32_t item_count,
                                const std::byte* src_base, std::byte* dst_base,
                                const copy_tuning& tuning, int grid_blocks,
                                cudaStream_t stream) {
  if (item_count == 0)
    return cudaSuccess;
  // Never launch warps that would find no item at all.
  const int warps_per_block = tuning.threads_per_block / static_cast<int>(warp_lanes);
  const int grid = grid_for(item_count, warps_per_block, grid_blocks);
  return dispatch(tuning, copy_launch{items, item_count,
                                      reinterpret_cast<const char*>(src_base),
                                      reinterpret_cast<char*>(dst_base),
                                      tuning.threads_per_block, grid, stream});
}

cudaError_t launch_unpack(const unpack_args& args, cudaStream_t stream) {
  constexpr int threads = 256;
  constexpr int grid = NCCL_NET_UNPACK_RECORDS / (threads / warp_lanes);
  unpack_kernel<<<grid, threads, 0, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t launch_fill_pattern(std::byte* data, std::size_t bytes, std::uint64_t seed,
                                cudaStream_t stream) {
  constexpr int threads = 256;
  fill_pattern_kernel<<<grid_for(bytes / 8 + 1, threads, 4096), threads, 0, stream>>>(
      reinterpret_cast<unsigned char*>(data), bytes, seed);
  return cudaGetLastError();
}

cudaError_t launch_count_mismatches(const copy_work_item* items, std::uint32_t item_count,
                                    const std::byte* src_base, const std::byte* dst_base,
                                    unsigned long long* mismatches, cudaStream_t stream) {
  if (item_count == 0)
    return cudaSuccess;
  constexpr int threads = 256;
  count_mismatches_kernel<<<grid_for(std::uint64_t{item_count} * warp_lanes, threads, 4096),
                            threads, 0, stream>>>(
      items, item_count, reinterpret_cast<const unsigned char*>(src_base),
      reinterpret_cast<const unsigned char*>(dst_base), mismatches);
  return cudaGetLastError();
}

}  // namespace kvferry::transport::kernels
