// Which GPUs a command may use and whether two of them reach each other
// directly, behind an interface that a unit test can fake (CI has no GPU, let
// alone two). Commands validate a requested ordinal with check_gpu_ordinal,
// choose how to copy between two GPUs with plan_gpu_pair, and `kvferry info`
// prints format_peer_matrix.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvferry::transport {

class gpu_topology {
public:
  virtual ~gpu_topology() = default;
  virtual int device_count() const = 0;
  /// Why there is no device (meaningful when device_count() == 0).
  virtual std::string why_none() const = 0;
  /// Whether kernels running on `from` can read and write memory of `to`
  /// (cudaDeviceCanAccessPeer(from, to)); false for from == to.
  virtual bool can_access_peer(int from, int to) const = 0;
  /// Lets kernels on `from` use memory of `to` (cudaDeviceEnablePeerAccess;
  /// already enabled counts as done). Throws gpu_error naming both GPUs.
  virtual void enable_peer_access(int from, int to) = 0;
};

/// The CUDA runtime's view of this machine; no device (and the reason) in a
/// build without CUDA or without a driver. Never throws.
std::unique_ptr<gpu_topology> system_gpu_topology();

/// Throws std::invalid_argument when `ordinal` is not a GPU of `gpus`; the
/// message names the option, the ordinal and how many GPUs there are, e.g.
/// "--gpu 3: no such GPU; this machine has 2 (0..1)".
void check_gpu_ordinal(const gpu_topology& gpus, int ordinal,
                       const std::string& option);

/// The fastest plain copy between two GPUs, which a copy kernel is measured
/// against: a device-local cudaMemcpy on one GPU, cudaMemcpyPeer across two.
enum class copy_ceiling { same_device_memcpy, peer_memcpy };
const char* describe(copy_ceiling ceiling);

/// Thrown when two GPUs exist but the destination cannot access the source.
class no_peer_access : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

/// A source and destination GPU for one copy benchmark: kernels run on `dst`
/// and read `src` directly, so two different GPUs need peer access dst → src.
struct gpu_pair {
  int src = 0;
  int dst = 0;
  copy_ceiling ceiling = copy_ceiling::same_device_memcpy;
  bool same_device() const { return src == dst; }
};

/// Validates both ordinals (std::invalid_argument naming --src-gpu or
/// --dst-gpu) and, for two GPUs, peer access (no_peer_access naming both).
gpu_pair plan_gpu_pair(const gpu_topology& gpus, int src, int dst);

/// Two workers' pools for CUDA IPC: the sending worker's copy kernel runs on
/// `sender` and writes the receiver's pool directly, so two different GPUs need
/// peer access sender → receiver (one GPU needs nothing). Throws
/// no_peer_access naming both GPUs and the way around it (the plugin path,
/// `--transport net`). Ordinals must have been checked already.
void check_ipc_peer_access(const gpu_topology& gpus, int sender, int receiver);

/// The peer-access matrix as printable lines (a header, then one row per GPU:
/// "yes"/"no" where the row's GPU can access the column's, "-" on the
/// diagonal). Empty for fewer than two GPUs: there is nothing to show.
std::vector<std::string> format_peer_matrix(const gpu_topology& gpus);

} // namespace kvferry::transport
