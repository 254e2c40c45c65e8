// Real kvferry processes for the fault tests: a child with stdout+stderr on
// a pipe (killed and reaped at the end), and a deployment of a directory, a
// prefill and a decode worker, all up and registered. Every wait has a
// deadline.
#pragma once

#include <chrono>
#include <fcntl.h>
#include <poll.h>
#include <regex>
#include <signal.h>
#include <string>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include <doctest/doctest.h>

namespace kvferry::test {

using namespace std::chrono;

// A kvferry child with stdout+stderr on a pipe; killed and reaped at the end.
struct child {
  pid_t pid = -1;
  int out = -1;
  std::string text;

  // `bin` (the kvferry command unless given) with `args`, and `env` (e.g.
  // "NAME=value") added to this process's environment.
  explicit child(std::vector<std::string> args,
                 std::string bin = KVFERRY_BINARY_DIR "/bin/kvferry",
                 std::vector<std::string> env = {}) {
    int fds[2];
    REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
    // argv and envp are built before fork: the child of a process with
    // other threads (a test's node) may only make async-signal-safe calls
    // until it execs. An allocation there could wait forever on an
    // allocator lock that another thread held at the fork (seen under
    // ASan: the child hung, silent, before exec).
    std::vector<char*> argv;
    argv.push_back(bin.data());
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<char*> envp;
    for (char** e = environ; *e != nullptr; ++e)
      envp.push_back(*e);
    for (auto& e : env)
      envp.push_back(e.data());
    envp.push_back(nullptr);
    pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      dup2(fds[1], STDOUT_FILENO);
      dup2(fds[1], STDERR_FILENO);
      execve(bin.c_str(), argv.data(), envp.data());
      _exit(127);
    }
    close(fds[1]);
    out = fds[0];
  }
  ~child() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    if (out >= 0)
      close(out);
  }
  // Reads until `marker` shows up or the child closes its output/deadline.
  bool read_until(const std::string& marker, milliseconds timeout) {
    auto deadline = steady_clock::now() + timeout;
    while (text.find(marker) == std::string::npos) {
      auto left = duration_cast<milliseconds>(deadline - steady_clock::now());
      if (left.count() <= 0)
        return false;
      pollfd p{out, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0)
        continue;
      char buf[1024];
      auto n = read(out, buf, sizeof buf);
      if (n <= 0)
        return text.find(marker) != std::string::npos;
      text.append(buf, static_cast<size_t>(n));
    }
    return true;
  }
  // Reads until a demo's progress line reports finished requests, or
  // `timeout`; whether it did. A fault injected after it lands mid-stream,
  // where a fixed sleep could fire during start-up on a loaded or sanitized
  // run.
  bool read_until_progress(milliseconds timeout) {
    static const std::regex some_done{R"(\n  [1-9][0-9]*/[0-9]+ requests)"};
    auto by = steady_clock::now() + timeout;
    while (!std::regex_search(text, some_done) && steady_clock::now() < by)
      read_until("\x01never", milliseconds(200));
    return std::regex_search(text, some_done);
  }
  // The first line of the output that holds `needle`, once it has arrived;
  // "" if it did not within `timeout`.
  std::string wait_for_line(const std::string& needle, milliseconds timeout) {
    if (!read_until(needle, timeout))
      return {};
    auto at = text.find(needle);
    auto begin = text.rfind('\n', at);
    begin = begin == std::string::npos ? 0 : begin + 1;
    return text.substr(begin, text.find('\n', at) - begin);
  }
  // True while the process has not exited (reaps it once it has).
  bool alive() {
    int status = 0;
    if (pid <= 0)
      return false;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      pid = -1; // reaped: never signal a recycled pid
      return false;
    }
    return true;
  }
  // Waits for exit; returns the exit status or -1 on timeout.
  int wait_exit(milliseconds timeout) {
    auto deadline = steady_clock::now() + timeout;
    while (steady_clock::now() < deadline) {
      read_until("\x01never", milliseconds(50));
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        read_until("\x01never", milliseconds(200));
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
      }
    }
    return -1;
  }
};

// The directory's "HOST:PORT", once it says it is listening.
inline std::string directory_address(child& dir) {
  REQUIRE(dir.read_until("listening on", seconds(20)));
  auto line = dir.text.substr(dir.text.find("listening on"));
  auto port = std::stoi(line.substr(line.rfind(':') + 1));
  return "127.0.0.1:" + std::to_string(port);
}

inline std::vector<std::string> worker_args(const std::string& name,
                                            const char* role,
                                            const std::string& directory) {
  // Deadlines of 30 s: a failure that only a timeout noticed would take that
  // long; peer_down must come within a few seconds.
  return {"worker",    "--name",        name,      "--role",
          role,        "--directory",   directory, "--bind",
          "127.0.0.1", "--pool-blocks", "8192",    "--timeout-ms",
          "30000",     "--log-level",   "warn"};
}

// A directory, a prefill worker `PREFIX-prefill` and a decode worker
// `PREFIX-decode`, all up and registered (members start in this order).
struct deployment {
  child dir{{"directory", "--bind", "127.0.0.1", "--port", "0", "--log-level",
             "warn"}};
  std::string address = directory_address(dir);
  child prefill;
  child decode;

  explicit deployment(const std::string& prefix)
      : prefill(worker_args(prefix + "-prefill", "prefill", address)),
        decode(worker_args(prefix + "-decode", "decode", address)) {
    REQUIRE(prefill.read_until(" ready", seconds(30)));
    REQUIRE(decode.read_until(" ready", seconds(30)));
  }
};

} // namespace kvferry::test
