// `kvferry sim calibrate` and `sim compare` (sim/calibrate.hpp) on
// measurements made by hand with known answers: each fit recovers the
// figures the inputs were made from, a bad input names its file (and line),
// and the comparison joins by index and reports the right errors.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "kvferry/sim/calibrate.hpp"
#include "scratch_dir.hpp"
#include "transfer_costs.hpp"

using namespace kvferry::sim;
using kvferry::test::scratch_dir;

namespace {

std::string write(const scratch_dir& dir, const char* name,
                  const std::string& text) {
  auto path = (dir.path / name).string();
  std::ofstream(path) << text;
  return path;
}

// bench net's JSON for a link of 10 us per message and 2 GB/s (time per
// message = 10 + size / 2000 us), 30 us round trips.
std::string bench_net_json() {
  std::string sizes;
  for (double size : {65536.0, 262144.0, 1048576.0}) {
    double us = 10 + size / 2000;
    sizes += std::string(sizes.empty() ? "" : ",") +
             "{\"size\": " + std::to_string(size) +
             ", \"host\": {\"gbps\": " + std::to_string(size / (us * 1e3)) +
             "}}";
  }
  return "{\"memories\": [\"host\"], \"sizes\": [" + sizes +
         "], \"rtt_8b\": {\"plugin_p50_us\": 30}}";
}

// A demo's requests.csv: transfers of 0.1 ms + 1 ms per MB (1 GB/s), 0.4 ms
// of control each, compute 0.01 ms per 100 tokens; and one request 20 times
// slower than the line, which the robust fit ignores.
std::string demo_csv() {
  std::string out =
      "index,line,arrival_ms,input_tokens,output_tokens,prefill_worker,"
      "decode_worker,path,status,queue_ms,prefill_ms,wait_ms,transfer_ms,"
      "decode_ms,ttft_ms,transfer_total_ms,e2e_ms,bytes_moved,bytes_saved,"
      "ready_ms,trace_input_tokens\n";
  for (int i = 0; i < 4; ++i) {
    double tokens = 100.0 * (i + 1), bytes = 1e6 * (i + 1);
    double compute = tokens / 1e4, transfer = 0.1 + bytes / 1e6;
    double ready = 0.2 + compute + transfer + 0.4;
    out += std::to_string(i) + "," + std::to_string(i + 1) + ",0," +
           std::to_string(int(tokens)) + ",1,prefill-0,decode-0,net,ok,0.2," +
           std::to_string(compute) + ",,,,," + std::to_string(transfer) + ",," +
           std::to_string(int(bytes)) + ",0," + std::to_string(ready) + "," +
           std::to_string(int(tokens)) + "\n";
  }
  out += "5,6,0,250,1,prefill-0,decode-0,net,ok,0.2,0.025,,,,,52,,2500000,0,"
         "52.625,250\n";
  // A failed request is left out of every fit.
  out += "4,5,0,100,1,prefill-0,decode-0,net,failed,0,,,,,,,,,,,100\n";
  return out;
}

} // namespace

TEST_CASE("calibrate: bench net gives latency, per-message cost and rate") {
  scratch_dir dir("kvferry-calibrate");
  calibration_inputs in;
  in.bench_net_json = write(dir, "net.json", bench_net_json());
  auto c = calibrate(in);
  REQUIRE(c.latency_us);
  CHECK(*c.latency_us == doctest::Approx(15));
  REQUIRE(c.message_us);
  CHECK(*c.message_us == doctest::Approx(10).epsilon(0.01));
  REQUIRE(c.nic_gbit_per_s);
  CHECK(*c.nic_gbit_per_s == doctest::Approx(16).epsilon(0.01));
  CHECK_FALSE(c.hop_us);
  CHECK(c.prefill_ms.empty());
  auto yaml = to_yaml(c);
  CHECK(yaml.find("sim:\n") != std::string::npos);
  CHECK(yaml.find("  message_us: 10") != std::string::npos);
  CHECK(yaml.find("hop_us") == std::string::npos);
}

