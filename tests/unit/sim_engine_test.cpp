// The simulator's models, each checked against figures worked out by hand on
// a topology small enough to do so: the TTFT parts of one request, layer-wise
// overlap, max-min sharing of a decode host's NIC (incast), KV pool admission
// and rejection, decode-side prefix reuse and prefix-aware routing; and the
// topology's sim: section with its file:line errors.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include <doctest/doctest.h>

#include "kvferry/sim/sim.hpp"
#include "scratch_dir.hpp"

namespace sim = kvferry::sim;
namespace topo = kvferry::topology;
using kvferry::test::scratch_dir;

namespace {

// One layer of one 128-wide KV head in fp16, 16-token blocks: 8 KiB per
// layer-block, so 1600 tokens = 100 blocks = 819,200 bytes. NICs of
// 8 Gbit/s = 1 byte/ns; no per-message or per-block cost; prefill 0.1 ms
// per token; a decode step 5 ms per request in the batch. (Control sockets
// on each host's address, as a file with several hosts needs.)
const std::string model = R"(
control: {bind: host}
model: {layers: 1, kv_heads: 1, head_dim: 128, dtype: fp16, block_tokens: 16}
)";
std::string sim_section(const std::string& extra = "") {
  return R"(
sim:
  nic_gbit_per_s: 8
  latency_us: 10
  message_us: 0
  block_us: 0
  hop_us: 50
  prefill_ms: [[1000, 100]]
  decode_step_ms: [[1, 5]]
)" + extra;
}

const std::string two_hosts = R"(
hosts: [{name: a, address: 10.0.0.1}, {name: b, address: 10.0.0.2}]
workers:
  - {name: p0, role: prefill, host: a, gpu: 0}
  - {name: d0, role: decode, host: b, gpu: 0, pool_blocks: 1000}
)";

topo::deployment parse(const std::string& yaml) {
  topo::load_options options;
  options.allow_missing_plugins = true;
  auto loaded = topo::parse(yaml, "t.yaml", options);
  INFO(loaded.report());
  REQUIRE(loaded.ok());
  return *loaded.topology;
}

struct run_result {
  sim::summary summary;
  std::string csv;
};

// One Mooncake line per request: {time ms, input tokens, output tokens,
// hash ids}.
struct req {
  double ms;
  int input, output;
  std::string hash_ids = "[]";
};

// Writes the trace and the outputs in `dir`. `faults` as --fault takes them.
run_result simulate_in(const scratch_dir& dir, const std::string& yaml,
                       const std::vector<req>& reqs,
                       const std::vector<std::string>& faults = {},
                       sim::engine_fn engine = sim::run) {
  auto trace = (dir.path / "t.jsonl").string();
  {
    std::ofstream out(trace);
    for (auto& r : reqs)
      out << "{\"timestamp\": " << r.ms << ", \"input_length\": " << r.input
          << ", \"output_length\": " << r.output
          << ", \"hash_ids\": " << r.hash_ids << "}\n";
  }
  auto topology = parse(yaml);
  sim::trace_reader reader(trace);
  sim::run_options options;
  options.out_dir = dir.path.string();
  for (auto& f : faults)
    options.faults.push_back(sim::parse_fault(f));
  run_result result{engine(reader, topology, options), {}};
  std::ifstream csv(dir.path / "requests.csv");
  result.csv.assign(std::istreambuf_iterator<char>(csv), {});
  return result;
}

run_result simulate(const std::string& yaml, const std::vector<req>& reqs,
                    const std::vector<std::string>& faults = {}) {
  scratch_dir dir("sim-engine");
  return simulate_in(dir, yaml, reqs, faults);
}

double ms(double ns) {
  return ns / 1e6;
}

} // namespace

TEST_CASE("one request: the TTFT parts as worked out by hand") {
  auto r = simulate(two_hosts + model + sim_section(), {{0, 1600, 1}});
  auto& t = r.summary.ttft;
  REQUIRE(r.summary.completed == 1);
  CHECK(ms(t.queue.mean()) == doctest::Approx(0.050));   // router hop
  CHECK(ms(t.prefill.mean()) == doctest::Approx(160.0)); // 1600 x 0.1 ms
  CHECK(ms(t.wait.mean()) == doctest::Approx(0.0)); // granted during prefill
  // After prefill: 10 us latency + 819,200 bytes at 1 byte/ns.
  CHECK(ms(t.transfer.mean()) == doctest::Approx(0.8292));
  CHECK(ms(t.decode.mean()) == doctest::Approx(5.0)); // one step, batch 1
  CHECK(ms(t.total.mean()) == doctest::Approx(0.050 + 160.0 + 0.8292 + 5.0));
  CHECK(r.summary.bytes_moved == 819200);
  CHECK(r.summary.net_transfers == 1);
  CHECK(r.csv.find("0,1,0.000,1600,1,p0,d0,net,ok,0.050,160.000,0.000,0.829,"
                   "5.000,165.879,0.829,165.879,819200,0") !=
        std::string::npos);
  // The links it crossed carried its bytes.
  for (auto& link : r.summary.links)
    if (link.name == "nic-out a" || link.name == "nic-in b")
      CHECK(link.bytes == doctest::Approx(819200));
}

