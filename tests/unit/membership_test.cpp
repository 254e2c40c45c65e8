// Self-healing membership in virtual time: the lease keeper (a worker's
// registration, renewed and registered again after every loss) against the
// real directory, and the directory's stall watchdog (its own pause is not
// the workers' fault).
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "actor_fixture.hpp"
#include "idle_worker.hpp"
#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/directory.hpp"
#include "kvferry/actors/membership.hpp"

using namespace kvferry;
using namespace std::chrono_literals;

namespace {

constexpr auto secret = "s3cret";
constexpr auto lease_time = std::chrono::seconds(3);

using kvferry::test::idle_worker;

// What the test dialer hands out: the directory "at the address" now, or
// a failure for the next `fail_next` dials; when each dial came.
struct dial_script {
  directory_actor current;
  int fail_next = 0;
  std::vector<caf::actor_clock::time_point> dials;
};

dialer_actor::behavior_type test_dialer(dialer_actor::pointer self,
                                        std::shared_ptr<dial_script> script) {
  return {[self, script](caf::connect_atom) -> caf::result<caf::actor> {
    script->dials.push_back(self->clock().now());
    if (script->fail_next > 0 || !script->current) {
      --script->fail_next;
      return make_error(ec::unreachable, "test: connection refused");
    }
    return caf::actor_cast<caf::actor>(script->current);
  }};
}

// A directory in front of the real one that can swallow renewals (never
// answer them), as a directory that stopped would, or a network partition.
struct relay_switches {
  bool swallow_renewals = false;
  std::vector<caf::typed_response_promise<caf::ok_atom>> swallowed;
};

directory_actor::behavior_type relay(directory_actor::pointer self,
                                     directory_actor real,
                                     std::shared_ptr<relay_switches> sw) {
  return {
      [=](register_atom a, worker_info& w, std::string& s) {
        return self->delegate(real, a, std::move(w), std::move(s));
      },
      [=](renew_atom a, std::string& name,
          uint64_t token) -> caf::result<caf::ok_atom> {
        if (!sw->swallow_renewals)
          return self->delegate(real, a, std::move(name), token);
        sw->swallowed.push_back(self->make_response_promise<caf::ok_atom>());
        return sw->swallowed.back();
      },
      [=](leave_atom a, std::string& name, uint64_t token) {
        return self->delegate(real, a, std::move(name), token);
      },
      [=](lookup_atom a, std::string& name) {
        return self->delegate(real, a, std::move(name));
      },
      [=](list_atom a) { return self->delegate(real, a); },
      [=](list_atom a, worker_role r) { return self->delegate(real, a, r); },
      [=](watch_atom a, caf::actor& w) {
        return self->delegate(real, a, std::move(w));
      },
      [=](unwatch_atom a, caf::actor& w) {
        return self->delegate(real, a, std::move(w));
      },
      [](expire_atom, const std::string&, uint64_t) {},
      [](caf::tick_atom) {},
  };
}

struct membership_fixture : test::actor_fixture {
  std::shared_ptr<dial_script> script = std::make_shared<dial_script>();
  dialer_actor dialer = sys.spawn(test_dialer, script);
  std::vector<caf::actor> to_stop;

  ~membership_fixture() override {
    for (auto& a : to_stop)
      caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(dialer, caf::exit_reason::user_shutdown);
    run();
  }

  directory_actor start_directory(caf::timespan tolerance = 1s) {
    directory_options options;
    options.secret = secret;
    options.lease = lease_time;
    options.stall_tolerance = tolerance;
    auto dir = spawn_directory(sys, options);
    to_stop.push_back(caf::actor_cast<caf::actor>(dir));
    run();
    return dir;
  }

  worker_info make_worker(std::string name) {
    worker_info info;
    info.name = std::move(name);
    info.role = worker_role::decode;
    info.host = "host-a";
    info.app = sys.spawn(idle_worker, 0);
    to_stop.push_back(info.app);
    return info;
  }

  membership_actor start_keeper(const worker_info& info,
                                std::string key = secret) {
    membership_config cfg;
    cfg.info = info;
    cfg.secret = std::move(key);
    cfg.directory_name = "test-directory:7470";
    cfg.watchers = {collector};
    cfg.dialer = dialer;
    cfg.seed = 42;
    auto keeper = spawn_membership(sys, cfg);
    to_stop.push_back(caf::actor_cast<caf::actor>(keeper));
    run();
    return keeper;
  }

  // Lets virtual time pass in small steps, as it does for a directory that
  // runs all along (one jump would look like the directory's own stall).
  void pass(caf::timespan total, caf::timespan step = 100ms) {
    for (caf::timespan t{0}; t < total; t += step)
      advance_time(step);
  }

