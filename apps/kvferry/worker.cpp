// `kvferry worker`: a long-lived prefill or decode worker. It loads the
// network plugin, allocates and registers its KV block pool, spawns its
// transfer actor and its app actor (producer for prefill, consumer for
// decode), registers both with the directory through its membership keeper
// (which renews the lease and registers again after any loss) and serves
// until SIGINT or SIGTERM. `kvferry launch` and `kvferry demo` spawn it
// with exactly these flags.
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <signal.h>
#include <string>
#include <unistd.h>

#include <caf/all.hpp>
#include <caf/io/middleman.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "commands.hpp"
#include "gpu_option.hpp"
#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/app.hpp"
#include "kvferry/actors/connect_peers.hpp"
#include "kvferry/actors/directory.hpp"
#include "kvferry/actors/membership.hpp"
#include "kvferry/actors/transfer.hpp"
#include "kvferry/runtime/logging.hpp"
#include "kvferry/runtime/process_limits.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "kvferry/runtime/tls.hpp"
#include "kvferry/runtime/worker_limits.hpp"
#include "kvferry/transport/channel.hpp"
#include "kvferry/transport/gpu_info.hpp"
#include "kvferry/transport/gpu_memory.hpp"
#include "kvferry/transport/plugin.hpp"
#include "metrics_endpoint.hpp"
#include "stop_signals.hpp"

