// The producer/consumer protocol under CAF's deterministic scheduler, with a
// fake in-process data path: a transfer actor of the real interface that
// memcpys between the regions of two "workers" living in this process, under
// each worker's real node actor (which plans and posts the orders). What is
// tested is the negotiation (allocate/grant/arrived, advertise),
// layer-by-layer parts, verification and the errors a router sees. Pools
// are given in layer-blocks (--pool-blocks); block ids, grants and credit
// count blocks of every layer (pool_layout): 64 layer-blocks = 16 ids.
#include <cstring>
#include <functional>
#include <map>
#include <memory>

#include <doctest/doctest.h>

#include "actor_fixture.hpp"
#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/app.hpp"
#include "kvferry/actors/node_actor.hpp"
#include "kvferry/actors/plan.hpp"
#include "kvferry/actors/transfer.hpp"
#include "why.hpp"

using namespace kvferry;

namespace {

// The fake data path: regions by worker name, and a switch that corrupts the
// first byte of every transfer (to prove verification is real).
struct fake_net {
  std::map<std::string, std::shared_ptr<memory_region>> regions;
  bool corrupt = false;
  int sends = 0;
  // The GPU timing each transfer's recv report carries, as a CUDA IPC copy's
  // does (recv_report::gpu_copy_ns, gpu_queued_ns); 0 as on a plugin path.
  std::int64_t gpu_copy_ns = 0;
  std::int64_t gpu_queued_ns = 0;
  proto::recv_report report(std::uint64_t bytes) const {
    return {bytes, 0, 0, gpu_copy_ns, gpu_queued_ns};
  }
  // Bytes move (and are announced) at once, but the sender's completion
  // waits here until the test sends the sender's fake transfer actor a
  // sweep_atom: a slow send completion.
  bool hold_completions = false;
  std::vector<
      std::pair<caf::typed_response_promise<std::uint64_t>, std::uint64_t>>
      held;
  void release_completions() {
    for (auto& [promise, bytes] : held)
      promise.deliver(bytes);
    held.clear();
  }
};

// A recv order waiting for its transfer: answered with the bytes that
// landed, or failed.
struct waiting_recv {
  std::function<void(std::uint64_t)> landed;
  std::function<void(const caf::error&)> failed;
};

struct fake_transfer_state {
  std::string worker;
  std::shared_ptr<fake_net> net;
  std::map<std::uint64_t, std::uint64_t> arrived; // transfer id -> bytes
  std::map<std::uint64_t, waiting_recv> waiting;
  caf::actor node; // node_attach_atom
  static inline const char* name = "fake.transfer";
};

// A recv order: answered at once when its transfer arrived, else kept.
void claim_recv(transfer_actor::stateful_pointer<fake_transfer_state> self,
                std::uint64_t transfer_id, waiting_recv w) {
  auto i = self->state.arrived.find(transfer_id);
  if (i == self->state.arrived.end()) {
    self->state.waiting.emplace(transfer_id, std::move(w));
    return;
  }
  w.landed(i->second);
  self->state.arrived.erase(i);
}

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
      [self](proto::send_atom,
             proto::send_order& o) -> caf::result<std::uint64_t> {
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
                   proto::announce_atom::value,
                   proto::announce_batch{{std::move(a)}});
        if (net.hold_completions) {
          auto promise = self->make_response_promise<std::uint64_t>();
          net.held.emplace_back(promise, bytes);
          return promise;
        }
        return bytes;
      },
      [self](proto::announce_atom, proto::announce_batch& b) {
        for (const auto& a : b.announcements) {
          auto bytes = total_bytes(a.chunks);
          auto w = self->state.waiting.find(a.transfer_id);
          if (w != self->state.waiting.end()) {
            w->second.landed(bytes);
            self->state.waiting.erase(w);
          } else {
            self->state.arrived[a.transfer_id] = bytes;
          }
        }
      },
      [](proto::announce_flush_atom) {},
      // The fake has no channels to drop, and reads nothing.
      [](proto::closed_atom, const std::string&, std::uint64_t,
         const caf::error&) {},
      [](proto::read_atom,
         proto::read_order&) -> caf::result<proto::recv_report> {
        return make_error(ec::invalid_argument, "fake transfer: no reads");
      },
      [self](proto::recv_atom, proto::recv_order& o) {
        auto p = self->make_response_promise<proto::recv_report>();
        auto net = self->state.net;
        claim_recv(self, o.transfer_id,
                   {[p, net](std::uint64_t bytes) mutable {
                      p.deliver(net->report(bytes));
                    },
                    [p](const caf::error& err) mutable { p.deliver(err); }});
        return p;
      },
      // A node's caller, answered here (see transfer_actor in actors.hpp).
      [self](proto::recv_atom, proto::recv_order& o, std::uint64_t id,
             caf::actor& node) {
        auto p = self->make_response_promise<proto::node_report>();
        auto net = self->state.net;
        auto peer = o.peer_name;
        auto tell = [node, peer](const proto::node_report& rep,
                                 const caf::error& err) {
          caf::anon_send(node, proto::node_answered_atom::value, peer, rep,
                         err);
        };
        claim_recv(
            self, o.transfer_id,
            {[p, net, id, tell](std::uint64_t bytes) mutable {
               auto r = net->report(bytes);
               proto::node_report rep{
                   id,    r.bytes,       proto::data_start_of(r), r.landed_ns,
                   false, r.gpu_copy_ns, r.gpu_queued_ns};
               p.deliver(rep);
               tell(rep, {});
             },
             [p, id, tell](const caf::error& err) mutable {
               p.deliver(err);
               tell(proto::node_report{id}, err);
             }});
        return p;
      },
      [](proto::landed_atom, const proto::landed&) {},
      // No CUDA IPC here: nothing is ever quarantined.
      [](proto::ipc_hello_atom, const std::string&) {},
      [](proto::ipc_status_atom, const std::string&, std::uint64_t) {
        return caf::ok_atom::value;
      },
      [](proto::settle_atom, const std::string&, std::uint64_t) {
        return caf::ok_atom::value;
      },
      // Nothing arrived for it (else it answered): it fails at once.
      [self](proto::settle_atom, const std::string&, std::uint64_t id,
             const caf::error& why) {
        auto i = self->state.waiting.find(id);
        if (i == self->state.waiting.end())
          return;
        i->second.failed(why);
        self->state.waiting.erase(i);
      },
      [](proto::open_atom, const std::string&, std::uint32_t,
         std::uint64_t) -> caf::result<std::vector<char>> {
        return make_error(ec::invalid_argument, "fake transfer: no channels");
      },
      [](proto::stats_atom) { return proto::transfer_stats{}; },
      [](joined_atom, const worker_info&) {},
      [](left_atom, const std::string&, const caf::error&) {},
      [](proto::progress_atom, std::uint64_t) {},
      [](proto::wake_atom) {},
      // Stands in for "the held send completions are in" (see fake_net):
      // promises are delivered from their own actor's context.
      [self](proto::sweep_atom) { self->state.net->release_completions(); },
      [](proto::region_add_atom, std::uint64_t, std::uint64_t,
         std::int32_t) -> caf::result<std::uint64_t> {
        return make_error(ec::invalid_argument, "fake transfer: no regions");
      },
      [](proto::region_remove_atom,
         std::uint64_t) -> caf::result<caf::ok_atom> {
        return make_error(ec::not_found, "fake transfer: no regions");
      },
      // Moves no bytes: refuses an endpoint's batched orders.
      [self](proto::order_batch_atom, const proto::order_batch& b) {
        refuse_orders(self, b, "fake transfer");
      },
      [](proto::settled_flush_atom) {},
      // Holds no offers (node_actor.hpp, offerless).
      [self](proto::node_attach_atom, const caf::actor& node) {
        self->state.node = node;
      },
      [self](proto::node_offer_atom, const proto::pull_offer& offer) {
        offerless::give_back(self->state.node, offer);
      },
      [self](proto::node_pull_atom, proto::node_request& req) {
        return offerless::pull_at_node(self, self->state.node, req);
      },
  };
}

