// One decode worker's continuous batching (docs/sim.md, "What is
// modelled", 6), the same in both engines: a request whose KV is complete
// joins the next step (up to the batch limit); each step gives every
// request in it one token; a request leaves after its output tokens (at
// least one). The owner times the steps (`decode_step_ms` at the batch
// size) and says when one ends.
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <functional>
#include <queue>
#include <utility>
#include <vector>

namespace kvferry::sim {

class decode_batch {
public:
  /// Requests (the owner's ids) whose KV is complete, waiting for a step.
  std::deque<std::uint32_t> ready;
  /// A step is running.
  bool stepping = false;

  /// Starts a step if anything is ready or running: takes ready requests
  /// into the batch, `tokens(id)` their output tokens. Returns the batch
  /// size (0: idle, no step started).
  template<class Tokens>
  std::size_t start(std::size_t max_batch, Tokens tokens) {
    while (!ready.empty() && running_.size() < max_batch) {
      auto id = ready.front();
      ready.pop_front();
      running_.push({steps_ + std::max<std::uint32_t>(1, tokens(id)), id});
      joined_.push_back(id);
    }
    stepping = !running_.empty();
    return running_.size();
  }

  /// The running step ended: `first(id)` for the requests whose first token
  /// it gave, `last(id)` for those it gave their last (they leave).
  template<class First, class Last>
  void step_done(First first, Last last) {
    ++steps_;
    for (auto id : joined_)
      first(id);
    joined_.clear();
    while (!running_.empty() && running_.top().first == steps_) {
      auto id = running_.top().second;
      running_.pop();
      last(id);
    }
  }

  /// Requests waiting or in the batch.
  std::size_t size() const { return ready.size() + running_.size(); }

  /// The worker died: everything goes.
  void clear() {
    ready.clear();
    joined_.clear();
    running_ = {};
    stepping = false;
  }

private:
  // The batch, kept so that a step costs what joins and leaves, not the
  // batch size: requests by the step that gives their last token.
  using leaving = std::pair<std::uint64_t, std::uint32_t>; // (step, id)
  std::priority_queue<leaving, std::vector<leaving>, std::greater<leaving>>
      running_;
  std::vector<std::uint32_t> joined_; // their first token ends this step
  std::uint64_t steps_ = 0;           // steps completed
};

} // namespace kvferry::sim
