// The producer/consumer protocol under CAF's deterministic scheduler, with a
// fake in-process data path: a transfer actor of the real interface that
// memcpys between the regions of two "workers" living in this process. What
// is tested is the negotiation (allocate/grant/arrived, advertise),
// layer-by-layer parts, verification and the errors a router sees.
#include <doctest/doctest.h>

#include <cstring>
#include <map>
#include <memory>

#include "actor_fixture.hpp"
#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/plan.hpp"

using namespace kvferry;

namespace {

// The fake data path: regions by worker name, and a switch that corrupts the
// first byte of every transfer (to prove verification is real).
struct fake_net {
  std::map<std::string, std::shared_ptr<memory_region>> regions;
  bool corrupt = false;
  int sends = 0;
};

struct fake_transfer_state {
  std::string worker;
  std::shared_ptr<fake_net> net;
  std::map<std::uint64_t, std::uint64_t> arrived;  // transfer id -> bytes
  std::map<std::uint64_t, caf::typed_response_promise<std::uint64_t>> waiting;
  static inline const char* name = "fake.transfer";
};

transfer_actor::behavior_type
fake_transfer(transfer_actor::stateful_pointer<fake_transfer_state> self,
              std::string name, std::shared_ptr<fake_net> net) {
  self->state.worker = name;
  self->state.net = net;
  return {
    [self](proto::endpoint_atom) {
      proto::endpoint ep;
      ep.name = self->state.worker;
      ep.transfer = caf::actor_cast<caf::actor>(self);
      ep.region_bytes = self->state.net->regions[self->state.worker]->size();
      return ep;
    },
    [self](proto::send_atom, proto::send_order& o) -> caf::result<std::uint64_t> {
      auto& net = *self->state.net;
      auto& src = net.regions[self->state.worker];
      auto& dst = net.regions[o.peer.name];
      std::uint64_t bytes = 0;
      for (auto& e : o.extents) {
        std::memcpy(dst->data() + e.dst_offset, src->data() + e.src_offset,
                    e.length);
        bytes += e.length;
      }
      if (net.corrupt && !o.extents.empty())
        dst->data()[o.extents[0].dst_offset] ^= 0xff;
      ++net.sends;
      proto::announcement a;
      a.transfer_id = o.transfer_id;
      a.sender = self->state.worker;
      a.chunks = o.extents;
      self->send(caf::actor_cast<transfer_actor>(o.peer.transfer),
                 proto::announce_atom::value, std::move(a));
      return bytes;
    },
    [self](proto::announce_atom, proto::announcement& a) {
      auto bytes = plan_bytes(a.chunks);
      auto w = self->state.waiting.find(a.transfer_id);
      if (w != self->state.waiting.end()) {
        w->second.deliver(bytes);
        self->state.waiting.erase(w);
      } else {
        self->state.arrived[a.transfer_id] = bytes;
      }
    },
    [self](proto::recv_atom, proto::recv_order& o) -> caf::result<std::uint64_t> {
      auto i = self->state.arrived.find(o.transfer_id);
      if (i != self->state.arrived.end()) {
        auto bytes = i->second;
        self->state.arrived.erase(i);
        return bytes;
      }
      auto p = self->make_response_promise<std::uint64_t>();
      self->state.waiting.emplace(o.transfer_id, p);
      return p;
    },
    [](proto::landed_atom, const std::string&, std::uint64_t,
       std::uint64_t) {},
    [](proto::open_atom, const std::string&, std::uint32_t,
       std::uint64_t) -> caf::result<std::vector<char>> {
      return make_error(ec::invalid_argument, "fake transfer: no channels");
    },
    [](proto::stats_atom) { return proto::transfer_stats{}; },
    [](joined_atom, const worker_info&) {},
    [](left_atom, const std::string&, const caf::error&) {},
    [](proto::progress_atom) {},
    [](proto::sweep_atom) {},
  };
}

struct fixture : test::actor_fixture {
  std::shared_ptr<fake_net> net = std::make_shared<fake_net>();
  kv_geometry geo;
  producer_actor producer;
  consumer_actor consumer;
  std::vector<caf::actor> spawned;  // stopped at the end: nothing outlives

  // Small geometry: 4 layers of 2*2*8*2*4 = 256-byte blocks.
  fixture() {
    geo.layers = 4;
    geo.kv_heads = 2;
    geo.head_dim = 8;
    geo.block_tokens = 4;
  }

  app_config make_app(const std::string& name, std::uint64_t blocks) {
    net->regions[name] = memory_region::allocate_host(
      blocks * geo.layer_block_bytes(), name);
    auto t = sys.spawn(fake_transfer, name, net);
    spawned.push_back(caf::actor_cast<caf::actor>(t));
    auto ep = request<proto::endpoint>(t, proto::endpoint_atom::value);
    REQUIRE(ep);
    app_config cfg;
    cfg.name = name;
    cfg.geometry = geo;
    cfg.region = net->regions[name];
    cfg.transfer = t;
    cfg.self = *ep;
    cfg.timeout_ms = 1000;
    return cfg;
  }

