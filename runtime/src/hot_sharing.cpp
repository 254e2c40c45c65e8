#include "kvferry/runtime/hot_sharing.hpp"

#include <thread>

#include "kvferry/runtime/env_micros.hpp"

namespace kvferry::runtime {

using namespace std::chrono;

microseconds scheduler_hot_window(microseconds fallback) {
  return env_micros("KVFERRY_SCHED_HOT_US", fallback, seconds(1));
}

hot_sharing::coordinator_data::coordinator_data(
    caf::scheduler::abstract_coordinator*) {
}

void hot_sharing::enqueue(coordinator_data& data, caf::resumable* job) {
  bool wake = false;
  {
    std::lock_guard<std::mutex> guard{data.lock};
    data.queue.push_back(job);
    data.queued.store(data.queue.size(), std::memory_order_release);
    // A looking thread takes a job without being woken: wake a sleeper
    // only for the jobs beyond those.
    const auto looking = data.looking.load(std::memory_order_acquire);
    wake =
        data.sleeping > 0 && data.queue.size() > static_cast<size_t>(looking);
  }
  if (wake)
    data.cv.notify_one();
}

caf::resumable* hot_sharing::look(coordinator_data& data) {
  if (data.window == clock::duration::zero())
    return nullptr;
  int none = 0;
  if (!data.looking.compare_exchange_strong(none, 1))
    return nullptr; // one looking thread is enough
  const auto until = clock::now() + data.window;
  for (;;) {
    if (data.queued.load(std::memory_order_acquire) > 0) {
      std::lock_guard<std::mutex> guard{data.lock};
      if (!data.queue.empty()) {
        // Under the lock: a job enqueued from here on sees no looker and
        // wakes a sleeper, instead of waiting for this thread's job.
        data.looking.store(0, std::memory_order_release);
        return take_front(data);
      }
    } else if (clock::now() >= until) {
      break;
    } else {
      std::this_thread::yield(); // the threads it waits for come first
    }
  }
  // A job enqueued from here on sees no looker and wakes a sleeper; one
  // enqueued before was counted on this thread, which checks the queue
  // under the lock before it sleeps (sleep_for_job).
  data.looking.store(0, std::memory_order_release);
  return nullptr;
}

caf::resumable* hot_sharing::sleep_for_job(coordinator_data& data) {
  std::unique_lock<std::mutex> guard{data.lock};
  ++data.sleeping;
  data.cv.wait(guard, [&] { return !data.queue.empty(); });
  --data.sleeping;
  return take_front(data);
}

caf::resumable* hot_sharing::take_front(coordinator_data& data) {
  auto* job = data.queue.front();
  data.queue.pop_front();
  data.queued.store(data.queue.size(), std::memory_order_release);
  return job;
}

} // namespace kvferry::runtime