TEST_CASE("the router's own delay and a transfer spread (calibrated from a "
          "demo run): both engines alike, the links carry the true bytes") {
  // Twice the median, no spread: the one request of the case above.
  auto twice = sim_section("  router_us: 300\n  transfer_spread_median: 2\n");
  for (auto engine :
       {sim::engine_fn(sim::run), sim::engine_fn(sim::run_actors)}) {
    scratch_dir dir("sim-engine");
    auto r =
        simulate_in(dir, two_hosts + model + twice, {{0, 1600, 1}}, {}, engine);
    REQUIRE(r.summary.completed == 1);
    CHECK(ms(r.summary.ttft.queue.mean()) == doctest::Approx(0.350));
    CHECK(ms(r.summary.ttft.transfer.mean()) == doctest::Approx(2 * 0.8292));
    for (auto& link : r.summary.links)
      if (link.name == "nic-out a" || link.name == "nic-in b")
        CHECK(link.bytes == doctest::Approx(819200));
  }
  // A log-normal spread of sigma 0.5 over 200 transfers of one size, apart
  // (no sharing): their times' quartiles at exp(+-0.674 x 0.5) of the
  // median, drawn alike in every run.
  std::vector<req> reqs;
  for (int i = 0; i < 200; ++i)
    reqs.push_back({i * 200.0, 1600, 1});
  auto spread = sim_section("  transfer_spread_sigma: 0.5\n");
  auto a = simulate(two_hosts + model + spread, reqs);
  auto b = simulate(two_hosts + model + spread, reqs);
  CHECK(a.csv == b.csv);
  auto& t = a.summary.transfer_time;
  auto q = [&](double p) { return double(t.quantile(p)); };
  CHECK(ms(q(0.5)) == doctest::Approx(0.8292).epsilon(0.1));
  CHECK(std::log(q(0.75) / q(0.25)) ==
        doctest::Approx(1.349 * 0.5).epsilon(0.2));
}

TEST_CASE("a measured spread as a quantile table: each request's factor "
          "interpolated at its quantile, both engines alike") {
  // Request 0 draws at frac(1 x 0.618...) = 0.618, between [0.5, 1] and
  // [0.9, 2]: a factor of 1.295 on the 0.8292 ms of the first case.
  auto table = sim_section("  transfer_spread_quantiles: [[0, 0.5], [0.5, 1], "
                           "[0.9, 2], [1, 4]]\n");
  double u = std::fmod(0.6180339887498949, 1.0);
  double factor = 1 + (u - 0.5) / 0.4;
  for (auto engine :
       {sim::engine_fn(sim::run), sim::engine_fn(sim::run_actors)}) {
    scratch_dir dir("sim-engine");
    auto r =
        simulate_in(dir, two_hosts + model + table, {{0, 1600, 1}}, {}, engine);
    REQUIRE(r.summary.completed == 1);
    CHECK(ms(r.summary.transfer_time.mean()) ==
          doctest::Approx(factor * 0.8292));
    for (auto& link : r.summary.links)
      if (link.name == "nic-out a" || link.name == "nic-in b")
        CHECK(link.bytes == doctest::Approx(819200));
  }
  // 400 transfers of one size, apart: their quantiles are the table's, in
  // every run alike.
  std::vector<req> reqs;
  for (int i = 0; i < 400; ++i)
    reqs.push_back({i * 200.0, 1600, 1});
  auto a = simulate(two_hosts + model + table, reqs);
  auto b = simulate(two_hosts + model + table, reqs);
  CHECK(a.csv == b.csv);
  auto& t = a.summary.transfer_time;
  auto q = [&](double p) { return ms(double(t.quantile(p))); };
  CHECK(q(0.25) == doctest::Approx(0.75 * 0.8292).epsilon(0.05));
  CHECK(q(0.5) == doctest::Approx(0.8292).epsilon(0.05));
  CHECK(q(0.7) == doctest::Approx(1.5 * 0.8292).epsilon(0.05));
  CHECK(q(0.95) == doctest::Approx(3 * 0.8292).epsilon(0.05));
}

