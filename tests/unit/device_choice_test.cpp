// Which plugin devices (NICs) a worker uses: the configured list, else the
// one nearest its GPU by PCIe path (transport/device_choice.hpp).
#include <filesystem>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "kvferry/transport/device_choice.hpp"
#include "scratch_dir.hpp"

using namespace kvferry::transport;

namespace {

// A machine with two NICs, each behind its own PCIe switch on one root
// complex, and a third on another root complex.
std::vector<device_properties> three_nics() {
  std::vector<device_properties> devices(3);
  const char* names[] = {"eth0", "eth1", "eth2"};
  const char* paths[] = {
      "/sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:00.0",
      "/sys/devices/pci0000:00/0000:00:03.0/0000:05:00.0/0000:06:00.0",
      "/sys/devices/pci0000:80/0000:80:01.0/0000:81:00.0"};
  for (int i = 0; i < 3; ++i) {
    devices[i].index = i;
    devices[i].name = names[i];
    devices[i].pci_path = paths[i];
  }
  return devices;
}

} // namespace

TEST_CASE("devices are named by index, by name or as all") {
  auto nics = three_nics();
  CHECK(resolve_devices(nics, {"1"}) == std::vector<int>{1});
  CHECK(resolve_devices(nics, {"eth2", "0"}) == std::vector<int>{2, 0});
  CHECK(resolve_devices(nics, {"all"}) == std::vector<int>{0, 1, 2});
  CHECK(parse_device_list("0,eth1,,2") ==
        std::vector<std::string>{"0", "eth1", "2"});
  CHECK(parse_device_list("").empty());
}

TEST_CASE("a device that does not exist or is named twice is an error naming "
          "it and the devices there are") {
  auto nics = three_nics();
  CHECK_THROWS_WITH_AS(resolve_devices(nics, {"eth9"}),
                       doctest::Contains("'eth9' is no device of the plugin"),
                       transport_error);
  CHECK_THROWS_WITH_AS(resolve_devices(nics, {"3"}),
                       doctest::Contains("0 'eth0', 1 'eth1', 2 'eth2'"),
                       transport_error);
  CHECK_THROWS_WITH_AS(resolve_devices(nics, {"99999999999999999999"}),
                       doctest::Contains("no device"), transport_error);
  CHECK_THROWS_WITH_AS(resolve_devices(nics, {"1", "eth1"}),
                       doctest::Contains("names device 1 a second time"),
                       transport_error);
}

TEST_CASE("the nearest NIC shares the longest PCIe path with the GPU") {
  auto nics = three_nics();
  // Behind eth1's switch.
  CHECK(nearest_device(nics, "/sys/devices/pci0000:00/0000:00:03.0/"
                             "0000:05:00.0/0000:07:00.0") == 1);
  // Behind eth0's root port, on another switch port.
  CHECK(nearest_device(nics, "/sys/devices/pci0000:00/0000:00:01.0/"
                             "0000:01:00.0/0000:03:00.0") == 0);
  // On the second root complex.
  CHECK(nearest_device(nics, "/sys/devices/pci0000:80/0000:80:02.0/"
                             "0000:82:00.0") == 2);
  // Unknown GPU path, or no NIC with a path: device 0.
  CHECK(nearest_device(nics, "") == 0);
  auto virtual_nics = nics;
  for (auto& d : virtual_nics)
    d.pci_path.clear();
  CHECK(nearest_device(virtual_nics, "/sys/devices/pci0000:80/0000:80:02.0") ==
        0);
  // A prefix must be whole components: pci0000:8 is not pci0000:80.
  CHECK(nearest_device(nics, "/sys/devices/pci0000:8/0000:80:01.0") == 0);
}

TEST_CASE("choose_devices: configured, nearest the GPU, or device 0 for host "
          "memory; it says why") {
  auto nics = three_nics();
  auto configured = choose_devices(nics, {"eth1", "eth2"}, "", true);
  CHECK(configured.devices == std::vector<int>{1, 2});
  CHECK(configured.why.find("as configured") != std::string::npos);

  auto gpu = choose_devices(
      nics, {}, "/sys/devices/pci0000:80/0000:80:01.0/0000:83:00.0", true);
  CHECK(gpu.devices == std::vector<int>{2});
  CHECK(gpu.why.find("nearest the GPU") != std::string::npos);

  auto host = choose_devices(nics, {}, "", false);
  CHECK(host.devices == std::vector<int>{0});
  CHECK(host.why.find("host-memory") != std::string::npos);

  auto unknown = choose_devices(nics, {}, "", true);
  CHECK(unknown.devices == std::vector<int>{0});
  CHECK(unknown.why.find("unknown") != std::string::npos);
}

TEST_CASE("a CUDA bus id is found in sysfs as the kernel names it") {
  kvferry::test::scratch_dir dir("kvferry-device-choice");
  namespace fs = std::filesystem;
  auto root = dir.path;
  auto real = root / "devices/pci0000:00/0000:00:01.0/0000:0a:00.0";
  fs::create_directories(real);
  fs::create_directories(root / "bus/pci/devices");
  fs::create_symlink("../../../devices/pci0000:00/0000:00:01.0/0000:0a:00.0",
                     root / "bus/pci/devices/0000:0a:00.0");
  // CUDA writes an 8-digit domain and upper-case hex.
  CHECK(pci_device_path("00000000:0A:00.0", root.string()) ==
        fs::canonical(real).string());
  CHECK(pci_device_path("0000:0a:00.0", root.string()) ==
        fs::canonical(real).string());
  CHECK(pci_device_path("00000000:05:00.0", root.string()).empty());
  CHECK(pci_device_path("", root.string()).empty());
}
