// The router (actors/router.hpp) under CAF's deterministic scheduler, in
// virtual time, against fake producers that answer when the test says: what
// it sends where, how many requests it keeps open, what it measures, and how
// it names a failure (a failed reply, a worker that left, a dead directory,
// a producer that never answers).
#include <memory>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "actor_fixture.hpp"
#include "kvferry/actors/directory.hpp"
#include "kvferry/actors/router.hpp"

using namespace kvferry;
using namespace std::chrono_literals;

namespace {

// What the fake producers saw and hold: every request, in arrival order,
// with the promise that answers it.
struct fake_prefill {
  std::string producer;
  producer_actor owner;
  proto::prefill_request request;
  caf::typed_response_promise<proto::ready_report> reply;
  // Set by answer(); the owner delivers it (a promise is delivered from its
  // own actor's context).
  bool answered = false;
  bool delivered = false;
  caf::error error;
};

struct fake_workers {
  std::vector<fake_prefill> held;
  std::uint64_t bytes_per_request = 1000;

  // Answers the held request at `k` with success (its bytes) or `err`
  // (through its producer: run() delivers it).
  void answer(std::size_t k, caf::error err = {}) {
    auto& h = held.at(k);
    h.answered = true;
    h.error = std::move(err);
    caf::anon_send(h.owner, proto::sweep_atom::value);
  }
  // The owner's side of answer().
  void deliver_answers(const std::string& producer) {
    for (auto& h : held) {
      if (h.producer != producer || !h.answered || h.delivered)
        continue;
      h.delivered = true;
      if (h.error)
        h.reply.deliver(h.error);
      else
        h.reply.deliver(report(h.request.request_id));
    }
  }
  proto::ready_report report(std::uint64_t id) const {
    proto::ready_report r;
    r.request_id = id;
    r.bytes = bytes_per_request;
    r.transfer_ns = 1000; // 1 us of data time
    r.data_start_ns = static_cast<std::int64_t>(id) * 10000;
    return r;
  }
};

producer_actor::behavior_type fake_producer(producer_actor::pointer self,
                                            std::string name,
                                            std::shared_ptr<fake_workers> w) {
  return {
      [=](proto::prefill_atom,
          proto::prefill_request& r) -> caf::result<proto::ready_report> {
        auto rp = self->make_response_promise<proto::ready_report>();
        fake_prefill h;
        h.producer = name;
        h.owner = caf::actor_cast<producer_actor>(self);
        h.request = r;
        h.reply = rp;
        w->held.push_back(std::move(h));
        return rp;
      },
      [](joined_atom, const worker_info&) {},
      [](left_atom, const std::string&, const caf::error&) {},
      [](proto::credit_atom, const std::vector<std::uint64_t>&) {},
      [](proto::abort_atom, std::uint64_t, const std::string&,
         const caf::error&) {},
      // Stands in for "the test answered": see fake_workers::answer.
      [=](proto::sweep_atom) { w->deliver_answers(name); },
  };
}

struct fixture : test::actor_fixture {
  std::shared_ptr<fake_workers> workers = std::make_shared<fake_workers>();
  std::shared_ptr<router_run> result = std::make_shared<router_run>();
  directory_actor dir;
  router_config cfg;
  router_actor router;
  std::vector<caf::actor> spawned;

  fixture() {
    dir = spawn_directory(sys, directory_options{});
    spawned.push_back(caf::actor_cast<caf::actor>(dir));
    cfg.directory = dir;
    cfg.directory_name = "127.0.0.1:7470";
    cfg.timeout_ms = 1000;
  }
  ~fixture() override {
    for (auto& a : spawned)
      caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
    if (router)
      caf::anon_send_exit(router, caf::exit_reason::user_shutdown);
    run();
  }

  void add_producer(const std::string& name) {
    auto p = sys.spawn(fake_producer, name, workers);
    spawned.push_back(caf::actor_cast<caf::actor>(p));
    cfg.producers.push_back({name, p});
  }
  // A consumer the router only passes on (the fake producers answer).
  void add_consumer(const std::string& name) {
    cfg.consumers.push_back({name, collector});
  }
  void start(std::vector<std::uint32_t> tokens) {
    if (cfg.producers.empty())
      add_producer("prefill-0");
    if (cfg.consumers.empty())
      add_consumer("decode-0");
    cfg.tokens = std::move(tokens);
    router = spawn_router(sys, cfg, result);
    run();
  }
  router_results results() { return result->snapshot(); }
  // Answers the held requests from `first` on; the run's results.
  router_results answer_from(std::size_t first) {
    for (auto k = first; k < workers->held.size(); ++k)
      workers->answer(k);
    run();
    REQUIRE(result->finished());
    return results();
  }
};

} // namespace

