// `kvferry sim calibrate` (calibrate.hpp; docs/sim.md, "Calibration"): the
// simulator's link and control costs fitted to this machine's measurements.
//
// Three sources, each optional, later ones refining earlier ones:
// - `bench net --json`: the plugin alone. Latency is half the 8-byte round
//   trip; the per-message cost and the rate are the intercept and slope of a
//   least-squares line through the time per message (size / throughput) at
//   each size.
// - `bench ipc --json`: CUDA IPC. The rate is kvferry's copy kernel at the
//   largest block size; the per-block cost is the host time to build and
//   upload a copy plan, per block (median over the block sizes).
// - a demo run's requests.csv (`kvferry demo --trace --out`): the real actors
//   end to end. The transfer time against the bytes (a robust line, per
//   path) gives the rate and fixed cost a transfer really sees, which the
//   simulator's flows should reproduce; what is left of each request's
//   latency after its wait at the router, its compute and transfer is
//   control, from which hop_us is fitted (fit_hop). The
//   compute time (pattern fill, hashing, verification) against the prompt gives
//   a prefill table for that demo — not a model's prefill.
#include "kvferry/sim/calibrate.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "csv_table.hpp"
#include "transfer_costs.hpp"

namespace kvferry::sim {

namespace {

using json = nlohmann::json;

// y = intercept + slope * x by least squares; needs two distinct x.
struct line_fit {
  double intercept = 0, slope = 0;
  bool ok = false;
};

line_fit fit_line(const std::vector<double>& x, const std::vector<double>& y) {
  line_fit f;
  auto n = static_cast<double>(x.size());
  if (x.size() < 2)
    return f;
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    sx += x[i];
    sy += y[i];
    sxx += x[i] * x[i];
    sxy += x[i] * y[i];
  }
  double d = n * sxx - sx * sx;
  if (!(std::abs(d) > 1e-12 * n * sxx))
    return f; // all x equal
  f.slope = (n * sxy - sx * sy) / d;
  f.intercept = (sy - f.slope * sx) / n;
  f.ok = true;
  return f;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  auto n = v.size();
  return n == 0 ? 0 : n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// The same line, fitted robustly (Theil-Sen: the median of the slopes
// between all pairs of points with distinct x, then the median intercept):
// a demo on a loaded machine has a few requests many times slower than the
// rest, which would drag a least-squares line. O(n^2): demo runs are small.
line_fit fit_line_robust(const std::vector<double>& x,
                         const std::vector<double>& y) {
  line_fit f;
  std::vector<double> slopes;
  for (std::size_t i = 0; i < x.size(); ++i)
    for (std::size_t j = i + 1; j < x.size(); ++j)
      if (x[i] != x[j])
        slopes.push_back((y[j] - y[i]) / (x[j] - x[i]));
  if (slopes.empty())
    return f;
  f.slope = median(std::move(slopes));
  std::vector<double> intercepts;
  for (std::size_t i = 0; i < x.size(); ++i)
    intercepts.push_back(y[i] - f.slope * x[i]);
  f.intercept = median(std::move(intercepts));
  f.ok = true;
  return f;
}

// The control time the simulator charges a request of prefill P (ms) with
// hop h, the answer's hop that `sim compare` adds included: a hop to the
// producer, allocate as prefill starts and the grant two hops later, waited
// for when prefill is shorter, then the answer: 2h + max(P, 2h) - P. (The
// demo's requests use credit, which has no grant round trip; the simulator
// models the negotiated path, so a hop fitted to this is an effective hop
// for it, not CAF's round trip halved.)
double control_of(double hop, double prefill) {
  return 2 * hop + std::max(prefill, 2 * hop) - prefill;
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    throw std::runtime_error(path + ": cannot open");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw std::runtime_error(path + ": not JSON: " + e.what());
  }
}

// A value at a JSON path, or an error naming the file and the key.
double number_at(const json& doc, const std::string& path,
                 std::initializer_list<const char*> keys) {
  const json* node = &doc;
  std::string where;
  for (auto key : keys) {
    where += where.empty() ? key : std::string{"."} + key;
    if (!node->is_object() || !node->contains(key))
      throw std::runtime_error(path + ": no '" + where + "'");
    node = &(*node)[key];
  }
  if (!node->is_number())
    throw std::runtime_error(path + ": '" + where + "' is not a number");
  return node->get<double>();
}

void from_bench_net(const std::string& path, calibration& c) {
  auto doc = read_json(path);
  // GPU memory when it was measured: what a deployment's KV crosses.
  std::string memory = "host";
  for (const auto& m : doc.value("memories", json::array()))
    if (m == "cuda")
      memory = "cuda";
  c.latency_us = number_at(doc, path, {"rtt_8b", "plugin_p50_us"}) / 2;
  c.notes.push_back(fmt::format("latency_us: half the 8-byte round trip "
                                "(bench net, {})",
                                path));
  std::vector<double> size, us;
  for (const auto& row : doc.value("sizes", json::array())) {
    auto bytes = number_at(row, path, {"size"});
    auto gbps = number_at(row, path, {memory.c_str(), "gbps"});
    if (gbps > 0) {
      size.push_back(bytes);
      us.push_back(bytes / (gbps * 1e3)); // GB/s = 1e3 bytes per us
    }
  }
  if (size.empty())
    throw std::runtime_error(path + ": no size with a positive rate");
  auto f = fit_line(size, us);
  if (f.ok && f.slope > 0) {
    c.message_us = std::max(0.0, f.intercept);
    c.nic_gbit_per_s = 8 / (f.slope * 1e3);
    c.notes.push_back(fmt::format(
        "message_us, nic_gbit_per_s: least-squares time per message against "
        "its size over {} sizes, {} memory (bench net, {})",
        size.size(), memory, path));
  } else {
    c.nic_gbit_per_s = 8 * size.back() / (us.back() * 1e3);
    c.notes.push_back(fmt::format("nic_gbit_per_s: the rate at {} bytes, {} "
                                  "memory (bench net, {}; one size: no "
                                  "per-message cost fitted)",
                                  size.back(), memory, path));
  }
}

void from_bench_ipc(const std::string& path, calibration& c) {
  auto doc = read_json(path);
  double largest = -1;
  std::vector<double> per_block_us;
  for (const auto& row : doc.value("sizes", json::array())) {
    auto block = number_at(row, path, {"block_bytes"});
    auto blocks = number_at(row, path, {"blocks"});
    if (block > largest) {
      largest = block;
      // The simulator charges a copy its bytes at this rate and no per-block
      // cost: the rate with the plan's building in it, where measured.
      auto with_plan = row.value("kvferry_with_plan", json::object());
      c.ipc_gbyte_per_s =
          with_plan.contains("gbps")
              ? number_at(row, path, {"kvferry_with_plan", "gbps"})
              : number_at(row, path, {"kvferry", "gbps"});
    }
    if (blocks > 0)
      per_block_us.push_back(
          number_at(row, path, {"kvferry_with_plan", "prepare_host_seconds"}) *
          1e6 / blocks);
  }
  if (largest < 0)
    throw std::runtime_error(path + ": no 'sizes' rows");
  c.block_us = median(per_block_us);
  c.notes.push_back(fmt::format(
      "ipc_gbyte_per_s: kvferry's copy kernel at {}-byte blocks, its plan's "
      "building included; block_us: median plan build + upload time per "
      "block (bench ipc, {})",
      largest, path));
}

// One completed request of a demo run (ms, bytes, tokens).
struct demo_row {
  bool ipc = false;
  double bytes = 0, transfer = 0, arrival = 0, queue = 0, ready = 0,
         compute = 0, tokens = 0;
  std::uint64_t index = 0; // in the trace: its spread_quantile
};

// The completed requests of a demo run that arrived from `skip_ms` on.
std::vector<demo_row> read_demo(const std::string& path, double skip_ms) {
  detail::csv_table t(path);
  auto status = t.column("status"), kind = t.column("path"),
       bytes = t.column("bytes_moved"),
       transfer = t.column("transfer_total_ms"), ready = t.column("ready_ms"),
       queue = t.column("queue_ms"), compute = t.column("prefill_ms"),
       tokens = t.column("input_tokens"), arrival = t.column("arrival_ms"),
       index = t.column("index");
  std::vector<demo_row> rows;
  for (std::size_t row = 0; row < t.size(); ++row) {
    if (t.text(row, status) != "ok" || t.number(row, arrival) < skip_ms)
      continue;
    rows.push_back({t.text(row, kind) == "ipc", t.number(row, bytes),
                    t.number(row, transfer), t.number(row, arrival),
                    t.number(row, queue), t.number(row, ready),
                    t.number(row, compute), t.number(row, tokens),
                    std::uint64_t(t.number(row, index))});
  }
  return rows;
}

// The quantile `q` of `values`, each counted `weight` times (linear
// between the midpoints of the weights).
double weighted_quantile(std::vector<std::pair<double, double>> values,
                         double q) {
  std::sort(values.begin(), values.end());
  double total = 0;
  for (auto& v : values)
    total += v.second;
  double below = 0, at = 0, prev_at = 0, prev = values.front().first;
  for (auto& [value, weight] : values) {
    at = (below + weight / 2) / total;
    if (q <= at)
      return at == prev_at
                 ? value
                 : prev + (value - prev) * std::max(0.0, q - prev_at) /
                              (at - prev_at);
    below += weight;
    prev_at = at;
    prev = value;
  }
  return values.back().first;
}

// The spread of the transfer times about the fitted lines: each request's
// measured time over its line's, each ratio weighted by its request's
// fitted time, so that the spread is the one of the transfers that make the
// time (on a loaded machine a transfer of a few microseconds, mostly fixed
// cost, varies far more in proportion). Written as a quantile table
// (transfer_spread_quantiles): the ratios' own quantiles up to p 0.9, the
// minimum included (the body, where the p50 of a run falls: its shape is not
// log-normal), and beyond it a tail (fit_tail).
constexpr double spread_body[] = {0,   0.01, 0.02, 0.05, 0.1, 0.2, 0.3,
                                  0.4, 0.5,  0.6,  0.7,  0.8, 0.9};
constexpr double spread_tail_from = 0.9, z_tail_from = 1.2815516;
constexpr std::pair<double, double> spread_tail[] = { // p, its normal quantile
    {0.95, 1.6448536},
    {0.98, 2.0537489},
    {0.99, 2.3263479},
    {0.995, 2.5758293},
    {0.999, 3.0902323}};

// One request of the calibration run as the spread sees it: its fitted
// time (us), its measured time, the quantile the simulator draws its
// factor at (spread_quantile of its trace index).
struct spread_sample {
  double fitted = 0, measured = 0, u = 0;
};

// The geometric mean of the largest `k` of `v` (reordered; all > 0): in
// log space, as the spread is a factor, so that one transfer 20 times the
// rest does not make the tail of a run (run 7 of the CPU runs: with the
// plain mean its own p99 came out +26 %).
double log_mean_of_largest(std::vector<double>& v, std::size_t k) {
  std::nth_element(v.begin(), v.end() - std::ptrdiff_t(k), v.end());
  double sum = 0;
  for (auto i = v.end() - std::ptrdiff_t(k); i != v.end(); ++i)
    sum += std::log(*i);
  return sum / double(k);
}

// The body, then beyond p 0.9 a log-normal from q90 of log standard
// deviation `sigma`.
std::vector<topology::sim_quantile>
spread_table(const std::vector<topology::sim_quantile>& body, double sigma) {
  auto t = body;
  auto q90 = body.back().factor;
  for (auto [p, z] : spread_tail)
    t.push_back({p, q90 * std::exp(sigma * (z - z_tail_from))});
  return t;
}

// The tail's sigma: the one at which the calibration run, simulated (each
// request's fitted time x the table's factor at its own quantile, as the
// simulator draws it), has its slowest tenth of transfers as slow on
// (geometric) average as they were measured. Not a log-normal through the
// body's median and q90 (up to session 13): the slow transfers come from
// something else than the body's spread (a worker descheduled; on the GPU
// a copy or its notice held up), so the body does not predict them. On
// the H100 the body's sigma is 0.115 and puts q98 at 1.27 of the line
// where the transfers' weighted q98 is 1.97: the transfer p99 came out
// -39 % on the run calibrated on; on the eight quiet CPU runs -9 % on
// average. Nor the ratios' own quantiles above q90: they mix in the middle
// sizes' misfit (kvsock on loopback is not linear in the bytes: 1-8 MiB
// run at 1.4-1.5 times the line), which the simulator then applies to the
// largest transfers, those that make the p99 (read off up to q99, the CPU
// runs' own p99 came out up to +66 %). The mean of the slowest tenth (60
// of 600 requests) is steadier than any one high quantile (the p99 is the
// 6th largest). Bisection: that mean grows with sigma. Without enough requests
// (fewer than 20) or a target the tail cannot reach, the body's log-normal
// (nullopt).
std::optional<double> fit_tail(const std::vector<topology::sim_quantile>& body,
                               const std::vector<spread_sample>& samples) {
  auto n = samples.size();
  if (n < 20)
    return std::nullopt;
  auto k = std::max<std::size_t>(1, (n + 5) / 10);
  std::vector<double> v;
  for (auto& s : samples)
    v.push_back(s.measured);
  auto target = log_mean_of_largest(v, k);
  auto simulated = [&](double sigma) {
    auto t = spread_table(body, sigma);
    v.clear();
    for (auto& s : samples)
      v.push_back(s.fitted * quantile_factor(t, s.u));
    return log_mean_of_largest(v, k);
  };
  double lo = 0, hi = 3; // sigma 3: q99 at 23 times q90
  if (simulated(hi) < target)
    return std::nullopt;
  if (simulated(lo) >= target)
    return 0.0;
  for (int i = 0; i < 50; ++i)
    (simulated((lo + hi) / 2) < target ? lo : hi) = (lo + hi) / 2;
  return (lo + hi) / 2;
}

void fit_spread(const std::vector<std::pair<double, double>>& ratios,
                const std::vector<spread_sample>& samples, calibration& c,
                const std::string& path) {
  if (ratios.size() < 4)
    return;
  auto q = [&](double p) { return weighted_quantile(ratios, p); };
  auto median = q(0.5), q90 = q(spread_tail_from);
  if (!(q(0) > 0))
    return;
  std::vector<topology::sim_quantile> body;
  for (auto p : spread_body)
    body.push_back({p, q(p)});
  auto sigma_body = std::log(q90 / median) / z_tail_from;
  auto sigma_tail = fit_tail(body, samples);
  c.transfer_spread_quantiles =
      spread_table(body, sigma_tail.value_or(sigma_body));
  c.notes.push_back(fmt::format(
      "transfer_spread_quantiles: each request's transfer time over its "
      "fitted line's, weighted by that, of {} requests: its quantiles to "
      "p {}, beyond as a log-normal from q{:g} {} (the median and q{:g}'s "
      "log-normal: sigma {:.3g}; the quartiles': sigma {:.3g}) (demo, {})",
      ratios.size(), spread_tail_from, spread_tail_from * 100,
      sigma_tail ? fmt::format("of sigma {:.3g}, at which the run's slowest "
                               "tenth of transfers, simulated, is as slow as "
                               "measured (geometric mean)",
                               *sigma_tail)
                 : std::string("through the median (too few requests to fit "
                               "the tail to)"),
      spread_tail_from * 100, sigma_body, std::log(q(0.75) / q(0.25)) / 1.349,
      path));
}

// The hop at which the demo's requests, each with its own measured compute
// and transfer and the simulator's control path (control_of), have the
// measured median latency less the router's wait. Fitted to the median of
// the sums, not to each request's control (whose median, added to the
// other parts' medians, falls short of the median latency when the parts
// spread, as they do on a loaded machine). Bisection: monotone in the hop.
double fit_hop(const std::vector<demo_row>& rows) {
  std::vector<double> latency;
  for (auto& r : rows)
    latency.push_back(r.ready - r.queue);
  auto target = median(latency);
  auto at = [&](double hop) {
    std::vector<double> l;
    for (auto& r : rows)
      l.push_back(r.compute + r.transfer + control_of(hop, r.compute));
    return median(std::move(l));
  };
  double lo = 0, hi = std::max(target, 0.0);
  for (int i = 0; i < 60; ++i)
    (at((lo + hi) / 2) < target ? lo : hi) = (lo + hi) / 2;
  return (lo + hi) / 2;
}

// The router's own delay: its wait to send a request (queue_ms) where its
// window cannot have been full, i.e. fewer requests were in flight (sent,
// not answered) at its arrival than the most ever were (a full window is
// queueing, which the simulator models itself in front of the prefill
// GPU). The median; all requests when none was ever in flight.
void fit_router(const std::vector<demo_row>& rows, calibration& c,
                const std::string& path) {
  std::vector<std::size_t> in_flight(rows.size(), 0);
  std::size_t most = 0;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    for (auto& o : rows)
      if (o.arrival + o.queue <= rows[i].arrival &&
          rows[i].arrival < o.arrival + o.ready)
        ++in_flight[i];
    most = std::max(most, in_flight[i]);
  }
  std::vector<double> waits;
  for (std::size_t i = 0; i < rows.size(); ++i)
    if (most == 0 || in_flight[i] < most)
      waits.push_back(rows[i].queue);
  c.router_us = median(waits) * 1e3;
  c.notes.push_back(fmt::format(
      "router_us: the median wait at the router to send of {} requests "
      "that found fewer than {} in flight (its window could not be full; "
      "demo, {})",
      waits.size(), std::max<std::size_t>(most, 1), path));
}

