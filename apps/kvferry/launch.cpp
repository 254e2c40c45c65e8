// `kvferry launch FILE`: starts this host's part of a deployment (the
// directory if the file puts it here, and this host's workers) as child
// processes, supervises them, and stops them cleanly on SIGINT/SIGTERM.
// Run on every host with the same file, it forms one deployment.
//
// Each child runs this same binary (`kvferry directory ...`, `kvferry worker
// ...`) in its own process group, with stdout and stderr appended to
// <log_dir>/<name>.log, the file's plugin_env in its environment and the
// control secret in $KVFERRY_SECRET (never on a command line, where `ps`
// shows it). The supervisor is one thread: it waits for signals with a short
// timeout, reaps children, and schedules restarts with exponential backoff.
//
// Exit status (docs/deploy.md): 0 clean stop; 1 could not start (log dir,
// secret, exec); 3 invalid topology file; 4 a worker failed for good;
// 5 the directory failed for good; 6 this machine is none of the file's
// hosts (pass --host).
#include <algorithm>
#include <arpa/inet.h>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <ifaddrs.h>
#include <iostream>
#include <map>
#include <memory>
#include <netdb.h>
#include <set>
#include <signal.h>
#include <string>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include <fmt/format.h>

#include "commands.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/topology.hpp"
#include "mps_daemon.hpp"
#include "pki.hpp"

namespace kvferry::app {
namespace {

namespace topo = kvferry::topology;
using clock_type = std::chrono::steady_clock;
using std::chrono::milliseconds;

enum launch_status : int {
  launch_ok = 0,
  launch_cannot_start = 1,
  launch_invalid_topology = 3,
  launch_worker_failed = 4,
  launch_directory_failed = 5,
  launch_unknown_host = 6,
};

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

struct launch_command {
  std::string file;
  std::string host;
  std::string log_dir;
  bool dry_run = false;
  bool allow_missing_plugins = false;
  std::string mps = "auto"; // auto, on or off
};

void say(const std::string& line) {
  std::cerr << "kvferry launch: " << line << std::endl;
}

// ---- which host am I

std::set<std::string> local_addresses() {
  std::set<std::string> result;
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0)
    return result;
  for (auto* it = list; it != nullptr; it = it->ifa_next) {
    if (it->ifa_addr == nullptr || it->ifa_addr->sa_family != AF_INET)
      continue;
    char text[INET_ADDRSTRLEN];
    auto* addr = reinterpret_cast<sockaddr_in*>(it->ifa_addr);
    if (::inet_ntop(AF_INET, &addr->sin_addr, text, sizeof text))
      result.insert(text);
  }
  ::freeifaddrs(list);
  return result;
}

std::string local_hostname_or_empty() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0)
    return {};
  return name;
}

// Resolves a host's address to IPv4 text (it may be a DNS name).
std::string resolve_ipv4(const std::string& address) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  addrinfo* found = nullptr;
  if (::getaddrinfo(address.c_str(), nullptr, &hints, &found) != 0 ||
      found == nullptr)
    return {};
  char text[INET_ADDRSTRLEN] = {};
  ::inet_ntop(AF_INET,
              &reinterpret_cast<sockaddr_in*>(found->ai_addr)->sin_addr, text,
              sizeof text);
  ::freeaddrinfo(found);
  return text;
}

// The hosts entries this machine could be: by hostname, else by address.
std::vector<std::string> candidate_hosts(const topo::deployment& t) {
  std::vector<std::string> by_name, by_address;
  auto hostname = local_hostname_or_empty();
  auto short_name = hostname.substr(0, hostname.find('.'));
  auto addresses = local_addresses();
  for (auto& host : t.hosts) {
    if (!hostname.empty() &&
        (host.name == hostname || host.name == short_name ||
         host.address == hostname || host.address == short_name))
      by_name.push_back(host.name);
    else if (addresses.count(host.address) ||
             addresses.count(resolve_ipv4(host.address)))
      by_address.push_back(host.name);
  }
  return by_name.empty() ? by_address : by_name;
}