struct fixture : test::actor_fixture {
  std::shared_ptr<fake_net> net = std::make_shared<fake_net>();
  kv_geometry geo;
  producer_actor producer;
  consumer_actor consumer;
  transfer_actor producer_transfer;
  std::vector<caf::actor> spawned; // stopped at the end: nothing outlives

  // Small geometry: 4 layers of 2*2*8*2*4 = 256-byte blocks.
  fixture() {
    geo.layers = 4;
    geo.kv_heads = 2;
    geo.head_dim = 8;
    geo.block_tokens = 4;
  }

  app_config make_app(const std::string& name, std::uint64_t blocks) {
    net->regions[name] =
        memory_region::allocate_host(blocks * geo.layer_block_bytes(), name);
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
    cfg.node = spawn_node_actor(
        sys,
        {name, t, *ep, pool_layout(geo, cfg.region->size()), cfg.timeout_ms});
    spawned.push_back(caf::actor_cast<caf::actor>(cfg.node));
    return cfg;
  }

  void start(std::uint64_t prefill_blocks = 64,
             std::uint64_t decode_blocks = 64, bool producer_layerwise = false,
             std::uint32_t lend_percent = 25) {
    auto p = make_app("prefill-0", prefill_blocks);
    p.layerwise = producer_layerwise;
    start_producer(p);
    auto c = make_app("decode-0", decode_blocks);
    c.lend_percent = lend_percent;
    start_consumer(c);
  }

  // The halves of start(), for cases that tune a config start() does not.
  void start_producer(const app_config& p) {
    producer_transfer = p.transfer;
    producer = spawn_producer(sys, p);
    spawned.push_back(caf::actor_cast<caf::actor>(producer));
  }
  void start_consumer(const app_config& c) {
    consumer = spawn_consumer(sys, c);
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
    return request<proto::ready_report>(
        producer, proto::prefill_atom::value,
        make_prefill_request(id, tokens, layerwise, pull));
  }

  // What prefill() sends, for cases that must not wait for the reply.
  proto::prefill_request make_prefill_request(std::uint64_t id,
                                              std::uint32_t tokens,
                                              bool layerwise = false,
                                              bool pull = false) const {
    proto::prefill_request r;
    r.request_id = id;
    r.prompt_tokens = tokens;
    r.pattern_seed = 99;
    r.consumer = caf::actor_cast<caf::actor>(consumer);
    r.layerwise = layerwise;
    r.pull = pull;
    return r;
  }

  // Like request(), but returns once the system is idle, answered or not:
  // for requests answered only after what the test does next. The reply
  // lands in the returned slot.
  template<class T, class Handle, class... Ts>
  test::detail::reply_slot<T> request_pending(const Handle& dest, Ts... xs) {
    auto slot = std::make_shared<std::optional<caf::expected<T>>>();
    sys.spawn(test::detail::request_once<T, Handle, Ts...>, dest, slot,
              std::move(xs)...);
    run();
    return slot;
  }
};

} // namespace

TEST_CASE_FIXTURE(fixture, "push: a request arrives verified") {
  start();
  auto r = prefill(1, 10); // 3 blocks per layer, 4 layers
  REQUIRE_MESSAGE(r, test::why(r));
  CHECK(r->request_id == 1);
  CHECK(r->bytes == 3 * 4 * geo.layer_block_bytes());
  CHECK(net->sends == 1); // one coalesced plan for the whole request
}

TEST_CASE_FIXTURE(fixture, "push layer by layer: one transfer per layer") {
  start();
  auto r = prefill(2, 20, true);
  REQUIRE_MESSAGE(r, test::why(r));
  CHECK(net->sends == 4);
}

TEST_CASE_FIXTURE(fixture, "the ready report carries the GPU timing of "
                           "every part") {
  start();
  net->gpu_copy_ns = 1500;
  net->gpu_queued_ns = 70;
  auto whole = prefill(11, 20);
  REQUIRE_MESSAGE(whole, test::why(whole));
  CHECK(whole->gpu_copy_ns == 1500);
  CHECK(whole->gpu_queued_ns == 70);
  auto per_layer = prefill(12, 20, true); // 4 parts, one timing each
  REQUIRE_MESSAGE(per_layer, test::why(per_layer));
  CHECK(per_layer->gpu_copy_ns == 4 * 1500);
  CHECK(per_layer->gpu_queued_ns == 4 * 70);
  auto pulled = prefill(13, 20, true, true); // one part: all layers written
  REQUIRE_MESSAGE(pulled, test::why(pulled));
  CHECK(pulled->gpu_copy_ns == 1500);
  // The consumer answers a pull itself: the producer's fill comes with the
  // advert.
  CHECK(pulled->fill_ns > 0);
  CHECK(pulled->compute_ns >= pulled->fill_ns);
  net->gpu_copy_ns = 0; // not measured (a plugin): nothing to report
  net->gpu_queued_ns = 0;
  auto plugin = prefill(14, 20);
  REQUIRE_MESSAGE(plugin, test::why(plugin));
  CHECK(plugin->gpu_copy_ns == 0);
  CHECK(plugin->gpu_queued_ns == 0);
}

