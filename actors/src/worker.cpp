// Worker assembly (worker.hpp): what `kvferry worker` and, later, the
// embedding facade start.
#include "kvferry/actors/worker.hpp"

#include <algorithm>
#include <exception>
#include <stdexcept>
#include <utility>
#include <vector>

#include <caf/all.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "kvferry/actors/app.hpp"
#include "kvferry/actors/connect_peers.hpp"
#include "kvferry/actors/directory.hpp"
#include "kvferry/actors/node_actor.hpp"
#include "kvferry/actors/transfer.hpp"
#include "kvferry/runtime/tls.hpp"
#include "kvferry/transport/device_choice.hpp"
#include "kvferry/transport/gpu_info.hpp"
#include "kvferry/transport/gpu_memory.hpp"
#include "kvferry/transport/plugin.hpp"

namespace kvferry {

namespace {

// One dial of the directory; the keeper retries with backoff.
constexpr auto dial_attempt = std::chrono::seconds(2);
// await_registration asks its `interrupted` this often.
constexpr auto registration_slice = std::chrono::milliseconds(100);

// The role a worker of `role` moves KV to or from.
worker_role peer_role(worker_role role) {
  return role == worker_role::prefill ? worker_role::decode
                                      : worker_role::prefill;
}

caf::error worker_error(ec code, const worker_options& opts,
                        const std::string& what) {
  return make_error(code, fmt::format("worker {}: {}", opts.name, what));
}

caf::expected<std::shared_ptr<transport::plugin>>
load_plugin(const worker_options& opts) {
  std::shared_ptr<transport::plugin> net;
  try {
    net = transport::plugin::load(opts.plugin);
  } catch (const std::exception& e) {
    return worker_error(ec::plugin_error, opts, e.what());
  }
  if (net->device_count() == 0)
    return worker_error(
        ec::plugin_error, opts,
        fmt::format("plugin {} reports no devices", net->name()));
  return net;
}

// The sysfs path of the worker's GPU ("" for host memory or when unknown).
std::string gpu_pci_path(int gpu) {
  if (gpu < 0)
    return {};
  auto inventory = transport::list_gpus();
  if (static_cast<std::size_t>(gpu) >= inventory.devices.size())
    return {};
  return transport::pci_device_path(
      inventory.devices[static_cast<std::size_t>(gpu)].pci_bus_id);
}

// The transfer actor's plugin devices (NICs): opts.devices, else the one
// nearest the GPU (device_choice.hpp); each usable by NCCL's rules. Logged
// once.
caf::expected<std::vector<int>>
choose_net_devices(const worker_options& opts, const transport::plugin& net) {
  transport::device_choice choice;
  try {
    choice = transport::choose_devices(net.devices(), opts.devices,
                                       gpu_pci_path(opts.gpu), opts.gpu >= 0);
    for (int d : choice.devices)
      net.usable_device(d);
  } catch (const std::exception& e) {
    return worker_error(ec::plugin_error, opts, e.what());
  }
  std::vector<std::string> named;
  for (int d : choice.devices)
    named.push_back(fmt::format("{} '{}'", d, net.device(d).name));
  spdlog::info("worker {}: plugin {} device(s) {}: {}", opts.name, net.name(),
               fmt::join(named, ", "), choice.why);
  // A GPU pool reaches net peers either way: registered with the plugin
  // where its ptrSupport has NCCL_PTR_CUDA, else staged by the channel
  // wrapper.
  if (opts.gpu >= 0 && !net.device(choice.devices.front()).supports_cuda())
    spdlog::info("worker {}: plugin {} does not take GPU memory (no "
                 "NCCL_PTR_CUDA in its ptrSupport): KV for net peers is "
                 "staged through pinned host buffers by the channel wrapper",
                 opts.name, net.name());
  return choice.devices;
}

// Comm pairs per peer: at least one per device and a multiple of their
// count, so that chunk c (on comm c mod N, device (c mod N) mod n) gives
// every device an equal share of each transfer.
std::uint32_t comms_for(const worker_options& opts, std::size_t devices) {
  auto n = static_cast<std::uint32_t>(devices);
  auto comms = (std::max(opts.comms_per_peer, n) + n - 1) / n * n;
  if (comms != opts.comms_per_peer)
    spdlog::info("worker {}: {} comm pairs per peer instead of {}: a multiple "
                 "of its {} devices",
                 opts.name, comms, opts.comms_per_peer, n);
  return comms;
}

// The KV pool in host or GPU memory.
caf::expected<std::shared_ptr<memory_region>>
allocate_pool(const worker_options& opts) {
  auto bytes = opts.pool_blocks * opts.geometry.layer_block_bytes();
  auto name = opts.name + "/kv-pool";
  try {
    return opts.gpu < 0 ? memory_region::allocate_host(bytes, name)
                        : memory_region::allocate_cuda(opts.gpu, bytes, name);
  } catch (const std::exception& e) {
    return worker_error(opts.gpu < 0 ? ec::invalid_argument : ec::cuda_error,
                        opts, e.what());
  }
}

region_info describe_region(const memory_region& region,
                            const proto::endpoint& ep) {
  region_info r{0,
                reinterpret_cast<std::uint64_t>(region.data()),
                region.size(),
                region.kind(),
                region.gpu(),
                {}};
  if (!ep.ipc_handle.empty()) { // the pool: the table's one region
    auto handle = transport::ipc_table_from_text(ep.ipc_handle).at(0).handle;
    r.ipc_handle.assign(handle.bytes.begin(), handle.bytes.end());
  }
  return r;
}

// What the directory learns about this worker (its actors are added by
// the caller).
worker_info describe_worker(const worker_options& opts,
                            const transport::plugin& net,
                            const memory_region& region,
                            const proto::endpoint& ep) {
  worker_info info;
  info.name = opts.name;
  info.role = opts.role;
  info.host = local_hostname();
  info.host_id = local_host_id();
  info.plugin = net.name();
  info.gpu = region.gpu();
  info.ipc_capable = !ep.ipc_handle.empty();
  info.regions.push_back(describe_region(region, ep));
  info.attributes = {
      {"memory", describe_memory(opts.gpu)},
      {"transport", opts.use_ipc ? "ipc" : "net"},
      {"mode", opts.pull ? "pull" : "push"},
      {"layerwise", opts.layerwise ? "true" : "false"},
      {"layers", std::to_string(opts.geometry.layers)},
      {"layer_block_bytes", std::to_string(opts.geometry.layer_block_bytes())},
      {"pool_blocks", std::to_string(opts.pool_blocks)},
  };
  return info;
}

} // namespace

caf::expected<transfer_config>
worker_transfer_config(const worker_options& opts,
                       std::vector<std::shared_ptr<memory_region>> regions) {
  auto net = load_plugin(opts);
  if (!net)
    return std::move(net.error());
  auto devices = choose_net_devices(opts, **net);
  if (!devices)
    return std::move(devices.error());
  transfer_config tc;
  tc.name = opts.name;
  tc.net = std::move(*net);
  tc.comms_per_peer = comms_for(opts, devices->size());
  tc.devices = std::move(*devices);
  tc.region = regions.at(0);
  tc.more_regions.assign(regions.begin() + 1, regions.end());
  tc.chunk_bytes = opts.chunk_bytes;
  tc.staging_slots = opts.staging_slots;
  tc.open_timeout_ms = opts.timeout_ms;
  tc.use_ipc = opts.use_ipc;
  tc.host_id = local_host_id();
  return tc;
}

kv_layout pool_layout(const kv_geometry& g, std::uint64_t region_bytes) {
  auto lbb = g.layer_block_bytes();
  auto ids = region_bytes / (std::uint64_t{g.layers} * lbb);
  if (ids == 0)
    throw std::invalid_argument(fmt::format(
        "a KV pool of {} bytes holds no block of all {} layers "
        "({} bytes each): give it at least {} layer-blocks "
        "(--pool-blocks)",
        region_bytes, g.layers, std::uint64_t{g.layers} * lbb, g.layers));
  return kv_layout::block_major(g.layers, ids, lbb / 2);
}

std::vector<std::uint64_t>
layer_block_offsets(const kv_layout& pool,
                    const std::vector<std::uint64_t>& ids) {
  std::vector<std::uint64_t> out;
  out.reserve(std::size_t{pool.layers()} * ids.size());
  for (std::uint32_t l = 0; l < pool.layers(); ++l)
    for (auto id : ids)
      out.push_back(pool.locate(l, kv_half::k, id).offset);
  return out;
}

namespace {

app_config make_app_config(const worker_options& opts,
                           std::shared_ptr<memory_region> region,
                           transfer_actor transfer, proto::endpoint ep) {
  app_config ac;
  ac.name = opts.name;
  ac.geometry = opts.geometry;
  ac.region = std::move(region);
  ac.transfer = std::move(transfer);
  ac.self = std::move(ep);
  ac.timeout_ms = opts.timeout_ms;
  ac.layerwise = opts.layerwise;
  ac.pull = opts.pull;
  ac.credit_blocks = opts.credit_blocks;
  ac.lend_percent = opts.lend_percent;
  ac.queue_limit = opts.queue_limit;
  ac.queue_wait_ms = opts.queue_wait_ms;
  return ac;
}

// The keeper that registers this worker and keeps it registered
// (membership.hpp). This is the one place the worker dials the directory:
// the keeper dials again through it after every loss. After each dial,
// before the keeper (re-)registers, it opens direct connections to the
// workers of the other role already there: by the time anyone hears of this
// worker (and sends to it), the direct route exists, so no message of a
// pair takes the detour through the directory and then overtakes it. Later
// joiners dial us. The limit keeps a dial plus this inside the keeper's
// request timeout (5 s); a peer not reached in time is reached through the
// directory (logged).
membership_actor start_membership(caf::actor_system& sys,
                                  const worker_options& opts, worker_info info,
                                  std::vector<caf::actor> watchers) {
  membership_config mc;
  mc.info = std::move(info);
  mc.secret = opts.secret;
  mc.directory_name =
      opts.directory_host + ":" + std::to_string(opts.directory_port);
  mc.watchers = std::move(watchers);
  mc.dialer = spawn_worker_dialer(sys, opts.directory_host, opts.directory_port,
                                  peer_role(opts.role));
  return spawn_membership(sys, std::move(mc));
}

} // namespace

dialer_actor spawn_worker_dialer(caf::actor_system& sys, std::string host,
                                 std::uint16_t port,
                                 std::optional<worker_role> members) {
  return spawn_dialer(sys, [&sys, host = std::move(host), port, members] {
    auto dir = connect_directory(sys, host, port, dial_attempt);
    if (dir)
      connect_members(sys, *dir, members, std::chrono::seconds(2));
    return dir;
  });
}

std::string control_address(const std::string& bind, std::uint16_t port) {
  auto host = bind == "0.0.0.0" ? local_hostname() : bind;
  return host + ":" + std::to_string(port);
}

std::string describe_memory(int gpu) {
  return gpu < 0 ? std::string{"host memory"}
                 : fmt::format("GPU {} memory", gpu);
}

caf::expected<worker_handle> start_worker(caf::actor_system& sys,
                                          const worker_options& opts) {
  auto region = allocate_pool(opts);
  if (!region)
    return std::move(region.error());
  auto tc = worker_transfer_config(opts, {*region});
  if (!tc)
    return std::move(tc.error());
  tc->map_peers_ahead = opts.role == worker_role::prefill;
  worker_handle w;
  w.sys_ = &sys;
  w.net = tc->net;
  w.region = *region;
  w.transfer = spawn_transfer(sys, std::move(*tc));
  caf::scoped_actor self{sys};
  proto::endpoint ep;
  self->request(w.transfer, std::chrono::seconds(5),
                proto::endpoint_atom::value)
      .receive([&](proto::endpoint& e) { ep = std::move(e); },
               [&](const caf::error& err) {
                 spdlog::error("worker {}: transfer actor: {}", opts.name,
                               render(err));
               });
  auto ac = make_app_config(opts, *region, w.transfer, ep);
  try {
    w.node = spawn_node_actor(
        sys, {opts.name, w.transfer, ep,
              pool_layout(opts.geometry, (*region)->size()), opts.timeout_ms});
  } catch (const std::exception& e) {
    self->send_exit(w.transfer, caf::exit_reason::user_shutdown);
    return worker_error(ec::invalid_argument, opts, e.what());
  }
  ac.node = w.node;
  w.app = opts.role == worker_role::prefill
              ? caf::actor_cast<caf::actor>(spawn_producer(sys, ac))
              : caf::actor_cast<caf::actor>(spawn_consumer(sys, ac));
  // Dials each peer of the other role that joins (spawn_peer_linker says
  // why the dial before registering is not enough).
  w.linker =
      spawn_peer_linker(sys, peer_role(opts.role), std::chrono::seconds(2));
  // A published port lets peers reach this node directly (over TLS).
  auto port = runtime::publish_control(w.app, 0, opts.bind);
  if (!port) {
    self->send_exit(w.app, caf::exit_reason::user_shutdown);
    self->send_exit(w.transfer, caf::exit_reason::user_shutdown);
    self->send_exit(w.linker, caf::exit_reason::user_shutdown);
    return worker_error(ec::unreachable, opts,
                        fmt::format("cannot listen on {}: {}", opts.bind,
                                    render(port.error())));
  }
  w.port = *port;
  w.info = describe_worker(opts, *w.net, **region, ep);
  w.info.attributes[control_attribute] = control_address(opts.bind, w.port);
  w.info.transfer = caf::actor_cast<caf::actor>(w.transfer);
  w.info.app = w.app;
  // The directory sees a peer's process die first (it holds a connection to
  // every worker); its `left` fails what waits on that peer at once. Both
  // app actors watch: a producer fails requests of a consumer that left, a
  // consumer those of a producer that left (and frees their blocks).
  std::vector<caf::actor> watchers{caf::actor_cast<caf::actor>(w.transfer),
                                   w.app, w.linker};
  w.keeper = start_membership(sys, opts, w.info, std::move(watchers));
  return w;
}

caf::error
worker_handle::await_registration(caf::timespan limit,
                                  const std::function<bool()>& interrupted) {
  caf::scoped_actor self{*sys_};
  auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    if (interrupted && interrupted())
      break;
    // Short requests, so that `interrupted` is asked between them.
    int outcome = 1; // still waiting
    caf::error refused;
    self->request(keeper, registration_slice, caf::wait_for_atom::value)
        .receive([&](caf::ok_atom) { outcome = 0; },
                 [&](caf::error& err) {
                   if (err == caf::sec::request_timeout)
                     return;
                   refused = std::move(err);
                   outcome = -1;
                 });
    if (outcome == 0)
      return caf::none;
    if (outcome < 0)
      return refused;
    if (std::chrono::steady_clock::now() >= deadline)
      break;
  }
  std::string why = "no answer";
  self->request(keeper, std::chrono::seconds(1), caf::get_atom::value)
      .receive([&](std::string& line) { why = std::move(line); },
               [](const caf::error&) {});
  return make_error(
      ec::timeout,
      fmt::format(
          "worker {}: not registered within {} ms: {}", info.name,
          std::chrono::duration_cast<std::chrono::milliseconds>(limit).count(),
          why));
}

void worker_handle::stop() {
  if (sys_ == nullptr)
    return;
  caf::scoped_actor self{*sys_};
  // Within 1 s in all: leave (bounded by the keeper's leave_timeout), then
  // stop the actors.
  self->request(keeper, std::chrono::milliseconds(500), leave_atom::value)
      .receive([](caf::ok_atom) {}, [](const caf::error&) {});
  self->send_exit(keeper, caf::exit_reason::user_shutdown);
  self->monitor(app);
  self->monitor(transfer);
  self->send_exit(app, caf::exit_reason::user_shutdown);
  self->send_exit(transfer, caf::exit_reason::user_shutdown);
  self->send_exit(linker, caf::exit_reason::user_shutdown);
  constexpr auto limit = std::chrono::milliseconds(400);
  auto deadline = std::chrono::steady_clock::now() + limit;
  for (int i = 0; i < 2; ++i) {
    bool timed_out = false;
    self->receive(
        [](const caf::down_msg&) {},
        caf::after(std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now())) >>
            [&] { timed_out = true; });
    if (timed_out) {
      spdlog::warn("worker {}: actors did not stop within {} ms", info.name,
                   limit.count());
      break;
    }
  }
  sys_ = nullptr;
}

} // namespace kvferry
