// `kvferry launch`'s supervisor (launch_supervisor.hpp). The supervisor is
// one thread: it waits for a stop signal with a short timeout, reaps
// children, and schedules restarts with exponential backoff. The children
// are subprocesses; a second stop signal kills them (stop_signals.hpp).
#include "launch_supervisor.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <signal.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include <fmt/format.h>

#include "stop_signals.hpp"
#include "subprocess.hpp"

namespace kvferry::app {

// One write per line: a second stop signal ends the process at once
// (stop_signals.hpp), and a line written in pieces could be cut after its
// prefix.
void say(const std::string& line) {
  std::string out = "kvferry launch: " + line + "\n";
  for (std::size_t done = 0; done < out.size();) {
    ssize_t n = ::write(STDERR_FILENO, out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return; // stderr is gone: nothing to tell
    done += static_cast<std::size_t>(n);
  }
}

namespace {

namespace topo = kvferry::topology;
using clock_type = std::chrono::steady_clock;
using std::chrono::milliseconds;

// The restart budget: a process may be restarted max_restarts times within
// any window this long; one more failure and it has failed for good. So a
// crash now and then (a stranger's packet, the OOM killer) never stops the
// deployment, while a crash loop gives up within a minute.
constexpr auto restart_window = std::chrono::seconds(60);
// The backoff doubles per failure that came this soon after its start (a
// crash loop), and starts from restart_backoff_ms again after a longer run.
constexpr auto quick_failure = std::chrono::seconds(10);
constexpr auto max_backoff = milliseconds(30000);
// How long the directory gets to print its "listening on" line.
constexpr auto directory_start_timeout = std::chrono::seconds(15);
constexpr std::size_t log_tail_lines = 15;

// The last `lines` lines of a log, to show why a process died.
std::string log_tail(const std::string& path, std::size_t lines) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return "(no log)";
  in.seekg(0, std::ios::end);
  auto size = static_cast<std::streamoff>(in.tellg());
  auto start = std::max<std::streamoff>(0, size - 8192);
  in.seekg(start);
  std::string text((std::istreambuf_iterator<char>(in)),
                   std::istreambuf_iterator<char>());
  std::vector<std::string> all;
  std::size_t pos = 0;
  while (pos < text.size()) {
    auto end = text.find('\n', pos);
    if (end == std::string::npos)
      end = text.size();
    all.push_back(text.substr(pos, end - pos));
    pos = end + 1;
  }
  std::string tail;
  for (auto i = all.size() > lines ? all.size() - lines : 0; i < all.size();
       ++i)
    tail += "    | " + all[i] + "\n";
  return tail.empty() ? "    | (empty log)\n" : tail;
}

bool log_contains(const std::string& path, const std::string& needle) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (line.find(needle) != std::string::npos)
      return true;
  return false;
}

struct child {
  process_spec spec;
  subprocess process;
  std::uint32_t starts = 0; // for the log's "attempt N" lines
  // When it was restarted within the last restart_window: the budget used,
  // and the exponent of the backoff.
  std::deque<clock_type::time_point> restarts;
  std::uint32_t quick_failures = 0; // in a row: the backoff's exponent
  clock_type::time_point started{};
  clock_type::time_point restart_at{};
  bool restart_pending = false;
  bool finished = false; // exited cleanly, or failed for good
};

class supervisor {
public:
  supervisor(const topo::deployment& t, std::vector<process_spec> plan,
             std::string exe, std::string secret)
      : topology_(t), exe_(std::move(exe)), secret_(std::move(secret)) {
    for (auto& p : plan) {
      children_.emplace_back();
      children_.back().spec = std::move(p);
    }
  }

  int run() {
    stop_gracefully();
    for (auto& c : children_) {
      if (!start(c))
        return shutdown(launch_cannot_start);
      if (c.spec.is_directory && !await_directory(c))
        return shutdown(result_);
    }
    while (!stop_requested_ && result_ == launch_ok && anything_left()) {
      wait_for_signal(milliseconds(100));
      reap();
      start_due_restarts();
    }
    return shutdown(result_);
  }

private:
  // Waits up to `timeout` for a stop signal (sets stop_requested_).
  void wait_for_signal(milliseconds timeout) {
    if (stop_requested_)
      return;
    if (int sig = wait_stop_signal(timeout)) {
      stop_requested_ = true;
      say(fmt::format("{} received, stopping", stop_signal_name(sig)));
    }
  }

  bool start(child& c) {
    std::error_code ignored; // a failure shows up as open() failing below
    std::filesystem::create_directories(
        std::filesystem::path(c.spec.log_path).parent_path(), ignored);
    int log_fd = ::open(c.spec.log_path.c_str(),
                        O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) {
      say(fmt::format("cannot open log file {} for {}: {}", c.spec.log_path,
                      c.spec.name, std::strerror(errno)));
      return false;
    }
    auto header =
        fmt::format("==== kvferry launch: starting {} (attempt {}) ====\n",
                    c.spec.name, ++c.starts);
    [[maybe_unused]] auto w = ::write(log_fd, header.data(), header.size());
    int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    std::vector<std::string> argv{exe_};
    argv.insert(argv.end(), c.spec.args.begin(), c.spec.args.end());
    spawn_spec spawn{exe_, std::move(argv), {}, null_fd, log_fd, log_fd};
    spawn.env.assign(c.spec.env.begin(), c.spec.env.end());
    if (!secret_.empty())
      spawn.env.emplace_back("KVFERRY_SECRET", secret_);
    try {
      c.process = subprocess(spawn);
    } catch (const std::exception& e) {
      say(fmt::format("{}: {}", c.spec.name, e.what()));
    }
    ::close(log_fd);
    if (null_fd >= 0)
      ::close(null_fd);
    if (c.process.pid() <= 0)
      return false;
    c.started = clock_type::now();
    c.restart_pending = false;
    say(fmt::format("started {} (pid {}), log {}", c.spec.name, c.process.pid(),
                    c.spec.log_path));
    return true;
  }

