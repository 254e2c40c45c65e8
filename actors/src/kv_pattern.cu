// The CUDA side of kv_pattern: one kernel per call fills or checks every
// block of the call (a CTA per block, grid-strided), using the same formula
// as fill_pattern in kv_pattern.cpp, so either side may be host or GPU
// memory; sampled, one thread per stamp (kv_stamp.hpp).
//
// A call is the kernel between two events and one wait, nothing else on
// the stream: the kernel reads the block offsets from pinned host memory
// mapped into the GPU's address space (no upload before it), and a check's
// last CTA writes the verdict there and resets the device's counters for
// the next call (no reset before it, no download after it). Each copy on
// the stream cost the caller an API call and the stream a DMA's latency,
// on the critical path of every request of the demo.
#include <cstring>
#include <limits>
#include <string>

#include <cuda_runtime_api.h>

#include "gpu_knobs.hpp"
#include "kv_pattern_device.hpp"
#include "kvferry/actors/kv_stamp.hpp"
#include "kvferry/transport/gpu_memory.hpp"

namespace kvferry::detail {
namespace {

constexpr std::uint64_t golden = 0x9E3779B97F4A7C15ull;
constexpr std::uint64_t word_step = 0xD1B54A32D192ED03ull;
constexpr std::uint64_t none = std::numeric_limits<std::uint64_t>::max();
constexpr int threads = 256;
constexpr std::size_t max_grid = 2048;

void check_cuda(cudaError_t err, const char* call, int gpu) {
  if (err != cudaSuccess)
    throw transport::gpu_error(std::string{"kv pattern: "} + call +
                               " failed on GPU " + std::to_string(gpu) + ": " +
                               cudaGetErrorName(err) + " (" +
                               cudaGetErrorString(err) + ")");
}

// splitmix64 of the coordinates (as fill_pattern).
__device__ std::uint64_t block_seed(std::uint64_t seed, std::uint64_t request,
                                    std::uint32_t layer, std::uint32_t block) {
  std::uint64_t x = seed ^ (request * golden) ^
                    (static_cast<std::uint64_t>(layer) << 32) ^ block;
  x += golden;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__device__ std::uint8_t pattern_byte(std::uint64_t x, std::uint64_t i,
                                     std::uint64_t words) {
  // Whole words are x + k * step (little endian); the tail repeats x.
  std::uint64_t v = i < words * 8 ? x + (i / 8) * word_step : x;
  return static_cast<std::uint8_t>(v >> (8 * (i % 8)));
}

// Whole 16-byte pairs of words, `unroll` per thread per round so that each
// thread keeps several loads in flight (a check is a stream of reads: with
// one 8-byte load per thread at a time the SMs cannot keep enough bytes in
// flight to fill HBM). Returns the bytes covered; `bad` when a pair differs.
template<bool Check>
__device__ std::uint64_t pattern_pairs(std::uint8_t* p, std::uint64_t x,
                                       std::uint64_t words, bool& bad) {
  constexpr unsigned unroll = 4;
  const std::uint64_t pairs = words / 2;
  auto* q = reinterpret_cast<ulonglong2*>(p);
  const std::uint64_t stride = blockDim.x;
  std::uint64_t k = threadIdx.x;
  for (; k + (unroll - 1) * stride < pairs; k += unroll * stride) {
    ulonglong2 got[unroll];
    if (Check) {
#pragma unroll
      for (unsigned u = 0; u < unroll; ++u)
        got[u] = q[k + u * stride];
    }
#pragma unroll
    for (unsigned u = 0; u < unroll; ++u) {
      const std::uint64_t w = x + 2 * (k + u * stride) * word_step;
      if (Check)
        bad |= got[u].x != w || got[u].y != w + word_step;
      else
        q[k + u * stride] = make_ulonglong2(w, w + word_step);
    }
  }
  for (; k < pairs; k += stride) {
    const std::uint64_t w = x + 2 * k * word_step;
    if (Check) {
      const ulonglong2 got = q[k];
      bad |= got.x != w || got.y != w + word_step;
    } else {
      q[k] = make_ulonglong2(w, w + word_step);
    }
  }
  return pairs * 16;
}

// 8-byte words, for blocks aligned to 8 but not 16 bytes.
template<bool Check>
__device__ std::uint64_t pattern_words(std::uint8_t* p, std::uint64_t x,
                                       std::uint64_t words, bool& bad) {
  auto* w = reinterpret_cast<std::uint64_t*>(p);
  for (std::uint64_t k = threadIdx.x; k < words; k += blockDim.x) {
    const std::uint64_t v = x + k * word_step;
    if (Check)
      bad |= w[k] != v;
    else
      w[k] = v;
  }
  return words * 8;
}

// A check's end, in each CTA: the last CTA to finish hands the lowest
// mismatching index to the host (`verdict`, mapped pinned memory, read
// once the stream is done) and leaves `first_bad` at `none` and
// `ctas_done` at 0 for the next call on this stream.
__device__ void publish_check(unsigned long long* first_bad,
                              unsigned* ctas_done,
                              unsigned long long* verdict) {
  __syncthreads(); // every thread of this CTA has lowered first_bad
  if (threadIdx.x != 0)
    return;
  __threadfence(); // this CTA's atomicMin before its count
  if (atomicAdd(ctas_done, 1u) != gridDim.x - 1)
    return;
  __threadfence(); // every CTA's count, hence its atomicMin, before the read
  *verdict = atomicExch(first_bad, static_cast<unsigned long long>(none));
  atomicExch(ctas_done, 0u);
  __threadfence_system();
}

template<bool Check>
__global__ void pattern_kernel(std::uint8_t* base, const std::uint64_t* offsets,
                               std::uint64_t count, std::uint64_t block_bytes,
                               std::uint64_t seed, std::uint64_t request,
                               std::uint32_t first_layer, std::uint32_t bpl,
                               unsigned long long* first_bad,
                               unsigned* ctas_done,
                               unsigned long long* verdict) {
  const std::uint64_t words = block_bytes / 8;
  for (std::uint64_t i = blockIdx.x; i < count; i += gridDim.x) {
    const auto layer = first_layer + static_cast<std::uint32_t>(i / bpl);
    const auto block = static_cast<std::uint32_t>(i % bpl);
    const std::uint64_t x = block_seed(seed, request, layer, block);
    std::uint8_t* p = base + offsets[i];
    bool bad = false;
    std::uint64_t vector_bytes = 0;
    const auto address = reinterpret_cast<std::uintptr_t>(p);
    if ((address & 15) == 0)
      vector_bytes = pattern_pairs<Check>(p, x, words, bad);
    else if ((address & 7) == 0)
      vector_bytes = pattern_words<Check>(p, x, words, bad);
    // Misaligned blocks, an odd last word and the tail: byte by byte.
    for (std::uint64_t k = vector_bytes + threadIdx.x; k < block_bytes;
         k += blockDim.x) {
      const auto v = pattern_byte(x, k, words);
      if (Check)
        bad |= p[k] != v;
      else
        p[k] = v;
    }
    if (bad)
      atomicMin(first_bad, static_cast<unsigned long long>(i));
  }
  if constexpr (Check)
    publish_check(first_bad, ctas_done, verdict);
}

// Sampled (kv_stamp.hpp): one thread per stamp, over every page of every
// block of the call; writes it, or compares it and lowers `first_bad` to
// the block's index when it differs.
template<bool Check>
__global__ void stamp_kernel(std::uint8_t* base, const std::uint64_t* offsets,
                             std::uint64_t count, pattern_blocks b,
                             unsigned long long* first_bad, unsigned* ctas_done,
                             unsigned long long* verdict) {
  const std::uint64_t pages = stamp::pages(b.block_bytes);
  const std::uint64_t total = count * pages;
  for (std::uint64_t t = blockIdx.x * std::uint64_t{blockDim.x} + threadIdx.x;
       t < total; t += std::uint64_t{gridDim.x} * blockDim.x) {
    const std::uint64_t i = t / pages, page = t % pages;
    const auto layer = stamp::layer_of(b, i);
    const auto block = stamp::block_of(b, i);
    const auto want =
        stamp::of(b.seed, b.request_id, layer, block, page, b.block_bytes);
    std::uint8_t* p =
        base + offsets[i] +
        stamp::offset(b.request_id, layer, block, page, b.block_bytes);
    // Stamps are 16-byte aligned whenever the block is; else 8 bytes by 8
    // or byte by byte.
    const auto address = reinterpret_cast<std::uintptr_t>(p);
    bool bad = false;
    if ((address & 15) == 0) {
      auto* q = reinterpret_cast<ulonglong2*>(p);
      if (Check) {
        const ulonglong2 got = *q;
        bad = got.x != want.lo || got.y != want.hi;
      } else {
        *q = make_ulonglong2(want.lo, want.hi);
      }
    } else if ((address & 7) == 0) {
      auto* q = reinterpret_cast<std::uint64_t*>(p);
      if (Check)
        bad = q[0] != want.lo || q[1] != want.hi;
      else {
        q[0] = want.lo;
        q[1] = want.hi;
      }
    } else {
      for (int k = 0; k < 16; ++k) {
        const auto v = static_cast<std::uint8_t>((k < 8 ? want.lo : want.hi) >>
                                                 (8 * (k % 8)));
        if (Check)
          bad |= p[k] != v;
        else
          p[k] = v;
      }
    }
    if (bad)
      atomicMin(first_bad, static_cast<unsigned long long>(i));
  }
  if constexpr (Check)
    publish_check(first_bad, ctas_done, verdict);
}

// Where a check's kernel keeps and leaves its result (publish_check).
struct check_slots {
  unsigned long long* first_bad = nullptr; // device: `none` between calls
  unsigned* ctas_done = nullptr;           // device: 0 between calls
  unsigned long long* verdict = nullptr;   // mapped pinned host memory
};

// Launches the kernel of `l` (full pattern or stamps) on `stream`, reading
// the block offsets at `offsets` (a device address).
void launch(const pattern_launch& l, const std::uint64_t* offsets,
            const check_slots& slots, bool check, std::size_t cap,
            cudaStream_t stream) {
  if (l.blocks.sampled) {
    const std::uint64_t stamps = l.count * stamp::pages(l.blocks.block_bytes);
    const std::uint64_t ctas = (stamps + threads - 1) / threads;
    const auto grid = static_cast<unsigned>(ctas < cap ? ctas : cap);
    const unsigned at_least_one = grid == 0 ? 1 : grid;
    auto* kernel = check ? stamp_kernel<true> : stamp_kernel<false>;
    kernel<<<at_least_one, threads, 0, stream>>>(
        l.base, offsets, l.count, l.blocks, slots.first_bad, slots.ctas_done,
        slots.verdict);
    return;
  }
  const auto grid = static_cast<unsigned>(l.count < cap ? l.count : cap);
  auto* kernel = check ? pattern_kernel<true> : pattern_kernel<false>;
  kernel<<<grid, threads, 0, stream>>>(
      l.base, offsets, l.count, l.blocks.block_bytes, l.blocks.seed,
      l.blocks.request_id, l.blocks.first_layer, l.blocks.blocks_per_layer,
      slots.first_bad, slots.ctas_done, slots.verdict);
}

// Pinned host memory that the GPU reads and writes in place (mapped into
// its address space); `device` is the kernel's address of it.
template<class T>
T* alloc_mapped(std::size_t count, T*& device, const char* what, int gpu) {
  void* host = nullptr;
  check_cuda(cudaHostAlloc(&host, count * sizeof(T), cudaHostAllocMapped), what,
             gpu);
  void* on_gpu = nullptr;
  if (auto err = cudaHostGetDevicePointer(&on_gpu, host, 0);
      err != cudaSuccess) {
    cudaFreeHost(host);
    check_cuda(err, "cudaHostGetDevicePointer", gpu);
  }
  device = static_cast<T*>(on_gpu);
  return static_cast<T*>(host);
}

} // namespace

struct pattern_device {
  int gpu = 0;
  cudaStream_t stream = nullptr;
  unsigned fill_grid = max_grid; // KVFERRY_FILL_GRID
  // The block offsets of a call, read by its kernel in place.
  std::uint64_t* offsets_host = nullptr;
  std::uint64_t* offsets_mapped = nullptr; // the kernel's address of them
  std::size_t capacity = 0;                // offsets they hold
  check_slots slots;
  unsigned long long* verdict_host = nullptr; // slots.verdict, for the host
  // Around each kernel: its GPU time, for the demo's breakdown.
  cudaEvent_t started = nullptr, ended = nullptr;

