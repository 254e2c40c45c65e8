// What kvferry::endpoint's calling threads and its control actor share
// (private to engine/). The calling threads never block on the actor for a
// transfer: they enter an operation here as pending, hand the order to the
// control actor, and read its completion here (poll, wait).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include "kvferry/actors/actors.hpp"
#include "kvferry/endpoint.hpp"
#include "kvferry/runtime/node_shelf.hpp"

namespace kvferry::engine_detail {

/// Transfer ids chosen by the receiving side (reads and two-sided receives)
/// have this bit set, those chosen by the sender (writes) do not: both land
/// in the receiver's table under the sender's name and must never collide.
constexpr std::uint64_t receiver_chosen = std::uint64_t{1} << 63;

struct op_entry {
  bool done = false;
  std::uint64_t bytes = 0;
  status error;                      // not ok: failed
  std::optional<transfer_path> path; // set by the control actor
};

struct conn_entry {
  std::string peer;
  std::uint64_t instance = 0;
  status down; // not ok once the peer is gone
};

struct shared_state {
  std::mutex mu;
  std::condition_variable changed;
  std::unordered_map<xfer_id, op_entry> ops;
  // The nodes of reported ops, for the next ones (an allocation per op
  // otherwise).
  node_shelf<std::unordered_map<xfer_id, op_entry>> op_nodes;
  std::unordered_map<conn_id, conn_entry> conns;
  std::deque<conn_id> accepted;
  std::vector<notification> notes;
  // The local region table: index -> bytes (0: removed; region 0 is the
  // transfer actor's placeholder).
  std::vector<std::uint64_t> region_sizes;
  endpoint_stats stats;

  void complete(xfer_id id, std::uint64_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu);
      auto i = ops.find(id);
      if (i == ops.end() || i->second.done || !i->second.error.ok())
        return;
      i->second.done = true;
      i->second.bytes = bytes;
      bool ipc = i->second.path == transfer_path::cuda_ipc;
      ++(ipc ? stats.ipc_transfers : stats.plugin_transfers);
      (ipc ? stats.ipc_bytes : stats.plugin_bytes) += bytes;
    }
    changed.notify_all();
  }
  void set_path(xfer_id id, transfer_path path) {
    std::lock_guard<std::mutex> lock(mu);
    if (auto i = ops.find(id); i != ops.end())
      i->second.path = path;
  }
  void fail(xfer_id id, status why) {
    {
      std::lock_guard<std::mutex> lock(mu);
      auto i = ops.find(id);
      if (i == ops.end() || i->second.done || !i->second.error.ok())
        return;
      i->second.error = std::move(why);
    }
    changed.notify_all();
  }
};

/// The control actor: connections, the two-sided matching, notifications,
/// and each operation's orders to the transfer actors (endpoint_control.cpp).
struct control_config {
  std::string name;
  std::uint64_t instance = 0;
  transfer_actor transfer;
  proto::endpoint self_ep; // our transfer actor's endpoint
  std::uint32_t timeout_ms = 30000;
  std::shared_ptr<shared_state> shared;
};

caf::actor spawn_control(caf::actor_system& sys, control_config cfg);

} // namespace kvferry::engine_detail
