// Long-running commands (directory, worker) stop on SIGINT/SIGTERM by
// waiting for them in main's thread. Every wait there is short: a stop
// signal is honoured within a second wherever main happens to be.
#pragma once

#include <chrono>
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

} // namespace kvferry::app
