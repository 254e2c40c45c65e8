// The summary as a table for people and as JSON for programs. Numbers are
// printed with fixed precision so that the same run gives the same bytes.
#include <fmt/format.h>

#include "kvferry/sim/sim.hpp"

namespace kvferry::sim {

namespace {

double ms(std::uint64_t ns) {
  return double(ns) / 1e6;
}

struct row {
  const char* name;
  const histogram* h;
};

std::vector<row> ttft_rows(const summary& s) {
  auto& t = s.ttft;
  return {{"queue", &t.queue},
          {"prefill", &t.prefill},
          {"wait (KV pool)", &t.wait},
          {"transfer (exposed)", &t.transfer},
          {"first decode step", &t.decode},
          {"TTFT", &t.total}};
}

std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\')
      out += '\\';
    if (static_cast<unsigned char>(c) < 0x20)
      out += fmt::format("\\u{:04x}", int(c));
    else
      out += c;
  }
  return out + "\"";
}

std::string json_hist(const histogram& h) {
  return fmt::format("{{\"mean_ms\": {:.3f}, \"p50_ms\": {:.3f}, \"p90_ms\": "
                     "{:.3f}, \"p99_ms\": {:.3f}, \"max_ms\": {:.3f}}}",
                     h.mean() / 1e6, ms(h.quantile(0.5)), ms(h.quantile(0.9)),
                     ms(h.quantile(0.99)), ms(h.max()));
}

const char* json_key(const char* name) {
  std::string n = name;
  if (n.rfind("wait", 0) == 0)
    return "wait";
  if (n.rfind("transfer", 0) == 0)
    return "transfer";
  if (n.rfind("first", 0) == 0)
    return "first_decode_step";
  if (n == "TTFT")
    return "total";
  return name;
}

template<class Out>
void format_faults(Out o, const summary& s) {
  if (s.faults.empty())
    return;
  fmt::format_to(o,
                 "faults    {} request(s) failed (peer_down, not retried: "
                 "docs/sim.md, \"Faults\")\n",
                 s.failed);
  for (auto& f : s.faults)
    fmt::format_to(o, "  {:<40} {:>8} failed\n", f.fault, f.failed);
  if (s.unroutable > 0)
    fmt::format_to(o, "  {:<40} {:>8} failed\n",
                   "(no live prefill or decode worker left)", s.unroutable);
}

} // namespace

std::string unfinished_error(const summary& s) {
  if (s.unfinished == 0)
    return {};
  return fmt::format(
      "error: {} of {} requests of {} never finished in the {} engine (status "
      "'unfinished' in requests.csv): the run hung, its figures leave them "
      "out (docs/sim.md, \"Outputs\")",
      s.unfinished, s.requests, s.trace, s.engine);
}

std::string format_table(const summary& s) {
  std::string out;
  auto o = std::back_inserter(out);
  fmt::format_to(
      o,
      "trace     {} ({}), {} requests: {} completed, {} "
      "rejected (larger than a decode pool){}{}\n",
      s.trace, s.trace_format, s.requests, s.completed, s.rejected,
      s.failed ? fmt::format(", {} failed", s.failed) : "",
      s.unfinished ? fmt::format(", {} unfinished (the run hung)", s.unfinished)
                   : "");
  fmt::format_to(o,
                 "topology  {}: {} prefill, {} decode worker(s) on {} "
                 "host(s); routing {}, layer-wise {}, prefix reuse {}\n",
                 s.topology, s.prefill_workers, s.decode_workers, s.hosts,
                 s.routing, s.layerwise ? "on" : "off",
                 s.prefix_reuse ? "on" : "off");
  fmt::format_to(o, "simulated {:.3f} s of virtual time{}\n", s.span_s,
                 s.engine == "model" ? "" : " (" + s.engine + " engine)");
  format_faults(o, s);
  fmt::format_to(o, "\n");
  fmt::format_to(o, "{:<20} {:>10} {:>10} {:>10} {:>10}\n",
                 "time to first token", "mean ms", "p50 ms", "p90 ms",
                 "p99 ms");
  for (auto& r : ttft_rows(s))
    fmt::format_to(o, "  {:<18} {:>10.3f} {:>10.3f} {:>10.3f} {:>10.3f}\n",
                   r.name, r.h->mean() / 1e6, ms(r.h->quantile(0.5)),
                   ms(r.h->quantile(0.9)), ms(r.h->quantile(0.99)));
  auto& x = s.transfer_time;
  fmt::format_to(o, "  {:<18} {:>10.3f} {:>10.3f} {:>10.3f} {:>10.3f}\n",
                 "KV transfer (all)", x.mean() / 1e6, ms(x.quantile(0.5)),
                 ms(x.quantile(0.9)), ms(x.quantile(0.99)));
  fmt::format_to(o, "  {:<18} {:>10.3f} {:>10.3f} {:>10.3f} {:>10.3f}\n",
                 "request (e2e)", s.e2e.mean() / 1e6, ms(s.e2e.quantile(0.5)),
                 ms(s.e2e.quantile(0.9)), ms(s.e2e.quantile(0.99)));
  fmt::format_to(o,
                 "\nKV moved {:.3f} GB ({} over the network, {} by CUDA "
                 "IPC); prefix reuse saved {:.3f} GB\n",
                 s.bytes_moved / 1e9, s.net_transfers, s.ipc_transfers,
                 s.bytes_saved / 1e9);
  if (s.ttft_slo_ms > 0)
    fmt::format_to(o,
                   "TTFT SLO {:.3f} ms: met by {} of {} requests ({:.2f} "
                   "%)\n",
                   s.ttft_slo_ms, s.slo_met, s.requests,
                   s.requests ? 100.0 * double(s.slo_met) / double(s.requests)
                              : 0.0);
  fmt::format_to(o, "\n{:<28} {:>10} {:>12} {:>8}\n", "link", "GB/s",
                 "GB carried", "busy %");
  for (auto& l : s.links)
    if (l.bytes > 0)
      fmt::format_to(o, "  {:<26} {:>10.1f} {:>12.3f} {:>8.2f}\n", l.name,
                     l.capacity_gbyte_per_s, l.bytes / 1e9,
                     100 * l.busy_fraction);
  if (s.pools.empty())
    return out;
  fmt::format_to(o, "\n{:<28} {:>10} {:>12} {:>8}\n", "decode pool", "blocks",
                 "peak", "mean %");
  for (auto& p : s.pools)
    fmt::format_to(o, "  {:<26} {:>10} {:>12} {:>8.2f}  ({} waited)\n",
                   p.worker, p.capacity_blocks, p.peak_blocks,
                   100 * p.mean_fraction, p.waited);
  return out;
}