TEST_CASE("layer-wise streaming hides the transfer under prefill") {
  auto yaml =
      two_hosts + model + "transfer: {layerwise: true}\n" + sim_section();
  auto r = simulate(yaml, {{0, 1600, 1}});
  auto& t = r.summary.ttft;
  // The bytes go as the layers are made (5 bytes/us < 1 byte/ns): the
  // last one lands with the end of prefill.
  CHECK(ms(t.transfer.mean()) < 0.001);
  CHECK(ms(t.total.mean()) == doctest::Approx(0.050 + 160.0 + 5.0));
  // The whole transfer took as long as the prefill it overlapped.
  CHECK(ms(r.summary.transfer_time.mean()) ==
        doctest::Approx(160.05 - 0.15).epsilon(0.0001));
}

TEST_CASE("incast: two prefill hosts sending to one decode host share its "
          "NIC fairly") {
  auto layout = [](bool one_decode_host) {
    return std::string(R"(
hosts: [{name: a, address: 10.0.0.1}, {name: b, address: 10.0.0.2},
        {name: c, address: 10.0.0.3}, {name: d, address: 10.0.0.4}]
workers:
  - {name: p0, role: prefill, host: a, gpu: 0}
  - {name: p1, role: prefill, host: b, gpu: 0}
  - {name: d0, role: decode, host: c, gpu: 0, pool_blocks: 1000}
)") + (one_decode_host
           ? "  - {name: d1, role: decode, host: c, gpu: 1, pool_blocks: "
             "1000}\n"
           : "  - {name: d1, role: decode, host: d, gpu: 0, pool_blocks: "
             "1000}\n");
  };
  std::vector<req> two_at_once = {{0, 1600, 1}, {0, 1600, 1}};
  auto shared = simulate(layout(true) + model + sim_section(), two_at_once);
  auto apart = simulate(layout(false) + model + sim_section(), two_at_once);
  // Apart: each at the full 1 byte/ns. Shared: half each, twice as long.
  CHECK(ms(apart.summary.ttft.transfer.mean()) == doctest::Approx(0.8292));
  CHECK(ms(shared.summary.ttft.transfer.mean()) ==
        doctest::Approx(0.010 + 2 * 0.8192));
  for (auto& link : shared.summary.links)
    if (link.name == "nic-in c")
      CHECK(link.bytes == doctest::Approx(2 * 819200));
}

TEST_CASE("max-min sharing: an uncapped flow takes what a capped one "
          "leaves") {
  // A streams layer by layer during its 1.6 s prefill, held to 5.12
  // bytes/us. B, on another prefill worker, ends its prefill at 160.05 ms
  // with 563 bytes still to send (it started 0.11 ms after its prefill):
  // they go at the link's rest, 1 - 0.00512 bytes/ns, in 0.6 us, not at
  // A's rate (0.11 ms).
  auto yaml = R"(
hosts: [{name: a, address: 10.0.0.1}, {name: b, address: 10.0.0.2}]
workers:
  - {name: p0, role: prefill, host: a, gpu: 0}
  - {name: p1, role: prefill, host: a, gpu: 1}
  - {name: d0, role: decode, host: b, gpu: 0, pool_blocks: 2000}
transfer: {layerwise: true}
)" + model + sim_section();
  auto r = simulate(yaml, {{0, 16000, 1}, {10, 1600, 1}});
  INFO(r.csv);
  CHECK(r.csv.find("1,2,10.000,1600,1,p1,d0,net,ok,0.050,160.000,0.000,0.001,"
                   "5.000,") != std::string::npos);
}

TEST_CASE("same host: CUDA IPC at its own rate, no NIC") {
  auto yaml = R"(
workers:
  - {name: p0, role: prefill, gpu: 0}
  - {name: d0, role: decode, gpu: 1, pool_blocks: 1000}
)" + model;
  auto ipc = sim_section("  ipc_gbyte_per_s: 100\n  ipc_setup_us: 0\n");
  auto r = simulate(yaml + ipc, {{0, 1600, 1}});
  CHECK(r.summary.ipc_transfers == 1);
  CHECK(r.summary.net_transfers == 0);
  // No latency; 819,200 bytes at 100 bytes/ns; ipc_setup_us is 0 here.
  CHECK(ms(r.summary.ttft.transfer.mean()) ==
        doctest::Approx(0.008192).epsilon(0.001));
  // A same-host copy pays its setup once, not message_us per chunk.
  auto costly = ipc;
  costly.replace(costly.find("ipc_setup_us: 0"), 15, "ipc_setup_us: 40");
  costly.replace(costly.find("message_us: 0"), 13, "message_us: 1000");
  r = simulate(yaml + costly, {{0, 1600, 1}});
  CHECK(ms(r.summary.ttft.transfer.mean()) ==
        doctest::Approx(0.048192).epsilon(0.001));
}

