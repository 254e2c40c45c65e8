#include "kvferry/transport/gpu_memory.hpp"

#include <cstdlib>
#include <new>
#include <utility>

#ifdef KVFERRY_HAVE_CUDA
#include <cstring>

#include <cuda.h> // types only: the driver is reached through the runtime
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

namespace {

// A driver API function, reached through the runtime (which has loaded the
// driver already): linking libcuda itself would make every binary need a
// driver at load time, also on machines without a GPU.
template<typename Fn>
Fn driver_function(const char* symbol) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found{};
  check_cuda(cudaGetDriverEntryPointByVersion(symbol, &fn, 12000,
                                              cudaEnableDefault, &found),
             std::string{"cudaGetDriverEntryPointByVersion("} + symbol + ")",
             -1);
  if (found != cudaDriverEntryPointSuccess || fn == nullptr)
    throw gpu_error(std::string{"the CUDA driver has no "} + symbol);
  return reinterpret_cast<Fn>(fn);
}

void check_driver(CUresult r, const std::string& call, int device) {
  if (r != CUDA_SUCCESS)
    throw gpu_error(call + " failed on GPU " + std::to_string(device) +
                    " (CUresult " + std::to_string(static_cast<int>(r)) + ")");
}

// What CUDA says about the allocation behind `p`.
struct pointer_facts {
  unsigned int memory_type = 0; // CUmemorytype
  int managed = 0;
  int legacy_ipc = 0; // cudaIpcGetMemHandle can share it
  int device = -1;
  CUdeviceptr base = 0;
  std::size_t size = 0;
};

pointer_facts facts_of(const void* p, int device) {
  using attributes_fn =
      CUresult (*)(unsigned, CUpointer_attribute*, void**, CUdeviceptr);
  using range_fn = CUresult (*)(CUdeviceptr*, std::size_t*, CUdeviceptr);
  static const auto attributes =
      driver_function<attributes_fn>("cuPointerGetAttributes");
  static const auto range = driver_function<range_fn>("cuMemGetAddressRange");
  pointer_facts f;
  CUpointer_attribute which[] = {
      CU_POINTER_ATTRIBUTE_MEMORY_TYPE, CU_POINTER_ATTRIBUTE_IS_MANAGED,
      CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE,
      CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL};
  void* out[] = {&f.memory_type, &f.managed, &f.legacy_ipc, &f.device};
  const auto ptr = reinterpret_cast<CUdeviceptr>(p);
  check_driver(attributes(4, which, out, ptr), "cuPointerGetAttributes",
               device);
  if (f.memory_type == CU_MEMORYTYPE_DEVICE && !f.managed && f.legacy_ipc)
    check_driver(range(&f.base, &f.size, ptr), "cuMemGetAddressRange", device);
  return f;
}

} // namespace

