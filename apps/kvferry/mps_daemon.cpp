#include "mps_daemon.hpp"

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <signal.h>
#include <stdexcept>
#include <sys/stat.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include <fmt/format.h>

#include "exec_vector.hpp"
#include "stop_signals.hpp"

namespace kvferry::app {
namespace {

using namespace std::chrono;

constexpr const char* pipe_variable = "CUDA_MPS_PIPE_DIRECTORY";
constexpr const char* log_variable = "CUDA_MPS_LOG_DIRECTORY";

std::string time_slice_note(int gpu, const std::string& cause) {
  return fmt::format("both workers share GPU {} and {}: their kernels will "
                     "time-slice (docs/gpu.md, 'Contention in the demo')",
                     gpu, cause);
}

// " (its output: ...)" with the last few hundred characters of `path` on
// one line, or nothing when it is empty.
std::string output_note(const std::string& path) {
  std::ifstream in{path};
  std::string text{std::istreambuf_iterator<char>{in}, {}};
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back())))
    text.pop_back();
  if (text.empty())
    return {};
  constexpr std::size_t keep = 400;
  if (text.size() > keep)
    text = "..." + text.substr(text.size() - keep);
  for (auto& c : text)
    if (c == '\n')
      c = ' ';
  return " (its output: " + text + ")";
}

bool has_entries(const std::string& directory) {
  std::error_code ec;
  return std::filesystem::directory_iterator{directory, ec} !=
         std::filesystem::directory_iterator{};
}

} // namespace

std::optional<mps_mode> parse_mps_mode(const std::string& text) {
  if (text == "auto")
    return mps_mode::automatic;
  if (text == "on")
    return mps_mode::on;
  if (text == "off")
    return mps_mode::off;
  return std::nullopt;
}

mps_choice choose_mps(const mps_facts& f) {
  const bool shared = f.shared_gpu >= 0;
  mps_choice c;
  if (!f.starts_workers) {
    if (f.mode == mps_mode::on) {
      c.exit_code = 2;
      c.why = "--mps on: with --directory the demo starts no workers; start "
              "MPS for the deployment's workers yourself (docs/deploy.md)";
    }
    return c;
  }
  // The workers inherit the variable, so they are that daemon's clients
  // whatever --mps says.
  if (!f.callers_pipe_directory.empty()) {
    c.callers_daemon = true;
    if (f.parent_demos_daemon)
      return c;
    if (f.mode == mps_mode::off && shared)
      c.why = fmt::format("--mps off starts no MPS daemon, but the workers "
                          "inherit {}={} (unset it to run them without MPS)",
                          pipe_variable, f.callers_pipe_directory);
    else if (f.mode != mps_mode::off && (shared || f.mode == mps_mode::on))
      c.why = fmt::format("the workers use the MPS daemon of {}={} (set by "
                          "the caller), starting none",
                          pipe_variable, f.callers_pipe_directory);
    return c;
  }
  if (f.mode == mps_mode::off) {
    if (shared)
      c.why = time_slice_note(f.shared_gpu, "--mps off");
    return c;
  }
  if (f.mode == mps_mode::automatic && !shared)
    return c; // one worker per GPU, or host memory: nothing to share
  if (!f.control_found) {
    if (f.mode == mps_mode::on) {
      c.exit_code = 1;
      c.why = fmt::format("--mps on: {} is not on PATH",
                          mps_daemon::control_program);
    } else {
      c.why = time_slice_note(
          f.shared_gpu,
          fmt::format("{} is not on PATH", mps_daemon::control_program));
    }
    return c;
  }
  c.start = true;
  return c;
}

int shared_gpu_of(const std::vector<std::optional<int>>& gpus) {
  for (std::size_t i = 0; i < gpus.size(); ++i)
    for (std::size_t j = i + 1; j < gpus.size(); ++j)
      if (gpus[i] && gpus[i] == gpus[j])
        return *gpus[i];
  return -1;
}