// Fills `host` or explains why not; returns a launch_status.
int identify_host(const topo::deployment& t, const launch_command& cmd,
                  std::string& host) {
  if (!cmd.host.empty()) {
    if (t.find_host(cmd.host) != nullptr) {
      host = cmd.host;
      return launch_ok;
    }
    std::vector<std::string> names;
    for (auto& h : t.hosts)
      names.push_back(h.name);
    say(fmt::format("--host '{}' is not in {} (hosts: {})", cmd.host,
                    t.source_file, fmt::join(names, ", ")));
    return launch_unknown_host;
  }
  auto candidates = candidate_hosts(t);
  if (candidates.size() == 1) {
    host = candidates.front();
    return launch_ok;
  }
  if (candidates.empty())
    say(fmt::format(
        "this machine ({}) matches none of the hosts in {} by name or address; "
        "pass --host NAME",
        local_hostname_or_empty(), t.source_file));
  else
    say(fmt::format(
        "this machine matches several hosts in {} ({}); pass --host NAME",
        t.source_file, fmt::join(candidates, ", ")));
  return launch_unknown_host;
}

// ---- what to start

struct process_spec {
  std::string name; // "directory" or the worker's name; names the log file
  bool is_directory = false;
  std::vector<std::string> args; // after the executable
  std::map<std::string, std::string> env;
  topo::restart_policy restart = topo::restart_policy::on_failure;
  std::string log_path;
};

std::string self_executable() {
  if (const char* exe = std::getenv("KVFERRY_LAUNCH_EXE"); exe && *exe)
    return exe;
  char buf[4096];
  auto n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n))
               : std::string("kvferry");
}

process_spec directory_process(const topo::deployment& t,
                               const std::string& host) {
  process_spec p;
  p.name = "directory";
  p.is_directory = true;
  p.args = {"directory", "--bind", t.bind_address_for(host), "--port",
            std::to_string(t.directory.port)};
  return p;
}

process_spec worker_process(const topo::deployment& t,
                            const topo::worker_spec& w) {
  process_spec p;
  p.name = w.name;
  p.restart = w.restart;
  // One flag and its value per line.
  // clang-format off
  p.args = {"worker",
            "--name", w.name,
            "--role", to_string(w.role),
            "--directory", t.directory_endpoint(),
            "--bind", t.bind_address_for(w.host),
            "--gpu", w.gpu ? std::to_string(*w.gpu) : "none",
            "--plugin", w.plugin_file.empty() ? w.plugin : w.plugin_file,
            "--pool-blocks", std::to_string(w.pool_blocks),
            "--layers", std::to_string(t.model.layers),
            "--kv-heads", std::to_string(t.model.kv_heads),
            "--head-dim", std::to_string(t.model.head_dim),
            "--dtype", t.model.dtype,
            "--block-tokens", std::to_string(t.model.block_tokens),
            "--mode", to_string(t.transfer.mode),
            "--chunk-bytes", std::to_string(t.transfer.chunk_bytes),
            "--comms-per-peer", std::to_string(t.transfer.comms_per_peer),
            "--staging-slots", std::to_string(t.transfer.staging_slots),
            "--timeout-ms", std::to_string(t.transfer.timeout_ms)};
  // clang-format on
  if (t.transfer.layerwise)
    p.args.push_back("--layerwise");
  p.env = w.plugin_env;
  // The worker has no flags for these yet; the environment carries them
  // (see docs/deploy.md).
  if (w.metrics_port != 0)
    p.env["KVFERRY_METRICS_PORT"] = std::to_string(w.metrics_port);
  if (!w.devices.empty())
    p.env["KVFERRY_NET_DEVICES"] = fmt::format("{}", fmt::join(w.devices, ","));
  return p;
}

std::vector<process_spec> plan_for_host(const topo::deployment& t,
                                        const std::string& host,
                                        const std::string& log_dir) {
  std::vector<process_spec> plan;
  if (t.directory.host == host)
    plan.push_back(directory_process(t, host));
  for (auto* w : t.workers_on(host))
    plan.push_back(worker_process(t, *w));
  auto tls = tls_args(tls_for(t));
  for (auto& p : plan) {
    p.log_path = log_dir + "/" + p.name + ".log";
    p.args.insert(p.args.end(), tls.begin(), tls.end());
  }
  return plan;
}