TEST_CASE("calibrate: the demo's requests give the rate the actors see, "
          "the hop and a prefill table") {
  scratch_dir dir("kvferry-calibrate");
  calibration_inputs in;
  in.bench_net_json = write(dir, "net.json", bench_net_json());
  in.demo_csv = write(dir, "demo.csv", demo_csv());
  auto c = calibrate(in);
  // 1 GB/s, of which a 10 us message per 4 MiB chunk is the simulator's
  // message_us: the link's rate is the rest.
  CHECK(*c.nic_gbit_per_s == doctest::Approx(8 / (1 - 10 / 4194.304)));
  CHECK(*c.latency_us == doctest::Approx(100 - 10)); // less one message
  // 0.4 ms of control after 0.2 ms at the router (its wait to send is not
  // a hop: the simulator queues requests itself) with 0.01-0.04 ms of
  // prefill: the simulator charges four hops less the prefill (its grant
  // wait); the median latency (the third request's, P = 0.03 ms) is met
  // at (0.4 + 0.03) / 4.
  CHECK(*c.hop_us == doctest::Approx(107.5));
  // Nothing was in flight when a request came: the router's own wait.
  CHECK(*c.router_us == doctest::Approx(200));
  // Four transfers on the line, one 20 times slower (a fifth of the
  // weight: the ratios weigh their fitted times, 1.1-4.1 ms and its 2.6):
  // the body's quantiles, the minimum and the median on the line, q90 the
  // slow one; beyond p 0.9 a log-normal through the median and q90.
  auto& t = c.transfer_spread_quantiles;
  REQUIRE(t.size() == 18);
  auto at = [&](double p) {
    for (auto& q : t)
      if (q.p == p)
        return q.factor;
    FAIL("no point at p ", p);
    return 0.0;
  };
  CHECK(at(0) == doctest::Approx(1));
  CHECK(at(0.5) == doctest::Approx(1));
  CHECK(at(0.9) == doctest::Approx(20));
  double sigma = std::log(20) / 1.2815516;
  CHECK(at(0.99) ==
        doctest::Approx(20 * std::exp(sigma * (2.3263479 - 1.2815516))));
  CHECK(t.back().p == 0.999);
  for (std::size_t i = 1; i < t.size(); ++i) {
    CHECK(t[i].p > t[i - 1].p);
    CHECK(t[i].factor >= t[i - 1].factor);
  }
  CHECK(to_yaml(c).find("  transfer_spread_quantiles: [[0, 1], [0.01, 1], ") !=
        std::string::npos);
  REQUIRE(c.prefill_ms.size() == 2);
  CHECK(c.prefill_ms[0].x == 100);
  CHECK(c.prefill_ms[0].ms == doctest::Approx(0.01));
  CHECK(c.prefill_ms[1].x == 400);
  CHECK(c.prefill_ms[1].ms == doctest::Approx(0.04));
  CHECK(to_yaml(c).find("  prefill_ms: [[100, 0.01], [400, 0.04]]") !=
        std::string::npos);
}

namespace {

// 200 transfers of 1-4 MB on the line of demo_csv() (0.1 ms + 1 ms per
// MB), each within 5 % of it, but every 20th three times as long: a narrow
// body and a tail of its own (as on the H100: 128-MiB copies at 0.89-1.13
// of the line, a few percent held up 2-4 times as long).
std::string demo_csv_with_slow_tail() {
  std::string out =
      "index,line,arrival_ms,input_tokens,output_tokens,prefill_worker,"
      "decode_worker,path,status,queue_ms,prefill_ms,wait_ms,transfer_ms,"
      "decode_ms,ttft_ms,transfer_total_ms,e2e_ms,bytes_moved,bytes_saved,"
      "ready_ms,trace_input_tokens\n";
  for (int i = 0; i < 200; ++i) {
    double bytes = 1e6 * (1 + i % 4);
    double ratio = i % 20 == 7 ? 3 : 1 + 0.01 * ((i * 7) % 11 - 5);
    double transfer = (0.1 + bytes / 1e6) * ratio;
    out += fmt::format("{},{},{},100,1,prefill-0,decode-0,net,ok,0.2,0.01,,,,"
                       ",{:.6f},,{:.0f},0,{:.6f},100\n",
                       i, i + 1, 10 * i, transfer, bytes, 1 + transfer);
  }
  return out;
}

} // namespace

