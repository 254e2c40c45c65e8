// `kvferry info`: version, the CUDA devices this process sees, and the network
// plugins it can find with their devices.
#include <iostream>

#include <fmt/format.h>

#include "commands.hpp"
#include "kvferry/runtime/version.hpp"
#include "kvferry/transport/gpu_info.hpp"

namespace kvferry::app {
namespace {

void print_gpus() {
  auto inventory = transport::list_gpus();
  if (inventory.devices.empty()) {
    fmt::print("CUDA devices: none ({})\n", inventory.why_none);
    return;
  }
  fmt::print("CUDA devices: {}\n", inventory.devices.size());
  for (auto& gpu : inventory.devices)
    fmt::print("  [{}] {}  sm_{}{}  {:.1f} GiB  {}\n", gpu.index, gpu.name,
               gpu.compute_major, gpu.compute_minor,
               gpu.memory_bytes / double(1 << 30), gpu.pci_bus_id);
}

}  // namespace

void add_info(CLI::App& root, int& exit_code) {
  auto* cmd = root.add_subcommand(
    "info", "Print the version, CUDA devices and network plugins found");
  cmd->callback([&exit_code] {
    fmt::print("kvferry {} ({})\n", kvferry::version,
               kvferry::built_with_cuda ? "built with CUDA" : "built without CUDA");
    print_gpus();
    exit_code = 0;
  });
}

}  // namespace kvferry::app
