// The app actors' configuration and factories: the producer (a prefill
// worker's app) and the consumer (a decode worker's app). Their interfaces:
// producer_actor and consumer_actor in actors.hpp.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <caf/actor_system.hpp>

#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/memory_region.hpp"
#include "kvferry/runtime/kv_geometry.hpp"

namespace kvferry {

struct app_config {
  std::string name;
  kv_geometry geometry;
  std::shared_ptr<memory_region> region; // pool_blocks * layer_block_bytes
  transfer_actor transfer;
  proto::endpoint self;             // this worker's transfer endpoint
  std::uint32_t timeout_ms = 10000; // every remote request
  bool layerwise = false; // producer: ship layer by layer unless asked
  bool pull = false;      // producer: advertise instead of pushing
  // Producer: destination blocks to ask each consumer to lend ahead of time
  // (credit; 0 disables it and every request negotiates). The consumer caps
  // the loan, so the default just means "as much as you lend".
  std::uint64_t credit_blocks = std::uint64_t{1} << 32;
  // Consumer: the most of its pool (percent) it lends to one producer. Lent
  // blocks serve only that producer's requests, so with P producers up to
  // P * lend_percent of the pool is spoken for; 0 lends nothing.
  std::uint32_t lend_percent = 25;
  // Back-pressure: a request short of blocks (consumer: free pool blocks for
  // allocate/advertise; producer: source blocks) waits in arrival order
  // instead of failing, served as blocks come back. At most queue_limit
  // requests wait at once, each at most queue_wait_ms; beyond either it
  // fails naming the worker, the request and the reason. The default wait
  // is the default timeout_ms: as long as the transfer holding the blocks
  // may take. A producer allows a consumer queue_wait_ms more for each
  // allocate/advertise reply.
  std::uint32_t queue_limit = 256;
  std::uint32_t queue_wait_ms = 10000;
  // Consumer: keep a request's blocks after answering `ready` until told it
  // left decode (`decoded_atom`), as a serving engine holds the KV while it
  // decodes; kvferry itself does no decode, so only the simulator's decode
  // model sets it (docs/sim.md, "The actors engine").
  bool keep_blocks_until_decoded = false;
};

producer_actor spawn_producer(caf::actor_system& sys, app_config cfg);
consumer_actor spawn_consumer(caf::actor_system& sys, app_config cfg);

/// Transfer ids: request id and part (layer when layerwise, else 0).
constexpr std::uint64_t transfer_id_of(std::uint64_t request_id,
                                       std::uint32_t part) {
  return (request_id << 12) | part;
}
constexpr std::uint32_t max_parts = 4096;

} // namespace kvferry
