#include "kvferry/transport/device_choice.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include <climits>
#include <fmt/format.h>
#include <fmt/ranges.h>

namespace kvferry::transport {
namespace {

// The non-empty pieces of `text` between separators.
std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find(separator, start);
    if (end == std::string::npos)
      end = text.size();
    if (end > start)
      parts.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return parts;
}

size_t common_components(const std::vector<std::string>& a,
                         const std::vector<std::string>& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n])
    ++n;
  return n;
}

std::string names_of(const std::vector<device_properties>& devices) {
  std::vector<std::string> names;
  for (const auto& d : devices)
    names.push_back(fmt::format("{} '{}'", d.index, d.name));
  return names.empty() ? std::string("none")
                       : fmt::format("{}", fmt::join(names, ", "));
}

int index_of(const std::vector<device_properties>& devices,
             const std::string& entry) {
  if (!entry.empty() &&
      std::all_of(entry.begin(), entry.end(),
                  [](unsigned char c) { return std::isdigit(c) != 0; })) {
    long index =
        entry.size() > 6 ? LONG_MAX : std::strtol(entry.c_str(), nullptr, 10);
    return index < static_cast<long>(devices.size()) ? static_cast<int>(index)
                                                     : -1;
  }
  for (size_t i = 0; i < devices.size(); ++i)
    if (devices[i].name == entry)
      return static_cast<int>(i);
  return -1;
}

} // namespace

std::vector<std::string> parse_device_list(const std::string& text) {
  return split(text, ',');
}

std::vector<int> resolve_devices(const std::vector<device_properties>& devices,
                                 const std::vector<std::string>& wanted) {
  std::vector<int> out;
  auto add = [&](int index, const std::string& entry) {
    if (std::find(out.begin(), out.end(), index) != out.end())
      throw transport_error(fmt::format(
          "devices: '{}' names device {} a second time", entry, index));
    out.push_back(index);
  };
  for (const auto& entry : wanted) {
    if (entry == "all") {
      for (size_t i = 0; i < devices.size(); ++i)
        add(static_cast<int>(i), entry);
      continue;
    }
    int index = index_of(devices, entry);
    if (index < 0)
      throw transport_error(fmt::format(
          "devices: '{}' is no device of the plugin (an index, a name or "
          "'all'); it has {}",
          entry, names_of(devices)));
    add(index, entry);
  }
  return out;
}

int nearest_device(const std::vector<device_properties>& devices,
                   const std::string& gpu_path) {
  auto gpu = split(gpu_path, '/');
  int best = 0;
  size_t best_common = 0;
  for (size_t i = 0; i < devices.size() && !gpu.empty(); ++i) {
    size_t common = common_components(gpu, split(devices[i].pci_path, '/'));
    if (common > best_common) {
      best = static_cast<int>(i);
      best_common = common;
    }
  }
  return best;
}

std::string pci_device_path(const std::string& bus_id,
                            const std::string& sysfs) {
  // CUDA: "00000000:04:00.0" (8-digit domain); sysfs: "0000:04:00.0".
  std::string id = bus_id;
  if (auto colon = id.find(':'); colon != std::string::npos && colon > 4)
    id.erase(0, colon - 4);
  std::transform(id.begin(), id.end(), id.begin(), [](unsigned char c) {
    return static_cast<char>(std::tolower(c));
  });
  if (id.empty())
    return {};
  std::string link = sysfs + "/bus/pci/devices/" + id;
  char resolved[PATH_MAX];
  if (realpath(link.c_str(), resolved) == nullptr)
    return {};
  return resolved;
}

device_choice choose_devices(const std::vector<device_properties>& devices,
                             const std::vector<std::string>& wanted,
                             const std::string& gpu_path, bool gpu_worker) {
  device_choice choice;
  if (!wanted.empty()) {
    choice.devices = resolve_devices(devices, wanted);
    choice.why = fmt::format("as configured ({})", fmt::join(wanted, ","));
  } else if (!gpu_worker) {
    choice.devices = {0};
    choice.why = "device 0: a host-memory worker is equally near every NIC";
  } else if (gpu_path.empty()) {
    choice.devices = {0};
    choice.why = "device 0: the GPU's PCI path is unknown";
  } else {
    int nearest = nearest_device(devices, gpu_path);
    choice.devices = {nearest};
    const auto& nic = devices.empty()
                          ? std::string()
                          : devices[static_cast<size_t>(nearest)].pci_path;
    choice.why =
        nic.empty()
            ? fmt::format("device {}: no device reports a PCI path", nearest)
            : fmt::format("device {}: nearest the GPU ({}) by PCIe path ({})",
                          nearest, gpu_path, nic);
  }
  return choice;
}

} // namespace kvferry::transport