namespace kvferry::app {
namespace {

struct worker_command {
  std::string name;
  std::string role;
  std::string directory;
  std::string secret;
  std::string bind = "0.0.0.0";
  std::string gpu = "none";
  std::string transport = "ipc";
  std::string plugin;
  std::uint64_t pool_blocks = 4096;
  kv_geometry geometry;
  std::string dtype = "fp16";
  std::string mode = "push";
  bool layerwise = false;
  std::uint64_t chunk_bytes = std::uint64_t{4} << 20;
  std::uint32_t comms_per_peer = 2;
  std::uint32_t staging_slots = transport::channel_options{}.staging_slots;
  std::uint32_t timeout_ms = 10000;
  std::uint64_t credit_blocks = app_config{}.credit_blocks;
  std::uint32_t lend_percent = app_config{}.lend_percent;
  std::uint32_t queue_limit = app_config{}.queue_limit;
  std::uint32_t queue_wait_ms = app_config{}.queue_wait_ms;
  runtime::runtime_options runtime;
};

// Everything that can be checked before any resource is taken.
std::string validate(worker_command& cmd, worker_role& role) {
  if (cmd.name.empty())
    return "--name is required";
  if (!parse_role(cmd.role, role))
    return fmt::format("--role '{}': expected prefill or decode", cmd.role);
  auto dtype = parse_dtype(cmd.dtype);
  if (!dtype)
    return fmt::format("--dtype '{}': expected fp16, bf16 or fp32", cmd.dtype);
  cmd.geometry.dtype = *dtype;
  if (cmd.mode != "push" && cmd.mode != "pull")
    return fmt::format("--mode '{}': expected push or pull", cmd.mode);
  if (auto bad = check_gpu_option("--gpu", cmd.gpu); !bad.empty())
    return bad;
  if (cmd.transport != "ipc" && cmd.transport != "net")
    return fmt::format("--transport '{}': expected ipc or net", cmd.transport);
  // The rules a topology's workers are checked against (launch --dry-run).
  runtime::worker_params params{
      cmd.geometry,       cmd.pool_blocks,   cmd.gpu != "none", cmd.chunk_bytes,
      cmd.comms_per_peer, cmd.staging_slots, cmd.timeout_ms};
  return runtime::describe_as_flags(
      runtime::check_worker_params(params, runtime::physical_memory_bytes()));
}

// The KV pool in host or GPU memory, as --gpu says (already resolved).
std::shared_ptr<memory_region> allocate_pool(const worker_command& cmd,
                                             int gpu) {
  auto bytes = cmd.pool_blocks * cmd.geometry.layer_block_bytes();
  auto name = cmd.name + "/kv-pool";
  return gpu < 0 ? memory_region::allocate_host(bytes, name)
                 : memory_region::allocate_cuda(gpu, bytes, name);
}

// A GPU pool reaches net peers either way: registered with the plugin where
// its ptrSupport has NCCL_PTR_CUDA, else staged by the channel wrapper.
void note_gpu_path(const worker_command& cmd, const transport::plugin& net,
                   int gpu) {
  if (gpu < 0 || net.device(0).supports_cuda())
    return;
  spdlog::info("worker {}: plugin {} does not take GPU memory (no "
               "NCCL_PTR_CUDA in its ptrSupport): KV for net peers is staged "
               "through pinned host buffers by the channel wrapper",
               cmd.name, net.name());
}

region_info describe_region(const memory_region& region,
                            const proto::endpoint& ep) {
  region_info r{0,
                reinterpret_cast<std::uint64_t>(region.data()),
                region.size(),
                region.kind(),
                region.gpu(),
                {}};
  if (!ep.ipc_handle.empty()) {
    auto handle = transport::ipc_handle::from_hex(ep.ipc_handle);
    r.ipc_handle.assign(handle.bytes.begin(), handle.bytes.end());
  }
  return r;
}

// kvsock listens where the control plane does (not on the first non-loopback
// interface) unless the environment (the topology's plugin_env) names the
// data interface. Before any thread starts: setenv is not thread-safe.
void default_data_address(const std::string& bind) {
  if (bind == "0.0.0.0" || std::getenv("KVSOCK_IFADDR") != nullptr ||
      std::getenv("NCCL_SOCKET_IFNAME") != nullptr)
    return;
  ::setenv("KVSOCK_IFADDR", bind.c_str(), 0);
}

// Where peers dial this worker's published port: the bind address, or this
// host's name when bound to every interface.
std::string control_address(const std::string& bind, std::uint16_t port) {
  auto host = bind == "0.0.0.0" ? local_hostname() : bind;
  return host + ":" + std::to_string(port);
}

// Opens direct connections to the workers of the other role already there,
// before registering: by the time anyone hears of this worker (and sends to
// it), the direct route exists, so no message of a pair takes the detour
// through the directory and then overtakes it. Later joiners dial us. The
// limit keeps a dial plus this inside the keeper's request timeout (5 s); a
// peer not reached in time is reached through the directory (logged).
void connect_to_peers(caf::actor_system& sys, const directory_actor& dir,
                      worker_role role) {
  connect_members(sys, dir,
                  role == worker_role::prefill ? worker_role::decode
                                               : worker_role::prefill,
                  std::chrono::seconds(2));
}

// What the directory learns about this worker (its actors are added by
// the caller).
worker_info describe_worker(const worker_command& cmd, worker_role role,
                            const transport::plugin& net,
                            const memory_region& region,
                            const proto::endpoint& ep, int gpu) {
  worker_info info;
  info.name = cmd.name;
  info.role = role;
  info.host = local_hostname();
  info.host_id = local_host_id();
  info.plugin = net.name();
  info.gpu = region.gpu();
  info.ipc_capable = !ep.ipc_handle.empty();
  info.regions.push_back(describe_region(region, ep));
  info.attributes = {
      {"memory", describe_memory(gpu)},
      {"transport", cmd.transport},
      {"mode", cmd.mode},
      {"layerwise", cmd.layerwise ? "true" : "false"},
      {"layers", std::to_string(cmd.geometry.layers)},
      {"layer_block_bytes", std::to_string(cmd.geometry.layer_block_bytes())},
      {"pool_blocks", std::to_string(cmd.pool_blocks)},
  };
  return info;
}

// The first registration must succeed within this (exit 1, naming the
// directory): a wrong address or secret should not hang a start. After it,
// the membership keeper heals every loss by itself, without a limit.
constexpr auto first_registration_limit = std::chrono::seconds(10);
// One dial of the directory; the keeper retries with backoff.
constexpr auto dial_attempt = std::chrono::seconds(2);
// Main waits in slices this short, so a stop signal is taken within 1 s.
constexpr auto signal_slice = std::chrono::milliseconds(100);

// The keeper that registers this worker and keeps it registered
// (actors/membership.hpp). This is the one place the worker dials the
// directory: the keeper dials again through it after every loss.
membership_actor start_membership(caf::actor_system& sys,
                                  const worker_command& cmd, worker_info info,
                                  std::vector<caf::actor> watchers,
                                  const std::string& dir_host,
                                  std::uint16_t dir_port) {
  membership_config mc;
  mc.info = std::move(info);
  mc.secret = cmd.secret;
  mc.directory_name = cmd.directory;
  mc.watchers = std::move(watchers);
  auto role = mc.info.role;
  // After each dial, before the keeper (re-)registers: direct routes to
  // the peers first (connect_to_peers says why).
  mc.dialer = spawn_dialer(sys, [&sys, dir_host, dir_port, role] {
    auto dir = connect_directory(sys, dir_host, dir_port, dial_attempt);
    if (dir)
      connect_to_peers(sys, *dir, role);
    return dir;
  });
  return spawn_membership(sys, std::move(mc));
}

// Waits until the keeper has registered this worker. Returns 0 once it has,
// the stop signal if one came first, or -1 when the directory refused the
// worker or the limit passed (logged, naming the directory).
int await_registration(caf::scoped_actor& self, const membership_actor& keeper,
                       const sigset_t& stop_signals, const std::string& name) {
  auto deadline = std::chrono::steady_clock::now() + first_registration_limit;
  for (;;) {
    if (int sig = wait_stop_signal(stop_signals, std::chrono::milliseconds(0)))
      return sig;
    // Short requests, so that main looks at the signals between them.
    int outcome = 1; // still waiting
    self->request(keeper, signal_slice, caf::wait_for_atom::value)
        .receive([&](caf::ok_atom) { outcome = 0; },
                 [&](const caf::error& err) {
                   if (err == caf::sec::request_timeout)
                     return;
                   spdlog::error("worker {}: {}", name, render(err));
                   outcome = -1;
                 });
    if (outcome != 1)
      return outcome;
    if (std::chrono::steady_clock::now() >= deadline)
      break;
  }
  std::string why = "no answer";
  self->request(keeper, std::chrono::seconds(1), caf::get_atom::value)
      .receive([&](std::string& line) { why = std::move(line); },
               [](const caf::error&) {});
  spdlog::error("worker {}: not registered within {} s: {}", name,
                first_registration_limit.count(), why);
  return -1;
}

// Serves until a stop signal; returns it. The keeper renews the lease.
int serve_until_signal(const sigset_t& stop_signals) {
  for (;;)
    if (int sig = wait_stop_signal(stop_signals, std::chrono::seconds(1)))
      return sig;
}

// Waits (bounded) for `count` down messages of monitored actors.
void await_termination(caf::scoped_actor& self, int count,
                       std::chrono::milliseconds limit,
                       const std::string& name) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  for (int i = 0; i < count; ++i) {
    bool timed_out = false;
    self->receive(
        [](const caf::down_msg&) {},
        caf::after(std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now())) >>
            [&] { timed_out = true; });
    if (timed_out) {
      spdlog::warn("worker {}: actors did not stop within {} ms", name,
                   limit.count());
      return;
    }
  }
}

