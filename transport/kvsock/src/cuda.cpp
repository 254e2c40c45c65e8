#include "cuda.hpp"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "log.hpp"

#ifdef KVFERRY_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvsock::cuda {
namespace {
std::atomic<bool> g_available{false};
}

bool available() {
  return g_available.load();
}

#ifdef KVFERRY_HAVE_CUDA

namespace {
// One non-blocking stream per thread and device: copies of different data
// sockets overlap, and the legacy default stream never serialises them.
cudaStream_t thread_stream(int device) {
  thread_local cudaStream_t streams[64] = {};
  if (device < 0 || device >= 64)
    return nullptr;
  if (streams[device] == nullptr) {
    cudaSetDevice(device);
    cudaStreamCreateWithFlags(&streams[device], cudaStreamNonBlocking);
  }
  return streams[device];
}

bool check(cudaError_t err, const char* what) {
  if (err == cudaSuccess)
    return true;
  KVSOCK_WARN("CUDA call %s failed: %s", what, cudaGetErrorString(err));
  return false;
}
} // namespace

bool probe() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  bool ok = err == cudaSuccess && count > 0;
  if (!ok) {
    KVSOCK_INFO("no usable CUDA device (%s): host memory only",
                err == cudaSuccess ? "count 0" : cudaGetErrorString(err));
    cudaGetLastError(); // clear the sticky-free error so later calls are not
                        // confused
  }
  g_available.store(ok);
  return ok;
}

int device_of(const void* ptr) {
  if (!available() || ptr == nullptr)
    return -1;
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, ptr) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return attributes.type == cudaMemoryTypeDevice ? attributes.device : -1;
}

void* alloc_pinned(size_t bytes, bool mapped) {
  if (!available())
    return std::aligned_alloc(4096, (bytes + 4095) & ~size_t{4095});
  void* ptr = nullptr;
  unsigned flags = cudaHostAllocPortable | (mapped ? cudaHostAllocMapped : 0);
  if (!check(cudaHostAlloc(&ptr, bytes, flags), "cudaHostAlloc"))
    return nullptr;
  return ptr;
}

void free_pinned(void* ptr) {
  if (ptr == nullptr)
    return;
  if (!available()) {
    std::free(ptr);
    return;
  }
  check(cudaFreeHost(ptr), "cudaFreeHost");
}

void* device_pointer(void* host_ptr) {
  if (!available())
    return host_ptr;
  void* device_ptr = nullptr;
  if (!check(cudaHostGetDevicePointer(&device_ptr, host_ptr, 0),
             "cudaHostGetDevicePointer")) {
    return nullptr;
  }
  return device_ptr;
}

bool copy_to_host(void* dst, const void* src_device, size_t bytes, int device) {
  cudaStream_t stream = thread_stream(device);
  return check(cudaMemcpyAsync(dst, src_device, bytes, cudaMemcpyDeviceToHost,
                               stream),
               "cudaMemcpyAsync(D2H)") &&
         check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
}

bool copy_to_device(void* dst_device, const void* src, size_t bytes,
                    int device) {
  cudaStream_t stream = thread_stream(device);
  return check(cudaMemcpyAsync(dst_device, src, bytes, cudaMemcpyHostToDevice,
                               stream),
               "cudaMemcpyAsync(H2D)") &&
         check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
}

#else // no CUDA: host memory only

bool probe() {
  g_available.store(false);
  return false;
}
int device_of(const void*) {
  return -1;
}
void* alloc_pinned(size_t bytes, bool) {
  return std::aligned_alloc(4096, (bytes + 4095) & ~size_t{4095});
}
void free_pinned(void* ptr) {
  std::free(ptr);
}
void* device_pointer(void* host_ptr) {
  return host_ptr;
}
bool copy_to_host(void*, const void*, size_t, int) {
  return false;
}
bool copy_to_device(void*, const void*, size_t, int) {
  return false;
}

#endif

} // namespace kvsock::cuda
