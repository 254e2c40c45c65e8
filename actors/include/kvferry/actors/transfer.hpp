// The transfer actor's configuration, data path and factory (the interface:
// transfer_actor in actors.hpp; the actor: actors/src/transfer*.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/local_actor.hpp>

#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/memory_region.hpp"

namespace kvferry::transport {
class plugin;
}

namespace kvferry {

struct transfer_config {
  std::string name; // the worker's name: peers know us by it
  std::shared_ptr<transport::plugin> net;
  // Plugin device indexes (NICs): comm k of every channel is on
  // devices[k mod n], so one transfer is striped over all of them
  // (transport::channel_listener). start_worker fills it in (worker.hpp).
  std::vector<int> devices{0};
  // The memory transfers read and write: a region table (plan.hpp) of
  // `region` (region 0, offsets as they are) and `more_regions` (region i at
  // virtual offset i << 40), e.g. a serving stack's per-layer KV tensors
  // wrapped in place (memory_region::wrap). Each region is registered once
  // per channel. Same-host peers use CUDA IPC when every region of both
  // tables is GPU memory that CUDA IPC can share (docs/gpu.md).
  std::shared_ptr<memory_region> region;
  std::vector<std::shared_ptr<memory_region>> more_regions;
  std::uint32_t comms_per_peer = 2; // comm pairs per channel (striped)
  std::uint64_t chunk_bytes = std::uint64_t{4} << 20;
  // GPU memory over a plugin without NCCL_PTR_CUDA: pinned bounce slots of
  // chunk_bytes per comm (see transport::channel_options).
  std::uint32_t staging_slots = 4;
  std::uint32_t open_timeout_ms = 10000; // channel setup with a peer
  // Same-host GPU peers: copy over CUDA IPC when both regions are on GPUs
  // and both actors take IPC (worker --transport ipc); else the plugin.
  bool use_ipc = true;
  std::string host_id; // local_host_id(); empty: never IPC
  // Prefill workers: open a same-host decode worker's IPC handle when the
  // directory says it joined, not on its first transfer.
  bool map_peers_ahead = false;
  // Quarantine the destination of a timed-out transfer that no announcement
  // covered (a CUDA IPC copy may still be writing it) until its sender
  // answers or is gone. Automatic when this actor advertises an IPC handle;
  // tests without a GPU force it on.
  bool force_ipc_quarantine = false;
  // Its own thread (the default). kvferry::endpoint runs it on the
  // scheduler instead: its actor system stops with the endpoint, and CAF
  // 0.17's shutdown can wait forever for a detached actor that another node
  // referred to (actor-framework issues #1110, #1196).
  bool detached = true;
};

/// How a transfer actor moves bytes to a peer.
enum class data_path { plugin, cuda_ipc };

/// CUDA IPC when this actor takes IPC (`use_ipc`), its region is GPU
/// memory, the peer runs on the same host (equal, non-empty host_id) and
/// advertises an IPC handle (its region is GPU memory and it takes IPC too);
/// the plugin otherwise.
data_path choose_data_path(bool use_ipc, memory_kind local,
                           const std::string& host_id,
                           const proto::endpoint& peer);

/// Whether a transfer actor of `cfg` (its region of kind `local`) opens the
/// IPC handles of `peer`'s GPU pool as soon as the directory says `peer`
/// joined: with map_peers_ahead (prefill workers), for a decode worker on the
/// same host when this actor takes IPC and its own pool is GPU memory.
bool maps_ahead(const transfer_config& cfg, memory_kind local,
                const worker_info& peer);

/// A stand-in transfer actor's answer to an order_batch (the simulator's,
/// tests' fakes, which move no bytes): every order of `b` settled with an
/// error naming `who`, sent to the batch's sender (`self`'s current one).
void refuse_orders(caf::local_actor* self, const proto::order_batch& b,
                   const std::string& who);

/// Spawns a transfer actor (on its own thread unless cfg.detached is off).
transfer_actor spawn_transfer(caf::actor_system& sys, transfer_config cfg);

} // namespace kvferry