// Two prefill workers and one decode pool of 150 blocks: it holds one
// 100-block (1600-token) request at a time.
const std::string two_prefills_small_pool = R"(
hosts: [{name: a, address: 10.0.0.1}, {name: b, address: 10.0.0.2}]
workers:
  - {name: p0, role: prefill, host: a, gpu: 0}
  - {name: p1, role: prefill, host: a, gpu: 1}
  - {name: d0, role: decode, host: b, gpu: 0, pool_blocks: 150}
)";

TEST_CASE("a full decode pool makes admission wait; a request larger than "
          "the pool is rejected") {
  // A pool of 150 blocks holds one 100-block request at a time.
  auto yaml = two_prefills_small_pool + model + sim_section();
  // Both prefill at once (two prefill workers); the second's grant waits
  // for the first to finish its 10 output tokens (10 steps of 5 ms).
  auto r = simulate(yaml, {{0, 1600, 10}, {0, 1600, 10}, {0, 3200, 1}});
  CHECK(r.summary.completed == 2);
  CHECK(r.summary.rejected == 1);
  REQUIRE(r.summary.pools.size() == 1);
  CHECK(r.summary.pools[0].waited == 1);
  CHECK(r.summary.pools[0].peak_blocks == 100);
  // First: done at 0.05 + 160 + 0.8292 + 50 ms; the second's grant comes
  // one hop after that, so it waited 50.8292 + 0.05 ms past its prefill.
  CHECK(ms(r.summary.ttft.wait.max()) ==
        doctest::Approx(0.8292 + 50 + 0.05).epsilon(0.0001));
  CHECK(r.csv.find(",rejected,") != std::string::npos);
}

TEST_CASE("a pool that holds ten requests, forty at once, no decode time: "
          "both engines complete every request") {
  // issue #17: with the fidelity topology (no decode: `decode_step_ms:
  // [[1, 0]]`) the actors engine completed 27 of 1,000 requests. The decode
  // model said `decoded` as the last byte landed, before the producer's
  // `arrived` (a hop later) reached the consumer, which dropped it and
  // kept the blocks for good. A pool of 1,000 blocks holds ten 100-block
  // requests; forty come at once, each prefilled in 0.16 ms and moved in
  // 0.82 ms, so the transfers queue and later requests wait for blocks.
  auto yaml = two_hosts + model + sim_section();
  yaml.replace(yaml.find("[[1, 5]]"), 8, "[[1, 0]]");
  yaml.replace(yaml.find("[[1000, 100]]"), 13, "[[1000, 0.1]]");
  std::vector<req> reqs(40, {0, 1600, 0});
  for (auto engine : {sim::run, sim::run_actors}) {
    scratch_dir dir("sim-small-pool");
    auto r = simulate_in(dir, yaml, reqs, {}, engine);
    INFO(r.summary.engine);
    CHECK(r.summary.completed == 40);
    CHECK(r.summary.unfinished == 0);
    CHECK(sim::unfinished_error(r.summary).empty());
    CHECK(r.csv.find(",unfinished,") == std::string::npos);
    REQUIRE(r.summary.pools.size() == 1);
    CHECK(r.summary.pools[0].peak_blocks == 1000);
    CHECK(r.summary.pools[0].waited > 0);
  }
}

TEST_CASE("requests that never finished are counted and reported as an "
          "error") {
  sim::summary s;
  s.engine = "actors";
  s.trace = "t.jsonl";
  s.requests = 1000;
  s.completed = 27;
  s.unfinished = 973;
  CHECK(sim::format_table(s).find(", 973 unfinished (the run hung)") !=
        std::string::npos);
  CHECK(sim::to_json(s).find("\"unfinished\": 973,") != std::string::npos);
  auto e = sim::unfinished_error(s);
  CHECK(e.find("error: 973 of 1000 requests of t.jsonl never finished in the "
               "actors engine") == 0);
  s.unfinished = 0;
  CHECK(sim::unfinished_error(s).empty());
}

TEST_CASE("decode-side prefix reuse moves only the blocks the decode worker "
          "lacks") {
  // 1100 tokens: 69 blocks; its two 512-token hash blocks are 64 of them.
  std::vector<req> reqs = {{0, 1100, 1, "[7, 8]"},
                           {1000, 1100, 1, "[7, 8, 9]"}};
  auto on = simulate(two_hosts + model + sim_section(), reqs);
  CHECK(on.summary.bytes_saved == 64 * 8192);
  CHECK(on.summary.bytes_moved == (69 + 5) * 8192);
  auto off = simulate(
      two_hosts + model + sim_section("  prefix_reuse: false\n"), reqs);
  CHECK(off.summary.bytes_saved == 0);
  CHECK(off.summary.bytes_moved == 2 * 69 * 8192);
}

