// plan_crew (plan_crew.hpp).
#include "kvferry/transport/plan_crew.hpp"

#include "kvferry/transport/env_count.hpp"

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

std::size_t plan_threads(unsigned cores) {
  const unsigned quarter = cores / 4 < 1 ? 1 : cores / 4 > 4 ? 4 : cores / 4;
  return env_count("KVFERRY_PLAN_THREADS", quarter, 64, "threads");
}

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
    threads_.emplace_back([this] { helper(); });
}

void plan_crew::run_erased(std::size_t parts, job_fn fn, void* job) {
  if (parts == 0 || parts > size())
    throw std::invalid_argument("plan_crew: " + std::to_string(parts) +
                                " parts for a crew of " +
                                std::to_string(size()));
  if (parts == 1) {
    fn(job, 0); // its exception is the run's
    return;
  }
  if (threads_.empty())
    start_helpers();
  for (auto& e : errors_)
    e = nullptr;
  std::uint64_t generation;
  {
    std::lock_guard<std::mutex> lock(mu_);
    fn_ = fn;
    job_ = job;
    parts_ = parts;
    next_part_ = 0;
    pending_ = parts;
    // Last: a spinning helper sees it, then reads the rest under mu_.
    generation = ++generation_;
  }
  wake_.notify_all();
  take_parts(generation);
  if (!spin_until([&] { return pending_.load() == 0; }, spin_for)) {
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return pending_.load() == 0; });
  }
  for (std::size_t k = 0; k < parts; ++k)
    if (errors_[k])
      std::rethrow_exception(errors_[k]);
}

// Runs parts of run `generation` until none is left to take. A part is taken
// under mu_ only while its run is the current one and not all its parts are
// taken: the run cannot have returned, so its job is still alive.
void plan_crew::take_parts(std::uint64_t generation) {
  for (;;) {
    std::size_t part;
    job_fn fn;
    void* job;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (generation_.load() != generation || next_part_ >= parts_)
        return;
      part = next_part_++;
      fn = fn_;
      job = job_;
    }
    try {
      fn(job, part);
    } catch (...) {
      errors_[part] = std::current_exception();
    }
    if (--pending_ == 0) {
      std::lock_guard<std::mutex> lock(mu_); // the caller may be about to wait
      done_.notify_one();
    }
  }
}

void plan_crew::helper() {
  std::uint64_t seen = 0;
  auto called = [&] { return stop_.load() || generation_.load() != seen; };
  for (;;) {
    if (!spin_until(called, spin_for)) {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, called);
    }
    if (stop_)
      return;
    seen = generation_.load();
    take_parts(seen);
  }
}

} // namespace kvferry::transport
