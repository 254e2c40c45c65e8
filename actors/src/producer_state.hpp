// The producer's state (private to actors/; the actor: producer.cpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <caf/actor_addr.hpp>
#include <caf/actor_clock.hpp>
#include <caf/typed_response_promise.hpp>

#include "kv_pattern_workers.hpp"
#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/app.hpp"
#include "kvferry/actors/kv_layout.hpp"
#include "kvferry/actors/kv_pattern.hpp"
#include "kvferry/actors/plan.hpp"

namespace kvferry::producer_detail {

using clock_type = std::chrono::steady_clock;

// One request in flight at the producer.
struct request_ctx {
  proto::prefill_request req;
  caf::actor router;         // who asked: the consumer cancels when it is gone
  std::string consumer_name; // known once granted
  std::uint32_t bpl = 0;
  std::uint32_t parts = 1;
  std::vector<std::uint64_t> ids;    // pool block ids (node requests)
  std::vector<std::uint64_t> blocks; // their layer-blocks' offsets, by layer
  caf::typed_response_promise<proto::ready_report> promise;
  std::uint64_t hash = 0;
  bool hashed = false; // only host memory is hashed (on the CPU)
  std::uint64_t bytes = 0;
  std::int64_t compute_ns = 0;  // fill (and hash)
  std::int64_t fill_gpu_ns = 0; // the fill kernels' GPU time
  proto::producer_times at;     // for the consumer's report (breakdown)
  clock_type::time_point send_start;
  caf::actor_clock::time_point park_deadline; // while waiting for blocks
  std::int64_t transfer_ns = 0;
  std::uint32_t sends_left = 0; // node requests that may still read blocks
  bool filling = false;         // a pattern worker still writes the blocks
  bool delegated = false; // the consumer answers the router (credit, pull)
  bool failed = false;
  bool released = false;
};
using ctx_ptr = std::shared_ptr<request_ctx>;

// Destination blocks one consumer lent us: we may write into them without
// asking.
struct credit_line {
  proto::endpoint receiver;
  std::vector<std::uint64_t> blocks;
  bool asked = false;
  bool reserve_pending = false;
  // The last reserve lent nothing: ask again only after blocks come back,
  // so a consumer at its lending cap is not asked on every request.
  bool dry = false;
};

// A consumer's node as our node knows it (met by node_connect on the first
// request to it); requests to it wait for the hello.
struct consumer_node {
  std::string name; // empty until the hello is answered
  bool connecting = false;
  std::vector<ctx_ptr> waiting;
};

struct producer_state {
  app_config cfg;
  kv_layout layout;                    // the pool (pool_layout)
  std::unique_ptr<block_pool> pool;    // of block ids (block_bytes 1)
  std::unique_ptr<kv_pattern> pattern; // "prefill" on host or GPU memory
  // Whole requests are filled (and hashed) there, off this actor's thread;
  // empty for a model-only region (then `pattern`, which does nothing).
  pattern_detail::pattern_workers workers;
  std::unordered_map<caf::actor_addr, credit_line> credit; // by consumer
  // Requests waiting for source blocks (see on_prefill), oldest first.
  std::deque<ctx_ptr> parked;
  bool park_timer_armed = false;
  // Requests not yet answered, to fail them at once when their consumer
  // dies (down message) or leaves the directory.
  std::unordered_map<std::uint64_t, ctx_ptr> active;
  std::unordered_set<caf::actor_addr> monitored;
  // Decode workers' names by app actor, from the directory (joined): a
  // request names its consumer before any grant, and a consumer's `left`
  // fails its requests even when no down message can reach us (its node
  // died before we ever connected to it).
  std::unordered_map<caf::actor_addr, std::string> consumer_names;
  std::unordered_map<caf::actor_addr, consumer_node> nodes; // by consumer
  static inline const char* name = "kvferry.producer";
};

using self_ptr = producer_actor::stateful_pointer<producer_state>;

} // namespace kvferry::producer_detail
