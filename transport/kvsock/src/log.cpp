#include "log.hpp"

#include <atomic>
#include <cstdarg>
#include <cstdio>

namespace kvsock {
namespace {
std::atomic<ncclDebugLogger_t> g_logger{nullptr};
constexpr unsigned long kNcclNetFlag = 0x10; // NCCL_NET subsystem bit
} // namespace

void set_logger(ncclDebugLogger_t logger) {
  g_logger.store(logger);
}

void log_message(ncclDebugLogLevel level, const char* file, int line,
                 const char* fmt, ...) {
  char text[512];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(text, sizeof text, fmt, args);
  va_end(args);
  ncclDebugLogger_t logger = g_logger.load();
  if (logger != nullptr) {
    logger(level, kNcclNetFlag, file, line, "%s", text);
  } else if (level == NCCL_LOG_WARN) {
    std::fprintf(stderr, "kvsock WARN %s\n", text);
  }
}

} // namespace kvsock
