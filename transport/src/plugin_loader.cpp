// Finding, probing and loading NCCL net plugins (ABI v7). See plugin.hpp.
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <map>
#include <mutex>
#include <poll.h>
#include <set>
#include <signal.h>
#include <spawn.h>
#include <sstream>
#include <sys/stat.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include <climits>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "kvferry/transport/plugin.hpp"
#include "probe_child.hpp"

#ifndef KVFERRY_INSTALL_LIBDIR
#define KVFERRY_INSTALL_LIBDIR "/usr/local/lib"
#endif
#ifndef KVFERRY_INSTALL_RELATIVE_LIBDIR
#define KVFERRY_INSTALL_RELATIVE_LIBDIR "lib"
#endif
#ifndef KVFERRY_INSTALL_RELATIVE_BINDIR
#define KVFERRY_INSTALL_RELATIVE_BINDIR "bin"
#endif
#ifndef KVFERRY_INSTALL_RELATIVE_LIBEXECDIR
#define KVFERRY_INSTALL_RELATIVE_LIBEXECDIR "libexec"
#endif
#ifndef KVFERRY_INSTALL_LIBEXECDIR
#define KVFERRY_INSTALL_LIBEXECDIR "/usr/local/libexec"
#endif

extern char** environ;

namespace kvferry::transport {

// ---- names and errors

const char* result_name(ncclResult_t code) noexcept {
  switch (code) {
  case ncclSuccess:
    return "ncclSuccess";
  case ncclUnhandledCudaError:
    return "ncclUnhandledCudaError";
  case ncclSystemError:
    return "ncclSystemError";
  case ncclInternalError:
    return "ncclInternalError";
  case ncclInvalidArgument:
    return "ncclInvalidArgument";
  case ncclInvalidUsage:
    return "ncclInvalidUsage";
  case ncclRemoteError:
    return "ncclRemoteError";
  }
  static thread_local char unknown[32];
  std::snprintf(unknown, sizeof unknown, "ncclResult(%d)",
                static_cast<int>(code));
  return unknown;
}

plugin_error::plugin_error(const std::string& plugin, const std::string& call,
                           ncclResult_t code, const std::string& context)
    : transport_error(fmt::format("plugin {}: {}{} failed: {}", plugin, call,
                                  context.empty() ? "" : "(" + context + ")",
                                  result_name(code))),
      plugin_(plugin), call_(call), code_(code) {
}

device_properties to_properties(int index, const ncclNetProperties_v7_t& raw) {
  device_properties dev;
  dev.index = index;
  dev.name = raw.name ? raw.name : "";
  dev.pci_path = raw.pciPath ? raw.pciPath : "";
  dev.guid = raw.guid;
  dev.ptr_support = raw.ptrSupport;
  dev.speed_mbps = raw.speed;
  dev.port = raw.port;
  dev.latency_us = raw.latency;
  dev.max_comms = raw.maxComms;
  dev.max_recvs = raw.maxRecvs;
  dev.device_type = raw.netDeviceType;
  dev.device_version = raw.netDeviceVersion;
  return dev;
}

namespace {
std::string pointer_kinds(int bits) {
  std::string out;
  auto add = [&](int bit, const char* name) {
    if (!(bits & bit))
      return;
    if (!out.empty())
      out += '|';
    out += name;
  };
  add(NCCL_PTR_HOST, "HOST");
  add(NCCL_PTR_CUDA, "CUDA");
  add(NCCL_PTR_DMABUF, "DMABUF");
  return out.empty() ? "none" : out;
}
} // namespace

std::string describe(const device_properties& dev) {
  return fmt::format("[{}] {}  ptr={}  {} Mbit/s  port {}  latency {:.1f} us  "
                     "maxComms {}  maxRecvs {}  {}{}{}",
                     dev.index, dev.name.empty() ? "(no name)" : dev.name,
                     pointer_kinds(dev.ptr_support), dev.speed_mbps, dev.port,
                     dev.latency_us, dev.max_comms, dev.max_recvs,
                     dev.is_unpack()
                         ? fmt::format("UNPACK v{}", dev.device_version)
                         : std::string("HOST"),
                     dev.pci_path.empty() ? "" : "  pci ", dev.pci_path);
}

const device_properties& plugin::device(int dev) const {
  return properties_check(dev).used;
}

const property_check& plugin::properties_check(int dev) const {
  if (dev < 0 || dev >= device_count())
    throw transport_error(fmt::format("plugin {}: no device {} (it has {})",
                                      name_, dev, device_count()));
  return checks_[static_cast<size_t>(dev)];
}

const device_properties& plugin::usable_device(int dev) const {
  auto& check = properties_check(dev);
  if (!check.usable())
    throw transport_error(fmt::format(
        "plugin {}: device {} ({}) is unusable: {}", name_, dev,
        check.reported.name.empty() ? "no name" : check.reported.name,
        fmt::join(check.errors, "; ")));
  return check.used;
}

void plugin::check(ncclResult_t code, const char* call,
                   const std::string& context) const {
  if (code != ncclSuccess)
    throw plugin_error(name_, call, code, context);
}

void plugin::set_caller_polls(void* comm, const std::string& context) const {
  if (has_ext_ && ext_.setCallerPolls != nullptr)
    check(ext_.setCallerPolls(comm), "setCallerPolls", context);
}

int plugin::wait_fd(void* comm) const noexcept {
  int fd = -1;
  if (!has_ext_ || ext_.getWaitFd == nullptr ||
      ext_.getWaitFd(comm, &fd) != ncclSuccess)
    return -1;
  return fd;
}

plugin::plugin(std::string name, std::string path, const ncclNet_v7_t* net,
               const std::vector<device_properties>& reported,
               const kvferryNetExt_v2_t* ext)
    : name_(std::move(name)), path_(std::move(path)), net_(net) {
  if (ext != nullptr) {
    ext_ = *ext;
    has_ext_ = true;
  }
  for (auto& dev : reported) {
    checks_.push_back(check_properties(dev));
    devices_.push_back(checks_.back().used);
    for (auto& warning : checks_.back().warnings)
      spdlog::warn("plugin {}: device {}: {}", name_, dev.index, warning);
  }
}

// ---- finding plugins

namespace {

std::vector<std::string> split_colon_list(const char* list) {
  std::vector<std::string> out;
  if (!list)
    return out;
  std::stringstream in(list);
  std::string item;
  while (std::getline(in, item, ':'))
    if (!item.empty())
      out.push_back(item);
  return out;
}

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string executable_dir() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0)
    return {};
  std::string exe(buf, static_cast<size_t>(n));
  auto slash = exe.rfind('/');
  return slash == std::string::npos ? std::string{} : exe.substr(0, slash);
}

