// Placeholder: replaced when this command lands.
#include <iostream>

#include "commands.hpp"

namespace kvferry::app {

void add_directory(CLI::App& root, int& exit_code) {
  auto* cmd = root.add_subcommand("directory", "(not yet available)");
  cmd->allow_extras();
  cmd->callback([&exit_code] {
    std::cerr << "kvferry: 'directory' is not available in this build yet\n";
    exit_code = 2;
  });
}

}  // namespace kvferry::app
