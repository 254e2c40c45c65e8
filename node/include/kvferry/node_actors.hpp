// kvferry::node at the CAF level (issue #15), for serving stacks that
// already run CAF: the node's actors spawned into the caller's own
// caf::actor_system, whose config registered kvferry's type ids and loaded
// the io module (kvferry::runtime::system_config does both). The caller's
// actors then send the typed messages of node_actor (actors.hpp) directly:
//
//   auto n = kvferry::spawn_node(sys, opts);        // caf::expected
//   self->request(n->node, caf::infinite,   // or n->transfer: see below
//   kvferry::proto::node_pull_atom::value,
//                 kvferry::proto::node_request{id, "prefill-0", blocks})
//       .then([](const kvferry::proto::node_report& r) { ... },
//             [](const caf::error& e) { ... });
//
// kvferry::node (node.hpp) is a thin wrapper over this.
#pragma once

#include <cstdint>

#include <caf/actor_system.hpp>
#include <caf/expected.hpp>

#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/membership.hpp"
#include "kvferry/node.hpp"

namespace kvferry {

/// A node's actors in the caller's system.
struct node_handles {
  /// Moves the bytes of the caller's cache (its own thread).
  transfer_actor transfer;
  /// The request bookkeeping: what the caller talks to.
  node_actor node;
  /// Where node_actor is published (opts.bind); peers connect to it.
  std::uint16_t port = 0;
  /// Where the caller sends a pull (node_pull_atom) for the least control
  /// overhead. True: to `transfer`, which serves a pull the prefill offered
  /// itself (the node handed it the offer) and hands any other to the node;
  /// the node is then not in an offered pull's path. False (this node's
  /// cache is on the GPU and exported over CUDA IPC: its pulls may be
  /// one-sided reads, which the node runs): to `node`. Either actor takes
  /// any pull; the other way costs a hop.
  bool pulls_via_transfer = false;
  /// Directory mode: the keeper of the node's registration (membership.hpp;
  /// send it leave_atom for a prompt leave). It ends with the node actor.
  membership_actor keeper;
};

/// Wraps opts.cache in place, spawns the transfer actor over it and the node
/// actor, and publishes the node actor on opts.bind:opts.port (0: any free
/// port). Errors as node::start's, as caf::error (kvferry's category). The
/// caller stops both actors (send_exit, then wait for them) before freeing
/// the cache. With opts.directory it returns once the node is registered
/// there (within opts.timeout), and meets the other nodes there by hello.
caf::expected<node_handles> spawn_node(caf::actor_system& sys,
                                       const node_options& opts);

} // namespace kvferry
