// A prefill or decode worker assembled in the caller's actor system: the
// network plugin, the KV block pool, the transfer actor, the app actor
// (producer or consumer), its published control port and the membership
// keeper that registers it with the directory and keeps the lease.
//
//   auto w = kvferry::start_worker(sys, opts);   // errors as values
//   if (!w) ... render(w.error()) ...
//   if (auto err = w->await_registration(std::chrono::seconds(10))) ...
//   ...                                          // serve
//   w->stop();                                   // leave, stop the actors
//
// `kvferry worker` is this plus flags, signals and a metrics endpoint.
// Process-wide set-up stays with the caller, before its actor system
// starts: the actor system's config (TLS: runtime::system_config::secure;
// CAF's automatic connections off), the open-files limit, and KVSOCK_IFADDR
// (kvsock's data address; setenv is not thread-safe).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/expected.hpp>

#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/app.hpp"
#include "kvferry/actors/membership.hpp"
#include "kvferry/actors/transfer.hpp"

namespace kvferry {

struct worker_options {
  std::string name;
  worker_role role = worker_role::prefill;
  /// Where the directory listens, and the deployment's secret.
  std::string directory_host;
  std::uint16_t directory_port = 0;
  std::string secret;
  /// The address peers reach this worker's actors on ("0.0.0.0": every
  /// interface; peers then dial this host's name).
  std::string bind = "0.0.0.0";
  /// The KV pool: host memory (-1) or this CUDA device.
  int gpu = -1;
  std::uint64_t pool_blocks = 4096; // layer-blocks
  kv_geometry geometry;
  /// CUDA IPC to same-host GPU peers (else the plugin for every peer).
  bool use_ipc = true;
  /// Net plugin name or path; empty: $KVFERRY_NET_PLUGIN, else kvsock.
  std::string plugin;
  /// The plugin devices (NICs) to use: indexes, names or "all"; one
  /// transfer is striped over them (comms_per_peer is raised to a multiple
  /// of their count). Empty: the device nearest the GPU by PCIe topology
  /// (device 0 for host memory). transport/device_choice.hpp.
  std::vector<std::string> devices;
  /// Producer defaults: advertise instead of push, ship layer by layer.
  bool pull = false;
  bool layerwise = false;
  std::uint64_t chunk_bytes = std::uint64_t{4} << 20;
  std::uint32_t comms_per_peer = 2;
  std::uint32_t staging_slots = transfer_config{}.staging_slots;
  std::uint32_t timeout_ms = 10000;
  std::uint64_t credit_blocks = app_config{}.credit_blocks;
  std::uint32_t lend_percent = app_config{}.lend_percent;
  std::uint32_t queue_limit = app_config{}.queue_limit;
  std::uint32_t queue_wait_ms = app_config{}.queue_wait_ms;
};

/// A started worker: its actors, its keeper and what it registered.
class worker_handle {
public:
  worker_handle() = default;

  /// Waits until the keeper has registered this worker, at most `limit`, in
  /// slices of 100 ms; `interrupted` (when given) is asked between slices
  /// and ends the wait early when it returns true. None once registered;
  /// else the directory's refusal (unauthorized, invalid_argument), or
  /// ec::timeout naming the keeper's last problem (also when interrupted).
  caf::error await_registration(caf::timespan limit,
                                const std::function<bool()>& interrupted = {});

  /// Leaves the directory (bounded by the keeper's leave_timeout), then
  /// stops the app and transfer actors and waits for them (bounded: logged
  /// when they take longer). Safe to call twice.
  void stop();

  transfer_actor transfer;
  caf::actor app;  // producer_actor or consumer_actor, by role
  node_actor node; // over the pool; moves the app's bytes (linked to it)
  membership_actor keeper;
  /// Dials each peer of the other role that joins (spawn_peer_linker).
  caf::actor linker;
  std::shared_ptr<transport::plugin> net;
  std::shared_ptr<memory_region> region;
  /// What the directory learns (the actors included).
  worker_info info;
  /// The published control port.
  std::uint16_t port = 0;

private:
  friend caf::expected<worker_handle> start_worker(caf::actor_system& sys,
                                                   const worker_options& opts);
  caf::actor_system* sys_ = nullptr;
};

/// Loads the plugin, allocates the pool, spawns the transfer and app
/// actors, publishes the app on `opts.bind` and starts the keeper, which
/// registers the worker in the background (await_registration waits for
/// it). Errors name the worker and the cause: plugin_error (the plugin does
/// not load or has no devices), cuda_error / invalid_argument (the pool
/// cannot be allocated), unreachable (cannot listen on `bind`). Nothing is
/// left running on error.
caf::expected<worker_handle> start_worker(caf::actor_system& sys,
                                          const worker_options& opts);

/// The transfer actor's configuration for a worker of `opts` over the region
/// table `regions` (region 0 first, at least one): loads the plugin and
/// chooses its devices (logged). What start_worker and kvferry::node share;
/// errors as start_worker's (plugin_error). Not set: map_peers_ahead.
caf::expected<transfer_config>
worker_transfer_config(const worker_options& opts,
                       std::vector<std::shared_ptr<memory_region>> regions);

/// The keeper's dialer (membership_config::dialer) for the directory at
/// host:port: after each dial, before the keeper (re-)registers, it opens
/// direct control connections to the members already there (of role
/// `members` only, where given), so that no message of a pair takes the
/// detour through the directory. What workers and directory-mode nodes
/// share.
dialer_actor spawn_worker_dialer(caf::actor_system& sys, std::string host,
                                 std::uint16_t port,
                                 std::optional<worker_role> members);

/// Where peers dial a port published on `bind` (the control_attribute):
/// the bind address, or this host's name when bound to every interface.
std::string control_address(const std::string& bind, std::uint16_t port);

/// "GPU 0 memory" or "host memory".
std::string describe_memory(int gpu);

} // namespace kvferry
