#include "kvferry/runtime/directory_types.hpp"

#include <fstream>
#include <unistd.h>

namespace kvferry {

const char* to_string(worker_role role) {
  return role == worker_role::decode ? "decode" : "prefill";
}

bool parse_role(const std::string& text, worker_role& out) {
  if (text == "prefill")
    out = worker_role::prefill;
  else if (text == "decode")
    out = worker_role::decode;
  else
    return false;
  return true;
}

std::string local_hostname() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0)
    return "unknown-host";
  return buf;
}

std::string local_host_id() {
  // Hostnames repeat across containers and clusters; the boot id tells two
  // kernels apart, and CUDA IPC only works within one kernel.
  std::string boot_id;
  std::ifstream in{"/proc/sys/kernel/random/boot_id"};
  std::getline(in, boot_id);
  return local_hostname() + "/" + (boot_id.empty() ? "no-boot-id" : boot_id);
}

} // namespace kvferry
