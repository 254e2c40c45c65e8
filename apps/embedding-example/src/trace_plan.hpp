// Which requests the decode-side scheduler admits, and when: the first
// requests of a trace in ../shared/traces (Mooncake JSONL or Azure CSV, read
// with kvferry's own reader, kvferry::sim_trace), arrival times scaled,
// prompts capped to what the cache can hold.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace example {

struct planned_request {
  std::uint64_t index = 0;        // position in the trace
  std::int64_t arrival_ns = 0;    // since the run's start, scaled
  std::uint64_t tokens = 0;       // prompt tokens, capped
  std::uint64_t trace_tokens = 0; // prompt tokens in the trace
  std::uint64_t output_tokens = 0;
};

struct trace_plan {
  std::string format; // "mooncake-jsonl" or "azure-csv"
  std::vector<planned_request> requests;
  std::uint64_t capped = 0; // requests whose prompt was cut to max_tokens
};

/// The first `count` requests of `path`. Throws std::runtime_error naming
/// the file (and line) when it cannot be read or holds no request.
trace_plan load_trace(const std::string& path, std::uint64_t count,
                      double time_scale, std::uint64_t max_tokens);

} // namespace example
