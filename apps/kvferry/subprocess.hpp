// A child process of a command, the one way they are started and stopped
// (launch's supervisor, the demo's directory and workers, the MPS control
// program): spawned in its own process group, so that a terminal's ^C
// reaches only the parent, which stops it in order, and a kill of the group
// reaches its own children too; sent SIGTERM should the parent die
// (PR_SET_PDEATHSIG); stopped with SIGTERM and, after a deadline, SIGKILL.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <sys/types.h>
#include <utility>
#include <vector>

namespace kvferry::app {

/// Environment variables as name/value pairs.
using env_pairs = std::vector<std::pair<std::string, std::string>>;

/// This process's environment as NAME=VALUE strings, with `overrides`
/// replacing (or adding) those names: what a child gets through execve.
std::vector<std::string> environment_with(const env_pairs& overrides);

/// "exited with status 3", "was killed by signal 9 (Killed)".
std::string describe_exit(int wait_status);

struct spawn_spec {
  std::string program;           // the file executed
  std::vector<std::string> argv; // argv[0] first
  env_pairs env;                 // added to this process's environment
  int stdin_fd = -1;             // each: a descriptor the child gets in its
  int stdout_fd = -1;            // place, -1 to share the parent's
  int stderr_fd = -1;
};

class subprocess {
public:
  subprocess() = default;
  /// Starts `spec`; throws std::runtime_error naming the program when fork
  /// fails. A program that cannot be executed writes why on its stderr and
  /// exits 127.
  explicit subprocess(const spawn_spec& spec);
  /// Stops it (stop(), five seconds' grace) when still running.
  ~subprocess();
  subprocess(subprocess&& other) noexcept;
  subprocess& operator=(subprocess&& other) noexcept;
  subprocess(const subprocess&) = delete;
  subprocess& operator=(const subprocess&) = delete;

  /// The pid, which is also its process group; -1 once reaped.
  pid_t pid() const { return pid_; }

  /// False once it has exited (then reaped: see exit_status).
  bool running();

  /// The wait status once it has been reaped.
  std::optional<int> exit_status() const { return status_; }

  /// Sends `sig` to its process group.
  void signal(int sig) const;

  /// Waits up to `timeout` for it to exit; true when it has.
  bool wait(std::chrono::milliseconds timeout);

  /// SIGKILL to its process group, then reaps it.
  void kill_now();

  /// SIGTERM to the group, up to `grace` to exit, then kill_now(). True when
  /// it had to be killed.
  bool stop(std::chrono::milliseconds grace);

private:
  void reaped(int status);
  pid_t pid_ = -1;
  std::optional<int> status_;
};

} // namespace kvferry::app
