// The lease keeper's state (private to actors/; the actor: membership.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/actor_clock.hpp>
#include <caf/error.hpp>
#include <caf/typed_response_promise.hpp>

#include "kvferry/actors/membership.hpp"

namespace kvferry::membership_detail {

/// The states the keeper reports (get_atom) and logs.
enum class membership_state_kind { dialing, registering, registered, left };

struct membership_state {
  static inline const char* name = "kvferry.membership";
  membership_config cfg;
  membership_state_kind kind = membership_state_kind::dialing;
  directory_actor directory;
  lease granted;
  /// Bumped on every change of state: timers of an older epoch are stale.
  std::uint64_t epoch = 0;
  /// Consecutive failed dials/registrations (the backoff's exponent).
  std::uint32_t failures = 0;
  /// The kind of the problem last logged (empty: none), so that each one
  /// is logged once, when it starts, and its end once.
  std::string problem;
  std::string last_error;
  /// The directory's last refusal (until a registration succeeds): what a
  /// caller waiting for the registration is told.
  caf::error refusal;
  /// A renewal went unanswered; the next answer ends the episode.
  bool silent = false;
  bool ever_registered = false;
  caf::actor_clock::time_point trouble_since;
  std::vector<caf::typed_response_promise<caf::ok_atom>> waiting;
  std::uint64_t rng_state = 0;
};

using self_ptr = membership_actor::stateful_pointer<membership_state>;

} // namespace kvferry::membership_detail
