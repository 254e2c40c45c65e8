// `kvferry sim --sweep`: the same trace through variants of one topology,
// one row each in a comparison table, one line each in a TTFT CDF plot
// (docs/sim.md, "Sweeps").
#include <cstdlib>
#include <stdexcept>

#include <fmt/format.h>

#include "kvferry/actors/route_policy.hpp"
#include "kvferry/sim/sim.hpp"

namespace kvferry::sim {

namespace {

[[noreturn]] void bad(const std::string& text, const std::string& why) {
  throw std::invalid_argument("--sweep " + text + ": " + why);
}

std::uint32_t count_of(const std::string& key, const std::string& value) {
  char* end = nullptr;
  auto n = std::strtoul(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || n == 0 || n > 100000)
    bad(key + "=" + value, "a whole number in [1, 100000]");
  return std::uint32_t(n);
}

bool on_off(const std::string& key, const std::string& value) {
  if (value != "on" && value != "off")
    bad(key + "=" + value, "on or off");
  return value == "on";
}

// The file's first n workers of `role`, or all of them and copies of them in
// turn (same host, GPU and pool; named NAME.K) up to n. Other roles stay.
void set_count(topology::deployment& t, topology::worker_role role,
               std::uint32_t n) {
  std::vector<topology::worker_spec> of_role, others;
  for (auto& w : t.workers)
    (w.role == role ? of_role : others).push_back(w);
  if (of_role.empty())
    throw std::invalid_argument(
        fmt::format("--sweep: {} has no {} worker to copy", t.source_file,
                    topology::to_string(role)));
  auto base = of_role.size();
  for (std::size_t i = base; i < n; ++i) {
    auto copy = of_role[i % base];
    copy.name += fmt::format(".{}", i / base);
    of_role.push_back(copy);
  }
  of_role.resize(n);
  others.insert(others.end(), of_role.begin(), of_role.end());
  t.workers = std::move(others);
}

topology::sim_routing routing_of(const std::string& value) {
  if (auto r = parse_routing(value))
    return *r;
  bad("routing=" + value, "rr|round-robin, ll|least-loaded or "
                          "prefix|prefix-aware");
}

} // namespace

const char* sweep_keys =
    "prefill=N, decode=N (worker counts), nic_gbps=RATE, layerwise=on|off, "
    "routing=rr|ll|prefix, block_tokens=N, prefix_reuse=on|off";

void apply_sweep(topology::deployment& t, const std::string& key,
                 const std::string& value) {
  if (key == "prefill")
    return set_count(t, topology::worker_role::prefill, count_of(key, value));
  if (key == "decode")
    return set_count(t, topology::worker_role::decode, count_of(key, value));
  if (key == "block_tokens") {
    t.model.block_tokens = count_of(key, value);
    return;
  }
  if (key == "layerwise") {
    t.transfer.layerwise = on_off(key, value);
    return;
  }
  if (key == "prefix_reuse") {
    t.sim.prefix_reuse = on_off(key, value);
    return;
  }
  if (key == "routing") {
    t.sim.routing = routing_of(value);
    return;
  }
  if (key == "nic_gbps") {
    char* end = nullptr;
    double rate = std::strtod(value.c_str(), &end);
    if (value.empty() || *end != '\0' || !(rate > 0))
      bad(key + "=" + value, "a rate > 0 in Gbit/s");
    t.sim.nic_gbit_per_s = rate;
    return;
  }
  bad(key + "=" + value, std::string("unknown key; one of ") + sweep_keys);
}

sweep_axis parse_sweep(const std::string& text) {
  auto eq = text.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == text.size())
    bad(text, std::string("KEY=V1,V2,... with KEY one of ") + sweep_keys);
  sweep_axis axis{text.substr(0, eq), {}};
  std::size_t start = eq + 1;
  while (start <= text.size()) {
    auto comma = text.find(',', start);
    if (comma == std::string::npos)
      comma = text.size();
    axis.values.push_back(text.substr(start, comma - start));
    start = comma + 1;
  }
  topology::deployment probe; // each value is checked before any run
  probe.workers.resize(2);
  probe.workers[1].role = topology::worker_role::decode;
  for (auto& v : axis.values)
    apply_sweep(probe, axis.key, v);
  return axis;
}

