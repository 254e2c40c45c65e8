// `kvferry demo --breakdown`: where each request's time went, stage by
// stage, from the timestamps its ready_report carries (the consumer host's
// steady clock) and the router's send and answer times (this process's
// steady clock: the stages that cross them mean something only when the
// demo runs on the consumer's host, as it does when it starts the workers).
#pragma once

#include <string>

#include "kvferry/actors/router.hpp"

namespace kvferry::app {

/// The stage table (markdown, ends with a newline), or "" when no answered
/// request carries the timestamps (a model-only region, or no rows kept).
std::string stage_table(const router_results& results);

} // namespace kvferry::app