TEST_CASE_FIXTURE(fixture, "requests go round-robin with consecutive ids, "
                           "at most `inflight` open at once") {
  add_producer("prefill-0");
  add_producer("prefill-1");
  add_consumer("decode-0");
  add_consumer("decode-1");
  add_consumer("decode-2");
  cfg.first_request_id = 5000;
  cfg.inflight = 2;
  cfg.seed = 77;
  cfg.pull = true;
  start({10, 20, 30, 40, 50});
  REQUIRE(workers->held.size() == 2); // the window is full
  for (std::size_t k = 0; k < 5; ++k) {
    REQUIRE(workers->held.size() > k);
    auto& h = workers->held[k];
    CHECK(h.request.request_id == 5000 + k);
    CHECK(h.request.prompt_tokens == 10 * (k + 1));
    CHECK(h.request.pattern_seed == 77);
    CHECK(h.request.pull);
    CHECK(h.producer == "prefill-" + std::to_string(k % 2));
    CHECK(h.request.consumer == cfg.consumers[k % 3].app);
    workers->answer(k); // frees one slot: the next request starts
    run();
    CHECK(workers->held.size() == std::min<std::size_t>(5, k + 3));
  }
  REQUIRE(result->finished());
  auto r = results();
  CHECK(r.done == 5);
  CHECK(r.failed == 0);
  CHECK(r.bytes == 5 * workers->bytes_per_request);
  CHECK(r.errors.empty());
}

// The decode worker (consumer index) of request `index`, from the rows.
static std::size_t consumer_of(const router_results& r, std::size_t index) {
  for (auto& row : r.requests)
    if (row.index == index)
      return row.consumer;
  FAIL("no row for request " << index);
  return 0;
}

TEST_CASE_FIXTURE(fixture, "least-loaded routing: to the workers with the "
                           "fewest prompt tokens in flight") {
  add_producer("prefill-0");
  add_producer("prefill-1");
  add_consumer("decode-0");
  add_consumer("decode-1");
  cfg.routing_policy = routing::least_loaded;
  cfg.inflight = 3;
  start({100, 10, 10, 10});
  REQUIRE(workers->held.size() == 3);
  CHECK(workers->held[0].producer == "prefill-0");
  CHECK(workers->held[1].producer == "prefill-1");
  CHECK(workers->held[2].producer == "prefill-1"); // 10 tokens against 100
  workers->answer(0); // prefill-0's 100 tokens no longer count
  run();
  REQUIRE(workers->held.size() == 4);
  CHECK(workers->held[3].producer == "prefill-0");
  auto r = answer_from(1);
  CHECK(consumer_of(r, 0) == 0);
  CHECK(consumer_of(r, 1) == 1);
  CHECK(consumer_of(r, 2) == 1);
  CHECK(consumer_of(r, 3) == 0);
}

TEST_CASE_FIXTURE(fixture, "prefix-aware routing: to the decode worker "
                           "whose answered requests share the prefix") {
  add_producer("prefill-0");
  add_consumer("decode-0");
  add_consumer("decode-1");
  cfg.routing_policy = routing::prefix_aware;
  cfg.prefix_ids = {{1, 2}, {7}, {8}, {1, 2, 3}};
  cfg.inflight = 3;
  start({10, 10, 50, 10});
  REQUIRE(workers->held.size() == 3); // to decode-0, decode-1, decode-0
  workers->answer(0);                 // decode-0 now holds prefix {1, 2}
  run();
  REQUIRE(workers->held.size() == 4);
  auto r = answer_from(1);
  CHECK(consumer_of(r, 0) == 0);
  CHECK(consumer_of(r, 1) == 1);
  CHECK(consumer_of(r, 2) == 0);
  // decode-0 has 50 tokens in flight against decode-1's 10, but holds the
  // prefix.
  CHECK(consumer_of(r, 3) == 0);
}

TEST_CASE_FIXTURE(fixture, "latency is measured on the actor clock "
                           "(virtual time here)") {
  start({64});
  REQUIRE(workers->held.size() == 1);
  advance_time(250ms);
  workers->answer(0);
  run();
  REQUIRE(result->finished());
  auto r = results();
  REQUIRE(r.latency_us.size() == 1);
  CHECK(r.latency_us[0] == doctest::Approx(250000.0));
  // Control time: latency minus the reported data (1 us) and compute time.
  CHECK(r.control_us[0] == doctest::Approx(249999.0));
  CHECK(r.end - r.start == std::chrono::milliseconds(250));
  CHECK(data_rate_gbps(r) == doctest::Approx(1.0)); // 1000 B in 1000 ns
}

