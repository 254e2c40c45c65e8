// `kvferry sim` as a user runs it: a small trace and the sample traces in
// ../shared/traces through configs/sim-4p4d.yaml, writing the report files;
// run twice, the outputs (plots included) are byte-identical; a bad trace
// line and a bad topology fail naming file and line; faults, sweeps, and a
// machine without gnuplot.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>

#include <doctest/doctest.h>

#include "run_kvferry.hpp"
#include "scratch_dir.hpp"
#include "skip_case.hpp"
#include "slurp.hpp"

using kvferry::test::run_kvferry;
using kvferry::test::scratch_dir;
using kvferry::test::slurp;
namespace fs = std::filesystem;

namespace {

const std::string topology = KVFERRY_SOURCE_DIR "/configs/sim-4p4d.yaml";

// Runs the trace twice into two folders; checks the files and that both
// runs wrote the same bytes; returns the first run's stdout.
std::string run_twice(const std::string& trace, const std::string& extra,
                      const scratch_dir& dir) {
  std::string first;
  for (const char* name : {"a", "b"}) {
    auto out = dir.path / name;
    auto r = run_kvferry("sim --trace " + trace + " --topology " + topology +
                             " --out " + out.string() + " " + extra,
                         120);
    INFO(r.output);
    REQUIRE(r.status == 0);
    if (first.empty())
      first = r.output;
    for (auto file : {"requests.csv", "summary.json", "summary.txt"})
      REQUIRE(fs::file_size(out / file) > 0);
  }
  for (auto file : {"requests.csv", "summary.json", "summary.txt", "plots.gp",
                    "timeline.dat", "ttft-cdf.dat"}) {
    CAPTURE(file);
    CHECK(slurp(dir.path / "a" / file) == slurp(dir.path / "b" / file));
  }
  if (first.find("plots skipped") != std::string::npos) {
    kvferry::test::skip_case("gnuplot is not installed "
                             "(scripts/setup-debian.sh): PNGs not compared");
    return first;
  }
  for (auto file :
       {"ttft-cdf.png", "transfer-cdf.png", "links.png", "queues.png"}) {
    CAPTURE(file);
    REQUIRE(fs::file_size(dir.path / "a" / file) > 1000);
    CHECK(slurp(dir.path / "a" / file) == slurp(dir.path / "b" / file));
  }
  return first;
}

// A small Mooncake trace of n requests, 20 ms apart.
std::string small_trace(const scratch_dir& dir, int n = 50) {
  auto trace = (dir.path / "small.jsonl").string();
  std::ofstream out(trace);
  for (int i = 0; i < n; ++i)
    out << "{\"timestamp\": " << i * 20
        << ", \"input_length\": " << 500 + 97 * i
        << ", \"output_length\": " << 1 + i % 9 << ", \"hash_ids\": [" << i % 3
        << ", " << 100 + i << "]}\n";
  return trace;
}

std::size_t lines(const std::string& text) {
  return std::size_t(std::count(text.begin(), text.end(), '\n'));
}

std::string shared_traces() {
  return KVFERRY_SOURCE_DIR "/../shared/traces";
}

} // namespace

TEST_CASE("kvferry sim on a small trace: table, CSV, JSON, deterministic") {
  scratch_dir dir("sim-cli");
  auto output = run_twice(small_trace(dir), "--ttft-slo 500", dir);
  CHECK(output.find("50 requests: 50 completed, 0 rejected") !=
        std::string::npos);
  CHECK(output.find("TTFT SLO 500.000 ms: met by") != std::string::npos);
  CHECK(output.find("nic-in d-host") != std::string::npos);
  auto csv = slurp(dir.path / "a" / "requests.csv");
  CHECK(lines(csv) == 51); // header + one row per request
  CHECK(csv.rfind("index,line,arrival_ms,", 0) == 0);
  auto json = slurp(dir.path / "a" / "summary.json");
  CHECK(json.find("\"requests\": 50,") != std::string::npos);
  CHECK(json.find("\"routing\": \"prefix-aware\"") != std::string::npos);
  // No terminal and no --progress: no progress line.
  CHECK(output.find("of the trace read") == std::string::npos);
}

TEST_CASE("kvferry sim on the sample traces (Mooncake and Azure)") {
  if (!fs::exists(shared_traces())) {
    kvferry::test::skip_case(shared_traces() +
                             " is absent: clone the shared folder beside "
                             "the repository");
    return;
  }
  scratch_dir mooncake("sim-cli");
  auto out = run_twice(shared_traces() + "/mooncake_synthetic_trace.jsonl",
                       "--progress", mooncake);
  CHECK(out.find("3993 requests: 3993 completed") != std::string::npos);
  CHECK(out.find("100.0 % of the trace read") != std::string::npos);
  CHECK(lines(slurp(mooncake.path / "a" / "requests.csv")) == 3994);
  // Mooncake's prefixes repeat: prefix-aware routing reuses some.
  CHECK(out.find("prefix reuse saved 0.000 GB") == std::string::npos);

  scratch_dir azure("sim-cli");
  out = run_twice(shared_traces() + "/AzureLLMInferenceTrace_code.csv", "",
                  azure);
  CHECK(out.find("8819 requests: 8819 completed") != std::string::npos);
}

