// kvferry's real directory, router, producer and consumer under CAF's test
// coordinator in virtual time, moving no bytes: model-only KV pools
// (memory_region::model_only) and the simulator's transfer actor
// (sim/sim_transfer.hpp), which answers send and recv orders when its
// network model says the bytes have landed (docs/sim.md, "The actors
// engine"). The seam alone, with a fixed-rate network (sim::fixed_network):
// the actors run there unchanged and a request's latency is the modelled
// transfer, exactly. `kvferry sim --engine actors` puts the engine's models
// behind it (test_sim_engines).
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "actor_fixture.hpp"
#include "kvferry/actors/app.hpp"
#include "kvferry/actors/directory.hpp"
#include "kvferry/actors/node_actor.hpp"
#include "kvferry/actors/router.hpp"
#include "kvferry/sim/answered_timeouts.hpp"
#include "kvferry/sim/sim_transfer.hpp"

using namespace kvferry;
using namespace std::chrono_literals;

namespace {

// 4 layers of one 128-wide head in fp16, 16-token blocks: 8 KiB a
// layer-block, so 1,600 tokens = 100 blocks a layer = 3,276,800 bytes.
kv_geometry small_model() {
  kv_geometry g;
  g.layers = 4;
  g.kv_heads = 1;
  g.head_dim = 128;
  g.block_tokens = 16;
  return g;
}

// The network: 10 us, then 1 byte per ns.
caf::timespan transfer_time(std::uint64_t bytes) {
  return caf::timespan{10000 + static_cast<std::int64_t>(bytes)};
}

struct fixture : test::actor_fixture {
  std::shared_ptr<sim::sim_network> network =
      std::make_shared<sim::fixed_network>(
          [](const std::string&, const std::string&, std::uint64_t bytes) {
            return transfer_time(bytes);
          });
  directory_actor dir = spawn_directory(sys, [] {
    directory_options o;
    o.secret = "sim";
    return o;
  }());
  std::vector<caf::actor> spawned{caf::actor_cast<caf::actor>(dir)};
  router_config cfg;
  std::shared_ptr<router_run> result = std::make_shared<router_run>();

  ~fixture() override {
    for (auto& a : spawned)
      caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
    run();
  }

  // A worker: its simulated transfer actor, a model-only pool of `blocks`
  // layer-blocks (as a simulated topology's pools: far more than this
  // machine holds), its app actor, registered with the directory.
  app_config worker(const std::string& name, std::uint64_t blocks) {
    app_config a;
    a.name = name;
    a.geometry = small_model();
    auto bytes = blocks * a.geometry.layer_block_bytes();
    a.region = memory_region::model_only(bytes, name);
    a.transfer = sim::spawn_sim_transfer(sys, name, bytes, network);
    spawned.push_back(caf::actor_cast<caf::actor>(a.transfer));
    auto ep = request<proto::endpoint>(a.transfer, proto::endpoint_atom::value);
    REQUIRE(ep);
    a.self = *ep;
    // Its node actor moves the app's bytes (linked to the app).
    a.node = spawn_node_actor(
        sys, {name, a.transfer, a.self, pool_layout(a.geometry, bytes)});
    return a;
  }
  void enrol(const std::string& name, worker_role role, caf::actor app,
             caf::actor transfer) {
    worker_info info;
    info.name = name;
    info.role = role;
    info.listen_handles = {std::vector<char>(128, 0)};
    info.app = std::move(app);
    info.transfer = std::move(transfer);
    REQUIRE(
        request<lease>(dir, register_atom::value, info, std::string{"sim"}));
  }
  void add_producer(const std::string& name) {
    auto a = worker(name, 4000);
    auto p = spawn_producer(sys, a);
    spawned.push_back(caf::actor_cast<caf::actor>(p));
    enrol(name, worker_role::prefill, caf::actor_cast<caf::actor>(p),
          caf::actor_cast<caf::actor>(a.transfer));
    cfg.producers.push_back({name, p});
  }
  void add_consumer(const std::string& name) {
    auto a = worker(name, 700000); // 5.7 GB of 8 KiB blocks
    auto c = spawn_consumer(sys, a);
    spawned.push_back(caf::actor_cast<caf::actor>(c));
    enrol(name, worker_role::decode, caf::actor_cast<caf::actor>(c),
          caf::actor_cast<caf::actor>(a.transfer));
    cfg.consumers.push_back({name, caf::actor_cast<caf::actor>(c)});
  }

