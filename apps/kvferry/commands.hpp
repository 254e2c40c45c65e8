// The subcommands of `kvferry`. Each add_* function registers one subcommand
// (its options and what it runs) on the CLI; a command reports its exit status
// through `exit_code`. One source file per command keeps them independent.
#pragma once

#include <CLI/CLI.hpp>

namespace kvferry::app {

void add_info(CLI::App& root, int& exit_code);
void add_netcheck(CLI::App& root, int& exit_code);
void add_bench_net(CLI::App& bench, int& exit_code);
void add_bench_ipc(CLI::App& bench, int& exit_code);
void add_bench_plan(CLI::App& bench, int& exit_code);
void add_bench_endpoint(CLI::App& bench, int& exit_code); // issue #16
void add_bench_node(CLI::App& bench, int& exit_code);     // issue #15
void add_demo(CLI::App& root, int& exit_code);
void add_directory(CLI::App& root, int& exit_code);
void add_worker(CLI::App& root, int& exit_code);
void add_launch(CLI::App& root, int& exit_code); // also adds `status`
void add_pki(CLI::App& root, int& exit_code);
void add_sim(CLI::App& root, int& exit_code);
// `sim calibrate` and `sim compare` (sim_fidelity.cpp), under `sim`.
void add_sim_fidelity(CLI::App& sim, int& exit_code);

} // namespace kvferry::app