// The demo's requests, by path: bytes and transfer time; and the rest.
void from_demo(const std::string& path, double skip_ms, calibration& c) {
  auto rows = read_demo(path, skip_ms);
  if (rows.size() < 2)
    throw std::runtime_error(
        path + ": fewer than two completed requests" +
        (skip_ms > 0 ? fmt::format(" from {} ms on", skip_ms) : ""));
  std::vector<double> net_bytes, net_us, ipc_bytes, ipc_us, prompt, compute_ms;
  for (auto& r : rows) {
    (r.ipc ? ipc_bytes : net_bytes).push_back(r.bytes);
    (r.ipc ? ipc_us : net_us).push_back(r.transfer * 1e3);
    prompt.push_back(r.tokens);
    compute_ms.push_back(r.compute);
  }
  auto n = rows.size();
  // Not with the router's wait before sending (queue_ms): a full window is
  // queueing, which the simulator models itself (a queue for the prefill
  // GPU), and the router's own delay is router_us; counted as control, an
  // overloaded demo run made each hop seconds long.
  c.hop_us = fit_hop(rows) * 1e3;
  c.notes.push_back(fmt::format(
      "hop_us: the effective hop at which the simulator's control path, "
      "added to each request's compute and transfer, gives the median "
      "latency less the router's wait of {} requests (demo, {})",
      n, path));
  fit_router(rows, c, path);
  // Each request's measured transfer time over its fitted line's (and
  // that), for the spread.
  std::vector<std::pair<double, double>> ratios;
  std::vector<spread_sample> samples;
  auto add_ratios = [&](const line_fit& f, bool ipc) {
    for (auto& r : rows)
      if (auto fitted = f.intercept + f.slope * r.bytes;
          r.ipc == ipc && fitted > 0 && r.transfer > 0) {
        ratios.emplace_back(r.transfer * 1e3 / fitted, fitted);
        samples.push_back({fitted, r.transfer * 1e3, spread_quantile(r.index)});
      }
  };
  auto net = fit_line_robust(net_bytes, net_us);
  if (net.ok && net.slope > 0) {
    // A one-chunk transfer pays the latency and one message before its
    // bytes; each further chunk (the topology's default size) a message,
    // which the line's slope holds too: the rate is what is left of it.
    auto message = c.message_us.value_or(topology::sim_spec{}.message_us);
    c.latency_us = std::max(0.0, net.intercept - message);
    auto per_byte =
        net.slope - message / double(topology::transfer_spec{}.chunk_bytes);
    c.nic_gbit_per_s = 8 / ((per_byte > 0 ? per_byte : net.slope) * 1e3);
    c.notes.push_back(fmt::format(
        "latency_us, nic_gbit_per_s (overriding bench net): transfer time "
        "against bytes, robust fit, of {} requests over the network (demo, "
        "{})",
        net_bytes.size(), path));
    add_ratios(net, false);
  }
  auto ipc = fit_line_robust(ipc_bytes, ipc_us);
  if (ipc.ok && ipc.slope > 0) {
    c.ipc_gbyte_per_s = 1 / (ipc.slope * 1e3);
    c.ipc_setup_us = std::max(0.0, ipc.intercept);
    c.notes.push_back(fmt::format(
        "ipc_gbyte_per_s, ipc_setup_us (overriding bench ipc): transfer time "
        "against bytes, robust fit, of {} requests over CUDA IPC (demo, {})",
        ipc_bytes.size(), path));
    add_ratios(ipc, true);
  }
  fit_spread(ratios, samples, c, path);
  auto prefill = fit_line_robust(prompt, compute_ms);
  auto low = *std::min_element(prompt.begin(), prompt.end());
  auto high = *std::max_element(prompt.begin(), prompt.end());
  if (prefill.ok) {
    auto at = [&](double x) {
      return std::max(0.0, prefill.intercept + prefill.slope * x);
    };
    c.prefill_ms = {{low, at(low)}, {high, at(high)}};
  } else {
    c.prefill_ms = {{low, median(compute_ms)}}; // one size: proportional
  }
  c.notes.push_back(fmt::format(
      "prefill_ms: the demo's compute (pattern fill, hashing, verification) "
      "against prompt tokens, robust fit, of {} requests: a stand-in for the "
      "demo, not a "
      "model's prefill (demo, {})",
      n, path));
}

} // namespace

