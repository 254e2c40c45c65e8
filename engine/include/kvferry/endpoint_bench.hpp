// The measurement behind `kvferry bench endpoint` (apps/kvferry/
// bench_endpoint.cpp): two endpoints in this process over the plugin, each
// operation at each size and depth, every byte verified afterwards.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvferry/endpoint.hpp"
#include "kvferry/runtime/status.hpp"

namespace kvferry {

struct endpoint_bench_options {
  std::vector<std::uint64_t> sizes{256,     4 << 10,  64 << 10,
                                   1 << 20, 16 << 20, 256 << 20};
  std::vector<int> depths{1, 16};                        // transfers in flight
  std::vector<std::string> ops{"write", "read", "send"}; // send: + recv
  std::uint64_t bytes_per_point = 512 << 20; // ops = this / size ...
  std::uint64_t min_ops = 4, max_ops = 2000; // ... within these
  std::string plugin;                        // empty: kvsock
  // endpoint_options::threads of both endpoints (by default the endpoint's)
  std::size_t threads = endpoint_options{}.threads;
};

struct endpoint_bench_row {
  std::string op;
  std::uint64_t size = 0;
  int depth = 1;
  std::uint64_t ops = 0;
  double gbps = 0;      // payload bytes / elapsed
  double us_per_op = 0; // elapsed / ops
  double p50_us = 0;    // issue to completion, per operation
  // The issuing call alone (write, read; send + recv per call), p50, from
  // bursts of back-to-back calls apart from the timed ones.
  double call_p50_us = 0;
  // This process's CPU time (user + system, every thread: both endpoints,
  // the plugin's) per operation of the timed loop: unlike GB/s, it barely
  // moves with other work on the machine.
  double cpu_us_per_op = 0;
  double max_us = 0; // the slowest operation (a stall shows here)
  bool verified = false;
};

/// A row from `ops` operations of `size` bytes that took `seconds`, with
/// each one's issue-to-completion time (microseconds, any order).
endpoint_bench_row bench_row(std::string op, std::uint64_t size, int depth,
                             std::uint64_t ops, double seconds,
                             std::vector<double> latencies_us, bool verified);

/// Runs every (op, size, depth); an error names the step that failed.
result<std::vector<endpoint_bench_row>>
run_endpoint_bench(const endpoint_bench_options& options);

} // namespace kvferry