mps_setup set_up_mps(const mps_facts& facts,
                     std::optional<mps_daemon>& daemon) {
  const auto choice = choose_mps(facts);
  mps_setup setup;
  setup.exit_code = choice.exit_code;
  if (!choice.why.empty())
    setup.lines.push_back(choice.why);
  if (!choice.start || choice.exit_code != 0)
    return setup;
  const auto gpu = facts.shared_gpu >= 0
                       ? fmt::format("GPU {}", facts.shared_gpu)
                       : std::string{"the workers"};
  try {
    setup.env = daemon.emplace().start();
    setup.lines.push_back(
        fmt::format("started a private MPS daemon for {} (pipe directory {}); "
                    "--mps off to run without",
                    gpu, daemon->pipe_directory()));
  } catch (const std::exception& e) {
    daemon.reset();
    if (facts.mode == mps_mode::on) {
      setup.exit_code = 1;
      setup.lines.push_back(fmt::format("--mps on: {}", e.what()));
    } else {
      setup.lines.push_back(fmt::format(
          "could not start a private MPS daemon ({}): the workers on {} run "
          "without MPS and their kernels will time-slice (docs/gpu.md, "
          "'Contention in the demo')",
          e.what(), gpu));
    }
  }
  return setup;
}

std::string find_on_path(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "";
  for (std::size_t begin = 0; begin <= dirs.size();) {
    auto end = dirs.find(':', begin);
    if (end == std::string::npos)
      end = dirs.size();
    auto dir = dirs.substr(begin, end - begin);
    auto candidate = (dir.empty() ? std::string{"."} : dir) + "/" + program;
    struct stat st {};
    if (stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        access(candidate.c_str(), X_OK) == 0)
      return candidate;
    begin = end + 1;
  }
  return {};
}

struct mps_daemon::quit_on_signal {
  std::vector<std::string> argv, env;
  std::vector<char*> argv_ptrs, env_ptrs;
  int stdin_fd = -1; // a pipe holding "quit\n", its writer closed
  int out_fd = -1;   // the log directory's kvferry-control-quit-on-signal.out
  last_words words;
  ~quit_on_signal() {
    for (int fd : {stdin_fd, out_fd})
      if (fd >= 0)
        close(fd);
  }
};

mps_daemon::mps_daemon(milliseconds timeout) : timeout_(timeout) {
}

mps_daemon::~mps_daemon() {
  if (auto err = stop(); !err.empty())
    std::cerr << "kvferry: stopping the private MPS daemon: " << err << "\n";
}

env_pairs mps_daemon::start() {
  if (running())
    return environment();
  program_ = find_on_path(control_program);
  if (program_.empty())
    throw std::runtime_error(fmt::format("{} is not on PATH", control_program));
  const char* tmp = std::getenv("TMPDIR");
  std::string root =
      (tmp && *tmp ? tmp : "/tmp") + std::string{"/"} + "kvferry-mps-XXXXXX";
  if (mkdtemp(root.data()) == nullptr)
    throw std::runtime_error(fmt::format("private MPS directories: mkdtemp {}: "
                                         "{}",
                                         root, std::strerror(errno)));
  root_ = root;
  pipe_ = root_ + "/pipe";
  log_ = root_ + "/log";
  for (auto* dir : {&pipe_, &log_})
    if (mkdir(dir->c_str(), 0700) != 0) {
      auto err = fmt::format("private MPS directories: mkdir {}: {}", *dir,
                             std::strerror(errno));
      remove_directories();
      throw std::runtime_error(err);
    }
  if (auto err = run_control("-d", ""); !err.empty()) {
    remove_directories();
    throw std::runtime_error(err);
  }
  // `-d` returns once the daemon has forked, maybe before it listens; a
  // client that finds no daemon runs without MPS and says nothing, so wait
  // for the daemon's pipes to appear.
  auto deadline = steady_clock::now() + timeout_;
  while (!has_entries(pipe_)) {
    if (steady_clock::now() > deadline) {
      auto err = fmt::format("`{} -d` exited 0 but created nothing in {} "
                             "within {} ms",
                             control_program, pipe_, timeout_.count());
      run_control("", "quit\n"); // in case it comes up later
      remove_directories();
      throw std::runtime_error(err);
    }
    std::this_thread::sleep_for(milliseconds(5));
  }
  arm_quit_on_signal();
  return environment();
}