  std::vector<std::string> names(const directory_actor& dir) {
    std::vector<std::string> result;
    auto list = request<std::vector<worker_info>>(dir, list_atom::value);
    REQUIRE(list);
    for (auto& w : *list)
      result.push_back(w.name);
    return result;
  }

  // The (joined|left, name) pairs pushed to `collector` so far.
  std::vector<std::string> events() {
    std::vector<std::string> result;
    for (auto& msg : collected())
      if (msg.match_elements<joined_atom, worker_info>())
        result.push_back("joined " + msg.get_as<worker_info>(1).name);
      else if (msg.match_elements<left_atom, std::string, caf::error>())
        result.push_back("left " + msg.get_as<std::string>(1) + " (" +
                         render(msg.get_as<caf::error>(2)) + ")");
    return result;
  }

  using strings = std::vector<std::string>;
};

} // namespace

TEST_CASE_FIXTURE(membership_fixture,
                  "the keeper registers, tells its watchers and renews") {
  auto dir = start_directory();
  script->current = dir;
  auto w = make_worker("decode-0");
  auto keeper = start_keeper(w);
  CHECK(request<caf::ok_atom>(keeper, caf::wait_for_atom::value));
  CHECK(names(dir) == strings{"decode-0"});
  // The watcher hears of the members already there (itself included).
  CHECK(events() == strings{"joined decode-0"});
  // Renewed at a third of the lease: still there after many leases.
  pass(4 * lease_time);
  CHECK(names(dir) == strings{"decode-0"});
  CHECK(events().empty());
  auto line = request<std::string>(keeper, caf::get_atom::value);
  REQUIRE(line);
  CHECK(line->rfind("registered (directory test-directory:7470)", 0) == 0);
}

TEST_CASE_FIXTURE(membership_fixture,
                  "a lost lease is registered again with the same actors") {
  auto real = start_directory();
  auto sw = std::make_shared<relay_switches>();
  auto dir = sys.spawn(relay, real, sw);
  to_stop.push_back(caf::actor_cast<caf::actor>(dir));
  script->current = dir;
  auto w = make_worker("decode-0");
  auto keeper = start_keeper(w);
  REQUIRE(request<caf::ok_atom>(keeper, caf::wait_for_atom::value));
  REQUIRE(
      request<std::vector<worker_info>>(real, watch_atom::value, collector));
  events();
  // Renewals go unanswered (e.g. this worker was cut off): the directory
  // drops it once the lease runs out, naming it.
  sw->swallow_renewals = true;
  pass(lease_time + 500ms);
  CHECK(names(real).empty());
  auto seen = events();
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].rfind("left decode-0 (kvferry.lease_expired", 0) == 0);
  // Renewals get through again: the next one hears not_found, and the
  // keeper registers the same app actor again within a renewal period.
  sw->swallow_renewals = false;
  pass(lease_time / 3 + 200ms);
  auto found =
      request<worker_info>(real, lookup_atom::value, std::string{"decode-0"});
  REQUIRE(found);
  CHECK(found->app == w.app);
  CHECK(events() == strings{"joined decode-0", "joined decode-0"});
  // And it stays registered.
  pass(2 * lease_time);
  CHECK(names(real) == strings{"decode-0"});
}

TEST_CASE_FIXTURE(membership_fixture,
                  "a restarted directory gets the worker and its watch back") {
  auto first = start_directory();
  script->current = first;
  auto w = make_worker("decode-0");
  auto keeper = start_keeper(w);
  REQUIRE(request<caf::ok_atom>(keeper, caf::wait_for_atom::value));
  events();
  // The directory dies; a new one listens at the same address, empty.
  auto second = start_directory();
  script->current = second;
  caf::anon_send_exit(first, caf::exit_reason::kill);
  run();
  pass(1s);
  CHECK(names(second) == strings{"decode-0"});
  // The keeper watches the new directory again for its watchers: they
  // hear of its members now, and of later joins.
  CHECK(events() == strings{"joined decode-0"});
  auto v = make_worker("decode-1");
  REQUIRE(request<lease>(second, register_atom::value, v, std::string{secret}));
  CHECK(events() == strings{"joined decode-1"});
}

TEST_CASE_FIXTURE(membership_fixture,
                  "an absent directory is dialled with bounded, jittered "
                  "backoff") {
  script->fail_next = 8;
  auto w = make_worker("decode-0");
  auto keeper = start_keeper(w);
  auto dir = start_directory();
  script->current = dir;
  pass(20s, 10ms);
  REQUIRE(script->dials.size() == 9);
  CHECK(names(dir) == strings{"decode-0"});
  std::vector<caf::timespan> gaps;
  for (size_t i = 1; i < script->dials.size(); ++i)
    gaps.push_back(script->dials[i] - script->dials[i - 1]);
  // Doubling from 100 ms with jitter in [d/2, d], capped at 2 s.
  for (size_t i = 0; i < gaps.size(); ++i) {
    INFO(
        "gap " << i << ": "
               << std::chrono::duration_cast<std::chrono::milliseconds>(gaps[i])
                      .count()
               << " ms");
    CHECK(gaps[i] >= 50ms);
    CHECK(gaps[i] <= 2s + 10ms);
  }
  CHECK(gaps.back() >= 1s); // grew towards the cap
  // Not every gap is the nominal one: jitter spreads the workers out.
  CHECK(gaps[6] != gaps[7]);
}

