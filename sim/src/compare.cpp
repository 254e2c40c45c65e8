// `kvferry sim compare` (calibrate.hpp; docs/sim.md, "Fidelity"): a demo
// run and a simulation of the same requests, joined by trace index.
#include <algorithm>
#include <cmath>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "csv_table.hpp"
#include "kvferry/sim/calibrate.hpp"

namespace kvferry::sim {

namespace {

// One side's figures for one request, ms.
struct times {
  double transfer = 0, latency = 0;
};

// The completed requests of a requests.csv by index; `latency` reads the
// latency column(s) of that side.
template<class Latency>
std::map<std::uint64_t, times> completed(const detail::csv_table& t,
                                         const char* ok, Latency latency) {
  auto index = t.column("index"), status = t.column("status"),
       transfer = t.column("transfer_total_ms");
  std::map<std::uint64_t, times> out;
  for (std::size_t row = 0; row < t.size(); ++row)
    if (t.text(row, status) == ok)
      out[static_cast<std::uint64_t>(t.number(row, index))] = {
          t.number(row, transfer), latency(row)};
  return out;
}

// The requests completed on both sides (a and b), in index order, with each
// side's figures; an error naming both files when there is none.
struct joined {
  std::vector<std::uint64_t> index;
  std::vector<double> transfer_a, transfer_b, latency_a, latency_b;
};

joined join_completed(const std::map<std::uint64_t, times>& a,
                      const std::map<std::uint64_t, times>& b,
                      const std::string& file_a, std::size_t rows_a,
                      const std::string& file_b, std::size_t rows_b) {
  joined j;
  for (const auto& [index, x] : a) {
    auto y = b.find(index);
    if (y == b.end())
      continue;
    j.index.push_back(index);
    j.transfer_a.push_back(x.transfer);
    j.transfer_b.push_back(y->second.transfer);
    j.latency_a.push_back(x.latency);
    j.latency_b.push_back(y->second.latency);
  }
  if (j.index.empty())
    throw std::runtime_error(fmt::format(
        "no request completed in both {} ({} rows) and {} ({} rows): not "
        "the same trace?",
        file_a, rows_a, file_b, rows_b));
  return j;
}

// Nearest-rank quantile of sorted values.
double quantile(const std::vector<double>& sorted, double p) {
  if (sorted.empty())
    return 0;
  auto rank = static_cast<std::size_t>(std::ceil(p * double(sorted.size())));
  return sorted[std::min(sorted.size(), std::max<std::size_t>(rank, 1)) - 1];
}

double relative(double predicted, double measured) {
  return measured > 0 ? (predicted - measured) / measured : 0;
}

fidelity_figure figure(std::vector<double> measured,
                       std::vector<double> predicted) {
  fidelity_figure f;
  f.requests = measured.size();
  std::vector<double> errors;
  for (std::size_t i = 0; i < measured.size(); ++i)
    if (measured[i] > 0)
      errors.push_back(std::abs(relative(predicted[i], measured[i])));
  std::sort(measured.begin(), measured.end());
  std::sort(predicted.begin(), predicted.end());
  std::sort(errors.begin(), errors.end());
  f.measured_p50 = quantile(measured, 0.5);
  f.predicted_p50 = quantile(predicted, 0.5);
  f.error_p50 = relative(f.predicted_p50, f.measured_p50);
  f.measured_p99 = quantile(measured, 0.99);
  f.predicted_p99 = quantile(predicted, 0.99);
  f.error_p99 = relative(f.predicted_p99, f.measured_p99);
  f.per_request_p50 = quantile(errors, 0.5);
  f.per_request_p99 = quantile(errors, 0.99);
  return f;
}

} // namespace

comparison compare(const std::string& demo_csv, const std::string& sim_csv,
                   double reply_hop_ms, double skip_ms) {
  detail::csv_table demo(demo_csv), sim(sim_csv);
  comparison c;
  c.demo_csv = demo_csv;
  c.sim_csv = sim_csv;
  c.demo_rows = demo.size();
  c.sim_rows = sim.size();
  auto ready = demo.column("ready_ms");
  auto measured = completed(
      demo, "ok", [&](std::size_t r) { return demo.number(r, ready); });
  auto index = demo.column("index"), arrival = demo.column("arrival_ms");
  for (std::size_t r = 0; r < demo.size() && skip_ms > 0; ++r)
    if (demo.number(r, arrival) < skip_ms)
      c.skipped += measured.erase(std::uint64_t(demo.number(r, index)));
  c.skip_ms = skip_ms;
  // Arrival -> KV complete at the decode worker: TTFT less its first step,
  // plus the answer's hop to the router, which the demo's figure includes.
  auto ttft = sim.column("ttft_ms"), step = sim.column("decode_ms");
  auto predicted = completed(sim, "ok", [&](std::size_t r) {
    return sim.number(r, ttft) - sim.number(r, step) + reply_hop_ms;
  });
  auto j = join_completed(measured, predicted, demo_csv, c.demo_rows, sim_csv,
                          c.sim_rows);
  c.matched = j.index.size();
  c.reply_hop_ms = reply_hop_ms;
  c.transfer = figure(j.transfer_a, j.transfer_b);
  c.latency = figure(j.latency_a, j.latency_b);
  return c;
}

std::string format_comparison(const comparison& c) {
  auto out = fmt::format(
      "demo      {} ({} rows)\nsimulated {} ({} rows)\ncompared  {} requests "
      "completed in both{}\n\n"
      "{:<24}{:>12}{:>12}{:>9}{:>12}{:>12}{:>9}{:>22}\n",
      c.demo_csv, c.demo_rows, c.sim_csv, c.sim_rows, c.matched,
      c.skipped == 0
          ? std::string{}
          : fmt::format(" (not the {} that arrived in the demo's first {:g} "
                        "ms: its cold start)",
                        c.skipped, c.skip_ms),
      "", "demo p50", "sim p50", "error", "demo p99", "sim p99", "error",
      "|error| per request");
  auto row = [&](const char* name, const fidelity_figure& f) {
    out += fmt::format(
        "{:<24}{:>12.3f}{:>12.3f}{:>8.1f}%{:>12.3f}{:>12.3f}{:>8.1f}%"
        "{:>10.1f}% / {:>6.1f}%\n",
        name, f.measured_p50, f.predicted_p50, 100 * f.error_p50,
        f.measured_p99, f.predicted_p99, 100 * f.error_p99,
        100 * f.per_request_p50, 100 * f.per_request_p99);
  };
  row("transfer time (ms)", c.transfer);
  row("request latency (ms)", c.latency);
  out += fmt::format(
      "(error = (simulated - demo) / demo; |error| per request: p50 / p99 "
      "of each request's own; latency = arrival -> the router holds the "
      "decode worker's answer: the simulated one is TTFT less the first "
      "decode step, plus {:.3f} ms for the answer's hop)\n",
      c.reply_hop_ms);
  return out;
}

std::string to_json(const comparison& c, const comparison* held_out) {
  auto fig = [](const fidelity_figure& f) {
    return fmt::format(
        "{{\"requests\": {}, \"demo_p50_ms\": {:.6f}, \"sim_p50_ms\": {:.6f}, "
        "\"error_p50\": {:.6f}, \"demo_p99_ms\": {:.6f}, \"sim_p99_ms\": "
        "{:.6f}, \"error_p99\": {:.6f}, \"per_request_error_p50\": {:.6f}, "
        "\"per_request_error_p99\": {:.6f}}}",
        f.requests, f.measured_p50, f.predicted_p50, f.error_p50,
        f.measured_p99, f.predicted_p99, f.error_p99, f.per_request_p50,
        f.per_request_p99);
  };
  auto out = fmt::format("{{\"demo_rows\": {}, \"sim_rows\": {}, "
                         "\"matched\": {}, \"skipped\": {}, \"transfer\": {}, "
                         "\"latency\": {}",
                         c.demo_rows, c.sim_rows, c.matched, c.skipped,
                         fig(c.transfer), fig(c.latency));
  if (held_out != nullptr) {
    auto inner = to_json(*held_out);
    out += ", \"held_out\": " + inner.substr(0, inner.size() - 1); // no \n
  }
  return out + "}\n";
}

const std::vector<fidelity_target> fidelity_targets = {
    {"transfer time p50", &comparison::transfer, false, 0.10},
    {"transfer time p99", &comparison::transfer, true, 0.20},
    {"request latency p50", &comparison::latency, false, 0.10},
};

namespace {

struct target_figures {
  double measured, predicted, error;
};

target_figures figures(const comparison& c, const fidelity_target& t) {
  auto& f = c.*(t.figure);
  if (t.p99)
    return {f.measured_p99, f.predicted_p99, f.error_p99};
  return {f.measured_p50, f.predicted_p50, f.error_p50};
}

} // namespace

bool meets(const comparison& c, const fidelity_target& t) {
  return std::abs(figures(c, t).error) <= t.limit;
}

std::string
format_targets(const std::vector<std::pair<std::string, comparison>>& runs) {
  auto out = fmt::format("{:<22}{:<14}{:>13}{:>14}{:>11}{:>9}{:>7}\n",
                         "issue #17 target", "demo run", "measured ms",
                         "predicted ms", "error", "target", "met?");
  for (auto& [label, c] : runs)
    for (auto& t : fidelity_targets) {
      auto f = figures(c, t);
      out += fmt::format("{:<22}{:<14}{:>13.3f}{:>14.3f}{:>+10.1f}%{:>7.0f} %"
                         "{:>7}\n",
                         t.name, label, f.measured, f.predicted, 100 * f.error,
                         100 * t.limit, meets(c, t) ? "yes" : "NO");
    }
  out += "(error = (predicted - measured) / measured; met: |error| within "
         "the target)\n";
  return out;
}

engine_comparison compare_engines(const std::string& model_csv,
                                  const std::string& actors_csv) {
  detail::csv_table model(model_csv), actors(actors_csv);
  engine_comparison c;
  c.model_csv = model_csv;
  c.actors_csv = actors_csv;
  c.model_rows = model.size();
  c.actors_rows = actors.size();
  auto ttft_of = [](const detail::csv_table& t) {
    auto ttft = t.column("ttft_ms");
    return completed(t, "ok",
                     [&t, ttft](std::size_t r) { return t.number(r, ttft); });
  };
  auto a = ttft_of(model), b = ttft_of(actors);
  auto j =
      join_completed(a, b, model_csv, c.model_rows, actors_csv, c.actors_rows);
  for (std::size_t i = 0; i < j.index.size(); ++i) {
    c.rows.push_back({j.index[i], j.transfer_a[i], j.transfer_b[i],
                      j.latency_a[i], j.latency_b[i]});
    c.max_transfer_diff_ms = std::max(
        c.max_transfer_diff_ms, std::abs(j.transfer_b[i] - j.transfer_a[i]));
    c.max_ttft_diff_ms =
        std::max(c.max_ttft_diff_ms, std::abs(j.latency_b[i] - j.latency_a[i]));
  }
  c.transfer = figure(j.transfer_a, j.transfer_b);
  c.ttft = figure(j.latency_a, j.latency_b);
  return c;
}

std::string format_comparison(const engine_comparison& c, bool per_request) {
  auto out = fmt::format(
      "model engine  {} ({} rows)\nactors engine {} ({} rows)\ncompared      "
      "{} requests completed in both\n\n"
      "{:<20}{:>12}{:>12}{:>9}{:>12}{:>12}{:>9}{:>22}{:>12}\n",
      c.model_csv, c.model_rows, c.actors_csv, c.actors_rows, c.rows.size(), "",
      "model p50", "actors p50", "diff", "model p99", "actors p99", "diff",
      "|diff| per request", "max |diff|");
  auto row = [&](const char* name, const fidelity_figure& f, double max_ms) {
    out += fmt::format(
        "{:<20}{:>12.3f}{:>12.3f}{:>8.1f}%{:>12.3f}{:>12.3f}{:>8.1f}%"
        "{:>10.2f}% / {:>6.2f}%{:>9.3f} ms\n",
        name, f.measured_p50, f.predicted_p50, 100 * f.error_p50,
        f.measured_p99, f.predicted_p99, 100 * f.error_p99,
        100 * f.per_request_p50, 100 * f.per_request_p99, max_ms);
  };
  row("transfer time (ms)", c.transfer, c.max_transfer_diff_ms);
  row("TTFT (ms)", c.ttft, c.max_ttft_diff_ms);
  out += "(diff = (actors - model) / model; |diff| per request: p50 / p99 of "
         "each request's own)\n";
  if (!per_request)
    return out;
  out += fmt::format("\n{:>8}{:>16}{:>16}{:>14}{:>14}\n", "index",
                     "transfer model", "transfer actors", "TTFT model",
                     "TTFT actors");
  for (auto& r : c.rows)
    out += fmt::format("{:>8}{:>16.3f}{:>16.3f}{:>14.3f}{:>14.3f}\n", r.index,
                       r.model_transfer, r.actors_transfer, r.model_ttft,
                       r.actors_ttft);
  return out;
}

} // namespace kvferry::sim