// `dir` without its "..", when it exists (messages read better).
std::string resolved(const std::string& dir) {
  char out[PATH_MAX];
  return ::realpath(dir.c_str(), out) ? std::string(out) : dir;
}

bool valid_plugin_name(const std::string& name) {
  if (name.empty())
    return false;
  for (char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' ||
          c == '.'))
      return false;
  return true;
}

} // namespace

std::string default_plugin() {
  const char* env = std::getenv("KVFERRY_NET_PLUGIN");
  return env && *env ? env : "kvsock";
}

std::string plugin_file_name(const std::string& name) {
  return "libnccl-net-" + name + ".so";
}

std::vector<std::string> plugin_search_dirs(const plugin_search& search) {
  auto dirs = search.first_dirs
                  ? *search.first_dirs
                  : split_colon_list(std::getenv("KVFERRY_PLUGIN_PATH"));
  auto exe_dir = search.exe_dir.empty() ? executable_dir() : search.exe_dir;
  if (!exe_dir.empty()) {
    // The build tree puts plugins in lib/ beside bin/; an install in its
    // libdir, which may be lib64 or lib/<arch>.
    dirs.push_back(resolved(exe_dir + "/../lib"));
    const std::string libdir = KVFERRY_INSTALL_RELATIVE_LIBDIR;
    if (libdir != "lib" && !libdir.empty() && libdir[0] != '/')
      dirs.push_back(resolved(exe_dir + "/../" + libdir));
  }
  dirs.push_back(KVFERRY_INSTALL_LIBDIR);
  auto library_path = search.library_path
                          ? *search.library_path
                          : split_colon_list(std::getenv("LD_LIBRARY_PATH"));
  dirs.insert(dirs.end(), library_path.begin(), library_path.end());
  // Where dlopen looks by itself on common distributions, named so that a
  // check that cannot dlopen (launch --dry-run) finds what a worker would.
  for (const char* dir :
       {"/usr/local/lib", "/usr/local/lib64", "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib"})
    dirs.emplace_back(dir);
  return dirs;
}

