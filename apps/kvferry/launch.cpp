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
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <ifaddrs.h>
#include <iostream>
#include <map>
#include <memory>
#include <netdb.h>
#include <optional>
#include <set>
#include <signal.h>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include <fmt/format.h>

#include "commands.hpp"
#include "geometry_flags.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/topology.hpp"
#include "launch_supervisor.hpp"
#include "mps_daemon.hpp"
#include "pki.hpp"

namespace kvferry::app {
namespace {

namespace topo = kvferry::topology;
using clock_type = std::chrono::steady_clock;
using std::chrono::milliseconds;

struct launch_command {
  std::string file;
  std::string host;
  std::string log_dir;
  bool dry_run = false;
  bool allow_missing_plugins = false;
  std::string mps = "auto"; // auto, on or off
};

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
            "--mode", to_string(t.transfer.mode),
            "--chunk-bytes", std::to_string(t.transfer.chunk_bytes),
            "--comms-per-peer", std::to_string(t.transfer.comms_per_peer),
            "--staging-slots", std::to_string(t.transfer.staging_slots),
            "--timeout-ms", std::to_string(t.transfer.timeout_ms)};
  // clang-format on
  auto geometry = geometry_args(t.model);
  p.args.insert(p.args.end(), geometry.begin(), geometry.end());
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
  return supervise(t, std::move(plan), exe, *secret);
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
