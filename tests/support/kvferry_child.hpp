// A `kvferry` subcommand as a child process for the end-to-end tests: stdout
// and stderr captured together, waits for a line with a deadline, killed and
// reaped on destruction (and killed with the test if the test dies).
#pragma once

#include <chrono>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include <doctest/doctest.h>

#include "run_kvferry.hpp"

namespace kvferry::test {

class kvferry_child {
public:
  /// `args` after the executable, e.g. {"directory", "--port", "0"}.
  explicit kvferry_child(const std::vector<std::string>& args) {
    std::vector<std::string> all{kvferry_binary()};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all)
      argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    int out[2];
    REQUIRE(pipe2(out, O_CLOEXEC) == 0);
    pid_ = fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      dup2(out[1], STDOUT_FILENO);
      dup2(out[1], STDERR_FILENO);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(out[1]);
    out_ = out[0];
  }

  ~kvferry_child() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    close(out_);
  }

  kvferry_child(const kvferry_child&) = delete;
  kvferry_child& operator=(const kvferry_child&) = delete;

  pid_t pid() const { return pid_; }

  /// Reads output until a line containing `needle` has arrived (returns that
  /// line) or `timeout` passed / the child closed its output ("" then).
  std::string wait_for_line(const std::string& needle,
                            std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      for (auto end = output_.find('\n', scanned_); end != std::string::npos;
           end = output_.find('\n', scanned_)) {
        auto line = output_.substr(scanned_, end - scanned_);
        scanned_ = end + 1;
        if (line.find(needle) != std::string::npos)
          return line;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0)
        return {};
      pollfd p{out_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0)
        continue;
      char buf[4096];
      auto n = read(out_, buf, sizeof buf);
      if (n <= 0)
        return {};
      output_.append(buf, static_cast<size_t>(n));
    }
  }

  /// Everything read so far.
  const std::string& output() const { return output_; }

  /// True while the process has not exited.
  bool alive() {
    int status = 0;
    if (pid_ <= 0)
      return false;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1; // reaped: never signal a recycled pid
      return false;
    }
    return true;
  }

private:
  pid_t pid_ = -1;
  int out_ = -1;
  std::string output_;
  size_t scanned_ = 0;
};

} // namespace kvferry::test
