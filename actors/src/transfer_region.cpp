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
  transport::gpu_region memory;
  try {
    memory = transport::gpu_region::allocate_host(bytes);
  } catch (const std::bad_alloc&) {
    throw std::runtime_error(fmt::format(
        "memory region '{}': cannot allocate {} bytes of host memory", name,
        bytes));
  }
  std::memset(memory.data(), 0, bytes); // every page touched once, here
  return std::shared_ptr<memory_region>(
      new memory_region(std::move(memory), std::move(name)));
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
  return std::shared_ptr<memory_region>(
      new memory_region(std::move(device), std::move(name)));
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

std::shared_ptr<memory_region> memory_region::wrap(void* data,
                                                   std::uint64_t bytes,
                                                   memory_kind kind, int gpu,
                                                   std::string name) {
  if (data == nullptr || bytes == 0)
    throw std::invalid_argument(
        fmt::format("memory region '{}': wrapping {} bytes at {} (need a "
                    "non-null pointer and a positive size)",
                    name, bytes, data));
  if ((kind == memory_kind::cuda) != (gpu >= 0))
    throw std::invalid_argument(fmt::format(
        "memory region '{}': {} memory with gpu {} (cuda memory needs its "
        "device ordinal, host memory -1)",
        name, to_string(kind), gpu));
  transport::memory_view view;
  view.kind = kind;
  view.device = gpu;
  view.base = static_cast<std::byte*>(data);
  view.bytes = bytes;
  return std::shared_ptr<memory_region>(
      new memory_region(view, std::move(name)));
}

memory_region::memory_region(transport::gpu_region memory, std::string name)
    : memory_(std::move(memory)), view_(memory_.view()),
      name_(std::move(name)) {
}

memory_region::memory_region(const transport::memory_view& view,
                             std::string name)
    : view_(view), name_(std::move(name)) {
}

std::shared_ptr<memory_region> memory_region::model_only(std::uint64_t bytes,
                                                         std::string name) {
  transport::memory_view view;
  view.bytes = bytes; // no base: nothing may touch it
  auto region =
      std::shared_ptr<memory_region>(new memory_region(view, std::move(name)));
  region->model_only_ = true;
  return region;
}

int memory_region::nccl_ptr_type() const {
  return kind() == memory_kind::cuda ? NCCL_PTR_CUDA : NCCL_PTR_HOST;
}

} // namespace kvferry
