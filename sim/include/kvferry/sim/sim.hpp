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
#include "kvferry/sim/timeline.hpp"
#include "kvferry/sim/trace.hpp"

namespace kvferry::sim {

// A fault at a virtual time (docs/sim.md, "Faults"): a worker dies, or a
// host's NICs slow down (both directions).
struct fault {
  enum class kind { worker_down, link_slow } what = kind::worker_down;
  std::string target;    // the worker's name, or the host's
  double at_s = 0;       // virtual seconds after the trace's first request
  double gbit_per_s = 0; // link_slow: the host's NIC rate from then on
  std::string text;      // as written, for the report
  // Where it was written: "--fault", or "FILE:LINE:COL: sim.faults entry".
  std::string origin = "--fault";
};

/// "down=WORKER,at=SECONDS" or "slow=HOST,gbit=RATE,at=SECONDS" (the
/// `--fault` flag, or an entry of the topology's `sim.faults` written at
/// `origin`). Throws std::invalid_argument starting with the origin and the
/// text, saying what is wrong.
fault parse_fault(const std::string& text,
                  const std::string& origin = "--fault");
/// The topology's `sim.faults`, parsed (parse_fault, each naming its
/// file:line:col).
std::vector<fault> topology_faults(const topology::deployment& t);

struct run_options {
  std::string out_dir;    // requests.csv and summary.json here; "" = none
  double ttft_slo_ms = 0; // 0: no SLO attainment figure
  // In any order; each names a worker or host. The topology's sim.faults
  // come first, then these.
  std::vector<fault> faults;
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

// A quantity over the run (link utilisation %, a queue's length), one mean
// per bucket of summary::bucket_s seconds, for the plots.
struct series {
  std::string name;
  std::vector<double> values;
};

struct fault_outcome {
  std::string fault;        // as written
  std::uint64_t failed = 0; // requests in flight it failed (peer_down)
};

struct summary {
  std::string trace, trace_format, topology, routing;
  std::string engine = "model"; // or "actors" (run_actors)
  bool layerwise = false, prefix_reuse = false;
  std::uint64_t prefill_workers = 0, decode_workers = 0, hosts = 0;
  std::uint64_t requests = 0, completed = 0, rejected = 0;
  // failed: by a fault (peer_down: faults[i].failed) or, after faults
  // killed every prefill or decode worker, finding none (`unroutable`).
  std::uint64_t failed = 0, unroutable = 0;
  // Requests the run ended without finishing: neither completed, rejected
  // nor failed by a fault. A run should have none (each is a hang: in the
  // actors engine a request whose 27.8-hour deadline ran out); the CLI
  // says so on stderr and exits 3 (unfinished_error).
  std::uint64_t unfinished = 0;
  std::vector<fault_outcome> faults;
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
  double bucket_s = 0;
  // Busy % of each NIC pipe that carried bytes ("nic-in d-host"), in the
  // order of `links`.
  std::vector<series> link_busy;
  // Requests waiting for a prefill GPU, and for decode KV-pool blocks.
  series prefill_queue, pool_queue;
  // The actors engine's own bookkeeping, not in the outputs: the most
  // entries CAF's clock held at the end of a virtual instant (the actors'
  // timers and request timeouts), and the most events the models' queue
  // held (live or void).
  std::uint64_t peak_clock_entries = 0, peak_model_events = 0;
};

/// The topology's faults, then the options' (--fault), each checked to name
/// a worker or host of `t` (std::runtime_error naming where it was written).
std::vector<fault> checked_faults(const topology::deployment& t,
                                  const run_options& options);

/// Runs the whole trace. Throws trace_error for a bad trace line and
/// std::runtime_error for an output file that cannot be written.
summary run(trace_reader& trace, const topology::deployment& topology,
            const run_options& options);

/// The same run through kvferry's real directory, router, producer and
/// consumer actors under CAF's test coordinator, the models behind the seams
/// (docs/sim.md, "The actors engine"), the trace streamed. Same throws as
/// run().
summary run_actors(trace_reader& trace, const topology::deployment& topology,
                   const run_options& options);

/// The summary as a person reads it (fixed-width table, ms).
std::string format_table(const summary& s);

/// Empty, or the error line for a run with unfinished requests (naming how
/// many, the engine and the trace: the run's figures leave them out).
std::string unfinished_error(const summary& s);
/// The summary as JSON (stable key order, fixed precision).
std::string to_json(const summary& s);

/// The plots (docs/sim.md, "Plots"): writes their data (*.dat) and gnuplot
/// script (plots.gp) into `dir`, then draws ttft-cdf.png, transfer-cdf.png,
/// links.png and queues.png there with gnuplot. Returns a line for the user
/// saying what it drew, or that the plots were skipped and why (gnuplot not
/// installed or failing: the run itself still succeeds).
std::string write_plots(const summary& s, const std::string& dir);

// The pieces write_plots is made of, for --sweep's plot (sweep.cpp).
struct cdf_line {
  std::string file, title, data;
};
extern const char* plot_preamble;
std::string cdf_data(const histogram& h); // "ms fraction" rows
void write_text(const std::string& path, const std::string& text);
void write_cdfs(const std::string& dir, const std::vector<cdf_line>& lines);
/// A CDF plot of the lines that have data; "" when none has.
std::string cdf_plot(const std::string& png, const std::string& title,
                     const std::string& xlabel,
                     const std::vector<cdf_line>& lines);
/// Runs gnuplot on `script` in `dir`; the line write_plots returns.
std::string draw(const std::string& dir, const std::string& script,
                 const std::string& what);

/// One `--sweep KEY=V1,V2,...`: the run is repeated for each value.
struct sweep_axis {
  std::string key;
  std::vector<std::string> values;
};
extern const char* sweep_keys; // the keys --sweep takes, for messages
/// Parses and checks every value; throws std::invalid_argument naming the
/// flag and what it takes.
sweep_axis parse_sweep(const std::string& text);
/// Sets KEY=VALUE on a topology (worker counts copy the file's workers).
void apply_sweep(topology::deployment& t, const std::string& key,
                 const std::string& value);

struct sweep_result {
  std::string table; // one row per combination, the first axis slowest
  std::string plots; // write_plots' line; "" without options.out_dir
  // One line per combination with unfinished requests (unfinished_error,
  // naming the combination).
  std::vector<std::string> errors;
};
/// An engine: run or run_actors.
using engine_fn = summary (*)(trace_reader&, const topology::deployment&,
                              const run_options&);
/// Every combination of the axes' values, each a whole run of the trace
/// through `engine` (options.faults apply to each). With options.out_dir:
/// sweep.txt, sweep.csv and sweep-ttft-cdf.png there, no per-run files.
/// `each`, if set, is called before each run with (index, runs, label).
sweep_result run_sweep(
    const std::string& trace_path, const topology::deployment& base,
    const std::vector<sweep_axis>& axes, const run_options& options,
    const std::function<void(std::size_t, std::size_t, const std::string&)>&
        each,
    engine_fn engine = run);

/// y at x on a piecewise-linear table (linear beyond both ends along the
/// nearest segment, never below 0). Exposed for tests.
double interpolate(const std::vector<topology::sim_point>& table, double x);

} // namespace kvferry::sim