calibration calibrate(const calibration_inputs& in) {
  calibration c;
  if (!in.bench_net_json.empty())
    from_bench_net(in.bench_net_json, c);
  if (!in.bench_ipc_json.empty())
    from_bench_ipc(in.bench_ipc_json, c);
  if (!in.demo_csv.empty())
    from_demo(in.demo_csv, in.skip_ms, c);
  return c;
}

std::string to_yaml(const calibration& c) {
  std::string out = "# kvferry sim calibrate (docs/sim.md, \"Calibration\"):\n";
  for (const auto& note : c.notes)
    out += "#   " + note + "\n";
  out += "sim:\n";
  auto key = [&](const char* name, const std::optional<double>& v) {
    if (v)
      out += fmt::format("  {}: {:.6g}\n", name, *v);
  };
  key("nic_gbit_per_s", c.nic_gbit_per_s);
  key("latency_us", c.latency_us);
  key("message_us", c.message_us);
  key("block_us", c.block_us);
  key("ipc_gbyte_per_s", c.ipc_gbyte_per_s);
  key("ipc_setup_us", c.ipc_setup_us);
  key("hop_us", c.hop_us);
  key("router_us", c.router_us);
  auto table = [&](const char* name, const auto& points, auto x, auto y) {
    if (points.empty())
      return;
    out += fmt::format("  {}: [", name);
    for (std::size_t i = 0; i < points.size(); ++i)
      out += fmt::format("{}[{:.6g}, {:.6g}]", i ? ", " : "", points[i].*x,
                         points[i].*y);
    out += "]\n";
  };
  table("transfer_spread_quantiles", c.transfer_spread_quantiles,
        &topology::sim_quantile::p, &topology::sim_quantile::factor);
  table("prefill_ms", c.prefill_ms, &topology::sim_point::x,
        &topology::sim_point::ms);
  return out;
}

} // namespace kvferry::sim
