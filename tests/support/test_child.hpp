// A GPU test's second process (CUDA IPC cannot open a process's own
// handles): this executable again, running only one test case that the
// parent names, with extra environment. The child publishes what it serves
// and waits for a `stop` file in the folder the two share; it is killed if
// the parent dies or leaves early (child_guard).
#pragma once

#include <chrono>
#include <filesystem>
#include <fstream>
#include <signal.h>
#include <string>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include <doctest/doctest.h>

#include "eventually.hpp"

extern char** environ;

namespace kvferry::test {

/// Starts this executable running only the test cases matching
/// `case_filter` (with --no-skip: those cases are skipped otherwise), with
/// `env` added to this process's environment. The environment is built
/// before fork(): this process runs threads already.
inline pid_t start_test_child(const std::string& case_filter,
                              const std::vector<std::string>& env) {
  std::vector<std::string> all = env;
  for (char** e = environ; *e != nullptr; ++e)
    all.emplace_back(*e);
  std::vector<char*> envp;
  for (auto& e : all)
    envp.push_back(e.data());
  envp.push_back(nullptr);
  std::string name = "kvferry_test_child";
  std::string filter = "--test-case=" + case_filter;
  std::string no_skip = "--no-skip", no_version = "--no-version";
  char* argv[] = {name.data(), filter.data(), no_skip.data(), no_version.data(),
                  nullptr};
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL); // never outlives a failed test
    execve("/proc/self/exe", argv, envp.data());
    _exit(127);
  }
  return pid;
}

/// Kills the child if the test leaves early (a failed REQUIRE).
struct child_guard {
  pid_t pid;
  ~child_guard() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
};

/// Asks the child to stop (creates `dir/stop`) and waits at most 30 s;
/// its exit status, or -1 when it had to be killed.
inline int stop_test_child(pid_t pid, const std::filesystem::path& dir) {
  std::ofstream{dir / "stop"};
  int status = 0;
  if (!eventually([&] { return waitpid(pid, &status, WNOHANG) == pid; },
                  std::chrono::seconds(30))) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/// In the child: publish `port` for the parent (written whole, then renamed)
/// and wait until the parent asks it to stop (at most `limit`).
inline void serve_until_stopped(const std::filesystem::path& dir,
                                std::uint16_t port,
                                std::chrono::seconds limit) {
  {
    std::ofstream out{dir / "port.tmp"};
    out << port << "\n";
  }
  std::filesystem::rename(dir / "port.tmp", dir / "port");
  eventually([&] { return std::filesystem::exists(dir / "stop"); }, limit);
}

/// In the parent: the child's port, once it published it (0 after 60 s).
inline std::uint16_t child_port(const std::filesystem::path& dir) {
  std::uint16_t port = 0;
  if (eventually([&] { return std::filesystem::exists(dir / "port"); },
                 std::chrono::seconds(60)))
    std::ifstream{dir / "port"} >> port;
  return port;
}

} // namespace kvferry::test
