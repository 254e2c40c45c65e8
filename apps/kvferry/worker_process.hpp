// What a process that hosts a worker sets up besides the worker itself:
// `kvferry worker`, and `kvferry demo`, whose router shares its process with
// the decode worker by default.
#pragma once

#include <cstdlib>
#include <string>

#include "kvferry/runtime/process_limits.hpp"
#include "kvferry/runtime/system_config.hpp"

namespace kvferry::app {

// kvsock listens where the control plane does (not on the first non-loopback
// interface) unless the environment (the topology's plugin_env) names the
// data interface. Before any thread starts: setenv is not thread-safe.
inline void default_data_address(const std::string& bind) {
  if (bind == "0.0.0.0" || std::getenv("KVSOCK_IFADDR") != nullptr ||
      std::getenv("NCCL_SOCKET_IFNAME") != nullptr)
    return;
  ::setenv("KVSOCK_IFADDR", bind.c_str(), 0);
}

// The process-wide part of hosting worker `name` that binds to `bind`: the
// open-files limit (each comm is a socket) and kvsock's data address. Call
// before the actor system starts.
inline void prepare_worker_process(const std::string& name,
                                   const std::string& bind) {
  runtime::raise_open_files_limit("worker " + name);
  default_data_address(bind);
}

// No automatic connections: CAF would open a second, plain listener on
// every interface for them. Workers dial each other (connect_peers).
inline void no_automatic_connections(runtime::system_config& cfg) {
  cfg.set("middleman.enable-automatic-connections", false);
}

} // namespace kvferry::app
