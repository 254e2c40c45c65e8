// The one stop-signal rule of every command (stop_signals.hpp).
#include "stop_signals.hpp"

#include <array>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <unistd.h>

namespace kvferry::app {
namespace {

constexpr std::array<int, 3> stop_signals{SIGINT, SIGTERM, SIGHUP};

// Touched by the handler: lock-free atomics and plain file descriptors only.
std::atomic<int> received{0};     // how many stop signals came
std::atomic<int> first_signal{0}; // the first one
std::atomic<bool> graceful{false};
int wake_read = -1; // the handler writes a byte for wait_stop_signal
int wake_write = -1;
// More children than this at once (launch runs a host's workers) would go
// untracked: a second signal would leave them to PR_SET_PDEATHSIG.
std::array<std::atomic<pid_t>, 256> child_groups{};

std::atomic<const last_words*> words{nullptr};

static_assert(std::atomic<int>::is_always_lock_free);
static_assert(std::atomic<const last_words*>::is_always_lock_free);
static_assert(std::atomic<pid_t>::is_always_lock_free);

// fork() runs the pthread_atfork handlers, which may take a lock the
// interrupted thread holds: a process stopping now could hang there.
// glibc's _Fork (2.34) does not run them.
pid_t fork_in_handler() {
#if defined(__GLIBC__) && __GLIBC_PREREQ(2, 34)
  return _Fork();
#else
  return fork();
#endif
}

// The last words' program in a child of its own (its own process group,
// so that a terminal's next ^C to ours does not reach it); not waited for.
void say_last_words() {
  const last_words* w = words.load();
  if (w == nullptr || w->path == nullptr)
    return;
  pid_t pid = fork_in_handler();
  if (pid != 0)
    return; // the parent (or a failed fork) goes on dying
  // As subprocess's children begin (become), but without PR_SET_PDEATHSIG:
  // this one is meant to outlive us.
  setpgid(0, 0);
  default_stop_signals_in_child();
  sigset_t none;
  sigemptyset(&none);
  pthread_sigmask(SIG_SETMASK, &none, nullptr);
  if (w->stdin_fd >= 0)
    dup2(w->stdin_fd, 0);
  if (w->out_fd >= 0) {
    dup2(w->out_fd, 1);
    dup2(w->out_fd, 2);
  }
  execve(w->path, w->argv, w->envp);
  _exit(127);
}

[[noreturn]] void stop_now(int sig) {
  for (auto& group : child_groups)
    if (pid_t pgid = group.load(); pgid > 0)
      kill(-pgid, SIGKILL);
  say_last_words();
  // Die of the signal itself, as a process without a handler would (a shell
  // running us in a loop sees the ^C). It is blocked while its handler
  // runs: unblock it, so the default action happens right here.
  struct sigaction fallback {};
  fallback.sa_handler = SIG_DFL;
  sigemptyset(&fallback.sa_mask);
  sigaction(sig, &fallback, nullptr);
  sigset_t just_this;
  sigemptyset(&just_this);
  sigaddset(&just_this, sig);
  pthread_sigmask(SIG_UNBLOCK, &just_this, nullptr);
  raise(sig);
  _exit(128 + sig);
}

void on_stop_signal(int sig) {
  int saved_errno = errno;
  if (received.fetch_add(1) == 0) {
    first_signal.store(sig);
    char byte = 1;
    [[maybe_unused]] auto n = write(wake_write, &byte, 1);
    if (graceful.load())
      return void(errno = saved_errno);
  }
  stop_now(sig);
}

bool ours(int sig) {
  struct sigaction current {};
  sigaction(sig, nullptr, &current);
  return current.sa_handler == on_stop_signal;
}

} // namespace

void install_stop_signals() {
  if (wake_read >= 0)
    return;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) == 0) {
    wake_read = fds[0];
    wake_write = fds[1];
  }
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  action.sa_flags = SA_RESTART;
  sigemptyset(&action.sa_mask);
  for (int sig : stop_signals)
    sigaddset(&action.sa_mask, sig); // one handler at a time
  for (int sig : stop_signals) {
    struct sigaction old {};
    sigaction(sig, nullptr, &old);
    if (sig == SIGHUP && old.sa_handler == SIG_IGN)
      continue; // nohup: stays ignored
    sigaction(sig, &action, nullptr);
  }
}

void stop_gracefully() {
  graceful.store(true);
}

int stop_signal() {
  return first_signal.load();
}

int wait_stop_signal(std::chrono::milliseconds timeout) {
  using namespace std::chrono;
  auto deadline = steady_clock::now() + timeout;
  for (;;) {
    if (int sig = stop_signal())
      return sig;
    auto left = duration_cast<milliseconds>(deadline - steady_clock::now());
    if (left.count() <= 0)
      return 0;
    pollfd wake{wake_read, POLLIN, 0};
    poll(&wake, 1, static_cast<int>(left.count())); // EINTR: look again
  }
}

const char* stop_signal_name(int sig) {
  switch (sig) {
  case SIGINT:
    return "SIGINT";
  case SIGTERM:
    return "SIGTERM";
  case SIGHUP:
    return "SIGHUP";
  default:
    return "a signal";
  }
}

void track_child_group(pid_t pgid) {
  for (auto& group : child_groups) {
    pid_t empty = 0;
    if (group.compare_exchange_strong(empty, pgid))
      return;
  }
}

void set_last_words(const last_words* w) {
  words.store(w);
}

void forget_child_group(pid_t pgid) {
  for (auto& group : child_groups) {
    pid_t expected = pgid;
    if (group.compare_exchange_strong(expected, 0))
      return;
  }
}

void default_stop_signals_in_child() {
  struct sigaction fallback {};
  fallback.sa_handler = SIG_DFL;
  sigemptyset(&fallback.sa_mask);
  for (int sig : stop_signals)
    if (ours(sig))
      sigaction(sig, &fallback, nullptr);
}

} // namespace kvferry::app