TEST_CASE_FIXTURE(fixture, "the worker's --layerwise default applies") {
  start(64, 64, true);
  auto r = prefill(3, 5);
  REQUIRE_MESSAGE(r, test::why(r));
  CHECK(net->sends == 4);
}

TEST_CASE_FIXTURE(fixture, "pull: the consumer fetches what was advertised") {
  start();
  auto r = prefill(4, 33, false, true);
  REQUIRE_MESSAGE(r, test::why(r));
  CHECK(r->bytes == 9 * 4 * geo.layer_block_bytes());
  // A layerwise pull is one transfer too: every layer is written before
  // the advert.
  auto r2 = prefill(5, 33, true, true);
  REQUIRE_MESSAGE(r2, test::why(r2));
  CHECK(net->sends == 1 + 1);
}

TEST_CASE_FIXTURE(fixture, "pull: a request the consumer refuses gives the "
                           "producer its source blocks back at once") {
  // The producer's pool holds one 3-block-per-layer request; the
  // consumer's is too small for it, so it refuses each pull at once,
  // answering the router and telling the producer, which withdraws its
  // offer: the next request finds the source blocks free.
  start(12, 8, false, 0);
  for (std::uint64_t id = 1; id <= 3; ++id) {
    auto r = prefill(id, 12, false, true);
    REQUIRE_FALSE(r);
    auto text = render(r.error());
    INFO(text);
    CHECK(text.find("consumer 'decode-0'") != std::string::npos);
    CHECK(text.find("pool exhausted") != std::string::npos);
  }
}

