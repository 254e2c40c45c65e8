#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

#include <fmt/format.h>

#ifdef KVFERRY_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#include "kvferry/actors/memory_region.hpp"
#include "kvferry/transport/net_v7.h"

namespace kvferry {

std::shared_ptr<memory_region> memory_region::allocate_host(std::uint64_t bytes,
                                                            std::string name) {
  constexpr std::uint64_t page = 4096;
  auto rounded = (bytes + page - 1) / page * page;
  if (rounded == 0)
    rounded = page;
  auto* data = static_cast<std::uint8_t*>(std::aligned_alloc(page, rounded));
  if (data == nullptr)
    throw std::runtime_error(fmt::format(
        "memory region '{}': cannot allocate {} bytes of host memory", name,
        rounded));
  std::memset(data, 0, rounded);
  return std::shared_ptr<memory_region>(
      new memory_region(memory_kind::host, data, bytes, std::move(name)));
}

#ifdef KVFERRY_HAVE_CUDA

namespace {

// Refuses an ordinal CUDA does not have before cudaSetDevice does, so the
// message can say how many there are.
void require_gpu(int gpu, const std::string& name) {
  int count = 0;
  auto err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess)
    throw transport::gpu_error(
        fmt::format("memory region '{}': GPU {} requested, but CUDA finds no "
                    "usable GPU: {}",
                    name, gpu, cudaGetErrorString(err)));
  if (gpu < 0 || gpu >= count)
    throw transport::gpu_error(fmt::format(
        "memory region '{}': GPU {} requested, but this machine has {} GPU{} "
        "(ordinals 0..{})",
        name, gpu, count, count == 1 ? "" : "s", count - 1));
}

} // namespace

std::shared_ptr<memory_region>
memory_region::allocate_cuda(int gpu, std::uint64_t bytes, std::string name) {
  require_gpu(gpu, name);
  auto device = transport::gpu_region::allocate_device(gpu, bytes);
  // Zeroed like host regions: a transfer that never lands reads as zeros,
  // never as a previous process's bytes.
  auto err = cudaMemset(device.data(), 0, bytes);
  if (err == cudaSuccess)
    err = cudaDeviceSynchronize();
  if (err != cudaSuccess)
    throw transport::gpu_error(
        fmt::format("memory region '{}': zeroing {} bytes on GPU {}: {}", name,
                    bytes, gpu, cudaGetErrorString(err)));
  auto* data = reinterpret_cast<std::uint8_t*>(device.data());
  std::shared_ptr<memory_region> region(
      new memory_region(memory_kind::cuda, data, bytes, std::move(name)));
  region->device_ = std::move(device);
  return region;
}

#else

std::shared_ptr<memory_region>
memory_region::allocate_cuda(int gpu, std::uint64_t, std::string name) {
  throw transport::gpu_error(fmt::format(
      "memory region '{}': GPU {} requested, but this build of kvferry has no "
      "CUDA support (rebuild with nvcc available or -DKVFERRY_CUDA=ON)",
      name, gpu));
}

#endif

memory_region::memory_region(memory_kind kind, std::uint8_t* data,
                             std::uint64_t size, std::string name)
    : kind_(kind), data_(data), size_(size), name_(std::move(name)) {
}

memory_region::~memory_region() {
  if (kind_ == memory_kind::host)
    std::free(data_);
  // A cuda region's memory goes with device_ (cudaFree).
}

int memory_region::nccl_ptr_type() const {
  return kind_ == memory_kind::cuda ? NCCL_PTR_CUDA : NCCL_PTR_HOST;
}

transport::memory_region memory_region::view() const {
  transport::memory_region v;
  v.kind = kind_ == memory_kind::cuda ? transport::memory_kind::cuda
                                      : transport::memory_kind::host;
  v.device = gpu();
  v.base = reinterpret_cast<std::byte*>(data_);
  v.bytes = size_;
  return v;
}

} // namespace kvferry