std::optional<std::string> find_plugin_file(const std::string& name_or_path,
                                            const plugin_search& search) {
  if (name_or_path.find('/') != std::string::npos)
    return is_file(name_or_path) ? std::optional{name_or_path} : std::nullopt;
  if (!valid_plugin_name(name_or_path))
    return std::nullopt;
  const auto file = plugin_file_name(name_or_path);
  for (auto& dir : plugin_search_dirs(search))
    if (is_file(dir + "/" + file))
      return dir + "/" + file;
  return std::nullopt;
}

plugin_location locate_plugin(const std::string& name_or_path,
                              const plugin_search& search) {
  plugin_location where{name_or_path, {}};
  if (name_or_path.find('/') != std::string::npos) {
    if (!is_file(name_or_path))
      throw plugin_load_error(fmt::format("plugin {}: no such file ({})",
                                          name_or_path, std::strerror(ENOENT)));
    where.path = name_or_path;
    return where;
  }
  if (!valid_plugin_name(name_or_path))
    throw plugin_load_error(
        fmt::format("plugin '{}': not a plugin name (letters, digits, '_', "
                    "'-', '.') nor a path "
                    "(contains '/')",
                    name_or_path));
  // Last resort: dlopen's own search (rpath, ld.so cache). Checked here with
  // RTLD_NOLOAD|RTLD_LAZY would not find an unloaded file, so leave the bare
  // name; the dlopen error then names the searched dirs.
  where.path = find_plugin_file(name_or_path, search)
                   .value_or(plugin_file_name(name_or_path));
  return where;
}

std::vector<plugin_location> discover_plugins() {
  auto dirs = plugin_search_dirs();
  std::vector<plugin_location> found;
  std::set<std::string> names;
  const std::string prefix = "libnccl-net-", suffix = ".so";
  for (auto& dir : dirs) {
    DIR* d = ::opendir(dir.c_str());
    if (!d)
      continue;
    std::vector<std::string> files;
    while (auto* entry = ::readdir(d)) {
      std::string file = entry->d_name;
      if (file.size() > prefix.size() + suffix.size() &&
          file.rfind(prefix, 0) == 0 &&
          file.compare(file.size() - suffix.size(), suffix.size(), suffix) == 0)
        files.push_back(file);
    }
    ::closedir(d);
    std::sort(files.begin(), files.end());
    for (auto& file : files) {
      auto name = file.substr(prefix.size(),
                              file.size() - prefix.size() - suffix.size());
      if (names.insert(name).second)
        found.push_back({name, dir + "/" + file});
    }
  }
  return found;
}

// ---- opening a plugin file (in the probe child or in this process)

