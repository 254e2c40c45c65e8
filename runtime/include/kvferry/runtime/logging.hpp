// Logging: spdlog, one default logger for the process.
#pragma once

#include <string>

#include <caf/error.hpp>

namespace kvferry::runtime {

/// Sets up the process's default spdlog logger: stderr, plus `log_file` if
/// not empty. `level` empty → $KVFERRY_LOG → "info". Returns
/// ec::invalid_argument for an unknown level, ec::config_error if the file
/// cannot be opened.
caf::error setup_logging(const std::string& level, const std::string& log_file,
                         const std::string& process_name = "kvferry");

} // namespace kvferry::runtime
