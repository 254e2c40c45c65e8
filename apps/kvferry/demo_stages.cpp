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
// latency (the two kernels are parts of fill and verify, shown apart).
// Timestamps of the producer's host and the consumer's compare with the
// router's when all are one host (the demo's own workers): steady_clock.
enum stage : std::size_t {
  to_producer,        // the router's send -> the producer has it
  to_fill,            // source blocks, the hop to a pattern worker, its queue
  fill,               // the producer's fill, in its pattern worker
  fill_kernel,        // of which the kernel's GPU time
  fill_to_hand_over,  // the worker's answer back, the hand-over's sending
  to_consumer,        // the advert, credit request or allocate's hop
  consumer_to_window, // admission, the node's plan and order, the launch
  window,             // the data window (first known to last byte landed)
  window_to_verify,   // the report's hops back to the consumer
  to_verify,          // the check's wait for a pattern worker
  verify,             // the check, and its answer's hop back
  verify_kernel,      // of which the kernel's GPU time
  to_router,          // the answer's way back (from the consumer)
  latency,            // all of it: the router's send to its answer
  stage_count
};

constexpr std::array<const char*, stage_count> stage_names{
    "to producer",
    "to fill (blocks, pattern worker's queue)",
    "fill",
    "  of which the fill kernel",
    "fill to hand-over",
    "to consumer",
    "consumer to window",
    "window",
    "window to verify",
    "to verify (pattern worker's queue)",
    "verify",
    "  of which the verify kernel",
    "to router",
    "latency (the sum, kernels apart)"};

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
  const auto& p = r.producer_at;
  std::array<double, stage_count> s{};
  s[to_producer] = us(p.received_ns - sent);
  s[to_fill] = us(p.fill_start_ns - p.received_ns);
  s[fill] = us(r.fill_ns);
  s[fill_kernel] = us(r.fill_gpu_ns);
  s[fill_to_hand_over] = us(p.handed_ns - p.fill_start_ns - r.fill_ns);
  s[to_consumer] = us(r.opened_ns - p.handed_ns);
  s[consumer_to_window] = us(r.data_start_ns - r.opened_ns);
  s[window] = us(r.transfer_ns);
  s[window_to_verify] = us(r.verify_sent_ns - window_end);
  s[to_verify] = us(r.verify_start_ns - r.verify_sent_ns);
  s[verify] = us(r.verify_done_ns - r.verify_start_ns);
  s[verify_kernel] = us(r.verify_gpu_ns);
  s[to_router] = us(answered - r.verify_done_ns);
  s[latency] = us(answered - sent);
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
        r.transfer_ns <= 0 || r.producer_at.handed_ns == 0)
      continue;
    auto s = stages_of(row, start_ns);
    for (std::size_t k = 0; k < stage_count; ++k)
      samples[k].push_back(s[k]);
  }
  if (samples[0].empty())
    return {};
  // One row per stage: within 100 columns however many stages there are.
  std::string rows = "| stage | p50 us | mean us |\n|---|---|---|\n";
  for (std::size_t k = 0; k < stage_count; ++k)
    rows += fmt::format("| {} | {:.0f} | {:.0f} |\n", stage_names[k],
                        percentile(samples[k], 0.5), mean(samples[k]));
  auto kernels = kernels_gbps(results);
  return fmt::format("{}stages of {} requests{}\n", rows, samples[0].size(),
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