  // The event queue as the clock: run what is due, then jump to the next
  // timer (a transfer landing, an arrival), until the run ends.
  // `each`, if set, is called after each step.
  router_results replay(const std::function<void()>& each = {}) {
    cfg.directory = dir;
    cfg.directory_name = "simulated";
    auto router = spawn_router(sys, cfg, result);
    run();
    for (int n = 0; !result->finished() && n < 100000; ++n) {
      REQUIRE(sched.has_pending_timeout());
      sched.trigger_timeout();
      run();
      if (each)
        each();
    }
    REQUIRE(result->finished());
    return result->snapshot();
  }
};

} // namespace

TEST_CASE_FIXTURE(fixture, "the real actors in virtual time: each request's "
                           "latency is its modelled transfer") {
  add_producer("prefill-0");
  add_producer("prefill-1");
  add_consumer("decode-0");
  cfg.tokens = {1600, 160, 1600, 16, 800, 1600};
  for (std::size_t i = 0; i < cfg.tokens.size(); ++i)
    cfg.arrivals.push_back(i * 1ms); // one request per ms
  cfg.inflight = 16;
  auto r = replay();
  INFO(r.errors.size() << " errors; first: "
                       << (r.errors.empty() ? "" : r.errors.front()));
  CHECK(r.failed == 0);
  REQUIRE(r.requests.size() == cfg.tokens.size());
  auto geo = small_model();
  std::uint64_t bytes = 0;
  for (auto& row : r.requests) {
    auto expected = geo.request_bytes(cfg.tokens[row.index]);
    bytes += expected;
    CHECK(row.ok);
    CHECK(row.report.bytes == expected);
    CHECK(row.sent == row.due); // sent at its arrival
    // No hop costs anything yet, so the latency is the transfer alone.
    CHECK(row.answered - row.sent == transfer_time(expected));
  }
  CHECK(r.bytes == bytes);
  // Round-robin: requests alternate between the two producers.
  for (auto& row : r.requests)
    CHECK(row.producer == row.index % 2);
}

TEST_CASE("the real actors in virtual time: two runs, the same rows") {
  auto once = [] {
    fixture f;
    f.add_producer("prefill-0");
    f.add_consumer("decode-0");
    f.add_consumer("decode-1");
    f.cfg.routing_policy = routing::least_loaded;
    f.cfg.tokens = {1600, 16, 800, 1600, 32, 48, 1600, 160};
    for (std::size_t i = 0; i < f.cfg.tokens.size(); ++i)
      f.cfg.arrivals.push_back(i * 500us);
    f.cfg.inflight = 4;
    std::vector<std::tuple<std::size_t, std::size_t, std::int64_t>> rows;
    for (auto& row : f.replay().requests)
      rows.emplace_back(row.index, row.consumer,
                        (row.answered - row.sent).count());
    return rows;
  };
  auto first = once();
  CHECK(first.size() == 8);
  CHECK(first == once());
}

TEST_CASE_FIXTURE(fixture, "the real actors drain a streamed source of 2,000 "
                           "requests holding only those in flight, the "
                           "answered requests' timeouts dropped") {
  add_producer("prefill-0");
  add_consumer("decode-0");
  constexpr std::size_t n = 2000;
  cfg.inflight = 8;
  // Request i: 16 to 1,600 tokens, one every 100 us (faster than they
  // move: the window stays full).
  auto read = std::make_shared<std::size_t>(0);
  cfg.source = [read](router_input& in) {
    if (*read == n)
      return false;
    auto i = (*read)++;
    in.tokens = std::uint32_t(16 * (1 + i % 100));
    in.arrival = std::chrono::microseconds(100 * i);
    return true;
  };
  std::size_t answered = 0, ok = 0, most_open = 0, most_timeouts = 0;
  std::vector<bool> seen(n);
  cfg.on_request = [&](const router_request& row) {
    REQUIRE(row.index < n);
    CHECK_FALSE(seen[row.index]); // each once
    seen[row.index] = true;
    ++answered;
    ok += row.ok ? 1 : 0;
  };
  auto& clock = sched.clock();
  auto r = replay([&] {
    most_open = std::max(most_open, *read - answered);
    sim::drop_answered_timeouts(clock);
    most_timeouts = std::max(most_timeouts, clock.schedule().size());
  });
  CHECK(*read == n);
  CHECK(answered == n);
  CHECK(ok == n);
  CHECK(r.done == n);
  CHECK(r.failed == 0);
  CHECK(r.requests.empty()); // handed to on_request, not kept
  // What is held does not grow with the requests: the open ones and one
  // read ahead; in the clock, their timeouts (a few per open request: the
  // prefill, the allocate, the send and the receive) and the timers.
  CHECK(most_open <= cfg.inflight + 1);
  CHECK(most_timeouts < 10 * cfg.inflight);
  // Without dropping them, each answered request's timeouts would stay
  // (CAF 0.17 does not cancel them): the clock would hold thousands.
}
