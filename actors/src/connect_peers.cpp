// Direct worker-to-worker control connections (see connect_peers.hpp):
// dialled explicitly, over TLS, instead of CAF's automatic connections.
#include "kvferry/actors/connect_peers.hpp"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/directory.hpp"
#include "kvferry/runtime/tls.hpp"

namespace kvferry {

std::vector<std::string> connect_peers(caf::actor_system& system,
                                       const std::vector<worker_info>& peers,
                                       caf::timespan timeout) {
  auto mm = runtime::control_middleman(system);
  caf::scoped_actor self{system};
  std::vector<std::string> unreached;
  // All requests first, so that the connections are set up in parallel and
  // the whole call takes one timeout at most.
  std::vector<std::pair<const worker_info*, std::string>> asked;
  using reply = decltype(self->request(mm, timeout, caf::connect_atom::value,
                                       std::string{}, uint16_t{0}));
  std::vector<reply> replies;
  for (auto& peer : peers) {
    auto it = peer.attributes.find(control_attribute);
    std::string host;
    uint16_t port = 0;
    if (it == peer.attributes.end() || parse_host_port(it->second, host, port))
      continue; // a tool, or a worker of an older version: nothing to dial
    asked.emplace_back(&peer, it->second);
    replies.push_back(
        self->request(mm, timeout, caf::connect_atom::value, host, port));
  }
  for (size_t i = 0; i < replies.size(); ++i) {
    const worker_info* peer = asked[i].first;
    const std::string& where = asked[i].second;
    replies[i].receive(
        [&](caf::node_id&, caf::strong_actor_ptr&, std::set<std::string>&) {
          spdlog::debug("connected to worker {} at {}", peer->name, where);
        },
        [&](caf::error& err) {
          spdlog::warn("cannot connect to worker {} at {}: {} (its messages "
                       "go through the directory)",
                       peer->name, where, render(err));
          unreached.push_back(peer->name);
        });
  }
  return unreached;
}

std::vector<std::string> connect_members(caf::actor_system& system,
                                         const directory_actor& dir,
                                         std::optional<worker_role> role,
                                         caf::timespan timeout) {
  caf::scoped_actor self{system};
  std::vector<worker_info> members;
  auto take = [&](std::vector<worker_info>& found) {
    members = std::move(found);
  };
  auto complain = [&](const caf::error& err) {
    spdlog::warn("listing the directory's workers to connect to failed: {}",
                 render(err));
  };
  if (role)
    self->request(dir, timeout, list_atom::value, *role)
        .receive(take, complain);
  else
    self->request(dir, timeout, list_atom::value).receive(take, complain);
  return connect_peers(system, members, timeout);
}

namespace {

// Detached: connect_peers blocks while it dials. A repeated dial of a
// connected peer is answered from the middleman's cache.
caf::behavior peer_linker(caf::event_based_actor* self, worker_role role,
                          caf::timespan timeout) {
  return {
      [self, role, timeout](joined_atom, const worker_info& peer) {
        if (peer.role == role)
          connect_peers(self->system(), {peer}, timeout);
      },
      [](left_atom, const std::string&, const caf::error&) {},
  };
}

} // namespace

// Spawned with arguments: CAF 0.17.6 binds a null reference (UBSan) when a
// function actor takes none.
caf::actor spawn_peer_linker(caf::actor_system& system, worker_role role,
                             caf::timespan timeout) {
  return system.spawn<caf::detached>(peer_linker, role, timeout);
}

} // namespace kvferry
