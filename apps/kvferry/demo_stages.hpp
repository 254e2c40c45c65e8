// `kvferry demo --breakdown`: where each request's time went, stage by
// stage, from the timestamps its ready_report carries (the consumer's and
// the producer's hosts' steady clocks) and the router's send and answer
// times (this process's steady clock: the stages that cross them mean
// something only when all run on one host, as they do when the demo starts
// the workers).
#pragma once

#include <cstddef>
#include <string>

#include "kvferry/actors/router.hpp"

namespace kvferry::app {

/// The stage table (markdown, one row per stage, ends with a newline), or ""
/// when no answered request carries the timestamps (a model-only region, or
/// no rows kept).
std::string stage_table(const router_results& results);

/// Bytes over time (GB/s) while `inflight` requests were open all along:
/// the requests answered after the first `inflight` answers and up to the
/// last request's send (the answer that let it start), so that neither the
/// first wave's start-up nor the last wave's drain counts. 0 when fewer
/// than 3 x `inflight` answers are kept.
double steady_gbps(const router_results& results, std::size_t inflight);

} // namespace kvferry::app
