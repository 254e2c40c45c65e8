// The stack's GPU side (gpu.hpp): cudaMalloc'd cache layers, the model step
// as one small kernel per layer on the model's stream (an event after each,
// which kvferry's copy waits for on the GPU), and the verifier as one kernel
// per layer that reports only the first mismatching word.
#include <algorithm>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

#include <cuda_runtime_api.h>

#include "content_formula.hpp"
#include "gpu.hpp"

namespace example {

namespace {

constexpr unsigned long long no_mismatch =
    std::numeric_limits<unsigned long long>::max();
constexpr int threads = 256;
constexpr std::uint64_t max_grid = 1024;

void check(cudaError_t err, const char* call, int gpu) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string{"GPU "} + std::to_string(gpu) + ": " +
                             call + " failed: " + cudaGetErrorName(err) + " (" +
                             cudaGetErrorString(err) + ")");
}

// Makes `gpu` current for the CUDA calls of one scope.
struct on_device {
  int previous = 0;
  explicit on_device(int gpu) {
    cudaGetDevice(&previous);
    check(cudaSetDevice(gpu), "cudaSetDevice", gpu);
  }
  ~on_device() { cudaSetDevice(previous); }
};

// Waits for `event` with a deadline (cudaEventSynchronize has none).
void wait_event(cudaEvent_t event, std::chrono::milliseconds limit, int gpu,
                const char* what) {
  const auto until = std::chrono::steady_clock::now() + limit;
  for (;;) {
    auto err = cudaEventQuery(event);
    if (err == cudaSuccess)
      return;
    if (err != cudaErrorNotReady)
      check(err, what, gpu);
    if (std::chrono::steady_clock::now() > until)
      throw std::runtime_error("GPU " + std::to_string(gpu) + ": " + what +
                               " not done after " +
                               std::to_string(limit.count()) + " ms");
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

// CTAs stride over the request's block halves (j = 2 * index + half),
// threads over a half's words.
__global__ void write_kernel(char* base, std::uint64_t kv_stride,
                             std::uint64_t block_stride, std::uint64_t words,
                             const std::uint64_t* blocks, std::uint64_t count,
                             std::uint64_t request, std::uint32_t layer) {
  for (std::uint64_t j = blockIdx.x; j < 2 * count; j += gridDim.x) {
    const int half = static_cast<int>(j % 2);
    const std::uint64_t i = j / 2;
    auto* w = reinterpret_cast<std::uint64_t*>(base + half * kv_stride +
                                               blocks[i] * block_stride);
    const auto seed = half_seed(request, layer, i, half);
    for (std::uint64_t k = threadIdx.x; k < words; k += blockDim.x)
      w[k] = kv_word(seed, k);
  }
}

// The same walk; the lowest (j * words + k) that differs lands in *first.
__global__ void verify_kernel(const char* base, std::uint64_t kv_stride,
                              std::uint64_t block_stride, std::uint64_t words,
                              const std::uint64_t* blocks, std::uint64_t count,
                              std::uint64_t request, std::uint32_t layer,
                              unsigned long long* first) {
  for (std::uint64_t j = blockIdx.x; j < 2 * count; j += gridDim.x) {
    const int half = static_cast<int>(j % 2);
    const std::uint64_t i = j / 2;
    const auto* w = reinterpret_cast<const std::uint64_t*>(
        base + half * kv_stride + blocks[i] * block_stride);
    const auto seed = half_seed(request, layer, i, half);
    for (std::uint64_t k = threadIdx.x; k < words; k += blockDim.x)
      if (w[k] != kv_word(seed, k))
        atomicMin(first, static_cast<unsigned long long>(j * words + k));
  }
}

unsigned grid_for(std::uint64_t count) {
  return static_cast<unsigned>(std::min<std::uint64_t>(2 * count, max_grid));
}

} // namespace

int gpu_count() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

void* gpu_alloc(int gpu, std::size_t bytes) {
  on_device on(gpu);
  void* p = nullptr;
  return cudaMalloc(&p, bytes) == cudaSuccess ? p : nullptr;
}

void gpu_free(int gpu, void* p) noexcept {
  int previous = 0;
  cudaGetDevice(&previous);
  cudaSetDevice(gpu);
  cudaFree(p);
  cudaSetDevice(previous);
}

// A request's block ids in pinned host memory (the kernels read them over
// the bus: a few KiB), its start event and one event per layer.
struct gpu_model::request_state {
  std::uint64_t* ids = nullptr;
  std::uint64_t count = 0;
  cudaEvent_t start = nullptr;
  std::vector<cudaEvent_t> layers;
};

gpu_model::gpu_model(int gpu, gpu_cache_view cache)
    : gpu_(gpu), cache_(std::move(cache)) {
  on_device on(gpu_);
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking),
        "cudaStreamCreate", gpu_);
  stream_ = s;
  check(cudaMalloc(&first_device_, cache_.layer_base.size() * 8), "cudaMalloc",
        gpu_);
}

gpu_model::~gpu_model() {
  on_device on(gpu_);
  cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));
  for (auto& [id, r] : open_) {
    for (auto e : r->layers)
      cudaEventDestroy(e);
    cudaEventDestroy(r->start);
    cudaFreeHost(r->ids);
    delete r;
  }
  cudaFree(first_device_);
  cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

