// How a server's one thread hears of what happens on kvferry's threads:
// node callbacks post closures here, and the server's loop runs them, so
// every piece of the server's state is touched by its own thread only.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>

namespace example {

using clock = std::chrono::steady_clock;

class mailbox {
public:
  /// Thread-safe; never blocks for long.
  void post(std::function<void()> f) {
    {
      std::lock_guard<std::mutex> guard(mutex_);
      queue_.push_back(std::move(f));
    }
    wake_.notify_one();
  }
  /// Runs everything posted so far, first waiting for something until
  /// `until` at the latest.
  void run_until(clock::time_point until) {
    std::deque<std::function<void()>> batch;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait_until(lock, until, [this] { return !queue_.empty(); });
      batch.swap(queue_);
    }
    for (auto& f : batch)
      f();
  }

private:
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
};

} // namespace example