namespace {

// Where the plugin's log lines go: spdlog normally, the probe pipe in a child.
int probe_log_fd = -1;

void forward_plugin_log(ncclDebugLogLevel level, unsigned long /*flags*/,
                        const char* file, int line, const char* format, ...) {
  char message[1024];
  va_list args;
  va_start(args, format);
  std::vsnprintf(message, sizeof message, format ? format : "", args);
  va_end(args);
  if (probe_log_fd >= 0) {
    if (level == NCCL_LOG_WARN || level == NCCL_LOG_ABORT) {
      for (char* c = message; *c; ++c)
        if (*c == '\n' || *c == '\t')
          *c = ' ';
      auto text = fmt::format("log {}\n", message);
      [[maybe_unused]] auto n = ::write(probe_log_fd, text.data(), text.size());
    }
    return;
  }
  const char* where = file ? file : "?";
  switch (level) {
  case NCCL_LOG_WARN:
    spdlog::warn("net plugin: {} ({}:{})", message, where, line);
    break;
  case NCCL_LOG_ABORT:
    spdlog::error("net plugin: {} ({}:{})", message, where, line);
    break;
  case NCCL_LOG_INFO:
    spdlog::debug("net plugin: {}", message);
    break;
  case NCCL_LOG_TRACE:
    spdlog::trace("net plugin: {}", message);
    break;
  default:
    spdlog::debug("net plugin: {}", message);
    break;
  }
}

// The names a plugin might export instead of the v7 table.
std::string other_table_symbols(void* lib) {
  std::string found;
  for (const char* prefix :
       {"ncclNetPlugin_v", "ncclCollNetPlugin_v", "ncclNet_v"})
    for (int version = 1; version <= 20; ++version) {
      auto symbol = fmt::format("{}{}", prefix, version);
      if (::dlsym(lib, symbol.c_str()))
        found += (found.empty() ? "" : ", ") + symbol;
    }
  return found;
}

struct opened_table {
  void* lib = nullptr;
  const ncclNet_v7_t* net = nullptr;
};

// `search`: whose directories a failing dlopen of a bare file name names
// (the prober's, when this runs in the probe helper).
opened_table open_table(const std::string& label, const std::string& path,
                        const plugin_search& search = {}) {
  opened_table out;
  out.lib = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!out.lib) {
    const char* why = ::dlerror();
    std::string searched;
    if (path.find('/') == std::string::npos) {
      for (auto& dir : plugin_search_dirs(search))
        searched += (searched.empty() ? "" : ", ") + dir;
      searched = fmt::format(" (searched {} and the ld.so cache)", searched);
    }
    throw plugin_load_error(fmt::format("plugin {}: dlopen({}) failed: {}{}",
                                        label, path,
                                        why ? why : "unknown error", searched));
  }
  out.net =
      static_cast<const ncclNet_v7_t*>(::dlsym(out.lib, "ncclNetPlugin_v7"));
  if (!out.net) {
    auto others = other_table_symbols(out.lib);
    throw plugin_load_error(fmt::format(
        "plugin {}: {} does not export ncclNetPlugin_v7 (the v7 table kvferry "
        "needs){}",
        label, path,
        others.empty() ? "; it exports no other NCCL net table either"
                       : "; it exports " + others + " instead"));
  }
  return out;
}

// kvferry's extension (net_ext.h), beside the v7 table; optional. A v1
// table is widened to v2's shape (getWaitFd NULL).
struct found_extension {
  int version = 0; // 0: none
  kvferryNetExt_v2_t table{};
};

found_extension find_extension(void* lib) {
  found_extension out;
  if (auto* v2 = static_cast<const kvferryNetExt_v2_t*>(
          ::dlsym(lib, KVFERRY_NET_EXT_V2_SYMBOL))) {
    out.version = 2;
    out.table = *v2;
  } else if (auto* v1 = static_cast<const kvferryNetExt_v1_t*>(
                 ::dlsym(lib, KVFERRY_NET_EXT_V1_SYMBOL))) {
    out.version = 1;
    out.table.name = v1->name;
    out.table.setCallerPolls = v1->setCallerPolls;
  }
  return out;
}

