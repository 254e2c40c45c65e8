#include "kvferry/transport/gpu_memory.hpp"

#include <cstdlib>
#include <new>
#include <utility>

#ifdef KVFERRY_HAVE_CUDA
#include <cstring>

#include <cuda_runtime_api.h>

#include "cuda_check.hpp"
#endif

namespace kvferry::transport {

void throw_no_cuda(const char* what) {
  throw gpu_error(std::string{what} +
                  ": this build of kvferry has no CUDA support");
}

// ---- gpu_region

gpu_region::~gpu_region() {
  release();
}

gpu_region::gpu_region(gpu_region&& other) noexcept
    : region_(std::exchange(other.region_, memory_view{})) {
}

gpu_region& gpu_region::operator=(gpu_region&& other) noexcept {
  if (this != &other) {
    release();
    region_ = std::exchange(other.region_, memory_view{});
  }
  return *this;
}

void gpu_region::release() noexcept {
  if (region_.base == nullptr)
    return;
  if (region_.kind == memory_kind::host && !region_.pinned) {
    std::free(region_.base);
  } else {
#ifdef KVFERRY_HAVE_CUDA
    // Errors at teardown cannot be acted upon; the process keeps going.
    if (region_.kind == memory_kind::cuda) {
      cudaSetDevice(region_.device);
      cudaFree(region_.base);
    } else {
      cudaFreeHost(region_.base);
    }
#endif
  }
  region_ = memory_view{};
}

gpu_region gpu_region::allocate_host(std::size_t bytes) {
  constexpr std::size_t page = 4096;
  const std::size_t rounded = (bytes + page - 1) / page * page;
  void* p = std::aligned_alloc(page, rounded == 0 ? page : rounded);
  if (p == nullptr)
    throw std::bad_alloc();
  gpu_region r;
  r.region_ = memory_view{memory_kind::host, -1, static_cast<std::byte*>(p),
                          bytes, false};
  return r;
}

#ifdef KVFERRY_HAVE_CUDA

gpu_region gpu_region::allocate_device(int gpu, std::size_t bytes) {
  check_cuda(cudaSetDevice(gpu), "cudaSetDevice", gpu);
  void* p = nullptr;
  check_cuda(cudaMalloc(&p, bytes),
             "cudaMalloc of " + std::to_string(bytes) + " bytes", gpu);
  gpu_region r;
  r.region_ = memory_view{memory_kind::cuda, gpu, static_cast<std::byte*>(p),
                          bytes, false};
  return r;
}

gpu_region gpu_region::allocate_pinned_host(std::size_t bytes) {
  void* p = nullptr;
  check_cuda(
      cudaHostAlloc(&p, bytes, cudaHostAllocPortable | cudaHostAllocMapped),
      "cudaHostAlloc of " + std::to_string(bytes) + " bytes", -1);
  gpu_region r;
  r.region_ = memory_view{memory_kind::host, -1, static_cast<std::byte*>(p),
                          bytes, true};
  return r;
}

ipc_handle export_ipc_handle(const gpu_region& region) {
  if (region.kind() != memory_kind::cuda)
    throw gpu_error(
        "export_ipc_handle: only device regions can be exported over CUDA IPC");
  check_cuda(cudaSetDevice(region.device()), "cudaSetDevice", region.device());
  cudaIpcMemHandle_t raw{};
  check_cuda(cudaIpcGetMemHandle(&raw, region.data()), "cudaIpcGetMemHandle",
             region.device());
  ipc_handle handle;
  static_assert(sizeof(raw) == sizeof(handle.bytes));
  std::memcpy(handle.bytes.data(), &raw, sizeof(raw));
  handle.region_bytes = region.size();
  handle.device = region.device();
  return handle;
}

memory_view ipc_region_cache::open(const ipc_handle& handle) {
  std::lock_guard lock{mutex_};
  if (auto it = opened_.find(handle); it != opened_.end())
    return it->second;
  check_cuda(cudaSetDevice(local_gpu_), "cudaSetDevice", local_gpu_);
  cudaIpcMemHandle_t raw{};
  std::memcpy(&raw, handle.bytes.data(), sizeof(raw));
  void* p = nullptr;
  check_cuda(cudaIpcOpenMemHandle(&p, raw, cudaIpcMemLazyEnablePeerAccess),
             "cudaIpcOpenMemHandle (peer region of " +
                 std::to_string(handle.region_bytes) + " bytes on device " +
                 std::to_string(handle.device) + ")",
             local_gpu_);
  memory_view region{memory_kind::cuda, handle.device,
                     static_cast<std::byte*>(p),
                     static_cast<std::size_t>(handle.region_bytes), false};
  opened_.emplace(handle, region);
  return region;
}

void ipc_region_cache::close(const ipc_handle& handle) {
  std::lock_guard lock{mutex_};
  auto it = opened_.find(handle);
  if (it == opened_.end())
    return;
  cudaSetDevice(local_gpu_);
  cudaIpcCloseMemHandle(it->second.base);
  opened_.erase(it);
}

ipc_region_cache::~ipc_region_cache() {
  for (auto& [handle, region] : opened_) {
    cudaSetDevice(local_gpu_);
    cudaIpcCloseMemHandle(region.base);
  }
}

#else // no CUDA

gpu_region gpu_region::allocate_device(int, std::size_t) {
  throw_no_cuda("cudaMalloc");
}
gpu_region gpu_region::allocate_pinned_host(std::size_t) {
  throw_no_cuda("cudaHostAlloc");
}
ipc_handle export_ipc_handle(const gpu_region&) {
  throw_no_cuda("cudaIpcGetMemHandle");
}
memory_view ipc_region_cache::open(const ipc_handle&) {
  throw_no_cuda("cudaIpcOpenMemHandle");
}
void ipc_region_cache::close(const ipc_handle&) {
}
ipc_region_cache::~ipc_region_cache() = default;

#endif

ipc_region_cache::ipc_region_cache(int local_gpu) : local_gpu_(local_gpu) {
}

std::size_t ipc_region_cache::open_count() const {
  std::lock_guard lock{mutex_};
  return opened_.size();
}

// ---- ipc_handle text form
// "<device>:<region bytes>:<128 hex digits>"

std::string ipc_handle::to_hex() const {
  static const char digits[] = "0123456789abcdef";
  std::string out =
      std::to_string(device) + ":" + std::to_string(region_bytes) + ":";
  for (auto b : bytes) {
    out.push_back(digits[b >> 4]);
    out.push_back(digits[b & 15]);
  }
  return out;
}

ipc_handle ipc_handle::from_hex(const std::string& text) {
  const auto first = text.find(':');
  const auto second =
      first == std::string::npos ? first : text.find(':', first + 1);
  if (second == std::string::npos)
    throw std::invalid_argument("IPC handle '" + text.substr(0, 40) +
                                "': expected <device>:<bytes>:<hex>");
  ipc_handle h;
  try {
    h.device = std::stoi(text.substr(0, first));
    h.region_bytes = std::stoull(text.substr(first + 1, second - first - 1));
  } catch (const std::exception&) {
    throw std::invalid_argument(
        "IPC handle: device or size is not a number in '" +
        text.substr(0, second) + "'");
  }
  const std::string hex = text.substr(second + 1);
  if (hex.size() != 2 * h.bytes.size())
    throw std::invalid_argument(
        "IPC handle: expected " + std::to_string(2 * h.bytes.size()) +
        " hex digits, got " + std::to_string(hex.size()));
  auto nibble = [&](char c) -> unsigned {
    if (c >= '0' && c <= '9')
      return static_cast<unsigned>(c - '0');
    if (c >= 'a' && c <= 'f')
      return static_cast<unsigned>(c - 'a' + 10);
    if (c >= 'A' && c <= 'F')
      return static_cast<unsigned>(c - 'A' + 10);
    throw std::invalid_argument(std::string{"IPC handle: '"} + c +
                                "' is not a hex digit");
  };
  for (std::size_t i = 0; i < h.bytes.size(); ++i)
    h.bytes[i] = static_cast<std::uint8_t>(nibble(hex[2 * i]) << 4 |
                                           nibble(hex[2 * i + 1]));
  return h;
}

} // namespace kvferry::transport
