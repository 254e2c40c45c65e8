// CAF 0.17 does not cancel a request's timeout when the response comes (0.18
// does): the timeout stays in the actor clock's schedule until its deadline,
// then fires into nothing. Under the actors engine's test coordinator, whose
// deadlines are out of reach on purpose (27.8 h of virtual time:
// actors_engine.cpp), that is every send, receive and prefill request of the
// run, ~65 entries and ~16 KB per simulated request: memory that grows with
// the trace. drop_answered_timeouts() removes the timeouts of the requests
// already answered, so that the schedule holds those still open only.
#pragma once

#include <cstddef>

#include <caf/detail/test_actor_clock.hpp>

namespace kvferry::sim {

/// Removes from `clock` the timeouts of requests whose response has come
/// (their requester holds no handler for it any more); returns how many.
/// Timers and delayed messages stay.
std::size_t drop_answered_timeouts(caf::detail::test_actor_clock& clock);

} // namespace kvferry::sim
