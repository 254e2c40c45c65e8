// `kvferry worker`: a long-lived prefill or decode worker. It loads the
// network plugin, allocates and registers its KV block pool, spawns its
// transfer actor and its app actor (producer for prefill, consumer for
// decode), registers both with the directory through its membership keeper
// (which renews the lease and registers again after any loss) and serves
// until a stop signal (stop_signals.hpp). `kvferry launch` and `kvferry demo`
// spawn it with exactly these flags.
#include "kvferry/actors/worker.hpp"

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <signal.h>
#include <string>
#include <unistd.h>
#include <vector>

#include <caf/all.hpp>
#include <caf/io/middleman.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "commands.hpp"
#include "geometry_flags.hpp"
#include "gpu_option.hpp"
#include "kvferry/actors/directory.hpp"
#include "kvferry/runtime/logging.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "kvferry/runtime/tls.hpp"
#include "kvferry/runtime/worker_limits.hpp"
#include "kvferry/transport/channel.hpp"
#include "kvferry/transport/device_choice.hpp"
#include "kvferry/transport/gpu_info.hpp"
#include "kvferry/transport/gpu_memory.hpp"
#include "kvferry/transport/plugin.hpp"
#include "metrics_endpoint.hpp"
#include "stop_signals.hpp"
#include "worker_process.hpp"

