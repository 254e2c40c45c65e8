// `kvferry demo --mps`: whether the demo runs its two workers under a private
// NVIDIA MPS daemon, and that daemon's lifetime. Without MPS a GPU runs one
// process's kernels at a time, so two workers on one GPU time-slice it
// (docs/gpu.md, "Contention in the demo").
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "subprocess.hpp"

namespace kvferry::app {

enum class mps_mode { automatic, on, off };

/// auto, on or off; nothing for anything else.
std::optional<mps_mode> parse_mps_mode(const std::string& text);

/// What the choice depends on, gathered by the demo.
struct mps_facts {
  mps_mode mode = mps_mode::automatic;
  bool starts_workers = true; // no --directory: the demo forks the workers
  int shared_gpu = -1;        // both workers' GPU when they share one, else -1
  std::string callers_pipe_directory; // CUDA_MPS_PIPE_DIRECTORY, if set
  bool control_found = false;         // nvidia-cuda-mps-control is on PATH
  // That daemon is the one a parent demo started for this demo (its child,
  // demo_private_mps.hpp): the parent said so already.
  bool parent_demos_daemon = false;
};

struct mps_choice {
  bool start = false;          // start a private daemon for the workers
  bool callers_daemon = false; // the workers inherit the caller's MPS daemon
  int exit_code = 0; // non-zero: --mps on cannot be honoured, `why` says why
  std::string why;   // one line for stderr; empty: nothing worth saying
};

/// The decision, without side effects.
mps_choice choose_mps(const mps_facts& facts);

/// The GPU that two or more of `gpus` share (one entry per worker of a
/// host; nothing: a host-memory pool), or -1: the case MPS is for.
int shared_gpu_of(const std::vector<std::optional<int>>& gpus);

/// The program's full path when PATH has an executable of that name; empty
/// otherwise.
std::string find_on_path(const std::string& program);

/// A private MPS control daemon: its own pipe and log directories, so it
/// meets no other daemon and is reached only by processes given its
/// environment. Stopped (and its directories removed) on destruction.
class mps_daemon {
public:
  static constexpr const char* control_program = "nvidia-cuda-mps-control";

  /// `timeout` bounds each run of the control program (start and quit).
  explicit mps_daemon(
      std::chrono::milliseconds timeout = std::chrono::seconds(20));
  ~mps_daemon();
  mps_daemon(const mps_daemon&) = delete;
  mps_daemon& operator=(const mps_daemon&) = delete;

  /// Makes the directories (under $TMPDIR or /tmp) and runs `-d` with them.
  /// Returns the variables a client needs; throws naming the program and
  /// what failed (nothing is left behind then).
  env_pairs start();

  /// Sends `quit` with the same environment and removes the directories.
  /// Empty when it worked or nothing was running; else why, and the
  /// directories stay (the message says how to stop the daemon by hand).
  std::string stop();

  bool running() const { return !root_.empty(); }
  const std::string& pipe_directory() const { return pipe_; }
  const std::string& log_directory() const { return log_; }

private:
  env_pairs environment() const;
  // Empty when `control_program args` exited 0 within the timeout.
  std::string run_control(const std::string& args, const std::string& input);
  void remove_directories();

  // What a second stop signal runs before the process dies (stop_signals
  // .hpp, set_last_words): `quit`, then the directories removed, as stop()
  // does, by a shell nobody waits for. Made once the daemon runs, cleared
  // before stop() quits it the normal way.
  void arm_quit_on_signal();
  void disarm_quit_on_signal();

  std::chrono::milliseconds timeout_;
  std::string program_; // full path, found on PATH by start()
  std::string root_;    // mkdtemp'd; holds pipe/ and log/
  std::string pipe_;
  std::string log_;
  struct quit_on_signal; // its strings, descriptors and last_words
  std::unique_ptr<quit_on_signal> quit_on_signal_;
};

/// What a supervisor of local workers (`kvferry launch`) needs of MPS.
struct mps_setup {
  env_pairs env;                  // for the workers; empty: no daemon
  std::vector<std::string> lines; // for stderr, in order
  int exit_code = 0; // non-zero: --mps on cannot be honoured; start nothing
};

/// Decides with choose_mps and, when it says so, starts a private daemon
/// into `daemon` (which then stops it when destroyed: keep it until the
/// workers have stopped). A daemon that does not start leaves the workers
/// without MPS, said in `lines`; with --mps on that is exit_code 1.
mps_setup set_up_mps(const mps_facts& facts, std::optional<mps_daemon>& daemon);

} // namespace kvferry::app
