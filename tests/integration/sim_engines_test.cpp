// The two engines of `kvferry sim` on the same inputs (docs/sim.md, "The two
// engines"): the first 200 requests of the Mooncake sample on
// configs/sim-2p2d.yaml through the model engine and through the real
// actors (`--engine actors`), compared request by request; the actors
// engine run twice writes the same bytes.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "kvferry/sim/calibrate.hpp"
#include "run_kvferry.hpp"
#include "scratch_dir.hpp"
#include "skip_case.hpp"
#include "slurp.hpp"

using kvferry::test::run_kvferry;
using kvferry::test::scratch_dir;
using kvferry::test::slurp;
namespace fs = std::filesystem;

namespace {

const std::string topology = KVFERRY_SOURCE_DIR "/configs/sim-2p2d.yaml";
const std::string sample =
    KVFERRY_SOURCE_DIR "/../shared/traces/mooncake_synthetic_trace.jsonl";

// True (and the case skipped, saying why) without ../shared/traces.
bool sample_missing() {
  if (fs::exists(sample))
    return false;
  kvferry::test::skip_case(sample + " is absent: clone the shared folder "
                                    "beside the repository");
  return true;
}

// The sample's first `n` lines.
std::string head(const scratch_dir& dir, std::size_t n) {
  std::ifstream in(sample);
  auto path = (dir.path / "trace.jsonl").string();
  std::ofstream out(path);
  std::string line;
  for (std::size_t i = 0; i < n && std::getline(in, line); ++i)
    out << line << '\n';
  return path;
}

std::string sim(const std::string& trace, const std::string& engine,
                const fs::path& out, const std::string& extra = "",
                const std::string& topo = topology) {
  auto r = run_kvferry("sim --engine " + engine + " --trace " + trace +
                           " --topology " + topo + " --out " + out.string() +
                           " " + extra,
                       150);
  INFO(r.output);
  REQUIRE(r.status == 0);
  return r.output;
}

// Per request, within the tolerance docs/sim.md ("The two engines") states
// and justifies: 1 % of the model engine's figure plus 0.1 ms, for the
// transfer time and the TTFT of every request completed in both.
void check_agreement(const fs::path& model, const fs::path& actors,
                     std::size_t completed) {
  auto c = kvferry::sim::compare_engines((model / "requests.csv").string(),
                                         (actors / "requests.csv").string());
  CHECK(c.rows.size() == completed);
  CHECK(c.actors_rows == c.model_rows);
  for (auto& r : c.rows) {
    CAPTURE(r.index);
    CHECK(std::abs(r.actors_transfer - r.model_transfer) <=
          0.01 * r.model_transfer + 0.1);
    CHECK(std::abs(r.actors_ttft - r.model_ttft) <= 0.01 * r.model_ttft + 0.1);
  }
}

// The line of the report naming a fault and how many it failed.
std::string fault_line(const std::string& output) {
  auto at = output.find("  down=");
  return at == std::string::npos
             ? ""
             : output.substr(at, output.find('\n', at) - at);
}

// Rows with status ok in a requests.csv.
std::size_t completed(const std::string& csv) {
  std::size_t n = 0;
  for (std::size_t at = 0; (at = csv.find(",ok,", at)) != std::string::npos;
       ++at)
    ++n;
  return n;
}

} // namespace

TEST_CASE("the model and the actors engine agree request by request") {
  if (sample_missing())
    return;
  scratch_dir dir("sim-engines");
  auto trace = head(dir, 200);
  sim(trace, "model", dir.path / "model");
  auto out = sim(trace, "actors", dir.path / "actors");
  CHECK(out.find("200 requests: 200 completed") != std::string::npos);
  CHECK(out.find("(actors engine)") != std::string::npos);
  CHECK(slurp(dir.path / "actors" / "summary.json")
            .find("\"engine\": \"actors\"") != std::string::npos);

  // Same inputs, same bytes.
  sim(trace, "actors", dir.path / "again");
  for (auto file : {"requests.csv", "summary.json", "summary.txt"}) {
    CAPTURE(file);
    CHECK(slurp(dir.path / "actors" / file) ==
          slurp(dir.path / "again" / file));
  }

  check_agreement(dir.path / "model", dir.path / "actors", 200);

  auto cmp = run_kvferry(
      "sim compare --sim " + (dir.path / "model" / "requests.csv").string() +
          " --actors " + (dir.path / "actors" / "requests.csv").string() +
          " --per-request",
      60);
  INFO(cmp.output);
  CHECK(cmp.status == 0);
  CHECK(cmp.output.find("compared      200 requests") != std::string::npos);
}

