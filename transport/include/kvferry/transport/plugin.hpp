// Loading an NCCL net plugin (ABI v7): find it, probe it in a child process,
// load it once per process, and turn every failure into an exception that
// names the plugin, the call and the result code.
//
//   auto net = kvferry::transport::plugin::load("kvsock");   // or a path
//   for (auto& dev : net->devices()) fmt::print("{}\n", describe(dev));
//
// Plugin names follow NCCL: NAME means the file libnccl-net-NAME.so, looked up
// (in this order) in the directories of $KVFERRY_PLUGIN_PATH (colon list),
// <dir of the running executable>/../lib, the install libdir, and then the
// way dlopen looks (LD_LIBRARY_PATH, rpath, ld.so cache). Anything containing
// a '/' is a path. No name at all means $KVFERRY_NET_PLUGIN, else "kvsock".
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "kvferry/transport/net_ext.h"
#include "kvferry/transport/net_v7.h"
#include "kvferry/transport/plugin_search.hpp"

namespace kvferry::transport {

// The opaque connection handle `listen` writes; the caller carries it to the
// peer out of band (the actors put it in directory metadata).
using net_handle = std::array<char, NCCL_NET_HANDLE_MAXSIZE>;

// "ncclSystemError" etc.; "ncclResult(<n>)" for codes outside v7's list.
const char* result_name(ncclResult_t code) noexcept;

// Base of every transport failure.
class transport_error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

// The plugin could not be found, opened, resolved, initialised or probed.
// what(): "plugin kvsock: ..." with the reason (searched directories, the
// symbols the library does export, the child's exit status, ...).
class plugin_load_error : public transport_error {
public:
  using transport_error::transport_error;
};

// A plugin call returned an error:
// what(): "plugin kvsock: isend(comm 0, peer decode-1) failed:
// ncclSystemError".
class plugin_error : public transport_error {
public:
  plugin_error(const std::string& plugin, const std::string& call,
               ncclResult_t code, const std::string& context = {});
  const std::string& plugin() const noexcept { return plugin_; }
  const std::string& call() const noexcept { return call_; }
  ncclResult_t code() const noexcept { return code_; }

private:
  std::string plugin_, call_;
  ncclResult_t code_;
};

// connect/accept (or any other wait with a deadline) ran out of time.
class timeout_error : public transport_error {
public:
  using transport_error::transport_error;
};

// One device's properties, copied out of the plugin (strings owned).
struct device_properties {
  int index = 0;
  std::string name;
  std::string pci_path; // empty for a virtual NIC
  uint64_t guid = 0;
  int ptr_support = 0; // NCCL_PTR_* bits
  int speed_mbps = 0;
  int port = 0;
  float latency_us = 0;
  int max_comms = 0;
  int max_recvs = 0;
  ncclNetDeviceType device_type = NCCL_NET_DEVICE_HOST;
  int device_version = 0;

