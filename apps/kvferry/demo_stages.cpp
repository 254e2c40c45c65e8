#include "demo_stages.hpp"

#include <array>
#include <chrono>
#include <cstdint>
#include <numeric>
#include <vector>

#include <fmt/format.h>

#include "percentile.hpp"

namespace kvferry::app {

namespace {

// One request's stages, in the order they happen (us); they add up to its
// latency (fill and the two kernels are parts of other stages, shown apart).
enum stage : std::size_t {
  to_consumer,        // router -> producer, its fill's wait, -> consumer
  fill,               // the producer's fill, in its pattern worker
  fill_kernel,        // of which the kernel's GPU time
  consumer_to_window, // admission, the node's plan and order, the launch
  window,             // the data window (first known to last byte landed)
  window_to_verify,   // the report's hops back to the consumer
  verify,             // waiting for a pattern worker, and its check
  verify_kernel,      // of which the kernel's GPU time
  to_router,          // the answer's way back (from the consumer)
  stage_count
};

constexpr std::array<const char*, stage_count> stage_names{
    "to consumer, less fill",
    "fill",
    "fill kernel",
    "consumer to window",
    "window",
    "window to verify",
    "verify",
    "verify kernel",
    "to router"};

double us(std::int64_t ns) {
  return static_cast<double>(ns) / 1e3;
}

std::array<double, stage_count> stages_of(const router_request& row,
                                          std::int64_t start_ns) {
  using std::chrono::nanoseconds;
  const auto& r = row.report;
  auto sent =
      start_ns + std::chrono::duration_cast<nanoseconds>(row.sent).count();
  auto answered =
      start_ns + std::chrono::duration_cast<nanoseconds>(row.answered).count();
  auto window_end = r.data_start_ns + r.transfer_ns;
  std::array<double, stage_count> s{};
  s[to_consumer] = us(r.opened_ns - sent - r.fill_ns);
  s[fill] = us(r.fill_ns);
  s[fill_kernel] = us(r.fill_gpu_ns);
  s[consumer_to_window] = us(r.data_start_ns - r.opened_ns);
  s[window] = us(r.transfer_ns);
  s[window_to_verify] = us(r.verify_sent_ns - window_end);
  s[verify] = us(r.verify_done_ns - r.verify_sent_ns);
  s[verify_kernel] = us(r.verify_gpu_ns);
  s[to_router] = us(answered - r.verify_done_ns);
  return s;
}

double mean(const std::vector<double>& v) {
  return v.empty() ? 0
                   : std::accumulate(v.begin(), v.end(), 0.0) /
                         static_cast<double>(v.size());
}

// Bytes over the fill, copy and verification kernels' GPU time, summed:
// what the GPU could deliver running nothing but those kernels one after
// another. With one request in flight (no kernel overlaps another) it is the
// demo's ceiling on this GPU; with several, overlapping kernels stretch each
// other and it reads lower. 0 when a request lacks one of the three.
double kernels_gbps(const router_results& results) {
  std::uint64_t bytes = 0;
  std::int64_t ns = 0;
  for (const auto& row : results.requests) {
    const auto& r = row.report;
    if (!row.ok || r.fill_gpu_ns <= 0 || r.gpu_copy_ns <= 0 ||
        r.verify_gpu_ns <= 0)
      continue;
    bytes += r.bytes;
    ns += r.fill_gpu_ns + r.gpu_copy_ns + r.verify_gpu_ns;
  }
  return ns > 0 ? static_cast<double>(bytes) / static_cast<double>(ns) : 0;
}

} // namespace

std::string stage_table(const router_results& results) {
  auto start_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                      results.start.time_since_epoch())
                      .count();
  std::array<std::vector<double>, stage_count> samples;
  for (const auto& row : results.requests) {
    const auto& r = row.report;
    if (!row.ok || r.opened_ns == 0 || r.verify_done_ns == 0 ||
        r.transfer_ns <= 0)
      continue;
    auto s = stages_of(row, start_ns);
    for (std::size_t k = 0; k < stage_count; ++k)
      samples[k].push_back(s[k]);
  }
  if (samples[0].empty())
    return {};
  std::string head = "| us, p50 / mean |", rule = "|---|", p50 = "| |";
  for (std::size_t k = 0; k < stage_count; ++k) {
    head += fmt::format(" {} |", stage_names[k]);
    rule += "---|";
    p50 += fmt::format(" {:.0f} / {:.0f} |", percentile(samples[k], 0.5),
                       mean(samples[k]));
  }
  auto kernels = kernels_gbps(results);
  return fmt::format("{}\n{}\n{}\nstages of {} requests{}\n", head, rule, p50,
                     samples[0].size(),
                     kernels > 0 ? fmt::format("; fill, copy and verify "
                                               "kernels back to back: {:.3f} "
                                               "GB/s",
                                               kernels)
                                 : std::string{});
}

double steady_gbps(const router_results& results, std::size_t inflight) {
  const auto& rows = results.requests; // in the order they were answered
  if (inflight == 0 || rows.size() < 3 * inflight)
    return 0;
  // Answer `first` ends the first wave; answer `last` starts the last
  // request (every request is sent once fewer than `inflight` are open).
  auto first = inflight - 1, last = rows.size() - inflight;
  std::uint64_t bytes = 0;
  for (auto k = first + 1; k <= last; ++k)
    bytes += rows[k].report.bytes;
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                rows[last].answered - rows[first].answered)
                .count();
  return ns > 0 ? static_cast<double>(bytes) / static_cast<double>(ns) : 0;
}

} // namespace kvferry::app
