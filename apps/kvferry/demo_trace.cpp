// `kvferry demo --trace FILE` (demo_trace.hpp): loading the trace, the
// router's paced plan, and the per-request CSV beside the simulator's.
#include "demo_trace.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "demo_local.hpp"
#include "kvferry/sim/trace.hpp"

namespace kvferry::app {

namespace {

std::string ms(std::int64_t ns) {
  return fmt::format("{:.3f}", static_cast<double>(ns) / 1e6);
}
std::string ms(caf::timespan t) {
  return ms(static_cast<std::int64_t>(t.count()));
}

// The simulator's requests.csv columns (sim/src/engine.cpp, docs/sim.md)
// and two of the demo's own: where a column means the same in both it is
// filled, else left empty. `ready_ms` is the request's latency (arrival to
// the router holding the decode worker's "KV in place and verified");
// `trace_input_tokens` the prompt before the cap.
constexpr const char* csv_header =
    "index,line,arrival_ms,input_tokens,output_tokens,prefill_worker,"
    "decode_worker,path,status,queue_ms,prefill_ms,wait_ms,transfer_ms,"
    "decode_ms,ttft_ms,transfer_total_ms,e2e_ms,bytes_moved,bytes_saved,"
    "ready_ms,trace_input_tokens";

// One row. queue_ms: arrival time -> the router sends it (a full
// `--inflight` window, or its timer firing late on a busy machine);
// prefill_ms: the pattern fill and hashing at the producer plus the
// verification at the consumer (the demo's stand-in for prefill compute).
std::string csv_row(const demo_trace::request& q, const router_request& r,
                    const router_config& plan, const std::string& path) {
  const auto& rep = r.report;
  auto out = fmt::format("{},{},{},{},{},{},{},{},{},{},", q.index, q.line,
                         ms(q.arrival_ns), q.tokens, q.output_tokens,
                         plan.producers[r.producer].name,
                         plan.consumers[r.consumer].name, path,
                         r.ok ? "ok" : "failed", ms(r.sent - r.due));
  if (r.ok)
    out += fmt::format("{},,,,,{},,{},0,{},", ms(rep.compute_ns),
                       ms(rep.transfer_ns), rep.bytes, ms(r.answered - r.due));
  else
    out += ",,,,,,,,,,";
  return out + std::to_string(q.trace_tokens) + "\n";
}

// The replayed requests as a Mooncake trace: `kvferry sim --trace` on it
// sees the same arrival times (scaled) and prompt lengths (capped) as the
// workers did. Output lengths are 0: the demo does not decode.
std::string jsonl_line(const demo_trace::request& q) {
  return fmt::format("{{\"timestamp\": {}, \"input_length\": {}, "
                     "\"output_length\": 0, \"hash_ids\": []}}\n",
                     ms(q.arrival_ns), q.tokens);
}

std::string write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  return out.flush() ? std::string{} : "cannot write " + path;
}

} // namespace

void add_demo_trace_options(CLI::App& demo, demo_trace_options& o) {
  demo.add_option("--trace", o.file,
                  "replay this request trace (Mooncake JSONL or Azure CSV; "
                  "its first --requests requests, each at its time) instead "
                  "of random prompts (docs/sim.md, \"Fidelity\")");
  demo.add_option("--time-scale", o.time_scale,
                  "with --trace: replay time = trace time x this (0.1: ten "
                  "times faster)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  demo.add_option("--max-blocks", o.max_blocks,
                  "with --trace: cap each prompt at this many blocks per "
                  "layer (default: the blocks of --max-tokens), so that the "
                  "pools hold it");
  demo.add_option("--out", o.out_dir,
                  "with --trace: write requests.csv (the simulator's "
                  "columns) and trace.jsonl (the requests as replayed) here");
}

std::string load_demo_trace(demo_command& cmd, demo_trace& out) {
  auto cap_blocks = cmd.trace.max_blocks
                        ? cmd.trace.max_blocks
                        : cmd.geometry.blocks_for_tokens(cmd.max_tokens);
  auto cap = std::uint64_t{cap_blocks} * cmd.geometry.block_tokens;
  try {
    sim::trace_reader reader(cmd.trace.file);
    out.format = sim::to_string(reader.format());
    sim::trace_request r;
    while (out.requests.size() < cmd.requests && reader.next(r)) {
      demo_trace::request q;
      q.index = r.index;
      q.line = r.line;
      q.arrival_ns = std::llround(static_cast<double>(r.arrival_ns) *
                                  cmd.trace.time_scale);
      q.trace_tokens = r.input_tokens;
      q.tokens = static_cast<std::uint32_t>(
          std::min<std::uint64_t>(r.input_tokens, cap));
      q.output_tokens = r.output_tokens;
      out.requests.push_back(q);
    }
  } catch (const sim::trace_error& e) {
    return e.what();
  }
  if (out.requests.empty())
    return "--trace " + cmd.trace.file + ": no requests in it";
  auto [low, high] = std::minmax_element(
      out.requests.begin(), out.requests.end(),
      [](const auto& a, const auto& b) { return a.tokens < b.tokens; });
  cmd.min_tokens = low->tokens;
  cmd.max_tokens = high->tokens;
  cmd.requests = out.requests.size();
  return {};
}

void plan_trace_requests(const demo_trace& trace, router_config& plan) {
  for (const auto& q : trace.requests) {
    plan.tokens.push_back(q.tokens);
    plan.arrivals.push_back(std::chrono::nanoseconds(q.arrival_ns));
  }
}

std::string write_demo_trace(const demo_command& cmd, const demo_trace& trace,
                             const router_config& plan,
                             const router_results& results) {
  const auto& dir = cmd.trace.out_dir;
  if (dir.empty())
    return {};
  std::error_code failed;
  std::filesystem::create_directories(dir, failed);
  if (failed)
    return "cannot create " + dir + ": " + failed.message();
  std::string csv = std::string{csv_header} + "\n";
  for (const auto& r : results.requests) {
    // Over CUDA IPC the consumer reports the copy kernels' GPU time.
    auto path = r.report.gpu_copy_ns > 0 ? "ipc" : "net";
    csv += csv_row(trace.requests.at(r.index), r, plan, path);
  }
  std::string jsonl;
  for (const auto& q : trace.requests)
    jsonl += jsonl_line(q);
  auto bad = write_file(dir + "/requests.csv", csv);
  if (bad.empty())
    bad = write_file(dir + "/trace.jsonl", jsonl);
  return bad;
}

} // namespace kvferry::app