// Quotes a word for a POSIX shell when it needs it, so that a dry-run line
// can be pasted into a terminal.
std::string shell_word(const std::string& word) {
  bool plain =
      !word.empty() && std::all_of(word.begin(), word.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) ||
               std::strchr("_./:,=@%+-", c) != nullptr;
      });
  if (plain)
    return word;
  std::string quoted = "'";
  for (char c : word)
    quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

std::string secret_note(const topo::control_spec& control) {
  if (!control.secret_env.empty())
    return "KVFERRY_SECRET=<from $" + control.secret_env + ">";
  if (!control.secret_file.empty())
    return "KVFERRY_SECRET=<from " + control.secret_file + ">";
  if (!control.secret.empty())
    return "KVFERRY_SECRET=<from the file>";
  return {};
}

void print_plan(const topo::deployment& t, const std::string& host,
                const std::vector<process_spec>& plan, const std::string& exe) {
  auto* h = t.find_host(host);
  std::cout << fmt::format("host '{}' ({}): {} process(es)\n", host,
                           h ? h->address : "?", plan.size());
  auto secret = secret_note(t.control);
  for (auto& p : plan) {
    std::cout << fmt::format("  {}:\n    ", p.name);
    for (auto& [name, value] : p.env)
      std::cout << name << "=" << shell_word(value) << " ";
    if (!secret.empty())
      std::cout << secret << " ";
    std::cout << shell_word(exe);
    for (auto& arg : p.args)
      std::cout << " " << shell_word(arg);
    std::cout << fmt::format("\n    log: {}  restart: {}\n", p.log_path,
                             p.is_directory ? "on-failure"
                                            : to_string(p.restart));
  }
}

// ---- running and watching children

