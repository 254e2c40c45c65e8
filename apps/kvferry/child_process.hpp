// A child `kvferry` process whose stdout the parent reads line by line (the
// demo waits for its directory's "listening on" and its workers' "ready").
#pragma once

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdexcept>
#include <string>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include <fmt/format.h>

#include "exec_vector.hpp"
#include "mps_daemon.hpp"
#include "stop_signals.hpp"

namespace kvferry::app {

// A child `kvferry` process with its stdout on a pipe and `extra_env` added
// to its environment. Killed (SIGTERM, then SIGKILL) and reaped on
// destruction, whatever happened.
class child_process {
public:
  child_process(std::string what, const std::vector<std::string>& args,
                const env_pairs& extra_env = {})
      : what_(std::move(what)) {
    // Built before fork: the child only calls async-signal-safe functions.
    auto argv = exec_vector(args);
    const auto env = environment_with(extra_env);
    auto envp = exec_vector(env);
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
      throw std::runtime_error(what_ + ": pipe: " + std::strerror(errno));
    pid_ = fork();
    if (pid_ < 0)
      throw std::runtime_error(what_ + ": fork: " + std::strerror(errno));
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGTERM); // never outlive the demo
      dup2(fds[1], STDOUT_FILENO);
      execve("/proc/self/exe", argv.data(), envp.data());
      _exit(127);
    }
    close(fds[1]);
    out_ = fds[0];
  }
  ~child_process() { stop(); }
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

  // Reads stdout until a line containing `marker`; returns that line, or
  // throws naming the child when it exits or the deadline passes first (or
  // a stop signal came).
  std::string wait_for_line(const std::string& marker,
                            std::chrono::milliseconds timeout) {
    using namespace std::chrono;
    auto deadline = steady_clock::now() + timeout;
    for (;;) {
      auto nl = buffer_.find('\n');
      while (nl != std::string::npos) {
        auto line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        if (line.find(marker) != std::string::npos)
          return line;
        nl = buffer_.find('\n');
      }
      if (caught_stop_signal() != 0)
        throw std::runtime_error(what_ + ": interrupted");
      auto left = duration_cast<milliseconds>(deadline - steady_clock::now());
      if (left.count() <= 0)
        throw std::runtime_error(
            fmt::format("{} did not report '{}' within {} ms", what_, marker,
                        timeout.count()));
      pollfd p{out_, POLLIN, 0};
      auto slice = std::min<milliseconds::rep>(left.count(), 100);
      if (poll(&p, 1, static_cast<int>(slice)) > 0) {
        char buf[512];
        auto n = read(out_, buf, sizeof buf);
        if (n <= 0)
          throw std::runtime_error(
              fmt::format("{} exited before reporting '{}' ({})", what_, marker,
                          describe_exit()));
        buffer_.append(buf, static_cast<std::size_t>(n));
      }
    }
  }

  bool running() {
    if (pid_ <= 0)
      return false;
    return waitpid(pid_, &status_, WNOHANG) == 0;
  }

  void stop() {
    using namespace std::chrono;
    if (pid_ <= 0)
      return;
    kill(pid_, SIGTERM);
    auto deadline = steady_clock::now() + seconds(5);
    while (waitpid(pid_, &status_, WNOHANG) == 0) {
      if (steady_clock::now() > deadline) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status_, 0);
        break;
      }
      std::this_thread::sleep_for(milliseconds(10));
    }
    pid_ = -1;
    if (out_ >= 0)
      close(out_);
    out_ = -1;
  }

private:
  std::string describe_exit() {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      if (WIFEXITED(status))
        return fmt::format("exit status {}", WEXITSTATUS(status));
      if (WIFSIGNALED(status))
        return fmt::format("killed by signal {}", WTERMSIG(status));
    }
    return "closed its output";
  }
  std::string what_;
  pid_t pid_ = -1;
  int out_ = -1;
  int status_ = 0;
  std::string buffer_;
};

} // namespace kvferry::app
