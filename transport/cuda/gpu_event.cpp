#include "kvferry/transport/gpu_event.hpp"

#ifdef KVFERRY_HAVE_CUDA
#include <cstring>

#include <cuda_runtime_api.h>

#include "cuda_check.hpp"
#endif

namespace kvferry::transport {

#ifdef KVFERRY_HAVE_CUDA

namespace {

cudaEvent_t as_event(std::uint64_t event) {
  return reinterpret_cast<cudaEvent_t>(static_cast<std::uintptr_t>(event));
}

} // namespace

bool gpu_event_done(std::uint64_t event) {
  const auto err = cudaEventQuery(as_event(event));
  if (err == cudaErrorNotReady)
    return false;
  check_cuda(err, "cudaEventQuery (the event to wait for)", -1);
  return true;
}

std::string export_ipc_event(std::uint64_t event, int device) {
  cudaIpcEventHandle_t raw{};
  check_cuda(cudaIpcGetEventHandle(&raw, as_event(event)),
             "cudaIpcGetEventHandle (the event needs cudaEventInterprocess "
             "and cudaEventDisableTiming)",
             device);
  ipc_handle h;
  static_assert(sizeof(raw) == sizeof(h.bytes));
  std::memcpy(h.bytes.data(), &raw, sizeof(raw));
  h.device = device;
  return h.to_hex();
}

std::uint64_t ipc_event_cache::open(const std::string& text) {
  const auto h = ipc_handle::from_hex(text);
  std::lock_guard lock{mutex_};
  if (auto it = opened_.find(h); it != opened_.end())
    return it->second;
  cudaIpcEventHandle_t raw{};
  std::memcpy(&raw, h.bytes.data(), sizeof(raw));
  cudaEvent_t event = nullptr;
  check_cuda(cudaIpcOpenEventHandle(&event, raw),
             "cudaIpcOpenEventHandle (an event of another process)", h.device);
  const auto value =
      static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(event));
  opened_.emplace(h, value);
  return value;
}

ipc_event_cache::~ipc_event_cache() {
  for (auto& [handle, event] : opened_)
    cudaEventDestroy(as_event(event));
}

#else // no CUDA

bool gpu_event_done(std::uint64_t) {
  throw_no_cuda("cudaEventQuery");
}
std::string export_ipc_event(std::uint64_t, int) {
  throw_no_cuda("cudaIpcGetEventHandle");
}
std::uint64_t ipc_event_cache::open(const std::string&) {
  throw_no_cuda("cudaIpcOpenEventHandle");
}
ipc_event_cache::~ipc_event_cache() = default;

#endif

std::size_t ipc_event_cache::open_count() const {
  std::lock_guard lock{mutex_};
  return opened_.size();
}

} // namespace kvferry::transport
