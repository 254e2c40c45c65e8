// Directory mode of a node (node_options::directory): the node registers
// with a kvferry directory as workers do (the membership keeper keeps the
// lease and heals losses) and meets every other node that is or comes there
// by hello; a node that leaves is forgotten by the node actor itself (it
// watches the directory: `left` fails that peer's requests, peer_down).
#pragma once

#include <caf/actor_system.hpp>
#include <caf/expected.hpp>

#include "kvferry/actors/membership.hpp"
#include "kvferry/node.hpp"
#include "kvferry/node_actors.hpp"

namespace kvferry::detail {

/// Registers the node `h` (published on h.port) with opts.directory under
/// opts.name, within opts.timeout, and starts the agent that says hello to
/// the other nodes there. Returns the keeper (leave through it). The agent
/// and the keeper end when the node actor does. Errors: invalid_argument
/// (not HOST:PORT), unreachable (no directory answered in time),
/// unauthorized (wrong secret), duplicate (the name is taken).
caf::expected<membership_actor> join_directory(caf::actor_system& sys,
                                               const node_options& opts,
                                               const node_handles& h);

} // namespace kvferry::detail
