// The demo's child under its private MPS daemon (demo_private_mps.hpp).
#include "demo_private_mps.hpp"

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <sys/wait.h>

namespace kvferry::app {

bool rerun_under_private_daemon(bool router_in_decode,
                                const mps_choice& choice) {
  return router_in_decode && choice.start && choice.exit_code == 0;
}

bool under_parents_private_daemon() {
  const char* marker = std::getenv(demo_private_mps_variable);
  return marker != nullptr && std::string{marker} == "1";
}

spawn_spec private_daemon_child(std::vector<std::string> arguments,
                                const env_pairs& daemon_env) {
  spawn_spec spec;
  // This binary even when argv[0] is a bare name or the file was replaced.
  spec.program = "/proc/self/exe";
  spec.argv = std::move(arguments);
  spec.env = daemon_env;
  spec.env.emplace_back(demo_private_mps_variable, "1");
  return spec;
}

std::vector<std::string> own_arguments() {
  const char* path = "/proc/self/cmdline";
  std::ifstream in{path, std::ios::binary};
  std::string text{std::istreambuf_iterator<char>{in}, {}};
  if (!in.is_open() || text.empty())
    throw std::runtime_error(std::string{"cannot read "} + path);
  // NUL-terminated arguments, the last one too.
  std::vector<std::string> args;
  for (std::size_t begin = 0; begin < text.size();) {
    auto end = text.find('\0', begin);
    if (end == std::string::npos)
      end = text.size();
    args.push_back(text.substr(begin, end - begin));
    begin = end + 1;
  }
  return args;
}

int exit_code_of(int wait_status) {
  if (WIFEXITED(wait_status))
    return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status))
    return 128 + WTERMSIG(wait_status);
  return 1;
}

} // namespace kvferry::app
