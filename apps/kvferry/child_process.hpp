// A child `kvferry` process whose stdout the parent reads line by line (the
// demo waits for its directory's "listening on" and its workers' "ready").
#pragma once

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <stdexcept>
#include <string>
#include <unistd.h>
#include <vector>

#include <fmt/format.h>

#include "stop_signals.hpp"
#include "subprocess.hpp"

namespace kvferry::app {

// A child `kvferry` process (a subprocess) with its stdout on a pipe and
// `extra_env` added to its environment. Stopped (SIGTERM, then SIGKILL after
// five seconds) and reaped on destruction, whatever happened.
class child_process {
public:
  child_process(std::string what, const std::vector<std::string>& args,
                const env_pairs& extra_env = {})
      : what_(std::move(what)) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
      throw std::runtime_error(what_ + ": pipe: " + std::strerror(errno));
    spawn_spec spec{"/proc/self/exe", args, extra_env};
    spec.stdout_fd = fds[1];
    try {
      process_ = subprocess(spec);
    } catch (...) {
      close(fds[0]);
      close(fds[1]);
      throw;
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
      if (stop_signal() != 0)
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

  bool running() { return process_.running(); }

  void stop() {
    process_.stop(std::chrono::seconds(5));
    if (out_ >= 0)
      close(out_);
    out_ = -1;
  }

private:
  std::string describe_exit() {
    if (process_.running())
      return "closed its output";
    return app::describe_exit(*process_.exit_status());
  }
  std::string what_;
  subprocess process_;
  int out_ = -1;
  std::string buffer_;
};

} // namespace kvferry::app
