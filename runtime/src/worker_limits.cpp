// The rules of runtime/worker_limits.hpp. Each rule is here once; the topology
// loader and `kvferry worker` both call check_worker_params.
#include "kvferry/runtime/worker_limits.hpp"

#include <fstream>
#include <unistd.h>

#include <fmt/format.h>

#include "kvferry/transport/channel.hpp"

namespace kvferry::runtime {

std::string format_bytes(std::uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int unit = 0;
  // Whole units only, so that the figure a user reads is exact.
  while (bytes >= 1024 && bytes % 1024 == 0 && unit < 6) {
    bytes /= 1024;
    ++unit;
  }
  return fmt::format("{} {}", bytes, units[unit]);
}

namespace {

// cgroup v2's limit for this process; 0 when there is none or it is unknown.
std::uint64_t cgroup_memory_max() {
  std::ifstream in("/sys/fs/cgroup/memory.max");
  std::string text;
  if (!(in >> text) || text == "max")
    return 0;
  try {
    return std::stoull(text);
  } catch (const std::exception&) {
    return 0;
  }
}

void check_pool(const worker_params& p, std::uint64_t host_memory,
                std::vector<param_problem>& out) {
  if (p.pool_blocks == 0 || p.pool_blocks > max_pool_blocks) {
    out.push_back({worker_param::pool_blocks,
                   fmt::format("must be in 1..{}, got {}", max_pool_blocks,
                               p.pool_blocks)});
    return;
  }
  if (!p.geometry.validate().empty())
    return; // reported as a geometry problem
  auto block = p.geometry.layer_block_bytes();
  auto bytes = p.pool_blocks * block;
  if (bytes > max_pool_bytes)
    out.push_back(
        {worker_param::pool_blocks,
         fmt::format("{} layer-blocks of {} make a pool of {}, over "
                     "the {} limit of one worker",
                     p.pool_blocks, format_bytes(block), format_bytes(bytes),
                     format_bytes(max_pool_bytes))});
  else if (!p.gpu_pool && host_memory != 0 && bytes > host_memory)
    out.push_back(
        {worker_param::pool_blocks,
         fmt::format("{} layer-blocks of {} make a host-memory pool "
                     "of {}, more than this machine's {} of memory",
                     p.pool_blocks, format_bytes(block), format_bytes(bytes),
                     format_bytes(host_memory))});
}

template<class Int>
void check_range(worker_param param, Int value, std::uint64_t min,
                 std::uint64_t max, std::vector<param_problem>& out) {
  if (value < min || value > max)
    out.push_back({param, fmt::format("must be in {}..{}, got {}", min, max,
                                      std::uint64_t{value})});
}

} // namespace

std::uint64_t physical_memory_bytes() {
  auto pages = ::sysconf(_SC_PHYS_PAGES);
  auto page = ::sysconf(_SC_PAGE_SIZE);
  std::uint64_t ram = pages > 0 && page > 0 ? std::uint64_t(pages) * page : 0;
  auto cgroup = cgroup_memory_max();
  if (cgroup != 0 && (ram == 0 || cgroup < ram))
    return cgroup;
  return ram;
}

std::vector<param_problem> check_worker_params(const worker_params& p,
                                               std::uint64_t host_memory) {
  std::vector<param_problem> out;
  if (auto bad = p.geometry.validate(); !bad.empty())
    out.push_back({worker_param::geometry, bad});
  check_pool(p, host_memory, out);
  check_range(worker_param::chunk_bytes, p.chunk_bytes, min_chunk_bytes,
              transport::max_chunk_bytes, out);
  check_range(worker_param::comms_per_peer, p.comms_per_peer, 1, 64, out);
  check_range(worker_param::staging_slots, p.staging_slots, 0,
              transport::max_staging_slots, out);
  check_range(worker_param::timeout_ms, p.timeout_ms, 1, 3600000, out);
  return out;
}

std::string describe_as_flags(const std::vector<param_problem>& problems) {
  std::string text;
  for (auto& problem : problems) {
    const char* flag = "?";
    switch (problem.param) {
    case worker_param::geometry:
      flag = "--layers/--kv-heads/--head-dim/--dtype/--block-tokens";
      break;
    case worker_param::pool_blocks:
      flag = "--pool-blocks";
      break;
    case worker_param::chunk_bytes:
      flag = "--chunk-bytes";
      break;
    case worker_param::comms_per_peer:
      flag = "--comms-per-peer";
      break;
    case worker_param::staging_slots:
      flag = "--staging-slots";
      break;
    case worker_param::timeout_ms:
      flag = "--timeout-ms";
      break;
    }
    text +=
        fmt::format("{}{}: {}", text.empty() ? "" : "; ", flag, problem.what);
  }
  return text;
}

} // namespace kvferry::runtime
