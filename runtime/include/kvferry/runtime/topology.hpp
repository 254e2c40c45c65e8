// The deployment topology: which hosts, which workers on which GPUs with which
// network plugin, where the directory lives, the model's KV layout and the
// transfer settings. Loaded from YAML (docs/topology.md) and validated before
// anything starts, so that a typo fails in one second on every host instead of
// as a missing peer ten minutes later on one of them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "kvferry/transport/plugin_search.hpp"

namespace kvferry::topology {

// Where a value came from, for messages: "topo.yaml:7:5". Line and column are
// 1-based; 0 when the value was defaulted rather than written in the file.
struct location {
  std::string file;
  int line = 0;
  int column = 0;
  std::string str() const; // "file:line:col", or "file" when unknown
};

enum class worker_role { prefill, decode };
enum class restart_policy { never, on_failure };
enum class transfer_mode { push, pull };

const char* to_string(worker_role role);
const char* to_string(restart_policy policy);
const char* to_string(transfer_mode mode);

struct host_spec {
  std::string name;
  std::string address; // what the other hosts dial: an IP or a DNS name
  location where;
};

struct worker_spec {
  std::string name;
  worker_role role = worker_role::prefill;
  std::string host;              // a host_spec::name
  std::optional<int> gpu;        // nullopt: no GPU, host memory only
  std::string plugin = "kvsock"; // a name (libnccl-net-NAME.so) or a path
  std::string plugin_file;       // the resolved .so, empty if it was not found
  std::map<std::string, std::string>
      plugin_env;                   // set in the worker's environment
  std::vector<std::string> devices; // plugin device names to use; empty: all
  std::uint32_t pool_blocks = 4096; // layer-blocks; the worker's default too
  restart_policy restart = restart_policy::on_failure;
  std::uint16_t metrics_port = 0; // 0: no metrics endpoint
  location where;
};

struct directory_spec {
  std::string host; // a host_spec::name
  std::uint16_t port = 7470;
  location where;
};

// Default: Llama-3-8B (32 layers, 8 KV heads of 128, fp16, 16-token blocks).
struct model_spec {
  std::uint32_t layers = 32;
  std::uint32_t kv_heads = 8;
  std::uint32_t head_dim = 128;
  std::string dtype = "fp16"; // fp16 | bf16 | fp32
  std::uint32_t block_tokens = 16;
  std::uint32_t dtype_bytes() const;
  // Bytes of one block of one layer, K and V together.
  std::uint64_t block_bytes_per_layer() const;
};

struct transfer_spec {
  transfer_mode mode = transfer_mode::push;
  bool layerwise = false;
  std::uint64_t chunk_bytes = 4u << 20;
  std::uint32_t comms_per_peer = 2;
  // Pinned bounce slots per comm for GPU memory over a host-only plugin.
  std::uint32_t staging_slots = 4;
  std::uint32_t timeout_ms = 30000;
};

// The control plane (directory and worker actors). At most one secret source.
struct control_spec {
  // Address the control sockets bind to: an IP, or "host" for the address of
  // the host the process runs on (what a multi-host deployment wants).
  std::string bind = "127.0.0.1";
  std::string secret;      // inline (discouraged: it sits in the file)
  std::string secret_file; // first line of this file
  std::string secret_env;  // name of an environment variable
  location where;
};

// Mutual TLS of the control plane (docs/security.md): `tls: off`, or
// `tls: {dir: PATH}`.
struct tls_spec {
  bool enabled = true; // off: plain TCP, logged at warn by every process
  // ca.crt and NAME.crt/NAME.key per process ("directory", each worker,
  // "client"); empty: $KVFERRY_TLS_DIR, else ./kvferry-pki. `kvferry launch`
  // creates what is missing there.
  std::string dir;
  location where;
};

// How `kvferry launch` supervises this host's processes.
struct launch_spec {
  std::string log_dir = "./kvferry-logs";
  std::uint32_t max_restarts = 5;         // per worker, then it failed for good
  std::uint32_t restart_backoff_ms = 500; // doubles per restart, capped at 30 s
  std::uint32_t stop_grace_ms = 5000;     // SIGTERM, wait this long, SIGKILL
};

// `kvferry sim` only (docs/sim.md): the modelled hardware and policies. The
// defaults, and where each comes from, are in docs/sim.md; a launch ignores
// this section.
enum class sim_routing { round_robin, least_loaded, prefix_aware };
const char* to_string(sim_routing routing);

// One point of a piecewise-linear table: x (prompt tokens, batch size) -> ms.
struct sim_point {
  double x = 0;
  double ms = 0;
};

// One point of `sim.transfer_spread_quantiles`: the transfer factor at
// probability p (the factor a fraction p of the transfers stay below).
struct sim_quantile {
  double p = 0;
  double factor = 1;
};

// One entry of `sim.faults`: the text as `kvferry sim --fault` takes it
// (the simulator reads it: sim/src/fault.cpp) and where it was written.
struct sim_fault {
  std::string text;
  location where;
};

struct sim_spec {
  double nic_gbit_per_s = 100;     // one NIC, each direction
  std::uint32_t nics_per_host = 1; // a host's NICs act as one pipe
  double latency_us = 10;          // one way, host to host
  double message_us = 5;           // per plugin message (chunk) sent
  double block_us = 0.004;         // per layer-block in a transfer plan
  double ipc_gbyte_per_s = 1330;   // same-host CUDA IPC copy, per GPU
  double ipc_setup_us = 41;        // per same-host copy (a part), fixed
  double hop_us = 50;              // one CAF message between processes
  double router_us = 0;            // a request's arrival -> the router sends it
  // Each transfer's time (fixed costs and bytes) x a log-normal factor of
  // this median and log standard deviation, drawn by request (0: none).
  double transfer_spread_median = 1;
  double transfer_spread_sigma = 0;
  // Or the factor's own distribution, as a quantile table (p from 0 to 1,
  // factors nondecreasing; linear in between, the end factors beyond):
  // replaces the two keys above. Empty: the log-normal.
  std::vector<sim_quantile> transfer_spread_quantiles;
  // Prefill time by prompt tokens; decode step time by batch size.
  std::vector<sim_point> prefill_ms = {{1, 4.8},      {512, 20.6},
                                       {2048, 84.7},  {8192, 371.6},
                                       {32768, 2014}, {131072, 16503}};
  std::vector<sim_point> decode_step_ms = {
      {1, 6}, {16, 7}, {64, 9}, {128, 12}, {256, 18}};
  std::uint32_t decode_max_batch = 256;
  sim_routing routing = sim_routing::round_robin;
  bool prefix_reuse = true; // decode workers keep blocks of earlier requests
  std::vector<sim_fault> faults; // happen in every run, beside --fault's
  location where;
};

struct deployment {
  std::string name = "kvferry";
  std::string source_file;
  directory_spec directory;
  std::vector<host_spec> hosts;
  std::vector<worker_spec> workers;
  model_spec model;
  transfer_spec transfer;
  control_spec control;
  tls_spec tls;
  launch_spec launch;
  sim_spec sim;