TEST_CASE_FIXTURE(fixture, "with arrival times a request starts at its "
                           "time, not before, and each gets its own row") {
  cfg.inflight = 3;
  cfg.first_request_id = 100;
  cfg.arrivals = {0ms, 100ms, 100ms, 300ms};
  start({8, 16, 24, 32});
  CHECK(workers->held.size() == 1); // only the first has arrived
  advance_time(99ms);
  CHECK(workers->held.size() == 1);
  advance_time(1ms);
  REQUIRE(workers->held.size() == 3); // both due at 100 ms
  advance_time(50ms);
  workers->answer(1); // request 101 done at 150 ms
  run();
  CHECK(workers->held.size() == 3); // the fourth is not due before 300 ms
  workers->answer(0);
  workers->answer(2);
  run();
  advance_time(150ms);
  REQUIRE(workers->held.size() == 4);
  advance_time(20ms);
  workers->answer(3, make_error(ec::mismatch, "block 0 differs"));
  run();
  REQUIRE(result->finished());
  auto r = results();
  REQUIRE(r.requests.size() == 4);
  auto& first = r.requests[0]; // answered first: request 101
  CHECK(first.index == 1);
  CHECK(first.ok);
  CHECK(first.due == 100ms);
  CHECK(first.sent == 100ms);
  CHECK(first.answered == 150ms);
  CHECK(first.report.bytes == workers->bytes_per_request);
  auto& last = r.requests[3];
  CHECK(last.index == 3);
  CHECK_FALSE(last.ok);
  CHECK(last.due == 300ms);
  CHECK(last.sent == 300ms);
  CHECK(last.answered == 320ms);
  CHECK(last.producer == 0);
  CHECK(last.consumer == 0);
}

TEST_CASE_FIXTURE(fixture, "a request due while `inflight` are open waits "
                           "for a free slot") {
  cfg.inflight = 1;
  cfg.arrivals = {0ms, 10ms};
  start({8, 8});
  advance_time(50ms);
  CHECK(workers->held.size() == 1);
  workers->answer(0);
  run();
  REQUIRE(workers->held.size() == 2);
  workers->answer(1);
  run();
  auto r = results();
  REQUIRE(r.requests.size() == 2);
  CHECK(r.requests[1].due == 10ms);
  CHECK(r.requests[1].sent == 50ms);
}

TEST_CASE_FIXTURE(fixture, "a failed request names its id and decode worker; "
                           "no new request starts, the open ones drain") {
  cfg.inflight = 2;
  start({8, 8, 8, 8});
  REQUIRE(workers->held.size() == 2);
  workers->answer(0, make_error(ec::mismatch, "block 3 differs"));
  run();
  CHECK(workers->held.size() == 2); // nothing new after a failure
  CHECK_FALSE(result->finished());  // request 2 is still open
  workers->answer(1);
  run();
  REQUIRE(result->finished());
  auto r = results();
  CHECK(r.done == 2);
  CHECK(r.failed == 1);
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].find("request 1 (to decode worker 'decode-0')") == 0);
  CHECK(r.errors[0].find("block 3 differs") != std::string::npos);
}

TEST_CASE_FIXTURE(fixture, "go_on_after_failure: a failed request does not "
                           "stop the run (a serving router, the simulator)") {
  cfg.inflight = 2;
  cfg.go_on_after_failure = true;
  start({8, 8, 8, 8});
  REQUIRE(workers->held.size() == 2);
  workers->answer(0, make_error(ec::mismatch, "block 3 differs"));
  run();
  CHECK(workers->held.size() == 3); // the next request started
  for (std::size_t i = 1; i < 4; ++i) {
    REQUIRE(workers->held.size() > i);
    workers->answer(i);
    run();
  }
  REQUIRE(result->finished());
  auto r = results();
  CHECK(r.done == 4);
  CHECK(r.failed == 1);
  CHECK(r.requests.size() == 4);
}

TEST_CASE_FIXTURE(fixture, "a worker that left fails its open requests at "
                           "once, naming it") {
  add_producer("prefill-0");
  add_consumer("decode-0");
  add_consumer("decode-1");
  cfg.inflight = 2;
  start({8, 8, 8});
  REQUIRE(workers->held.size() == 2);
  caf::anon_send(router, left_atom::value, std::string{"decode-1"},
                 make_error(ec::peer_down, "its node disconnected"));
  run();
  auto r = results();
  REQUIRE(r.failed == 1);
  CHECK(r.errors[0].find("request 2 (to decode worker 'decode-1')") == 0);
  CHECK(r.errors[0].find("decode worker 'decode-1' is gone") !=
        std::string::npos);
  CHECK(workers->held.size() == 2); // the run has failed: nothing new
  workers->answer(1); // the late reply of the failed request is ignored
  workers->answer(0);
  run();
  REQUIRE(result->finished());
  CHECK(results().failed == 1);
  CHECK(results().done == 2);
}

