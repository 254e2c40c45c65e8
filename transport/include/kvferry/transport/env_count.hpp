// One rule for every count knob read from the environment (plan threads,
// the pattern kernels' grid and workers): plain C++, so that .cu files may
// include it.
#pragma once

#include <cstdlib>
#include <stdexcept>
#include <string>

namespace kvferry::transport {

/// A count read from environment variable `name`: unset or empty gives
/// `fallback`; anything but a whole number in [1, max] throws
/// std::invalid_argument naming the variable and what it expects (`what`,
/// e.g. "thread blocks").
inline unsigned long env_count(const char* name, unsigned long fallback,
                               unsigned long max, const char* what) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0')
    return fallback;
  char* end = nullptr;
  const unsigned long value = std::strtoul(text, &end, 10);
  if (*end != '\0' || value == 0 || value > max)
    throw std::invalid_argument(std::string{name} + "=" + text +
                                ": expected a number of " + what + ", 1 to " +
                                std::to_string(max));
  return value;
}

} // namespace kvferry::transport
