// The node actor's configuration and factory (its interface: node_actor in
// actors.hpp; the actor: actors/src/node_actor.cpp). kvferry::node (node/)
// spawns it beside a transfer actor over the caller's KV cache.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/send.hpp>

#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/kv_layout.hpp"

namespace kvferry {

struct node_actor_config {
  std::string name;        // the node's name: peers address it by it
  transfer_actor transfer; // moves the bytes of this node's cache
  proto::endpoint self;    // that transfer actor's endpoint
  kv_layout layout;        // the cache the transfer actor's regions hold
  std::uint32_t timeout_ms = 10000; // one part's transfer, once posted
};

/// Spawns a node actor (on the scheduler: it only does bookkeeping).
node_actor spawn_node_actor(caf::actor_system& sys, node_actor_config cfg);

/// Whether a pull between the nodes whose transfer actors have endpoints
/// `a` and `b` is a one-sided CUDA IPC read (the puller's transfer actor
/// copies from the other's table): both on one host and both exporting
/// their tables over CUDA IPC (GPU memory CUDA IPC can share, use_ipc on).
/// Symmetric: both nodes choose alike without asking. Empty: yes; else why
/// not (the plugin path is taken).
std::string why_not_one_sided(const proto::endpoint& a,
                              const proto::endpoint& b);

/// Where a node whose transfer actor has endpoint `self` takes its callers'
/// pulls (node_pull_atom) for the least control overhead: at that transfer
/// actor (true), which serves an offered pull itself, unless the node's
/// cache is exported over CUDA IPC, so that its pulls may be one-sided
/// reads, which the node actor runs (false: at the node actor). Either
/// actor takes any pull; the other way costs a hop.
bool pulls_via_transfer(const proto::endpoint& self);

/// A layout's wire form, and back (throws std::invalid_argument as
/// kv_layout::strided does for a description no layout has).
proto::kv_layout_desc describe_layout(const kv_layout& layout);
kv_layout layout_of(const proto::kv_layout_desc& desc);

/// For stand-ins of the transfer actor that hold no offers (the simulator's
/// and the unit tests'): the real one holds each offer and serves the pull
/// itself (actors/src/transfer_pull.cpp); a stand-in gives every offer back
/// to its node (`node`, from node_attach_atom) and lets the node serve
/// every pull (the want path: one hop more). Defined once, so that the
/// stand-ins keep the node's side of the protocol alike.
namespace offerless {

/// The node takes back an offer its transfer actor does not hold.
inline void give_back(const caf::actor& node, const proto::pull_offer& offer) {
  caf::anon_send(node, proto::node_offer_atom::value, offer.peer, offer.id);
}

/// The node serves a pull its transfer actor holds no offer for.
template<class Self>
caf::result<proto::node_report> pull_at_node(Self* self, const caf::actor& node,
                                             proto::node_request& req) {
  return self->delegate(caf::actor_cast<node_actor>(node),
                        proto::node_pull_atom::value, std::move(req));
}

} // namespace offerless

} // namespace kvferry
