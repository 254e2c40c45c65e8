// `kvferry launch`'s supervisor: runs this host's processes of a deployment
// as children, restarts them within a budget and stops them on a signal.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "kvferry/runtime/topology.hpp"

namespace kvferry::app {

enum launch_status : int {
  launch_ok = 0,
  launch_cannot_start = 1,
  launch_invalid_topology = 3,
  launch_worker_failed = 4,
  launch_directory_failed = 5,
  launch_unknown_host = 6,
};

/// A line on stderr, prefixed "kvferry launch: ".
void say(const std::string& line);

/// One child process of the plan.
struct process_spec {
  std::string name; // "directory" or the worker's name; names the log file
  bool is_directory = false;
  std::vector<std::string> args; // after the executable
  std::map<std::string, std::string> env;
  topology::restart_policy restart = topology::restart_policy::on_failure;
  std::string log_path;
};

/// Starts `plan` (the directory first, waiting for it to listen), then
/// supervises until a stop signal or a failure for good; returns a
/// launch_status. Children run `exe` with the secret in $KVFERRY_SECRET.
int supervise(const topology::deployment& t, std::vector<process_spec> plan,
              std::string exe, std::string secret);

} // namespace kvferry::app
