// Long-running commands (directory, worker) stop on SIGINT/SIGTERM by
// sigwait-ing for them in main's thread.
#pragma once

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

} // namespace kvferry::app