TEST_CASE("calibrate: the spread's tail is fitted to the slowest tenth of "
          "the transfers, not extended from the body") {
  scratch_dir dir("kvferry-calibrate");
  calibration_inputs in;
  in.demo_csv = write(dir, "demo.csv", demo_csv_with_slow_tail());
  auto c = calibrate(in);
  auto& t = c.transfer_spread_quantiles;
  REQUIRE(t.size() == 18);
  auto at = [&](double p) {
    for (auto& q : t)
      if (q.p == p)
        return q.factor;
    FAIL("no point at p ", p);
    return 0.0;
  };
  // The body: within 5 % of the line. A log-normal through its median and
  // q90 (as up to session 13) would put q99 at ~1.07: the slow tenth's
  // trebled transfers would not be there at all.
  CHECK(at(0.5) == doctest::Approx(1).epsilon(0.02));
  CHECK(at(0.9) < 1.06);
  CHECK(at(0.99) > 2);
  // What the fit holds: the run, simulated as the simulator draws (each
  // request's line time x its factor), has its slowest tenth as slow on
  // (geometric) average as measured (within 2 %: the calibration's line is
  // fitted to the rows, within 1 % of the one they were made from).
  kvferry::topology::sim_spec sim;
  sim.transfer_spread_quantiles = t;
  std::vector<double> measured, simulated;
  for (int i = 0; i < 200; ++i) {
    double line = 0.1 + (1 + i % 4);
    measured.push_back(line *
                       (i % 20 == 7 ? 3 : 1 + 0.01 * ((i * 7) % 11 - 5)));
    simulated.push_back(line * transfer_factor(sim, std::uint64_t(i)));
  }
  auto slowest_tenth = [](std::vector<double> v) { // geometric mean
    std::sort(v.begin(), v.end());
    double sum = 0;
    for (std::size_t k = 180; k < 200; ++k)
      sum += std::log(v[k]);
    return std::exp(sum / 20);
  };
  CHECK(slowest_tenth(simulated) ==
        doctest::Approx(slowest_tenth(measured)).epsilon(0.02));
  CHECK(to_yaml(c).find("slowest tenth of transfers, simulated, is as slow "
                        "as measured") != std::string::npos);
}

TEST_CASE("calibrate: the router's own wait leaves out requests that may "
          "have found its window full; --skip-ms leaves out the cold start") {
  scratch_dir dir("kvferry-calibrate");
  // (arrival, queue, ready) ms; 0.5 ms transfers of 1 or 2 MB.
  struct row {
    double arrival, queue, ready;
  };
  std::vector<row> rows = {{0, 0.3, 5}, {0.1, 0.3, 5}, {0.2, 0.3, 5},
                           {1, 4.5, 9}, {20, 0.2, 3},  {30, 0.2, 3},
                           {40, 0.2, 3}};
  std::string csv = "index,arrival_ms,path,status,queue_ms,prefill_ms,"
                    "transfer_total_ms,bytes_moved,ready_ms,input_tokens\n";
  for (std::size_t i = 0; i < rows.size(); ++i)
    csv += std::to_string(i) + "," + std::to_string(rows[i].arrival) +
           ",net,ok," + std::to_string(rows[i].queue) + ",0.1,0.5," +
           (i % 2 ? "2000000" : "1000000") + "," +
           std::to_string(rows[i].ready) + ",100\n";
  calibration_inputs in;
  in.demo_csv = write(dir, "demo.csv", csv);
  // The fourth came with three in flight, the most ever: its 4.5 ms may be
  // a full window (queueing, which the simulator models itself).
  auto c = calibrate(in);
  CHECK(*c.router_us == doctest::Approx(250)); // 0.3, 0.3, 0.3, 0.2, 0.2, 0.2
  in.skip_ms = 10;
  c = calibrate(in);
  CHECK(*c.router_us == doctest::Approx(200));
  CHECK(*c.hop_us > 0);
  in.skip_ms = 35;
  CHECK_THROWS_WITH(calibrate(in),
                    doctest::Contains("fewer than two completed requests "
                                      "from 35 ms on"));
}

