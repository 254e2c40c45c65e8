// A duration in microseconds from the environment, for the knobs that trade
// a core for latency (KVFERRY_HOT_US, KVFERRY_SCHED_HOT_US).
#pragma once

#include <chrono>

namespace kvferry::runtime {

/// $name as microseconds, 0 to max; unset or empty gives fallback, and
/// anything else is warned about (naming the variable) and gives fallback.
std::chrono::microseconds env_micros(const char* name,
                                     std::chrono::microseconds fallback,
                                     std::chrono::microseconds max);

} // namespace kvferry::runtime
