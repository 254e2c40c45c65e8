// The directory: its options, spawning one, and reaching one from another
// process (the interface: directory_actor in actors.hpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include <caf/actor_system.hpp>
#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "kvferry/actors/actors.hpp"

namespace kvferry {

struct directory_options {
  /// The deployment's shared secret; empty accepts every registration (the
  /// directory warns at start).
  std::string secret;
  /// How long a registration lives without `renew`.
  caf::timespan lease = std::chrono::seconds(10);
  /// The directory's own pause (SIGSTOP, a starved CPU) longer than this is
  /// its fault, not the workers': its timers and their renewals queue up
  /// alike. After one, every lease gets a full `lease` of grace instead of
  /// expiring. 0 turns the watchdog off.
  caf::timespan stall_tolerance = std::chrono::seconds(1);
};

/// Spawns a directory (behaviour and state: actors/src/directory.cpp).
directory_actor spawn_directory(caf::actor_system& system,
                                directory_options options);

/// Connects to a directory published by `kvferry directory` at host:port
/// through the middleman, retrying refused connections until `timeout`
/// passes. Errors: unreachable (naming host:port and the last cause),
/// mismatch (the actor there is not a directory of this version).
caf::expected<directory_actor>
connect_directory(caf::actor_system& system, const std::string& host,
                  uint16_t port,
                  caf::timespan timeout = std::chrono::seconds(10));

/// Parses "HOST:PORT" (as given to --directory). Errors: invalid_argument.
caf::error parse_host_port(const std::string& text, std::string& host,
                           uint16_t& port);

} // namespace kvferry