TEST_CASE("prefix-aware routing sends a request where its prefix is") {
  auto yaml = [](const char* routing) {
    return R"(
hosts: [{name: a, address: 10.0.0.1}, {name: b, address: 10.0.0.2}]
workers:
  - {name: p0, role: prefill, host: a, gpu: 0}
  - {name: d0, role: decode, host: b, gpu: 0, pool_blocks: 1000}
  - {name: d1, role: decode, host: b, gpu: 1, pool_blocks: 1000}
)" + model +
           sim_section(std::string("  routing: ") + routing + "\n");
  };
  // The first request is still decoding (1000 steps) when the second, with
  // the same prefix, arrives: least-loaded picks the idle d1, prefix-aware
  // the d0 that holds the prefix.
  std::vector<req> reqs = {{0, 1100, 1000, "[7, 8]"},
                           {1000, 1100, 1, "[7, 8]"}};
  auto least = simulate(yaml("least-loaded"), reqs);
  auto prefix = simulate(yaml("prefix-aware"), reqs);
  CHECK(least.summary.bytes_saved == 0);
  CHECK(least.csv.find(",p0,d1,") != std::string::npos);
  CHECK(prefix.summary.bytes_saved == 64 * 8192);
  CHECK(prefix.csv.find(",p0,d1,") == std::string::npos);
  auto rr = simulate(yaml("round-robin"), reqs);
  CHECK(rr.csv.find(",p0,d1,") != std::string::npos);
}

TEST_CASE("the same inputs give the same bytes") {
  std::vector<req> reqs;
  for (int i = 0; i < 200; ++i)
    reqs.push_back({i * 3.5, 100 + (i * 37) % 3000, 1 + i % 17,
                    "[" + std::to_string(i % 5) + "]"});
  auto yaml = two_hosts + model + "transfer: {layerwise: true}\n" +
              sim_section("  routing: prefix-aware\n");
  scratch_dir dir("sim-engine"); // the same trace path: it is in the report
  auto a = simulate_in(dir, yaml, reqs);
  auto b = simulate_in(dir, yaml, reqs);
  CHECK(a.summary.completed == 200);
  CHECK(a.csv == b.csv);
  CHECK(sim::to_json(a.summary) == sim::to_json(b.summary));
  CHECK(sim::format_table(a.summary) == sim::format_table(b.summary));
}

TEST_CASE("tables are piecewise linear, extended along the end segments") {
  std::vector<topo::sim_point> t = {{1, 10}, {11, 20}, {21, 40}};
  CHECK(sim::interpolate(t, 6) == doctest::Approx(15));
  CHECK(sim::interpolate(t, 16) == doctest::Approx(30));
  CHECK(sim::interpolate(t, 31) == doctest::Approx(60));
  CHECK(sim::interpolate(t, 0) == doctest::Approx(9));
  CHECK(sim::interpolate({{1, 10}, {2, 0}}, 5) == 0); // never below 0
  CHECK(sim::interpolate({{100, 10}}, 50) == doctest::Approx(5));
}

