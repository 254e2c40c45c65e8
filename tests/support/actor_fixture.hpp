// A deterministic actor system for unit tests: CAF's test coordinator (no
// threads, virtual time) under kvferry's system_config, usable from doctest.
//
//   struct my_fixture : kvferry::test::actor_fixture { ... };
//   TEST_CASE_FIXTURE(my_fixture, "...") {
//     auto dir = sys.spawn(kvferry::directory, kvferry::directory_options{});
//     auto reply = request<kvferry::lease>(dir, kvferry::register_atom::value,
//                                          info, "secret");
//     REQUIRE(reply);                       // caf::expected<lease>
//     advance_time(std::chrono::seconds(5)); // fires timers, runs actors
//   }
//
// Messages only move when the fixture runs the scheduler: request() and
// run() do that for you. Nothing blocks: a request whose reply never comes
// yields an error (ec::timeout) instead of hanging.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/all.hpp>
#include <caf/scheduler/test_coordinator.hpp>

#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/system_config.hpp"

namespace kvferry::test {

/// Builds the config before the system (members initialise in order).
struct test_config : runtime::system_config {
  test_config() {
    use_test_coordinator();
  }
};

class actor_fixture {
public:
  using scheduler_type = caf::scheduler::test_coordinator;

  actor_fixture()
    : sys(cfg),
      self(sys, true),
      sched(dynamic_cast<scheduler_type&>(sys.scheduler())) {
    // Timers at t=0 would be indistinguishable from "unset" in logs.
    sched.clock().current_time += std::chrono::hours(1);
  }

  virtual ~actor_fixture() {
    run();
  }

  /// Runs every actor until no message is left. Returns how many messages
  /// were handled.
  size_t run() {
    return sched.run();
  }

  /// Moves virtual time forward (firing due timers), then runs.
  size_t advance_time(caf::timespan by) {
    sched.advance_time(by);
    return run();
  }

  /// Sends a request (from a fresh requester, so pushes to `self` stay
  /// apart), runs the system and returns the reply: the value, or the
  /// error. An actor that never answers gives ec::timeout, never a hang.
  template <class T, class Handle, class... Ts>
  caf::expected<T> request(const Handle& dest, Ts&&... xs) {
    caf::scoped_actor requester{sys, true};
    auto handle = requester->request(dest, caf::infinite,
                                      std::forward<Ts>(xs)...);
    run();
    if (requester->mailbox().size() == 0)
      return make_error(ec::timeout, "test request got no reply");
    std::optional<caf::expected<T>> result;
    handle.receive([&](T& value) { result = std::move(value); },
                   [&](caf::error& err) { result = std::move(err); });
    return std::move(*result);
  }

  /// Takes every message waiting in `self`'s mailbox (e.g. pushes to a
  /// watcher), in arrival order.
  std::vector<caf::message> drain_mailbox() {
    run();
    std::vector<caf::message> result;
    while (self->mailbox().size() > 0)
      self->receive(caf::others >> [&](caf::message_view& x)
                      -> caf::result<caf::message> {
        result.push_back(x.move_content_to_message());
        return caf::message{};
      });
    return result;
  }

  test_config cfg;
  caf::actor_system sys;
  caf::scoped_actor self;
  scheduler_type& sched;

};

}  // namespace kvferry::test
