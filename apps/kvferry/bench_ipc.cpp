// Placeholder: replaced when this command lands.
#include <iostream>

#include "commands.hpp"

namespace kvferry::app {

void add_bench_ipc(CLI::App& bench, int& exit_code) {
  auto* cmd = bench.add_subcommand("ipc", "(not yet available)");
  cmd->allow_extras();
  cmd->callback([&exit_code] {
    std::cerr << "kvferry: 'ipc' is not available in this build yet\n";
    exit_code = 2;
  });
}

}  // namespace kvferry::app
