#include "kv_pattern_workers.hpp"

#include <algorithm>
#include <chrono>
#include <exception>
#include <thread>

#include <caf/all.hpp>
#include <caf/scheduler/test_coordinator.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "gpu_knobs.hpp"
#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/kv_pattern.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/steady_ns.hpp"

namespace kvferry::pattern_detail {

namespace {

using namespace std::chrono;

std::int64_t ns_since(steady_clock::time_point t0) {
  return duration_cast<nanoseconds>(steady_clock::now() - t0).count();
}

// Runs `work` (returning the answer's value), timed, with the GPU time of
// its kernel and when it began; an exception becomes an error naming the
// request.
template<class Work>
caf::result<std::uint64_t, std::int64_t, std::int64_t, std::int64_t>
timed(const memory_region& region, const kv_pattern& pattern,
      std::uint64_t request_id, Work work) {
  auto start_ns = runtime::steady_ns();
  auto t0 = steady_clock::now();
  try {
    auto value = work();
    return caf::make_result(value, ns_since(t0), pattern.last_gpu_ns(),
                            start_ns);
  } catch (const std::exception& e) {
    return make_error(ec::cuda_error,
                      fmt::format("KV pattern of request {} in region '{}': {}",
                                  request_id, region.name(), e.what()));
  }
}

caf::behavior pattern_worker(caf::event_based_actor*,
                             std::shared_ptr<memory_region> region,
                             std::size_t max_blocks) {
  auto pattern = std::make_shared<kv_pattern>(region);
  try {
    pattern->prepare(max_blocks);
  } catch (const std::exception& e) {
    // Each request tries again and fails naming the cause.
    spdlog::warn("KV pattern worker of region '{}': {}", region->name(),
                 e.what());
  }
  return {
      // fill
      [region, pattern](const std::vector<std::uint64_t>& offsets,
                        std::uint64_t seed, std::uint64_t request_id,
                        std::uint32_t first_layer, std::uint32_t bpl,
                        std::uint64_t block_bytes, bool sampled) {
        return timed(*region, *pattern, request_id, [&] {
          return pattern
              ->fill_and_hash(offsets, {seed, request_id, first_layer, bpl,
                                        block_bytes, sampled})
              .value_or(0);
        });
      },
      // check
      [region, pattern](const std::vector<std::uint64_t>& offsets,
                        std::uint64_t seed, std::uint64_t request_id,
                        std::uint32_t bpl, std::uint64_t block_bytes,
                        bool sampled, bool by_hash) {
        return timed(*region, *pattern, request_id, [&] {
          return check_value(*pattern, *region, offsets,
                             {seed, request_id, 0, bpl, block_bytes, sampled},
                             by_hash);
        });
      },
  };
}

} // namespace

std::uint64_t check_value(kv_pattern& pattern, const memory_region& region,
                          const std::vector<std::uint64_t>& offsets,
                          const pattern_blocks& blocks, bool by_hash) {
  if (by_hash)
    return hash_blocks(region.data(), offsets, blocks.block_bytes);
  auto bad = pattern.check(offsets, blocks);
  return bad ? *bad : no_mismatch;
}

std::size_t worker_count(const memory_region& region) {
  if (!region.host_accessible()) {
    constexpr unsigned on_gpu = 2;
    try {
      return detail::pattern_workers_on_gpu(on_gpu);
    } catch (const std::invalid_argument& e) {
      spdlog::error("region '{}': {}; using {}", region.name(), e.what(),
                    on_gpu);
      return on_gpu;
    }
  }
  auto cores = std::max(1u, std::thread::hardware_concurrency());
  return std::clamp<std::size_t>(cores / 4, 1, 4);
}

pattern_workers::pattern_workers(caf::local_actor* owner,
                                 const std::shared_ptr<memory_region>& region,
                                 std::uint64_t block_bytes) {
  if (region->is_model_only())
    return;
  // Under a deterministic scheduler (tests) the workers are ordinary actors
  // that it runs like every other: the same messages, in its order.
  auto& sched = owner->home_system().scheduler();
  bool deterministic =
      dynamic_cast<caf::scheduler::test_coordinator*>(&sched) != nullptr;
  auto n = worker_count(*region);
  // A call covers at most every block of the region once.
  auto max_blocks = block_bytes == 0 ? 0 : region->size() / block_bytes;
  for (std::size_t k = 0; k < n; ++k)
    workers_.push_back(
        deterministic
            ? owner->spawn<caf::linked>(pattern_worker, region, max_blocks)
            : owner->spawn<caf::detached + caf::linked>(pattern_worker, region,
                                                        max_blocks));
  jobs_ = job_counts{n};
}

} // namespace kvferry::pattern_detail
