// The CUDA IPC quarantine between actors, without a GPU: a real receiving
// transfer actor (quarantine forced on: a host region has no IPC handle), a
// real consumer, and a fake sender transfer actor that stands in for a
// sender whose copy kernel is still running. The test plays the producer.
// What a user relies on: a timed-out request fails at once naming the
// sender, its blocks stay out of use until the sender confirms its kernel
// ended (or dies, or leaves), and then come back.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include <caf/all.hpp>
#include <doctest/doctest.h>

#include "disjoint.hpp"
#include "eventually.hpp"
#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/app.hpp"
#include "kvferry/actors/node_actor.hpp"
#include "kvferry/actors/transfer.hpp"
#include "kvferry/runtime/metrics.hpp"
#include "kvferry/runtime/system_config.hpp"

using namespace kvferry;
using namespace std::chrono;

namespace {

// What the fake sender saw: the status questions of receivers.
struct sender_log {
  std::mutex mutex;
  std::vector<std::pair<std::string, std::uint64_t>> asked;
  std::size_t asks() {
    std::lock_guard<std::mutex> guard{mutex};
    return asked.size();
  }
};

struct fake_sender_state {
  std::shared_ptr<sender_log> log;
  std::vector<caf::typed_response_promise<caf::ok_atom>> held;
  static inline const char* name = "fake.ipc_sender";
};

// "prefill-0" with a copy kernel that never ends by itself: every status
// question waits until the test sends sweep_atom ("the kernel ended"). A
// joined_atom naming a receiver makes it say hello to that receiver, as a
// real sender does when it maps the receiver's pool.
transfer_actor::behavior_type
fake_sender(transfer_actor::stateful_pointer<fake_sender_state> self,
            std::shared_ptr<sender_log> log) {
  self->state.log = std::move(log);
  return {
      [self](proto::endpoint_atom) {
        proto::endpoint ep;
        ep.name = "prefill-0";
        ep.transfer = caf::actor_cast<caf::actor>(self);
        return ep;
      },
      [](proto::send_atom, proto::send_order&) -> caf::result<std::uint64_t> {
        return make_error(ec::invalid_argument, "fake sender: no sends");
      },
      [](proto::recv_atom,
         proto::recv_order&) -> caf::result<proto::recv_report> {
        return make_error(ec::invalid_argument, "fake sender: no receives");
      },
      [](proto::recv_atom, proto::recv_order&, std::uint64_t,
         caf::actor&) -> caf::result<proto::node_report> {
        return make_error(ec::invalid_argument, "fake sender: no receives");
      },
      [](proto::open_atom, const std::string&, std::uint32_t,
         std::uint64_t) -> caf::result<std::vector<char>> {
        return make_error(ec::invalid_argument, "fake sender: no channels");
      },
      [](proto::announce_atom, proto::announce_batch&) {},
      [](proto::announce_flush_atom) {},
      [](proto::read_atom,
         proto::read_order&) -> caf::result<proto::recv_report> {
        return make_error(ec::invalid_argument, "fake sender: no reads");
      },
      [](proto::closed_atom, const std::string&, std::uint64_t,
         const caf::error&) {},
      [](proto::landed_atom, const proto::landed&) {},
      [](proto::stats_atom) { return proto::transfer_stats{}; },
      [](proto::ipc_hello_atom, const std::string&) {},
      [self](proto::ipc_status_atom, const std::string& receiver,
             std::uint64_t id) -> caf::result<caf::ok_atom> {
        {
          std::lock_guard<std::mutex> guard{self->state.log->mutex};
          self->state.log->asked.emplace_back(receiver, id);
        }
        auto promise = self->make_response_promise<caf::ok_atom>();
        self->state.held.push_back(promise);
        return promise;
      },
      [](proto::settle_atom, const std::string&, std::uint64_t) {
        return caf::ok_atom::value;
      },
      [](proto::settle_atom, const std::string&, std::uint64_t,
         const caf::error&) {},
      [self](joined_atom, const worker_info& w) {
        self->send(caf::actor_cast<transfer_actor>(w.transfer),
                   proto::ipc_hello_atom::value, std::string{"prefill-0"});
      },
      [](left_atom, const std::string&, const caf::error&) {},
      [](proto::progress_atom, std::uint64_t) {},
      [](proto::wake_atom) {},
      [self](proto::sweep_atom) { // the kernels ended
        for (auto& p : self->state.held)
          p.deliver(caf::ok_atom::value);
        self->state.held.clear();
      },
      [](proto::region_add_atom, std::uint64_t, std::uint64_t,
         std::int32_t) -> caf::result<std::uint64_t> {
        return make_error(ec::invalid_argument, "fake sender: no regions");
      },
      [](proto::region_remove_atom,
         std::uint64_t) -> caf::result<caf::ok_atom> {
        return make_error(ec::not_found, "fake sender: no regions");
      },
      // Moves no bytes: refuses an endpoint's batched orders.
      [self](proto::order_batch_atom, const proto::order_batch& b) {
        refuse_orders(self, b, "fake sender");
      },
      [](proto::settled_flush_atom) {},
      [](proto::node_attach_atom, const caf::actor&) {},
      [](proto::node_offer_atom, const proto::pull_offer&) {},
      [](proto::node_pull_atom,
         const proto::node_request&) -> caf::result<proto::node_report> {
        return make_error(ec::invalid_argument, "fake sender: no node pulls");
      },
  };
}

using kvferry::test::eventually; // the actors run on their own threads

struct fixture {
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  caf::scoped_actor self{sys};
  kv_geometry geo;
  std::shared_ptr<sender_log> log = std::make_shared<sender_log>();
  transfer_actor sender;
  transfer_actor receiver;
  consumer_actor consumer;
  proto::endpoint receiver_ep;
  static constexpr std::uint64_t pool_blocks = 16; // layer-blocks
  static constexpr std::uint64_t pool_ids = 4;     // blocks of all 4 layers
  node_actor sender_node;
  static constexpr std::uint32_t timeout_ms = 200;