TEST_CASE("the topology's sim: section: defaults, values, errors at "
          "file:line") {
  auto base = R"(workers:
  - {name: p0, role: prefill}
  - {name: d0, role: decode}
)";
  auto plain = parse(base);
  CHECK(plain.sim.nic_gbit_per_s == 100);
  CHECK(plain.sim.routing == topo::sim_routing::round_robin);
  CHECK(plain.sim.prefix_reuse);
  CHECK(plain.sim.prefill_ms.size() == 6);

  auto set = parse(std::string(base) + R"(sim:
  nic_gbit_per_s: 400
  nics_per_host: 4
  routing: least-loaded
  prefix_reuse: off
  decode_step_ms: [[1, 2], [8, 3.5]]
)");
  CHECK(set.sim.nic_gbit_per_s == 400);
  CHECK(set.sim.nics_per_host == 4);
  CHECK(set.sim.routing == topo::sim_routing::least_loaded);
  CHECK_FALSE(set.sim.prefix_reuse);
  REQUIRE(set.sim.decode_step_ms.size() == 2);
  CHECK(set.sim.decode_step_ms[1].ms == 3.5);

  topo::load_options options;
  options.allow_missing_plugins = true;
  auto bad = topo::parse(std::string(base) + R"(sim:
  nic_gbit_per_sec: 400
  latency_us: -1
  routing: prefix
  prefill_ms: [[10, 1], [5, 2]]
  decode_step_ms: [[1, 2, 3]]
  transfer_spread_quantiles: [[0, 1], [0.5, 0.9]]
)",
                         "t.yaml", options);
  auto report = bad.report();
  INFO(report);
  CHECK_FALSE(bad.ok());
  CHECK(
      report.find("unknown key 'nic_gbit_per_sec' at t.yaml:5:3; did you mean "
                  "'nic_gbit_per_s'?") != std::string::npos);
  CHECK(report.find("sim.latency_us must be a number in [0, 10000000], got "
                    "'-1' at t.yaml:6:15") != std::string::npos);
  CHECK(report.find("sim.routing must be one of round-robin | least-loaded | "
                    "prefix-aware, got 'prefix' at t.yaml:7:12") !=
        std::string::npos);
  CHECK(report.find("sim.prefill_ms must be a list of [tokens, ms] pairs") !=
        std::string::npos);
  CHECK(report.find("tokens 5 does not increase at t.yaml:8:25") !=
        std::string::npos);
  CHECK(report.find("an entry is not a pair of numbers at t.yaml:9:20") !=
        std::string::npos);
  CHECK(report.find("sim.transfer_spread_quantiles must be a list of at "
                    "least two [p, factor] pairs") != std::string::npos);
  CHECK(report.find("factor 0.9 at p 0.5 decreases at t.yaml:10:39") !=
        std::string::npos);

  // The table is the whole spread: not with the log-normal's keys.
  auto both = topo::parse(std::string(base) + R"(sim:
  transfer_spread_sigma: 0.4
  transfer_spread_quantiles: [[0, 0.5], [1, 2]]
)",
                          "t.yaml", options);
  INFO(both.report());
  CHECK(both.report().find("sim.transfer_spread_sigma and "
                           "sim.transfer_spread_quantiles do not go together: "
                           "the quantile table is the whole spread at "
                           "t.yaml:5:26") != std::string::npos);
  auto table = parse(std::string(base) + R"(sim:
  transfer_spread_quantiles: [[0, 0.5], [0.5, 1], [1, 2]]
)");
  REQUIRE(table.sim.transfer_spread_quantiles.size() == 3);
  CHECK(table.sim.transfer_spread_quantiles[1].p == 0.5);
  CHECK(table.sim.transfer_spread_quantiles[2].factor == 2);
  CHECK(plain.sim.transfer_spread_quantiles.empty());
}

// ---- faults (docs/sim.md, "Faults") ----------------------------------------

const std::string two_decodes = R"(
hosts: [{name: a, address: 10.0.0.1}, {name: b, address: 10.0.0.2}]
workers:
  - {name: p0, role: prefill, host: a, gpu: 0}
  - {name: d0, role: decode, host: b, gpu: 0, pool_blocks: 1000}
  - {name: d1, role: decode, host: b, gpu: 1, pool_blocks: 1000}
)";

TEST_CASE("a decode worker dies: its request in flight fails, later ones "
          "go to the live one") {
  // Round-robin: the first to d0 (dies at 100 ms, during the prefill), the
  // second to d1; the third would be d0's turn but goes to d1.
  auto r = simulate(two_decodes + model + sim_section(),
                    {{0, 1600, 1}, {0, 1600, 1}, {200, 1600, 1}},
                    {"down=d0,at=0.1"});
  INFO(r.csv);
  CHECK(r.summary.completed == 2);
  CHECK(r.summary.failed == 1);
  REQUIRE(r.summary.faults.size() == 1);
  CHECK(r.summary.faults[0].fault == "down=d0,at=0.1");
  CHECK(r.summary.faults[0].failed == 1);
  CHECK(r.csv.find("0,1,0.000,1600,1,p0,d0,net,failed,") != std::string::npos);
  CHECK(r.csv.find(",d0,net,ok,") == std::string::npos);
  // The prefill GPU still finished the failed request's prefill (160.05
  // ms) before the second's: the second queued 160 ms.
  CHECK(r.csv.find("1,2,0.000,1600,1,p0,d1,net,ok,160.050,") !=
        std::string::npos);
  auto table = sim::format_table(r.summary);
  CHECK(table.find("1 failed") != std::string::npos);
}

TEST_CASE("a prefill worker dies: its requests fail and free their decode "
          "blocks for those waiting") {
  // A pool of 150 blocks holds one 100-block request. The first (p0) holds
  // it; the second (p1) waits for it. p0 dies at 50 ms: the first fails,
  // its blocks go to the second, which completes without waiting for the
  // first to decode.
  auto yaml = two_prefills_small_pool + model + sim_section();
  auto r = simulate(yaml, {{0, 1600, 10}, {0, 1600, 10}}, {"down=p0,at=0.05"});
  INFO(r.csv);
  CHECK(r.summary.completed == 1);
  CHECK(r.summary.failed == 1);
  CHECK(r.summary.pools[0].waited == 1);
  // Granted one hop after the failure at 50 ms, long before its prefill ends.
  CHECK(ms(r.summary.ttft.wait.max()) == 0);
  CHECK(r.csv.find(",p0,d0,net,failed,") != std::string::npos);
}

