#include "config.hpp"

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "cuda.hpp"
#include "kvferry/transport/net_v7.h"
#include "kvferry/transport/usable_cores.hpp"
#include "log.hpp"

namespace kvsock {
namespace {

// A malformed value is reported and ignored rather than silently misread.
int64_t env_int(const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0')
    return fallback;
  errno = 0;
  char* end = nullptr;
  long long value = std::strtoll(text, &end, 0);
  if (errno != 0 || end == text || *end != '\0' || value < lo || value > hi) {
    KVSOCK_WARN("ignoring %s=\"%s\": expected an integer in [%lld, %lld]", name,
                text, static_cast<long long>(lo), static_cast<long long>(hi));
    return fallback;
  }
  return value;
}

// KVSOCK_PTR_SUPPORT: "auto" (or unset) or "host".
bool env_host_only() {
  const char* text = std::getenv("KVSOCK_PTR_SUPPORT");
  if (text == nullptr || *text == '\0' || std::strcmp(text, "auto") == 0)
    return false;
  if (std::strcmp(text, "host") == 0)
    return true;
  KVSOCK_WARN(
      "ignoring KVSOCK_PTR_SUPPORT=\"%s\": expected \"host\" or \"auto\"",
      text);
  return false;
}

} // namespace

size_t default_inline_max(int cores) {
  // A send handed to a data-socket thread costs a thread hand-off; on few
  // cores that thread competes with the caller for a core, and writing the
  // message inline on the control socket wins up to 1 MiB (2 cores, quiet:
  // 256 KiB 0.67-0.71x of raw TCP handed off, 0.75-0.90x inline; 1 MiB
  // 0.88-0.90x against 1.22-1.31x; docs/benchmarks.md). Larger machines keep
  // the 64 KiB they were tuned at.
  return cores <= 4 ? size_t{1} << 20 : size_t{64} << 10;
}

int Config::ptr_support() const {
  return NCCL_PTR_HOST | (!host_only && cuda::available() ? NCCL_PTR_CUDA : 0);
}

Config Config::from_env() {
  Config c;
  c.inline_max =
      default_inline_max(static_cast<int>(kvferry::transport::usable_cores()));
  c.data_sockets =
      static_cast<int>(env_int("KVSOCK_NSOCKS", c.data_sockets, 1, kMaxLanes));
  c.inline_max = static_cast<size_t>(
      env_int("KVSOCK_INLINE_MAX", c.inline_max, 0, 1 << 30));
  c.min_part = static_cast<size_t>(
      env_int("KVSOCK_MIN_PART", c.min_part, 4096, 1 << 30));
  c.socket_buffer =
      static_cast<int>(env_int("KVSOCK_SOCKBUF", c.socket_buffer, 0, 1 << 30));
  c.cuda_staging = static_cast<size_t>(
      env_int("KVSOCK_CUDA_STAGING", c.cuda_staging, 64 << 10, 1 << 30));
  c.connect_timeout_ms = static_cast<int>(
      env_int("KVSOCK_CONNECT_TIMEOUT_MS", c.connect_timeout_ms, 1, 3600000));
  c.hello_timeout_ms = static_cast<int>(
      env_int("KVSOCK_HELLO_TIMEOUT_MS", c.hello_timeout_ms, 1, 600000));
  c.reject_log_ms = static_cast<int>(
      env_int("KVSOCK_REJECT_LOG_MS", c.reject_log_ms, 0, 3600000));
  c.unpack = env_int("KVSOCK_UNPACK", 0, 0, 1) == 1;
  c.host_only = env_host_only();
  c.spin_us =
      static_cast<int>(env_int("KVSOCK_SPIN_US", c.spin_us, 0, 1000000));
  c.wait_us = static_cast<int>(env_int("KVSOCK_WAIT_US", c.wait_us, 0, 100000));
  c.gather =
      static_cast<int>(env_int("KVSOCK_GATHER", c.gather, 1, kMaxGather));
  c.fault_delay_us = env_int("KVSOCK_FAULT_DELAY_US", 0, 0, 60000000);
  c.fault_drop_after = env_int("KVSOCK_FAULT_DROP_AFTER", -1, 0, INT64_MAX);
  c.fault_corrupt = env_int("KVSOCK_FAULT_CORRUPT", 0, 0, INT64_MAX);
  c.fault_accept_delay_us =
      env_int("KVSOCK_FAULT_ACCEPT_DELAY_US", 0, 0, 60000000);
  return c;
}

} // namespace kvsock
