// How a command stops on a signal: one rule for each kind of command.
// Long-running commands (directory, worker) stop on SIGINT/SIGTERM by
// waiting for them in main's thread. Every wait there is short: a stop
// signal is honoured within a second wherever main happens to be. Commands
// that own child processes catch them instead (catch_stop_signals below).
#pragma once

#include <chrono>
#include <csignal>
#include <ctime>
#include <pthread.h>
#include <signal.h>

namespace kvferry::app {

/// Blocks SIGINT and SIGTERM in the calling thread and returns the set for
/// sigwait. Call it *before* the actor system (or any other thread) starts:
/// threads inherit the mask, so no other thread can take the signal.
inline sigset_t block_stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

/// Waits up to `timeout` for one of `set` (blocked by block_stop_signals);
/// returns the signal, or 0 when none came.
inline int wait_stop_signal(const sigset_t& set,
                            std::chrono::milliseconds timeout) {
  auto secs = std::chrono::duration_cast<std::chrono::seconds>(timeout);
  timespec wait{
      static_cast<time_t>(secs.count()),
      static_cast<long>(std::chrono::nanoseconds(timeout - secs).count())};
  int sig = sigtimedwait(&set, nullptr, &wait);
  return sig > 0 ? sig : 0;
}

// ---- commands that own child processes -------------------------------------
//
// A command that started processes it must stop (the demo's workers and its
// private MPS daemon) cannot block the signals for sigwait: it waits in many
// places (a child's output, a run). It catches them instead: the handler
// records the signal; the loops that wait look at caught_stop_signal() and
// return through the normal path, whose destructors stop what was started.
// A second signal kills at once (SA_RESETHAND).

namespace detail {
inline volatile std::sig_atomic_t caught_stop_signal = 0;
inline void record_stop_signal(int sig) {
  caught_stop_signal = sig;
}
} // namespace detail

/// Installs the recording handler for SIGINT, SIGTERM and SIGHUP (a signal
/// ignored under nohup and the like stays ignored).
inline void catch_stop_signals() {
  struct sigaction action {};
  action.sa_handler = detail::record_stop_signal;
  action.sa_flags = SA_RESETHAND | SA_RESTART;
  sigemptyset(&action.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    struct sigaction old {};
    sigaction(sig, nullptr, &old);
    if (old.sa_handler != SIG_IGN)
      sigaction(sig, &action, nullptr);
  }
}

/// The signal catch_stop_signals recorded, or 0.
inline int caught_stop_signal() {
  return detail::caught_stop_signal;
}

} // namespace kvferry::app
