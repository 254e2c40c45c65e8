// Directory mode of a node (node_directory.hpp): the membership keeper
// registers the node as workers are registered, and an agent says hello to
// every other node the directory announces.
#include "node_directory.hpp"

#include <chrono>
#include <string>
#include <utility>

#include <caf/all.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kvferry/actors/connect_peers.hpp"
#include "kvferry/actors/directory.hpp"
#include "kvferry/actors/worker.hpp"
#include "kvferry/runtime/error.hpp"

namespace kvferry::detail {

namespace {

caf::error node_error(ec code, const node_options& opts,
                      const std::string& what) {
  return make_error(code, fmt::format("node {}: {}", opts.name, what));
}

// What the directory and the other nodes learn: the node actor as the app,
// its transfer actor, where it is published (peers dial it directly).
worker_info describe_node(const node_options& opts, const node_handles& h,
                          const proto::endpoint& ep) {
  worker_info info;
  info.name = opts.name;
  info.host = local_hostname();
  info.host_id = ep.host_id;
  info.gpu = opts.cache.gpu;
  info.plugin = ep.plugin;
  info.ipc_capable = !ep.ipc_handle.empty();
  info.transfer = caf::actor_cast<caf::actor>(h.transfer);
  info.app = caf::actor_cast<caf::actor>(h.node);
  const auto& l = opts.cache.layout;
  info.attributes = {
      {kind_attribute, node_kind}, // is_node: what other nodes greet
      {"memory", describe_memory(opts.cache.gpu)},
      {"layout", l.name()},
      {"layers", std::to_string(l.layers())},
      {"block_bytes", std::to_string(l.block_bytes())},
      {"num_blocks", std::to_string(l.num_blocks())},
      {control_attribute, control_address(opts.bind, h.port)},
  };
  return info;
}

struct agent_state {
  static inline const char* name = "kvferry.node_directory_agent";
  std::string self_name;
  node_actor node;
  caf::actor keeper;
  caf::timespan timeout;
};

// Detached: connect_peers blocks while it dials. Each node the directory
// announces gets a direct control connection, then our hello (the node
// actor's connect); both nodes of a pair do this, and a second hello only
// renews the first. `left` goes to the node actor itself (a watcher too).
// When the node actor ends, so do the keeper and this agent.
caf::behavior agent(caf::stateful_actor<agent_state>* self,
                    std::string self_name, node_actor node,
                    caf::timespan timeout) {
  self->state.self_name = std::move(self_name);
  self->state.node = node;
  self->state.timeout = timeout;
  self->monitor(node);
  self->set_down_handler([self](const caf::down_msg&) {
    if (self->state.keeper)
      self->send_exit(self->state.keeper, caf::exit_reason::user_shutdown);
    // The middleman put this detached actor in the registry when its handle
    // went to the directory (a watcher); left there it blocks
    // ~actor_system in CAF 0.17 (actor-framework issue #1110).
    self->system().registry().erase(self->id());
    self->quit();
  });
  return {
      [self](caf::put_atom, caf::actor keeper) {
        self->state.keeper = std::move(keeper);
      },
      [self](joined_atom, const worker_info& peer) {
        auto& st = self->state;
        if (peer.name == st.self_name || !peer.app || !is_node(peer))
          return;
        connect_peers(self->system(), {peer}, st.timeout);
        self->request(st.node, st.timeout, proto::node_connect_atom::value,
                      peer.app)
            .then(
                [self](const std::string& name) {
                  spdlog::debug("node {}: met node '{}' through the directory",
                                self->state.self_name, name);
                },
                [self, name = peer.name](const caf::error& err) {
                  spdlog::warn("node {}: cannot meet node '{}' of the "
                               "directory: {}",
                               self->state.self_name, name, render(err));
                });
      },
      [](left_atom, const std::string&, const caf::error&) {},
  };
}

// Waits for the keeper's first registration (bounded by opts.timeout).
caf::error await_registration(caf::actor_system& sys, const node_options& opts,
                              const membership_actor& keeper) {
  caf::scoped_actor self{sys};
  caf::error err;
  self->request(keeper, opts.timeout, caf::wait_for_atom::value)
      .receive([](caf::ok_atom) {}, [&](caf::error& e) { err = std::move(e); });
  if (!err || err != caf::sec::request_timeout)
    return err;
  std::string line = "no answer";
  self->request(keeper, std::chrono::seconds(1), caf::get_atom::value)
      .receive([&](std::string& l) { line = std::move(l); },
               [](const caf::error&) {});
  // The keeper retries a taken name (it may be this node's previous
  // process, not yet dropped) and a directory of another build (it may be
  // upgraded); a node starting now wants to know which.
  auto says = [&line](ec code) {
    return line.find(std::string{"kvferry."} + to_string(code)) !=
           std::string::npos;
  };
  auto code = says(ec::duplicate)  ? ec::duplicate
              : says(ec::mismatch) ? ec::mismatch
                                   : ec::unreachable;
  return node_error(code, opts,
                    fmt::format("not registered with the directory within {} "
                                "ms: {}",
                                opts.timeout.count(), line));
}

} // namespace

caf::expected<membership_actor> join_directory(caf::actor_system& sys,
                                               const node_options& opts,
                                               const node_handles& h) {
  std::string host;
  std::uint16_t port = 0;
  if (auto err = parse_host_port(opts.directory, host, port))
    return node_error(
        ec::invalid_argument, opts,
        fmt::format("directory '{}': {}", opts.directory, render(err)));
  proto::endpoint ep;
  caf::error failure;
  caf::scoped_actor self{sys};
  self->request(h.transfer, opts.timeout, proto::endpoint_atom::value)
      .receive([&](proto::endpoint& e) { ep = std::move(e); },
               [&](caf::error& err) { failure = std::move(err); });
  if (failure)
    return failure;
  auto helper = sys.spawn<caf::detached>(agent, opts.name, h.node,
                                         caf::timespan{opts.timeout});
  membership_config mc;
  mc.info = describe_node(opts, h, ep);
  mc.secret = opts.secret;
  mc.directory_name = opts.directory;
  mc.watchers = {caf::actor_cast<caf::actor>(h.transfer),
                 caf::actor_cast<caf::actor>(h.node), helper};
  mc.dialer = spawn_worker_dialer(sys, host, port, std::nullopt);
  auto keeper = spawn_membership(sys, std::move(mc));
  self->send(helper, caf::put_atom::value, caf::actor_cast<caf::actor>(keeper));
  if (auto err = await_registration(sys, opts, keeper)) {
    self->send_exit(keeper, caf::exit_reason::user_shutdown);
    self->send_exit(helper, caf::exit_reason::user_shutdown);
    return err;
  }
  return keeper;
}

} // namespace kvferry::detail