  // 4 layers of 256-byte blocks; a request of 2 blocks per layer takes 2
  // ids (8 layer-blocks).
  explicit fixture(bool quarantine = true) {
    geo.layers = 4;
    geo.kv_heads = 2;
    geo.head_dim = 8;
    geo.block_tokens = 4;
    auto region = memory_region::allocate_host(
        pool_blocks * geo.layer_block_bytes(), "decode pool");
    transfer_config tc;
    tc.name = "decode-0";
    tc.region = region;
    tc.force_ipc_quarantine = quarantine;
    receiver = spawn_transfer(sys, tc);
    sender = sys.spawn(fake_sender, log);
    self->request(receiver, seconds(5), proto::endpoint_atom::value)
        .receive([&](proto::endpoint& ep) { receiver_ep = ep; },
                 [&](const caf::error& err) { FAIL(render(err)); });
    app_config ac;
    ac.name = "decode-0";
    ac.geometry = geo;
    ac.region = region;
    ac.transfer = receiver;
    ac.self = receiver_ep;
    ac.timeout_ms = timeout_ms;
    ac.lend_percent = 0;
    auto layout = pool_layout(geo, region->size());
    ac.node = spawn_node_actor(
        sys, {"decode-0", receiver, receiver_ep, layout, timeout_ms});
    consumer = spawn_consumer(sys, ac);
    // prefill-0's node over the fake sender, met by the consumer's: the
    // consumer's receives name it.
    proto::endpoint sender_ep;
    self->request(sender, seconds(5), proto::endpoint_atom::value)
        .receive([&](proto::endpoint& ep) { sender_ep = ep; },
                 [&](const caf::error& err) { FAIL(render(err)); });
    sender_node = spawn_node_actor(
        sys, {"prefill-0", sender, sender_ep, layout, timeout_ms});
    self->request(sender_node, seconds(5), proto::node_connect_atom::value,
                  caf::actor_cast<caf::actor>(consumer))
        .receive([](const std::string&) {},
                 [&](const caf::error& err) { FAIL(render(err)); });
  }

  ~fixture() {
    self->send_exit(consumer, caf::exit_reason::user_shutdown);
    self->send_exit(receiver, caf::exit_reason::user_shutdown);
    self->send_exit(sender, caf::exit_reason::user_shutdown);
    self->send_exit(sender_node, caf::exit_reason::user_shutdown);
  }

  // The directory's word that prefill-0 exists (its transfer actor).
  void announce_sender() {
    worker_info w;
    w.name = "prefill-0";
    w.transfer = caf::actor_cast<caf::actor>(sender);
    self->send(receiver, joined_atom::value, w);
  }