void gpu_model::begin(std::uint64_t request,
                      const std::vector<std::uint64_t>& blocks) {
  on_device on(gpu_);
  auto r = std::make_unique<request_state>();
  r->count = blocks.size();
  check(cudaHostAlloc(reinterpret_cast<void**>(&r->ids),
                      std::max<std::size_t>(1, blocks.size()) * 8,
                      cudaHostAllocMapped),
        "cudaHostAlloc", gpu_);
  std::copy(blocks.begin(), blocks.end(), r->ids);
  check(cudaEventCreate(&r->start), "cudaEventCreate", gpu_);
  check(cudaEventRecord(r->start, static_cast<cudaStream_t>(stream_)),
        "cudaEventRecord", gpu_);
  open_[request] = r.release();
}

void* gpu_model::write_layer(std::uint64_t request, std::uint32_t layer) {
  on_device on(gpu_);
  auto* r = open_.at(request);
  auto s = static_cast<cudaStream_t>(stream_);
  std::uint64_t* ids = nullptr;
  check(cudaHostGetDevicePointer(reinterpret_cast<void**>(&ids), r->ids, 0),
        "cudaHostGetDevicePointer", gpu_);
  if (r->count > 0)
    write_kernel<<<grid_for(r->count), threads, 0, s>>>(
        cache_.layer_base[layer], cache_.kv_stride, cache_.block_stride,
        cache_.block_bytes / 8, ids, r->count, request, layer);
  check(cudaGetLastError(), "the model step's kernel launch", gpu_);
  cudaEvent_t done = nullptr;
  check(cudaEventCreate(&done), "cudaEventCreate", gpu_);
  r->layers.push_back(done);
  check(cudaEventRecord(done, s), "cudaEventRecord", gpu_);
  return done;
}

std::int64_t gpu_model::end(std::uint64_t request) {
  on_device on(gpu_);
  auto it = open_.find(request);
  if (it == open_.end())
    return 0;
  std::unique_ptr<request_state> r(it->second);
  open_.erase(it);
  float ms = 0;
  if (!r->layers.empty()) {
    wait_event(r->layers.back(), std::chrono::seconds(10), gpu_,
               "the model step");
    check(cudaEventElapsedTime(&ms, r->start, r->layers.back()),
          "cudaEventElapsedTime", gpu_);
  }
  for (auto e : r->layers)
    cudaEventDestroy(e);
  cudaEventDestroy(r->start);
  cudaFreeHost(r->ids);
  return static_cast<std::int64_t>(ms * 1e6);
}

std::string gpu_model::verify(std::uint64_t request,
                              const std::vector<std::uint64_t>& blocks,
                              std::chrono::milliseconds limit) {
  if (blocks.empty())
    return {};
  on_device on(gpu_);
  auto s = static_cast<cudaStream_t>(stream_);
  const auto layers = static_cast<std::uint32_t>(cache_.layer_base.size());
  const std::uint64_t words = cache_.block_bytes / 8;
  // Pinned host memory: the ids the kernels read, and the first mismatch of
  // each layer, copied back from first_device_ (where the kernels' atomics
  // stay in GPU memory).
  std::uint64_t* ids = nullptr;
  unsigned long long* first = nullptr;
  check(cudaHostAlloc(reinterpret_cast<void**>(&ids), blocks.size() * 8,
                      cudaHostAllocMapped),
        "cudaHostAlloc", gpu_);
  std::unique_ptr<std::uint64_t, cudaError_t (*)(void*)> free_ids(ids,
                                                                  cudaFreeHost);
  check(cudaHostAlloc(reinterpret_cast<void**>(&first), layers * 8,
                      cudaHostAllocDefault),
        "cudaHostAlloc", gpu_);
  std::unique_ptr<unsigned long long, cudaError_t (*)(void*)> free_first(
      first, cudaFreeHost);
  std::copy(blocks.begin(), blocks.end(), ids);
  std::uint64_t* d_ids = nullptr;
  check(cudaHostGetDevicePointer(reinterpret_cast<void**>(&d_ids), ids, 0),
        "cudaHostGetDevicePointer", gpu_);
  auto* d_first = static_cast<unsigned long long*>(first_device_);
  check(cudaMemsetAsync(d_first, 0xFF, layers * 8, s), "cudaMemsetAsync",
        gpu_); // every entry no_mismatch
  for (std::uint32_t l = 0; l < layers; ++l)
    verify_kernel<<<grid_for(blocks.size()), threads, 0, s>>>(
        cache_.layer_base[l], cache_.kv_stride, cache_.block_stride, words,
        d_ids, blocks.size(), request, l, d_first + l);
  check(cudaGetLastError(), "the verifier's kernel launch", gpu_);
  check(cudaMemcpyAsync(first, d_first, layers * 8, cudaMemcpyDeviceToHost, s),
        "cudaMemcpyAsync", gpu_);
  cudaEvent_t done = nullptr;
  check(cudaEventCreateWithFlags(&done, cudaEventDisableTiming),
        "cudaEventCreate", gpu_);
  std::unique_ptr<CUevent_st, cudaError_t (*)(cudaEvent_t)> free_done(
      done, cudaEventDestroy);
  check(cudaEventRecord(done, s), "cudaEventRecord", gpu_);
  wait_event(done, limit, gpu_, "the verifier");
  for (std::uint32_t l = 0; l < layers; ++l) {
    if (first[l] == no_mismatch)
      continue;
    const std::uint64_t j = first[l] / words, k = first[l] % words;
    const int half = static_cast<int>(j % 2);
    const char* word = cache_.layer_base[l] + half * cache_.kv_stride +
                       blocks[j / 2] * cache_.block_stride + k * 8;
    std::uint64_t got = 0;
    check(cudaMemcpy(&got, word, 8, cudaMemcpyDeviceToHost), "cudaMemcpy",
          gpu_);
    return describe_mismatch(request, l, half, j / 2, blocks[j / 2], k, got);
  }
  return {};
}

} // namespace example
