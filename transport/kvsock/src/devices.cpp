#include "devices.hpp"

#include <arpa/inet.h>
#include <cstdlib>
#include <cstring>
#include <ifaddrs.h>
#include <net/if.h>
#include <sstream>

#include <climits>

#include "log.hpp"

namespace kvsock {
namespace {

// The non-empty entries of a comma list.
std::vector<std::string> entries_of(const std::string& list) {
  std::vector<std::string> entries;
  std::istringstream in(list);
  for (std::string entry; std::getline(in, entry, ',');)
    if (!entry.empty())
      entries.push_back(entry);
  return entries;
}

// The PCI device behind a network interface, as NCCL's socket transport
// finds it: /sys/class/net/IF/device resolved. Virtual interfaces have none.
std::string pci_path_of(const std::string& interface) {
  std::string link = "/sys/class/net/" + interface + "/device";
  char resolved[PATH_MAX];
  if (realpath(link.c_str(), resolved) == nullptr)
    return {};
  return resolved;
}

// Every IPv4 interface that is up, in getifaddrs order.
struct Interface {
  std::string name;
  sockaddr_in address;
  bool loopback;
};
std::vector<Interface> ipv4_interfaces() {
  std::vector<Interface> out;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0)
    return out;
  for (ifaddrs* it = list; it != nullptr; it = it->ifa_next) {
    if (it->ifa_addr == nullptr || it->ifa_addr->sa_family != AF_INET ||
        (it->ifa_flags & IFF_UP) == 0)
      continue;
    Interface i{it->ifa_name, {}, (it->ifa_flags & IFF_LOOPBACK) != 0};
    std::memcpy(&i.address, it->ifa_addr, sizeof i.address);
    out.push_back(i);
  }
  freeifaddrs(list);
  return out;
}

Device device_of(const Interface& i, std::string why) {
  Device d;
  d.address = i.address;
  d.address.sin_port = 0;
  d.name = i.name;
  d.pci_path = pci_path_of(i.name);
  d.why = std::move(why);
  return d;
}

// One KVSOCK_IFADDR entry: an address (named after the interface that holds
// it, if any) or an exact interface name.
bool from_ifaddr_entry(const std::string& entry,
                       const std::vector<Interface>& interfaces, Device* out) {
  const std::string why = "KVSOCK_IFADDR=" + entry;
  in_addr address{};
  if (inet_pton(AF_INET, entry.c_str(), &address) == 1) {
    for (const auto& i : interfaces)
      if (i.address.sin_addr.s_addr == address.s_addr) {
        *out = device_of(i, why);
        return true;
      }
    out->address = sockaddr_in{};
    out->address.sin_family = AF_INET;
    out->address.sin_addr = address;
    out->name = entry;
    out->why = why;
    return true;
  }
  for (const auto& i : interfaces)
    if (i.name == entry) {
      *out = device_of(i, why + " (interface)");
      return true;
    }
  return false;
}

std::vector<Device> from_ifaddr(const char* list,
                                const std::vector<Interface>& interfaces) {
  std::vector<Device> devices;
  for (const auto& entry : entries_of(list)) {
    Device d;
    if (!from_ifaddr_entry(entry, interfaces, &d)) {
      KVSOCK_WARN("KVSOCK_IFADDR entry \"%s\" is neither an IPv4 address nor "
                  "an interface with one that is up; skipped",
                  entry.c_str());
      continue;
    }
    devices.push_back(std::move(d));
  }
  return devices;
}

std::vector<Device> from_ifname(const char* names,
                                const std::vector<Interface>& interfaces) {
  bool exact = names[0] == '=';
  auto wanted = entries_of(exact ? names + 1 : names);
  std::vector<Device> devices;
  for (const auto& i : interfaces) {
    for (const auto& want : wanted) {
      bool match =
          exact ? want == i.name : i.name.compare(0, want.size(), want) == 0;
      if (match) {
        devices.push_back(
            device_of(i, std::string("NCCL_SOCKET_IFNAME=") + names));
        break;
      }
    }
  }
  return devices;
}

Device default_device(const std::vector<Interface>& interfaces) {
  for (const auto& i : interfaces)
    if (!i.loopback)
      return device_of(i, "first non-loopback IPv4 interface");
  Device d;
  d.address.sin_family = AF_INET;
  d.address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  d.name = "lo";
  d.why = "loopback (no other IPv4 interface)";
  return d;
}

} // namespace

std::vector<Device> list_devices() {
  auto interfaces = ipv4_interfaces();
  std::vector<Device> devices;
  if (const char* list = std::getenv("KVSOCK_IFADDR");
      list != nullptr && *list != '\0') {
    devices = from_ifaddr(list, interfaces);
  } else if (const char* names = std::getenv("NCCL_SOCKET_IFNAME");
             names != nullptr && *names != '\0') {
    devices = from_ifname(names, interfaces);
    if (devices.empty()) {
      KVSOCK_WARN("NCCL_SOCKET_IFNAME=\"%s\" matches no IPv4 interface that "
                  "is up; using the default",
                  names);
      devices.push_back(default_device(interfaces));
    }
  } else {
    devices.push_back(default_device(interfaces));
  }
  if (devices.size() > static_cast<size_t>(kMaxDevices))
    devices.resize(kMaxDevices);
  return devices;
}

} // namespace kvsock