TEST_CASE("a prefill worker dies with requests queued: they leave the "
          "prefill queue's series") {
  // Three requests at 0 ms: one prefilling (160 ms), two queued, when p0
  // dies at 50 ms; a fourth at 300 ms finds no prefill worker.
  auto r = simulate(two_hosts + model + sim_section(),
                    {{0, 1600, 1}, {0, 1600, 1}, {0, 1600, 1}, {300, 1600, 1}},
                    {"down=p0,at=0.05"});
  CHECK(r.summary.failed == 4);
  CHECK(r.summary.unroutable == 1);
  auto& queue = r.summary.prefill_queue.values;
  REQUIRE_FALSE(queue.empty());
  CHECK(queue.front() > 0);
  CHECK(queue.back() == 0); // none waits after the worker died
}

TEST_CASE("every decode worker dead: later requests fail as unroutable") {
  auto r = simulate(two_hosts + model + sim_section(),
                    {{0, 1600, 1}, {500, 1600, 1}}, {"down=d0,at=0.2"});
  CHECK(r.summary.completed == 1);
  CHECK(r.summary.failed == 1);
  CHECK(r.summary.unroutable == 1);
  CHECK(r.summary.faults[0].failed == 0);
}

TEST_CASE("a link slows: the transfer crossing it takes longer, nothing "
          "fails") {
  // Host b's NIC at 4 Gbit/s (0.5 byte/ns) from the start: 819,200 bytes
  // after prefill in 1.6384 ms instead of 0.8192.
  auto r = simulate(two_hosts + model + sim_section(), {{0, 1600, 1}},
                    {"slow=b,gbit=4,at=0"});
  CHECK(r.summary.failed == 0);
  CHECK(ms(r.summary.ttft.transfer.mean()) == doctest::Approx(0.010 + 1.6384));
  // Half way through the transfer: the rest at half the rate.
  auto mid = simulate(two_hosts + model + sim_section(), {{0, 1600, 1}},
                      {"slow=b,gbit=4,at=0.1604696"});
  CHECK(ms(mid.summary.ttft.transfer.mean()) ==
        doctest::Approx(0.010 + 0.4096 + 0.8192).epsilon(0.0001));
}

TEST_CASE("the actors engine: a slowed link with many flows carries them at "
          "its new rate, CAF's clock holding no void flow ends") {
  // 100 requests of 160 tokens in 10 ms, 8 layers streamed: 800 flows of
  // 81,920 bytes, all on host b's NIC slowed to 0.8 Gbit/s (0.1 byte/ns):
  // each flow that starts or ends re-shares the link and gives every flow
  // on it a new projected end. As CAF timers, those ends (~600,000, most
  // of them void) stayed in CAF's clock until their time; the models'
  // own queue drops the void ones.
  auto yaml =
      two_hosts + model + "transfer: {layerwise: true}\n" + sim_section();
  yaml.replace(yaml.find("layers: 1,"), 10, "layers: 8,");
  yaml.replace(yaml.find("[[1000, 100]]"), 13, "[[1000, 1]]"); // 1 us/token
  // A 5 ms decode step at any batch size.
  yaml.replace(yaml.find("[[1, 5]]"), 8, "[[1, 5], [256, 5]]");
  yaml.replace(yaml.find("pool_blocks: 1000"), 17, "pool_blocks: 100000");
  std::vector<req> reqs;
  for (int i = 0; i < 100; ++i)
    reqs.push_back({0.1 * i, 160, 1});
  scratch_dir dir("sim-actors-slow");
  auto r =
      simulate_in(dir, yaml, reqs, {"slow=b,gbit=0.8,at=0"}, sim::run_actors);
  CHECK(r.summary.completed == 100);
  CHECK(r.summary.failed == 0);
  // The link is never idle once the first layer goes (~0.1 ms; requests
  // come faster than it drains them): 65,536,000 bytes at 0.1 byte/ns, the
  // last of them 655.36 ms after the first, then at most a running decode
  // step and the request's own (5 ms each).
  CHECK(r.summary.bytes_moved == 65536000);
  CHECK(r.summary.span_s * 1e3 >= 655.36 + 5);
  CHECK(r.summary.span_s * 1e3 <= 655.36 + 0.5 + 10);
  // What CAF's clock holds follows the requests in flight (their timeouts,
  // the hops), not the re-shares: under 10 entries per flow, where the
  // void ends were ~750 per flow. The models' queue, compacted whenever
  // it doubled (from 4,096 on), holds no more than twice that.
  CHECK(r.summary.peak_clock_entries < 8000);
  CHECK(r.summary.peak_model_events <= 2 * 4096);
}

