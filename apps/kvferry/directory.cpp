// `kvferry directory`: runs the deployment's directory actor, published on a
// TCP port through CAF's middleman (mutual TLS unless --insecure-plaintext),
// until SIGINT/SIGTERM.
//
// `kvferry directory --probe HOST:PORT [--count N]` instead measures the
// control-plane round trip to a running directory (N lookups) and prints
// percentiles: the cost every cross-process request pays.
#include "kvferry/actors/directory.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <signal.h>
#include <vector>

#include <caf/all.hpp>
#include <caf/io/middleman.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "commands.hpp"
#include "kvferry/actors/actors.hpp"
#include "kvferry/runtime/logging.hpp"
#include "kvferry/runtime/process_limits.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "metrics_endpoint.hpp"
#include "percentile.hpp"
#include "stop_signals.hpp"

namespace kvferry::app {
namespace {

struct directory_command {
  std::string bind = "0.0.0.0";
  uint16_t port = 0;
  std::string secret;
  size_t lease_ms = 10000;
  std::string probe;
  size_t count = 2000;
  runtime::runtime_options runtime;
};

int serve(const directory_command& cmd) {
  stop_gracefully();
  runtime::raise_open_files_limit("directory");
  runtime::system_config cfg{cmd.runtime};
  if (auto err = cfg.secure(cmd.runtime.tls, "directory")) {
    spdlog::error("directory: {}", render(err));
    return 1;
  }
  auto exporter = start_metrics_endpoint("directory");
  if (!exporter)
    return 1;
  caf::actor_system sys{cfg};
  directory_options options;
  options.secret = cmd.secret;
  options.lease = std::chrono::milliseconds(cmd.lease_ms);
  auto dir = spawn_directory(sys, options);
  auto port = runtime::publish_control(dir, cmd.port, cmd.bind);
  if (!port) {
    spdlog::error("directory: cannot listen on {}:{}: {}", cmd.bind, cmd.port,
                  render(port.error()));
    caf::anon_send_exit(dir, caf::exit_reason::user_shutdown);
    return 1;
  }
  // A parent process (launch, demo, tests) reads this line to find the port.
  std::cout << "kvferry directory listening on " << cmd.bind << ":" << *port
            << std::endl;
  spdlog::info("directory: lease {} ms, scheduler {}, control plane over {}",
               cmd.lease_ms, cmd.runtime.scheduler_policy,
               runtime::tls_enabled(sys) ? "mutual TLS" : "PLAIN TCP");
  int sig = 0;
  while (sig == 0)
    sig = wait_stop_signal(std::chrono::seconds(1));
  spdlog::info("directory: {} received, shutting down", stop_signal_name(sig));
  runtime::unpublish_control(sys, dir.address(), *port);
  caf::anon_send_exit(dir, caf::exit_reason::user_shutdown);
  return 0;
}

struct probe_result {
  std::vector<double> micros;
  int failures = 0;
};

// Sends `total` lookups one after another from an event-based actor (as a
// worker's actors would), timing each; tells `done` when finished.
void run_pings(caf::event_based_actor* self, directory_actor dir,
               size_t remaining, probe_result* out, caf::actor done) {
  if (remaining == 0) {
    self->send(done, caf::ok_atom::value);
    self->quit();
    return;
  }
  auto start = std::chrono::steady_clock::now();
  auto record = [=](bool answered) {
    out->micros.push_back(std::chrono::duration<double, std::micro>(
                              std::chrono::steady_clock::now() - start)
                              .count());
    if (!answered)
      ++out->failures;
    run_pings(self, dir, remaining - 1, out, done);
  };
  self->request(dir, std::chrono::seconds(5), lookup_atom::value,
                std::string{"probe-no-such-worker"})
      .then([=](const worker_info&) { record(true); },
            [=](const caf::error& err) { record(is(err, ec::not_found)); });
}

// Measures request/response round trips to a remote directory: lookups of a
// name that does not exist (the reply is a small error), so the directory's
// contents don't change the result. The first 100 warm up and are dropped.
int probe(const directory_command& cmd) {
  std::string host;
  uint16_t port = 0;
  if (auto err = parse_host_port(cmd.probe, host, port)) {
    std::cerr << "kvferry directory --probe: " << render(err) << "\n";
    return 2;
  }
  runtime::system_config cfg{cmd.runtime};
  if (auto err = cfg.secure(cmd.runtime.tls, "client")) {
    std::cerr << "kvferry directory --probe: " << render(err) << "\n";
    return 2;
  }
  caf::actor_system sys{cfg};
  auto dir = connect_directory(sys, host, port, std::chrono::seconds(10));
  if (!dir) {
    std::cerr << "kvferry directory --probe: " << render(dir.error()) << "\n";
    return 1;
  }
  constexpr size_t warmup = 100;
  probe_result result;
  result.micros.reserve(cmd.count + warmup);
  caf::scoped_actor waiter{sys};
  sys.spawn(run_pings, *dir, cmd.count + warmup, &result,
            caf::actor_cast<caf::actor>(waiter));
  bool finished = false;
  // 5 s per request at most, plus slack: never waits forever.
  auto limit =
      std::chrono::seconds(10 + 5 * static_cast<long>(cmd.count + warmup));
  waiter->receive([&](caf::ok_atom) { finished = true; },
                  caf::after(limit) >> [] {});
  if (!finished) {
    std::cerr << "kvferry directory --probe: timed out\n";
    return 1;
  }
  std::vector<double> micros(result.micros.begin() + warmup,
                             result.micros.end());
  std::sort(micros.begin(), micros.end());
  fmt::print("directory round trip to {} ({} requests, scheduler {}): "
             "p50 {:.1f} us, p90 {:.1f} us, p99 {:.1f} us, max {:.1f} us, "
             "failures {}\n",
             cmd.probe, micros.size(), cmd.runtime.scheduler_policy,
             percentile(micros, 0.5), percentile(micros, 0.9),
             percentile(micros, 0.99), micros.back(), result.failures);
  return result.failures == 0 ? 0 : 1;
}

} // namespace

void add_directory(CLI::App& root, int& exit_code) {
  auto cmd = std::make_shared<directory_command>();
  auto* sub = root.add_subcommand(
      "directory", "Run the deployment's directory (or --probe a running one)");
  sub->add_option("--bind", cmd->bind, "address to listen on")
      ->capture_default_str();
  sub->add_option("--port", cmd->port, "TCP port; 0 picks a free one")
      ->capture_default_str();
  sub->add_option("--secret", cmd->secret,
                  "deployment secret workers must present (default: "
                  "$KVFERRY_SECRET; none = anyone may register)");
  auto* lease = sub->add_option(
      "--lease-ms", cmd->lease_ms,
      "a worker that does not renew within this is dropped (default: "
      "$KVFERRY_LEASE_MS, else 10000)");
  lease->capture_default_str()->check(CLI::Range(size_t{1}, size_t{3600000}));
  sub->add_option("--probe", cmd->probe,
                  "HOST:PORT: measure round trips to a running directory");
  sub->add_option("--count", cmd->count, "round trips to measure (--probe)")
      ->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{10000000}));
  runtime::add_runtime_options(*sub, cmd->runtime);
  sub->callback([cmd, lease, &exit_code] {
    if (cmd->secret.empty())
      if (const char* env = std::getenv("KVFERRY_SECRET"))
        cmd->secret = env;
    // Launch passes its environment on: tests and soaks shorten leases so.
    if (lease->count() == 0)
      if (const char* env = std::getenv("KVFERRY_LEASE_MS")) {
        char* end = nullptr;
        auto ms = std::strtoul(env, &end, 10);
        if (*env == '\0' || *end != '\0' || ms == 0 || ms > 3600000) {
          std::cerr << "kvferry directory: KVFERRY_LEASE_MS='" << env
                    << "': expected 1..3600000 ms\n";
          exit_code = 2;
          return;
        }
        cmd->lease_ms = ms;
      }
    if (auto err = runtime::setup_logging(cmd->runtime.log_level,
                                          cmd->runtime.log_file, "directory")) {
      std::cerr << "kvferry directory: " << render(err) << "\n";
      exit_code = 2;
      return;
    }
    exit_code = cmd->probe.empty() ? serve(*cmd) : probe(*cmd);
  });
}

} // namespace kvferry::app
