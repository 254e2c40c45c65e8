// `kvferry sim calibrate` and `kvferry sim compare`: flags in, the
// simulator's fidelity library (sim/include/kvferry/sim/calibrate.hpp)
// called, the result out. What they fit and compare: docs/sim.md,
// "Calibration" and "Fidelity".
#include <fstream>
#include <iostream>
#include <memory>

#include "commands.hpp"
#include "kvferry/runtime/topology.hpp"
#include "kvferry/sim/calibrate.hpp"

namespace kvferry::app {

namespace {

struct calibrate_command {
  sim::calibration_inputs in;
  std::string out;
};

struct compare_command {
  std::string demo, held_out, sim, actors, topology, json;
  bool per_request = false;
  double skip_ms = 0;
};

int write_or_print(const std::string& path, const std::string& text) {
  if (path.empty()) {
    std::cout << text;
    return 0;
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out.flush()) {
    std::cerr << "error: cannot write " << path << "\n";
    return 1;
  }
  return 0;
}

int run_calibrate(const calibrate_command& cmd) {
  if (cmd.in.bench_net_json.empty() && cmd.in.bench_ipc_json.empty() &&
      cmd.in.demo_csv.empty()) {
    std::cerr << "error: give at least one of --bench-net, --bench-ipc, "
                 "--demo-csv\n";
    return 2;
  }
  try {
    auto yaml = sim::to_yaml(sim::calibrate(cmd.in));
    if (!cmd.out.empty())
      std::cout << yaml;
    return write_or_print(cmd.out, yaml);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}

// --actors: the model engine's run (--sim) against the actors engine's.
int run_compare_engines(const compare_command& cmd) {
  try {
    auto c = sim::compare_engines(cmd.sim, cmd.actors);
    std::cout << sim::format_comparison(c, cmd.per_request);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}

int run_compare(const compare_command& cmd) {
  if (cmd.demo.empty() == cmd.actors.empty()) {
    std::cerr << "error: give --demo (a demo run) or --actors (the actors "
                 "engine's run), not both\n";
    return 2;
  }
  if (!cmd.actors.empty())
    return run_compare_engines(cmd);
  double hop_ms = 0;
  if (!cmd.topology.empty()) {
    topology::load_options load;
    load.allow_missing_plugins = true;
    auto loaded = topology::load_file(cmd.topology, load);
    if (!loaded.ok()) {
      std::cerr << loaded.report();
      return 1;
    }
    hop_ms = loaded.topology->sim.hop_us / 1e3;
  }
  try {
    std::vector<std::pair<std::string, sim::comparison>> runs;
    runs.emplace_back(cmd.held_out.empty() ? "demo" : "calibrated",
                      sim::compare(cmd.demo, cmd.sim, hop_ms, cmd.skip_ms));
    std::cout << sim::format_comparison(runs.back().second);
    if (!cmd.held_out.empty()) {
      runs.emplace_back(
          "held out", sim::compare(cmd.held_out, cmd.sim, hop_ms, cmd.skip_ms));
      std::cout << "\nheld out (a demo run the calibration did not see):\n"
                << sim::format_comparison(runs.back().second);
    }
    std::cout << "\n" << sim::format_targets(runs);
    if (cmd.json.empty())
      return 0;
    return write_or_print(
        cmd.json,
        sim::to_json(runs.front().second,
                     runs.size() > 1 ? &runs.back().second : nullptr));
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}

} // namespace

void add_sim_fidelity(CLI::App& sim_command, int& exit_code) {
  auto cal = std::make_shared<calibrate_command>();
  auto* c = sim_command.add_subcommand(
      "calibrate", "Fit the simulator's link and control costs to "
                   "measurements; prints a sim: YAML fragment (docs/sim.md)");
  c->add_option("--bench-net", cal->in.bench_net_json,
                "`kvferry bench net --json` output");
  c->add_option("--bench-ipc", cal->in.bench_ipc_json,
                "`kvferry bench ipc --json` output");
  c->add_option("--demo-csv", cal->in.demo_csv,
                "requests.csv of `kvferry demo --trace FILE --out DIR`");
  c->add_option("--skip-ms", cal->in.skip_ms,
                "with --demo-csv: leave out the requests that arrived in the "
                "demo's first MS ms (its cold start, not modelled)");
  c->add_option("--out", cal->out, "also write the fragment to this file");
  c->callback([cal, &exit_code] { exit_code = run_calibrate(*cal); });

  auto cmp = std::make_shared<compare_command>();
  auto* p = sim_command.add_subcommand(
      "compare", "Compare a demo run (--demo) or the actors engine's run "
                 "(--actors) with a simulation of the same requests, request "
                 "by request (docs/sim.md)");
  p->add_option("--demo", cmp->demo, "the demo's requests.csv");
  p->add_option("--held-out", cmp->held_out,
                "with --demo: another demo run's requests.csv, of the same "
                "requests, that the calibration did not see: compared too");
  p->add_option("--actors", cmp->actors,
                "the requests.csv of `kvferry sim --engine actors`");
  p->add_option("--sim", cmp->sim,
                "the simulator's requests.csv (the model engine's)")
      ->required();
  p->add_flag("--per-request", cmp->per_request,
              "with --actors: one line per request (transfer time, TTFT)");
  p->add_option("--topology", cmp->topology,
                "the simulated topology: its hop_us is added to each "
                "simulated latency for the answer's hop to the router");
  p->add_option("--json", cmp->json, "also write the figures as JSON here");
  p->add_option("--skip-ms", cmp->skip_ms,
                "with --demo: leave out the requests that arrived in the "
                "demo's first MS ms (its cold start, not modelled)");
  p->callback([cmp, &exit_code] { exit_code = run_compare(*cmp); });
}

} // namespace kvferry::app
