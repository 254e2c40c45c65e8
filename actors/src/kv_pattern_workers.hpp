// The KV test pattern's fills and checks off the app actors' threads
// (private to actors/; the producer and the consumer use it).
//
// A producer that fills and hashes a request, or a consumer that verifies
// one, on its own thread holds every other message (grants, landed reports,
// the next requests) behind that work, and with one actor per worker only
// one request is filled or verified at a time. Instead each app actor owns a
// few pattern workers: detached actors, linked to it, each with its own
// kv_pattern over the same region (on a GPU its own stream). A request's
// blocks belong to that request alone until the work on them is answered,
// so the workers share no state with the app actor: the offsets go in, the
// hash (or the first mismatch) and the time it took come back.
//
// The messages carry no atom (they never leave the process); their
// signatures tell them apart:
//   fill:  (offsets, seed, request_id, first_layer, blocks_per_layer,
//           block_bytes, sampled) -> (hash, ns, gpu_ns, start_ns): the
//           fill, hashed where the CPU can read the blocks
//           (kv_pattern::fill_and_hash; 0 on a GPU or when sampled)
//   check: (offsets, seed, request_id, blocks_per_layer, block_bytes,
//           sampled, by_hash) -> (value, ns, gpu_ns, start_ns): by_hash:
//           hash_blocks of the blocks; else the index of the first block
//           that differs from the pattern (sampled: from its stamps), or
//           no_mismatch
// ns: the work's time in the worker; gpu_ns: its kernel's (0 on the CPU);
// start_ns: when the worker began it (steady_clock, for the demo's
// breakdown: the time before it is the job's wait for its worker).
// A CUDA or bounds error comes back as an ec::cuda_error naming it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include <caf/actor.hpp>
#include <caf/local_actor.hpp>

#include "kvferry/actors/kv_pattern.hpp"
#include "kvferry/actors/memory_region.hpp"

namespace kvferry::pattern_detail {

constexpr std::uint64_t no_mismatch = std::numeric_limits<std::uint64_t>::max();

// The check's value (above) for the blocks at `offsets` of `region`, which
// `pattern` covers. Throws as kv_pattern::check does.
std::uint64_t check_value(kv_pattern& pattern, const memory_region& region,
                          const std::vector<std::uint64_t>& offsets,
                          const pattern_blocks& blocks, bool by_hash);

// Jobs outstanding per worker, and the choice of the worker for the next
// job: the one with the fewest (the next in turn among equals, so that idle
// workers take turns). Round-robin alone put a job behind a busy worker
// while another idled: on a GPU a fill or check holds its worker through
// the kernel's wait, so a request queued there for a whole job.
class job_counts {
public:
  explicit job_counts(std::size_t workers = 0) : jobs_(workers, 0) {}
  // The worker for a job, counted on it until done(index).
  std::size_t take() {
    auto best = next_;
    for (std::size_t k = 1; k < jobs_.size(); ++k) {
      auto i = (next_ + k) % jobs_.size();
      if (jobs_[i] < jobs_[best])
        best = i;
    }
    next_ = (best + 1) % jobs_.size();
    ++jobs_[best];
    return best;
  }
  void done(std::size_t index) { --jobs_[index]; }
  std::size_t outstanding(std::size_t index) const { return jobs_[index]; }

private:
  std::vector<std::size_t> jobs_;
  std::size_t next_ = 0;
};

// The app actor's workers (job_counts picks one per job). Empty for a
// model-only region (the simulator's: there is nothing to write, and the app
// actor "fills" and checks on its own thread as before). Under a deterministic
// scheduler (tests) they are not detached, so that it runs them too.
class pattern_workers {
public:
  pattern_workers() = default;
  // Spawns the workers, linked to `owner`: how many from the core count
  // (worker_count). On a GPU each makes its stream and buffers at once,
  // sized for every `block_bytes` block of the region, so that no request
  // allocates.
  pattern_workers(caf::local_actor* owner,
                  const std::shared_ptr<memory_region>& region,
                  std::uint64_t block_bytes);
  bool empty() const { return workers_.empty(); }
  // The worker for the next job (job_counts::take), counted on it until
  // job_done(index): call it from both handlers of the job's answer. Not
  // empty().
  std::size_t begin_job() { return jobs_.take(); }
  const caf::actor& worker(std::size_t index) const { return workers_[index]; }
  void job_done(std::size_t index) { jobs_.done(index); }

private:
  std::vector<caf::actor> workers_;
  job_counts jobs_;
};

// Workers per app actor: a quarter of the cores (the producer's, the
// consumer's and the transfer threads share them), at least 1 and at most 4;
// two for GPU memory, whose kernels take the whole GPU's memory bandwidth
// anyway: the second overlaps one kernel's launch and wait with the other's
// run, and neither keeps the app actor waiting (KVFERRY_PATTERN_WORKERS
// overrides it, gpu_knobs.hpp).
std::size_t worker_count(const memory_region& region);

} // namespace kvferry::pattern_detail
