// The steady clock in nanoseconds: the clock of the timestamps that reports
// carry (node and transfer reports, ready_report, the demo's breakdown).
// steady_clock is CLOCK_MONOTONIC, so the processes of one host compare.
#pragma once

#include <chrono>
#include <cstdint>

namespace kvferry::runtime {

inline std::int64_t steady_ns(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             t.time_since_epoch())
      .count();
}

inline std::int64_t steady_ns() {
  return steady_ns(std::chrono::steady_clock::now());
}

} // namespace kvferry::runtime