  const host_spec* find_host(const std::string& name) const;
  const worker_spec* find_worker(const std::string& name) const;
  std::vector<const worker_spec*> workers_on(const std::string& host) const;
  // "ADDR:PORT" of the directory, as workers on any host dial it.
  std::string directory_endpoint() const;
  // The address a process on `host` binds its control sockets to.
  std::string bind_address_for(const std::string& host) const;
};

struct load_options {
  // A plugin that cannot be found is a warning rather than an error (for
  // checking a file meant for other machines, e.g. the GPUDirect-TCPX one).
  bool allow_missing_plugins = false;
  // Where plugins are looked for: the loader's own rule
  // (transport::plugin_search), so that a plugin this check accepts is the
  // file a worker loads. Default: this process's environment and binary.
  transport::plugin_search plugins;
};

struct load_result {
  std::optional<deployment> topology; // set when there are no errors
  std::vector<std::string> errors;    // each names file:line:col
  std::vector<std::string> warnings;
  bool ok() const { return errors.empty(); }
  // Errors then warnings, one per line, prefixed "error: " / "warning: ".
  std::string report() const;
};

// A topology file is at most this many bytes (checked before parsing: a
// 4-host, 64-worker file is about 8 KiB), nests at most this deep (a topology
// needs 4 levels) and holds one YAML document.
inline constexpr std::size_t max_topology_bytes = std::size_t{1} << 20;
inline constexpr int max_topology_depth = 16;

// Parses and validates; collects every problem rather than stopping at the
// first. `file_name` is only used in messages.
load_result parse(const std::string& yaml_text, const std::string& file_name,
                  const load_options& options = {});
load_result load_file(const std::string& path,
                      const load_options& options = {});

// Finds a plugin as the loader does (transport::find_plugin_file with
// options.plugins): a value with a '/' is a path that must exist; otherwise
// libnccl-net-NAME.so in transport::plugin_search_dirs. Returns the file, or
// "" if none.
std::string find_plugin(const std::string& plugin, const load_options& options);

// The closest of `candidates` to `word` within a small edit distance, or "".
std::string nearest(const std::string& word,
                    const std::vector<std::string>& candidates);

// Reads the control secret the file names (inline, file or environment).
// Returns nullopt with `why` set when a named source is unreadable/unset;
// an empty string when the file configures no secret.
std::optional<std::string> read_secret(const control_spec& control,
                                       std::string& why);

} // namespace kvferry::topology
