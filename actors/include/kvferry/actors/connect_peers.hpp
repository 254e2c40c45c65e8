// Direct control connections between workers (instead of through the
// directory's node): actors/src/connect_peers.cpp.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <caf/actor_system.hpp>

#include "kvferry/actors/actors.hpp"

namespace kvferry {

/// The worker_info attribute holding "HOST:PORT" where a worker publishes
/// its actors (over TLS unless the deployment opted out).
constexpr const char* control_attribute = "control";

/// Opens a direct control connection to each of `peers` that advertises a
/// control_attribute, all at once, each within `timeout`: messages to those
/// workers' actors then go straight to them instead of through the
/// directory's node (CAF's automatic connections are off: they would open a
/// plain listener on every interface). Returns the names of the peers not
/// reached, each logged at warn (their messages still travel through the
/// directory). Call from a thread, not from an actor's handler.
std::vector<std::string> connect_peers(caf::actor_system& system,
                                       const std::vector<worker_info>& peers,
                                       caf::timespan timeout);

/// connect_peers for the directory's current members (of `role` only, where
/// given). A failed listing is logged at warn and reaches nobody.
std::vector<std::string> connect_members(caf::actor_system& system,
                                         const directory_actor& dir,
                                         std::optional<worker_role> role,
                                         caf::timespan timeout);

/// A directory watcher (add it to the membership keeper's watchers) that
/// dials every member of `role` it hears of, on a thread of its own. The
/// dial before registering (connect_members) misses a peer that registers
/// at the same moment; whichever of the two registers second sees the other
/// here. Without a direct route, a pair's messages travel through the
/// directory, and the proxies they made die with it when it restarts.
caf::actor spawn_peer_linker(caf::actor_system& system, worker_role role,
                             caf::timespan timeout);

} // namespace kvferry
