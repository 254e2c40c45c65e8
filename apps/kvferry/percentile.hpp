// Latency percentiles of the commands that print them (demo, directory
// --probe): one rule, so their p50/p99 columns mean the same.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

namespace kvferry::app {

/// The p-quantile (p in 0..1) of `values`: the element at index
/// p * (n - 1), rounded down, of the sorted values; 0 when there are none.
/// Sorts its own copy, so the caller's order stays.
inline double percentile(std::vector<double> values, double p) {
  if (values.empty())
    return 0;
  std::sort(values.begin(), values.end());
  return values[static_cast<std::size_t>(
      p * static_cast<double>(values.size() - 1))];
}

} // namespace kvferry::app