  // A push request's blocks, as the producer's allocate gets them.
  std::vector<std::uint64_t> allocate(std::uint64_t id,
                                      std::uint32_t blocks_per_layer = 2) {
    proto::allocate_request a;
    a.request_id = id;
    a.blocks_per_layer = blocks_per_layer;
    a.layers = geo.layers;
    a.layer_block_bytes = geo.layer_block_bytes();
    a.producer = "prefill-0";
    std::vector<std::uint64_t> blocks;
    self->request(consumer, seconds(5), proto::allocate_atom::value, a)
        .receive([&](proto::grant& g) { blocks = g.block_offsets; },
                 [&](const caf::error& err) { FAIL(render(err)); });
    return blocks;
  }

  // The producer's "arrived": the consumer answers once the request ended.
  caf::error arrived(std::uint64_t id, std::uint64_t blocks) {
    proto::arrival_notice n;
    n.request_id = id;
    n.bytes = blocks * geo.layers * geo.layer_block_bytes();
    caf::error result;
    self->request(consumer, seconds(20), proto::arrived_atom::value, n)
        .receive([&](proto::ready_report&) {},
                 [&](const caf::error& err) { result = err; });
    return result;
  }

  proto::consumer_stats consumer_stats() {
    proto::consumer_stats s;
    self->request(consumer, seconds(5), proto::stats_atom::value)
        .receive([&](proto::consumer_stats& x) { s = x; },
                 [&](const caf::error& err) { FAIL(render(err)); });
    return s;
  }

  std::uint64_t quarantined_transfers() {
    proto::transfer_stats s;
    self->request(receiver, seconds(5), proto::stats_atom::value)
        .receive([&](proto::transfer_stats& x) { s = x; },
                 [&](const caf::error& err) { FAIL(render(err)); });
    return s.ipc_quarantined;
  }

  // Waits until the sender has been asked `n` status questions.
  bool eventually_asked(std::size_t n) {
    return eventually([&] { return log->asks() >= n; });
  }

  // Request `id` (8 blocks) times out: it fails at once, naming the sender,
  // and its blocks go into quarantine. Returns its blocks.
  std::vector<std::uint64_t> time_out_request(std::uint64_t id) {
    auto blocks = allocate(id);
    REQUIRE(blocks.size() == 2);
    auto t0 = steady_clock::now();
    auto err = arrived(id, blocks.size());
    auto took = steady_clock::now() - t0;
    REQUIRE(err);
    CHECK(is(err, ec::timeout));
    CHECK_MESSAGE(render(err).find("'prefill-0'") != std::string::npos,
                  render(err));
    // The timeout plus the 100 ms deadline sweep; generous for CI. The
    // quarantine does not make the request wait for the sender.
    CHECK(took < milliseconds(timeout_ms) + seconds(3));
    return blocks;
  }
};

using kvferry::test::disjoint;

} // namespace

TEST_CASE("ipc quarantine: a timed-out request's blocks wait for the "
          "sender's answer and are never reused meanwhile") {
  fixture f;
  f.announce_sender();
  auto first = f.time_out_request(1);
  CHECK(f.consumer_stats().quarantined_blocks == 8);
  CHECK(f.quarantined_transfers() == 1);
  // The first case of this process: the gauges are ours alone.
  auto metrics = metrics::registry::global().render();
  CHECK_MESSAGE(metrics.find("\nkvferry_ipc_quarantined_blocks 8\n") !=
                    std::string::npos,
                metrics);
  CHECK_MESSAGE(metrics.find("\nkvferry_ipc_quarantined_transfers 1\n") !=
                    std::string::npos,
                metrics);
  REQUIRE(f.eventually_asked(1));
  {
    std::lock_guard<std::mutex> guard{f.log->mutex};
    CHECK(f.log->asked[0].first == "decode-0");
    CHECK(f.log->asked[0].second == transfer_id_of(1, 0));
  }
  // Only the other 2 ids are free: the next request gets those.
  auto second = f.allocate(2);
  REQUIRE(second.size() == 2);
  CHECK(disjoint(first, second));
  CHECK(is(f.arrived(2, 2), ec::timeout)); // 16 layer-blocks quarantined
  CHECK(f.consumer_stats().quarantined_blocks == 16);
  REQUIRE(f.eventually_asked(2));
  // The sender's kernels end: it answers, every block comes back.
  f.self->send(f.sender, proto::sweep_atom::value);
  CHECK(eventually([&] { return f.consumer_stats().quarantined_blocks == 0; }));
  CHECK(f.quarantined_transfers() == 0);
  metrics = metrics::registry::global().render();
  CHECK(metrics.find("\nkvferry_ipc_quarantined_blocks 0\n") !=
        std::string::npos);
  auto all = f.allocate(3, 4); // the whole pool
  CHECK(all.size() == fixture::pool_ids);
}

