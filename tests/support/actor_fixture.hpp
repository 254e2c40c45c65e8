// A deterministic actor system for unit tests: CAF's test coordinator (no
// threads, virtual time) under kvferry's system_config, usable from doctest.
//
//   TEST_CASE_FIXTURE(kvferry::test::actor_fixture, "...") {
//     auto dir = kvferry::spawn_directory(sys, kvferry::directory_options{});
//     auto reply = request<kvferry::lease>(dir, kvferry::register_atom::value,
//                                          info, std::string{"secret"});
//     REQUIRE(reply);                        // caf::expected<lease>
//     advance_time(std::chrono::seconds(5)); // fires timers, runs actors
//     auto pushed = collected();             // what `collector` received
//   }
//
// Messages only move when the fixture runs the scheduler: request(),
// run() and advance_time() do that. Nothing blocks: a request whose reply
// never comes yields ec::timeout instead of hanging.
//
// Two CAF 0.17.6 pitfalls this fixture avoids, worth knowing in your tests:
// - spawn(f) of a function actor with *no* arguments dereferences a null
//   argument tuple inside CAF (UBSan: "reference binding to null pointer");
//   give such functions one (dummy) argument.
// - inspecting a blocking actor's mailbox (scoped_actor->mailbox().size())
//   trips UBSan's vptr check on CAF's intrusive queues; use `collector`.
#pragma once

#include <chrono>
#include <memory>
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
  test_config() { use_test_coordinator(); }
};

namespace detail {

using message_log = std::shared_ptr<std::vector<caf::message>>;

// Keeps the collector's behaviour non-empty (an actor without one quits);
// nobody sends it.
using collector_noop_atom = caf::atom_constant<caf::atom("kvfcolnop")>;

// Records every message it receives (e.g. pushes to a watcher).
inline caf::behavior collect_messages(caf::event_based_actor* self,
                                      message_log log) {
  self->set_default_handler(
      [log](caf::scheduled_actor*,
            caf::message_view& x) -> caf::result<caf::message> {
        log->push_back(x.move_content_to_message());
        return caf::message{};
      });
  return {[](collector_noop_atom) {}};
}

template<class T>
using reply_slot = std::shared_ptr<std::optional<caf::expected<T>>>;

// Sends one request and stores the reply or the error in `out`.
template<class T, class Handle, class... Ts>
void request_once(caf::event_based_actor* self, Handle dest, reply_slot<T> out,
                  Ts... xs) {
  self->request(dest, caf::infinite, std::move(xs)...)
      .then([out](T& value) { *out = std::move(value); },
            [out](caf::error& err) { *out = std::move(err); });
}

} // namespace detail

class actor_fixture {
public:
  using scheduler_type = caf::scheduler::test_coordinator;

  actor_fixture()
      : sys(cfg), sched(dynamic_cast<scheduler_type&>(sys.scheduler())),
        log_(std::make_shared<std::vector<caf::message>>()) {
    // Timers at t=0 would be indistinguishable from "unset" in logs.
    sched.clock().current_time += std::chrono::hours(1);
    collector = sys.spawn(detail::collect_messages, log_);
    run();
  }

  virtual ~actor_fixture() {
    caf::anon_send_exit(collector, caf::exit_reason::user_shutdown);
    run();
  }

  actor_fixture(const actor_fixture&) = delete;
  actor_fixture& operator=(const actor_fixture&) = delete;

  /// Runs every actor until no message is left. Returns how many messages
  /// were handled.
  size_t run() { return sched.run(); }

  /// Moves virtual time forward (firing due timers), then runs.
  size_t advance_time(caf::timespan by) {
    sched.advance_time(by);
    return run();
  }

  /// Sends a request from a fresh actor, runs the system and returns the
  /// reply: the value, or the error. An actor that never answers gives
  /// ec::timeout, never a hang.
  template<class T, class Handle, class... Ts>
  caf::expected<T> request(const Handle& dest, Ts&&... xs) {
    auto out = std::make_shared<std::optional<caf::expected<T>>>();
    sys.spawn(detail::request_once<T, Handle, std::decay_t<Ts>...>, dest, out,
              std::forward<Ts>(xs)...);
    run();
    if (!*out)
      return make_error(ec::timeout, "test request got no reply");
    return std::move(**out);
  }

  /// Runs, then takes every message `collector` received so far, in order.
  std::vector<caf::message> collected() {
    run();
    std::vector<caf::message> result;
    result.swap(*log_);
    return result;
  }

  test_config cfg;
  caf::actor_system sys;
  scheduler_type& sched;
  /// An actor that records whatever it receives: pass it as a watcher or
  /// reply-to address, then read collected().
  caf::actor collector;

private:
  detail::message_log log_;
};

} // namespace kvferry::test
