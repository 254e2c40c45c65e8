// The consumer's state (private to actors/; the actor: consumer.cpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_addr.hpp>
#include <caf/actor_clock.hpp>
#include <caf/error.hpp>
#include <caf/typed_response_promise.hpp>

#include "kv_pattern_workers.hpp"
#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/app.hpp"
#include "kvferry/actors/kv_layout.hpp"
#include "kvferry/actors/kv_pattern.hpp"
#include "kvferry/actors/plan.hpp"
#include "kvferry/runtime/metrics.hpp"

namespace kvferry::consumer_detail {

using clock_type = std::chrono::steady_clock;

struct request_ctx {
  std::uint64_t request_id = 0;
  std::string producer; // its name, as the request gave it
  caf::actor_addr from; // the producer actor that asked (allocate/advertise)
  caf::actor_addr requester; // who waits for the answer (see cancel_requests)
  // Pull: the producer that advertised it, told (abort) if it fails here;
  // empty once told, or when it need not be.
  caf::actor advertiser;
  std::vector<std::uint64_t> blocks; // pool block ids (pool_layout)
  std::uint32_t pending = 0;         // replies still expected from our node
  std::uint64_t bytes = 0;
  caf::error failure;
  std::optional<proto::arrival_notice> notice;
  std::optional<caf::typed_response_promise<proto::ready_report>> promise;
  // The data window over all parts, from the transfer actor's recv reports
  // (steady_clock ns of this process).
  std::int64_t first_known_ns = std::numeric_limits<std::int64_t>::max();
  std::int64_t landed_ns = 0;
  // CUDA IPC, summed over parts: launch to kernel start, kernel GPU time.
  std::int64_t gpu_queued_ns = 0;
  std::int64_t gpu_copy_ns = 0;
  std::int64_t producer_compute_ns = 0;  // credit and pull: fill + hash there
  std::int64_t producer_fill_gpu_ns = 0; // credit and pull: its fill kernel
  // For the report's breakdown (steady_clock ns): when the request reached
  // this consumer (before any wait for blocks) and when its verification
  // was handed to a pattern worker.
  std::int64_t opened_ns = 0;
  std::int64_t verify_sent_ns = 0;
  std::uint32_t loan_id = 0; // blocks return to this loan; 0: to the pool
  bool answered = false;     // promise already delivered (abort)
  bool released = false;
  bool orphaned = false;  // its producer is gone: no `arrived` will come
  bool verifying = false; // a pattern worker checks its blocks
  // keep_blocks_until_decoded: its `decoded` came before its answer (the
  // simulator's decode model hears the last byte land before the producer's
  // `arrived` reaches this actor), so its blocks go back at the answer.
  bool decoded = false;
  // CUDA IPC quarantine: failed parts whose settle the transfer actor has
  // not answered yet, and whether the blocks wait for them (counted in
  // quarantined_blocks).
  std::uint32_t unsettled = 0;
  bool quarantined = false;
  clock_type::time_point quarantined_since;
  // Last resort (see expire_requests): by then the request has failed or
  // finished, whatever message went missing.
  caf::actor_clock::time_point deadline;
};
using ctx_ptr = std::shared_ptr<request_ctx>;

// A request that found too few free blocks: it waits, in arrival order,
// until they come back (start) or its wait runs out (fail).
struct waiter {
  std::uint64_t request_id = 0;
  std::uint64_t blocks = 0;
  std::string producer;
  caf::actor_addr from;
  caf::actor_addr requester;
  caf::actor_clock::time_point deadline;
  std::int64_t arrived_ns = 0; // steady_clock: request_ctx::opened_ns
  std::function<void(const ctx_ptr&)> start; // on its freshly taken blocks
  std::function<void(caf::error)> fail;
};

// Blocks lent to one producer. Each lent block is in one of three places:
// held by the producer, inside a request it delegated here, or freed and
// waiting in `returning` to go back.
struct loan {
  std::string producer;
  caf::actor producer_actor;
  std::uint64_t lent = 0;
  std::uint64_t held = 0;               // by the producer, as far as we know
  std::vector<std::uint64_t> returning; // capacity reserved when lending
  bool alive = true;
};

struct consumer_state {
  app_config cfg;
  kv_layout layout;                    // the pool (pool_layout)
  std::unique_ptr<block_pool> pool;    // of block ids (block_bytes 1)
  std::unique_ptr<kv_pattern> pattern; // verifies GPU memory on the GPU
  // Requests are verified there, off this actor's thread; empty for a
  // model-only region (then `pattern`, which does nothing).
  pattern_detail::pattern_workers workers;
  std::unordered_map<std::uint64_t, ctx_ptr> requests;
  // keep_blocks_until_decoded: requests being verified or answered whose
  // `decoded` has not come yet (they hold their blocks until it does).
  std::unordered_map<std::uint64_t, ctx_ptr> decoding;
  std::vector<loan> loans; // loan id = index + 1; ended loans stay, !alive
  // Per pool block: the loan it belongs to (0: not lent), and whether it
  // is inside a delegated request right now. Sized once, when the consumer
  // lends at all (lend_percent > 0; else empty): checking and moving lent
  // blocks allocates nothing.
  std::vector<std::uint32_t> loan_of_block;
  std::vector<bool> block_in_request;
  std::deque<waiter> queue; // back-pressure, oldest first
  // One sweep message (sweep_atom) serves the queue's waits and the
  // requests' deadlines; timer_at: when the earliest one pending fires.
  bool timer_armed = false;
  caf::actor_clock::time_point timer_at;
  // Requests that failed before anyone could be told (a push request whose
  // producer never sent `arrived`): a late `arrived` gets the reason.
  std::deque<std::pair<std::uint64_t, caf::error>> failed_unanswered;
  // Producer actors that sent allocate/advertise, monitored once each.
  std::unordered_map<caf::actor_addr, std::string> producers;
  // Requesters (routers) of open requests, monitored once each.
  std::unordered_set<caf::actor_addr> requesters;
  proto::consumer_stats stats;
  metrics::gauge* quarantined_gauge = &metrics::registry::global().get_gauge(
      "kvferry_ipc_quarantined_blocks",
      "Pool blocks of failed requests held out of use until no CUDA IPC copy "
      "can still write into them");
  ~consumer_state() {
    quarantined_gauge->sub(static_cast<std::int64_t>(stats.quarantined_blocks));
  }
  static inline const char* name = "kvferry.consumer";
};

using self_ptr = consumer_actor::stateful_pointer<consumer_state>;

} // namespace kvferry::consumer_detail