ipc_region export_ipc_region(const memory_view& view) {
  const int gpu = view.device;
  if (view.kind != memory_kind::cuda)
    throw gpu_error("host memory cannot be shared over CUDA IPC");
  check_cuda(cudaSetDevice(gpu), "cudaSetDevice", gpu);
  const auto f = facts_of(view.base, gpu);
  if (f.managed) // first: its memory type may read device or unified
    throw gpu_error("managed memory (cudaMallocManaged) cannot be shared "
                    "over CUDA IPC");
  if (f.memory_type == CU_MEMORYTYPE_HOST)
    throw gpu_error("the memory is host memory to CUDA (pinned or "
                    "registered), which CUDA IPC cannot share");
  if (f.memory_type != CU_MEMORYTYPE_DEVICE)
    throw gpu_error("the memory is not device memory to CUDA (memory type " +
                    std::to_string(f.memory_type) +
                    "), which CUDA IPC cannot share");
  if (!f.legacy_ipc)
    throw gpu_error("the allocation was not made by cudaMalloc (cuMemCreate "
                    "/ virtual memory management, e.g. PyTorch's expandable "
                    "segments, or a stream-ordered pool): legacy CUDA IPC "
                    "cannot share it");
  if (f.device != gpu)
    throw gpu_error("the memory is on GPU " + std::to_string(f.device) +
                    ", not on GPU " + std::to_string(gpu) +
                    " as its region says");
  const auto start = reinterpret_cast<CUdeviceptr>(view.base);
  ipc_region out;
  out.allocation = f.base;
  out.offset = start - f.base;
  out.bytes = view.bytes;
  if (out.offset > f.size || view.bytes > f.size - out.offset)
    throw gpu_error("the region of " + std::to_string(view.bytes) +
                    " bytes at offset " + std::to_string(out.offset) +
                    " leaves its allocation of " + std::to_string(f.size) +
                    " bytes");
  cudaIpcMemHandle_t raw{};
  check_cuda(cudaIpcGetMemHandle(&raw, reinterpret_cast<void*>(f.base)),
             "cudaIpcGetMemHandle", gpu);
  std::memcpy(out.handle.bytes.data(), &raw, sizeof(raw));
  out.handle.region_bytes = f.size;
  out.handle.device = gpu;
  return out;
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
ipc_region export_ipc_region(const memory_view& view) {
  if (view.kind != memory_kind::cuda) // the same answer as with CUDA
    throw gpu_error("host memory cannot be shared over CUDA IPC");
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

// ---- the text form of an exported region table
// "<handle text>[@<offset>+<bytes>],<handle text>[...],..."

std::string ipc_table_to_text(const std::vector<ipc_region>& table) {
  std::string out;
  for (const auto& r : table) {
    if (!out.empty())
      out += ',';
    out += r.handle.to_hex();
    if (r.offset != 0 || r.bytes != r.handle.region_bytes)
      out += '@' + std::to_string(r.offset) + '+' + std::to_string(r.bytes);
  }
  return out;
}

namespace {

std::uint64_t number_in(const std::string& text, std::size_t entry,
                        const char* what) {
  std::size_t used = 0;
  std::uint64_t n = 0;
  try {
    n = std::stoull(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || text[0] == '-')
    throw std::invalid_argument("IPC table entry " + std::to_string(entry) +
                                ": " + what + " '" + text +
                                "' is not a number");
  return n;
}

ipc_region region_from_text(const std::string& text, std::size_t entry) {
  ipc_region r;
  const auto at = text.find('@');
  try {
    r.handle = ipc_handle::from_hex(text.substr(0, at));
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument("IPC table entry " + std::to_string(entry) +
                                ": " + e.what());
  }
  r.bytes = r.handle.region_bytes;
  if (at != std::string::npos) {
    const auto plus = text.find('+', at);
    if (plus == std::string::npos)
      throw std::invalid_argument("IPC table entry " + std::to_string(entry) +
                                  ": expected @<offset>+<bytes> after the "
                                  "handle");
    r.offset = number_in(text.substr(at + 1, plus - at - 1), entry, "offset");
    r.bytes = number_in(text.substr(plus + 1), entry, "size");
  }
  if (r.offset > r.handle.region_bytes ||
      r.bytes > r.handle.region_bytes - r.offset)
    throw std::invalid_argument(
        "IPC table entry " + std::to_string(entry) + ": a region of " +
        std::to_string(r.bytes) + " bytes at offset " +
        std::to_string(r.offset) + " leaves its allocation of " +
        std::to_string(r.handle.region_bytes) + " bytes");
  return r;
}

} // namespace

std::vector<ipc_region> ipc_table_from_text(const std::string& text) {
  std::vector<ipc_region> table;
  std::size_t start = 0;
  while (start <= text.size()) {
    auto end = text.find(',', start);
    if (end == std::string::npos)
      end = text.size();
    table.push_back(
        region_from_text(text.substr(start, end - start), table.size()));
    start = end + 1;
  }
  return table;
}

} // namespace kvferry::transport
