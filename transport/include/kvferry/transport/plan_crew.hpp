// Helper threads that pack one large copy plan in parts together with the
// calling thread (gpu_copy_engine::set_plan_threads, table_plan.hpp's
// pack_plan_in_parts): a vector call over tens of thousands of KV blocks
// costs the host a few nanoseconds per block, as much as the GPU takes to
// copy a 4 KiB block, and the transfer actor's one thread would otherwise
// pace the GPU. Started on first use, joined by the destructor. A run's
// parts are taken in order by whichever of its threads is free, the caller
// first: a helper still waking up (tens of microseconds from sleep, more on
// a loaded host) leaves its part to the threads already at work instead of
// holding the run up. Between runs a helper (and the caller, waiting for
// the parts taken) looks for the next step for up to 50 us before it
// sleeps: a plan's two phases, and often the next plan, follow within
// microseconds. One crew serves one thread's jobs at a time (the engine's).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace kvferry::transport {

/// How many threads pack a large CUDA IPC plan (gpu_copy_engine::
/// set_plan_threads: 16,384 extents or more, e.g. one vector call over
/// 4 KiB KV blocks), and how many parts the endpoint's caller-side pass over
/// such a call takes: KVFERRY_PLAN_THREADS=N (1..64); unset or empty: a
/// quarter of `cores`, 1 to 4 (one thread on a 2-core host, four on a
/// 16-core GPU host). Anything else throws std::invalid_argument naming the
/// variable.
std::size_t plan_threads(unsigned cores);

class plan_crew {
public:
  /// A crew of `helpers` threads besides the caller's (0: the caller alone).
  explicit plan_crew(std::size_t helpers);
  ~plan_crew();
  plan_crew(const plan_crew&) = delete;
  plan_crew& operator=(const plan_crew&) = delete;

  /// The most parts one run takes: the helpers and the calling thread.
  std::size_t size() const { return helpers_ + 1; }

  /// Runs job(0) .. job(parts - 1), each once, on the calling thread and the
  /// helpers, whichever takes it (parts at most size():
  /// std::invalid_argument otherwise), and returns once every part has; then
  /// rethrows the exception of the lowest part that threw (parts in plan
  /// order: its error is the plan's first). Allocates nothing once the
  /// helpers have started.
  template<class Job>
  void run(std::size_t parts, Job& job) {
    run_erased(
        parts, [](void* j, std::size_t k) { (*static_cast<Job*>(j))(k); },
        &job);
  }

private:
  using job_fn = void (*)(void*, std::size_t);
  void run_erased(std::size_t parts, job_fn fn, void* job);
  void start_helpers();
  void helper();
  void take_parts(std::uint64_t generation);

  std::size_t helpers_;
  std::vector<std::thread> threads_;
  // Changed under mu_ (the condition variables' predicates), read without
  // it while spinning.
  std::mutex mu_;
  std::condition_variable wake_, done_;
  std::atomic<std::uint64_t> generation_{0}; // one per run
  std::atomic<std::size_t> pending_{0};      // this run's parts not done
  std::atomic<bool> stop_{false};
  std::size_t parts_ = 0, next_part_ = 0; // next_part_: the next to take
  job_fn fn_ = nullptr;
  void* job_ = nullptr;
  std::vector<std::exception_ptr> errors_; // one per part, this run's
  static constexpr std::chrono::microseconds spin_for{50};
};

} // namespace kvferry::transport
