// What CUDA devices this process can use, without requiring a GPU or even a
// CUDA build: callers get an empty list and the reason instead.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace kvferry::transport {

struct gpu_info {
  int index = 0;
  std::string name;
  std::string pci_bus_id;
  std::size_t memory_bytes = 0;
  int compute_major = 0;
  int compute_minor = 0;
};

struct gpu_inventory {
  std::vector<gpu_info> devices;
  /// Why `devices` is empty ("built without CUDA", "no CUDA driver", ...).
  std::string why_none;
};

/// Enumerates CUDA devices; never throws and never aborts.
gpu_inventory list_gpus();

} // namespace kvferry::transport
