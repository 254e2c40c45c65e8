// `kvferry status FILE`: asks the deployment's directory who is registered
// and prints one row per worker of the file (up or DOWN) plus any registered
// worker the file does not name. Exit status: 0 every worker up; 1 directory
// unreachable; 3 invalid file; 4 some worker of the file is not registered.
// --pools also asks each decode worker for its KV block pool: a pool whose
// blocks are neither free nor lent once traffic has stopped has leaked.
#include <algorithm>
#include <chrono>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <caf/all.hpp>
#include <caf/io/middleman.hpp>
#include <fmt/format.h>

#include "commands.hpp"
#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/directory.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "kvferry/runtime/topology.hpp"
#include "pki.hpp"

namespace kvferry::app {
namespace {

namespace topo = kvferry::topology;

struct status_command {
  std::string file;
  std::size_t timeout_ms = 3000;
  runtime::tls_options tls; // default: the topology's tls section
  bool pools = false;
};

struct row {
  std::string name, state, role, host, gpu, plugin, lease;
};

// The directory may report how long ago a worker last renewed its lease as
// the attribute "lease_age_ms"; "-" where it does not.
std::string lease_age(const worker_info& info) {
  auto it = info.attributes.find("lease_age_ms");
  return it == info.attributes.end() ? "-" : it->second + " ms";
}

row registered_row(const worker_info& info, const std::string& state) {
  return {info.name,
          state,
          is_node(info) ? node_kind : to_string(info.role),
          info.host,
          info.gpu < 0 ? "none" : std::to_string(info.gpu),
          info.plugin,
          lease_age(info)};
}

row missing_row(const topo::worker_spec& w) {
  return {w.name,
          "DOWN",
          topo::to_string(w.role),
          w.host,
          w.gpu ? std::to_string(*w.gpu) : "none",
          w.plugin,
          "-"};
}

void print_table(const std::vector<row>& rows) {
  std::vector<row> all{
      {"NAME", "STATE", "ROLE", "HOST", "GPU", "PLUGIN", "LEASE AGE"}};
  all.insert(all.end(), rows.begin(), rows.end());
  std::size_t w[7] = {};
  for (auto& r : all) {
    const std::string* cells[7] = {&r.name, &r.state,  &r.role, &r.host,
                                   &r.gpu,  &r.plugin, &r.lease};
    for (int i = 0; i < 7; ++i)
      w[i] = std::max(w[i], cells[i]->size());
  }
  for (auto& r : all)
    std::cout << fmt::format(
        "{:<{}}  {:<{}}  {:<{}}  {:<{}}  {:<{}}  {:<{}}  {}\n", r.name, w[0],
        r.state, w[1], r.role, w[2], r.host, w[3], r.gpu, w[4], r.plugin, w[5],
        r.lease);
}

// One line per decode worker: its pool, free, lent to producers, and the
// rest (in requests now; at rest, leaked). Returns how many did not answer.
int print_pools(caf::actor_system& sys, const std::vector<worker_info>& all,
                caf::timespan timeout) {
  caf::scoped_actor self{sys};
  int silent = 0;
  for (auto& w : all) {
    if (w.role != worker_role::decode || !w.app)
      continue;
    self->request(caf::actor_cast<consumer_actor>(w.app), timeout,
                  proto::stats_atom::value)
        .receive(
            [&](const proto::consumer_stats& s) {
              auto taken =
                  s.pool_blocks -
                  std::min(s.pool_blocks, s.free_blocks + s.lent_blocks);
              std::cout << fmt::format(
                  "pool {}: {} blocks, {} free, {} lent to producers, {} in "
                  "requests\n",
                  w.name, s.pool_blocks, s.free_blocks, s.lent_blocks, taken);
            },
            [&](const caf::error& err) {
              ++silent;
              std::cout << fmt::format("pool {}: no answer ({})\n", w.name,
                                       render(err));
            });
  }
  return silent;
}

int run_status(const status_command& cmd) {
  topo::load_options options;
  options.allow_missing_plugins = true; // status does not load plugins
  auto loaded = topo::load_file(cmd.file, options);
  if (!loaded.ok()) {
    std::cerr << loaded.report() << "kvferry status: " << cmd.file
              << " is invalid\n";
    return 3;
  }
  auto& t = *loaded.topology;
  auto* dir_host = t.find_host(t.directory.host);
  auto address = dir_host ? dir_host->address : t.directory.host;
  runtime::runtime_options runtime;
  runtime.log_level = "warn";
  runtime::system_config cfg{runtime};
  auto tls = tls_for(t);
  if (!cmd.tls.dir.empty())
    tls.dir = cmd.tls.dir;
  tls.insecure_plaintext |= cmd.tls.insecure_plaintext;
  if (auto err = cfg.secure(tls, client_identity)) {
    std::cerr << "kvferry status: " << render(err) << "\n";
    return 1;
  }
  caf::actor_system sys{cfg};
  auto timeout = std::chrono::milliseconds(cmd.timeout_ms);
  auto dir = connect_directory(sys, address, t.directory.port, timeout);
  if (!dir) {
    std::cerr << "kvferry status: " << render(dir.error()) << "\n";
    return 1;
  }
  caf::scoped_actor self{sys};
  std::vector<worker_info> registered;
  caf::error failure;
  self->request(*dir, timeout, list_atom::value)
      .receive(
          [&](std::vector<worker_info>& list) { registered = std::move(list); },
          [&](caf::error& err) { failure = std::move(err); });
  if (failure) {
    std::cerr << fmt::format(
        "kvferry status: the directory at {}:{} did not answer 'list': {}\n",
        address, t.directory.port, render(failure));
    return 1;
  }
  std::map<std::string, const worker_info*> by_name;
  for (auto& info : registered)
    by_name[info.name] = &info;
  std::vector<row> rows;
  int down = 0;
  for (auto& w : t.workers) {
    auto it = by_name.find(w.name);
    if (it == by_name.end()) {
      rows.push_back(missing_row(w));
      ++down;
      continue;
    }
    rows.push_back(registered_row(*it->second, "up"));
    by_name.erase(it);
  }
  for (auto& [name, info] : by_name)
    rows.push_back(registered_row(*info, "up (not in file)"));
  std::cout << fmt::format(
      "deployment '{}': directory {}:{}, {} of {} worker(s) up\n", t.name,
      address, t.directory.port, t.workers.size() - down, t.workers.size());
  print_table(rows);
  if (cmd.pools && print_pools(sys, registered, timeout) > 0)
    ++down;
  return down == 0 ? 0 : 4;
}

} // namespace

void add_status(CLI::App& root, int& exit_code) {
  auto cmd = std::make_shared<status_command>();
  auto* sub =
      root.add_subcommand("status", "Ask a deployment's directory who is up");
  sub->add_option("file", cmd->file, "topology YAML of the deployment")
      ->required();
  sub->add_option("--timeout-ms", cmd->timeout_ms,
                  "how long to try to reach the directory")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{600000}));
  runtime::add_tls_options(*sub, cmd->tls);
  sub->add_flag("--pools", cmd->pools,
                "also ask each decode worker for its KV block pool (free, "
                "lent, in requests)");
  sub->callback([cmd, &exit_code] { exit_code = run_status(*cmd); });
}

} // namespace kvferry::app
