// A command's child processes (apps/kvferry/subprocess.*) and the one
// stop-signal rule (apps/kvferry/stop_signals.*), against /bin/sh. The rule
// is tried in a forked copy of this test, which then dies of the signal.
#include <cerrno>
#include <chrono>
#include <csignal>
#include <fcntl.h>
#include <fstream>
#include <poll.h>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include "stop_signals.hpp"
#include "subprocess.hpp"

using namespace kvferry::app;
using namespace std::chrono;

namespace {

spawn_spec shell(const std::string& script) {
  return {"/bin/sh", {"sh", "-c", script}, {}};
}

// A pipe whose read end the test keeps; closed on destruction.
struct pipe_pair {
  int read_end = -1;
  int write_end = -1;
  pipe_pair() {
    int fds[2];
    REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
    read_end = fds[0];
    write_end = fds[1];
  }
  ~pipe_pair() {
    close_write();
    close(read_end);
  }
  void close_write() {
    if (write_end >= 0)
      close(write_end);
    write_end = -1;
  }
  // The next line, or "" when none came within `timeout`.
  std::string line(milliseconds timeout) {
    auto deadline = steady_clock::now() + timeout;
    std::string text;
    while (text.empty() || text.back() != '\n') {
      auto left = duration_cast<milliseconds>(deadline - steady_clock::now());
      pollfd p{read_end, POLLIN, 0};
      if (left.count() <= 0 || poll(&p, 1, static_cast<int>(left.count())) <= 0)
        return {};
      char c;
      if (read(read_end, &c, 1) != 1)
        return {};
      text += c;
    }
    text.pop_back();
    return text;
  }
};

// Gone, or a zombie nobody reaps yet: either way it runs no more.
bool has_ended(pid_t pid, milliseconds timeout) {
  auto deadline = steady_clock::now() + timeout;
  do {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string pid_text, name, state;
    if (!(stat >> pid_text >> name >> state) || state == "Z")
      return true;
    usleep(10000);
  } while (steady_clock::now() < deadline);
  return false;
}

// Waits for `pid` (a forked copy of this test) to end; its wait status.
int reap(pid_t pid, milliseconds timeout) {
  auto deadline = steady_clock::now() + timeout;
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      FAIL("the forked test process did not end within ", timeout.count(),
           " ms");
    }
    usleep(10000);
  }
  return status;
}

} // namespace

TEST_CASE("a subprocess reports its exit status") {
  subprocess p{shell("exit 3")};
  REQUIRE(p.pid() > 0);
  REQUIRE(p.wait(seconds(10)));
  REQUIRE(p.exit_status());
  CHECK(WIFEXITED(*p.exit_status()));
  CHECK(WEXITSTATUS(*p.exit_status()) == 3);
  CHECK(describe_exit(*p.exit_status()) == "exited with status 3");
  CHECK(p.pid() == -1);
  CHECK_FALSE(p.running());
}

TEST_CASE("a subprocess gets the added environment and the given stdout") {
  pipe_pair out;
  auto spec = shell("echo \"$KVFERRY_SUBPROCESS_TEST\"");
  spec.env = {{"KVFERRY_SUBPROCESS_TEST", "hello"}};
  spec.stdout_fd = out.write_end;
  subprocess p{spec};
  out.close_write();
  CHECK(out.line(seconds(10)) == "hello");
  REQUIRE(p.wait(seconds(10)));
  CHECK(WEXITSTATUS(*p.exit_status()) == 0);
}

TEST_CASE("a program that cannot be executed exits 127, saying why") {
  pipe_pair err;
  spawn_spec spec{"/nonexistent/kvferry-test", {"x"}, {}};
  spec.stderr_fd = err.write_end;
  subprocess p{spec};
  err.close_write();
  auto line = err.line(seconds(10));
  CHECK(line.find("cannot execute /nonexistent/kvferry-test") !=
        std::string::npos);
  REQUIRE(p.wait(seconds(10)));
  CHECK(WEXITSTATUS(*p.exit_status()) == 127);
}

