// plan_crew (plan_crew.hpp).
#include "kvferry/transport/plan_crew.hpp"

#include <stdexcept>
#include <string>

namespace kvferry::transport {

namespace {

// Polls `done()` for up to `limit`; true once it holds.
template<class Done>
bool spin_until(Done&& done, std::chrono::microseconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!done())
    if (std::chrono::steady_clock::now() >= until)
      return false;
  return true;
}

} // namespace

plan_crew::plan_crew(std::size_t helpers) : helpers_(helpers) {
  errors_.resize(helpers + 1);
}

plan_crew::~plan_crew() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : threads_)
    t.join();
}

void plan_crew::start_helpers() {
  threads_.reserve(helpers_);
  for (std::size_t i = 0; i < helpers_; ++i)
    threads_.emplace_back([this, i] { helper(i); });
}

void plan_crew::run_erased(std::size_t parts, job_fn fn, void* job) {
  if (parts == 0 || parts > size())
    throw std::invalid_argument("plan_crew: " + std::to_string(parts) +
                                " parts for a crew of " +
                                std::to_string(size()));
  if (parts > 1 && threads_.empty())
    start_helpers();
  for (auto& e : errors_)
    e = nullptr;
  if (parts > 1) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = fn;
      job_ = job;
      parts_ = parts;
      pending_ = parts - 1;
      ++generation_; // last: a spinning helper reads the rest under mu_
    }
    wake_.notify_all();
  }
  try {
    fn(job, 0);
  } catch (...) {
    errors_[0] = std::current_exception();
  }
  if (parts > 1 &&
      !spin_until([&] { return pending_.load() == 0; }, spin_for)) {
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return pending_.load() == 0; });
  }
  for (std::size_t k = 0; k < parts; ++k)
    if (errors_[k])
      std::rethrow_exception(errors_[k]);
}

void plan_crew::helper(std::size_t index) {
  const std::size_t part = index + 1;
  std::uint64_t seen = 0;
  auto called = [&] { return stop_.load() || generation_.load() != seen; };
  for (;;) {
    spin_until(called, spin_for);
    std::unique_lock<std::mutex> lock(mu_);
    wake_.wait(lock, called);
    if (stop_)
      return;
    seen = generation_;
    if (part >= parts_)
      continue; // not needed this run
    const auto fn = fn_;
    auto* job = job_;
    lock.unlock();
    try {
      fn(job, part);
    } catch (...) {
      errors_[part] = std::current_exception();
    }
    lock.lock();
    if (--pending_ == 0)
      done_.notify_one();
  }
}

} // namespace kvferry::transport
