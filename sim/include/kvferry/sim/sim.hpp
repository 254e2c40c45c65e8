// `kvferry sim`: replays a request trace against a topology in virtual time
// (docs/sim.md). The engine is a discrete-event simulation with modelled
// links, GPUs and KV pools; the report is a summary (table and JSON) and one
// CSV row per request. Same inputs, byte-identical outputs.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kvferry/runtime/topology.hpp"
#include "kvferry/sim/histogram.hpp"
#include "kvferry/sim/trace.hpp"

namespace kvferry::sim {

struct run_options {
  std::string out_dir;    // requests.csv and summary.json here; "" = none
  double ttft_slo_ms = 0; // 0: no SLO attainment figure
  // Called now and then with the fraction of the trace read (0..1) and
  // the requests done, for a progress line; may be empty.
  std::function<void(double, std::uint64_t)> progress;
};

// Where the time to first token went. The five parts of one request add up
// to its TTFT exactly.
struct ttft_parts {
  histogram queue;    // arrival -> prefill starts (router hop, FIFO queue)
  histogram prefill;  // the prefill itself
  histogram wait;     // prefill done -> decode pool granted the blocks
  histogram transfer; // what of the KV transfer is left after prefill/grant
  histogram decode;   // KV complete -> end of the first decode step
  histogram total;    // TTFT
};

struct resource_use {
  std::string name; // "nic-out p-host", "ipc-in decode-0", ...
  double capacity_gbyte_per_s = 0;
  double bytes = 0;         // carried
  double busy_fraction = 0; // bytes / (capacity x simulated span)
};

struct pool_use {
  std::string worker;
  std::uint64_t capacity_blocks = 0; // layer-blocks
  double mean_fraction = 0;          // time-weighted used / capacity
  std::uint64_t peak_blocks = 0;
  std::uint64_t waited = 0; // requests whose allocation had to wait
};

struct summary {
  std::string trace, trace_format, topology, routing;
  bool layerwise = false, prefix_reuse = false;
  std::uint64_t prefill_workers = 0, decode_workers = 0, hosts = 0;
  std::uint64_t requests = 0, completed = 0, rejected = 0;
  double span_s = 0; // virtual time from first arrival to last completion
  ttft_parts ttft;
  histogram transfer_time; // first byte scheduled -> last byte landed
  histogram e2e;           // arrival -> last token
  double bytes_moved = 0, bytes_saved = 0;
  std::uint64_t ipc_transfers = 0, net_transfers = 0;
  double ttft_slo_ms = 0;
  std::uint64_t slo_met = 0;
  std::vector<resource_use> links;
  std::vector<pool_use> pools;
};

/// Runs the whole trace. Throws trace_error for a bad trace line and
/// std::runtime_error for an output file that cannot be written.
summary run(trace_reader& trace, const topology::deployment& topology,
            const run_options& options);

/// The summary as a person reads it (fixed-width table, ms).
std::string format_table(const summary& s);
/// The summary as JSON (stable key order, fixed precision).
std::string to_json(const summary& s);

/// y at x on a piecewise-linear table (linear beyond both ends along the
/// nearest segment, never below 0). Exposed for tests.
double interpolate(const std::vector<topology::sim_point>& table, double x);

} // namespace kvferry::sim