TEST_CASE("kvferry sim: a bad trace line or topology key fails naming it") {
  scratch_dir dir("sim-cli");
  auto trace = (dir.path / "bad.jsonl").string();
  std::ofstream(trace) << "{\"timestamp\": 0, \"input_length\": 5, "
                          "\"output_length\": 1}\n{\"timestamp\": 1}\n";
  auto r = run_kvferry("sim --trace " + trace + " --topology " + topology, 60);
  CHECK(r.status == 1);
  CHECK(r.output.find("error: " + trace + ":2: a Mooncake line needs") !=
        std::string::npos);

  auto topo = (dir.path / "t.yaml").string();
  std::ofstream(topo) << "workers:\n  - {name: p0, role: prefill}\n  - "
                         "{name: d0, role: decode}\nsim: {routing: "
                         "random}\n";
  r = run_kvferry("sim --trace " + trace + " --topology " + topo, 60);
  CHECK(r.status == 1);
  CHECK(r.output.find("sim.routing must be one of") != std::string::npos);
  CHECK(r.output.find(topo + ":4:16") != std::string::npos);
}

TEST_CASE("kvferry sim without gnuplot: the run succeeds, the plots are "
          "skipped saying why") {
  scratch_dir dir("sim-cli");
  // A PATH holding only `timeout` (run_kvferry's deadline): no gnuplot.
  fs::create_directories(dir.path / "bin");
  for (auto where : {"/usr/bin/timeout", "/bin/timeout"})
    if (fs::exists(where)) {
      fs::create_symlink(where, dir.path / "bin" / "timeout");
      break;
    }
  auto out = dir.path / "out";
  auto r = run_kvferry("sim --trace " + small_trace(dir) + " --topology " +
                           topology + " --out " + out.string(),
                       60, "PATH=" + (dir.path / "bin").string());
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("plots skipped: gnuplot is not installed") !=
        std::string::npos);
  CHECK(fs::exists(out / "plots.gp"));
  CHECK(fs::exists(out / "summary.json"));
}

TEST_CASE("kvferry sim --fault: failed requests counted in every output") {
  scratch_dir dir("sim-cli");
  auto output = run_twice(small_trace(dir),
                          "--fault down=decode-1,at=0.3 --fault "
                          "slow=d-host,gbit=10,at=0.5",
                          dir);
  CHECK(output.find(" failed\n") != std::string::npos);
  CHECK(output.find("down=decode-1,at=0.3") != std::string::npos);
  auto csv = slurp(dir.path / "a" / "requests.csv");
  CHECK(csv.find(",decode-1,net,failed,") != std::string::npos);
  auto json = slurp(dir.path / "a" / "summary.json");
  CHECK(json.find("\"fault\": \"down=decode-1,at=0.3\", \"failed\": ") !=
        std::string::npos);
  CHECK(json.find("\"failed\": 0,") == std::string::npos);

  auto r = run_kvferry("sim --trace " + small_trace(dir) + " --topology " +
                           topology + " --fault down=decode-9,at=1",
                       60);
  CHECK(r.status == 1);
  CHECK(r.output.find("has no worker named 'decode-9'") != std::string::npos);
}

TEST_CASE("kvferry sim --sweep: one table, one plot, deterministic") {
  scratch_dir dir("sim-cli");
  auto trace = small_trace(dir);
  std::string first;
  for (const char* name : {"a", "b"}) {
    auto r = run_kvferry("sim --trace " + trace + " --topology " + topology +
                             " --out " + (dir.path / name).string() +
                             " --sweep prefill=1,6 --sweep layerwise=on,off "
                             "--ttft-slo 500",
                         120);
    INFO(r.output);
    REQUIRE(r.status == 0);
    if (first.empty())
      first = r.output;
  }
  CHECK(first.find("prefill       layerwise") != std::string::npos);
  auto csv = slurp(dir.path / "a" / "sweep.csv");
  CHECK(lines(csv) == 5); // header + 2 x 2 runs
  CHECK(csv.find("\n1,on,50,0,") != std::string::npos);
  CHECK(csv.find("\n6,off,50,0,") != std::string::npos);
  for (auto file : {"sweep.csv", "sweep.txt", "sweep.gp"})
    CHECK(slurp(dir.path / "a" / file) == slurp(dir.path / "b" / file));
  if (first.find("plots skipped") == std::string::npos)
    CHECK(slurp(dir.path / "a" / "sweep-ttft-cdf.png") ==
          slurp(dir.path / "b" / "sweep-ttft-cdf.png"));

  auto r = run_kvferry("sim --trace " + trace + " --topology " + topology +
                           " --sweep colour=red",
                       60);
  CHECK(r.status == 1);
  CHECK(r.output.find("--sweep colour=red: unknown key") != std::string::npos);
}
