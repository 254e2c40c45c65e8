// A block of memory the transfer actor registers with the plugin and the
// producer/consumer fill or verify. The memory kind (host or CUDA) is decided
// here and only read elsewhere: a cuda region holds one cudaMalloc'd
// allocation, reports NCCL_PTR_CUDA, and is filled and verified on the GPU
// (kv_pattern.hpp), never through data() on the CPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "kvferry/runtime/directory_types.hpp"
#include "kvferry/transport/gpu_memory.hpp"

namespace kvferry {

class memory_region {
public:
  /// Page-aligned host memory, touched once so that no transfer pays for
  /// page faults. Throws std::bad_alloc with the size in the message.
  static std::shared_ptr<memory_region> allocate_host(std::uint64_t bytes,
                                                      std::string name);
  /// Zeroed device memory on CUDA device `gpu` (one cudaMalloc). Throws
  /// transport::gpu_error naming the ordinal and how many GPUs exist when
  /// `gpu` is not one of them, and the CUDA error otherwise; in a build
  /// without CUDA it throws saying so.
  static std::shared_ptr<memory_region>
  allocate_cuda(int gpu, std::uint64_t bytes, std::string name);

  ~memory_region();
  memory_region(const memory_region&) = delete;
  memory_region& operator=(const memory_region&) = delete;

  memory_kind kind() const { return kind_; }
  /// Host address (host regions) or device address (cuda regions).
  std::uint8_t* data() const { return data_; }
  std::uint64_t size() const { return size_; }
  const std::string& name() const { return name_; }
  /// CUDA device ordinal of a cuda region, -1 for host memory.
  int gpu() const { return kind_ == memory_kind::cuda ? device_.device() : -1; }
  /// NCCL_PTR_HOST or NCCL_PTR_CUDA: what regMr needs.
  int nccl_ptr_type() const;
  /// True when the CPU may read and write data() directly.
  bool host_accessible() const { return kind_ == memory_kind::host; }
  /// The owning device allocation of a cuda region (for CUDA IPC export);
  /// an empty gpu_region for host memory.
  const transport::gpu_region& device_allocation() const { return device_; }
  /// The transport's view of this region (what the copy engine takes).
  transport::memory_region view() const;

private:
  memory_region(memory_kind kind, std::uint8_t* data, std::uint64_t size,
                std::string name);
  memory_kind kind_;
  std::uint8_t* data_;
  std::uint64_t size_;
  std::string name_;
  transport::gpu_region device_; // owns data_ for cuda regions
};

} // namespace kvferry
