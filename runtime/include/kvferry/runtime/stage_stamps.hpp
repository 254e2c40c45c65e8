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
  recvs_posted,   // ... and has posted its receives
  wake_fired,     // the decode's wake watch saw news
  wake_taken,     // the decode's transfer actor takes the wake
  received,       // the decode's transfer ends (its last receive done)
  caller_got,     // the caller has the reply
  stage_count
};

// A switch, so that a stage without a name is a compiler warning (-Wswitch).
inline const char* name(stage s) {
  switch (s) {
  case caller_sent:
    return "caller sent";
  case pull_taken:
    return "pull taken";
  case order_sent:
    return "order sent";
  case order_taken:
    return "order taken";
  case sends_posted:
    return "sends posted";
  case announce_taken:
    return "announce";
  case recvs_posted:
    return "recvs posted";
  case wake_fired:
    return "wake fired";
  case wake_taken:
    return "wake taken";
  case received:
    return "received";
  case caller_got:
    return "caller got";
  case stage_count:
    break;
  }
  return "?";
}

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