  // Grows the offset buffer to the largest call seen, then reuses it
  // (created at its largest size, see pattern_device_create, a run never
  // grows it: cudaFreeHost would wait for the whole device).
  void reserve(std::size_t count) {
    if (count <= capacity)
      return;
    cudaFreeHost(offsets_host);
    offsets_host = nullptr;
    capacity = 0;
    offsets_host = alloc_mapped(count, offsets_mapped,
                                "cudaHostAlloc (block offsets)", gpu);
    capacity = count;
  }
};

pattern_device* pattern_device_create(int gpu, std::size_t max_blocks) {
  auto* d = new pattern_device;
  d->gpu = gpu;
  try {
    d->fill_grid = pattern_fill_grid(max_grid);
    check_cuda(cudaSetDevice(gpu), "cudaSetDevice", gpu);
    // The lowest priority (CUDA's default, made explicit): a transfer's copy
    // kernel in this process (highest priority) gets SMs first.
    int lowest = 0, highest = 0;
    check_cuda(cudaDeviceGetStreamPriorityRange(&lowest, &highest),
               "cudaDeviceGetStreamPriorityRange", gpu);
    check_cuda(
        cudaStreamCreateWithPriority(&d->stream, cudaStreamNonBlocking, lowest),
        "cudaStreamCreateWithPriority", gpu);
    check_cuda(cudaMalloc(reinterpret_cast<void**>(&d->slots.first_bad),
                          sizeof(unsigned long long)),
               "cudaMalloc (mismatch index)", gpu);
    check_cuda(cudaMalloc(reinterpret_cast<void**>(&d->slots.ctas_done),
                          sizeof(unsigned)),
               "cudaMalloc (CTA count)", gpu);
    // Their states between calls (publish_check keeps them so): all bits
    // set is `none`.
    // (On the call's stream: its kernels come after.)
    check_cuda(cudaMemsetAsync(d->slots.first_bad, 0xff,
                               sizeof(unsigned long long), d->stream),
               "cudaMemsetAsync (mismatch index)", gpu);
    check_cuda(
        cudaMemsetAsync(d->slots.ctas_done, 0, sizeof(unsigned), d->stream),
        "cudaMemsetAsync (CTA count)", gpu);
    d->verdict_host = alloc_mapped(1, d->slots.verdict,
                                   "cudaHostAlloc (mismatch index)", gpu);
    check_cuda(cudaEventCreate(&d->started), "cudaEventCreate", gpu);
    check_cuda(cudaEventCreate(&d->ended), "cudaEventCreate", gpu);
    d->reserve(max_blocks);
  } catch (...) {
    pattern_device_destroy(d);
    throw;
  }
  return d;
}

void pattern_device_destroy(pattern_device* d) noexcept {
  if (d == nullptr)
    return;
  cudaSetDevice(d->gpu);
  if (d->stream != nullptr) {
    cudaStreamSynchronize(d->stream);
    cudaStreamDestroy(d->stream);
  }
  cudaFreeHost(d->offsets_host);
  cudaFree(d->slots.first_bad);
  cudaFree(d->slots.ctas_done);
  cudaFreeHost(d->verdict_host);
  if (d->started != nullptr)
    cudaEventDestroy(d->started);
  if (d->ended != nullptr)
    cudaEventDestroy(d->ended);
  delete d;
}

pattern_outcome pattern_device_run(pattern_device& d, const pattern_launch& l,
                                   bool check) {
  if (l.count == 0)
    return {none, 0};
  check_cuda(cudaSetDevice(d.gpu), "cudaSetDevice", d.gpu);
  d.reserve(l.count);
  // The previous call's kernel has ended (waited for below): the buffer is
  // free to overwrite.
  std::memcpy(d.offsets_host, l.offsets, l.count * sizeof(std::uint64_t));
  // A check stays at the full grid: it runs in the consumer's process, so a
  // copy from the producer's process waits for it to end (time slices) and
  // a smaller grid would only make it end later.
  const std::size_t cap = check ? max_grid : d.fill_grid;
  check_cuda(cudaEventRecord(d.started, d.stream), "cudaEventRecord", d.gpu);
  launch(l, d.offsets_mapped, d.slots, check, cap, d.stream);
  check_cuda(cudaGetLastError(),
             check ? "check kernel launch" : "fill kernel launch", d.gpu);
  check_cuda(cudaEventRecord(d.ended, d.stream), "cudaEventRecord", d.gpu);
  check_cuda(cudaStreamSynchronize(d.stream),
             check ? "pattern check kernel" : "pattern fill kernel", d.gpu);
  float ms = 0;
  check_cuda(cudaEventElapsedTime(&ms, d.started, d.ended),
             "cudaEventElapsedTime", d.gpu);
  return {check ? *d.verdict_host : none,
          static_cast<std::int64_t>(static_cast<double>(ms) * 1e6)};
}

} // namespace kvferry::detail
