// The node actor's state (actors/src/node_actor.cpp): its peers and the
// requests open with each, keyed by (peer name, request id).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <caf/all.hpp>

#include "kvferry/actors/node_actor.hpp"
#include "kvferry/transport/gpu_event.hpp"

namespace kvferry {

using report_promise_t = caf::typed_response_promise<proto::node_report>;
using request_key = std::pair<std::string, std::uint64_t>; // (peer, id)

/// A node this node has exchanged hellos with.
struct node_peer {
  node_actor node;
  proto::endpoint transfer;
  kv_layout layout;
  bool one_sided = false; // pulls are CUDA IPC reads (why_not_one_sided)
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
  std::vector<bool> ready;           // layerwise: layer l written
  std::vector<std::uint64_t> events; // ... once this CUDA event is (0: is)
  std::vector<bool> posted;          // part p posted (p = 0, or layer + 1)
  std::uint32_t parts = 1;
  std::uint32_t parts_done = 0;
  std::uint64_t bytes = 0;
  std::int64_t start_ns = 0; // first send order posted
  std::int64_t end_ns = 0;   // last one finished
  bool one_sided = false;    // the puller reads it; ready notes, no sends
  bool blocks_told = false;  // one-sided: src_blocks went with a ready note
  // Offered to the puller (node_offer): its node orders our transfer actor
  // itself and says done; a want instead (it pulled first) posts here.
  bool offered = false;
};

/// One-sided pull, prefill side: a ready note held until the layer's CUDA
/// event (not an interprocess one) completed.
struct held_note {
  request_key key;
  std::uint32_t part = 0;
  std::uint64_t event = 0;
};

/// A request whose bytes land in this cache: a receive or a pull. It may
/// exist before the caller asked for it (the sender's parts came first).
struct incoming_request {
  std::optional<report_promise_t> promise; // the caller's, once it asked
  caf::error failure;                      // failed before the caller asked
  std::uint32_t parts = 0;                 // 0: no part note yet
  std::uint32_t parts_done = 0;
  std::vector<bool> recv_posted; // part p's recv order is posted
  // Orders out to our transfer actor (recv orders, reads; transfer ids)
  // that may still write into the caller's blocks. A failure reaches the
  // caller only once none is left (settle_order), so that no byte lands
  // in blocks the caller took back (a peer gone is the exception: its
  // bytes cannot come, and our transfer actor drops its channel).
  std::set<std::uint64_t> unsettled;
  std::uint64_t bytes = 0;
  std::int64_t gpu_copy_ns = 0; // CUDA IPC, summed over parts
  std::int64_t gpu_queued_ns = 0;
  std::int64_t start_ns = std::numeric_limits<std::int64_t>::max();
  std::int64_t end_ns = 0;
  // One-sided pull (read over CUDA IPC): the blocks of both sides, and the
  // parts known ready (part, event text) but not read yet.
  bool one_sided = false;
  // Plugin pull: the prefill offered it, and the offer went on to our
  // transfer actor (hand_offer), which serves the caller's pull (a pull
  // that comes here is delegated there); or a want went first (the prefill
  // plans and posts; its offer is then moot).
  bool offered = false;
  bool wanted = false;
  // Answered by our transfer actor, which tells us aside (node_answered);
  // this entry stays until then: an offered pull from the moment its offer
  // went there, or a receive of one part no part note came for yet, once
  // the caller asked (its request went there with the recv order). A
  // failure goes there too (settle_atom with the reason), and reaches the
  // caller once the order settled (or when it pulls, if it has not yet).
  bool transfer_answers = false;
  std::vector<std::uint64_t> src_blocks; // the prefill's (one-sided)
  std::vector<std::uint64_t> dst_blocks; // ours, once the caller pulled
  std::vector<std::pair<std::uint32_t, std::string>> ready;
  // When a peer's note (a part, an offer, a ready note, a failure) made
  // this entry before the caller asked: an entry nobody claims within the
  // request timeout is dropped (sweep_unclaimed), so a request the caller
  // never takes (a refused credit request, an advertise never pulled)
  // leaves nothing behind.
  caf::actor_clock::time_point noted{};

  /// The caller asked for it (its answer comes from us or our transfer
  /// actor).
  bool claimed() const { return promise || transfer_answers; }
};

struct node_state {
  static inline const char* name = "kvferry.node";
  node_actor_config cfg;
  std::map<std::string, node_peer> peers;
  // Why each peer that went is gone, until a peer of that name connects
  // again: an order the caller made while the peer was still there can
  // reach this actor after its down message, and must fail with that
  // reason (peer_down), not as "no such peer". At most gone_limit names.
  std::map<std::string, caf::error> gone;
  static constexpr std::size_t gone_limit = 256;
  std::map<request_key, outgoing_request> out;
  std::map<request_key, incoming_request> in;
  // Notifications: delivered to `listener`, kept until there is one.
  caf::actor listener;
  std::deque<std::pair<std::string, std::string>> notes;
  std::vector<extent> scratch; // plan_kv's output, reused
  // One-sided pulls: the prefill's notes waiting for a CUDA event (polled
  // while any wait), and the decode's interprocess events opened once each.
  std::vector<held_note> held;
  bool polling = false;
  bool sweeping = false; // a sweep of unclaimed incoming entries is due
  std::unique_ptr<transport::ipc_event_cache> events =
      std::make_unique<transport::ipc_event_cache>();
};

} // namespace kvferry
