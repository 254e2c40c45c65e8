// The child side of transport::probe_plugin (plugin.hpp), shared by the
// loader and the helper program that runs it, kvferry-plugin-probe
// (transport/tools/plugin_probe.cpp). Not an installed header.
#pragma once

#include <string>

#include "kvferry/transport/plugin_search.hpp"

namespace kvferry::transport::detail {

// The helper's file name, and the variable that names it explicitly.
inline constexpr const char* probe_helper_name = "kvferry-plugin-probe";
inline constexpr const char* probe_helper_env = "KVFERRY_PLUGIN_PROBE";

// Opens the plugin at `path`, calls init, devices and getProperties and
// writes what happens to `fd` as line records (stage, table, log, dev,
// error, done; plugin_loader.cpp reads them), then ends the process with
// _exit(0). `label` names the plugin in errors; `search` is the prober's
// plugin search (its executable's directory), named when dlopen fails.
[[noreturn]] void run_probe_child(int fd, const std::string& label,
                                  const std::string& path,
                                  const plugin_search& search);

} // namespace kvferry::transport::detail
