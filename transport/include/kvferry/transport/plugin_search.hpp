// Where NCCL net plugins are looked for: the one search rule of kvferry. The
// loader (plugin.hpp's locate_plugin, what a worker dlopens) and `launch`'s
// topology check (what --dry-run accepts) both use it, so that they cannot
// disagree. Plain C++, no dlopen: a check may run on another machine than
// the workers.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace kvferry::transport {

// "libnccl-net-NAME.so"
std::string plugin_file_name(const std::string& name);

// Where to look. Every field defaults to what the process sees (its
// environment, its own binary); tests inject their own.
struct plugin_search {
  // Searched first, in order. nullopt: the directories of
  // $KVFERRY_PLUGIN_PATH (colon-separated).
  std::optional<std::vector<std::string>> first_dirs;
  // The directory of the kvferry binary, whose ../lib (a build tree's lib/,
  // an install's libdir) is searched. Empty: the running binary's.
  std::string exe_dir;
  // nullopt: the directories of $LD_LIBRARY_PATH.
  std::optional<std::vector<std::string>> library_path;
};

// The directories searched, in order, existing or not: first_dirs,
// <exe_dir>/../lib, <exe_dir>/../<install libdir> where that is not lib, the
// install libdir (CMAKE_INSTALL_FULL_LIBDIR at build time), library_path,
// then the usual system library dirs (/usr/local/lib, /usr/lib/<arch>, ...).
std::vector<std::string> plugin_search_dirs(const plugin_search& search = {});

// The file `name_or_path` means: a path (it contains '/') when it is a
// regular file, else libnccl-net-NAME.so in the first of
// plugin_search_dirs(search) that holds one; nullopt when there is none (or
// NAME is not a plugin name).
std::optional<std::string> find_plugin_file(const std::string& name_or_path,
                                            const plugin_search& search = {});

} // namespace kvferry::transport
