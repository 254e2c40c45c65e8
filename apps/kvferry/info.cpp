// `kvferry info`: version, the CUDA devices this process sees, and the network
// plugins it can find with their devices.
#include <iostream>

#include <fmt/format.h>

#include "commands.hpp"
#include "kvferry/runtime/version.hpp"
#include "kvferry/transport/gpu_info.hpp"
#include "kvferry/transport/gpu_topology.hpp"
#include "kvferry/transport/plugin.hpp"

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
  // Which GPU's kernels can use which other GPU's memory (NVLink/PCIe P2P):
  // what `bench ipc --src-gpu A --dst-gpu B` and same-host transfers need.
  auto matrix =
      transport::format_peer_matrix(*transport::system_gpu_topology());
  if (matrix.empty())
    return;
  fmt::print("Peer access (row GPU can access column GPU's memory):\n");
  for (auto& line : matrix)
    fmt::print("  {}\n", line);
}

// Every libnccl-net-*.so on the search path, each probed in a child process
// (so a plugin that crashes or exits in init cannot take `info` down).
void print_plugins() {
  std::string dirs;
  for (auto& dir : transport::plugin_search_dirs())
    dirs += (dirs.empty() ? "" : ":") + dir;
  auto found = transport::discover_plugins();
  fmt::print("Network plugins: {} found (default: {}; searched {} and "
             "LD_LIBRARY_PATH)\n",
             found.size(), transport::default_plugin(), dirs);
  try {
    fmt::print("Probe helper: {}\n", transport::probe_helper());
  } catch (const std::exception& e) {
    fmt::print("Probe helper: none: {}\n", e.what());
  }
  for (auto& where : found) {
    auto report = transport::probe_plugin(where.path, std::chrono::seconds(10));
    if (!report.ok) {
      fmt::print("  {}  {}\n    unusable: {}\n", where.requested, where.path,
                 report.error);
      continue;
    }
    fmt::print("  {}  {}  (table '{}', {} device(s))\n", where.requested,
               where.path, report.table_name, report.devices.size());
    for (auto& dev : report.devices)
      fmt::print("    {}\n", transport::describe(dev));
  }
}

} // namespace

void add_info(CLI::App& root, int& exit_code) {
  auto* cmd = root.add_subcommand(
      "info", "Print the version, CUDA devices and network plugins found");
  cmd->callback([&exit_code] {
    fmt::print("kvferry {} ({})\n", kvferry::version,
               kvferry::built_with_cuda ? "built with CUDA"
                                        : "built without CUDA");
    print_gpus();
    print_plugins();
    exit_code = 0;
  });
}

} // namespace kvferry::app
