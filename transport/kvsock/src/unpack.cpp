// UNPACK mode: the receive path of GPUDirect-TCPX, emulated over TCP. Bytes
// land in bounce pages; the receiver's kernel gathers them using the records.
#include <cstring>

#include "comm.hpp"
#include "cuda.hpp"
#include "log.hpp"

namespace kvsock {

UnpackState::~UnpackState() {
  cuda::free_pinned(meta);
  cuda::free_pinned(bounce);
  cuda::free_pinned(handle);
}

// With CUDA all three live in mapped pinned host memory so that a kernel can
// read them; the handle gives device addresses. Without CUDA, host memory.
bool UnpackState::allocate() {
  constexpr size_t kBounceBytes = kUnpackSlots * kUnpackMaxRecvBytes; // 64 MiB
  meta = static_cast<ncclNetUnpackMeta*>(
      cuda::alloc_pinned(sizeof(ncclNetUnpackMeta), true));
  bounce = static_cast<char*>(cuda::alloc_pinned(kBounceBytes, true));
  handle = static_cast<ncclNetUnpackHandle*>(
      cuda::alloc_pinned(sizeof(ncclNetUnpackHandle), true));
  if (meta == nullptr || bounce == nullptr || handle == nullptr) {
    KVSOCK_WARN(
        "UNPACK mode: cannot allocate %zu bytes of bounce buffer and meta ring",
        kBounceBytes);
    return false;
  }
  std::memset(meta, 0, sizeof(ncclNetUnpackMeta));
  handle->meta = static_cast<ncclNetUnpackMeta*>(cuda::device_pointer(meta));
  handle->bounce_buf = static_cast<char*>(cuda::device_pointer(bounce));
  handle->head = 0;
  handle_device =
      static_cast<ncclNetUnpackHandle*>(cuda::device_pointer(handle));
  return handle->meta != nullptr && handle->bounce_buf != nullptr &&
         handle_device != nullptr;
}

} // namespace kvsock
