// `kvferry demo --trace FILE`: the demo's requests come from a request trace
// (Mooncake JSONL or Azure CSV, read by the simulator's reader, sim/trace.hpp)
// instead of a seeded random stream. Each request is sent at its trace time
// (times --time-scale), its prompt capped to what the pools hold, and the
// run writes one CSV row per request with the simulator's columns
// (docs/sim.md, "Fidelity"), plus the trace as replayed, so that `kvferry
// sim` can be run on exactly the same requests.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "kvferry/actors/router.hpp"

namespace kvferry::app {

struct demo_command;

struct demo_trace_options {
  std::string file;             // empty: no trace (the seeded stream)
  double time_scale = 1;        // replay time = trace time x this
  std::uint32_t max_blocks = 0; // prompt cap in blocks; 0: --max-tokens'
  std::string out_dir;          // requests.csv and trace.jsonl; "" = none
};

/// The requests a replay sends, in trace order.
struct demo_trace {
  struct request {
    std::uint64_t index = 0, line = 0; // in the trace file
    std::int64_t arrival_ns = 0;       // scaled, from the first request
    std::uint32_t tokens = 0;          // the prompt sent (capped)
    std::uint32_t trace_tokens = 0;    // the prompt in the trace
    std::uint32_t output_tokens = 0;   // from the trace (not decoded)
  };
  std::string format; // "mooncake-jsonl" / "azure-csv"
  std::vector<request> requests;
};

void add_demo_trace_options(CLI::App& demo, demo_trace_options& options);

/// Reads the first `cmd.requests` requests of `cmd.trace.file` into `out`
/// and fits the command to them: its request count and token range (which
/// size the pools). Empty, or what is wrong (a bad trace line names its file
/// and line).
std::string load_demo_trace(demo_command& cmd, demo_trace& out);

/// The router's plan for the replay: prompt lengths and arrival times.
void plan_trace_requests(const demo_trace& trace, router_config& plan);

/// Writes `requests.csv` (one row per answered request) and `trace.jsonl`
/// (the requests as replayed) into the --out folder, if one was given.
/// Empty, or what could not be written.
std::string write_demo_trace(const demo_command& cmd, const demo_trace& trace,
                             const router_config& plan,
                             const router_results& results);

} // namespace kvferry::app
