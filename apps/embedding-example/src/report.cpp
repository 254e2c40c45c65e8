#include "report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <sys/resource.h>

namespace example {

ttft_split split(const request_record& r) {
  ttft_split s{};
  s.total = r.first_token_ns - r.arrival_ns;
  s.wait = r.admitted_ns - r.arrival_ns + r.prefill_queue_ns;
  s.prefill = r.prefill_ns;
  s.transfer = std::max<std::int64_t>(0, r.kv_ready_ns - r.admitted_ns -
                                             r.prefill_queue_ns - r.prefill_ns);
  s.decode = s.total - s.wait - s.prefill - s.transfer;
  return s;
}

std::int64_t percentile(std::vector<std::int64_t> v, double p) {
  if (v.empty())
    return 0;
  std::sort(v.begin(), v.end());
  auto rank = static_cast<std::size_t>(
      std::ceil(p / 100.0 * static_cast<double>(v.size())));
  return v[std::clamp<std::size_t>(rank, 1, v.size()) - 1];
}

namespace {

std::string line(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string line(const char* fmt, ...) {
  char text[512];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(text, sizeof text, fmt, args);
  va_end(args);
  return std::string{text} + "\n";
}

double ms(std::int64_t ns) {
  return static_cast<double>(ns) / 1e6;
}

// "p50 X  p99 Y" of one column of the split, in ms.
std::string p50_p99(const std::vector<ttft_split>& s,
                    std::int64_t ttft_split::*column) {
  std::vector<std::int64_t> v;
  for (const auto& x : s)
    v.push_back(x.*column);
  return line("p50 %9.3f   p99 %9.3f", ms(percentile(v, 50)),
              ms(percentile(v, 99)));
}

} // namespace

std::string format_report(const run_report& r) {
  std::vector<ttft_split> s;
  std::uint64_t bytes = 0, ipc = 0;
  for (const auto& q : r.done) {
    s.push_back(split(q));
    bytes += q.bytes;
    ipc += q.ipc;
  }
  const auto n = r.done.size();
  std::string out = r.title + "\n";
  out += line("requests          %zu verified (every byte), %llu failed, "
              "%llu prompts capped to the cache",
              n, static_cast<unsigned long long>(r.failed),
              static_cast<unsigned long long>(r.capped));
  out += line("throughput        %.1f requests/s over %.3f s",
              r.wall_s > 0 ? static_cast<double>(n) / r.wall_s : 0.0, r.wall_s);
  out += "TTFT ms           " + p50_p99(s, &ttft_split::total);
  out += "  wait            " + p50_p99(s, &ttft_split::wait);
  out += "  prefill         " + p50_p99(s, &ttft_split::prefill);
  out += "  transfer        " + p50_p99(s, &ttft_split::transfer);
  out += "  verify+decode   " + p50_p99(s, &ttft_split::decode);
  out += line("KV moved          %.1f MiB in %zu requests (%llu over CUDA "
              "IPC)",
              static_cast<double>(bytes) / (1 << 20), n,
              static_cast<unsigned long long>(ipc));
  // Requests overlap: a rate per request (its bytes over kvferry's data
  // time for it), and the whole run's bytes over its wall time.
  std::vector<std::int64_t> rates; // bytes per second
  for (const auto& q : r.done)
    if (q.data_ns > 0)
      rates.push_back(static_cast<std::int64_t>(static_cast<double>(q.bytes) *
                                                1e9 / q.data_ns));
  out += line("transfer GB/s     p50 %.3f per request (bytes / kvferry's "
              "data time), %.3f over the run",
              static_cast<double>(percentile(rates, 50)) / 1e9,
              r.wall_s > 0 ? static_cast<double>(bytes) / r.wall_s / 1e9 : 0.0);
  out += line("peak RSS          %.0f MiB (this process)", peak_rss_mib());
  return out;
}

double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0; // KiB on Linux
}

} // namespace example