TEST_CASE("--fault: what it takes and what it refuses") {
  auto f = sim::parse_fault("slow=host-1,gbit=25,at=12.5s");
  CHECK(f.what == sim::fault::kind::link_slow);
  CHECK(f.target == "host-1");
  CHECK(f.gbit_per_s == 25);
  CHECK(f.at_s == 12.5);
  CHECK(sim::parse_fault("down=decode-3,at=300").what ==
        sim::fault::kind::worker_down);
  CHECK_THROWS_WITH_AS(sim::parse_fault("down=d0"),
                       doctest::Contains("needs down=WORKER,at=SECONDS"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(sim::parse_fault("slow=b,at=1"),
                       doctest::Contains("needs gbit=RATE > 0"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(sim::parse_fault("down=d0,at=soon"),
                       doctest::Contains("at must be a number"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(sim::parse_fault("kill=d0,at=1"),
                       doctest::Contains("unknown key 'kill'"),
                       std::invalid_argument);
  // A name the topology lacks is an error naming the file.
  CHECK_THROWS_WITH_AS(simulate(two_hosts + model + sim_section(),
                                {{0, 1600, 1}}, {"down=d9,at=1"}),
                       doctest::Contains("t.yaml has no worker named 'd9'"),
                       std::runtime_error);
}

TEST_CASE("sim.faults in the topology: the same as --fault, merged with the "
          "flags, a bad entry named by file and line") {
  // The first fault test's fault, written in the file: the same outcome.
  auto yaml =
      two_decodes + model + sim_section("  faults:\n    - down=d0,at=0.1\n");
  auto r = simulate(yaml, {{0, 1600, 1}, {0, 1600, 1}, {200, 1600, 1}});
  CHECK(r.summary.completed == 2);
  REQUIRE(r.summary.faults.size() == 1);
  CHECK(r.summary.faults[0].fault == "down=d0,at=0.1");
  CHECK(r.summary.faults[0].failed == 1);
  auto flag = simulate(two_decodes + model + sim_section(),
                       {{0, 1600, 1}, {0, 1600, 1}, {200, 1600, 1}},
                       {"down=d0,at=0.1"});
  CHECK(r.csv == flag.csv);

  // The file's faults first, then the flags' (a quoted entry in a flow
  // list: unquoted, its commas would split it).
  auto both = simulate(two_hosts + model +
                           sim_section("  faults: ['slow=b,gbit=4,at=0']\n"),
                       {{0, 1600, 1}}, {"down=d0,at=5"});
  REQUIRE(both.summary.faults.size() == 2);
  CHECK(both.summary.faults[0].fault == "slow=b,gbit=4,at=0");
  CHECK(both.summary.faults[1].fault == "down=d0,at=5");
  CHECK(ms(both.summary.ttft.transfer.mean()) ==
        doctest::Approx(0.010 + 1.6384)); // the slow link, as with the flag

  // What the entry says is checked when the run starts, naming where it is.
  CHECK_THROWS_WITH_AS(
      simulate(
          two_hosts + model +
              sim_section("  faults:\n    - down=d0,at=1\n    - down=d0\n"),
          {{0, 1600, 1}}),
      doctest::Contains("t.yaml:20:7: sim.faults entry down=d0: needs "
                        "down=WORKER,at=SECONDS"),
      std::invalid_argument);
  CHECK_THROWS_WITH_AS(
      simulate(two_hosts + model +
                   sim_section("  faults:\n    - down=d9,at=1\n"),
               {{0, 1600, 1}}),
      doctest::Contains("t.yaml:19:7: sim.faults entry down=d9,at=1: t.yaml "
                        "has no worker named 'd9'"),
      std::runtime_error);
  // Its shape is the topology loader's.
  topo::load_options options;
  options.allow_missing_plugins = true;
  auto bad = topo::parse(two_hosts + model + sim_section("  faults: down=d0\n"),
                         "t.yaml", options);
  CHECK(bad.report().find("sim.faults must be a list of faults") !=
        std::string::npos);
  auto entry = topo::parse(two_hosts + model +
                               sim_section("  faults:\n    - {down: d0}\n"),
                           "t.yaml", options);
  CHECK(entry.report().find("sim.faults: an entry is not a string like "
                            "down=WORKER,at=SECONDS or "
                            "slow=HOST,gbit=RATE,at=SECONDS at t.yaml:19:7") !=
        std::string::npos);
}
