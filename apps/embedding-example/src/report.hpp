// What the decode server prints at the end: what a serving engineer asks of
// a disaggregated deployment. Times are per request, in ns since the run's
// start (decode's clock) or as durations measured where they happened.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace example {

struct request_record {
  std::uint64_t id = 0;
  std::uint64_t tokens = 0;
  std::int64_t arrival_ns = 0;       // trace time (scaled)
  std::int64_t admitted_ns = 0;      // decode blocks held, prefill asked
  std::int64_t kv_ready_ns = 0;      // kvferry's pull completed
  std::int64_t first_token_ns = 0;   // verified and decoded one step
  std::int64_t prefill_queue_ns = 0; // waited for blocks at the prefill
  std::int64_t prefill_ns = 0;       // the prefill's model step
  std::uint64_t bytes = 0;
  std::int64_t data_ns = 0; // kvferry: first byte posted to last landed
  bool ipc = false;
};

struct run_report {
  std::string title; // trace, memory, transport
  double wall_s = 0;
  std::vector<request_record> done; // verified, every byte
  std::uint64_t failed = 0;
  std::uint64_t capped = 0; // prompts cut to the cache
};

/// The TTFT split of one request (sums to TTFT): wait = arrival -> blocks
/// at both servers; prefill = the model step; transfer = the rest until
/// kvferry reports the KV in place; decode = verify + the first step.
struct ttft_split {
  std::int64_t wait, prefill, transfer, decode, total;
};
ttft_split split(const request_record& r);

/// Nearest-rank percentile (p in [0, 100]) of `v` (sorted here); 0 if empty.
std::int64_t percentile(std::vector<std::int64_t> v, double p);

/// The report, several lines.
std::string format_report(const run_report& r);

/// This process's peak resident set (MiB), for the report's last line.
double peak_rss_mib();

} // namespace example
