// Where one request's time goes, stage by stage: each stage's latest time
// (runtime::steady_ns) in one process-wide table. For a bench that runs
// both ends in one process with one request at a time (bench node with
// KVFERRY_STAGE_STAMPS=1): it clears the table, runs a request, and reads
// the stamps. Off, a stamp costs one relaxed load.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>

#include "kvferry/runtime/steady_ns.hpp"

namespace kvferry::stage_stamps {

enum stage : int {
  caller_sent,    // the caller's pull leaves
  pull_taken,     // the decode's transfer actor takes it
  order_sent,     // ... and has sent the prefill its order
  order_taken,    // the prefill's transfer actor takes the order
  sends_posted,   // ... and has posted its sends
  announce_taken, // the decode's transfer actor takes the announcement
  wake_fired,     // the decode's wake watch saw news
  wake_taken,     // the decode's transfer actor takes the wake
  received,       // the decode's transfer ends (its last receive done)
  caller_got,     // the caller has the reply
  stage_count
};

inline constexpr const char* stage_names[stage_count] = {
    "caller sent", "pull taken", "order sent", "order taken", "sends posted",
    "announce",    "wake fired", "wake taken", "received",    "caller got"};

inline std::atomic<bool> enabled{false};
inline std::array<std::atomic<std::int64_t>, stage_count> stamps{};

inline void stamp(stage s) {
  if (enabled.load(std::memory_order_relaxed))
    stamps[s].store(runtime::steady_ns(), std::memory_order_relaxed);
}

inline void clear() {
  for (auto& s : stamps)
    s.store(0, std::memory_order_relaxed);
}

} // namespace kvferry::stage_stamps
