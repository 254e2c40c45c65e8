// Every actor interface of kvferry, in one place (the Tenzir/Broker style):
// a typed handle per actor, its state struct and one factory function. The
// message types and atoms live in the runtime (kvferry/runtime/type_ids.hpp
// and protocol.hpp) so that every process registers the same ids.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/expected.hpp>
#include <caf/fwd.hpp>
#include <caf/replies_to.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "kvferry/actors/memory_region.hpp"
#include "kvferry/runtime/directory_types.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/kv_geometry.hpp"
#include "kvferry/runtime/protocol.hpp"
#include "kvferry/runtime/type_ids.hpp"

namespace kvferry::transport {
class plugin;
}

namespace kvferry {

// ---- directory -------------------------------------------------------------
//
// One per deployment. Knows every worker's metadata (never bytes), answers
// lookups, pushes joins and leaves to watchers, and drops a worker whose
// app/transfer actor dies or whose lease runs out. Every request is answered
// with a value or an error (kvferry::ec); see docs/architecture.md.

/// The directory's interface.
using directory_actor = caf::typed_actor<
    // Registers `worker` under its name, authenticated by the deployment's
    // shared secret. Errors: unauthorized (wrong secret), duplicate (the name
    // is held by another live worker), invalid_argument (empty name, listen
    // handle not listen_handle_size bytes). Registering again with the same
    // app actor updates the entry. Renew before lease.duration passes.
    caf::replies_to<register_atom, worker_info, std::string>::with<lease>,
    // Extends the lease of (name, token). Errors: not_found, unauthorized.
    caf::replies_to<renew_atom, std::string, uint64_t>::with<caf::ok_atom>,
    // Removes (name, token); watchers get `left`. Errors: not_found,
    // unauthorized.
    caf::replies_to<leave_atom, std::string, uint64_t>::with<caf::ok_atom>,
    // One worker by name. Errors: not_found.
    caf::replies_to<lookup_atom, std::string>::with<worker_info>,
    // All workers, sorted by name.
    caf::replies_to<list_atom>::with<std::vector<worker_info>>,
    // The workers of one role, sorted by name.
    caf::replies_to<list_atom, worker_role>::with<std::vector<worker_info>>,
    // Subscribes `watcher` (any actor handling the two messages of
    // directory_watcher_actor): replies with the current members (sorted by
    // name); afterwards pushes (joined_atom, worker_info) and
    // (left_atom, std::string name, caf::error why). A dead watcher is dropped.
    caf::replies_to<watch_atom, caf::actor>::with<std::vector<worker_info>>,
    caf::replies_to<unwatch_atom, caf::actor>::with<caf::ok_atom>,
    // Internal: the lease timer of (name, token); a no-op if renewed since.
    caf::reacts_to<expire_atom, std::string, uint64_t>,
    // Internal: the stall watchdog's tick (see directory_options).
    caf::reacts_to<caf::tick_atom>>;

/// What a directory watcher must handle (pass it to `watch` as caf::actor,
/// e.g. caf::actor_cast<caf::actor>(self)).
using directory_watcher_actor =
    caf::typed_actor<caf::reacts_to<joined_atom, worker_info>,
                     caf::reacts_to<left_atom, std::string, caf::error>>;

struct directory_options {
  /// The deployment's shared secret; empty accepts every registration (the
  /// directory warns at start).
  std::string secret;
  /// How long a registration lives without `renew`.
  caf::timespan lease = std::chrono::seconds(10);
  /// The directory's own pause (SIGSTOP, a starved CPU) longer than this is
  /// its fault, not the workers': its timers and their renewals queue up
  /// alike. After one, every lease gets a full `lease` of grace instead of
  /// expiring. 0 turns the watchdog off.
  caf::timespan stall_tolerance = std::chrono::seconds(1);
};

struct directory_state {
  struct entry {
    worker_info info;
    uint64_t token = 0;
    /// When the lease runs out (actor clock: virtual time in tests).
    caf::actor_clock::time_point deadline;
    /// The last register or renew (`lease_age_ms` in list replies).
    caf::actor_clock::time_point renewed;
  };
  static inline const char* name = "kvferry.directory";
  directory_options options;
  std::unordered_map<std::string, entry> workers;
  std::vector<caf::actor> watchers;
  /// The stall watchdog: when it last ran, and the last stall it saw
  /// (its length and when the directory resumed).
  caf::actor_clock::time_point last_tick;
  caf::timespan last_stall{0};
  caf::actor_clock::time_point resumed;
};

using directory_stateful_pointer =
    directory_actor::stateful_pointer<directory_state>;

/// The directory actor's behaviour: spawn with
/// `system.spawn(kvferry::directory, options)`.
directory_actor::behavior_type directory(directory_stateful_pointer self,
                                         directory_options options);

/// Connects to a directory published by `kvferry directory` at host:port
/// through the middleman, retrying refused connections until `timeout`
/// passes. Errors: unreachable (naming host:port and the last cause),
/// mismatch (the actor there is not a directory of this version).
caf::expected<directory_actor>
connect_directory(caf::actor_system& system, const std::string& host,
                  uint16_t port,
                  caf::timespan timeout = std::chrono::seconds(10));

/// The worker_info attribute holding "HOST:PORT" where a worker publishes
/// its actors (over TLS unless the deployment opted out).
constexpr const char* control_attribute = "control";

/// Opens a direct control connection to each of `peers` that advertises a
/// control_attribute, all at once, each within `timeout`: messages to those
/// workers' actors then go straight to them instead of through the
/// directory's node (CAF's automatic connections are off: they would open a
/// plain listener on every interface). Returns the names of the peers not
/// reached, each logged at warn (their messages still travel through the
/// directory). Call from a thread, not from an actor's handler.
std::vector<std::string> connect_peers(caf::actor_system& system,
                                       const std::vector<worker_info>& peers,
                                       caf::timespan timeout);

/// connect_peers for the directory's current members (of `role` only, where
/// given). A failed listing is logged at warn and reaches nobody.
std::vector<std::string> connect_members(caf::actor_system& system,
                                         const directory_actor& dir,
                                         std::optional<worker_role> role,
                                         caf::timespan timeout);

/// A directory watcher (add it to the membership keeper's watchers) that
/// dials every member of `role` it hears of, on a thread of its own. The
/// dial before registering (connect_members) misses a peer that registers
/// at the same moment; whichever of the two registers second sees the other
/// here. Without a direct route, a pair's messages travel through the
/// directory, and the proxies they made die with it when it restarts.
caf::actor spawn_peer_linker(caf::actor_system& system, worker_role role,
                             caf::timespan timeout);

/// Parses "HOST:PORT" (as given to --directory). Errors: invalid_argument.
caf::error parse_host_port(const std::string& text, std::string& host,
                           uint16_t& port);

// ---- transfer, producer, consumer ------------------------------------------
//
// The three actors that move one request's KV cache (see docs/design and
// runtime/protocol.hpp for the messages):
//
// Push with credit (the steady state): each consumer lends each producer a
// reserve of destination blocks ahead of time (`reserve` -> `grant`, asked on
// first contact and again when short, never on a request's critical path).
// A request covered by that credit makes no negotiation round trip: the
// router's two hops, and one producer -> consumer hop that travels while the
// bytes do (beside the transfer actors' announcement):
//
//   router --prefill--> producer  (takes lent blocks, fills, orders sends)
//   producer --send--> transfer ==bytes==> transfer <--recv-- consumer
//   producer --incoming (delegates the router's request)--> consumer
//   consumer --ready--> router    (verified; the reply comes from the
//                                  consumer, not the producer)
//
// Freed blocks flow back to that producer's credit in batches (`credit`).
// A failed send after delegating: producer --abort--> consumer, which fails
// the router's request with it. A router must therefore watch its consumers
// too (the directory's `left`, as the demo does): a dead consumer's requests
// are answered by nobody. The ready report may also reach the router before
// the producer's transfer actor reported the send done, i.e. before the
// request's source blocks are free again: a producer short of blocks then
// waits for them (it fails only a request larger than its whole pool), so
// size its pool above the router's requests in flight to avoid the wait.
//
// Push without enough credit (the first request to a consumer, or credit
// short): the old negotiation, replies through the producer:
//
//   router --prefill--> producer --allocate--> consumer
//                       producer <--grant----- consumer
//   producer --send--> transfer ==bytes==> transfer <--recv-- consumer
//                       producer --arrived--> consumer --ready--> (router)
//
// Pull: producer --advertise--> consumer, which asks the producer's transfer
// actor to send into the blocks it allocated, verifies, and answers ready.

/// One per device, detached (it polls the plugin). The only code that calls
/// the plugin for its device.
using transfer_actor = caf::typed_actor<
    // This actor's endpoint (name, handle, plugin), for grants and adverts.
    caf::replies_to<proto::endpoint_atom>::with<proto::endpoint>,
    // Send extents of the local region to a peer; replies bytes sent.
    caf::replies_to<proto::send_atom, proto::send_order>::with<std::uint64_t>,
    // Wait for a transfer from a peer to land; replies the bytes received
    // and this actor's view of when the transfer started and ended.
    caf::replies_to<proto::recv_atom,
                    proto::recv_order>::with<proto::recv_report>,
    // Transfer actor to transfer actor: open a channel from `sender` with
    // (comms, chunk bytes); replies the listener's handles (128 B each).
    caf::replies_to<proto::open_atom, std::string, std::uint32_t,
                    std::uint64_t>::with<std::vector<char>>,
    // Transfer actor to transfer actor: the chunks a sender is about to post.
    caf::reacts_to<proto::announce_atom, proto::announcement>,
    // Transfer actor to transfer actor over CUDA IPC: the sender's copy
    // kernel of transfer `id` finished writing `bytes` into our region
    // (sender name, id, bytes, when the kernel was launched and when the
    // sender saw it complete: steady_clock ns, comparable because IPC peers
    // share a host; then from the launch to the kernel's start and the
    // kernel's GPU time, ns, both 0 if unknown); completes the waiting recv
    // order.
    caf::reacts_to<proto::landed_atom, std::string, std::uint64_t,
                   std::uint64_t, std::int64_t, std::int64_t, std::int64_t,
                   std::int64_t>,
    caf::replies_to<proto::stats_atom>::with<proto::transfer_stats>,
    // CUDA IPC quarantine (docs/gpu.md, "Timed-out IPC copies"). Sender to
    // receiver, once per mapping of the receiver's pool: "I, `sender`, write
    // into your region over CUDA IPC" (so a receiver whose transfer from us
    // times out knows whom to ask).
    caf::reacts_to<proto::ipc_hello_atom, std::string>,
    // Receiver to sender: transfer `id` to receiver `name` timed out there;
    // answered once no copy kernel of it can still write into the
    // receiver's region (at once when none runs; one not yet launched is
    // cancelled).
    caf::replies_to<proto::ipc_status_atom, std::string,
                    std::uint64_t>::with<caf::ok_atom>,
    // Consumer to its own transfer actor, after a recv order for transfer
    // `id` from `peer` failed: answered once the destination blocks are
    // safe to reuse (at once unless that transfer is quarantined).
    caf::replies_to<proto::settle_atom, std::string,
                    std::uint64_t>::with<caf::ok_atom>,
    // Directory watcher (see directory_watcher_actor): a peer that left
    // fails everything waiting on it with ec::peer_down at once.
    caf::reacts_to<joined_atom, worker_info>,
    caf::reacts_to<left_atom, std::string, caf::error>,
    // Internal: poll the plugin (the loop's generation); a deadline passed.
    caf::reacts_to<proto::progress_atom, std::uint64_t>,
    caf::reacts_to<proto::sweep_atom>>;

struct transfer_config {
  std::string name; // the worker's name: peers know us by it
  std::shared_ptr<transport::plugin> net;
  int device = 0; // plugin device index
  std::shared_ptr<memory_region> region;
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

/// Spawns a transfer actor on its own thread.
transfer_actor spawn_transfer(caf::actor_system& sys, transfer_config cfg);

/// A prefill worker's app: owns the KV block pool, "prefills" (writes a
/// deterministic pattern), negotiates and ships each request.
using producer_actor = caf::typed_actor<
    caf::replies_to<proto::prefill_atom,
                    proto::prefill_request>::with<proto::ready_report>,
    // Directory watcher: requests whose consumer left fail at once.
    caf::reacts_to<joined_atom, worker_info>,
    caf::reacts_to<left_atom, std::string, caf::error>,
    // From a consumer (the sender): these blocks it lent are free again and
    // back in this producer's credit there.
    caf::reacts_to<proto::credit_atom, std::vector<std::uint64_t>>,
    // Internal: fail the requests whose wait for source blocks ran out.
    caf::reacts_to<proto::sweep_atom>>;

/// A decode worker's app: allocates destination blocks, waits for the bytes,
/// verifies them and answers ready.
using consumer_actor = caf::typed_actor<
    caf::replies_to<proto::allocate_atom,
                    proto::allocate_request>::with<proto::grant>,
    caf::replies_to<proto::arrived_atom,
                    proto::arrival_notice>::with<proto::ready_report>,
    caf::replies_to<proto::advertise_atom,
                    proto::arrival_notice>::with<proto::ready_report>,
    // Lend the producer (the sender, monitored) up to n blocks ahead of
    // time; the grant lists those lent (request_id 0). Errors: mismatch
    // (geometry).
    caf::replies_to<proto::reserve_atom,
                    proto::reserve_request>::with<proto::grant>,
    // A request the producer wrote into lent blocks and delegated here: the
    // reply (to the router) comes once its bytes landed and verified.
    // Errors: invalid_extent (an offset not lent to that producer, named),
    // mismatch, peer_down, timeout, or what the producer's abort says.
    caf::replies_to<proto::incoming_atom,
                    proto::credit_notice>::with<proto::ready_report>,
    // Producer -> consumer: the send of a delegated request failed (request
    // id, producer name, why); its promise fails with that error.
    caf::reacts_to<proto::abort_atom, std::uint64_t, std::string, caf::error>,
    caf::replies_to<proto::stats_atom>::with<proto::consumer_stats>,
    // Directory watcher: a producer that left fails its requests here at
    // once (naming it) and their blocks come back.
    caf::reacts_to<joined_atom, worker_info>,
    caf::reacts_to<left_atom, std::string, caf::error>,
    // Internal: fail the requests whose wait for free blocks ran out.
    caf::reacts_to<proto::sweep_atom>>;

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
};

producer_actor spawn_producer(caf::actor_system& sys, app_config cfg);
consumer_actor spawn_consumer(caf::actor_system& sys, app_config cfg);

/// The byte pattern block `block` of layer `layer` of a request gets from its
/// "prefill": deterministic in (seed, request, layer, block), cheap to write.
void fill_pattern(std::uint8_t* data, std::uint64_t bytes, std::uint64_t seed,
                  std::uint64_t request_id, std::uint32_t layer,
                  std::uint32_t block);

/// Transfer ids: request id and part (layer when layerwise, else 0).
constexpr std::uint64_t transfer_id_of(std::uint64_t request_id,
                                       std::uint32_t part) {
  return (request_id << 12) | part;
}
constexpr std::uint32_t max_parts = 4096;

/// XXH3-64 of the blocks at `offsets` (each `block_bytes`), in that order.
std::uint64_t hash_blocks(const std::uint8_t* base,
                          const std::vector<std::uint64_t>& offsets,
                          std::uint64_t block_bytes);

} // namespace kvferry