std::string describe_status(int status) {
  if (WIFEXITED(status))
    return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return fmt::format("was killed by signal {} ({}){}", WTERMSIG(status),
                       ::strsignal(WTERMSIG(status)),
                       WCOREDUMP(status) ? ", core dumped" : "");
  return fmt::format("changed state ({:#x})", status);
}

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
  pid_t pid = -1;
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
    block_signals();
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
  void block_signals() {
    sigemptyset(&signals_);
    sigaddset(&signals_, SIGINT);
    sigaddset(&signals_, SIGTERM);
    sigaddset(&signals_, SIGHUP); // the terminal went away: stop, don't orphan
    sigaddset(&signals_, SIGCHLD);
    ::sigprocmask(SIG_BLOCK, &signals_, &old_mask_);
  }

  // Waits up to `timeout` for INT/TERM (sets stop_requested_) or CHLD.
  void wait_for_signal(milliseconds timeout) {
    timespec ts{static_cast<time_t>(timeout.count() / 1000),
                static_cast<long>((timeout.count() % 1000) * 1000000)};
    int sig = ::sigtimedwait(&signals_, nullptr, &ts);
    if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP) {
      if (stop_requested_)
        escalate_ = true; // a second ^C: no more grace
      stop_requested_ = true;
      say(fmt::format("SIG{} received, stopping", ::sigabbrev_np(sig)));
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
    pid_t supervisor_pid = ::getpid();
    pid_t pid = ::fork();
    if (pid < 0) {
      say(fmt::format("fork for {} failed: {}", c.spec.name,
                      std::strerror(errno)));
      ::close(log_fd);
      return false;
    }
    if (pid == 0)
      exec_child(c.spec, log_fd, supervisor_pid); // does not return
    ::setpgid(pid, pid); // also here: a stop right after fork must reach it
    ::close(log_fd);
    c.pid = pid;
    c.started = clock_type::now();
    c.restart_pending = false;
    say(fmt::format("started {} (pid {}), log {}", c.spec.name, pid,
                    c.spec.log_path));
    return true;
  }

  [[noreturn]] void exec_child(const process_spec& spec, int log_fd,
                               pid_t supervisor_pid) {
    // Own process group: a terminal's ^C reaches only the supervisor, which
    // then stops the children in order; and kill(-pgid) reaches grandchildren.
    ::setpgid(0, 0);
    // If the supervisor itself is killed (SIGKILL, OOM), its children get
    // SIGTERM instead of running on unsupervised.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != supervisor_pid)
      ::_exit(128 + SIGTERM);
    ::sigprocmask(SIG_SETMASK, &old_mask_, nullptr);
    ::dup2(log_fd, STDOUT_FILENO);
    ::dup2(log_fd, STDERR_FILENO);
    int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd >= 0)
      ::dup2(null_fd, STDIN_FILENO);
    for (auto& [name, value] : spec.env)
      ::setenv(name.c_str(), value.c_str(), 1);
    if (!secret_.empty())
      ::setenv("KVFERRY_SECRET", secret_.c_str(), 1);
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(exe_.c_str()));
    for (auto& arg : spec.args)
      argv.push_back(const_cast<char*>(arg.c_str()));
    argv.push_back(nullptr);
    ::execv(exe_.c_str(), argv.data());
    auto msg = fmt::format("kvferry launch: cannot execute {}: {}\n", exe_,
                           std::strerror(errno));
    [[maybe_unused]] auto w = ::write(STDERR_FILENO, msg.data(), msg.size());
    ::_exit(127);
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
      int status = 0;
      if (::waitpid(dir.pid, &status, WNOHANG) == dir.pid) {
        dir.pid = -1;
        say(fmt::format(
            "the directory {} before listening; last lines of {}:\n{}",
            describe_status(status), dir.spec.log_path,
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
    int status = 0;
    pid_t pid;
    while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0)
      for (auto& c : children_)
        if (c.pid == pid)
          on_exit(c, status);
  }

  void on_exit(child& c, int status) {
    c.pid = -1;
    if (stopping_)
      return;
    bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (clean && !c.spec.is_directory) {
      say(fmt::format("{} exited cleanly (status 0); not restarted",
                      c.spec.name));
      c.finished = true;
      return;
    }
    say(fmt::format("{} {}; last lines of {}:\n{}", c.spec.name,
                    describe_status(status), c.spec.log_path,
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
    stopping_ = true;
    auto workers = stop_group(false);
    auto directory = stop_group(true);
    say(fmt::format("stopped; {} process(es) needed SIGKILL",
                    workers + directory));
    ::sigprocmask(SIG_SETMASK, &old_mask_, nullptr);
    return status;
  }

  // TERM, wait up to the grace period, then KILL. Returns how many were killed.
  int stop_group(bool directory) {
    auto in_group = [directory](const child& c) {
      return c.spec.is_directory == directory && c.pid > 0;
    };
    for (auto& c : children_)
      if (in_group(c))
        ::kill(-c.pid, SIGTERM);
    auto deadline =
        clock_type::now() + milliseconds(topology_.launch.stop_grace_ms);
    while (std::any_of(children_.begin(), children_.end(), in_group) &&
           !escalate_ && clock_type::now() < deadline) {
      wait_for_signal(milliseconds(20));
      reap();
    }
    int killed = 0;
    for (auto& c : children_)
      if (in_group(c)) {
        say(fmt::format(
            "{} (pid {}) did not stop within {} ms; sending SIGKILL",
            c.spec.name, c.pid, topology_.launch.stop_grace_ms));
        ::kill(-c.pid, SIGKILL);
        int status = 0;
        ::waitpid(c.pid, &status, 0);
        c.pid = -1;
        ++killed;
      }
    return killed;
  }

  const topo::deployment& topology_;
  std::string exe_;
  std::string secret_;
  std::vector<child> children_;
  sigset_t signals_{};
  sigset_t old_mask_{};
  bool stop_requested_ = false;
  bool escalate_ = false;
  bool stopping_ = false;
  int result_ = launch_ok;
};

// ---- the command

// Two workers of this host on one GPU (--mps auto), or any with --mps on:
// a private MPS daemon in `daemon` and its variables in every GPU worker's
// environment (docs/deploy.md). 0, or launch's exit code.
int start_mps_for_workers(const topo::deployment& t, const std::string& host,
                          const launch_command& cmd,
                          std::vector<process_spec>& plan,
                          std::optional<mps_daemon>& daemon) {
  const auto mode = parse_mps_mode(cmd.mps);
  if (!mode) {
    say(fmt::format("--mps '{}': expected auto, on or off", cmd.mps));
    return launch_cannot_start;
  }
  std::vector<std::optional<int>> gpus;
  for (auto* w : t.workers_on(host))
    gpus.push_back(w->gpu);
  mps_facts facts;
  facts.mode = *mode;
  facts.shared_gpu = shared_gpu_of(gpus);
  if (const char* pipe = std::getenv("CUDA_MPS_PIPE_DIRECTORY"))
    facts.callers_pipe_directory = pipe;
  facts.control_found = !find_on_path(mps_daemon::control_program).empty();
  auto setup = set_up_mps(facts, daemon);
  for (auto& line : setup.lines)
    say(line);
  for (auto& p : plan)
    if (auto* w = t.find_worker(p.name); !p.is_directory && w && w->gpu)
      for (auto& [name, value] : setup.env)
        p.env[name] = value;
  return setup.exit_code == 0 ? launch_ok : launch_cannot_start;
}

int run_launch(const launch_command& cmd) {
  topo::load_options options;
  options.allow_missing_plugins = cmd.allow_missing_plugins;
  auto loaded = topo::load_file(cmd.file, options);
  std::cerr << loaded.report();
  if (!loaded.ok()) {
    say(fmt::format("{} is invalid ({} error(s)); nothing started", cmd.file,
                    loaded.errors.size()));
    return launch_invalid_topology;
  }
  auto& t = *loaded.topology;
  auto log_dir = cmd.log_dir.empty() ? t.launch.log_dir : cmd.log_dir;
  auto exe = self_executable();
  std::string host;
  int identified = identify_host(t, cmd, host);
  if (cmd.dry_run) {
    std::cout << fmt::format("deployment '{}' from {}: directory at {}\n",
                             t.name, cmd.file, t.directory_endpoint());
    if (identified == launch_ok) {
      print_plan(t, host, plan_for_host(t, host, log_dir), exe);
      return launch_ok;
    }
    std::cout << "(this machine is none of the hosts; the plan of every host "
                 "follows)\n";
    for (auto& h : t.hosts)
      print_plan(t, h.name, plan_for_host(t, h.name, log_dir), exe);
    return launch_ok;
  }
  if (identified != launch_ok)
    return identified;
  auto plan = plan_for_host(t, host, log_dir);
  if (plan.empty()) {
    say(fmt::format("host '{}' has nothing to run in {}", host, cmd.file));
    return launch_ok;
  }
  std::string why;
  auto secret = topo::read_secret(t.control, why);
  if (!secret) {
    say(why);
    return launch_cannot_start;
  }
  std::vector<std::string> names;
  for (auto& p : plan)
    names.push_back(p.name);
  auto tls_note = prepare_launch_tls(t, names);
  if (!tls_note) {
    say(render(tls_note.error()));
    return launch_cannot_start;
  }
  say(*tls_note);
  say(fmt::format("deployment '{}' on host '{}': {} process(es), logs in {}",
                  t.name, host, plan.size(), log_dir));
  // Workers sharing a GPU run under a private MPS daemon, which outlives the
  // supervisor: destroyed after it, it stops once the workers have.
  std::optional<mps_daemon> mps;
  if (int code = start_mps_for_workers(t, host, cmd, plan, mps))
    return code;
  return supervisor(t, std::move(plan), exe, *secret).run();
}

} // namespace

void add_status(CLI::App& root, int& exit_code); // status.cpp

void add_launch(CLI::App& root, int& exit_code) {
  auto cmd = std::make_shared<launch_command>();
  auto* sub = root.add_subcommand(
      "launch",
      "Start and supervise this host's part of a deployment (topology file)");
  sub->add_option("file", cmd->file, "topology YAML (docs/topology.md)")
      ->required();
  sub->add_option("--host", cmd->host,
                  "which of the file's hosts this machine is (default: by "
                  "hostname/address)");
  sub->add_flag("--dry-run", cmd->dry_run,
                "validate and print what would start; start nothing");
  sub->add_flag("--allow-missing-plugins", cmd->allow_missing_plugins,
                "a plugin not found here is a warning (checking a file for "
                "other machines)");
  sub->add_option("--log-dir", cmd->log_dir,
                  "override the file's launch.log_dir");
  sub->add_option("--mps", cmd->mps,
                  "auto: a private MPS daemon when two workers of this host "
                  "share a GPU (stopped with launch); on: always; off: never")
      ->capture_default_str();
  sub->callback([cmd, &exit_code] { exit_code = run_launch(*cmd); });
  add_status(root, exit_code);
}

} // namespace kvferry::app