void mps_daemon::arm_quit_on_signal() {
  auto q = std::make_unique<quit_on_signal>();
  int in[2];
  if (pipe2(in, O_CLOEXEC) != 0)
    return; // no last words: a second signal leaves the daemon, as before
  const std::string quit = "quit\n";
  auto written = write(in[1], quit.data(), quit.size());
  close(in[1]);
  q->stdin_fd = in[0];
  if (written != static_cast<ssize_t>(quit.size()))
    return;
  q->out_fd = open((log_ + "/kvferry-control-quit-on-signal.out").c_str(),
                   O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  // As stop() does: quit (reading it from stdin), then, if that worked,
  // remove the directories.
  const std::string script = "\"$1\" && rm -rf -- \"$2\"";
  q->argv = {"/bin/sh", "-c", script, "kvferry-mps-quit", program_, root_};
  q->env = environment_with(environment());
  q->argv_ptrs = exec_vector(q->argv);
  q->env_ptrs = exec_vector(q->env);
  q->words = {q->argv.front().c_str(), q->argv_ptrs.data(), q->env_ptrs.data(),
              q->stdin_fd, q->out_fd};
  set_last_words(&q->words);
  quit_on_signal_ = std::move(q);
}

void mps_daemon::disarm_quit_on_signal() {
  if (!quit_on_signal_)
    return;
  set_last_words(nullptr);
  quit_on_signal_.reset();
}

std::string mps_daemon::stop() {
  if (!running())
    return {};
  disarm_quit_on_signal();
  if (auto err = run_control("", "quit\n"); !err.empty()) {
    auto why = fmt::format(
        "{}; the daemon may still run: stop it with `echo quit | {}={} {}`, "
        "then remove {}",
        err, pipe_variable, pipe_, control_program, root_);
    root_.clear(); // keep the directories: they reach the daemon
    return why;
  }
  remove_directories();
  return {};
}

env_pairs mps_daemon::environment() const {
  return {{pipe_variable, pipe_}, {log_variable, log_}};
}

std::string mps_daemon::run_control(const std::string& args,
                                    const std::string& input) {
  auto what = args.empty() ? fmt::format("`echo {} | {}`",
                                         input.substr(0, input.find('\n')),
                                         control_program)
                           : fmt::format("`{} {}`", control_program, args);
  // stdin: a pipe that already holds `input` and has no writer left, so the
  // program reads it and then EOF, and one that exits without reading it
  // cannot raise SIGPIPE here.
  int in[2];
  if (pipe2(in, O_CLOEXEC) != 0)
    return fmt::format("{}: pipe: {}", what, std::strerror(errno));
  auto written = write(in[1], input.data(), input.size()); // < pipe buffer
  close(in[1]);
  if (written != static_cast<ssize_t>(input.size())) {
    close(in[0]);
    return fmt::format("{}: writing its input failed", what);
  }
  // stdout and stderr: a file per command, not a pipe: the daemon that `-d`
  // forks may keep them, and writing to a pipe nobody reads would kill it.
  auto out_path = fmt::format("{}/kvferry-control-{}.out", log_,
                              args.empty() ? "quit" : "start");
  int out =
      open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (out < 0) {
    close(in[0]);
    return fmt::format("{}: open {}: {}", what, out_path, std::strerror(errno));
  }
  // Its own process group (a timeout kills everything it started), no
  // signal blocked, as from a shell.
  std::vector<std::string> argv{program_};
  if (!args.empty())
    argv.push_back(args);
  spawn_spec spec{program_, std::move(argv), environment()};
  spec.stdin_fd = in[0];
  spec.stdout_fd = out;
  spec.stderr_fd = out;
  std::optional<subprocess> control;
  try {
    control.emplace(spec);
  } catch (const std::exception& e) {
    close(in[0]);
    close(out);
    return fmt::format("{}: {}", what, e.what());
  }
  close(in[0]);
  close(out);
  if (!control->wait(timeout_)) {
    control->kill_now();
    return fmt::format("{} did not finish within {} ms (killed){}", what,
                       timeout_.count(), output_note(out_path));
  }
  auto status = *control->exit_status();
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    return {};
  if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
    return fmt::format("{}: cannot run {}{}", what, program_,
                       output_note(out_path));
  return fmt::format("{} failed: {}{}", what, describe_exit(status),
                     output_note(out_path));
}

void mps_daemon::remove_directories() {
  std::error_code ignored;
  std::filesystem::remove_all(root_, ignored);
  root_.clear();
  pipe_.clear();
  log_.clear();
}

} // namespace kvferry::app
