// Placeholder: replaced when this command lands.
#include <iostream>

#include "commands.hpp"

namespace kvferry::app {

void add_bench_net(CLI::App& bench, int& exit_code) {
  auto* cmd = bench.add_subcommand("net", "(not yet available)");
  cmd->allow_extras();
  cmd->callback([&exit_code] {
    std::cerr << "kvferry: 'net' is not available in this build yet\n";
    exit_code = 2;
  });
}

}  // namespace kvferry::app
