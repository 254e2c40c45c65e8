// How many cores this process may run on: its CPU affinity (taskset,
// cpusets), not the machine's count. Defaults that depend on spare cores
// are chosen from it: kvsock's inline threshold, a transfer actor's hot
// window. Header-only and free of kvferry's other libraries, so that the
// kvsock plugin can use it too.
#pragma once

#include <algorithm>
#include <sched.h>
#include <thread>

namespace kvferry::transport {

inline unsigned usable_cores() noexcept {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0)
    return static_cast<unsigned>(std::max(1, CPU_COUNT(&set)));
  return std::max(1u, std::thread::hardware_concurrency());
}

} // namespace kvferry::transport