TEST_CASE("a subprocess leads its own process group; stop reaches all of it") {
  pipe_pair out;
  auto spec = shell("sleep 60 & echo $!; wait");
  spec.stdout_fd = out.write_end;
  subprocess p{spec};
  out.close_write();
  auto grandchild = std::stoi(out.line(seconds(10)));
  CHECK(getpgid(p.pid()) == p.pid());
  CHECK(getpgid(grandchild) == p.pid());
  CHECK_FALSE(p.stop(seconds(10))); // SIGTERM was enough
  CHECK(WIFSIGNALED(*p.exit_status()));
  CHECK(WTERMSIG(*p.exit_status()) == SIGTERM);
  CHECK(has_ended(grandchild, seconds(10)));
}

TEST_CASE("a subprocess that ignores SIGTERM is killed after the deadline") {
  pipe_pair out;
  auto spec = shell("trap '' TERM; echo ready; sleep 60 & wait");
  spec.stdout_fd = out.write_end;
  subprocess p{spec};
  out.close_write();
  REQUIRE(out.line(seconds(10)) == "ready");
  auto start = steady_clock::now();
  CHECK(p.stop(milliseconds(300))); // it had to be killed
  CHECK(steady_clock::now() - start >= milliseconds(300));
  CHECK(WIFSIGNALED(*p.exit_status()));
  CHECK(WTERMSIG(*p.exit_status()) == SIGKILL);
}

// ---- the one stop-signal rule
// ------------------------------------------------

namespace {

// Forks a copy of this test that installs the rule (graceful or not),
// starts `sleep 60` as a subprocess, tells the test its pid, waits up to
// 30 s for a stop signal, says which came, then takes 30 s to stop.
pid_t forked_command(bool graceful, pipe_pair& report) {
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid != 0)
    return pid;
  signal(SIGINT, SIG_IGN); // as a shell does for a background job
  install_stop_signals();
  if (graceful)
    stop_gracefully();
  subprocess sleeper{{"/bin/sleep", {"sleep", "60"}, {}}};
  auto say = [&](const std::string& line) {
    auto text = line + "\n";
    [[maybe_unused]] auto n = write(report.write_end, text.data(), text.size());
  };
  say(std::to_string(sleeper.pid()));
  int first = 0;
  for (int i = 0; i < 300 && first == 0; ++i)
    first = wait_stop_signal(milliseconds(100));
  say(stop_signal_name(first));
  for (int i = 0; i < 300; ++i) // stopping slowly: 30 s
    usleep(100000);
  _exit(0);
}

} // namespace

TEST_CASE("stop signals: the first asks a graceful command to stop, the "
          "second stops it now, with its children") {
  pipe_pair report;
  auto command = forked_command(true, report);
  auto sleeper = std::stoi(report.line(seconds(10)));
  REQUIRE(sleeper > 0);
  REQUIRE(kill(command, SIGINT) == 0); // ignored before: counts anyway
  CHECK(report.line(seconds(5)) == "SIGINT");
  int status = 0;
  CHECK(waitpid(command, &status, WNOHANG) == 0); // still stopping
  CHECK_FALSE(has_ended(sleeper, milliseconds(0)));
  REQUIRE(kill(command, SIGTERM) == 0);
  status = reap(command, seconds(5));
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGTERM);
  CHECK(has_ended(sleeper, seconds(5)));
}

TEST_CASE("stop signals: a command without a graceful stop stops at the "
          "first, with its children") {
  pipe_pair report;
  auto command = forked_command(false, report);
  auto sleeper = std::stoi(report.line(seconds(10)));
  REQUIRE(sleeper > 0);
  REQUIRE(kill(command, SIGHUP) == 0);
  auto status = reap(command, seconds(5));
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGHUP);
  CHECK(has_ended(sleeper, seconds(5)));
}
