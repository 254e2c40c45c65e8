// One request's outcome as both engines report it: a row of requests.csv
// and its share of the summary's histograms (docs/sim.md, "Outputs").
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "kvferry/sim/sim.hpp"

namespace kvferry::sim {

struct request_row {
  using ns_t = std::int64_t;
  const trace_request* trace = nullptr;
  ns_t arrival = 0;
  std::string_view prefill, decode; // worker names ("" when unroutable)
  bool ipc = false;
  enum class status { ok, rejected, failed, unfinished } what = status::ok;
  // ok only: queue, prefill, wait, transfer (exposed), first decode step.
  ns_t parts[5] = {0, 0, 0, 0, 0};
  ns_t ttft = 0, transfer_total = 0, e2e = 0;
  double bytes = 0, saved = 0;
};

/// Adds an ok row to the summary's figures.
void record(summary& s, const request_row& r, double ttft_slo_ms);

/// requests.csv, written through a buffer (printing with fixed precision
/// was a tenth of the run time).
class request_csv {
public:
  /// No file when `dir` is empty.
  explicit request_csv(const std::string& dir);
  void row(const request_row& r);
  void close();

private:
  void put_ms(std::int64_t ns);
  void put(std::uint64_t value, char end = ',');
  void put(std::string_view text, char end = ',');
  void flush();

  std::string path_;
  fmt::memory_buffer buffer_;
  std::ofstream out_;
};

} // namespace kvferry::sim