std::string to_json(const summary& s) {
  std::string out;
  auto o = std::back_inserter(out);
  fmt::format_to(o, "{{\n  \"trace\": {},\n  \"trace_format\": {},\n",
                 json_string(s.trace), json_string(s.trace_format));
  fmt::format_to(o, "  \"topology\": {},\n  \"routing\": {},\n",
                 json_string(s.topology), json_string(s.routing));
  fmt::format_to(o, "  \"engine\": {},\n", json_string(s.engine));
  fmt::format_to(o, "  \"layerwise\": {},\n  \"prefix_reuse\": {},\n",
                 s.layerwise, s.prefix_reuse);
  fmt::format_to(o,
                 "  \"hosts\": {},\n  \"prefill_workers\": {},\n  "
                 "\"decode_workers\": {},\n",
                 s.hosts, s.prefill_workers, s.decode_workers);
  fmt::format_to(o,
                 "  \"requests\": {},\n  \"completed\": {},\n  "
                 "\"rejected\": {},\n  \"failed\": {},\n  "
                 "\"unroutable\": {},\n  \"unfinished\": {},\n  "
                 "\"span_s\": {:.6f},\n",
                 s.requests, s.completed, s.rejected, s.failed, s.unroutable,
                 s.unfinished, s.span_s);
  fmt::format_to(o, "  \"faults\": [");
  for (std::size_t i = 0; i < s.faults.size(); ++i)
    fmt::format_to(o, "{}\n    {{\"fault\": {}, \"failed\": {}}}", i ? "," : "",
                   json_string(s.faults[i].fault), s.faults[i].failed);
  fmt::format_to(o, "{}],\n", s.faults.empty() ? "" : "\n  ");
  fmt::format_to(o, "  \"ttft\": {{\n");
  auto rows = ttft_rows(s);
  for (std::size_t i = 0; i < rows.size(); ++i)
    fmt::format_to(o, "    \"{}\": {}{}\n", json_key(rows[i].name),
                   json_hist(*rows[i].h), i + 1 < rows.size() ? "," : "");
  fmt::format_to(o, "  }},\n  \"transfer_time\": {},\n  \"e2e\": {},\n",
                 json_hist(s.transfer_time), json_hist(s.e2e));
  fmt::format_to(o, "  \"bytes_moved\": {:.0f},\n  \"bytes_saved\": {:.0f},\n",
                 s.bytes_moved, s.bytes_saved);
  fmt::format_to(o, "  \"net_transfers\": {},\n  \"ipc_transfers\": {},\n",
                 s.net_transfers, s.ipc_transfers);
  fmt::format_to(o, "  \"ttft_slo_ms\": {:.3f},\n  \"slo_met\": {},\n",
                 s.ttft_slo_ms, s.slo_met);
  fmt::format_to(o, "  \"links\": [\n");
  for (std::size_t i = 0; i < s.links.size(); ++i) {
    auto& l = s.links[i];
    fmt::format_to(o,
                   "    {{\"name\": {}, \"gbyte_per_s\": {:.3f}, "
                   "\"bytes\": {:.0f}, \"busy_fraction\": {:.6f}}}{}\n",
                   json_string(l.name), l.capacity_gbyte_per_s, l.bytes,
                   l.busy_fraction, i + 1 < s.links.size() ? "," : "");
  }
  fmt::format_to(o, "  ],\n  \"pools\": [\n");
  for (std::size_t i = 0; i < s.pools.size(); ++i) {
    auto& p = s.pools[i];
    fmt::format_to(o,
                   "    {{\"worker\": {}, \"blocks\": {}, \"peak_blocks\": "
                   "{}, \"mean_fraction\": {:.6f}, \"waited\": {}}}{}\n",
                   json_string(p.worker), p.capacity_blocks, p.peak_blocks,
                   p.mean_fraction, p.waited,
                   i + 1 < s.pools.size() ? "," : "");
  }
  fmt::format_to(o, "  ]\n}}\n");
  return out;
}

} // namespace kvferry::sim
