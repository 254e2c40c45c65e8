// A worker's membership in the deployment, kept alive: the lease keeper.
//
// It registers the worker with the directory, re-watches the directory for
// the worker's watcher actors, renews the lease at a third of its duration,
// and heals every loss by itself:
//
//   lease lost (renew answers not_found / unauthorized: the directory dropped
//     us, e.g. this process was stopped past its lease)  -> register again
//   directory gone (its actor is down: it died, restarted, or the connection
//     closed)                                            -> dial again with
//     backoff and jitter, then register and watch again
//   renewal unanswered (the directory is stalled)        -> keep renewing;
//     the directory grants grace after its own pause (docs/architecture.md)
//
// The same app and transfer actors are registered again, so peers resume
// with them. Each change of state is logged once (not every attempt), naming
// the directory, never this worker, when the directory is the one at fault.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/expected.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "kvferry/actors/actors.hpp"

namespace kvferry {

/// Reaches the directory: replies to (connect_atom) with the directory's
/// handle (as caf::actor) or why it could not. The keeper asks it again
/// after every loss; it may block (spawn_dialer runs it on its own thread).
using dialer_actor =
    caf::typed_actor<caf::replies_to<caf::connect_atom>::with<caf::actor>>;

/// A blocking connect (e.g. connect_directory with a short timeout).
using directory_connect = std::function<caf::expected<directory_actor>()>;

/// Runs `connect` on a detached actor of its own, so that a slow dial never
/// blocks a scheduler thread.
dialer_actor spawn_dialer(caf::actor_system& sys, directory_connect connect);

/// The keeper's interface.
using membership_actor = caf::typed_actor<
    // Replies once the worker is registered (at once if it is), or with the
    // error of a registration the directory refused (unauthorized,
    // invalid_argument): the keeper retries those too, since an operator may
    // fix the directory, but a caller starting up wants to know. A duplicate
    // name is only retried: it may be this worker's previous process, not
    // yet dropped.
    caf::replies_to<caf::wait_for_atom>::with<caf::ok_atom>,
    // One line for people: the state, the directory and the last problem.
    caf::replies_to<caf::get_atom>::with<std::string>,
    // Leaves the directory if registered, and stops renewing and redialling
    // for good; replies when done (bounded by leave_timeout).
    caf::replies_to<leave_atom>::with<caf::ok_atom>,
    // Internal: a timer of the keeper's epoch (stale ones are ignored).
    caf::reacts_to<caf::tick_atom, std::uint64_t>>;

struct membership_config {
  /// Registered as is, again after every loss: the same app and transfer.
  worker_info info;
  std::string secret;
  /// For logs: where the directory is, e.g. "10.0.0.1:7470".
  std::string directory_name;
  /// Actors that follow the directory (transfer, producer): watched again
  /// after every registration, and told of the current members (`joined`).
  std::vector<caf::actor> watchers;
  dialer_actor dialer;
  /// register, watch and leave requests; a dial may take this long too.
  caf::timespan request_timeout = std::chrono::seconds(5);
  caf::timespan leave_timeout = std::chrono::milliseconds(400);
  /// Between failed dials or registrations: doubling from retry_min,
  /// capped at retry_max, each delay drawn from [d/2, d] (jitter, so that
  /// a restarted directory is not hit by every worker at once).
  caf::timespan retry_min = std::chrono::milliseconds(100);
  caf::timespan retry_max = std::chrono::seconds(2);
  /// Seeds the jitter; 0 draws a random seed.
  std::uint64_t seed = 0;
};

/// Spawns a keeper (behaviour and state: actors/src/membership.cpp). It
/// starts dialling at once.
membership_actor spawn_membership(caf::actor_system& sys,
                                  membership_config cfg);

} // namespace kvferry