namespace {

std::string row_label(const std::vector<sweep_axis>& axes,
                      const std::vector<std::size_t>& at) {
  std::string out;
  for (std::size_t i = 0; i < axes.size(); ++i)
    out += fmt::format("{}{}={}", i ? " " : "", axes[i].key,
                       axes[i].values[at[i]]);
  return out;
}

double busiest(const summary& s) {
  double b = 0;
  for (auto& l : s.links)
    b = std::max(b, l.busy_fraction);
  return 100 * b;
}

double ms(std::uint64_t ns) {
  return double(ns) / 1e6;
}

// One row per run: the axes' values, then the figures.
std::string table(const std::vector<sweep_axis>& axes,
                  const std::vector<std::vector<std::size_t>>& rows,
                  const std::vector<summary>& runs, bool csv) {
  std::string out;
  auto o = std::back_inserter(out);
  const char* heads[] = {"completed", "failed",    "TTFT p50", "TTFT p90",
                         "TTFT p99",  "xfer p50",  "xfer p99", "SLO %",
                         "KV GB",     "link max %"};
  for (auto& a : axes)
    fmt::format_to(o, csv ? "{}," : "{:<14}", a.key);
  for (std::size_t i = 0; i < std::size(heads); ++i)
    fmt::format_to(o, csv ? "{}{}" : "{:>11}{}", heads[i],
                   i + 1 < std::size(heads) ? (csv ? "," : "") : "\n");
  for (std::size_t r = 0; r < runs.size(); ++r) {
    auto& s = runs[r];
    for (std::size_t i = 0; i < axes.size(); ++i)
      fmt::format_to(o, csv ? "{}," : "{:<14}", axes[i].values[rows[r][i]]);
    double slo = s.requests && s.ttft_slo_ms > 0
                     ? 100.0 * double(s.slo_met) / double(s.requests)
                     : 0.0;
    auto& t = s.ttft.total;
    fmt::format_to(
        o,
        csv ? "{},{},{:.3f},{:.3f},{:.3f},{:.3f},{:.3f},{:.2f},{:.3f},{:.2f}\n"
            : "{:>11}{:>11}{:>11.1f}{:>11.1f}{:>11.1f}{:>11.1f}{:>11.1f}"
              "{:>11.2f}{:>11.1f}{:>11.2f}\n",
        s.completed, s.failed, ms(t.quantile(0.5)), ms(t.quantile(0.9)),
        ms(t.quantile(0.99)), ms(s.transfer_time.quantile(0.5)),
        ms(s.transfer_time.quantile(0.99)), slo, s.bytes_moved / 1e9,
        busiest(s));
  }
  return out;
}

} // namespace

sweep_result run_sweep(
    const std::string& trace_path, const topology::deployment& base,
    const std::vector<sweep_axis>& axes, const run_options& options,
    const std::function<void(std::size_t, std::size_t, const std::string&)>&
        each,
    engine_fn engine) {
  std::vector<std::vector<std::size_t>> rows(1);
  for (auto& a : axes) { // every combination, the first axis slowest
    std::vector<std::vector<std::size_t>> next;
    for (auto& row : rows)
      for (std::size_t v = 0; v < a.values.size(); ++v) {
        next.push_back(row);
        next.back().push_back(v);
      }
    rows = std::move(next);
  }
  std::vector<summary> runs;
  std::vector<cdf_line> lines;
  std::vector<std::string> errors;
  for (std::size_t r = 0; r < rows.size(); ++r) {
    auto label = row_label(axes, rows[r]);
    if (each)
      each(r, rows.size(), label);
    auto variant = base;
    for (std::size_t i = 0; i < axes.size(); ++i)
      apply_sweep(variant, axes[i].key, axes[i].values[rows[r][i]]);
    trace_reader trace(trace_path);
    auto one = options;
    one.out_dir.clear(); // no per-run CSV
    runs.push_back(engine(trace, variant, one));
    if (auto e = unfinished_error(runs.back()); !e.empty())
      errors.push_back(e + " [" + label + "]");
    lines.push_back({fmt::format("sweep-{}.dat", r), label,
                     cdf_data(runs.back().ttft.total)});
  }
  sweep_result out;
  out.table = table(axes, rows, runs, false);
  out.errors = std::move(errors);
  if (options.out_dir.empty())
    return out;
  auto& dir = options.out_dir;
  write_text(dir + "/sweep.txt", out.table);
  write_text(dir + "/sweep.csv", table(axes, rows, runs, true));
  write_cdfs(dir, lines);
  write_text(dir + "/sweep.gp",
             plot_preamble + cdf_plot("sweep-ttft-cdf.png",
                                      "Time to first token, per variant",
                                      "TTFT (ms)", lines));
  out.plots = draw(dir, "sweep.gp", "sweep-ttft-cdf.png");
  return out;
}

} // namespace kvferry::sim
