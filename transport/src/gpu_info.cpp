#include "kvferry/transport/gpu_info.hpp"

#ifdef KVFERRY_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvferry::transport {

gpu_inventory list_gpus() {
  gpu_inventory inventory;
#ifdef KVFERRY_HAVE_CUDA
  int count = 0;
  if (auto err = cudaGetDeviceCount(&count); err != cudaSuccess) {
    inventory.why_none =
        std::string{"CUDA reports: "} + cudaGetErrorString(err);
    return inventory;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess)
      continue;
    char bus_id[32] = {};
    cudaDeviceGetPCIBusId(bus_id, sizeof(bus_id), i);
    inventory.devices.push_back(gpu_info{
        i, prop.name, bus_id, prop.totalGlobalMem, prop.major, prop.minor});
  }
  if (inventory.devices.empty())
    inventory.why_none = "CUDA sees no devices";
#else
  inventory.why_none =
      "this build has no CUDA support (no nvcc at configure time)";
#endif
  return inventory;
}

} // namespace kvferry::transport
