// The CUDA staging copier: cudaMemcpyAsync between the caller's device memory
// and the channel's pinned bounce slots on one non-blocking stream, one event
// per slot (polled, never waited on, while the channel runs).
#include "kvferry/transport/gpu_memory.hpp"
#include "kvferry/transport/staging.hpp"

#ifdef KVFERRY_HAVE_CUDA
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "cuda_check.hpp"
#endif

namespace kvferry::transport {

#ifdef KVFERRY_HAVE_CUDA
namespace {

// Restores the thread's current device: the transfer actor's thread is
// shared with other actors that rely on their own current device.
class current_device_guard {
public:
  explicit current_device_guard(int device) {
    check_cuda(cudaGetDevice(&previous_), "cudaGetDevice", -1);
    if (previous_ != device)
      check_cuda(cudaSetDevice(device), "cudaSetDevice", device);
  }
  ~current_device_guard() { cudaSetDevice(previous_); }
  current_device_guard(const current_device_guard&) = delete;
  current_device_guard& operator=(const current_device_guard&) = delete;

private:
  int previous_ = 0;
};

int device_of(const void* memory) {
  cudaPointerAttributes attributes{};
  check_cuda(cudaPointerGetAttributes(&attributes, memory),
             "cudaPointerGetAttributes", -1);
  if (attributes.type != cudaMemoryTypeDevice &&
      attributes.type != cudaMemoryTypeManaged)
    throw gpu_error(
        "staging: the region registered as CUDA memory is not device memory "
        "(cudaPointerGetAttributes)");
  return attributes.device;
}

class cuda_staging_copier final : public staging_copier {
public:
  ~cuda_staging_copier() override {
    wait_all();
    for (auto event : events_)
      cudaEventDestroy(event);
    if (stream_)
      cudaStreamDestroy(stream_);
  }

  void open(int slots, const void* device_memory) override {
    device_ = device_of(device_memory);
    current_device_guard on(device_);
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
               "cudaStreamCreateWithFlags", device_);
    events_.assign(static_cast<size_t>(slots), nullptr);
    for (auto& event : events_)
      check_cuda(cudaEventCreateWithFlags(&event, cudaEventDisableTiming),
                 "cudaEventCreateWithFlags", device_);
  }

  void* allocate_host(size_t bytes) override {
    void* memory = nullptr;
    // Portable: pinned for every GPU, whichever one a later region lives on.
    check_cuda(cudaHostAlloc(&memory, bytes, cudaHostAllocPortable),
               "cudaHostAlloc(" + std::to_string(bytes) + " bytes)", -1);
    return memory;
  }
  void free_host(void* memory) noexcept override { cudaFreeHost(memory); }

  // A copy issued to a stream of another device than the current one is
  // legal (unlike a kernel launch), so no device switch per copy.
  void start(int slot, void* destination, const void* source,
             size_t bytes) override {
    check_cuda(
        cudaMemcpyAsync(destination, source, bytes, cudaMemcpyDefault, stream_),
        "cudaMemcpyAsync(" + std::to_string(bytes) + " bytes)", device_);
    check_cuda(cudaEventRecord(events_[static_cast<size_t>(slot)], stream_),
               "cudaEventRecord", device_);
  }

  bool done(int slot) override {
    auto status = cudaEventQuery(events_[static_cast<size_t>(slot)]);
    if (status == cudaErrorNotReady)
      return false;
    check_cuda(status, "cudaEventQuery (staged copy)", device_);
    return true;
  }

  void wait_all() noexcept override {
    if (stream_)
      cudaStreamSynchronize(stream_);
  }

private:
  int device_ = -1;
  cudaStream_t stream_ = nullptr;
  std::vector<cudaEvent_t> events_;
};

} // namespace

std::unique_ptr<staging_copier> make_cuda_staging_copier() {
  return std::make_unique<cuda_staging_copier>();
}
#else
std::unique_ptr<staging_copier> make_cuda_staging_copier() {
  throw_no_cuda("staging CUDA memory through pinned buffers");
}
#endif

} // namespace kvferry::transport
