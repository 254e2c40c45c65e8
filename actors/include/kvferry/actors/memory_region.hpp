// A block of memory the transfer actor registers with the plugin and the
// producer/consumer fill or verify. The memory kind (host or CUDA) is decided
// here and only read elsewhere, so a GPU path plugs in behind this interface:
// a cuda region would allocate with cudaMalloc, report NCCL_PTR_CUDA, and
// make host-side access (fill/verify) go through a staging copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "kvferry/runtime/directory_types.hpp"

namespace kvferry {

class memory_region {
 public:
  /// Page-aligned host memory, touched once so that no transfer pays for
  /// page faults. Throws std::bad_alloc with the size in the message.
  static std::shared_ptr<memory_region> allocate_host(std::uint64_t bytes,
                                                      std::string name);

  ~memory_region();
  memory_region(const memory_region&) = delete;
  memory_region& operator=(const memory_region&) = delete;

  memory_kind kind() const { return kind_; }
  std::uint8_t* data() const { return data_; }
  std::uint64_t size() const { return size_; }
  const std::string& name() const { return name_; }
  /// NCCL_PTR_HOST or NCCL_PTR_CUDA: what regMr needs.
  int nccl_ptr_type() const;
  /// True when the CPU may read and write data() directly.
  bool host_accessible() const { return kind_ == memory_kind::host; }

 private:
  memory_region(memory_kind kind, std::uint8_t* data, std::uint64_t size,
                std::string name);
  memory_kind kind_;
  std::uint8_t* data_;
  std::uint64_t size_;
  std::string name_;
};

}  // namespace kvferry
