// drop_answered_timeouts (answered_timeouts.hpp). It reads CAF's protected
// members — the clock's schedule, an actor's response handlers — through
// pointers to members formed in derived classes (legal C++, but CAF 0.17's
// layout: test_sim_actors checks that it still removes them).
#include "kvferry/sim/answered_timeouts.hpp"

#include <algorithm>

#include <caf/scheduled_actor.hpp>

namespace kvferry::sim {

namespace {

using caf::detail::simple_actor_clock;

struct clock_members : caf::detail::test_actor_clock {
  static constexpr auto schedule = &clock_members::schedule_;
  static constexpr auto lookup = &clock_members::actor_lookup_;
};

struct actor_members : caf::scheduled_actor {
  static constexpr auto multiplexed = &actor_members::multiplexed_responses_;
  static constexpr auto awaited = &actor_members::awaited_responses_;
};

// Whether `self` still waits for the response `id` (a `then` or an `await`
// handler).
bool awaits(caf::scheduled_actor& self, caf::message_id id) {
  if ((self.*actor_members::multiplexed).count(id) > 0)
    return true;
  auto& awaited = self.*actor_members::awaited;
  return std::any_of(awaited.begin(), awaited.end(),
                     [id](const auto& handler) { return handler.first == id; });
}

} // namespace

std::size_t drop_answered_timeouts(caf::detail::test_actor_clock& clock) {
  auto& schedule = clock.*clock_members::schedule;
  auto& lookup = clock.*clock_members::lookup;
  std::size_t dropped = 0;
  for (auto i = schedule.begin(); i != schedule.end();) {
    auto& event = *i->second;
    if (event.subtype == simple_actor_clock::request_timeout_type) {
      auto& timeout = static_cast<simple_actor_clock::request_timeout&>(event);
      auto* self =
          timeout.self
              ? dynamic_cast<caf::scheduled_actor*>(timeout.self->get())
              : nullptr;
      if (self != nullptr && !awaits(*self, timeout.id)) {
        lookup.erase(timeout.backlink);
        i = schedule.erase(i);
        ++dropped;
        continue;
      }
    }
    ++i;
  }
  return dropped;
}

} // namespace kvferry::sim
