// The measurement behind `kvferry bench node` (apps/kvferry/bench_node.cpp):
// what a kvferry::node request costs beyond its bytes (issue #15). Two actor
// systems in this process, each with a node's actors (node_actors.hpp) over
// its own host-memory cache (vLLM per-layer on the prefill, block-major on
// the decode), connected over loopback TCP through CAF's middleman as two
// processes are. Each pull is an offered one: the prefill advertises and
// notifies the decode, which pulls once the note came (as a serving stack's
// scheduler does; the note follows the offer). Per request size:
//   - a pull's control overhead, total - data (the decode's call to its
//     reply, minus its data window: first announcement known to the last
//     byte landed), p50 and p99, beside the SAME RUN's CAF round trip
//     between the two systems (an empty request and its reply, interleaved
//     with the requests so that both see the same load); and its total
//     beside that round trip: a pull lane has no announcement, so its data
//     window opens at its first bytes landed and its "control" holds the
//     bytes' own leg too (an upper bound); total/RTT compares the paths on
//     the same footing;
//   - the prefill's host time per block to plan and post a request (plan_kv
//     of every layer, the send order, the part note): the time the node
//     actor takes for an advertise whose pull is already known, minus a
//     local round trip to it; likewise the decode's for a pull whose
//     advertise is known (it plans and orders the prefill's transfer actor);
//   - the prices of the hops a pull has beyond the round trip: the caller's
//     round trip to its own node actor and to its own transfer actor;
//   - the thread hand-offs (voluntary context switches of the process) per
//     pull and per round trip: where a request's control time goes on a
//     machine whose cores are busy (each hand-off waits for a core).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kvferry/runtime/status.hpp"

namespace kvferry {

struct node_bench_row;

struct node_bench_options {
  std::vector<std::uint64_t> blocks{1, 64, 1000}; // blocks per request
  int repeats = 50;                               // requests per size
  std::uint32_t layers = 8;
  std::uint64_t cache_blocks = 2048;
  std::uint64_t half_bytes = 2048; // 16 tokens x 64 B
  std::string plugin;              // empty: kvsock
  // Pulls in flight at once into the decode: each round advertises this
  // many requests, then pulls them all before waiting for any (a serving
  // stack's batch). Each pull's total runs from the round's start to its
  // reply; a pull that waits behind another (its transfer actor busy)
  // shows there.
  int inflight = 1;
  // Called with each size's row as soon as it is measured (optional).
  std::function<void(const node_bench_row&)> on_row;
};

struct node_bench_row {
  std::uint64_t blocks = 0;
  std::uint64_t bytes = 0; // per request
  double control_p50_us = 0, control_p99_us = 0;
  double rtt_p50_us = 0, rtt_p99_us = 0; // same-run CAF round trip
  double total_p50_us = 0, data_p50_us = 0;
  double node_rtt_p50_us = 0;        // caller -> its node actor -> caller
  double transfer_rtt_p50_us = 0;    // caller -> its transfer actor -> caller
  double post_us_per_block = 0;      // median over the planning rounds
  double pull_post_us_per_block = 0; // the decode's, for an offered pull
  double round_p50_us = 0; // a round of `inflight` pulls, start to last reply
  bool ipc = false;        // the path the pulls took (request_stats)
  bool lane = false; // on a pull lane (the decode's transfer_stats::lane_pulls)
  // Voluntary context switches of the process (both nodes' threads) per
  // pull and per CAF round trip: the thread hand-offs each costs.
  double switches_per_pull = 0, switches_per_rtt = 0;
};

/// Runs every size; an error names the step that failed.
result<std::vector<node_bench_row>>
run_node_bench(const node_bench_options& options);

} // namespace kvferry