TEST_CASE_FIXTURE(fixture, "a dead directory stops the run, saying why") {
  start({8, 8});
  REQUIRE(workers->held.size() == 2);
  caf::anon_send_exit(dir, caf::exit_reason::kill);
  run();
  REQUIRE(result->finished());
  auto r = results();
  CHECK(r.failed == 2);
  CHECK(r.stopped_because.find("the directory at 127.0.0.1:7470 is gone") == 0);
}

TEST_CASE_FIXTURE(fixture, "a producer that never answers fails the request "
                           "after 3x the workers' timeout plus 5 s") {
  cfg.timeout_ms = 1000;
  start({8});
  advance_time(7900ms);
  CHECK_FALSE(result->finished());
  advance_time(200ms);
  REQUIRE(result->finished());
  auto r = results();
  CHECK(r.failed == 1);
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].find("request 1 (to decode worker 'decode-0')") == 0);
}

TEST_CASE_FIXTURE(fixture, "warm-up: one request per worker pair before the "
                           "clock starts, ids after the run's, not counted") {
  add_producer("prefill-0");
  add_consumer("decode-0");
  add_consumer("decode-1");
  cfg.warm_up_tokens = 16;
  auto warmed = std::make_shared<std::size_t>(0);
  cfg.on_warm_up = [warmed](std::size_t n, caf::timespan) { *warmed = n; };
  start({100, 200, 300});
  REQUIRE(workers->held.size() == 2); // the warm-up only
  CHECK(workers->held[0].request.request_id == 4);
  CHECK(workers->held[1].request.request_id == 5);
  CHECK(workers->held[0].request.prompt_tokens == 16);
  advance_time(1s);
  workers->answer(0);
  workers->answer(1);
  run();
  CHECK(*warmed == 2);
  // The measured requests, 1 to 3 (held grows as slots free up).
  for (std::size_t k = 2; k < workers->held.size(); ++k) {
    CHECK(workers->held[k].request.request_id == k - 1);
    workers->answer(k);
    run();
  }
  REQUIRE(result->finished());
  auto r = results();
  CHECK(r.done == 3);
  CHECK(r.failed == 0);
  CHECK(r.bytes == 3 * workers->bytes_per_request);
}

TEST_CASE_FIXTURE(fixture, "a failed warm-up request stops the run") {
  cfg.warm_up_tokens = 16;
  start({100, 200});
  REQUIRE(workers->held.size() == 1);
  workers->answer(0, make_error(ec::timeout, "no grant"));
  run();
  REQUIRE(result->finished());
  auto r = results();
  CHECK(r.failed == 1);
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].find("warm-up request 3 (to decode worker 'decode-0')") ==
        0);
  CHECK(workers->held.size() == 1);
}

TEST_CASE_FIXTURE(fixture, "a source: requests are read as they are sent, at "
                           "most one ahead, and their rows handed over, not "
                           "kept (a trace streamed in flat memory)") {
  constexpr std::size_t n = 1000;
  cfg.inflight = 4;
  cfg.first_request_id = 10;
  // Request i: 8 + i tokens at i ms, prefix id i.
  auto read = std::make_shared<std::size_t>(0);
  cfg.source = [read](router_input& in) {
    if (*read == n)
      return false;
    auto i = (*read)++;
    in.tokens = std::uint32_t(8 + i);
    in.arrival = std::chrono::milliseconds(i);
    in.prefix_ids = {i};
    return true;
  };
  auto rows = std::make_shared<std::vector<router_request>>();
  cfg.on_request = [rows](const router_request& row) { rows->push_back(row); };
  start({});
  REQUIRE(workers->held.size() == 1); // request 0 is due; 1 read, not due
  CHECK(*read == 2);
  std::size_t most_open = 0; // read but not answered
  for (std::size_t k = 0; k < n; ++k) {
    advance_time(1ms);
    REQUIRE(workers->held.size() > k);
    auto& req = workers->held[k].request;
    CHECK(req.request_id == 10 + k);
    CHECK(req.prompt_tokens == 8 + k);
    // Every other request is answered late, so that several are open.
    if (k % 2 == 1) {
      workers->answer(k - 1);
      workers->answer(k);
    }
    run();
    most_open = std::max(most_open, *read - rows->size());
  }
  REQUIRE(result->finished());
  CHECK(*read == n);
  CHECK(most_open <= cfg.inflight + 1); // the open ones and one read ahead
  REQUIRE(rows->size() == n);
  for (std::size_t i = 0; i < n; ++i) {
    CHECK((*rows)[i].index == i);
    CHECK((*rows)[i].due == std::chrono::milliseconds(i));
    CHECK((*rows)[i].ok);
  }
  auto r = results();
  CHECK(r.done == n);
  CHECK(r.bytes == n * workers->bytes_per_request);
  CHECK(r.requests.empty()); // handed over, not kept
  CHECK(r.latency_us.empty());
  CHECK(r.data_windows.empty());
}
