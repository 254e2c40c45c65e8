// Which plugin devices (NICs) a worker uses: the ones it is told (topology
// `devices`, `kvferry worker --devices`), else the one nearest its GPU by PCIe
// topology, as NCCL pairs GPUs with NICs. Pure functions over the plugin's
// device list and sysfs paths, so unit tests can feed them any machine.
#pragma once

#include <string>
#include <vector>

#include "kvferry/transport/plugin.hpp"

namespace kvferry::transport {

struct device_choice {
  std::vector<int> devices; // plugin device indexes, in the order given
  std::string why;          // one line for the log: how they were chosen
};

/// "0,eth1" (what `kvferry launch` passes in $KVFERRY_NET_DEVICES) as its
/// entries; empty entries are dropped.
std::vector<std::string> parse_device_list(const std::string& text);

/// The devices named by `wanted`: each entry a device index ("1"), a device
/// name as the plugin reports it ("eth1"), or "all". Throws transport_error
/// naming the entry and the devices there are, for an entry that matches
/// none, and for a device named twice.
std::vector<int> resolve_devices(const std::vector<device_properties>& devices,
                                 const std::vector<std::string>& wanted);

/// The device whose pciPath shares the longest prefix, in whole path
/// components, with `gpu_path` (a sysfs path such as
/// /sys/devices/pci0000:00/0000:00:01.0/0000:04:00.0): the NIC behind the
/// same PCIe switch wins over one behind the same root port, which wins over
/// one on another root complex. Ties go to the lowest index; 0 when
/// `gpu_path` is empty or no device has a pciPath.
int nearest_device(const std::vector<device_properties>& devices,
                   const std::string& gpu_path);

/// The sysfs path of the PCI device with this bus id, as CUDA writes it
/// ("00000000:04:00.0": the domain is cut to 4 digits and the letters lower
/// case, as sysfs names it), resolved under `sysfs` (links followed).
/// Empty when it does not exist.
std::string pci_device_path(const std::string& bus_id,
                            const std::string& sysfs = "/sys");

/// What a worker uses: `wanted` resolved when given, else the device nearest
/// `gpu_path` (a GPU worker), else device 0 (a host-memory worker: any NIC
/// is as near as another). Throws as resolve_devices does.
device_choice choose_devices(const std::vector<device_properties>& devices,
                             const std::vector<std::string>& wanted,
                             const std::string& gpu_path, bool gpu_worker);

} // namespace kvferry::transport
