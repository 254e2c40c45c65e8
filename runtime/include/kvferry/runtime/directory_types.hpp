// What the directory knows about a worker: metadata only, never bytes.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/meta/type_name.hpp>
#include <caf/timespan.hpp>

#include "kvferry/transport/memory_kind.hpp"

namespace kvferry {

/// Where an exported region's bytes live (the transport's enum).
using transport::memory_kind;
using transport::to_string;

/// What a worker does in disaggregated serving.
enum class worker_role : uint8_t { prefill = 0, decode = 1 };

const char* to_string(worker_role role);

/// Parses "prefill" or "decode"; false on anything else.
bool parse_role(const std::string& text, worker_role& out);

/// A memory region a worker exports to its peers (KV block pool).
struct region_info {
  uint64_t id = 0;
  /// Address in the owner's address space; peers only use it as an origin
  /// for offsets, never dereference it.
  uint64_t base = 0;
  uint64_t size = 0;
  memory_kind kind = memory_kind::host;
  /// CUDA device ordinal of a cuda region, -1 for host memory.
  int32_t gpu = -1;
  /// cudaIpcMemHandle_t bytes (64 B) for same-host peers; empty if none.
  std::vector<char> ipc_handle;
};

template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, region_info& x) {
  return f(caf::meta::type_name("kvferry::region_info"), x.id, x.base, x.size,
           x.kind, x.gpu, x.ipc_handle);
}

/// Size of one v7 plugin listen handle (NCCL_NET_HANDLE_MAXSIZE).
constexpr size_t listen_handle_size = 128;

/// A worker as registered with the directory.
struct worker_info {
  /// Unique in the deployment, e.g. "prefill-0".
  std::string name;
  worker_role role = worker_role::prefill;
  /// Hostname (for people and logs).
  std::string host;
  /// Same-host detection: hostname + boot id. Two workers with equal
  /// host_id may use CUDA IPC instead of the network.
  std::string host_id;
  /// CUDA device ordinal, -1 for none (host memory only).
  int32_t gpu = -1;
  /// Network plugin name (the v7 `name` field), e.g. "kvsock".
  std::string plugin;
  /// One listen handle (listen_handle_size bytes) per device / comm.
  std::vector<std::vector<char>> listen_handles;
  bool ipc_capable = false;
  std::vector<region_info> regions;
  /// The worker's transfer actor (may be null for tools).
  caf::actor transfer;
  /// The worker's app actor: producer or consumer (may be null for tools).
  caf::actor app;
  /// Free-form extras (model, version, ...).
  std::map<std::string, std::string> attributes;
};

/// The attribute (value "node") of a kvferry::node registered in directory
/// mode: its app is a node actor, not a producer or consumer, and its role
/// means nothing. Workers and routers pass such members by.
constexpr const char* kind_attribute = "kind";
constexpr const char* node_kind = "node";

inline bool is_node(const worker_info& w) {
  auto i = w.attributes.find(kind_attribute);
  return i != w.attributes.end() && i->second == node_kind;
}

template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, worker_info& x) {
  return f(caf::meta::type_name("kvferry::worker_info"), x.name, x.role, x.host,
           x.host_id, x.gpu, x.plugin, x.listen_handles, x.ipc_capable,
           x.regions, x.transfer, x.app, x.attributes);
}

/// What a successful registration grants: the token that authorises renew
/// and leave, and how long the registration lives without a renew.
struct lease {
  uint64_t token = 0;
  caf::timespan duration{0};
};

template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, lease& x) {
  return f(caf::meta::type_name("kvferry::lease"), x.token, x.duration);
}

/// This machine's same-host identity: hostname + "/" + the kernel boot id.
std::string local_host_id();

/// This machine's hostname.
std::string local_hostname();

} // namespace kvferry
