// A CAF scheduling policy: CAF's work sharing (one shared job queue) with a
// hot window. A scheduler thread that runs out of jobs keeps looking at the
// queue for a while before it sleeps on the condition variable, so a
// message that arrives meanwhile (a peer's reply, the next request) is
// picked up at once instead of paying a futex wake-up on another core. At
// most one thread looks at a time; the others sleep as under CAF's own
// policy, and are woken only when more jobs wait than threads are looking.
//
// This is the scheduler-side twin of the transfer actor's hot window
// (docs/architecture.md, "The hot window"): it helps every actor that is
// scheduled, not detached (the demo's producer and consumer, the node
// actor, kvferry::endpoint's actors). Installed by system_config where its
// window is above 0 (runtime_options::scheduler_hot_window, or
// $KVFERRY_SCHED_HOT_US).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>

#include <caf/policy/unprofiled.hpp>
#include <caf/resumable.hpp>
#include <caf/scheduler/abstract_coordinator.hpp>

namespace kvferry::runtime {

/// How long an idle scheduler thread keeps looking for jobs before it
/// sleeps: $KVFERRY_SCHED_HOT_US (microseconds, 0 = off: CAF's own sharing
/// policy) where set, else `fallback` (the process's own default).
std::chrono::microseconds
scheduler_hot_window(std::chrono::microseconds fallback);

class hot_sharing : public caf::policy::unprofiled {
public:
  using clock = std::chrono::steady_clock;

  struct coordinator_data {
    explicit coordinator_data(caf::scheduler::abstract_coordinator*);

    std::mutex lock;
    std::condition_variable cv;
    std::deque<caf::resumable*> queue; // guarded by lock
    int sleeping = 0;                  // guarded by lock
    /// queue.size(), readable without the lock by the looking thread.
    std::atomic<size_t> queued{0};
    /// Threads looking at the queue instead of sleeping (0 or 1).
    std::atomic<int> looking{0};
    /// Set by whoever builds the coordinator (system_config); 0 = never
    /// look, CAF's sharing policy.
    clock::duration window{0};
  };

  struct worker_data {
    explicit worker_data(caf::scheduler::abstract_coordinator*) {}
  };

  template<class Coordinator>
  void central_enqueue(Coordinator* self, caf::resumable* job) {
    enqueue(d(self), job);
  }

  template<class Worker>
  void external_enqueue(Worker* self, caf::resumable* job) {
    enqueue(d(self->parent()), job);
  }

  template<class Worker>
  void internal_enqueue(Worker* self, caf::resumable* job) {
    enqueue(d(self->parent()), job);
  }

  template<class Worker>
  void resume_job_later(Worker* self, caf::resumable* job) {
    enqueue(d(self->parent()), job);
  }

  template<class Worker>
  caf::resumable* dequeue(Worker* self) {
    auto& data = d(self->parent());
    if (auto* job = look(data))
      return job;
    return sleep_for_job(data);
  }

  template<class Worker, class UnaryFunction>
  void foreach_resumable(Worker*, UnaryFunction) {
    // no per-worker queues
  }

  template<class Coordinator, class UnaryFunction>
  void foreach_central_resumable(Coordinator* self, UnaryFunction f) {
    auto& data = d(self);
    std::unique_lock<std::mutex> guard{data.lock};
    while (!data.queue.empty()) {
      auto* job = take_front(data);
      f(job);
    }
  }

private:
  static void enqueue(coordinator_data& data, caf::resumable* job);
  /// The hot window: looks at the queue until a job comes or the window
  /// ends; nullptr if another thread is already looking or none came.
  static caf::resumable* look(coordinator_data& data);
  static caf::resumable* sleep_for_job(coordinator_data& data);
  static caf::resumable* take_front(coordinator_data& data);
};

} // namespace kvferry::runtime