// The calls both the probe child and load() make, reported stage by stage so
// a child that dies can be blamed on the call it was in.
template<class StageFn>
std::vector<device_properties> init_and_list(const std::string& label,
                                             const ncclNet_v7_t& net,
                                             StageFn&& stage) {
  auto fail = [&](const char* call, ncclResult_t code,
                  const std::string& what = {}) {
    throw plugin_error(label, call, code, what);
  };
  auto require = [&](const void* slot, const char* call) {
    if (!slot)
      throw plugin_load_error(
          fmt::format("plugin {}: its v7 table has no {} (NULL)", label, call));
  };
  require(reinterpret_cast<const void*>(net.init), "init");
  stage("init");
  if (auto rc = net.init(&forward_plugin_log); rc != ncclSuccess)
    fail("init", rc);
  require(reinterpret_cast<const void*>(net.devices), "devices");
  stage("devices");
  int count = 0;
  if (auto rc = net.devices(&count); rc != ncclSuccess)
    fail("devices", rc);
  if (count <= 0)
    throw plugin_load_error(
        fmt::format("plugin {}: devices() reported {} devices: nothing to use",
                    label, count));
  require(reinterpret_cast<const void*>(net.getProperties), "getProperties");
  std::vector<device_properties> devices;
  for (int dev = 0; dev < count; ++dev) {
    stage("getProperties");
    ncclNetProperties_v7_t raw{};
    if (auto rc = net.getProperties(dev, &raw); rc != ncclSuccess)
      fail("getProperties", rc, fmt::format("dev {}", dev));
    devices.push_back(to_properties(dev, raw));
  }
  return devices;
}

std::string table_label(const ncclNet_v7_t& net) {
  return net.name ? net.name : "(unnamed)";
}

// ---- the probe: wire format (one line per record, tab-separated fields)

void write_all(int fd, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    auto n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return;
    done += static_cast<size_t>(n);
  }
}

std::string clean(std::string text) {
  for (auto& c : text)
    if (c == '\t' || c == '\n')
      c = ' ';
  return text;
}

std::string encode_device(const device_properties& d) {
  return fmt::format("dev\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                     d.index, clean(d.name), clean(d.pci_path), d.guid,
                     d.ptr_support, d.speed_mbps, d.port, d.latency_us,
                     d.max_comms, d.max_recvs, static_cast<int>(d.device_type),
                     d.device_version);
}

bool decode_device(const std::vector<std::string>& f, device_properties& d) {
  if (f.size() != 13)
    return false;
  try {
    d.index = std::stoi(f[1]);
    d.name = f[2];
    d.pci_path = f[3];
    d.guid = std::stoull(f[4]);
    d.ptr_support = std::stoi(f[5]);
    d.speed_mbps = std::stoi(f[6]);
    d.port = std::stoi(f[7]);
    d.latency_us = std::stof(f[8]);
    d.max_comms = std::stoi(f[9]);
    d.max_recvs = std::stoi(f[10]);
    d.device_type = static_cast<ncclNetDeviceType>(std::stoi(f[11]));
    d.device_version = std::stoi(f[12]);
  } catch (const std::exception&) {
    return false;
  }
  return true;
}

std::vector<std::string> split_tabs(const std::string& line) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    auto tab = line.find('\t', start);
    out.push_back(line.substr(start, tab - start));
    if (tab == std::string::npos)
      return out;
    start = tab + 1;
  }
}

std::string describe_child_end(int status) {
  if (WIFEXITED(status))
    return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return fmt::format("crashed with signal {} ({})", WTERMSIG(status),
                       ::strsignal(WTERMSIG(status)));
  return fmt::format("ended with wait status {}", status);
}

} // namespace

// ---- the probe's child side (run by kvferry-plugin-probe)

namespace detail {

void run_probe_child(int fd, const std::string& label, const std::string& path,
                     const plugin_search& search) {
  probe_log_fd = fd;
  try {
    write_all(fd, "stage\tdlopen\n");
    auto opened = open_table(label, path, search);
    write_all(fd, fmt::format("table\t{}\n", clean(table_label(*opened.net))));
    auto devices = init_and_list(label, *opened.net, [&](const char* call) {
      write_all(fd, fmt::format("stage\t{}\n", call));
    });
    for (auto& dev : devices)
      write_all(fd, encode_device(dev));
    write_all(fd, "done\n");
  } catch (const std::exception& e) {
    write_all(fd, fmt::format("error\t{}\n", clean(e.what())));
  }
  ::close(fd);
  // _exit: the plugin may run threads (no static destructors under them),
  // and what it leaked is not ours to report (no leak check at exit).
  std::fflush(nullptr);
  ::_exit(0);
}

} // namespace detail

