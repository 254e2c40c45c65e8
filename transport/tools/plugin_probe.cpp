// kvferry-plugin-probe: the child of transport::probe_plugin. The loader
// starts it with posix_spawn instead of forking itself: a fork of a process
// that runs threads (CAF's scheduler, an embedder's serving stack) inherits
// locks those threads held (malloc's, the sanitizer allocator's, the dynamic
// loader's) and can block on them forever. A fresh program holds none.
//
//   kvferry-plugin-probe [--records-fd N] [--exe-dir DIR] [--] LABEL PATH
//
// Loads the plugin file PATH, calls init, devices and getProperties and
// writes one record per line to fd N (default: stdout; the loader passes 3
// and sends our stdout to its stderr). LABEL names the plugin in errors;
// DIR is the prober's executable directory, so that a failing dlopen names
// the directories the prober searched. Installed in
// <prefix>/libexec/kvferry/; docs/netcheck.md.
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <unistd.h>
#include <vector>

#include "../src/probe_child.hpp"

namespace {

int usage() {
  std::fprintf(stderr,
               "usage: %s [--records-fd N] [--exe-dir DIR] [--] "
               "LABEL PATH\n",
               kvferry::transport::detail::probe_helper_name);
  return 2;
}

} // namespace

int main(int argc, char** argv) {
  int fd = STDOUT_FILENO;
  kvferry::transport::plugin_search search;
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--records-fd" && has_value) {
      char* end = nullptr;
      errno = 0;
      long value = std::strtol(argv[++i], &end, 10);
      if (errno != 0 || *end != '\0' || value < 0 || value > 1 << 20)
        return usage();
      fd = static_cast<int>(value);
    } else if (arg == "--exe-dir" && has_value) {
      search.exe_dir = argv[++i];
    } else if (arg == "--") {
      args.insert(args.end(), argv + i + 1, argv + argc);
      break;
    } else {
      args.push_back(arg);
    }
  }
  if (args.size() != 2)
    return usage();
  kvferry::transport::detail::run_probe_child(fd, args[0], args[1], search);
}