TEST_CASE("ipc quarantine: the sender's death releases the blocks") {
  fixture f;
  f.announce_sender();
  f.time_out_request(1);
  REQUIRE(f.eventually_asked(1));
  CHECK(f.consumer_stats().quarantined_blocks == 8);
  f.self->send_exit(f.sender, caf::exit_reason::kill);
  CHECK(eventually([&] { return f.consumer_stats().quarantined_blocks == 0; }));
  CHECK(f.quarantined_transfers() == 0);
  CHECK(f.allocate(2, 4).size() == fixture::pool_ids);
}

TEST_CASE("ipc quarantine: a sender that leaves the directory before anyone "
          "could ask it releases the blocks") {
  fixture f; // the directory never said who prefill-0 is: nobody to ask
  f.time_out_request(1);
  CHECK(f.consumer_stats().quarantined_blocks == 8);
  f.self->send(f.receiver, left_atom::value, std::string{"prefill-0"},
               make_error(ec::lease_expired, "test"));
  CHECK(eventually([&] { return f.consumer_stats().quarantined_blocks == 0; }));
  CHECK(f.allocate(2, 4).size() == fixture::pool_ids);
}

TEST_CASE("ipc quarantine: a sender that was asked and then left (a lost "
          "lease) is still waited for") {
  fixture f;
  f.announce_sender();
  f.time_out_request(1);
  REQUIRE(f.eventually_asked(1));
  f.self->send(f.receiver, left_atom::value, std::string{"prefill-0"},
               make_error(ec::lease_expired, "test"));
  // Handled in order after `left`: the transfer is still held.
  CHECK(f.quarantined_transfers() == 1);
  CHECK(f.consumer_stats().quarantined_blocks == 8);
  f.self->send(f.sender, proto::sweep_atom::value); // its kernel ended
  CHECK(eventually([&] { return f.consumer_stats().quarantined_blocks == 0; }));
  CHECK(f.quarantined_transfers() == 0);
}

TEST_CASE("ipc quarantine: a sender unknown at the timeout is asked once it "
          "says hello") {
  fixture f;
  f.time_out_request(1);
  CHECK(f.consumer_stats().quarantined_blocks == 8);
  CHECK(f.log->asks() == 0); // nobody to ask yet: the blocks wait
  // The sender maps our pool (its first IPC copy to us) and says hello.
  worker_info us;
  us.name = "decode-0";
  us.transfer = caf::actor_cast<caf::actor>(f.receiver);
  f.self->send(f.sender, joined_atom::value, us);
  REQUIRE(f.eventually_asked(1));
  CHECK(f.consumer_stats().quarantined_blocks == 8);
  f.self->send(f.sender, proto::sweep_atom::value);
  CHECK(eventually([&] { return f.consumer_stats().quarantined_blocks == 0; }));
}

TEST_CASE("ipc quarantine: without CUDA IPC a timed-out request's blocks "
          "come back at once") {
  fixture f{false}; // a host-memory receiver: nobody can write it over IPC
  f.announce_sender();
  f.time_out_request(1);
  CHECK(eventually([&] { return f.consumer_stats().quarantined_blocks == 0; }));
  CHECK(f.allocate(2, 4).size() == fixture::pool_ids);
  CHECK(f.log->asks() == 0);
}

TEST_CASE("ipc quarantine: a sender with no copy running answers at once") {
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  caf::scoped_actor self{sys};
  transfer_config tc;
  tc.name = "prefill-0";
  tc.region = memory_region::allocate_host(8192, "pool");
  auto transfer = spawn_transfer(sys, tc);
  bool answered = false;
  self->request(transfer, seconds(5), proto::ipc_status_atom::value,
                std::string{"decode-0"}, std::uint64_t{42})
      .receive([&](caf::ok_atom) { answered = true; },
               [&](const caf::error& err) { FAIL(render(err)); });
  CHECK(answered);
  self->send_exit(transfer, caf::exit_reason::user_shutdown);
}
