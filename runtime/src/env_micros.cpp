#include "kvferry/runtime/env_micros.hpp"

#include <cstdlib>

#include <spdlog/spdlog.h>

namespace kvferry::runtime {

std::chrono::microseconds env_micros(const char* name,
                                     std::chrono::microseconds fallback,
                                     std::chrono::microseconds max) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0')
    return fallback;
  char* end = nullptr;
  const unsigned long long value = std::strtoull(text, &end, 10);
  if (*end != '\0' || *text == '-' ||
      value > static_cast<unsigned long long>(max.count())) {
    spdlog::warn("ignoring {}=\"{}\": expected microseconds, 0 to {}; using {}",
                 name, text, max.count(), fallback.count());
    return fallback;
  }
  return std::chrono::microseconds(value);
}

} // namespace kvferry::runtime
