#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

#include <fmt/format.h>

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

memory_region::memory_region(memory_kind kind, std::uint8_t* data,
                             std::uint64_t size, std::string name)
    : kind_(kind), data_(data), size_(size), name_(std::move(name)) {}

memory_region::~memory_region() {
  if (kind_ == memory_kind::host)
    std::free(data_);
}

int memory_region::nccl_ptr_type() const {
  return kind_ == memory_kind::cuda ? NCCL_PTR_CUDA : NCCL_PTR_HOST;
}

}  // namespace kvferry