int run_worker(worker_command& cmd) {
  worker_role role;
  if (auto bad = validate(cmd, role); !bad.empty()) {
    std::cerr << "kvferry worker: " << bad << "\n";
    return 2;
  }
  std::string dir_host;
  std::uint16_t dir_port = 0;
  if (auto err = parse_host_port(cmd.directory, dir_host, dir_port)) {
    std::cerr << "kvferry worker: --directory: " << render(err) << "\n";
    return 2;
  }
  auto stop_signals = block_stop_signals();
  runtime::raise_open_files_limit("worker " + cmd.name);
  default_data_address(cmd.bind);
  runtime::system_config cfg{cmd.runtime};
  if (auto err = cfg.secure(cmd.runtime.tls, cmd.name)) {
    spdlog::error("worker {}: {}", cmd.name, render(err));
    return 1;
  }
  // No automatic connections: CAF would open a second, plain listener on
  // every interface for them. Workers dial each other (connect_peers).
  cfg.set("middleman.enable-automatic-connections", false);
  caf::actor_system sys{cfg};
  std::shared_ptr<transport::plugin> net;
  try {
    net = transport::plugin::load(cmd.plugin);
    net->usable_device(0); // the transfer actor's device: NCCL's rules
  } catch (const std::exception& e) {
    spdlog::error("worker {}: {}", cmd.name, e.what());
    return 1;
  }
  if (net->device_count() == 0) {
    spdlog::error("worker {}: plugin {} reports no devices", cmd.name,
                  net->name());
    return 1;
  }
  auto exporter = start_metrics_endpoint("worker " + cmd.name);
  if (!exporter)
    return 1;
  auto gpu = resolve_gpu(cmd.gpu, "worker " + cmd.name);
  note_gpu_path(cmd, *net, gpu);
  std::shared_ptr<memory_region> region;
  try {
    region = allocate_pool(cmd, gpu);
  } catch (const std::exception& e) {
    spdlog::error("worker {}: {}", cmd.name, e.what());
    return 1;
  }
  transfer_config tc;
  tc.name = cmd.name;
  tc.net = net;
  tc.region = region;
  tc.comms_per_peer = cmd.comms_per_peer;
  tc.chunk_bytes = cmd.chunk_bytes;
  tc.staging_slots = cmd.staging_slots;
  tc.open_timeout_ms = cmd.timeout_ms;
  tc.use_ipc = cmd.transport == "ipc";
  tc.host_id = local_host_id();
  tc.map_peers_ahead = role == worker_role::prefill;
  auto transfer = spawn_transfer(sys, tc);
  caf::scoped_actor self{sys};
  proto::endpoint ep;
  self->request(transfer, std::chrono::seconds(5), proto::endpoint_atom::value)
      .receive([&](proto::endpoint& e) { ep = std::move(e); },
               [&](const caf::error& err) {
                 spdlog::error("worker {}: transfer actor: {}", cmd.name,
                               render(err));
               });
  app_config ac;
  ac.name = cmd.name;
  ac.geometry = cmd.geometry;
  ac.region = region;
  ac.transfer = transfer;
  ac.self = ep;
  ac.timeout_ms = cmd.timeout_ms;
  ac.layerwise = cmd.layerwise;
  ac.pull = cmd.mode == "pull";
  ac.credit_blocks = cmd.credit_blocks;
  ac.lend_percent = cmd.lend_percent;
  ac.queue_limit = cmd.queue_limit;
  ac.queue_wait_ms = cmd.queue_wait_ms;
  caf::actor app = role == worker_role::prefill
                       ? caf::actor_cast<caf::actor>(spawn_producer(sys, ac))
                       : caf::actor_cast<caf::actor>(spawn_consumer(sys, ac));
  // Dials each peer of the other role that joins (spawn_peer_linker says
  // why the dial before registering is not enough).
  auto linker = spawn_peer_linker(
      sys,
      role == worker_role::prefill ? worker_role::decode : worker_role::prefill,
      std::chrono::seconds(2));
  auto stop_all = [&] {
    self->send_exit(app, caf::exit_reason::user_shutdown);
    self->send_exit(transfer, caf::exit_reason::user_shutdown);
    self->send_exit(linker, caf::exit_reason::user_shutdown);
  };
  // A published port lets peers reach this node directly (over TLS).
  auto port = runtime::publish_control(app, 0, cmd.bind);
  if (!port) {
    spdlog::error("worker {}: cannot listen on {}: {}", cmd.name, cmd.bind,
                  render(port.error()));
    stop_all();
    return 1;
  }
  auto info = describe_worker(cmd, role, *net, *region, ep, gpu);
  info.attributes[control_attribute] = control_address(cmd.bind, *port);
  info.transfer = caf::actor_cast<caf::actor>(transfer);
  info.app = app;
  // The directory sees a peer's process die first (it holds a connection to
  // every worker); its `left` fails what waits on that peer at once.
  // Both app actors watch: a producer fails requests of a consumer that
  // left, a consumer those of a producer that left (and frees their blocks).
  std::vector<caf::actor> watchers{caf::actor_cast<caf::actor>(transfer), app,
                                   linker};
  bool ipc_capable = info.ipc_capable;
  auto keeper = start_membership(sys, cmd, std::move(info), std::move(watchers),
                                 dir_host, dir_port);
  int sig = await_registration(self, keeper, stop_signals, cmd.name);
  if (sig < 0) {
    self->send_exit(keeper, caf::exit_reason::user_shutdown);
    stop_all();
    return 1;
  }
  if (sig == 0) {
    // A parent process (demo, launch, tests) waits for this line.
    std::cout << "kvferry worker " << cmd.name << " ready (" << cmd.role
              << ", plugin " << net->name() << ", " << describe_memory(gpu)
              << (ipc_capable ? ", CUDA IPC for same-host GPU peers" : "")
              << ", " << cmd.pool_blocks << " blocks of "
              << cmd.geometry.layer_block_bytes() << " B)" << std::endl;
    sig = serve_until_signal(stop_signals);
  }
  spdlog::info("worker {}: {} received, leaving", cmd.name,
               sig == SIGINT ? "SIGINT" : "SIGTERM");
  // Within 1 s of the signal in all: leave (bounded by the keeper's
  // leave_timeout), then stop the actors.
  self->request(keeper, std::chrono::milliseconds(500), leave_atom::value)
      .receive([](caf::ok_atom) {}, [](const caf::error&) {});
  self->monitor(app);
  self->monitor(transfer);
  stop_all();
  await_termination(self, 2, std::chrono::milliseconds(400), cmd.name);
  // CAF 0.17's actor_system destructor waits until every detached actor
  // object is destroyed, and a peer node's proxies can keep our transfer
  // actor referenced until that node's connection is torn down too — when
  // the whole deployment stops at once this stalled shutdown for seconds.
  // Our actors have stopped and left the directory; the plugin's sockets
  // and memory go with the process, so end it here.
  spdlog::info("worker {}: stopped", cmd.name);
  spdlog::shutdown();
  std::cout.flush();
  std::_Exit(0);
}

} // namespace