TEST_CASE("calibrate: bench ipc gives the copy rate and the per-block cost") {
  scratch_dir dir("kvferry-calibrate");
  calibration_inputs in;
  in.bench_ipc_json = write(
      dir, "ipc.json",
      "{\"sizes\": [{\"block_bytes\": 4096, \"blocks\": 1000, \"kvferry\": "
      "{\"gbps\": 500}, \"kvferry_with_plan\": {\"prepare_host_seconds\": "
      "0.004}}, {\"block_bytes\": 65536, \"blocks\": 100, \"kvferry\": "
      "{\"gbps\": 1300}, \"kvferry_with_plan\": {\"prepare_host_seconds\": "
      "0.0002}}]}");
  auto c = calibrate(in);
  CHECK(*c.ipc_gbyte_per_s == doctest::Approx(1300));
  CHECK(*c.block_us == doctest::Approx(3)); // median of 4 and 2 us
}

TEST_CASE("calibrate: the demo's CUDA IPC requests give the copy rate and "
          "its fixed cost") {
  scratch_dir dir("kvferry-calibrate");
  calibration_inputs in;
  auto csv = demo_csv(); // its network requests, made same-host
  for (auto at = csv.find(",net,"); at != std::string::npos;
       at = csv.find(",net,", at))
    csv.replace(at, 5, ",ipc,");
  in.demo_csv = write(dir, "demo.csv", csv);
  auto c = calibrate(in);
  REQUIRE(c.ipc_gbyte_per_s);
  CHECK(*c.ipc_gbyte_per_s == doctest::Approx(1)); // 1 ms per MB
  REQUIRE(c.ipc_setup_us);
  CHECK(*c.ipc_setup_us == doctest::Approx(100)); // the line's 0.1 ms
  CHECK_FALSE(c.nic_gbit_per_s);
  CHECK(to_yaml(c).find("  ipc_setup_us: 100\n") != std::string::npos);
}

TEST_CASE("calibrate: a bad input names its file, and line for the CSV") {
  scratch_dir dir("kvferry-calibrate");
  calibration_inputs in;
  in.bench_net_json = write(dir, "net.json", "{\"sizes\": [");
  CHECK_THROWS_WITH_AS(calibrate(in), doctest::Contains("net.json: not JSON"),
                       std::runtime_error);
  in.bench_net_json.clear();
  auto csv = demo_csv();
  csv.replace(csv.find(",0.2,0.010000,"), 14, ",0.2,x,");
  in.demo_csv = write(dir, "demo.csv", csv);
  CHECK_THROWS_WITH_AS(calibrate(in),
                       doctest::Contains("demo.csv:2: column prefill_ms: 'x'"),
                       std::runtime_error);
}

TEST_CASE("compare: joins by index, and reports the quantiles' and the "
          "requests' own errors") {
  scratch_dir dir("kvferry-calibrate");
  auto demo = write(dir, "demo.csv", demo_csv());
  // The simulator's rows, in another order, one more and one missing:
  // transfers 10 % long, latency (ttft - decode) 20 % short.
  std::string sim = "index,status,transfer_total_ms,ttft_ms,decode_ms\n";
  for (int i : {3, 1, 0, 7}) {
    double transfer = 0.1 + (i + 1);
    double ready = 0.2 + (i + 1) / 100.0 + transfer + 0.4;
    sim += std::to_string(i) + ",ok," + std::to_string(transfer * 1.1) + "," +
           std::to_string(ready * 0.8 + 1) + ",1\n";
  }
  auto c = compare(demo, write(dir, "sim.csv", sim));
  CHECK(c.demo_rows == 6);
  CHECK(c.sim_rows == 4);
  CHECK(c.matched == 3);
  CHECK(c.transfer.error_p50 == doctest::Approx(0.1).epsilon(1e-4));
  CHECK(c.transfer.per_request_p99 == doctest::Approx(0.1).epsilon(1e-4));
  CHECK(c.latency.error_p50 == doctest::Approx(-0.2).epsilon(1e-4));
  CHECK(c.latency.per_request_p50 == doctest::Approx(0.2).epsilon(1e-4));
  auto table = format_comparison(c);
  CHECK(table.find("transfer time (ms)") != std::string::npos);
  CHECK(to_json(c).find("\"matched\": 3") != std::string::npos);
  // The reply hop is added to every simulated latency.
  auto shifted = compare(demo, dir.path.string() + "/sim.csv", 0.5);
  CHECK(shifted.latency.predicted_p50 ==
        doctest::Approx(c.latency.predicted_p50 + 0.5));
}

