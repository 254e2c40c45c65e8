// Logging through the logger NCCL (or kvferry) hands to init().
#pragma once

#include "kvferry/transport/net_v7.h"

namespace kvsock {

void set_logger(ncclDebugLogger_t logger);

// printf-style; without a logger, warnings go to stderr so they are never lost.
void log_message(ncclDebugLogLevel level, const char* file, int line,
                 const char* fmt, ...) __attribute__((format(printf, 4, 5)));

} // namespace kvsock

#define KVSOCK_WARN(...)                                                       \
  ::kvsock::log_message(NCCL_LOG_WARN, __FILE__, __LINE__, __VA_ARGS__)
#define KVSOCK_INFO(...)                                                       \
  ::kvsock::log_message(NCCL_LOG_INFO, __FILE__, __LINE__, __VA_ARGS__)
