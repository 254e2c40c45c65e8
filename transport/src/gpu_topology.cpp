#include "kvferry/transport/gpu_topology.hpp"

#include <fmt/format.h>

#include "kvferry/transport/gpu_memory.hpp"

#ifdef KVFERRY_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvferry::transport {
namespace {

#ifdef KVFERRY_HAVE_CUDA
class cuda_topology final : public gpu_topology {
public:
  cuda_topology() {
    if (auto err = cudaGetDeviceCount(&count_); err != cudaSuccess) {
      count_ = 0;
      why_none_ = std::string{"CUDA reports: "} + cudaGetErrorString(err);
    } else if (count_ == 0) {
      why_none_ = "CUDA sees no devices";
    }
  }
  int device_count() const override { return count_; }
  std::string why_none() const override { return why_none_; }
  bool can_access_peer(int from, int to) const override {
    int can = 0;
    return from != to &&
           cudaDeviceCanAccessPeer(&can, from, to) == cudaSuccess && can != 0;
  }
  void enable_peer_access(int from, int to) override {
    if (auto err = cudaSetDevice(from); err != cudaSuccess)
      throw gpu_error(fmt::format("cudaSetDevice({}) failed: {}", from,
                                  cudaGetErrorString(err)));
    auto err = cudaDeviceEnablePeerAccess(to, 0);
    if (err == cudaErrorPeerAccessAlreadyEnabled) {
      cudaGetLastError(); // clear the sticky "already enabled" so later checks
                          // don't see it
      return;
    }
    if (err != cudaSuccess)
      throw gpu_error(fmt::format(
          "cudaDeviceEnablePeerAccess from GPU {} to GPU {} failed: {}", from,
          to, cudaGetErrorString(err)));
  }

private:
  int count_ = 0;
  std::string why_none_;
};
#else
class cuda_topology final : public gpu_topology {
public:
  int device_count() const override { return 0; }
  std::string why_none() const override {
    return "this build has no CUDA support (no nvcc at configure time)";
  }
  bool can_access_peer(int, int) const override { return false; }
  void enable_peer_access(int, int) override {
    throw_no_cuda("cudaDeviceEnablePeerAccess");
  }
};
#endif

} // namespace

std::unique_ptr<gpu_topology> system_gpu_topology() {
  return std::make_unique<cuda_topology>();
}

void check_gpu_ordinal(const gpu_topology& gpus, int ordinal,
                       const std::string& option) {
  const int count = gpus.device_count();
  if (ordinal >= 0 && ordinal < count)
    return;
  if (count == 0)
    throw std::invalid_argument(
        fmt::format("{} {}: no such GPU; this machine has none ({})", option,
                    ordinal, gpus.why_none()));
  throw std::invalid_argument(
      fmt::format("{} {}: no such GPU; this machine has {} (0..{})", option,
                  ordinal, count, count - 1));
}

const char* describe(copy_ceiling ceiling) {
  switch (ceiling) {
  case copy_ceiling::same_device_memcpy:
    return "one contiguous cudaMemcpyAsync on one GPU";
  case copy_ceiling::peer_memcpy:
    return "one contiguous cudaMemcpyPeerAsync between the two GPUs";
  }
  return "?";
}

gpu_pair plan_gpu_pair(const gpu_topology& gpus, int src, int dst) {
  check_gpu_ordinal(gpus, src, "--src-gpu");
  check_gpu_ordinal(gpus, dst, "--dst-gpu");
  if (src == dst)
    return gpu_pair{src, dst, copy_ceiling::same_device_memcpy};
  if (!gpus.can_access_peer(dst, src))
    throw no_peer_access(
        fmt::format("GPU {} cannot access GPU {}'s memory "
                    "(cudaDeviceCanAccessPeer says no: no NVLink or PCIe "
                    "peer path between them); the copy kernels run on the "
                    "destination GPU and read the source "
                    "directly, so --src-gpu {} --dst-gpu {} is not possible "
                    "here (see the peer-access matrix of "
                    "`kvferry info`)",
                    dst, src, src, dst));
  return gpu_pair{src, dst, copy_ceiling::peer_memcpy};
}

void check_ipc_peer_access(const gpu_topology& gpus, int sender, int receiver) {
  if (sender == receiver || gpus.can_access_peer(sender, receiver))
    return;
  throw no_peer_access(fmt::format(
      "GPU {} cannot access GPU {}'s memory (cudaDeviceCanAccessPeer says "
      "no: no NVLink or PCIe peer path between them); over CUDA IPC the "
      "sending worker's kernel on GPU {} writes the receiver's pool on GPU {} "
      "directly, so this pair needs --transport net (the plugin, staging "
      "through host memory); see the peer-access matrix of `kvferry info`",
      sender, receiver, sender, receiver));
}

std::vector<std::string> format_peer_matrix(const gpu_topology& gpus) {
  const int count = gpus.device_count();
  std::vector<std::string> lines;
  if (count < 2)
    return lines;
  std::string header = "from\\to";
  for (int to = 0; to < count; ++to)
    header += fmt::format(" {:>4}", to);
  lines.push_back(header);
  for (int from = 0; from < count; ++from) {
    std::string row = fmt::format("{:>7}", from);
    for (int to = 0; to < count; ++to)
      row += fmt::format(" {:>4}", from == to                       ? "-"
                                   : gpus.can_access_peer(from, to) ? "yes"
                                                                    : "no");
    lines.push_back(row);
  }
  return lines;
}

} // namespace kvferry::transport