TEST_CASE_FIXTURE(membership_fixture,
                  "a refused registration is reported to whoever waits") {
  auto dir = start_directory();
  script->current = dir;
  auto w = make_worker("decode-0");
  auto keeper = start_keeper(w, "wrong");
  auto waited = request<caf::ok_atom>(keeper, caf::wait_for_atom::value);
  REQUIRE(!waited);
  CHECK(is(waited.error(), ec::unauthorized));
  auto line = request<std::string>(keeper, caf::get_atom::value);
  REQUIRE(line);
  CHECK(line->find("wrong deployment secret") != std::string::npos);
}

TEST_CASE_FIXTURE(membership_fixture, "leave ends the membership for good") {
  auto dir = start_directory();
  script->current = dir;
  auto w = make_worker("decode-0");
  auto keeper = start_keeper(w);
  REQUIRE(request<caf::ok_atom>(keeper, caf::wait_for_atom::value));
  CHECK(request<caf::ok_atom>(keeper, leave_atom::value));
  CHECK(names(dir).empty());
  pass(2 * lease_time);
  CHECK(names(dir).empty());
}

TEST_CASE_FIXTURE(membership_fixture,
                  "the directory's own stall gives every lease grace") {
  auto dir = start_directory();
  auto w = make_worker("decode-0");
  auto l = request<lease>(dir, register_atom::value, w, std::string{secret});
  REQUIRE(l);
  REQUIRE(request<std::vector<worker_info>>(dir, watch_atom::value, collector));
  events();
  pass(2s);
  // The directory does not run for 10 s (one jump: SIGSTOP, or a starved
  // CPU): its lease timer is long due, yet the worker is not to blame.
  advance_time(10s);
  CHECK(events().empty());
  CHECK(names(dir) == strings{"decode-0"});
  // The worker renews within the grace and stays.
  pass(lease_time - 500ms);
  REQUIRE(request<caf::ok_atom>(dir, renew_atom::value, std::string{"decode-0"},
                                l->token));
  pass(lease_time - 500ms);
  CHECK(names(dir) == strings{"decode-0"});
  // A worker that then stays silent is dropped one lease later, as usual.
  pass(1s);
  auto seen = events();
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].rfind("left decode-0 (kvferry.lease_expired", 0) == 0);
}

TEST_CASE_FIXTURE(membership_fixture,
                  "a silent worker is still dropped on time by a directory "
                  "that runs") {
  auto dir = start_directory();
  auto w = make_worker("decode-0");
  REQUIRE(request<lease>(dir, register_atom::value, w, std::string{secret}));
  pass(lease_time - 200ms);
  CHECK(names(dir) == strings{"decode-0"});
  pass(400ms);
  CHECK(names(dir).empty());
}

TEST_CASE_FIXTURE(membership_fixture,
                  "list replies carry each worker's lease age") {
  auto dir = start_directory();
  auto w = make_worker("decode-0");
  REQUIRE(request<lease>(dir, register_atom::value, w, std::string{secret}));
  pass(1200ms);
  auto list = request<std::vector<worker_info>>(dir, list_atom::value);
  REQUIRE(list);
  REQUIRE(list->size() == 1);
  CHECK(list->front().attributes.at("lease_age_ms") == "1200");
}

TEST_CASE_FIXTURE(membership_fixture,
                  "a name still held by a previous process is retried until "
                  "it is free") {
  auto dir = start_directory();
  script->current = dir;
  // The previous process of decode-0 (another app actor), killed without a
  // word: the directory holds its name until the lease runs out.
  auto previous = make_worker("decode-0");
  REQUIRE(
      request<lease>(dir, register_atom::value, previous, std::string{secret}));
  auto w = make_worker("decode-0");
  auto keeper = start_keeper(w);
  pass(1s);
  auto line = request<std::string>(keeper, caf::get_atom::value);
  REQUIRE(line);
  CHECK(line->find("duplicate") != std::string::npos);
  // Once the old lease ran out, the new process holds the name.
  pass(lease_time + 2s);
  CHECK(request<caf::ok_atom>(keeper, caf::wait_for_atom::value));
  auto found =
      request<worker_info>(dir, lookup_atom::value, std::string{"decode-0"});
  REQUIRE(found);
  CHECK(found->app == w.app);
}
