// A block of memory the transfer actor registers with the plugin and the
// producer/consumer fill or verify: a named transport::gpu_region. The memory
// kind (host or CUDA) is decided here and only read elsewhere: a cuda region
// holds one cudaMalloc'd allocation, reports NCCL_PTR_CUDA, and is filled and
// verified on the GPU (kv_pattern.hpp), never through data() on the CPU.
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
  /// Page-aligned zeroed host memory, touched once so that no transfer pays
  /// for page faults. Throws std::runtime_error naming the region and the
  /// size when there is not enough memory.
  static std::shared_ptr<memory_region> allocate_host(std::uint64_t bytes,
                                                      std::string name);
  /// Zeroed device memory on CUDA device `gpu` (one cudaMalloc). Throws
  /// transport::gpu_error naming the ordinal and how many GPUs exist when
  /// `gpu` is not one of them, and the CUDA error otherwise; in a build
  /// without CUDA it throws saying so.
  static std::shared_ptr<memory_region>
  allocate_cuda(int gpu, std::uint64_t bytes, std::string name);
  /// The caller's memory, registered in place (an embedding stack's own KV
  /// cache): nothing is allocated, copied or freed; the caller keeps
  /// [data, data + bytes) alive while any transfer actor holds the region.
  /// `gpu` is the CUDA device of cuda memory (-1 for host memory). Throws
  /// std::invalid_argument naming the region on a null pointer, zero bytes,
  /// or a kind and gpu that disagree. A wrapped cuda region is exported
  /// over CUDA IPC when CUDA can share its allocation (cudaMalloc'd memory,
  /// also inside a larger allocation; not cuMemCreate/VMM or managed
  /// memory): docs/gpu.md, "Region tables over CUDA IPC".
  static std::shared_ptr<memory_region> wrap(void* data, std::uint64_t bytes,
                                             memory_kind kind, int gpu,
                                             std::string name);

  memory_region(const memory_region&) = delete;
  memory_region& operator=(const memory_region&) = delete;

  memory_kind kind() const { return view_.kind; }
  /// Host address (host regions) or device address (cuda regions).
  std::uint8_t* data() const {
    return reinterpret_cast<std::uint8_t*>(view_.base);
  }
  std::uint64_t size() const { return view_.bytes; }
  const std::string& name() const { return name_; }
  /// CUDA device ordinal of a cuda region, -1 for host memory.
  int gpu() const { return view_.device; }
  /// False for wrap()ped memory (the caller owns it).
  bool owned() const { return static_cast<bool>(memory_); }
  /// NCCL_PTR_HOST or NCCL_PTR_CUDA: what regMr needs.
  int nccl_ptr_type() const;
  /// True when the CPU may read and write data() directly.
  bool host_accessible() const { return kind() == memory_kind::host; }
  /// The owning allocation (a cuda region's is what CUDA IPC exports);
  /// empty for wrap()ped memory.
  const transport::gpu_region& device_allocation() const { return memory_; }
  /// The transport's view of this region (what the copy engine takes).
  const transport::memory_view& view() const { return view_; }

private:
  memory_region(transport::gpu_region memory, std::string name);
  memory_region(const transport::memory_view& view, std::string name);
  transport::gpu_region memory_; // empty when wrapped
  transport::memory_view view_;
  std::string name_;
};

} // namespace kvferry
