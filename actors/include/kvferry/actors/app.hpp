// The app actors' configuration and factories: the producer (a prefill
// worker's app) and the consumer (a decode worker's app). Their interfaces:
// producer_actor and consumer_actor in actors.hpp.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <caf/actor_system.hpp>

#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/kv_layout.hpp"
#include "kvferry/actors/memory_region.hpp"
#include "kvferry/runtime/kv_geometry.hpp"

namespace kvferry {

struct app_config {
  std::string name;
  kv_geometry geometry;
  std::shared_ptr<memory_region> region; // pool_blocks * layer_block_bytes
  transfer_actor transfer;
  proto::endpoint self; // this worker's transfer endpoint
  // The worker's node actor over `region` (described by pool_layout, named
  // as the worker): every byte of a request moves through it. The app links
  // to it (one dies, both do) and forwards peers' hellos to it.
  node_actor node;
  std::uint32_t timeout_ms = 10000; // every remote request
  bool layerwise = false; // producer: ship layer by layer unless asked
  bool pull = false;      // producer: advertise instead of pushing
  // Producer: destination blocks (pool block ids: of every layer) to ask
  // each consumer to lend ahead of time (credit; 0 disables it and every
  // request negotiates). The consumer caps
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

/// The KV pool of `region_bytes` as a kv_layout: block-major, one block id
/// = one block of tokens across all layers (a layer's K and V of it side by
/// side: one layer-block of `g`), so the pool, its credit and its grants
/// count ids and a layer of a request is one part of a layerwise request.
/// Holds region_bytes / (layers x layer-block bytes) ids. Throws
/// std::invalid_argument when that is none.
kv_layout pool_layout(const kv_geometry& g, std::uint64_t region_bytes);

/// The layer-block offsets (in the pool's region) of blocks `ids`, layer by
/// layer: element l * ids.size() + b is layer l of block ids[b] (the order
/// kv_pattern and hash_blocks take).
std::vector<std::uint64_t>
layer_block_offsets(const kv_layout& pool,
                    const std::vector<std::uint64_t>& ids);

producer_actor spawn_producer(caf::actor_system& sys, app_config cfg);
consumer_actor spawn_consumer(caf::actor_system& sys, app_config cfg);

/// Transfer ids: request id and part (layer when layerwise, else 0).
constexpr std::uint64_t transfer_id_of(std::uint64_t request_id,
                                       std::uint32_t part) {
  return (request_id << 12) | part;
}
constexpr std::uint32_t max_parts = 4096;

} // namespace kvferry
