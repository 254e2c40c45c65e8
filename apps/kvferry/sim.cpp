// `kvferry sim`: flags in, the simulator library (sim/) called, the report
// out. Everything the simulation does lives in sim/; see docs/sim.md.
#include "kvferry/sim/sim.hpp"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <unistd.h>

#include "commands.hpp"
#include "kvferry/runtime/topology.hpp"

namespace kvferry::app {

namespace {

struct sim_command {
  std::string trace, topology, out_dir;
  std::string engine = "model"; // or "actors"
  std::vector<std::string> faults, sweeps;
  double ttft_slo_ms = 0;
  bool progress = false;
};

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out.flush())
    throw std::runtime_error("cannot write " + path);
}

// Exit status of a run whose requests all finished (completed, rejected or
// failed by a fault) and of one with some that never did: a hang, whose
// figures leave them out (docs/sim.md, "Outputs").
constexpr int all_finished = 0, some_unfinished = 3;

// --sweep: one table and one plot instead of one run's report.
int run_sweep(const sim_command& cmd, const topology::deployment& topology,
              const sim::run_options& options, bool progress) {
  std::vector<sim::sweep_axis> axes;
  for (auto& text : cmd.sweeps)
    axes.push_back(sim::parse_sweep(text));
  auto result = sim::run_sweep(
      cmd.trace, topology, axes, options,
      [progress](std::size_t i, std::size_t n, const std::string& label) {
        if (progress)
          std::fprintf(stderr, "sim: run %zu of %zu: %s\n", i + 1, n,
                       label.c_str());
      },
      cmd.engine == "actors" ? sim::run_actors : sim::run);
  std::cout << result.table;
  if (!cmd.out_dir.empty())
    std::cout << "\nwrote " << cmd.out_dir << "/sweep.txt, " << cmd.out_dir
              << "/sweep.csv\n"
              << result.plots << "\n";
  for (auto& e : result.errors)
    std::cerr << e << "\n";
  return result.errors.empty() ? all_finished : some_unfinished;
}

int run_sim(const sim_command& cmd) {
  // Plugins are not loaded in a simulation: a file written for other
  // machines (e.g. GPUDirect-TCPX) is fine here.
  topology::load_options load;
  load.allow_missing_plugins = true;
  auto loaded = topology::load_file(cmd.topology, load);
  if (!loaded.ok()) {
    std::cerr << loaded.report();
    return 1;
  }
  try {
    if (!cmd.out_dir.empty())
      std::filesystem::create_directories(cmd.out_dir);
    sim::run_options options;
    options.out_dir = cmd.out_dir;
    options.ttft_slo_ms = cmd.ttft_slo_ms;
    for (auto& text : cmd.faults)
      options.faults.push_back(sim::parse_fault(text));
    bool progress = cmd.progress || ::isatty(STDERR_FILENO);
    if (!cmd.sweeps.empty())
      return run_sweep(cmd, *loaded.topology, options, progress);
    sim::trace_reader trace(cmd.trace);
    if (progress)
      options.progress = [](double fraction, std::uint64_t done) {
        std::fprintf(stderr,
                     "\rsim: %5.1f %% of the trace read, %llu "
                     "requests done",
                     100 * fraction, static_cast<unsigned long long>(done));
        std::fflush(stderr);
      };
    auto summary = cmd.engine == "actors"
                       ? sim::run_actors(trace, *loaded.topology, options)
                       : sim::run(trace, *loaded.topology, options);
    if (progress)
      std::fprintf(stderr,
                   "\rsim: 100.0 %% of the trace read, %llu "
                   "requests done\n",
                   static_cast<unsigned long long>(summary.requests));
    auto table = sim::format_table(summary);
    std::cout << table;
    if (!cmd.out_dir.empty()) {
      write_file(cmd.out_dir + "/summary.json", sim::to_json(summary));
      write_file(cmd.out_dir + "/summary.txt", table);
      std::cout << "\nwrote " << cmd.out_dir << "/requests.csv, " << cmd.out_dir
                << "/summary.json, " << cmd.out_dir << "/summary.txt\n"
                << sim::write_plots(summary, cmd.out_dir) << "\n";
    }
    if (auto e = sim::unfinished_error(summary); !e.empty()) {
      std::cerr << e << "\n";
      return some_unfinished;
    }
    return all_finished;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}

} // namespace

void add_sim(CLI::App& root, int& exit_code) {
  auto cmd = std::make_shared<sim_command>();
  auto* sub = root.add_subcommand(
      "sim", "Replay a request trace against a topology in virtual time "
             "(docs/sim.md)");
  // Required unless a subcommand (calibrate, compare) runs: checked below.
  auto* trace =
      sub->add_option("--trace", cmd->trace,
                      "Mooncake JSONL or Azure CSV trace (format detected)");
  auto* topology = sub->add_option("--topology", cmd->topology,
                                   "topology YAML, with an optional sim: "
                                   "section (docs/topology.md, docs/sim.md)");
  sub->add_option("--out", cmd->out_dir,
                  "write requests.csv, summary.json, summary.txt and the plots "
                  "(PNG, with gnuplot) here");
  sub->add_option("--ttft-slo", cmd->ttft_slo_ms,
                  "report the share of requests with TTFT <= this many ms")
      ->check(CLI::PositiveNumber);
  sub->add_option("--fault", cmd->faults,
                  "down=WORKER,at=SECONDS: the worker dies then; "
                  "slow=HOST,gbit=RATE,at=SECONDS: the host's NICs run at "
                  "RATE Gbit/s from then (virtual time; repeatable)");
  sub->add_option("--sweep", cmd->sweeps,
                  std::string("KEY=V1,V2,...: run every combination and print "
                              "one comparison table (and with --out one "
                              "plot); KEY: ") +
                      sim::sweep_keys + " (repeatable)");
  sub->add_option("--engine", cmd->engine,
                  "model: the discrete-event engine (default); actors: "
                  "kvferry's real directory, router, producer and consumer "
                  "in virtual time, the same models behind them (slower; "
                  "docs/sim.md)")
      ->check(CLI::IsMember({"model", "actors"}));
  sub->add_flag("--progress", cmd->progress,
                "progress line on stderr even when it is not a terminal");
  add_sim_fidelity(*sub, exit_code);
  sub->callback([cmd, sub, trace, topology, &exit_code] {
    if (!sub->get_subcommands().empty())
      return; // calibrate or compare ran
    for (auto* option : {trace, topology})
      if (option->count() == 0)
        throw CLI::RequiredError(option->get_name());
    exit_code = run_sim(*cmd);
  });
}

} // namespace kvferry::app
