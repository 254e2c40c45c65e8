// `kvferry demo` with its router in the decode worker's process under a
// private MPS daemon that the demo starts. CUDA joins MPS only when it
// initialises, and the demo's process initialised CUDA to resolve the GPUs
// before the daemon existed: that process cannot be the daemon's client.
// So it starts the daemon, runs the demo proper as a child of itself (this
// binary, the same arguments, the daemon's variables), waits for it and
// quits the daemon. The child sees a daemon it did not start (as with a
// caller's CUDA_MPS_PIPE_DIRECTORY): router in its own process, MPS on.
// demo_local.cpp runs this; here are the pure parts.
#pragma once

#include <string>
#include <vector>

#include "mps_daemon.hpp"
#include "subprocess.hpp"

namespace kvferry::app {

/// Set (to 1) in the child's environment: the daemon of its
/// CUDA_MPS_PIPE_DIRECTORY is its parent demo's, which announced it and
/// quits it, so the child says nothing about it.
constexpr const char* demo_private_mps_variable = "KVFERRY_DEMO_PRIVATE_MPS";

/// The child's exit status when its workers did not start under the daemon
/// with --mps auto: the parent quits the daemon and runs the demo without
/// MPS (EX_TEMPFAIL).
constexpr int demo_mps_failed_exit = 75;

/// Whether the demo runs itself again as a child under the private daemon
/// it starts: the router is to share the decode worker's process and
/// `choice` starts a daemon.
bool rerun_under_private_daemon(bool router_in_decode,
                                const mps_choice& choice);

/// Whether this process is such a child (demo_private_mps_variable).
bool under_parents_private_daemon();

/// The child: this binary (/proc/self/exe) with `arguments` (argv[0]
/// first), the daemon's variables and demo_private_mps_variable added to
/// this process's environment; stdin, stdout and stderr shared.
spawn_spec private_daemon_child(std::vector<std::string> arguments,
                                const env_pairs& daemon_env);

/// This process's arguments, argv[0] first (/proc/self/cmdline); throws
/// naming the file when it cannot be read.
std::vector<std::string> own_arguments();

/// The exit status a parent passes on for its child's wait status: the
/// child's own, or 128 + the signal that killed it.
int exit_code_of(int wait_status);

} // namespace kvferry::app
