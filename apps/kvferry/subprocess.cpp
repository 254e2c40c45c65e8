// A command's child process (subprocess.hpp).
#include "subprocess.hpp"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <stdexcept>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include <fmt/format.h>

#include "exec_vector.hpp"
#include "stop_signals.hpp"

extern char** environ;

namespace kvferry::app {
namespace {

// In the child, between fork and exec: async-signal-safe calls only.
[[noreturn]] void become(const spawn_spec& spec, pid_t parent,
                         char* const* argv, char* const* envp,
                         const std::string& cannot_exec) {
  setpgid(0, 0);
  // If the parent dies (SIGKILL, OOM), the child gets SIGTERM instead of
  // running on unsupervised; a parent that died before this line is caught
  // by the getppid check.
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != parent)
    _exit(128 + SIGTERM);
  default_stop_signals_in_child();
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  if (spec.stdin_fd >= 0)
    dup2(spec.stdin_fd, STDIN_FILENO);
  if (spec.stdout_fd >= 0)
    dup2(spec.stdout_fd, STDOUT_FILENO);
  if (spec.stderr_fd >= 0)
    dup2(spec.stderr_fd, STDERR_FILENO);
  execve(spec.program.c_str(), argv, envp);
  const char* why = strerror(errno);
  [[maybe_unused]] auto w =
      write(STDERR_FILENO, cannot_exec.data(), cannot_exec.size());
  w = write(STDERR_FILENO, why, strlen(why));
  w = write(STDERR_FILENO, "\n", 1);
  _exit(127);
}

} // namespace

std::vector<std::string> environment_with(const env_pairs& overrides) {
  std::vector<std::string> env;
  for (char** e = environ; e && *e; ++e) {
    std::string entry{*e};
    auto name = entry.substr(0, entry.find('='));
    bool replaced = false;
    for (auto& [key, value] : overrides)
      replaced = replaced || key == name;
    if (!replaced)
      env.push_back(std::move(entry));
  }
  for (auto& [key, value] : overrides)
    env.push_back(key + "=" + value);
  return env;
}

std::string describe_exit(int status) {
  if (WIFEXITED(status))
    return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return fmt::format("was killed by signal {} ({}){}", WTERMSIG(status),
                       ::strsignal(WTERMSIG(status)),
                       WCOREDUMP(status) ? ", core dumped" : "");
  return fmt::format("changed state ({:#x})", status);
}

subprocess::subprocess(const spawn_spec& spec) {
  // Everything the child needs is built before fork.
  auto argv = exec_vector(spec.argv);
  const auto env_text = environment_with(spec.env);
  auto envp = exec_vector(env_text);
  auto cannot_exec = fmt::format("kvferry: cannot execute {}: ", spec.program);
  // No stop signal may run our handler in the child before it has reset
  // them: block them across fork.
  sigset_t stops, old;
  sigemptyset(&stops);
  for (int sig : {SIGINT, SIGTERM, SIGHUP})
    sigaddset(&stops, sig);
  pthread_sigmask(SIG_BLOCK, &stops, &old);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0)
    become(spec, parent, argv.data(), envp.data(), cannot_exec);
  int fork_errno = errno;
  if (pid > 0) {
    setpgid(pid, pid); // also here: a stop right after fork must reach it
    track_child_group(pid);
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0)
    throw std::runtime_error(fmt::format(
        "cannot start {}: fork: {}", spec.program, std::strerror(fork_errno)));
  pid_ = pid;
}

subprocess::~subprocess() {
  if (pid_ > 0)
    stop(std::chrono::seconds(5));
}

subprocess::subprocess(subprocess&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)), status_(other.status_) {
}

subprocess& subprocess::operator=(subprocess&& other) noexcept {
  if (this != &other) {
    if (pid_ > 0)
      stop(std::chrono::seconds(5));
    pid_ = std::exchange(other.pid_, -1);
    status_ = other.status_;
  }
  return *this;
}

void subprocess::reaped(int status) {
  forget_child_group(pid_);
  pid_ = -1;
  status_ = status;
}

bool subprocess::running() {
  if (pid_ <= 0)
    return false;
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) == pid_) {
    reaped(status);
    return false;
  }
  return true;
}

void subprocess::signal(int sig) const {
  if (pid_ > 0)
    ::kill(-pid_, sig);
}

bool subprocess::wait(std::chrono::milliseconds timeout) {
  using namespace std::chrono;
  auto deadline = steady_clock::now() + timeout;
  while (running()) {
    if (steady_clock::now() >= deadline)
      return false;
    std::this_thread::sleep_for(milliseconds(5));
  }
  return true;
}

void subprocess::kill_now() {
  if (pid_ <= 0)
    return;
  ::kill(-pid_, SIGKILL);
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  reaped(status);
}

bool subprocess::stop(std::chrono::milliseconds grace) {
  signal(SIGTERM);
  if (wait(grace))
    return false;
  kill_now();
  return true;
}

} // namespace kvferry::app
