// The directory's state (private to actors/; the actor: directory.cpp).
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_clock.hpp>

#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/directory.hpp"

namespace kvferry::directory_detail {

struct directory_state {
  struct entry {
    worker_info info;
    uint64_t token = 0;
    /// When the lease runs out (actor clock: virtual time in tests).
    caf::actor_clock::time_point deadline;
    /// The last register or renew (`lease_age_ms` in list replies).
    caf::actor_clock::time_point renewed;
  };
  static inline const char* name = "kvferry.directory";
  directory_options options;
  std::unordered_map<std::string, entry> workers;
  std::vector<caf::actor> watchers;
  /// The stall watchdog: when it last ran, and the last stall it saw
  /// (its length and when the directory resumed).
  caf::actor_clock::time_point last_tick;
  caf::timespan last_stall{0};
  caf::actor_clock::time_point resumed;
};

using self_ptr = directory_actor::stateful_pointer<directory_state>;

} // namespace kvferry::directory_detail