TEST_CASE("the two engines agree with a worker death: the same requests "
          "fail, the rest agree request by request") {
  if (sample_missing())
    return;
  scratch_dir dir("sim-engines-fault");
  auto trace = head(dir, 200);
  // decode-1 dies 30 s into the trace, with requests queued, prefilling,
  // moving and decoding for it.
  const std::string fault = "--fault down=decode-1,at=30";
  auto model = sim(trace, "model", dir.path / "model", fault);
  auto actors = sim(trace, "actors", dir.path / "actors", fault);
  INFO(model);
  INFO(actors);
  auto line = fault_line(model);
  REQUIRE(line.find("failed") != std::string::npos);
  CHECK(line.find(" 0 failed") == std::string::npos);
  CHECK(fault_line(actors) == line);
  // The same number completed, and every one of them in both: the same
  // requests failed.
  auto ok = completed(slurp(dir.path / "model" / "requests.csv"));
  CHECK(ok == completed(slurp(dir.path / "actors" / "requests.csv")));
  CHECK(ok < 200);
  check_agreement(dir.path / "model", dir.path / "actors", ok);
}

TEST_CASE("the two engines agree when decode pools run short: requests wait "
          "for blocks held by requests still decoding") {
  if (sample_missing())
    return;
  scratch_dir dir("sim-engines-pools");
  auto trace = head(dir, 200);
  // sim-2p2d.yaml with pools of 150,016 layer-blocks (4,688 blocks of all
  // 32 layers: a worker's pool holds whole blocks of every layer, so both
  // engines count the same): some requests wait, and one prompt (5,000+
  // blocks a layer) is larger than a whole pool.
  auto text = slurp(topology);
  for (auto at = text.find("700000"); at != std::string::npos;
       at = text.find("700000"))
    text.replace(at, 6, "150016");
  auto small = (dir.path / "small.yaml").string();
  std::ofstream(small) << text;
  auto model = sim(trace, "model", dir.path / "model", "", small);
  auto actors = sim(trace, "actors", dir.path / "actors", "", small);
  INFO(model);
  INFO(actors);
  // Both pools made requests wait: the model engine counts them, and the
  // real consumers (their stats) say so too, in the same table.
  for (auto* out : {&model, &actors}) {
    CHECK(out->find("decode pool                      blocks") !=
          std::string::npos);
    CHECK(out->find("  decode-1                       150016") !=
          std::string::npos);
    CHECK(out->find(" waited)") != std::string::npos);
    CHECK(out->find("(0 waited)") == std::string::npos);
  }
  const std::string counts = "200 requests: 199 completed, 1 rejected";
  CHECK(model.find(counts) != std::string::npos);
  CHECK(actors.find(counts) != std::string::npos);
  check_agreement(dir.path / "model", dir.path / "actors", 199);
}

TEST_CASE("--sweep through the actors engine: the model engine's table, "
          "run by the real actors") {
  if (sample_missing())
    return;
  scratch_dir dir("sim-engines-sweep");
  auto trace = head(dir, 200);
  auto sweep = [&](const std::string& engine) {
    sim(trace, engine, dir.path / engine, "--sweep decode=1,2");
    return slurp(dir.path / engine / "sweep.csv");
  };
  auto model = sweep("model");
  auto actors = sweep("actors");
  INFO(model);
  INFO(actors);
  CHECK(fs::exists(dir.path / "actors" / "sweep.txt"));
  // decode,completed,failed,TTFT p50,...: the same rows, the same counts,
  // the TTFT p50 within the tolerance of the per-request comparison.
  auto rows = [](const std::string& csv) {
    std::vector<std::vector<std::string>> out;
    std::istringstream lines(csv);
    for (std::string line; std::getline(lines, line);) {
      out.emplace_back();
      std::istringstream fields(line);
      for (std::string f; std::getline(fields, f, ',');)
        out.back().push_back(f);
    }
    return out;
  };
  auto m = rows(model), a = rows(actors);
  REQUIRE(m.size() == 3); // the header and decode=1, decode=2
  REQUIRE(a.size() == m.size());
  CHECK(a[0] == m[0]);
  for (std::size_t r = 1; r < m.size(); ++r) {
    CAPTURE(r);
    REQUIRE(a[r].size() == m[r].size());
    CHECK(a[r][0] == m[r][0]); // decode
    CHECK(a[r][1] == m[r][1]); // completed
    CHECK(a[r][2] == m[r][2]); // failed
    auto p50 = std::stod(m[r][3]);
    CHECK(std::abs(std::stod(a[r][3]) - p50) <= 0.01 * p50 + 0.1);
  }
}
