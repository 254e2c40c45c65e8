// kvferry — one binary, one subcommand per job (see commands.hpp).
#include "commands.hpp"
#include "kvferry/runtime/version.hpp"
#include "stop_signals.hpp"

int main(int argc, char** argv) {
  kvferry::app::install_stop_signals(); // one rule for every command
  CLI::App app{"kvferry: moves KV cache between the GPUs of disaggregated "
               "LLM serving"};
  app.set_version_flag("--version", kvferry::version);
  app.require_subcommand(1);
  int exit_code = 0;
  kvferry::app::add_info(app, exit_code);
  kvferry::app::add_netcheck(app, exit_code);
  auto* bench = app.add_subcommand("bench", "Benchmarks (net, ipc, plan)");
  bench->require_subcommand(1);
  kvferry::app::add_bench_net(*bench, exit_code);
  kvferry::app::add_bench_ipc(*bench, exit_code);
  kvferry::app::add_bench_plan(*bench, exit_code);
  kvferry::app::add_bench_endpoint(*bench, exit_code);
  kvferry::app::add_bench_node(*bench, exit_code);
  kvferry::app::add_demo(app, exit_code);
  kvferry::app::add_directory(app, exit_code);
  kvferry::app::add_worker(app, exit_code);
  kvferry::app::add_launch(app, exit_code);
  kvferry::app::add_pki(app, exit_code);
  kvferry::app::add_sim(app, exit_code);
  CLI11_PARSE(app, argc, argv);
  return exit_code;
}
