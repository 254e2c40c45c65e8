// `kvferry demo`'s processes on this machine (demo_local.hpp).
#include "demo_local.hpp"

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>

#include <fmt/format.h>

#include "demo_private_mps.hpp"
#include "geometry_flags.hpp"
#include "gpu_option.hpp"
#include "kvferry/actors/worker.hpp"
#include "kvferry/transport/gpu_topology.hpp"
#include "stop_signals.hpp"

namespace kvferry::app {
namespace {

using namespace std::chrono;

// A worker's --prefill-gpu / --decode-gpu, or --gpu when it is not given.
struct worker_gpu_option {
  std::string option; // as the user wrote it, for messages
  std::string value;
};

worker_gpu_option gpu_option_for(const demo_command& cmd,
                                 const std::string& own_option,
                                 const std::string& own_value) {
  if (own_value.empty())
    return {"--gpu", cmd.gpu};
  return {own_option, own_value};
}

// Checks the ordinals against this machine and, over CUDA IPC across two
// GPUs, that the prefill worker's GPU can write the decode worker's: the
// producer's transfer actor runs the copy kernel in push and in pull mode.
std::string check_worker_gpus(const demo_command& cmd, const worker_gpus& g,
                              const worker_gpu_option& prefill,
                              const worker_gpu_option& decode) {
  auto gpus = transport::system_gpu_topology();
  try {
    transport::check_gpu_ordinal(*gpus, g.prefill, prefill.option);
    transport::check_gpu_ordinal(*gpus, g.decode, decode.option);
    if (cmd.transport == "ipc")
      transport::check_ipc_peer_access(*gpus, g.prefill, g.decode);
  } catch (const transport::no_peer_access& e) {
    return fmt::format("{} {} {} {} over CUDA IPC: {}", prefill.option,
                       prefill.value, decode.option, decode.value, e.what());
  } catch (const std::exception& e) {
    return e.what();
  }
  return {};
}

// Starts a directory and the two workers, `worker_env` added to the
// workers' environment only, and waits until all three are up. Returns the
// directory's address; throws naming the process that failed. `children`
// holds whatever started, so that its owner's cleanup stops it.
std::string
start_local_processes(const demo_command& cmd, const worker_gpus& gpus,
                      const worker_pools& pools, const env_pairs& worker_env,
                      std::vector<std::unique_ptr<child_process>>& children) {
  // One secret per run, passed through the environment (not argv).
  std::random_device rd;
  auto secret = fmt::format("{:016x}{:016x}", std::uint64_t{rd()} << 32 | rd(),
                            std::uint64_t{rd()} << 32 | rd());
  setenv("KVFERRY_SECRET", secret.c_str(), 1);
  auto level = cmd.runtime.log_level.empty() ? "warn" : cmd.runtime.log_level;
  std::vector<std::string> dir_args{"kvferry",     "directory", "--bind",
                                    "127.0.0.1",   "--port",    "0",
                                    "--log-level", level};
  if (cmd.runtime.tls.insecure_plaintext)
    dir_args.push_back("--insecure-plaintext");
  children.push_back(
      std::make_unique<child_process>("directory", std::move(dir_args)));
  auto line = children.back()->wait_for_line("listening on", seconds(15));
  auto directory = "127.0.0.1:" + line.substr(line.rfind(':') + 1);
  std::vector<std::string> roles{"prefill"};
  if (!router_in_decode(cmd)) // else the demo's own process is the decode
    roles.push_back("decode");
  for (const auto& role : roles) {
    const bool decode = role == "decode";
    auto gpu = decode ? gpus.decode : gpus.prefill;
    // One flag and its value per line.
    // clang-format off
    std::vector<std::string> args{
        "kvferry", "worker",
        "--name", fmt::format("demo-{}-0", role),
        "--role", role,
        "--directory", directory,
        "--bind", "127.0.0.1",
        "--gpu", gpu < 0 ? std::string{"none"} : std::to_string(gpu),
        "--transport", cmd.transport,
        "--pool-blocks", std::to_string(decode ? pools.decode_blocks
                                               : pools.prefill_blocks),
        "--chunk-bytes", std::to_string(cmd.chunk_bytes),
        "--comms-per-peer", std::to_string(cmd.comms_per_peer),
        "--timeout-ms", std::to_string(cmd.timeout_ms),
        "--scheduler", cmd.runtime.scheduler_policy,
        "--threads", std::to_string(cmd.runtime.threads),
        "--io-workers", std::to_string(cmd.runtime.io_workers),
        "--log-level", level};
    // clang-format on
    for (auto& a : geometry_args(cmd.geometry))
      args.push_back(a);
    if (decode) {
      args.push_back("--lend-percent");
      args.push_back(std::to_string(pools.decode_lend_percent));
    }
    if (!cmd.plugin.empty()) {
      args.push_back("--plugin");
      args.push_back(cmd.plugin);
    }
    if (cmd.runtime.tls.insecure_plaintext)
      args.push_back("--insecure-plaintext");
    children.push_back(std::make_unique<child_process>(
        fmt::format("worker demo-{}-0", role), args, worker_env));
  }
  for (std::size_t k = 1; k < children.size(); ++k)
    children[k]->wait_for_line(" ready", seconds(30));
  return directory;
}

// Waits for the demo's child, passing it this process's first stop signal
// (the child has a process group of its own: a terminal's ^C reaches only
// this process). Its wait status.
int wait_passing_stop(subprocess& child) {
  bool passed = false;
  while (!child.wait(milliseconds(100)))
    if (!passed && stop_signal() != 0) {
      child.signal(stop_signal());
      passed = true;
    }
  return *child.exit_status();
}

// Starts the private MPS daemon when `choice` says so; the variables that
// make the workers its clients, none when it did not start (--mps auto:
// running without MPS is the fallback). Exit code 1 when --mps on failed.
int start_private_mps(const demo_command& cmd, const worker_gpus& gpus,
                      local_processes& local, env_pairs& worker_env) {
  try {
    worker_env = local.mps.emplace().start();
  } catch (const std::exception& e) {
    local.mps.reset();
    if (cmd.mps == "on") {
      std::cerr << "kvferry demo: --mps on: " << e.what() << "\n";
      return 1;
    }
    std::cerr << "kvferry demo: could not start a private MPS daemon ("
              << e.what()
              << "): the workers run without MPS and their kernels will "
                 "time-slice (docs/gpu.md, 'Contention in the demo')\n";
    return 0;
  }
  local.under_mps = true;
  auto gpu = shared_gpu(gpus);
  fmt::print(stderr,
             "kvferry demo: started a private MPS daemon for {} (pipe "
             "directory {}); --mps off to run without\n",
             gpu >= 0 ? fmt::format("GPU {}", gpu) : std::string{"the workers"},
             local.mps->pipe_directory());
  return 0;
}

} // namespace

int interrupted() {
  int sig = stop_signal();
  std::cerr << "kvferry demo: interrupted (" << strsignal(sig)
            << "), stopping the processes it started\n";
  return 128 + sig;
}

// Resolves --gpu / --prefill-gpu / --decode-gpu once, before any process
// starts, so that a missing GPU or an impossible pair fails here (exit 2)
// naming the option instead of in a worker. Empty on success.
std::string choose_worker_gpus(const demo_command& cmd, worker_gpus& g) {
  auto prefill = gpu_option_for(cmd, "--prefill-gpu", cmd.prefill_gpu);
  auto decode = gpu_option_for(cmd, "--decode-gpu", cmd.decode_gpu);
  for (const auto* o : {&prefill, &decode})
    if (auto bad = check_gpu_option(o->option, o->value); !bad.empty())
      return bad;
  // Under its parent's daemon the parent has said what auto chose.
  auto who = under_parents_private_daemon() ? "" : "kvferry demo";
  g.prefill = resolve_gpu(prefill.value, who);
  g.decode = decode.value == prefill.value ? g.prefill
                                           : resolve_gpu(decode.value, who);
  if ((g.prefill < 0) != (g.decode < 0))
    return fmt::format("{} {} with {} {}: the demo puts both workers' pools "
                       "in GPU memory or both in host memory",
                       prefill.option, prefill.value, decode.option,
                       decode.value);
  return g.on_gpus() ? check_worker_gpus(cmd, g, prefill, decode)
                     : std::string{};
}

// "GPU 0 memory", "host memory", or both GPUs when the workers differ.
std::string describe_worker_memory(const worker_gpus& g) {
  if (g.prefill == g.decode)
    return describe_memory(g.prefill);
  return fmt::format("prefill GPU {} / decode GPU {} memory", g.prefill,
                     g.decode);
}

// How the bytes travel between the demo's two workers.
std::string via(const worker_gpus& g, const std::string& transport,
                const std::string& plugin) {
  auto net = plugin.empty() ? std::string{"kvsock"} : plugin;
  if (!g.on_gpus())
    return ", " + net;
  return transport == "ipc" ? ", CUDA IPC" : ", " + net + " (GPU memory)";
}

// Both workers' GPU when they share one (the case MPS is for), else -1.
int shared_gpu(const worker_gpus& g) {
  return g.on_gpus() && g.prefill == g.decode ? g.prefill : -1;
}

mps_facts mps_facts_for(const demo_command& cmd, mps_mode mode,
                        const worker_gpus& gpus) {
  mps_facts facts;
  facts.mode = mode;
  facts.starts_workers = cmd.directory.empty();
  facts.shared_gpu = shared_gpu(gpus);
  if (const char* pipe = std::getenv("CUDA_MPS_PIPE_DIRECTORY")) {
    facts.callers_pipe_directory = pipe;
    facts.parent_demos_daemon = under_parents_private_daemon();
  }
  facts.control_found = !find_on_path(mps_daemon::control_program).empty();
  return facts;
}

// Starts the directory and the workers — under a private MPS daemon when
// `choice` says so — and sets `directory` to its address. With --mps auto,
// workers that fail to start under the daemon are started again without it
// (MPS can fail where CUDA alone works: another user's MPS server on the
// GPU, a compute mode it refuses). 0, or the demo's exit code.
int start_locally(const demo_command& cmd, const worker_gpus& gpus,
                  const worker_pools& pools, const mps_choice& choice,
                  local_processes& local, std::string& directory) {
  local.under_mps = choice.callers_daemon;
  env_pairs worker_env;
  if (choice.start)
    if (auto code = start_private_mps(cmd, gpus, local, worker_env))
      return code;
  std::string failure;
  try {
    directory =
        start_local_processes(cmd, gpus, pools, worker_env, local.children);
    return 0;
  } catch (const std::exception& e) {
    failure = e.what();
  }
  if (stop_signal() != 0)
    return interrupted();
  if (under_parents_private_daemon()) {
    std::cerr << "kvferry demo: under the private MPS daemon: " << failure
              << "\n";
    return start_failed(cmd, 1);
  }
  if (!local.mps || cmd.mps == "on") {
    std::cerr << "kvferry demo: "
              << (local.mps ? "--mps on: under the private MPS daemon: " : "")
              << failure << "\n";
    return 1;
  }
  local.children.clear();
  if (auto err = local.mps->stop(); !err.empty())
    std::cerr << "kvferry demo: stopping the private MPS daemon: " << err
              << "\n";
  local.mps.reset();
  local.under_mps = false;
  std::cerr << "kvferry demo: MPS did not work: the workers did not start "
               "under the private MPS daemon ("
            << failure << "); retrying without MPS\n";
  try {
    directory = start_local_processes(cmd, gpus, pools, {}, local.children);
    return 0;
  } catch (const std::exception& e) {
    if (stop_signal() != 0)
      return interrupted();
    std::cerr << "kvferry demo: " << e.what() << "\n";
    return 1;
  }
}

std::optional<int> run_under_private_daemon(const demo_command& cmd,
                                            const worker_gpus& gpus) {
  stop_gracefully(); // a stop signal goes to the child, which stops cleanly
  local_processes local;
  env_pairs daemon_env;
  if (auto code = start_private_mps(cmd, gpus, local, daemon_env))
    return code;
  if (!local.mps)
    return std::nullopt; // --mps auto without a daemon: said why
  int code = 1;
  try {
    if (stop_signal() != 0) // while the daemon started: no child then
      code = interrupted();
    else {
      subprocess child{private_daemon_child(own_arguments(), daemon_env)};
      code = exit_code_of(wait_passing_stop(child));
    }
  } catch (const std::exception& e) {
    std::cerr << "kvferry demo: the demo under the private MPS daemon: "
              << e.what() << "\n";
  }
  // Its clients have exited: `quit` does not wait for them.
  if (auto err = local.mps->stop(); !err.empty())
    std::cerr << "kvferry demo: stopping the private MPS daemon: " << err
              << "\n";
  if (code != demo_mps_failed_exit)
    return code;
  std::cerr << "kvferry demo: MPS did not work: the demo did not start under "
               "the private MPS daemon (above); retrying without MPS\n";
  return std::nullopt;
}

int start_failed(const demo_command& cmd, int code) {
  return under_parents_private_daemon() && cmd.mps == "auto"
             ? demo_mps_failed_exit
             : code;
}

// The decode worker's flags as the library takes them: what
// start_local_processes passes a decode child, for the demo's own process.
worker_options decode_worker_options(const demo_command& cmd,
                                     const worker_gpus& gpus,
                                     const worker_pools& pools) {
  worker_options o;
  o.name = demo_decode_name;
  o.role = worker_role::decode;
  if (const char* secret = std::getenv("KVFERRY_SECRET"))
    o.secret = secret; // set by start_local_processes
  o.bind = "127.0.0.1";
  o.gpu = gpus.decode;
  o.use_ipc = cmd.transport == "ipc";
  o.pool_blocks = pools.decode_blocks;
  o.geometry = cmd.geometry;
  o.plugin = cmd.plugin;
  o.chunk_bytes = cmd.chunk_bytes;
  o.comms_per_peer = cmd.comms_per_peer;
  o.timeout_ms = cmd.timeout_ms;
  o.lend_percent = static_cast<std::uint32_t>(pools.decode_lend_percent);
  return o;
}

} // namespace kvferry::app
