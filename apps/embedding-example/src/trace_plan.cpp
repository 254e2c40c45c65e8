#include "trace_plan.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "kvferry/sim/trace.hpp"

namespace example {

trace_plan load_trace(const std::string& path, std::uint64_t count,
                      double time_scale, std::uint64_t max_tokens) {
  trace_plan plan;
  kvferry::sim::trace_reader reader(path); // throws trace_error (runtime_error)
  plan.format = kvferry::sim::to_string(reader.format());
  kvferry::sim::trace_request r;
  while (plan.requests.size() < count && reader.next(r)) {
    planned_request q;
    q.index = r.index;
    q.arrival_ns = std::llround(static_cast<double>(r.arrival_ns) * time_scale);
    q.trace_tokens = r.input_tokens;
    q.tokens = std::clamp<std::uint64_t>(r.input_tokens, 1, max_tokens);
    q.output_tokens = r.output_tokens;
    plan.capped += q.tokens < q.trace_tokens;
    plan.requests.push_back(q);
  }
  if (plan.requests.empty())
    throw std::runtime_error(path + ": no requests in it");
  return plan;
}

} // namespace example
