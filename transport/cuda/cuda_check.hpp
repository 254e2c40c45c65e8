// Internal: turns a CUDA error code into a gpu_error naming the call and the
// device, so that every failure says where it happened.
#pragma once

#include <string>

#include <cuda_runtime_api.h>

#include "kvferry/transport/gpu_memory.hpp"

namespace kvferry::transport {

inline void check_cuda(cudaError_t err, const std::string& call, int device) {
  if (err == cudaSuccess)
    return;
  throw gpu_error(call + " failed on " +
                  (device >= 0 ? "GPU " + std::to_string(device)
                               : std::string{"the host"}) +
                  ": " + cudaGetErrorName(err) + " (" +
                  cudaGetErrorString(err) + ")");
}

} // namespace kvferry::transport
