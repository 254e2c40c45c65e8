// `kvferry demo` on this machine: its options, which GPUs its two workers
// use, and the processes it starts (a directory and two workers, under a
// private MPS daemon where that helps). demo.cpp runs the requests.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "child_process.hpp"
#include "demo_trace.hpp"
#include "kvferry/actors/worker.hpp"
#include "kvferry/runtime/kv_geometry.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "mps_daemon.hpp"

namespace kvferry::app {

struct demo_command {
  std::uint64_t requests = 100;
  bool layerwise = false;
  bool pull = false;
  std::uint64_t seed = 1;
  // The run's request ids are base+1..base+requests (warm-ups after);
  // unset: a fresh base per run (request_id_base_for).
  std::optional<std::uint64_t> request_id_base;
  std::string directory; // attach instead of starting processes
  // Where the router runs when the demo starts the workers: "decode" (in
  // the demo's own process, which is then the decode worker too: one
  // process crossing fewer per request, issue #15's scheduler inside the
  // decode) or "separate" (a process of its own, as with --directory).
  std::string router = "decode";
  std::uint32_t min_tokens = 64;
  std::uint32_t max_tokens = 1024;
  std::uint32_t inflight = 2;
  std::string routing = "round-robin"; // route_policy.hpp
  kv_geometry geometry;
  std::string dtype = "fp16";
  std::string plugin;
  std::string gpu = "auto";
  std::string prefill_gpu; // empty: --gpu
  std::string decode_gpu;  // empty: --gpu
  std::string transport = "ipc";
  std::string mps = "auto"; // auto, on or off
  std::uint64_t chunk_bytes = std::uint64_t{4} << 20;
  std::uint32_t comms_per_peer = 2;
  std::uint32_t timeout_ms = 10000;
  std::uint32_t deadline_s = 600; // the whole run
  bool quiet = false;
  bool breakdown = false; // the full result table
  // full: every byte written and checked; sampled: a 16-byte stamp per
  // 4 KiB page (actors/kv_stamp.hpp)
  std::string verify = "full";
  bool warm_up = true;
  demo_trace_options trace; // --trace: replay a request trace
  runtime::runtime_options runtime;
};

// Whether the router shares its process with the decode worker (which the
// demo then starts in its own actor system instead of as a child process).
inline bool router_in_decode(const demo_command& cmd) {
  return cmd.directory.empty() && cmd.router == "decode";
}

// The name the demo gives its decode worker (and its certificate).
constexpr const char* demo_decode_name = "demo-decode-0";

// Where the two workers' KV pools live: -1 for host memory (both or neither).
struct worker_gpus {
  int prefill = -1;
  int decode = -1;
  bool on_gpus() const { return prefill >= 0; }
};

// The pool sizes the demo gives its two workers (see run_demo).
struct worker_pools {
  std::uint64_t prefill_blocks = 0;
  std::uint64_t decode_blocks = 0;
  std::uint64_t decode_lend_percent = 0;
};

// What the demo started on this machine. Members are destroyed in reverse
// order: the children stop before the MPS daemon they were clients of.
struct local_processes {
  std::optional<mps_daemon> mps;
  std::vector<std::unique_ptr<child_process>> children;
  bool under_mps = false; // the workers run under MPS (ours or the caller's)
};

// Resolves --gpu / --prefill-gpu / --decode-gpu once, before any process
// starts, so that a missing GPU or an impossible pair fails here (exit 2)
// naming the option instead of in a worker. Empty on success.
std::string choose_worker_gpus(const demo_command& cmd, worker_gpus& g);

// "GPU 0 memory", "host memory", or both GPUs when the workers differ.
std::string describe_worker_memory(const worker_gpus& g);

// How the bytes travel between the demo's two workers.
std::string via(const worker_gpus& g, const std::string& transport,
                const std::string& plugin);

// Both workers' GPU when they share one (the case MPS is for), else -1.
int shared_gpu(const worker_gpus& g);

/// What --mps decides from.
mps_facts mps_facts_for(const demo_command& cmd, mps_mode mode,
                        const worker_gpus& gpus);

// Starts the directory and the workers — under a private MPS daemon when
// `choice` says so — and sets `directory` to its address. With --mps auto,
// workers that fail to start under the daemon are started again without it
// (MPS can fail where CUDA alone works: another user's MPS server on the
// GPU, a compute mode it refuses). 0, or the demo's exit code.
int start_locally(const demo_command& cmd, const worker_gpus& gpus,
                  const worker_pools& pools, const mps_choice& choice,
                  local_processes& local, std::string& directory);

// The decode worker the demo runs in its own process (router_in_decode):
// the flags start_locally would give a decode child, as the library takes
// them. After start_locally (the deployment's secret).
worker_options decode_worker_options(const demo_command& cmd,
                                     const worker_gpus& gpus,
                                     const worker_pools& pools);

// With `choice` starting a private MPS daemon and the router to share the
// decode worker's process: starts the daemon, runs the demo as a child
// process under it (demo_private_mps.hpp), passes it a stop signal, waits,
// quits the daemon. The child's exit code, or nothing where the demo is to
// run in this process without MPS instead (--mps auto: the daemon, or the
// workers under it, did not start; said on stderr).
std::optional<int> run_under_private_daemon(const demo_command& cmd,
                                            const worker_gpus& gpus);

// A failure to start the workers (exit `code`): in a child under its parent
// demo's private daemon with --mps auto, demo_mps_failed_exit instead, so
// that the parent runs the demo again without MPS.
int start_failed(const demo_command& cmd, int code);

/// The exit status for a run stopped by a signal, saying so on stderr.
int interrupted();

} // namespace kvferry::app
