// The scheduler's hot window (runtime/hot_sharing.hpp): which scheduler a
// kvferry actor system gets, that no job is lost between a thread looking
// at the queue and one sleeping on it, and that an idle system sleeps.
#include <atomic>
#include <chrono>
#include <sys/resource.h>
#include <thread>
#include <vector>

#include <caf/all.hpp>
#include <caf/scheduler/coordinator.hpp>
#include <doctest/doctest.h>

#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/hot_sharing.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "scoped_env.hpp"

using namespace kvferry;
using namespace std::chrono_literals;
using runtime::hot_sharing;

namespace {

bool runs_hot(caf::actor_system& sys) {
  return dynamic_cast<caf::scheduler::coordinator<hot_sharing>*>(
             &sys.scheduler()) != nullptr;
}

// An actor that answers each number with the next one. (It takes its step
// as an argument: CAF 0.17 spawns a function actor without arguments
// through a null tuple pointer, which UBSan reports.)
caf::behavior successor(int step) {
  return {[step](int x) { return x + step; }};
}

std::chrono::microseconds process_cpu() {
  rusage use{};
  getrusage(RUSAGE_SELF, &use);
  auto us = [](const timeval& t) {
    return std::chrono::seconds(t.tv_sec) +
           std::chrono::microseconds(t.tv_usec);
  };
  return us(use.ru_utime) + us(use.ru_stime);
}

// Requests from `callers` threads at once, each waiting for its answer
// before the next, so that jobs arrive while scheduler threads go from
// looking to sleeping and back; a job lost on the way shows as a timeout.
void ping_pong(caf::actor_system& sys, int callers, int rounds) {
  auto server = sys.spawn(successor, 1);
  std::atomic<int> answered{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < callers; ++c)
    threads.emplace_back([&] {
      caf::scoped_actor self{sys};
      for (int i = 0; i < rounds; ++i)
        self->request(server, 10s, i)
            .receive([&](int y) { answered += y == i + 1 ? 1 : 0; },
                     [](caf::error&) {});
    });
  for (auto& t : threads)
    t.join();
  CHECK(answered == callers * rounds);
  caf::anon_send_exit(server, caf::exit_reason::user_shutdown);
}

} // namespace

// A system gets the hot scheduler where its options ask for a window
// (kvferry::endpoint's do) or $KVFERRY_SCHED_HOT_US does; the variable wins.
TEST_CASE("a kvferry actor system gets the hot scheduler where its window "
          "is above 0") {
  auto hot_with = [](runtime::runtime_options options) {
    runtime::system_config cfg{options};
    caf::actor_system sys{cfg};
    return runs_hot(sys);
  };
  runtime::runtime_options plain;
  runtime::runtime_options windowed;
  windowed.scheduler_hot_window = 200us;
  runtime::runtime_options stealing = windowed;
  stealing.scheduler_policy = "stealing"; // a choice the window leaves be
  {
    test::scoped_env unset{"KVFERRY_SCHED_HOT_US", nullptr};
    CHECK(!hot_with(plain)); // off by default
    CHECK(hot_with(windowed));
    CHECK(!hot_with(stealing));
  }
  {
    test::scoped_env on{"KVFERRY_SCHED_HOT_US", "200"};
    CHECK(hot_with(plain));
  }
  {
    test::scoped_env off{"KVFERRY_SCHED_HOT_US", "0"};
    CHECK(!hot_with(windowed));
  }
  test::scoped_env bad{"KVFERRY_SCHED_HOT_US", "-5"}; // warned and ignored
  CHECK(runtime::scheduler_hot_window(300us) == 300us);
  CHECK(hot_with(windowed));
}

TEST_CASE("no job is lost between a looking and a sleeping scheduler "
          "thread") {
  // A short window, so that threads cross from looking to sleeping often;
  // one scheduler thread and several, since one thread both looks and
  // serves.
  test::scoped_env hot{"KVFERRY_SCHED_HOT_US", "30"};
  for (size_t threads : {1, 3}) {
    runtime::runtime_options options;
    options.threads = threads;
    runtime::system_config cfg{options};
    caf::actor_system sys{cfg};
    REQUIRE(runs_hot(sys));
    ping_pong(sys, 4, 3000);
  }
}

TEST_CASE("an idle hot scheduler sleeps once its window has passed") {
  test::scoped_env hot{"KVFERRY_SCHED_HOT_US", "20000"};
  runtime::runtime_options options;
  options.threads = 2;
  runtime::system_config cfg{options};
  caf::actor_system sys{cfg};
  REQUIRE(runs_hot(sys));
  ping_pong(sys, 1, 100);
  std::this_thread::sleep_for(100ms); // well past the 20 ms window
  const auto before = process_cpu();
  std::this_thread::sleep_for(300ms);
  const auto spent = process_cpu() - before;
  MESSAGE("CPU while idle: " << spent.count() << " us");
  CHECK(spent < 30ms); // a looking thread would take up to 300 ms here
}