  // Workers dial the directory at start: give it time to listen first.
  bool await_directory(child& dir) {
    auto deadline = clock_type::now() + directory_start_timeout;
    while (clock_type::now() < deadline) {
      if (log_contains(dir.spec.log_path, "listening on"))
        return true;
      wait_for_signal(milliseconds(50));
      if (stop_requested_)
        return false;
      if (!dir.process.running()) {
        say(fmt::format(
            "the directory {} before listening; last lines of {}:\n{}",
            describe_exit(*dir.process.exit_status()), dir.spec.log_path,
            log_tail(dir.spec.log_path, log_tail_lines)));
        result_ = launch_directory_failed;
        return false;
      }
    }
    say(fmt::format(
        "the directory did not report 'listening on' within {} s; see {}",
        directory_start_timeout.count(), dir.spec.log_path));
    result_ = launch_directory_failed;
    return false;
  }

  bool anything_left() const {
    // The directory keeps serving the other hosts' workers after this
    // host's workers are done: only a signal or a failure ends it.
    return std::any_of(children_.begin(), children_.end(),
                       [](const child& c) { return !c.finished; });
  }

  void reap() {
    for (auto& c : children_)
      if (c.process.pid() > 0 && !c.process.running())
        on_exit(c, *c.process.exit_status());
  }

  void on_exit(child& c, int status) {
    bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (clean && !c.spec.is_directory) {
      say(fmt::format("{} exited cleanly (status 0); not restarted",
                      c.spec.name));
      c.finished = true;
      return;
    }
    say(fmt::format("{} {}; last lines of {}:\n{}", c.spec.name,
                    describe_exit(status), c.spec.log_path,
                    log_tail(c.spec.log_path, log_tail_lines)));
    auto now = clock_type::now();
    while (!c.restarts.empty() && now - c.restarts.front() >= restart_window)
      c.restarts.pop_front();
    bool may_restart = c.spec.is_directory ||
                       c.spec.restart == topo::restart_policy::on_failure;
    c.quick_failures =
        now - c.started < quick_failure ? c.quick_failures + 1 : 1;
    auto budget = topology_.launch.max_restarts;
    if (may_restart && c.restarts.size() < budget) {
      c.restarts.push_back(now);
      auto used = static_cast<std::uint32_t>(c.restarts.size());
      auto backoff = std::min<milliseconds>(
          milliseconds(std::uint64_t(topology_.launch.restart_backoff_ms)
                       << std::min(c.quick_failures - 1, 20u)),
          max_backoff);
      say(fmt::format("restarting {} in {} ms (restart {} of {}); budget: {} "
                      "restarts in any {} s",
                      c.spec.name, backoff.count(), used, budget, budget,
                      restart_window.count()));
      c.restart_pending = true;
      c.restart_at = now + backoff;
      return;
    }
    c.finished = true;
    say(fmt::format("{} failed for good ({})", c.spec.name,
                    may_restart ? fmt::format("{} restarts within {} s used up",
                                              budget, restart_window.count())
                                : std::string("restart: never")));
    result_ =
        c.spec.is_directory ? launch_directory_failed : launch_worker_failed;
  }

  void start_due_restarts() {
    auto now = clock_type::now();
    for (auto& c : children_)
      if (c.restart_pending && now >= c.restart_at && !start(c)) {
        result_ = launch_cannot_start;
        return;
      }
  }

  // Workers first (they may leave the directory cleanly), then the directory.
  int shutdown(int status) {
    auto workers = stop_group(false);
    auto directory = stop_group(true);
    say(fmt::format("stopped; {} process(es) needed SIGKILL",
                    workers + directory));
    return status;
  }

  // TERM, wait up to the grace period, then KILL. Returns how many were
  // killed. (A second stop signal kills them all at once.)
  int stop_group(bool directory) {
    auto in_group = [directory](child& c) {
      return c.spec.is_directory == directory && c.process.running();
    };
    for (auto& c : children_)
      if (in_group(c))
        c.process.signal(SIGTERM);
    auto deadline =
        clock_type::now() + milliseconds(topology_.launch.stop_grace_ms);
    while (std::any_of(children_.begin(), children_.end(), in_group) &&
           clock_type::now() < deadline)
      std::this_thread::sleep_for(milliseconds(20));
    int killed = 0;
    for (auto& c : children_)
      if (in_group(c)) {
        say(fmt::format(
            "{} (pid {}) did not stop within {} ms; sending SIGKILL",
            c.spec.name, c.process.pid(), topology_.launch.stop_grace_ms));
        c.process.kill_now();
        ++killed;
      }
    return killed;
  }

  const topo::deployment& topology_;
  std::string exe_;
  std::string secret_;
  std::vector<child> children_;
  bool stop_requested_ = false;
  int result_ = launch_ok;
};

} // namespace

int supervise(const topology::deployment& t, std::vector<process_spec> plan,
              std::string exe, std::string secret) {
  return supervisor(t, std::move(plan), std::move(exe), std::move(secret))
      .run();
}

} // namespace kvferry::app