  void start(std::uint64_t prefill_blocks = 64, std::uint64_t decode_blocks = 64,
             bool producer_layerwise = false) {
    auto p = make_app("prefill-0", prefill_blocks);
    p.layerwise = producer_layerwise;
    producer = spawn_producer(sys, p);
    consumer = spawn_consumer(sys, make_app("decode-0", decode_blocks));
    spawned.push_back(caf::actor_cast<caf::actor>(producer));
    spawned.push_back(caf::actor_cast<caf::actor>(consumer));
  }

  ~fixture() override {
    for (auto& a : spawned)
      caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
    run();
  }

  caf::expected<proto::ready_report> prefill(std::uint64_t id,
                                             std::uint32_t tokens,
                                             bool layerwise = false,
                                             bool pull = false) {
    proto::prefill_request r;
    r.request_id = id;
    r.prompt_tokens = tokens;
    r.pattern_seed = 99;
    r.consumer = caf::actor_cast<caf::actor>(consumer);
    r.layerwise = layerwise;
    r.pull = pull;
    return request<proto::ready_report>(producer, proto::prefill_atom::value,
                                        std::move(r));
  }
};

}  // namespace

TEST_CASE_FIXTURE(fixture, "push: a request arrives verified") {
  start();
  auto r = prefill(1, 10);  // 3 blocks per layer, 4 layers
  REQUIRE_MESSAGE(r, render(r.error()));
  CHECK(r->request_id == 1);
  CHECK(r->verified);
  CHECK(r->bytes == 3 * 4 * geo.layer_block_bytes());
  CHECK(net->sends == 1);  // one coalesced plan for the whole request
}

TEST_CASE_FIXTURE(fixture, "push layer by layer: one transfer per layer") {
  start();
  auto r = prefill(2, 20, true);
  REQUIRE_MESSAGE(r, render(r.error()));
  CHECK(r->verified);
  CHECK(net->sends == 4);
}

TEST_CASE_FIXTURE(fixture, "the worker's --layerwise default applies") {
  start(64, 64, true);
  auto r = prefill(3, 5);
  REQUIRE_MESSAGE(r, render(r.error()));
  CHECK(net->sends == 4);
}

TEST_CASE_FIXTURE(fixture, "pull: the consumer fetches what was advertised") {
  start();
  auto r = prefill(4, 33, false, true);
  REQUIRE_MESSAGE(r, render(r.error()));
  CHECK(r->verified);
  CHECK(r->bytes == 9 * 4 * geo.layer_block_bytes());
  auto r2 = prefill(5, 33, true, true);  // pull, per layer
  REQUIRE_MESSAGE(r2, render(r2.error()));
  CHECK(net->sends == 1 + 4);
}

TEST_CASE_FIXTURE(fixture, "blocks return to both pools: many requests fit") {
  start(12, 12);  // room for exactly one 3-block-per-layer request
  for (std::uint64_t id = 1; id <= 20; ++id) {
    auto r = prefill(id, 12);
    REQUIRE_MESSAGE(r, render(r.error()));
  }
}

TEST_CASE_FIXTURE(fixture, "a corrupted byte fails verification, naming the "
                           "request") {
  start();
  net->corrupt = true;
  auto r = prefill(7, 10);
  REQUIRE_FALSE(r);
  CHECK(is(r.error(), ec::mismatch));
  CHECK(render(r.error()).find("request 7") != std::string::npos);
  net->corrupt = false;
  auto again = prefill(8, 10);  // the blocks of the failed request are back
  CHECK(again);
}

TEST_CASE_FIXTURE(fixture, "a request larger than a pool fails clearly") {
  start(8, 64);
  auto r = prefill(9, 100);
  REQUIRE_FALSE(r);
  CHECK(render(r.error()).find("pool exhausted") != std::string::npos);
  start(64, 4);
  auto r2 = prefill(10, 10);
  REQUIRE_FALSE(r2);
  CHECK(render(r2.error()).find("decode-0") != std::string::npos);
}

TEST_CASE_FIXTURE(fixture, "a geometry mismatch is refused at allocate") {
  start();
  auto cfg = make_app("decode-1", 64);
  cfg.geometry.layers = 8;
  consumer = spawn_consumer(sys, cfg);
  spawned.push_back(caf::actor_cast<caf::actor>(consumer));
  auto r = prefill(11, 10);
  REQUIRE_FALSE(r);
  CHECK(is(r.error(), ec::mismatch));
}
