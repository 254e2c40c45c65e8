// Host bytes to GPU memory, landed before anything else reads them. A
// cudaMemcpy from pageable host memory may return once the bytes are staged,
// before the DMA to the destination ends (CUDA's "API synchronization
// behavior"), and the code under test reads them on non-blocking streams (not
// ordered after the legacy stream's copy) or from another process: without
// the wait, a kernel can read the old bytes.
#pragma once

#include <cstddef>

#include <cuda_runtime_api.h>

namespace kvferry::test {

inline cudaError_t upload(void* dst, const void* src, std::size_t bytes) {
  if (auto err = cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
      err != cudaSuccess)
    return err;
  return cudaDeviceSynchronize();
}

} // namespace kvferry::test