void add_worker(CLI::App& root, int& exit_code) {
  auto cmd = std::make_shared<worker_command>();
  auto* sub = root.add_subcommand(
      "worker", "Run a prefill or decode worker until SIGINT/SIGTERM");
  sub->add_option("--name", cmd->name, "unique worker name")->required();
  sub->add_option("--role", cmd->role, "prefill or decode")->required();
  sub->add_option("--directory", cmd->directory, "HOST:PORT of the directory")
      ->required();
  sub->add_option("--secret", cmd->secret,
                  "deployment secret (default: $KVFERRY_SECRET)");
  sub->add_option("--bind", cmd->bind,
                  "address peers reach this worker's actors on")
      ->capture_default_str();
  sub->add_option("--gpu", cmd->gpu,
                  "KV pool memory: a CUDA device ordinal, auto (GPU 0 when "
                  "there is one, else host memory) or none (host memory)")
      ->capture_default_str();
  sub->add_option("--transport", cmd->transport,
                  "ipc: CUDA IPC to same-host GPU peers, the plugin to the "
                  "rest; net: the plugin for every peer")
      ->capture_default_str();
  sub->add_option("--plugin", cmd->plugin,
                  "net plugin name or path (default $KVFERRY_NET_PLUGIN, "
                  "else kvsock)");
  sub->add_option("--pool-blocks", cmd->pool_blocks,
                  "KV block pool size in layer-blocks")
      ->capture_default_str();
  sub->add_option("--layers", cmd->geometry.layers)->capture_default_str();
  sub->add_option("--kv-heads", cmd->geometry.kv_heads)->capture_default_str();
  sub->add_option("--head-dim", cmd->geometry.head_dim)->capture_default_str();
  sub->add_option("--dtype", cmd->dtype, "fp16, bf16 or fp32")
      ->capture_default_str();
  sub->add_option("--block-tokens", cmd->geometry.block_tokens)
      ->capture_default_str();
  sub->add_option("--mode", cmd->mode, "push or pull (producer's default)")
      ->capture_default_str();
  sub->add_flag("--layerwise", cmd->layerwise,
                "ship each layer as soon as it is written (producer default)");
  sub->add_option("--chunk-bytes", cmd->chunk_bytes,
                  "largest single plugin send/receive")
      ->capture_default_str();
  sub->add_option("--comms-per-peer", cmd->comms_per_peer,
                  "comm pairs striped per peer")
      ->capture_default_str()
      ->check(CLI::Range(1u, 64u));
  sub->add_option("--staging-slots", cmd->staging_slots,
                  "pinned bounce slots of --chunk-bytes per comm, for GPU "
                  "memory over a plugin without NCCL_PTR_CUDA (0 refuses "
                  "such peers)")
      ->capture_default_str()
      ->check(CLI::Range(
          0u, static_cast<std::uint32_t>(transport::max_staging_slots)));
  sub->add_option("--timeout-ms", cmd->timeout_ms,
                  "deadline of every remote request and transfer")
      ->capture_default_str();
  sub->add_option("--credit-blocks", cmd->credit_blocks,
                  "prefill: blocks to ask each decode worker to lend ahead "
                  "of time (0: negotiate every request)")
      ->capture_default_str();
  sub->add_option("--lend-percent", cmd->lend_percent,
                  "decode: most of the pool lent to one prefill worker")
      ->capture_default_str()
      ->check(CLI::Range(0u, 100u));
  sub->add_option("--queue-limit", cmd->queue_limit,
                  "requests that may wait for free blocks at once "
                  "(back-pressure); more fail at once")
      ->capture_default_str();
  sub->add_option("--queue-wait-ms", cmd->queue_wait_ms,
                  "how long a request may wait for free blocks")
      ->capture_default_str();
  runtime::add_runtime_options(*sub, cmd->runtime);
  sub->callback([cmd, &exit_code] {
    if (cmd->secret.empty())
      if (const char* env = std::getenv("KVFERRY_SECRET"))
        cmd->secret = env;
    if (auto err = runtime::setup_logging(cmd->runtime.log_level,
                                          cmd->runtime.log_file,
                                          "worker " + cmd->name)) {
      std::cerr << "kvferry worker: " << render(err) << "\n";
      exit_code = 2;
      return;
    }
    exit_code = run_worker(*cmd);
  });
}

} // namespace kvferry::app
