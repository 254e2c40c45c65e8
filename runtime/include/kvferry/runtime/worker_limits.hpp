// What a worker's numbers may be, checked in one place for both of its
// callers: `kvferry worker` (its flags) and a topology file (`kvferry launch`
// and its --dry-run), so that a file the dry-run accepts is one the workers
// accept too. Each problem says what is wrong without naming the parameter:
// the caller names it its own way ("--pool-blocks", or
// "topo.yaml:12:5 workers[d0].pool_blocks").
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kvferry/runtime/kv_geometry.hpp"

namespace kvferry::runtime {

// One worker's KV pool at most, whatever the machine (docs/topology.md). A
// pool in host memory must also fit the machine's physical memory.
inline constexpr std::uint64_t max_pool_bytes = std::uint64_t{512} << 30;
// Block indexes are 32-bit on the wire; this leaves room for sentinels.
inline constexpr std::uint64_t max_pool_blocks = std::uint64_t{1} << 24;
// Transfers are split into chunks of at least this size.
inline constexpr std::uint64_t min_chunk_bytes = 4096;
// Workers in one deployment (one directory, one `kvferry launch`).
inline constexpr std::size_t max_workers = 1024;

struct worker_params {
  kv_geometry geometry;
  std::uint64_t pool_blocks = 4096;
  bool gpu_pool = false; // the pool lives in GPU memory, not host memory
  std::uint64_t chunk_bytes = std::uint64_t{4} << 20;
  std::uint32_t comms_per_peer = 2;
  std::uint32_t staging_slots = 4;
  std::uint32_t timeout_ms = 10000;
};

enum class worker_param {
  geometry,
  pool_blocks,
  chunk_bytes,
  comms_per_peer,
  staging_slots,
  timeout_ms
};

struct param_problem {
  worker_param param;
  std::string what;
};

// Physical memory of this machine in bytes (the smaller of RAM and the
// cgroup's memory.max); 0 when unknown.
std::uint64_t physical_memory_bytes();

// Every rule `p` breaks; empty when a worker can start with it.
// `host_memory` (0: unknown) bounds a pool in host memory.
std::vector<param_problem> check_worker_params(const worker_params& p,
                                               std::uint64_t host_memory);

// "--pool-blocks: ...; --chunk-bytes: ...": the problems as `kvferry worker`
// reports them, named by its flags.
std::string describe_as_flags(const std::vector<param_problem>& problems);

// "1 GiB", "64 KiB", "1000 B": sizes in messages.
std::string format_bytes(std::uint64_t bytes);

} // namespace kvferry::runtime
