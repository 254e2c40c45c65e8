// The NICs kvsock exposes as v7 devices: one per IPv4 interface it is told
// to use. Read from the environment at every call (devices, getProperties,
// listen), like every other switch, so one process can change it between
// comms; a caller that needs a fixed list (NCCL, kvferry's loader) reads it
// once after init.
#pragma once

#include <netinet/in.h>
#include <string>
#include <vector>

namespace kvsock {

constexpr int kMaxDevices = 16; // as NCCL's socket transport (MAX_IFS)

struct Device {
  sockaddr_in address{}; // port 0
  std::string name;      // the interface ("eth0"), else the address text
  std::string pci_path;  // sysfs path of the interface's PCI device; empty
                         // for a virtual one (lo, veth, bridges)
  std::string why;       // which rule chose it, for logs
};

// KVSOCK_IFADDR: a comma list of IPv4 addresses or exact interface names,
// one device each, in that order (an entry that is neither is warned about
// and skipped). Else NCCL_SOCKET_IFNAME: interface name prefixes (a leading
// '=' means exact names), one device per matching IPv4 interface that is up,
// as NCCL's socket transport does. Else one device: the first non-loopback
// IPv4 interface that is up, else 127.0.0.1. At most kMaxDevices.
std::vector<Device> list_devices();

} // namespace kvsock
