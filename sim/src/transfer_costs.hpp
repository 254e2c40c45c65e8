// The fixed costs of one transfer part (the whole request, or one layer
// when layer-wise) besides its bytes and the network latency: the cost
// model both engines charge (docs/sim.md, "What is modelled", 4), in one
// place so that they agree.
#pragma once

#include <cmath>

#include "kvferry/runtime/topology.hpp"

namespace kvferry::sim {

/// A same-host copy is one kernel (`ipc_setup_us`, its per-block planning
/// being in the copy rate); a plugin part pays `message_us` per
/// `chunk_bytes` message and `block_us` per layer-block of its send plan.
inline double part_fixed_us(const topology::sim_spec& sim, bool ipc,
                            double part_bytes, double chunk_bytes,
                            double layer_block_bytes) {
  if (ipc)
    return sim.ipc_setup_us;
  return std::ceil(part_bytes / chunk_bytes) * sim.message_us +
         part_bytes / layer_block_bytes * sim.block_us;
}

} // namespace kvferry::sim
