// The fixed costs of one transfer part (the whole request, or one layer
// when layer-wise) besides its bytes and the network latency: the cost
// model both engines charge (docs/sim.md, "What is modelled", 4), in one
// place so that they agree.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <vector>

#include "kvferry/runtime/topology.hpp"

namespace kvferry::sim {

/// A same-host copy is one kernel (`ipc_setup_us`, its per-block planning
/// being in the copy rate); a plugin part pays `message_us` per
/// `chunk_bytes` message and `block_us` per layer-block of its send plan.
inline double part_fixed_us(const topology::sim_spec& sim, bool ipc,
                            double part_bytes, double chunk_bytes,
                            double layer_block_bytes) {
  if (ipc)
    return sim.ipc_setup_us;
  return std::ceil(part_bytes / chunk_bytes) * sim.message_us +
         part_bytes / layer_block_bytes * sim.block_us;
}

/// The quantile request `index` draws its transfer factor at:
/// frac((index + 1) x golden ratio), from the trace index alone, so that
/// both engines and every run draw alike. A low-discrepancy sequence, so
/// that any run of requests samples the spread evenly (a few hundred random
/// draws would move its p50 by several percent).
inline double spread_quantile(std::uint64_t index) {
  return std::fmod(double(index % (1u << 30) + 1) * 0.6180339887498949, 1.0);
}

/// A quantile table's factor at `u`: linear between its points, its end
/// factors beyond them.
inline double quantile_factor(const std::vector<topology::sim_quantile>& table,
                              double u) {
  auto next = std::upper_bound(
      table.begin(), table.end(), u,
      [](double x, const topology::sim_quantile& q) { return x < q.p; });
  if (next == table.begin())
    return table.front().factor;
  if (next == table.end())
    return table.back().factor;
  auto prev = std::prev(next);
  return prev->factor +
         (next->factor - prev->factor) * (u - prev->p) / (next->p - prev->p);
}

/// The factor request `index`'s transfer time (fixed costs and bytes) is
/// multiplied by, at its quantile (spread_quantile): the spread of
/// transfers of one size that the machine's contention makes, which the
/// links alone do not (`sim calibrate` fits it to a demo run). Either the
/// measured distribution itself, `transfer_spread_quantiles`, or a
/// log-normal of median `transfer_spread_median` and log standard deviation
/// `transfer_spread_sigma`; the median itself when sigma is 0 (1 by
/// default: no change).
inline double transfer_factor(const topology::sim_spec& sim,
                              std::uint64_t index) {
  if (!sim.transfer_spread_quantiles.empty())
    return quantile_factor(sim.transfer_spread_quantiles,
                           spread_quantile(index));
  if (sim.transfer_spread_sigma <= 0)
    return sim.transfer_spread_median;
  double u = spread_quantile(index);
  // The standard normal quantile of u, by bisection on its CDF.
  double lo = -9, hi = 9;
  for (int i = 0; i < 64; ++i) {
    double mid = (lo + hi) / 2;
    (0.5 * std::erfc(-mid / std::sqrt(2.0)) < u ? lo : hi) = mid;
  }
  return sim.transfer_spread_median *
         std::exp(sim.transfer_spread_sigma * (lo + hi) / 2);
}

} // namespace kvferry::sim