TEST_CASE("the targets of issue #17: met within their limits, one table for "
          "the calibrated and the held-out run") {
  comparison fitted, held_out;
  fitted.transfer.measured_p50 = 1.0;
  fitted.transfer.predicted_p50 = 0.91;
  fitted.transfer.error_p50 = -0.09; // within 10 %
  fitted.transfer.error_p99 = 0.25;  // not within 20 %
  fitted.latency.error_p50 = 0.10;   // just within 10 %
  held_out.transfer.error_p50 = -0.72;
  held_out.transfer.error_p99 = -0.2;
  held_out.latency.error_p50 = 0.3;
  REQUIRE(fidelity_targets.size() == 3);
  std::vector<bool> met;
  for (auto* c : {&fitted, &held_out})
    for (auto& t : fidelity_targets)
      met.push_back(meets(*c, t));
  CHECK(met == std::vector<bool>{true, false, true, false, true, false});
  auto table = format_targets({{"calibrated", fitted}, {"held out", held_out}});
  // A header and one line per target and run, in that order.
  std::vector<std::string> lines;
  std::istringstream in(table);
  for (std::string line; std::getline(in, line);)
    lines.push_back(line);
  REQUIRE(lines.size() >= 7);
  CHECK(lines[0].find("met?") != std::string::npos);
  CHECK(lines[1].find("transfer time p50") == 0);
  CHECK(lines[1].find("calibrated") != std::string::npos);
  CHECK(lines[1].find("1.000") != std::string::npos);
  CHECK(lines[1].find("0.910") != std::string::npos);
  CHECK(lines[1].find("-9.0%") != std::string::npos);
  CHECK(lines[1].find("yes") != std::string::npos);
  CHECK(lines[2].find("+25.0%") != std::string::npos);
  CHECK(lines[2].find("NO") != std::string::npos);
  CHECK(lines[4].find("held out") != std::string::npos);
  CHECK(lines[4].find("NO") != std::string::npos);
  // The JSON keeps the held-out run's figures apart.
  auto json = to_json(fitted, &held_out);
  CHECK(json.find("\"held_out\": {\"demo_rows\"") != std::string::npos);
  CHECK(json.back() == '\n');
}

TEST_CASE("compare: the demo's cold start (its first MS ms) left out") {
  scratch_dir dir("kvferry-calibrate");
  // demo_csv()'s four requests, arriving at 0, 10, 20 and 30 ms.
  std::istringstream in(demo_csv());
  std::string csv, line;
  for (int row = -1; std::getline(in, line); ++row) {
    if (row >= 0) {
      auto second = line.find(',', line.find(',') + 1);
      line.replace(second + 1, 1, std::to_string(10 * row));
    }
    csv += line + "\n";
  }
  auto demo = write(dir, "demo.csv", csv);
  auto sim = write(dir, "sim.csv",
                   "index,status,transfer_total_ms,ttft_ms,decode_ms\n"
                   "0,ok,1,2,0\n1,ok,1,2,0\n2,ok,1,2,0\n3,ok,1,2,0\n");
  CHECK(compare(demo, sim).matched == 4);
  auto warm = compare(demo, sim, 0, 15); // not those at 0 and 10 ms
  CHECK(warm.matched == 2);
  CHECK(warm.skipped == 2);
  CHECK(format_comparison(warm).find("not the 2 that arrived in the demo's "
                                     "first 15 ms") != std::string::npos);
  CHECK(to_json(warm).find("\"skipped\": 2") != std::string::npos);
}

TEST_CASE("compare: no request in both is an error naming both files") {
  scratch_dir dir("kvferry-calibrate");
  auto demo = write(dir, "demo.csv", demo_csv());
  auto sim = write(dir, "sim.csv",
                   "index,status,transfer_total_ms,ttft_ms,decode_ms\n"
                   "9,ok,1,2,0\n");
  CHECK_THROWS_WITH_AS(compare(demo, sim),
                       doctest::Contains("not the same trace"),
                       std::runtime_error);
}
