// How every `kvferry` command stops on a signal: one rule.
//
//  - SIGINT and SIGTERM always count (also where a shell ignored SIGINT for a
//    background job); SIGHUP counts unless it is ignored (nohup).
//  - A command with a clean way to stop (the directory leaves, a worker
//    deregisters, launch and demo stop their children) calls
//    stop_gracefully(); the first signal is then only recorded, and the
//    command looks at it in every wait (wait_stop_signal, at most a second
//    apart) and stops through its normal path.
//  - A second signal, or the first one in a command without a clean way to
//    stop (info, sim, bench ...), stops now: every child process group that
//    subprocess started is killed (SIGKILL), the last words run (a private
//    MPS daemon's quit, set_last_words) and the process dies of that
//    signal, as without any handler.
//
// The handler only records, writes to a pipe (which wakes wait_stop_signal)
// and, to stop now, kills, forks and execs the last words, and re-raises:
// all async-signal-safe, whichever thread (CAF's included) it runs on.
#pragma once

#include <chrono>
#include <sys/types.h>

namespace kvferry::app {

/// Installs the handler (main() does, before any command runs). Idempotent.
void install_stop_signals();

/// The calling command stops cleanly on a first signal (see above).
void stop_gracefully();

/// The first stop signal received, or 0.
int stop_signal();

/// Waits up to `timeout` for a first stop signal; returns stop_signal().
int wait_stop_signal(std::chrono::milliseconds timeout);

/// "SIGINT", "SIGTERM", "SIGHUP" (or "signal N").
const char* stop_signal_name(int sig);

/// The process groups a second signal kills (subprocess keeps them here).
void track_child_group(pid_t pgid);
void forget_child_group(pid_t pgid);

/// What must still happen when the process stops now (a second signal):
/// one program, started and not waited for, before the process dies. The
/// private MPS daemon registers its `quit` (mps_daemon), which would
/// otherwise outlive us (it left our process group when it daemonized),
/// and the removal of its directories.
/// Everything is made in advance, so the handler only forks and execs.
/// `stdin_fd` (kept open by the caller) becomes the program's stdin,
/// `out_fd` its stdout and stderr (-1: ours).
struct last_words {
  const char* path = nullptr;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  int stdin_fd = -1;
  int out_fd = -1;
};

/// Sets (nullptr: clears) the last words; the caller keeps `words` alive
/// until it clears them. One at a time.
void set_last_words(const last_words* words);

/// Resets the stop signals to their default action (a freshly forked child
/// calls it before exec, so that a signal there cannot run our handler).
void default_stop_signals_in_child();

} // namespace kvferry::app
