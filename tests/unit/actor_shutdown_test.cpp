// Bounded shutdown (runtime/system_config.hpp): stop_actor waits for an
// actor at most its limit and takes it out of the registry, and
// close_actor_system returns within its limit even when the system cannot
// close yet, finishing the close on its own thread once it can (what keeps
// kvferry::endpoint's and node's destructors from hanging on CAF 0.17).
#include <atomic>
#include <chrono>
#include <future>
#include <thread>

#include <caf/all.hpp>
#include <doctest/doctest.h>

#include "kvferry/runtime/system_config.hpp"

using namespace kvferry;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

// Answers nothing; exits when asked. (Function actors here take an
// argument: CAF 0.17 spawns one without through a null tuple pointer,
// which UBSan reports.)
caf::behavior idle(caf::event_based_actor*, int) {
  return {[](int) {}};
}

// Ignores exit messages that can be trapped, as a stuck actor would.
caf::behavior deaf(caf::event_based_actor* self, int) {
  self->set_exit_handler([](caf::exit_msg&) {});
  return {[](int) {}};
}

// A config that says when it is destroyed (close_actor_system destroys it
// right after the system).
struct watched_config : runtime::system_config {
  std::atomic<bool>* gone;
  explicit watched_config(std::atomic<bool>* flag) : gone(flag) {}
  ~watched_config() override { *gone = true; }
};

bool wait_until(const std::atomic<bool>& flag, std::chrono::seconds limit) {
  auto deadline = clock_type::now() + limit;
  while (!flag && clock_type::now() < deadline)
    std::this_thread::sleep_for(1ms);
  return flag;
}

} // namespace

TEST_CASE("stop_actor stops an actor and takes it out of the registry") {
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  auto actor = sys.spawn(idle, 0);
  sys.registry().put(actor.id(), caf::actor_cast<caf::strong_actor_ptr>(actor));
  caf::scoped_actor self{sys};
  CHECK(runtime::stop_actor(self, actor.address(), 5s, "idle actor"));
  CHECK(sys.registry().get(actor.id()) == nullptr);
  // A null handle (an actor never spawned) is already stopped.
  CHECK(runtime::stop_actor(self, caf::actor_addr{}, 5s, "nobody"));
}

TEST_CASE("stop_actor gives up on an actor that does not stop, after its "
          "limit") {
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  auto actor = sys.spawn(deaf, 0);
  caf::scoped_actor self{sys};
  auto start = clock_type::now();
  CHECK_FALSE(runtime::stop_actor(self, actor.address(), 100ms, "deaf actor"));
  auto took = clock_type::now() - start;
  CHECK(took >= 100ms);
  CHECK(took < 3s);
  self->send_exit(actor, caf::exit_reason::kill); // cannot be trapped
  self->wait_for(actor);
}

TEST_CASE("close_actor_system returns within its limit when the system "
          "cannot close, and the close finishes once it can") {
  std::atomic<bool> gone{false};
  std::promise<void> release;
  auto released = release.get_future().share();
  auto cfg = std::make_unique<watched_config>(&gone);
  auto sys = std::make_unique<caf::actor_system>(*cfg);
  // A detached actor busy on its thread: ~actor_system waits for it.
  sys->spawn<caf::detached>(
      [released](caf::blocking_actor*, int) { released.wait(); }, 0);
  auto start = clock_type::now();
  CHECK_FALSE(runtime::close_actor_system(std::move(sys), std::move(cfg), 200ms,
                                          "test system"));
  auto took = clock_type::now() - start;
  CHECK(took >= 200ms);
  CHECK(took < 3s);
  CHECK_FALSE(gone);
  release.set_value();
  CHECK_MESSAGE(wait_until(gone, 10s),
                "the system closes on its own thread once its actor is done");
}

TEST_CASE("close_actor_system closes an idle system at once") {
  std::atomic<bool> gone{false};
  auto cfg = std::make_unique<watched_config>(&gone);
  auto sys = std::make_unique<caf::actor_system>(*cfg);
  CHECK(runtime::close_actor_system(std::move(sys), std::move(cfg), 5s,
                                    "idle system"));
  CHECK(gone);
}