namespace kvferry::app {
namespace {

// The flags. Those the library takes as they are bind to `options`
// directly (one set of defaults: worker_options'); the rest are words that
// run_worker turns into options.
struct worker_command {
  worker_options options;
  std::string role;
  std::string directory;
  std::string gpu = "none";
  std::string transport = "ipc";
  std::string dtype = "fp16";
  std::string mode = "push";
  runtime::runtime_options runtime;
};

// Everything that can be checked before any resource is taken.
std::string validate(worker_command& cmd, worker_role& role) {
  if (cmd.options.name.empty())
    return "--name is required";
  if (!parse_role(cmd.role, role))
    return fmt::format("--role '{}': expected prefill or decode", cmd.role);
  if (auto bad = resolve_dtype(cmd.options.geometry, cmd.dtype); !bad.empty())
    return bad;
  if (cmd.mode != "push" && cmd.mode != "pull")
    return fmt::format("--mode '{}': expected push or pull", cmd.mode);
  if (auto bad = check_gpu_option("--gpu", cmd.gpu); !bad.empty())
    return bad;
  if (cmd.transport != "ipc" && cmd.transport != "net")
    return fmt::format("--transport '{}': expected ipc or net", cmd.transport);
  // The rules a topology's workers are checked against (launch --dry-run).
  runtime::worker_params params{
      cmd.options.geometry,       cmd.options.pool_blocks,
      cmd.gpu != "none",          cmd.options.chunk_bytes,
      cmd.options.comms_per_peer, cmd.options.staging_slots,
      cmd.options.timeout_ms};
  return runtime::describe_as_flags(
      runtime::check_worker_params(params, runtime::physical_memory_bytes()));
}

// The first registration must succeed within this (exit 1, naming the
// directory): a wrong address or secret should not hang a start. After it,
// the membership keeper heals every loss by itself, without a limit.
constexpr auto first_registration_limit = std::chrono::seconds(10);

worker_options library_options(const worker_command& cmd, worker_role role,
                               int gpu) {
  worker_options o = cmd.options;
  o.role = role;
  o.gpu = gpu;
  o.use_ipc = cmd.transport == "ipc";
  o.pull = cmd.mode == "pull";
  return o;
}

// Serves until a stop signal; returns it. The keeper renews the lease.
int serve_until_signal() {
  for (;;)
    if (int sig = wait_stop_signal(std::chrono::seconds(1)))
      return sig;
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
  stop_gracefully();
  prepare_worker_process(cmd.options.name, cmd.options.bind);
  runtime::system_config cfg{cmd.runtime};
  if (auto err = cfg.secure(cmd.runtime.tls, cmd.options.name)) {
    spdlog::error("worker {}: {}", cmd.options.name, render(err));
    return 1;
  }
  no_automatic_connections(cfg);
  caf::actor_system sys{cfg};
  auto exporter = start_metrics_endpoint("worker " + cmd.options.name);
  if (!exporter)
    return 1;
  auto gpu = resolve_gpu(cmd.gpu, "worker " + cmd.options.name);
  auto opts = library_options(cmd, role, gpu);
  opts.directory_host = dir_host;
  opts.directory_port = dir_port;
  auto worker = start_worker(sys, opts);
  if (!worker) {
    spdlog::error("{}", render(worker.error()));
    return 1;
  }
  int sig = 0;
  auto err = worker->await_registration(first_registration_limit, [&] {
    sig = stop_signal();
    return sig != 0;
  });
  if (err && sig == 0) {
    spdlog::error("{}", render(err));
    worker->stop();
    return 1;
  }
  if (sig == 0) {
    // A parent process (demo, launch, tests) waits for this line.
    std::cout << "kvferry worker " << cmd.options.name << " ready (" << cmd.role
              << ", plugin " << worker->net->name() << ", "
              << describe_memory(gpu)
              << (worker->info.ipc_capable
                      ? ", CUDA IPC for same-host GPU peers"
                      : "")
              << ", " << cmd.options.pool_blocks << " blocks of "
              << cmd.options.geometry.layer_block_bytes() << " B)" << std::endl;
    sig = serve_until_signal();
  }
  spdlog::info("worker {}: {} received, leaving", cmd.options.name,
               stop_signal_name(sig));
  worker->stop(); // within 1 s
  // CAF 0.17's actor_system destructor waits until every detached actor
  // object is destroyed, and a peer node's proxies can keep our transfer
  // actor referenced until that node's connection is torn down too — when
  // the whole deployment stops at once this stalled shutdown for seconds.
  // Our actors have stopped and left the directory; the plugin's sockets
  // and memory go with the process, so end it here.
  spdlog::info("worker {}: stopped", cmd.options.name);
  spdlog::shutdown();
  std::cout.flush();
  std::_Exit(0);
}

} // namespace

void add_worker(CLI::App& root, int& exit_code) {
  auto cmd = std::make_shared<worker_command>();
  auto* sub = root.add_subcommand(
      "worker", "Run a prefill or decode worker until SIGINT/SIGTERM");
  sub->add_option("--name", cmd->options.name, "unique worker name")
      ->required();
  sub->add_option("--role", cmd->role, "prefill or decode")->required();
  sub->add_option("--directory", cmd->directory, "HOST:PORT of the directory")
      ->required();
  sub->add_option("--secret", cmd->options.secret,
                  "deployment secret (default: $KVFERRY_SECRET)");
  sub->add_option("--bind", cmd->options.bind,
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
  sub->add_option("--plugin", cmd->options.plugin,
                  "net plugin name or path (default $KVFERRY_NET_PLUGIN, "
                  "else kvsock)");
  sub->add_option("--devices", cmd->options.devices,
                  "plugin devices (NICs) to stripe transfers over: indexes, "
                  "names or all, comma separated (default "
                  "$KVFERRY_NET_DEVICES, else the one nearest the GPU)")
      ->delimiter(',');
  sub->add_option("--pool-blocks", cmd->options.pool_blocks,
                  "KV block pool size in layer-blocks (the pool holds "
                  "this / --layers blocks of every layer)")
      ->capture_default_str();
  add_geometry_flags(*sub, cmd->options.geometry, cmd->dtype);
  sub->add_option("--mode", cmd->mode, "push or pull (producer's default)")
      ->capture_default_str();
  sub->add_flag("--layerwise", cmd->options.layerwise,
                "ship each layer as soon as it is written (producer default)");
  sub->add_option("--chunk-bytes", cmd->options.chunk_bytes,
                  "largest single plugin send/receive")
      ->capture_default_str();
  sub->add_option("--comms-per-peer", cmd->options.comms_per_peer,
                  "comm pairs striped per peer")
      ->capture_default_str()
      ->check(CLI::Range(1u, 64u));
  sub->add_option("--staging-slots", cmd->options.staging_slots,
                  "pinned bounce slots of --chunk-bytes per comm, for GPU "
                  "memory over a plugin without NCCL_PTR_CUDA (0 refuses "
                  "such peers)")
      ->capture_default_str()
      ->check(CLI::Range(
          0u, static_cast<std::uint32_t>(transport::max_staging_slots)));
  sub->add_option("--timeout-ms", cmd->options.timeout_ms,
                  "deadline of every remote request and transfer")
      ->capture_default_str();
  sub->add_option("--credit-blocks", cmd->options.credit_blocks,
                  "prefill: blocks (of every layer) to ask each decode "
                  "worker to lend ahead of time (0: negotiate every request)")
      ->capture_default_str();
  sub->add_option("--lend-percent", cmd->options.lend_percent,
                  "decode: most of the pool lent to one prefill worker")
      ->capture_default_str()
      ->check(CLI::Range(0u, 100u));
  sub->add_option("--queue-limit", cmd->options.queue_limit,
                  "requests that may wait for free blocks at once "
                  "(back-pressure); more fail at once")
      ->capture_default_str();
  sub->add_option("--queue-wait-ms", cmd->options.queue_wait_ms,
                  "how long a request may wait for free blocks")
      ->capture_default_str();
  runtime::add_runtime_options(*sub, cmd->runtime);
  sub->callback([cmd, &exit_code] {
    if (cmd->options.secret.empty())
      if (const char* env = std::getenv("KVFERRY_SECRET"))
        cmd->options.secret = env;
    // What `kvferry launch` passes from the topology's `devices`.
    if (cmd->options.devices.empty())
      if (const char* env = std::getenv("KVFERRY_NET_DEVICES"))
        cmd->options.devices = transport::parse_device_list(env);
    if (auto err = runtime::setup_logging(cmd->runtime.log_level,
                                          cmd->runtime.log_file,
                                          "worker " + cmd->options.name)) {
      std::cerr << "kvferry worker: " << render(err) << "\n";
      exit_code = 2;
      return;
    }
    exit_code = run_worker(*cmd);
  });
}

} // namespace kvferry::app