// ---- the probe helper: where it is and how it is started

namespace {

bool is_executable(const std::string& path) {
  return is_file(path) && ::access(path.c_str(), X_OK) == 0;
}

// `dir` with one ".." per component of `relative`: the install prefix of a
// directory that is <prefix>/<relative> ("lib/x86_64-linux-gnu": two).
std::string install_prefix_of(const std::string& dir,
                              const std::string& relative) {
  std::string prefix = dir;
  std::stringstream parts(relative);
  std::string part;
  while (std::getline(parts, part, '/'))
    if (!part.empty())
      prefix += "/..";
  return resolved(prefix);
}

// The shared library this code was linked into (libkvferry.so), or empty
// when it is part of the executable (the static library).
std::string loader_shared_library() {
  Dl_info info{};
  if (::dladdr(reinterpret_cast<const void*>(&probe_plugin), &info) == 0 ||
      !info.dli_fname || !std::strchr(info.dli_fname, '/'))
    return {};
  auto file = resolved(info.dli_fname);
  return file == resolved("/proc/self/exe") ? std::string{} : file;
}

// Where the helper may be, in the order tried (after $KVFERRY_PLUGIN_PROBE):
// installed beside the library or executable that holds this code, this
// build tree's, the configured install prefix's.
std::vector<std::string> probe_helper_candidates() {
  const std::string libexec = KVFERRY_INSTALL_RELATIVE_LIBEXECDIR;
  const std::string in_libexec =
      libexec + "/kvferry/" + detail::probe_helper_name;
  const bool relocatable = !libexec.empty() && libexec[0] != '/';
  std::vector<std::string> out;
  if (auto lib = loader_shared_library(); !lib.empty()) {
    if (relocatable)
      out.push_back(install_prefix_of(lib.substr(0, lib.rfind('/')),
                                      KVFERRY_INSTALL_RELATIVE_LIBDIR) +
                    "/" + in_libexec);
  } else if (auto exe_dir = executable_dir(); !exe_dir.empty()) {
    out.push_back(exe_dir + "/" + detail::probe_helper_name);
    if (relocatable)
      out.push_back(
          install_prefix_of(exe_dir, KVFERRY_INSTALL_RELATIVE_BINDIR) + "/" +
          in_libexec);
  }
#ifdef KVFERRY_BUILD_PLUGIN_PROBE
  out.emplace_back(KVFERRY_BUILD_PLUGIN_PROBE);
#endif
  out.push_back(std::string(KVFERRY_INSTALL_LIBEXECDIR) + "/kvferry/" +
                detail::probe_helper_name);
  return out;
}

} // namespace

std::string probe_helper() {
  const char* env = std::getenv(detail::probe_helper_env);
  if (env && *env) {
    if (is_executable(env))
      return env;
    throw plugin_load_error(fmt::format(
        "{}={} is not an executable file ({})", detail::probe_helper_env, env,
        std::strerror(is_file(env) ? EACCES : ENOENT)));
  }
  auto candidates = probe_helper_candidates();
  for (auto& path : candidates)
    if (is_executable(path))
      return path;
  throw plugin_load_error(fmt::format(
      "the probe helper {} is in none of {}; ${} is unset (set it to the "
      "helper's path)",
      detail::probe_helper_name, fmt::join(candidates, ", "),
      detail::probe_helper_env));
}

