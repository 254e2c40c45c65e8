// Every actor interface of kvferry, in one place (the Tenzir/Broker style):
// a typed handle per actor, its state struct and one factory function. The
// message types and atoms live in the runtime (kvferry/runtime/type_ids.hpp
// and protocol.hpp) so that every process registers the same ids.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/expected.hpp>
#include <caf/fwd.hpp>
#include <caf/replies_to.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "kvferry/runtime/directory_types.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/type_ids.hpp"

namespace kvferry {

// ---- directory -------------------------------------------------------------
//
// One per deployment. Knows every worker's metadata (never bytes), answers
// lookups, pushes joins and leaves to watchers, and drops a worker whose
// app/transfer actor dies or whose lease runs out. Every request is answered
// with a value or an error (kvferry::ec); see docs/architecture.md.

/// The directory's interface.
using directory_actor = caf::typed_actor<
  // Registers `worker` under its name, authenticated by the deployment's
  // shared secret. Errors: unauthorized (wrong secret), duplicate (the name
  // is held by another live worker), invalid_argument (empty name, listen
  // handle not listen_handle_size bytes). Registering again with the same
  // app actor updates the entry. Renew before lease.duration passes.
  caf::replies_to<register_atom, worker_info, std::string>::with<lease>,
  // Extends the lease of (name, token). Errors: not_found, unauthorized.
  caf::replies_to<renew_atom, std::string, uint64_t>::with<caf::ok_atom>,
  // Removes (name, token); watchers get `left`. Errors: not_found,
  // unauthorized.
  caf::replies_to<leave_atom, std::string, uint64_t>::with<caf::ok_atom>,
  // One worker by name. Errors: not_found.
  caf::replies_to<lookup_atom, std::string>::with<worker_info>,
  // All workers, sorted by name.
  caf::replies_to<list_atom>::with<std::vector<worker_info>>,
  // The workers of one role, sorted by name.
  caf::replies_to<list_atom, worker_role>::with<std::vector<worker_info>>,
  // Subscribes `watcher` (any actor handling the two messages of
  // directory_watcher_actor): replies with the current members (sorted by
  // name); afterwards pushes (joined_atom, worker_info) and
  // (left_atom, std::string name, caf::error why). A dead watcher is dropped.
  caf::replies_to<watch_atom, caf::actor>::with<std::vector<worker_info>>,
  caf::replies_to<unwatch_atom, caf::actor>::with<caf::ok_atom>,
  // Internal: the lease timer of (name, token); a no-op if renewed since.
  caf::reacts_to<expire_atom, std::string, uint64_t>>;

/// What a directory watcher must handle (pass it to `watch` as caf::actor,
/// e.g. caf::actor_cast<caf::actor>(self)).
using directory_watcher_actor = caf::typed_actor<
  caf::reacts_to<joined_atom, worker_info>,
  caf::reacts_to<left_atom, std::string, caf::error>>;

struct directory_options {
  /// The deployment's shared secret; empty accepts every registration (the
  /// directory warns at start).
  std::string secret;
  /// How long a registration lives without `renew`.
  caf::timespan lease = std::chrono::seconds(10);
};

struct directory_state {
  struct entry {
    worker_info info;
    uint64_t token = 0;
    /// When the lease runs out (actor clock: virtual time in tests).
    caf::actor_clock::time_point deadline;
  };
  static inline const char* name = "kvferry.directory";
  directory_options options;
  std::unordered_map<std::string, entry> workers;
  std::vector<caf::actor> watchers;
  uint64_t next_token = 1;
};

using directory_stateful_pointer =
  directory_actor::stateful_pointer<directory_state>;

/// The directory actor's behaviour: spawn with
/// `system.spawn(kvferry::directory, options)`.
directory_actor::behavior_type directory(directory_stateful_pointer self,
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

// ---- transfer, producer, consumer ------------------------------------------
//
// TODO(transfer engineer): transfer, producer and consumer interfaces, their
// state structs and factories go here.

}  // namespace kvferry