  bool supports_host() const { return ptr_support & NCCL_PTR_HOST; }
  bool supports_cuda() const { return ptr_support & NCCL_PTR_CUDA; }
  bool is_unpack() const { return device_type == NCCL_NET_DEVICE_UNPACK; }
};

device_properties to_properties(int index, const ncclNetProperties_v7_t& raw);

// What kvferry makes of one device's properties, by NCCL's rules (2.28, v7
// plugins): where NCCL substitutes a default for a value it cannot use, so
// does kvferry, with a warning; where NCCL would not use the device at all,
// it is an error. The loader keeps `used` as the plugin's device; netcheck
// prints warnings and errors; a channel (and so a worker) refuses a device
// with errors. docs/netcheck.md lists the rules.
struct property_check {
  device_properties reported;        // as the plugin reported them
  device_properties used;            // NCCL's defaults substituted
  std::vector<std::string> warnings; // one per substituted default
  std::vector<std::string> errors;   // why NCCL (and kvferry) would not use it
  bool usable() const noexcept { return errors.empty(); }
};
property_check check_properties(const device_properties& reported);
// NCCL's speed for a device that reports none (speed <= 0): 10 Gb/s.
constexpr int nccl_default_speed_mbps = 10000;
// One line: "[0] lo  ptr=HOST  100000 Mbit/s  port 0  maxComms 65536  maxRecvs
// 8  HOST"
std::string describe(const device_properties& dev);

// ---- finding plugins --------------------------------------------------------

// $KVFERRY_NET_PLUGIN, else "kvsock".
std::string default_plugin();

struct plugin_location {
  std::string requested; // what the caller asked for
  std::string path;      // what is passed to dlopen (absolute, or a bare
                         // file name left to dlopen's own search)
};
// Resolves a name or path with find_plugin_file. Throws plugin_load_error for
// a path that is no file or a name that is not a plugin name. A name found in
// none of the directories is left to dlopen's own search (rpath, ld.so
// cache): `path` is then the bare file name, and a failing dlopen names
// every directory searched.
plugin_location locate_plugin(const std::string& name_or_path,
                              const plugin_search& search = {});
// Every libnccl-net-*.so in plugin_search_dirs(); the first of a name wins.
// `requested` is the short NAME.
std::vector<plugin_location> discover_plugins();

// ---- probing in a child process ---------------------------------------------

// What a probe found out. The caller starts the helper program
// kvferry-plugin-probe (posix_spawn; never a fork of the caller, whose other
// threads may hold locks a forked child would wait on for good), which loads
// the plugin, calls init, devices and getProperties, and reports over a
// pipe; the caller waits at most `timeout` and kills it after that. A plugin
// that exits, crashes or hangs in any call produces ok=false with an error
// like "plugin tcpx: init exited with status 1 in the probe process".
//
// The helper is, in this order: $KVFERRY_PLUGIN_PROBE (when set, only that);
// <prefix>/libexec/kvferry/kvferry-plugin-probe of the install holding the
// shared library this code is in (libkvferry.so), or, linked statically,
// beside the executable or in its install's libexec/kvferry; this build
// tree's; the configured install prefix's. Found nowhere, the probe fails
// naming every place looked in.
struct probe_report {
  bool ok = false;
  std::string error;      // empty when ok
  std::string path;       // the file loaded
  std::string helper;     // the probe helper program that ran
  std::string table_name; // ncclNetPlugin_v7->name
  std::vector<device_properties> devices;
  std::vector<std::string> log; // the plugin's WARN/ABORT log lines
};
probe_report
probe_plugin(const std::string& name_or_path,
             std::chrono::milliseconds timeout = std::chrono::seconds(20));
// The helper program probe_plugin runs, found as above; plugin_load_error
// naming every place looked in (or the unusable $KVFERRY_PLUGIN_PROBE) when
// there is none.
std::string probe_helper();

// ---- a loaded plugin

struct load_options {
  // Probe in a child first (recommended for a long-lived process): a plugin
  // that would kill the process in init fails the probe with a clear error.
  // Safe to do from a process that already runs threads (probe_plugin).
  bool probe_first = true;
  std::chrono::milliseconds probe_timeout = std::chrono::seconds(20);
};

// One plugin loaded into this process, initialised once. load() of the same
// file again returns the same object; plugins are never unloaded (they may
// own threads). Thread-safety: the object is immutable after load; the comms
// made from it belong to whoever made them.
class plugin {
public:
  // Empty name_or_path = default_plugin(). Throws plugin_load_error.
  static std::shared_ptr<plugin> load(const std::string& name_or_path = {},
                                      const load_options& options = {});

  const std::string& name() const noexcept { return name_; } // table name
  const std::string& path() const noexcept { return path_; }
  const ncclNet_v7_t& net() const noexcept { return *net_; }
  // kvferry's extension table (net_ext.h), when the plugin exports one
  // (a v1 table is shown as v2 with getWaitFd NULL).
  const kvferryNetExt_v2_t* ext() const noexcept {
    return has_ext_ ? &ext_ : nullptr;
  }
  int device_count() const noexcept {
    return static_cast<int>(devices_.size());
  }
  const std::vector<device_properties>& devices() const noexcept {
    return devices_;
  }
  // Throws transport_error for an index outside [0, device_count()).
  // The properties as kvferry uses them (check_properties's `used`).
  const device_properties& device(int dev) const;
  // What check_properties said about device `dev` (same throw).
  const property_check& properties_check(int dev) const;
  // device(dev), or transport_error naming the plugin, the device and every
  // property that makes it unusable. Whoever opens comms on a device asks
  // this (the channel wrapper does).
  const device_properties& usable_device(int dev) const;

  // Throws plugin_error(name(), call, code, context) unless code is success.
  void check(ncclResult_t code, const char* call,
             const std::string& context = {}) const;

  // Asks the plugin not to sleep in test() on `comm`'s requests, through
  // its extension (setCallerPolls); a no-op for a plugin without one.
  // Throws plugin_error naming `context` when the plugin refuses.
  void set_caller_polls(void* comm, const std::string& context) const;
  // The descriptor to sleep on for news of `comm`'s requests (net_ext.h,
  // getWaitFd), or -1 when the plugin cannot tell. Never throws: a caller
  // without one keeps polling.
  int wait_fd(void* comm) const noexcept;

  // Checks every device (check_properties) and logs its warnings once.
  plugin(std::string name, std::string path, const ncclNet_v7_t* net,
         const std::vector<device_properties>& reported,
         const kvferryNetExt_v2_t* ext = nullptr);

private:
  std::string name_, path_;
  const ncclNet_v7_t* net_;
  kvferryNetExt_v2_t ext_{};
  bool has_ext_ = false;
  std::vector<device_properties> devices_; // checks_[i].used
  std::vector<property_check> checks_;
};

} // namespace kvferry::transport
