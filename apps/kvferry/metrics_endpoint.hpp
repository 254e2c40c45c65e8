// Starts a process's Prometheus endpoint when $KVFERRY_METRICS_PORT asks for
// one (`kvferry launch` sets it from the topology's metrics_port).
#pragma once

#include <memory>
#include <optional>
#include <string>

#include <spdlog/spdlog.h>

#include "kvferry/runtime/metrics.hpp"

namespace kvferry::app {

/// Returns the running exporter (nullptr when none was asked for), or
/// std::nullopt after logging why the asked-for endpoint could not start.
inline std::optional<std::unique_ptr<metrics::http_exporter>>
start_metrics_endpoint(const std::string& who) {
  try {
    auto exporter = metrics::exporter_from_env();
    if (exporter)
      spdlog::info("{}: serving metrics on port {} (GET /metrics)", who,
                   exporter->port());
    return exporter;
  } catch (const std::exception& e) {
    spdlog::error("{}: metrics endpoint: {}", who, e.what());
    return std::nullopt;
  }
}

} // namespace kvferry::app