TEST_CASE_FIXTURE(fixture, "blocks return to both pools: many requests fit") {
  start(12, 12, false, 0); // room for exactly one 3-block-per-layer request
  for (std::uint64_t id = 1; id <= 20; ++id) {
    auto r = prefill(id, 12);
    REQUIRE_MESSAGE(r, test::why(r));
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
  auto again = prefill(8, 10); // the blocks of the failed request are back
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
  start_consumer(cfg);
  auto r = prefill(11, 10);
  REQUIRE_FALSE(r);
  CHECK(is(r.error(), ec::mismatch));
}

// ---- credit (grant-ahead)

namespace {

proto::consumer_stats stats_of(fixture& f) {
  auto s =
      f.request<proto::consumer_stats>(f.consumer, proto::stats_atom::value);
  REQUIRE(s);
  return *s;
}

// A stand-in producer that holds a loan (its sender identity is what the
// consumer lends to) and lets a test send what a producer would.
using fake_reserve_atom = caf::atom_constant<caf::atom("fkreserve")>;
using fake_allocate_atom = caf::atom_constant<caf::atom("fkalloc")>;
using fake_arrived_atom = caf::atom_constant<caf::atom("fkarrived")>;

// Sends `x` to `c` as `self` (the producer the consumer sees) and answers
// with the reply.
template<class T, class... Ts>
caf::typed_response_promise<T> relay(caf::event_based_actor* self,
                                     const consumer_actor& c, Ts... xs) {
  auto rp = self->make_response_promise<T>();
  self->request(c, caf::infinite, std::move(xs)...)
      .then([rp](T& x) mutable { rp.deliver(std::move(x)); },
            [rp](caf::error& err) mutable { rp.deliver(std::move(err)); });
  return rp;
}

caf::behavior fake_producer(caf::event_based_actor* self, consumer_actor c,
                            std::string name, kv_geometry geo,
                            std::shared_ptr<std::vector<std::uint64_t>> got) {
  return {
      [=](fake_reserve_atom, std::uint64_t blocks) {
        auto rp = self->make_response_promise<proto::grant>();
        proto::reserve_request r{name, blocks, geo.layer_block_bytes(),
                                 geo.layers};
        self->request(c, caf::infinite, proto::reserve_atom::value, r)
            .then(
                [rp, got](proto::grant& g) mutable {
                  *got = g.block_offsets;
                  rp.deliver(std::move(g));
                },
                [rp](caf::error& err) mutable { rp.deliver(std::move(err)); });
        return rp;
      },
      [=](proto::incoming_atom a, proto::credit_notice& n) {
        return self->delegate(c, a, std::move(n));
      },
      // Push without credit: the producer allocates, then (maybe) sends
      // its `arrived` notice.
      [=](fake_allocate_atom, proto::allocate_request& r) {
        return relay<proto::grant>(self, c, proto::allocate_atom::value, r);
      },
      [=](fake_arrived_atom, proto::arrival_notice& n) {
        return relay<proto::ready_report>(self, c, proto::arrived_atom::value,
                                          n);
      },
      [=](proto::abort_atom a, std::uint64_t id, caf::error& err) {
        self->send(c, a, id, name, std::move(err));
      },
      [](proto::credit_atom, const std::vector<std::uint64_t>&) {},
  };
}

// A credit notice of block ids `blocks` (one part) for producer `name`.
proto::credit_notice notice_for(const fixture& f, std::uint64_t id,
                                const std::string& name,
                                std::vector<std::uint64_t> blocks) {
  proto::credit_notice n;
  n.request_id = id;
  n.producer = name;
  n.blocks_per_layer = static_cast<std::uint32_t>(blocks.size());
  n.bytes = blocks.size() * f.geo.layers * f.geo.layer_block_bytes();
  n.block_offsets = std::move(blocks);
  return n;
}

// A fake producer borrowing from a consumer, and the offsets of its last
// grant: most credit cases need one, stopped with the fixture.
struct borrower {
  caf::actor actor;
  std::shared_ptr<std::vector<std::uint64_t>> granted;

  // The first `n` granted offsets: the blocks of a notice within the loan.
  std::vector<std::uint64_t> first_granted(std::size_t n) const {
    return std::vector<std::uint64_t>(
        granted->begin(), granted->begin() + static_cast<std::ptrdiff_t>(n));
  }
};

// Spawns a borrower named `name` whose grants come from `lender`, with a
// node of its own that met the lender's (the consumer receives from it).
borrower spawn_borrower(fixture& f, const consumer_actor& lender,
                        std::string name) {
  auto cfg = f.make_app(name, 64);
  auto met = f.request<std::string>(cfg.node, proto::node_connect_atom::value,
                                    caf::actor_cast<caf::actor>(lender));
  REQUIRE_MESSAGE(met, test::why(met));
  borrower b{{}, std::make_shared<std::vector<std::uint64_t>>()};
  b.actor =
      f.sys.spawn(fake_producer, lender, std::move(name), f.geo, b.granted);
  f.spawned.push_back(b.actor);
  return b;
}

// A reserve through `b`, as a producer's first contact with a consumer sends.
caf::expected<proto::grant> reserve(fixture& f, const borrower& b,
                                    std::uint64_t blocks) {
  return f.request<proto::grant>(b.actor, fake_reserve_atom::value, blocks);
}

// Sends `notice` through `b` without waiting: an accepted notice is answered
// only when its bytes arrive (or the request fails).
test::detail::reply_slot<proto::ready_report>
send_notice_pending(fixture& f, const borrower& b,
                    proto::credit_notice notice) {
  return f.request_pending<proto::ready_report>(
      b.actor, proto::incoming_atom::value, std::move(notice));
}

} // namespace

TEST_CASE_FIXTURE(fixture, "reserve lends at most lend_percent of the pool") {
  start(64, 64);
  auto p = spawn_borrower(*this, consumer, "prefill-9");
  auto g = reserve(*this, p, 1000);
  REQUIRE_MESSAGE(g, test::why(g));
  CHECK(g->block_offsets.size() == 4); // 25 % of 16 ids
  CHECK(g->receiver.name == "decode-0");
  auto more = reserve(*this, p, 1000);
  REQUIRE(more);
  CHECK(more->block_offsets.empty());       // the cap holds across reserves
  CHECK(stats_of(*this).lent_blocks == 16); // layer-blocks
  auto q = spawn_borrower(*this, consumer, "prefill-8");
  auto g2 = reserve(*this, q, 3);
  REQUIRE(g2);
  CHECK(g2->block_offsets.size() == 3); // never more than asked
}

TEST_CASE_FIXTURE(fixture, "a reserve of another geometry is refused") {
  start();
  auto cfg = make_app("decode-1", 64);
  cfg.geometry.layers = 8;
  auto other = spawn_consumer(sys, cfg);
  spawned.push_back(caf::actor_cast<caf::actor>(other));
  auto p = spawn_borrower(*this, other, "prefill-9");
  auto g = reserve(*this, p, 4);
  REQUIRE_FALSE(g);
  CHECK(is(g.error(), ec::mismatch));
}

TEST_CASE_FIXTURE(fixture, "requests within credit take no allocate round "
                           "trip, and blocks flow back to the credit") {
  start(64, 64); // the loan: 4 ids, room for one 3-id request
  for (std::uint64_t id = 1; id <= 20; ++id) {
    auto r = prefill(id, 12); // 3 blocks per layer, 4 layers
    REQUIRE_MESSAGE(r, test::why(r));
  }
  auto s = stats_of(*this);
  // The first request negotiates while the reserve is in flight; every
  // later one is delegated, on blocks that came back from the one before.
  CHECK(s.negotiated == 1);
  CHECK(s.delegated == 19);
  CHECK(s.refused == 0);
  CHECK(s.lent_blocks == 16);
  CHECK(s.credit_returns >= 18);
}

TEST_CASE_FIXTURE(fixture, "credit works layer by layer, and the reply "
                           "counts the producer's fill time") {
  start(64, 64);
  REQUIRE(prefill(1, 4, true));
  auto r = prefill(2, 8, true); // 2 blocks x 4 layers on credit
  REQUIRE_MESSAGE(r, test::why(r));
  CHECK(r->bytes == 8 * geo.layer_block_bytes());
  CHECK(stats_of(*this).delegated == 1);
  CHECK(net->sends == 4 + 4);
}

TEST_CASE_FIXTURE(fixture, "a request larger than the credit negotiates") {
  start(64, 64);
  REQUIRE(prefill(1, 4));     // first contact: the reserve goes out
  auto r = prefill(2, 4 * 5); // 5 ids > 4 lent
  REQUIRE_MESSAGE(r, test::why(r));
  auto s = stats_of(*this);
  CHECK(s.negotiated == 2);
  CHECK(s.delegated == 0);
  auto small = prefill(3, 4); // fits the credit again
  REQUIRE(small);
  CHECK(stats_of(*this).delegated == 1);
}

TEST_CASE_FIXTURE(fixture, "a producer that disables credit always "
                           "negotiates") {
  auto p = make_app("prefill-0", 64);
  p.credit_blocks = 0;
  start_producer(p);
  start_consumer(make_app("decode-0", 64));
  for (std::uint64_t id = 1; id <= 3; ++id)
    REQUIRE(prefill(id, 4));
  auto s = stats_of(*this);
  CHECK(s.negotiated == 3);
  CHECK(s.lent_blocks == 0);
}

TEST_CASE_FIXTURE(fixture, "blocks outside the lent set are refused, naming "
                           "the producer and the block") {
  start(64, 64);
  auto p = spawn_borrower(*this, consumer, "prefill-9");
  REQUIRE(reserve(*this, p, 8));
  REQUIRE(p.granted->size() == 4);
  // Block 10 was never lent: the pool lends its lowest blocks first.
  auto blocks = p.first_granted(3);
  blocks.push_back(10);
  auto r =
      request<proto::ready_report>(p.actor, proto::incoming_atom::value,
                                   notice_for(*this, 5, "prefill-9", blocks));
  REQUIRE_FALSE(r);
  CHECK(is(r.error(), ec::invalid_extent));
  auto text = render(r.error());
  CHECK(text.find("prefill-9") != std::string::npos);
  CHECK(text.find("block 10") != std::string::npos);
  // A producer with no loan at all is refused too.
  auto r2 = request<proto::ready_report>(
      p.actor, proto::incoming_atom::value,
      notice_for(*this, 6, "prefill-7", p.first_granted(4)));
  REQUIRE_FALSE(r2);
  CHECK(render(r2.error()).find("prefill-7") != std::string::npos);
  // The refused claims were undone: the same lent blocks are usable.
  auto slot = send_notice_pending(
      *this, p, notice_for(*this, 7, "prefill-9", p.first_granted(4)));
  CHECK_FALSE(*slot); // accepted: waits for its bytes
  CHECK(stats_of(*this).refused == 2);
}

TEST_CASE_FIXTURE(fixture, "a consumer that lends nothing refuses credit "
                           "claims and serves negotiated requests") {
  start(64, 64, false, 0); // lend_percent 0: no credit tables at all
  auto p = spawn_borrower(*this, consumer, "prefill-9");
  REQUIRE(reserve(*this, p, 8));
  CHECK(p.granted->empty());
  auto r = request<proto::ready_report>(
      p.actor, proto::incoming_atom::value,
      notice_for(*this, 5, "prefill-9", {0, 1, 2, 3}));
  REQUIRE_FALSE(r);
  CHECK(render(r.error()).find("block 0, which is not a block lent to it") !=
        std::string::npos);
  for (std::uint64_t id = 1; id <= 3; ++id)
    REQUIRE(prefill(id, 4));
  auto s = stats_of(*this);
  CHECK(s.negotiated == 3);
  CHECK(s.lent_blocks == 0);
}

TEST_CASE_FIXTURE(fixture, "an abort fails the delegated request at once, "
                           "but only from the producer that sent it") {
  start(64, 64);
  auto p = spawn_borrower(*this, consumer, "prefill-9");
  REQUIRE(reserve(*this, p, 8));
  auto slot = send_notice_pending(
      *this, p, notice_for(*this, 11, "prefill-9", p.first_granted(4)));
  REQUIRE_FALSE(*slot); // waiting for bytes that will not come
  // Another actor under the same name: its abort is ignored.
  auto stranger = spawn_borrower(*this, consumer, "prefill-9");
  caf::anon_send(stranger.actor, proto::abort_atom::value, std::uint64_t{11},
                 make_error(ec::peer_down, "forged"));
  run();
  CHECK_FALSE(*slot);
  caf::anon_send(p.actor, proto::abort_atom::value, std::uint64_t{11},
                 make_error(ec::peer_down, "send to 'decode-0' failed"));
  run();
  REQUIRE(*slot);
  REQUIRE_FALSE(**slot);
  CHECK(is((*slot)->error(), ec::peer_down));
  CHECK(render((*slot)->error()).find("send to 'decode-0' failed") !=
        std::string::npos);
}

TEST_CASE_FIXTURE(fixture, "a dead producer's loan returns to the pool") {
  start(64, 16, false, 100);
  auto p = spawn_borrower(*this, consumer, "prefill-9");
  REQUIRE(reserve(*this, p, 16));
  CHECK(p.granted->size() == 4); // the whole pool (4 ids) is lent
  caf::anon_send_exit(p.actor, caf::exit_reason::kill);
  run();
  CHECK(stats_of(*this).lent_blocks == 0);
  // All 4 are back in the pool: a new producer can borrow them all.
  auto q = spawn_borrower(*this, consumer, "prefill-9");
  REQUIRE(reserve(*this, q, 16));
  CHECK(q.granted->size() == 4);
}

TEST_CASE_FIXTURE(fixture, "blocks of a dead producer's request in flight "
                           "return to the pool, not to its credit") {
  start(64, 16, false, 100);
  auto p = spawn_borrower(*this, consumer, "prefill-9");
  REQUIRE(reserve(*this, p, 16));
  auto slot = send_notice_pending(
      *this, p, notice_for(*this, 3, "prefill-9", p.first_granted(4)));
  caf::anon_send_exit(p.actor, caf::exit_reason::kill);
  run();
  CHECK(stats_of(*this).lent_blocks == 0);
  // Its bytes never come: the consumer's deadline fails the request (the
  // fake transfer never answers, the request's own timeout does), and the
  // four blocks go to the pool.
  advance_time(std::chrono::seconds(3));
  REQUIRE(*slot);
  CHECK_FALSE(**slot);
  auto q = spawn_borrower(*this, consumer, "prefill-9");
  REQUIRE(reserve(*this, q, 16));
  CHECK(q.granted->size() == 4);
}

TEST_CASE_FIXTURE(fixture, "a consumer that died before the first request "
                           "fails it at once") {
  start();
  caf::anon_send_exit(consumer, caf::exit_reason::kill);
  run();
  auto r = prefill(1, 4); // no virtual time passes: no timeout can fire
  REQUIRE_FALSE(r);
  CHECK_FALSE(render(r.error()).find("got no reply") != std::string::npos);
  INFO(render(r.error()));
  CHECK(is(r.error(), ec::peer_down));
}

TEST_CASE_FIXTURE(fixture, "a producer short of blocks because the consumer "
                           "answered before its send completed waits for "
                           "them") {
  start(4, 64); // the producer's pool: exactly one 1-block-per-layer request
  REQUIRE(prefill(1, 4)); // negotiates; the reserve goes out
  net->hold_completions = true;
  auto second = prefill(2, 4); // on credit: the consumer answers at once
  REQUIRE_MESSAGE(second, test::why(second));
  CHECK(net->held.size() == 1); // ... while our source blocks are in use
  auto slot = request_pending<proto::ready_report>(
      producer, proto::prefill_atom::value, make_prefill_request(3, 4));
  CHECK_FALSE(*slot); // waiting for blocks, not failed
  net->hold_completions = false;
  caf::anon_send(producer_transfer, proto::sweep_atom::value);
  run();
  REQUIRE(*slot);
  REQUIRE_MESSAGE(**slot, test::why(**slot));
  CHECK(stats_of(*this).delegated == 2);
}

TEST_CASE_FIXTURE(fixture, "a request larger than the producer's whole pool "
                           "still fails at once") {
  start(4, 64);
  auto r = prefill(1, 8); // 2 blocks x 4 layers > 4
  REQUIRE_FALSE(r);
  CHECK(render(r.error()).find("pool exhausted") != std::string::npos);
}

// ---- back-pressure and dead producers

namespace {

// A producer that always negotiates (no credit) and a consumer whose pool
// holds `decode_blocks`, with the consumer's queue bounds given: every
// request then needs free pool blocks at allocate.
void start_negotiating(fixture& f, std::uint64_t decode_blocks,
                       std::uint32_t queue_limit = 256,
                       std::uint32_t queue_wait_ms = 5000) {
  auto p = f.make_app("prefill-0", 64);
  p.credit_blocks = 0;
  f.start_producer(p);
  auto c = f.make_app("decode-0", decode_blocks);
  c.queue_limit = queue_limit;
  c.queue_wait_ms = queue_wait_ms;
  f.start_consumer(c);
}

// Starts request `id` of `tokens` tokens without waiting for its reply.
test::detail::reply_slot<proto::ready_report>
prefill_pending(fixture& f, std::uint64_t id, std::uint32_t tokens) {
  return f.request_pending<proto::ready_report>(
      f.producer, proto::prefill_atom::value,
      f.make_prefill_request(id, tokens));
}

// Lets the held send completions in (see fake_net) and runs to idle.
void release_sends(fixture& f) {
  f.net->hold_completions = false;
  caf::anon_send(f.producer_transfer, proto::sweep_atom::value);
  f.run();
}

std::string error_text(const test::detail::reply_slot<proto::ready_report>& s) {
  REQUIRE(*s);
  REQUIRE_FALSE(**s);
  return render((*s)->error());
}

} // namespace

TEST_CASE_FIXTURE(fixture, "a consumer short of blocks holds requests and "
                           "serves them in order as blocks come back") {
  start_negotiating(*this, 8);
  // Request 1 takes the whole pool (2 blocks x 4 layers) and keeps it: its
  // producer's `arrived` waits for the held send completion.
  net->hold_completions = true;
  auto first = prefill_pending(*this, 1, 8);
  CHECK_FALSE(*first);
  auto second = prefill_pending(*this, 2, 8); // 8 more blocks: waits
  auto third = prefill_pending(*this, 3, 4);  // 4 blocks: waits behind it
  CHECK_FALSE(*second);
  CHECK_FALSE(*third);
  auto s = stats_of(*this);
  CHECK(s.waiting == 2);
  CHECK(s.free_blocks == 0);
  release_sends(*this);
  for (auto* slot : {&first, &second, &third}) {
    REQUIRE(**slot);
    REQUIRE_MESSAGE(***slot, test::why(***slot));
  }
  s = stats_of(*this);
  CHECK(s.waited == 2);
  CHECK(s.wait_failed == 0);
  CHECK(s.waiting == 0);
  CHECK(s.in_flight == 0);
  CHECK(s.free_blocks == s.pool_blocks);
}

TEST_CASE_FIXTURE(fixture, "a request waits for blocks at most "
                           "queue_wait_ms, then fails naming the consumer, "
                           "the request and the reason") {
  start_negotiating(*this, 8, 256, 500);
  net->hold_completions = true;
  auto first = prefill_pending(*this, 1, 8);
  auto second = prefill_pending(*this, 2, 8);
  advance_time(std::chrono::milliseconds(400));
  CHECK_FALSE(*second); // still within its wait
  advance_time(std::chrono::milliseconds(200));
  auto text = error_text(second);
  INFO(text);
  CHECK(is((*second)->error(), ec::timeout));
  CHECK(text.find("consumer 'decode-0'") != std::string::npos);
  CHECK(text.find("request 2") != std::string::npos);
  CHECK(text.find("queue_wait_ms") != std::string::npos);
  release_sends(*this);
  REQUIRE(*first);
  CHECK(**first);
  auto s = stats_of(*this);
  CHECK(s.wait_failed == 1);
  CHECK(s.free_blocks == s.pool_blocks);
  CHECK(prefill(3, 8)); // the pool serves again
}

TEST_CASE_FIXTURE(fixture, "a full wait queue fails the next request at "
                           "once, saying so") {
  start_negotiating(*this, 8, 1);
  net->hold_completions = true;
  auto first = prefill_pending(*this, 1, 8);
  auto second = prefill_pending(*this, 2, 4); // waits: the queue's one place
  auto third = prefill_pending(*this, 3, 4);  // no place left
  CHECK_FALSE(*second);
  auto text = error_text(third);
  INFO(text);
  CHECK(text.find("consumer 'decode-0'") != std::string::npos);
  CHECK(text.find("request 3") != std::string::npos);
  CHECK(text.find("queue limit 1") != std::string::npos);
  release_sends(*this);
  REQUIRE(*second);
  CHECK(**second);
}

TEST_CASE_FIXTURE(fixture, "a request larger than the consumer's whole pool "
                           "fails at once instead of waiting") {
  start_negotiating(*this, 4);
  auto r = prefill(1, 8); // 8 blocks, the pool has 4
  REQUIRE_FALSE(r);
  auto text = render(r.error());
  CHECK(text.find("decode-0") != std::string::npos);
  CHECK(text.find("the pool has 4") != std::string::npos); // layer-blocks
  CHECK(stats_of(*this).waited == 0);
}

TEST_CASE_FIXTURE(fixture, "a dead producer's requests fail at once naming "
                           "it, and the pool is whole again") {
  start_negotiating(*this, 8);
  net->hold_completions = true;
  auto first = prefill_pending(*this, 1, 8);  // landed, `arrived` held back
  auto second = prefill_pending(*this, 2, 8); // waiting for blocks
  REQUIRE(stats_of(*this).in_flight == 1);
  caf::anon_send_exit(producer, caf::exit_reason::kill);
  run(); // no virtual time passes: no deadline can be the cause
  auto s = stats_of(*this);
  CHECK(s.in_flight == 0);
  CHECK(s.waiting == 0);
  CHECK(s.free_blocks == s.pool_blocks);
  CHECK(s.wait_failed == 1);
}

TEST_CASE_FIXTURE(fixture, "a producer that left the directory fails its "
                           "delegated requests at once, naming it; the same "
                           "request id runs again once its blocks are back") {
  start(64, 64);
  auto p = spawn_borrower(*this, consumer, "prefill-9");
  REQUIRE(reserve(*this, p, 8));
  auto slot = send_notice_pending(
      *this, p, notice_for(*this, 302, "prefill-9", p.first_granted(4)));
  REQUIRE_FALSE(*slot); // waiting for bytes that will not come
  caf::anon_send(consumer, left_atom::value, std::string{"prefill-9"},
                 make_error(ec::peer_down, "its node disconnected"));
  run();
  auto text = error_text(slot);
  INFO(text);
  CHECK(is((*slot)->error(), ec::peer_down));
  CHECK(text.find("producer 'prefill-9'") != std::string::npos);
  CHECK(text.find("request 302") != std::string::npos);
  // `left` may mean a lost lease only: the loan stays until the producer's
  // actor is down (it could still write into the lent blocks).
  CHECK(stats_of(*this).lent_blocks == 16); // 4 ids of 4 layer-blocks
  // The receive still posted for it resolves (the real transfer actor
  // drops the peer at once; the fake one waits for the deadline): then the
  // blocks are back and the id is free.
  advance_time(std::chrono::seconds(3));
  auto s = stats_of(*this);
  CHECK(s.in_flight == 0);
  CHECK(s.free_blocks + s.lent_blocks == s.pool_blocks);
  // Its restarted successor under the same name takes the loan over.
  auto q = spawn_borrower(*this, consumer, "prefill-9");
  REQUIRE(reserve(*this, q, 8));
  auto again = send_notice_pending(
      *this, q, notice_for(*this, 302, "prefill-9", q.first_granted(4)));
  CHECK_FALSE(*again); // accepted, not a duplicate: waits for its bytes
  CHECK(stats_of(*this).refused == 0);
}

TEST_CASE_FIXTURE(fixture, "a producer short of source blocks waits at most "
                           "queue_wait_ms, then fails naming itself") {
  auto p = make_app("prefill-0", 4); // one 1-block-per-layer request
  p.queue_wait_ms = 500;
  start_producer(p);
  start_consumer(make_app("decode-0", 64));
  REQUIRE(prefill(1, 4)); // negotiates; the reserve goes out
  net->hold_completions = true;
  REQUIRE(prefill(2, 4)); // on credit: answered, its source blocks held
  auto third = prefill_pending(*this, 3, 4);
  CHECK_FALSE(*third);
  advance_time(std::chrono::milliseconds(600));
  auto text = error_text(third);
  INFO(text);
  CHECK(is((*third)->error(), ec::timeout));
  CHECK(text.find("producer 'prefill-0'") != std::string::npos);
  CHECK(text.find("request 3") != std::string::npos);
  release_sends(*this);
  CHECK(prefill(4, 4)); // the blocks came back
}

TEST_CASE_FIXTURE(fixture, "while requests wait for blocks, a reserve lends "
                           "none of the free ones") {
  start_negotiating(*this, 16); // 4 ids; lends at most 1 (25 %)
  net->hold_completions = true;
  auto first = prefill_pending(*this, 1, 12); // 3 ids, held
  auto second = prefill_pending(*this, 2, 8); // 2 ids > 1 free: waits
  REQUIRE(stats_of(*this).waiting == 1);
  auto p = spawn_borrower(*this, consumer, "prefill-9");
  auto g = reserve(*this, p, 4);
  REQUIRE_MESSAGE(g, test::why(g));
  CHECK(g->block_offsets.empty()); // 1 is free, but request 2 comes first
  release_sends(*this);
  REQUIRE(*second);
  CHECK(**second);
  auto later = reserve(*this, p, 4); // nobody waits now
  REQUIRE(later);
  CHECK(later->block_offsets.size() == 1);
}

// ---- every request ends (soak: ids refused as "already in flight")

namespace {

// An allocate of one block per layer for request `id`, through `b`, asked
// on behalf of `requester` (the router), if any.
caf::expected<proto::grant> allocate_through(fixture& f, const borrower& b,
                                             std::uint64_t id,
                                             caf::actor requester = {}) {
  proto::allocate_request r;
  r.request_id = id;
  r.blocks_per_layer = 1;
  r.layers = f.geo.layers;
  r.layer_block_bytes = f.geo.layer_block_bytes();
  r.producer = "prefill-9";
  r.requester = std::move(requester);
  return f.request<proto::grant>(b.actor, fake_allocate_atom::value, r);
}

// Lands the bytes of grant `g` (request `id`, one part) at the consumer's
// transfer actor, as a producer's send would.
void land(fixture& f, const transfer_actor& consumer_transfer, std::uint64_t id,
          const proto::grant& g) {
  proto::announcement a;
  a.transfer_id = transfer_id_of(id, 0);
  a.sender = "prefill-9";
  for (auto id : g.block_offsets) // where layer 0 of each id lands
    a.chunks.push_back({0, id * f.geo.layers * f.geo.layer_block_bytes(),
                        f.geo.layer_block_bytes()});
  caf::anon_send(consumer_transfer, proto::announce_atom::value,
                 proto::announce_batch{{a}});
  f.run();
}

// A stand-in router: it only has to live, and then die. (One dummy
// argument: see actor_fixture.hpp.)
caf::behavior idle_router(caf::event_based_actor*, int) {
  return {[](fake_reserve_atom, std::uint64_t) {}};
}

// The `arrived` notice a producer sends once its bytes are out.
caf::expected<proto::ready_report>
arrived_through(fixture& f, const borrower& b, std::uint64_t id) {
  proto::arrival_notice n;
  n.request_id = id;
  n.bytes = f.geo.layers * f.geo.layer_block_bytes();
  return f.request<proto::ready_report>(b.actor, fake_arrived_atom::value, n);
}

} // namespace

TEST_CASE_FIXTURE(fixture, "a push request whose bytes never come fails once "
                           "its receive does, though its producer never "
                           "sends `arrived`; the id runs again") {
  // The soak's case: the producer got the grant, its send failed (or it
  // was stopped), so it answered its router and sent no `arrived`; the
  // producer itself lives on. The request held its id forever.
  start(64, 64);
  auto p = spawn_borrower(*this, consumer, "prefill-9");
  REQUIRE(allocate_through(*this, p, 13));
  CHECK(stats_of(*this).in_flight == 1);
  // The node's receive's own timeout (timeout_ms + 1 s): well before the
  // request's last-resort deadline (3 x timeout_ms + 1 s), so this path ends by
  // itself.
  advance_time(std::chrono::milliseconds(2500));
  auto s = stats_of(*this);
  CHECK(s.in_flight == 0);
  CHECK(s.free_blocks == s.pool_blocks);
  // A late `arrived` learns why.
  auto late = arrived_through(*this, p, 13);
  REQUIRE_FALSE(late);
  auto text = render(late.error());
  INFO(text);
  CHECK(is(late.error(), ec::timeout));
  CHECK(text.find("consumer 'decode-0'") != std::string::npos);
  CHECK(text.find("request 13") != std::string::npos);
  // The id is free: a new request 13 is granted, not a duplicate.
  auto again = allocate_through(*this, p, 13);
  REQUIRE_MESSAGE(again, test::why(again));
  CHECK(again->block_offsets.size() == 1); // one id: a block of every layer
}

TEST_CASE_FIXTURE(fixture, "a push request whose `arrived` never comes fails "
                           "at its deadline naming what it waited for; the "
                           "id runs again and the blocks are back") {
  auto c = make_app("decode-0", 64);
  start_consumer(c);
  auto p = spawn_borrower(*this, consumer, "prefill-9");
  auto g = allocate_through(*this, p, 21);
  REQUIRE(g);
  // Its bytes land (a fake announcement to the consumer's transfer actor),
  // then its producer stalls: no `arrived`, and the producer stays alive.
  proto::announcement a;
  a.transfer_id = transfer_id_of(21, 0);
  a.sender = "prefill-9";
  for (auto id : g->block_offsets)
    a.chunks.push_back({0, id * geo.layers * geo.layer_block_bytes(),
                        geo.layer_block_bytes()});
  caf::anon_send(c.transfer, proto::announce_atom::value,
                 proto::announce_batch{{a}});
  run();
  advance_time(std::chrono::milliseconds(3900));
  CHECK(stats_of(*this).in_flight == 1); // within 3 x timeout_ms + 1 s
  advance_time(std::chrono::milliseconds(1200));
  auto s = stats_of(*this);
  CHECK(s.in_flight == 0);
  CHECK(s.free_blocks == s.pool_blocks);
  auto late = arrived_through(*this, p, 21);
  REQUIRE_FALSE(late);
  auto text = render(late.error());
  INFO(text);
  CHECK(is(late.error(), ec::timeout));
  CHECK(text.find("consumer 'decode-0'") != std::string::npos);
  CHECK(text.find("request 21") != std::string::npos);
  CHECK(text.find("`arrived` notice of producer 'prefill-9'") !=
        std::string::npos);
  CHECK(allocate_through(*this, p, 21));
}

TEST_CASE_FIXTURE(fixture, "a push request whose router dies is cancelled at "
                           "once: its blocks are back and its id is free") {
  // The soak's case: the router that asked is gone (its run failed, the
  // process exited) while its producer, stopped, has not sent `arrived`.
  // The consumer must not hold the request to its last-resort deadline.
  auto c = make_app("decode-0", 64);
  start_consumer(c);
  auto p = spawn_borrower(*this, consumer, "prefill-9");
  auto router = sys.spawn(idle_router, 0);
  auto g = allocate_through(*this, p, 31, router);
  REQUIRE(g);
  land(*this, c.transfer, 31, *g); // no transfer outstanding any more
  auto s = stats_of(*this);
  REQUIRE(s.in_flight == 1);
  REQUIRE(s.free_blocks + g->block_offsets.size() * geo.layers ==
          s.pool_blocks);
  caf::anon_send_exit(router, caf::exit_reason::kill);
  run(); // no virtual time passes: no deadline can fire
  s = stats_of(*this);
  CHECK(s.in_flight == 0);
  CHECK(s.free_blocks == s.pool_blocks);
  // The id is free: a new request 31 is granted, not a duplicate.
  auto again = allocate_through(*this, p, 31);
  REQUIRE_MESSAGE(again, test::why(again));
}

TEST_CASE_FIXTURE(fixture, "a router's death cancels only its own requests; "
                           "one whose bytes are still on the way keeps its "
                           "blocks until they land") {
  auto c = make_app("decode-0", 64);
  start_consumer(c);
  auto p = spawn_borrower(*this, consumer, "prefill-9");
  auto gone = sys.spawn(idle_router, 0);
  auto alive = sys.spawn(idle_router, 0);
  spawned.push_back(alive);
  auto landed = allocate_through(*this, p, 41, gone);
  auto on_the_way = allocate_through(*this, p, 42, gone);
  auto other = allocate_through(*this, p, 43, alive);
  REQUIRE(landed);
  REQUIRE(on_the_way);
  REQUIRE(other);
  land(*this, c.transfer, 41, *landed);
  land(*this, c.transfer, 43, *other);
  caf::anon_send_exit(gone, caf::exit_reason::kill);
  run();
  auto s = stats_of(*this);
  // 41 is done; 42's receive may still write its blocks: they stay taken
  // until it resolves; 43 belongs to a live router and waits on.
  CHECK(s.in_flight == 2);
  CHECK(s.free_blocks + 2 * geo.layers == s.pool_blocks);
  land(*this, c.transfer, 42, *on_the_way);
  s = stats_of(*this);
  CHECK(s.in_flight == 1);
  CHECK(s.free_blocks + geo.layers == s.pool_blocks);
  // 43 was not cancelled: its `arrived` gets the verdict on its bytes (a
  // mismatch: the fake landing moved no pattern), then its blocks are back.
  auto rep = arrived_through(*this, p, 43);
  REQUIRE_FALSE(rep);
  CHECK(is(rep.error(), ec::mismatch));
  s = stats_of(*this);
  CHECK(s.in_flight == 0);
  CHECK(s.free_blocks == s.pool_blocks);
}

TEST_CASE_FIXTURE(fixture, "keep_blocks_until_decoded: a request's blocks "
                           "stay taken after ready until `decoded`") {
  auto p = make_app("prefill-0", 64);
  p.credit_blocks = 0;
  start_producer(p);
  auto c = make_app("decode-0", 8); // 2 blocks x 4 layers
  c.keep_blocks_until_decoded = true;
  start_consumer(c);
  auto r = prefill(1, 8); // the whole pool
  REQUIRE_MESSAGE(r, test::why(r));
  CHECK(stats_of(*this).free_blocks == 0); // still decoding
  // A second request waits for the blocks the first still holds.
  auto second = request_pending<proto::ready_report>(
      producer, proto::prefill_atom::value, make_prefill_request(2, 4));
  CHECK_FALSE(*second);
  CHECK(stats_of(*this).waiting == 1);
  caf::anon_send(consumer, proto::decoded_atom::value, std::uint64_t{1});
  run();
  REQUIRE(*second);
  REQUIRE_MESSAGE(**second, test::why(**second));
  caf::anon_send(consumer, proto::decoded_atom::value, std::uint64_t{2});
  caf::anon_send(consumer, proto::decoded_atom::value, std::uint64_t{7});
  run(); // an unknown id is ignored
  auto s = stats_of(*this);
  CHECK(s.free_blocks == s.pool_blocks);
  CHECK(s.waited == 1);
}

TEST_CASE_FIXTURE(fixture, "keep_blocks_until_decoded: a `decoded` that comes "
                           "before the answer frees the blocks at the answer") {
  // The simulator's decode model hears a request's last byte land before
  // the producer's `arrived` reaches the consumer: with no decode time its
  // `decoded` comes first. Dropped, it kept the blocks for good and every
  // later request waited for them (issue #17: 27 of 1,000 completed).
  auto p = make_app("prefill-0", 64);
  p.credit_blocks = 0;
  start_producer(p);
  auto c = make_app("decode-0", 8); // 2 blocks x 4 layers
  c.keep_blocks_until_decoded = true;
  start_consumer(c);
  net->hold_completions = true; // the producer's `arrived` waits
  auto first = request_pending<proto::ready_report>(
      producer, proto::prefill_atom::value, make_prefill_request(1, 8));
  CHECK_FALSE(*first);
  caf::anon_send(consumer, proto::decoded_atom::value, std::uint64_t{1});
  run();
  CHECK(stats_of(*this).free_blocks == 0); // not answered yet: still held
  net->hold_completions = false;
  caf::anon_send(producer_transfer, proto::sweep_atom::value);
  run();
  REQUIRE(*first);
  REQUIRE_MESSAGE(**first, test::why(**first));
  auto s = stats_of(*this);
  CHECK(s.free_blocks == s.pool_blocks); // back as it was answered
  // And the next request gets them at once.
  auto second = prefill(2, 8);
  REQUIRE_MESSAGE(second, test::why(second));
  CHECK(stats_of(*this).waited == 0);
}