namespace {

// Starts `helper` on the plugin (`label`, `path`): its records come on
// `records` (its fd 3), its stdout goes to our stderr (what a plugin prints
// must not land in a JSON report on our stdout), its stdin is /dev/null and
// crash signals kill it even where we ignore them. posix_spawn, not fork: no
// code of ours runs between the fork and the exec. Returns the pid, or -1
// with `error` set.
pid_t start_probe_helper(const std::string& helper, const std::string& label,
                         const std::string& path, int records,
                         std::string& error) {
  constexpr int records_fd = 3;
  const std::string exe_dir = executable_dir();
  const std::string records_arg = std::to_string(records_fd);
  std::vector<const char*> argv{helper.c_str(), "--records-fd",
                                records_arg.c_str()};
  if (!exe_dir.empty())
    argv.insert(argv.end(), {"--exe-dir", exe_dir.c_str()});
  argv.insert(argv.end(), {"--", label.c_str(), path.c_str(), nullptr});

  // From a descriptor above 0-3, so that no dup2 below overwrites it (a
  // process may have closed its stdout) nor is a no-op that keeps
  // close-on-exec.
  const int source = ::fcntl(records, F_DUPFD_CLOEXEC, 10);
  if (source < 0) {
    error = fmt::format("plugin {}: fcntl() for the probe failed: {}", label,
                        std::strerror(errno));
    return -1;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, source, records_fd);
  if (::fcntl(STDERR_FILENO, F_GETFD) != -1)
    posix_spawn_file_actions_adddup2(&actions, STDERR_FILENO, STDOUT_FILENO);
  else
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null",
                                     O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null",
                                   O_RDONLY, 0);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, crash;
  sigemptyset(&none);
  sigemptyset(&crash);
  for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGPIPE})
    sigaddset(&crash, sig);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &crash);
  posix_spawnattr_setflags(&attr,
                           POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, helper.c_str(), &actions, &attr,
                         const_cast<char* const*>(argv.data()), environ);
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&actions);
  ::close(source);
  if (rc != 0) {
    error = fmt::format("plugin {}: could not start the probe helper {}: {}",
                        label, helper, std::strerror(rc));
    return -1;
  }
  return pid;
}

// Everything the helper writes to `fd` until EOF or `deadline`; `timed_out`
// says which.
std::string read_records(int fd, std::chrono::steady_clock::time_point deadline,
                         bool& timed_out) {
  std::string received;
  timed_out = false;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now())
                    .count();
    if (left <= 0) {
      timed_out = true;
      return received;
    }
    pollfd pfd{fd, POLLIN, 0};
    int ready =
        ::poll(&pfd, 1, static_cast<int>(std::min<long long>(left, 1000)));
    if (ready <= 0)
      continue; // EINTR or a second without news: check the deadline
    char buf[4096];
    auto n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return received; // EOF: the helper closed or died
    received.append(buf, static_cast<size_t>(n));
  }
}

