// The node actor's state (actors/src/node_actor.cpp): its peers and the
// requests open with each, keyed by (peer name, request id).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <caf/all.hpp>

#include "kvferry/actors/node_actor.hpp"

namespace kvferry {

using report_promise_t = caf::typed_response_promise<proto::node_report>;

/// A node this node has exchanged hellos with.
struct node_peer {
  node_actor node;
  proto::endpoint transfer;
  kv_layout layout;
};

/// A request whose bytes leave this cache: a send (push) or an advertise
/// (pull; its destination blocks come with the puller's want).
struct outgoing_request {
  std::optional<report_promise_t> promise; // none: a want came first
  bool advertised = false;                 // the caller's part is known
  bool want_known = false;                 // destination blocks known
  bool layerwise = false;
  std::vector<std::uint64_t> src_blocks;
  std::vector<std::uint64_t> dst_blocks;
  std::vector<bool> ready;  // layerwise: layer l written
  std::vector<bool> posted; // part p posted (p = 0, or layer + 1)
  std::uint32_t parts = 1;
  std::uint32_t parts_done = 0;
  std::uint64_t bytes = 0;
  std::int64_t start_ns = 0; // first send order posted
  std::int64_t end_ns = 0;   // last one finished
};

/// A request whose bytes land in this cache: a receive or a pull. It may
/// exist before the caller asked for it (the sender's parts came first).
struct incoming_request {
  std::optional<report_promise_t> promise; // the caller's, once it asked
  caf::error failure;                      // failed before the caller asked
  std::uint32_t parts = 0;                 // 0: no part note yet
  std::uint32_t parts_done = 0;
  std::uint64_t bytes = 0;
  std::int64_t start_ns = std::numeric_limits<std::int64_t>::max();
  std::int64_t end_ns = 0;
};

using request_key = std::pair<std::string, std::uint64_t>; // (peer, id)

struct node_state {
  static inline const char* name = "kvferry.node";
  node_actor_config cfg;
  std::map<std::string, node_peer> peers;
  std::map<request_key, outgoing_request> out;
  std::map<request_key, incoming_request> in;
  // Notifications: delivered to `listener`, kept until there is one.
  caf::actor listener;
  std::deque<std::pair<std::string, std::string>> notes;
  std::vector<extent> scratch; // plan_kv's output, reused
};

} // namespace kvferry
