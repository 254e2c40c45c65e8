// The stack's GPU side: device memory for the cache, and the model step and
// verifier as small kernels on the model's stream. Built from gpu_model.cu
// where kvferry was built with CUDA, else from gpu_none.cpp (no device:
// gpu_count() is 0 and the rest throws).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace example {

/// CUDA devices this process sees (0 without CUDA or a driver).
int gpu_count();
/// cudaMalloc on `gpu` (nullptr when it fails); gpu_free releases it.
void* gpu_alloc(int gpu, std::size_t bytes);
void gpu_free(int gpu, void* p) noexcept;

/// Where a cache's blocks are, as the kernels see it (no kv_layout here:
/// this header is compiled by nvcc): K of block b of layer l at
/// layer_base[l] + b * block_stride, its V kv_stride further.
struct gpu_cache_view {
  std::vector<char*> layer_base;
  std::uint64_t kv_stride = 0, block_stride = 0, block_bytes = 0;
};

/// The model's stream on one GPU. Each request's block ids live in pinned
/// host memory the kernels read, until end(). Errors throw
/// std::runtime_error naming the CUDA call and the device.
class gpu_model {
public:
  gpu_model(int gpu, gpu_cache_view cache);
  ~gpu_model();
  gpu_model(const gpu_model&) = delete;
  gpu_model& operator=(const gpu_model&) = delete;

  /// Starts a request: its blocks, in request order.
  void begin(std::uint64_t request, const std::vector<std::uint64_t>& blocks);
  /// Queues the write of one layer; returns the cudaEvent_t recorded after
  /// it (valid until end(request)), for kvferry's layer_ready.
  void* write_layer(std::uint64_t request, std::uint32_t layer);
  /// The request's GPU time (its first write to its last), in ns; frees
  /// its events and block list. Call once its writes have been consumed
  /// (the transfer waited for them).
  std::int64_t end(std::uint64_t request);
  /// Checks every byte of every layer of the request on the GPU; "" when
  /// all match, else the first mismatch (describe_mismatch's wording). Waits at
  /// most `limit` (then throws).
  std::string verify(std::uint64_t request,
                     const std::vector<std::uint64_t>& blocks,
                     std::chrono::milliseconds limit);

private:
  struct request_state;
  int gpu_;
  gpu_cache_view cache_;
  void* stream_ = nullptr;
  void* first_device_ = nullptr; // the verifier's result, one word a layer
  std::map<std::uint64_t, request_state*> open_;
};

} // namespace example
