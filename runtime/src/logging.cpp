#include "kvferry/runtime/logging.hpp"

#include <cstdlib>
#include <memory>
#include <vector>

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "kvferry/runtime/error.hpp"

namespace kvferry::runtime {

namespace {

std::string effective_level(const std::string& level) {
  if (!level.empty())
    return level;
  if (const char* env = std::getenv("KVFERRY_LOG"); env && *env)
    return env;
  return "info";
}

} // namespace

caf::error setup_logging(const std::string& level, const std::string& log_file,
                         const std::string& process_name) {
  auto name = effective_level(level);
  auto parsed = spdlog::level::from_str(name);
  // from_str maps anything unknown to "off"; only accept "off" when asked.
  if (parsed == spdlog::level::off && name != "off")
    return make_error(ec::invalid_argument,
                      "unknown log level '" + name +
                          "' (use trace, debug, info, warn, error, critical "
                          "or off)");
  std::vector<spdlog::sink_ptr> sinks;
  sinks.push_back(std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
  if (!log_file.empty()) {
    try {
      sinks.push_back(
          std::make_shared<spdlog::sinks::basic_file_sink_mt>(log_file));
    } catch (const spdlog::spdlog_ex& ex) {
      return make_error(ec::config_error, "cannot open log file '" + log_file +
                                              "': " + ex.what());
    }
  }
  auto logger = std::make_shared<spdlog::logger>(process_name, sinks.begin(),
                                                 sinks.end());
  logger->set_level(parsed);
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e [%n:%P] %^%l%$ %v");
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(std::move(logger));
  return caf::none;
}

} // namespace kvferry::runtime