// The helper's wait status. After EOF it is exiting (or a grandchild holds
// the pipe): wait until `deadline` + 2 s, then kill; `timed_out` is set then.
int reap_probe_helper(pid_t child,
                      std::chrono::steady_clock::time_point deadline,
                      bool& timed_out) {
  if (timed_out)
    ::kill(child, SIGKILL);
  int status = 0;
  for (;;) {
    auto r = ::waitpid(child, &status, WNOHANG);
    if (r == child || (r < 0 && errno != EINTR))
      return status;
    if (std::chrono::steady_clock::now() > deadline + std::chrono::seconds(2)) {
      ::kill(child, SIGKILL);
      ::waitpid(child, &status, 0);
      timed_out = true;
      return status;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

} // namespace

probe_report probe_plugin(const std::string& name_or_path,
                          std::chrono::milliseconds timeout) {
  probe_report report;
  plugin_location where;
  try {
    where = locate_plugin(name_or_path);
  } catch (const std::exception& e) {
    report.error = e.what();
    return report;
  }
  report.path = where.path;
  std::string helper;
  try {
    helper = probe_helper(); // no fallback to a fork of this process
  } catch (const std::exception& e) {
    report.error =
        fmt::format("plugin {}: cannot probe: {}", name_or_path, e.what());
    return report;
  }
  report.helper = helper;
  // Close-on-exec, so that no other child this process starts meanwhile
  // holds the write end open; the helper gets its own copy as fd 3.
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    report.error = fmt::format("plugin {}: pipe() for the probe failed: {}",
                               name_or_path, std::strerror(errno));
    return report;
  }
  pid_t child = start_probe_helper(helper, name_or_path, where.path, fds[1],
                                   report.error);
  ::close(fds[1]);
  if (child < 0) {
    ::close(fds[0]);
    return report;
  }
  auto deadline = std::chrono::steady_clock::now() + timeout;
  bool timed_out = false;
  std::string received = read_records(fds[0], deadline, timed_out);
  ::close(fds[0]);
  int status = reap_probe_helper(child, deadline, timed_out);

  std::string stage, child_error;
  bool done = false;
  std::stringstream lines(received);
  std::string line;
  while (std::getline(lines, line)) {
    auto f = split_tabs(line);
    if (f[0] == "stage" && f.size() > 1)
      stage = f[1];
    else if (f[0] == "table" && f.size() > 1)
      report.table_name = f[1];
    else if (f[0] == "log" || line.rfind("log ", 0) == 0)
      report.log.push_back(line.substr(4));
    else if (f[0] == "error" && f.size() > 1)
      child_error = f[1];
    else if (f[0] == "done")
      done = true;
    else if (f[0] == "dev") {
      device_properties dev;
      if (decode_device(f, dev))
        report.devices.push_back(dev);
    }
  }
  if (done) {
    report.ok = true;
  } else if (!child_error.empty()) {
    report.error = child_error;
  } else if (stage.empty()) { // it never began: a loader error, say
    report.error = fmt::format(
        "plugin {}: the probe helper {} {} before it began (its stderr says "
        "why)",
        name_or_path, helper,
        timed_out ? fmt::format("did not start within {:.1f} s (killed)",
                                timeout.count() / 1000.0)
                  : describe_child_end(status));
  } else if (timed_out) {
    report.error = fmt::format("plugin {}: {} did not return within {:.1f} s "
                               "in the probe process (killed)",
                               name_or_path, stage, timeout.count() / 1000.0);
  } else {
    report.error = fmt::format("plugin {}: {} {} in the probe process",
                               name_or_path, stage, describe_child_end(status));
  }
  return report;
}

// ---- load into this process

std::shared_ptr<plugin> plugin::load(const std::string& name_or_path,
                                     const load_options& options) {
  static std::mutex mutex;
  static std::map<void*, std::shared_ptr<plugin>> loaded; // by dlopen handle

  auto requested = name_or_path.empty() ? default_plugin() : name_or_path;
  auto where = locate_plugin(requested);
  std::lock_guard<std::mutex> lock(mutex);
  // Already in this process? Then it was probed and initialised before.
  if (void* lib = ::dlopen(where.path.c_str(), RTLD_NOW | RTLD_NOLOAD)) {
    ::dlclose(lib); // drop the reference NOLOAD took
    if (auto it = loaded.find(lib); it != loaded.end())
      return it->second;
  }
  if (options.probe_first) {
    auto report = probe_plugin(requested, options.probe_timeout);
    if (!report.ok)
      throw plugin_load_error(report.error);
  }
  auto opened = open_table(requested, where.path);
  if (auto it = loaded.find(opened.lib); it != loaded.end())
    return it->second;
  auto devices = init_and_list(requested, *opened.net, [](const char*) {});
  auto ext = find_extension(opened.lib);
  auto made = std::make_shared<plugin>(table_label(*opened.net), where.path,
                                       opened.net, std::move(devices),
                                       ext.version > 0 ? &ext.table : nullptr);
  loaded.emplace(opened.lib, made);
  spdlog::debug("loaded net plugin {} from {} ({} devices{})", made->name(),
                where.path, made->device_count(),
                ext.version > 0
                    ? fmt::format(", kvferry extension v{}", ext.version)
                    : std::string{});
  return made;
}

} // namespace kvferry::transport
