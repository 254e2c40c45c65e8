// The simulator against the real thing (docs/sim.md, "Fidelity"), on this
// machine over kvsock: a small trace replayed for real by `kvferry demo
// --trace`, the link model calibrated from `bench net --json` and that run
// (`sim calibrate`), the same requests simulated on the same topology, and
// the two compared request by request (`sim compare`). What is asserted is
// that the comparison runs and its figures are sane and bounded; how close
// they are is a benchmark (docs/benchmarks.md), not a timed test.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "run_kvferry.hpp"
#include "scratch_dir.hpp"

using kvferry::test::run_kvferry;
using kvferry::test::scratch_dir;
namespace fs = std::filesystem;

namespace {

constexpr int requests = 40;

// A Mooncake trace: one request every 20 ms, prompts of 40 to 1,100 tokens
// (those over the demo's cap of 1,024 are capped), varied outputs.
void write_trace(const fs::path& path) {
  std::ofstream out(path);
  for (int i = 0; i < requests; ++i)
    out << "{\"timestamp\": " << 20 * i
        << ", \"input_length\": " << 40 + (i * 337) % 1061
        << ", \"output_length\": " << 1 + i % 7 << ", \"hash_ids\": []}\n";
}

// The demo's geometry (small: 8 KiB layer-blocks, 2 MiB for the largest
// request) as the simulated topology's model, the workers on two "hosts"
// so that the simulator sends their bytes over its network model (it
// treats two workers of one host as CUDA IPC), then the calibrated sim:
// section; decode steps cost nothing (the demo does not decode).
const char* geometry =
    "--layers 4 --kv-heads 2 --head-dim 64 --block-tokens 16 --dtype fp16";

void write_topology(const fs::path& path, const std::string& calibrated) {
  std::ofstream out(path);
  out << "name: fidelity\n"
         "hosts:\n"
         "  - {name: p-host, address: 127.0.0.1}\n"
         "  - {name: d-host, address: 127.0.0.2}\n"
         "directory: {host: p-host}\n"
         "model: {layers: 4, kv_heads: 2, head_dim: 64, dtype: fp16, "
         "block_tokens: 16}\n"
         "workers:\n"
         "  - {name: prefill-0, role: prefill, host: p-host, gpu: none, "
         "pool_blocks: 4096}\n"
         "  - {name: decode-0, role: decode, host: d-host, gpu: none, "
         "pool_blocks: 4096}\n"
      << calibrated
      << "  decode_step_ms: [[1, 0]]\n"
         "  routing: round-robin\n";
}

void check_figure(const nlohmann::json& f, const char* what) {
  CAPTURE(what);
  CHECK(f["requests"].get<int>() == requests);
  for (auto key : {"demo_p50_ms", "sim_p50_ms", "demo_p99_ms", "sim_p99_ms"}) {
    CAPTURE(key);
    auto v = f[key].get<double>();
    CHECK(v > 0);
    CHECK(v < 10000); // a request of at most 2 MiB on loopback
  }
  for (auto key : {"error_p50", "error_p99", "per_request_error_p50",
                   "per_request_error_p99"}) {
    CAPTURE(key);
    auto v = f[key].get<double>();
    CHECK(std::isfinite(v));
    CHECK(std::abs(v) < 100); // sane, not close: closeness is a benchmark
  }
}

} // namespace

TEST_CASE("a trace slice through the demo and the simulator, calibrated "
          "here, compared request by request") {
  scratch_dir dir("kvferry-fidelity");
  auto p = [&](const char* name) { return (dir.path / name).string(); };
  write_trace(dir.path / "trace.jsonl");

  auto bench = run_kvferry("bench net --plugin kvsock --sizes 64K,256K,1M "
                           "--iters 40 --rtt-iters 100 --json " +
                               p("net.json"),
                           60);
  INFO(bench.output);
  REQUIRE(bench.status == 0);

  auto demo = run_kvferry("demo --gpu none --transport net --quiet "
                          "--trace " +
                              p("trace.jsonl") +
                              " --requests 40 "
                              "--max-blocks 64 --inflight 8 --out " +
                              p("demo") + " " + geometry,
                          90);
  INFO(demo.output);
  REQUIRE(demo.status == 0);
  CHECK(demo.output.find("every byte of 40 requests verified") !=
        std::string::npos);

  auto cal = run_kvferry("sim calibrate --bench-net " + p("net.json") +
                             " --demo-csv " + p("demo/requests.csv") +
                             " --out " + p("calibrated.yaml"),
                         30);
  INFO(cal.output);
  REQUIRE(cal.status == 0);
  std::ifstream in(p("calibrated.yaml"));
  std::string calibrated{std::istreambuf_iterator<char>(in), {}};
  // (message_us only when bench net's sizes fit a rising line: noise on
  // loopback may not; these always come.)
  for (auto key : {"nic_gbit_per_s:", "latency_us:", "hop_us:", "prefill_ms:"})
    CHECK(calibrated.find(key) != std::string::npos);
  write_topology(dir.path / "topology.yaml", calibrated);

  auto sim =
      run_kvferry("sim --trace " + p("demo/trace.jsonl") + " --topology " +
                      p("topology.yaml") + " --out " + p("sim"),
                  30);
  INFO(sim.output);
  REQUIRE(sim.status == 0);

  auto cmp =
      run_kvferry("sim compare --demo " + p("demo/requests.csv") + " --sim " +
                      p("sim/requests.csv") + " --topology " +
                      p("topology.yaml") + " --json " + p("compare.json"),
                  30);
  INFO(cmp.output);
  REQUIRE(cmp.status == 0);
  CHECK(cmp.output.find("transfer time (ms)") != std::string::npos);
  MESSAGE(cmp.output); // the figures, for the log
  std::ifstream json_in(p("compare.json"));
  auto figures = nlohmann::json::parse(json_in);
  CHECK(figures["matched"].get<int>() == requests);
  check_figure(figures["transfer"], "transfer");
  check_figure(figures["latency"], "latency");
}

TEST_CASE("demo --trace: a bad trace line fails naming file and line") {
  scratch_dir dir("kvferry-fidelity");
  auto trace = dir.path / "bad.jsonl";
  std::ofstream(trace) << "{\"timestamp\": 0, \"input_length\": 10, "
                          "\"output_length\": 1}\n{\"timestamp\": 5}\n";
  auto r = run_kvferry("demo --gpu none --trace " + trace.string(), 30);
  INFO(r.output);
  CHECK(r.status == 2);
  CHECK(r.output.find(trace.string() + ":2:") != std::string::npos);
}
