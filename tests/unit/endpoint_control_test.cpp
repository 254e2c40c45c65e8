// The endpoint's control actor (engine/src/endpoint_control.cpp), all in
// the deterministic scheduler (actor_fixture):
//   - when its own transfer actor stops: a write's order goes to the
//     transfer actor in a batch (proto::order_batch), which a stopped actor
//     drops unanswered, so the control actor watches it. Every op in flight
//     fails with the reason, and every later op at once, instead of hanging
//     until its caller's timeout (a real transfer actor over the in-process
//     fake plugin);
//   - a write is done once landed: over a plugin when both its transfer
//     actor's settlement and the peer's transfer actor's answer came, over
//     CUDA IPC on the settlement alone (it says the bytes landed); a failed
//     answer fails it with the peer's reason (a stand-in transfer actor).
#include <cstdint>
#include <memory>
#include <string>

#include <caf/all.hpp>
#include <doctest/doctest.h>

#include "../../engine/src/endpoint_state.hpp"
#include "actor_fixture.hpp"
#include "fake_plugin.hpp"
#include "kvferry/actors/transfer.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/transport/plugin.hpp"
#include "transfer_pair_config.hpp"

using namespace kvferry;

namespace {

// The peer's control actor: takes what it is sent, says nothing.
caf::behavior silent_peer(caf::event_based_actor*, int) {
  return {[](proto::ep_batch_atom, proto::ep_batch&) {}};
}

// Our transfer actor in miniature: settles every batched send as done,
// `landed` or not (CUDA IPC or a plugin).
caf::behavior settling_transfer(caf::event_based_actor* self, bool landed) {
  return {[self, landed](proto::order_batch_atom, proto::order_batch& b) {
    auto to = caf::actor_cast<caf::actor>(self->current_sender());
    std::vector<proto::order_settled> out;
    for (const auto& o : b.sends)
      out.push_back({o.peer.name, o.transfer_id, 512, landed, caf::error{}});
    self->send(to, proto::settled_atom::value, std::move(out));
  }};
}

proto::endpoint_order write_order(std::uint64_t id) {
  proto::endpoint_order o;
  o.op = static_cast<std::uint8_t>(proto::endpoint_op::write);
  o.id = id;
  o.conn = 1; // the first connection
  o.extents = {{0, 0, 512}};
  o.dst_sizes = {4096};
  o.bytes = 512;
  return o;
}

// A control actor for "ep-a" (`self_ep`) over `transfer`, connected to a
// silent peer "ep-b" (connection 1); ops 7 and 8 are registered with the
// caller's side.
struct connected_control {
  test::actor_fixture& fx;
  transfer_actor transfer;
  std::shared_ptr<engine_detail::shared_state> shared =
      std::make_shared<engine_detail::shared_state>();
  caf::actor control;
  caf::actor peer;

  connected_control(test::actor_fixture& fixture, transfer_actor t,
                    proto::endpoint self_ep)
      : fx(fixture), transfer(std::move(t)) {
    engine_detail::control_config cc;
    cc.name = "ep-a";
    cc.instance = 1;
    cc.transfer = transfer;
    cc.self_ep = std::move(self_ep);
    cc.timeout_ms = 5000;
    cc.shared = shared;
    control = engine_detail::spawn_control(fx.sys, cc);
    // The peer connects (its hello): connection 1.
    peer = fx.sys.spawn(silent_peer, 0);
    proto::endpoint peer_ep;
    peer_ep.name = "ep-b";
    REQUIRE(fx.request<proto::peer_hello>(
        control, proto::ep_hello_atom::value,
        proto::peer_hello{"ep-b", 2, peer, peer_ep}));
    shared->ops[7] = {};
    shared->ops[8] = {};
  }

  void write(std::uint64_t id) {
    caf::anon_send(control, proto::ep_order_atom::value, write_order(id));
  }

  engine_detail::op_entry op(std::uint64_t id) {
    std::lock_guard<std::mutex> lock(shared->mu);
    return shared->ops.at(id);
  }

  // The peer's transfer actor answers write `id` (as an ep_batch).
  void answer(std::uint64_t id, caf::error err) {
    proto::ep_batch b;
    b.sender = "ep-b";
    b.answers.push_back({id, std::move(err)});
    caf::anon_send(control, proto::ep_batch_atom::value, std::move(b));
  }

  void stop() {
    caf::anon_send_exit(control, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(peer, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(transfer, caf::exit_reason::user_shutdown);
    fx.run();
  }
};

// Our own endpoint, named as the control actor is.
proto::endpoint ep_a() {
  proto::endpoint ep;
  ep.name = "ep-a";
  return ep;
}

} // namespace

TEST_CASE_FIXTURE(test::actor_fixture,
                  "when the endpoint's transfer actor stops, its writes in "
                  "flight fail with the reason and later ones at once") {
  auto net = transport::plugin::load(test::fake_plugin_path());
  auto tc = test::pair_transfer_config(
      "ep-a", net, memory_region::allocate_host(4096, "ep-a's region"));
  tc.detached = false; // in the test's scheduler
  auto transfer = spawn_transfer(sys, tc);
  auto ep = request<proto::endpoint>(transfer, proto::endpoint_atom::value);
  REQUIRE(ep);
  connected_control c{*this, transfer, *ep};
  // Write 7 is ordered, and the transfer actor stops before it answers.
  c.write(7);
  caf::anon_send_exit(transfer, caf::exit_reason::kill);
  run();
  auto failed = [&](std::uint64_t id) {
    auto op = c.op(id);
    CHECK_FALSE(op.done);
    return op.error;
  };
  auto why = failed(7);
  REQUIRE_FALSE(why.ok());
  CHECK(why.code() == ec::peer_down);
  CHECK(why.reason().find("endpoint 'ep-a': its transfer actor stopped") !=
        std::string::npos);
  // A later write fails at once, with the same reason.
  c.write(8);
  run();
  auto later = failed(8);
  REQUIRE_FALSE(later.ok());
  CHECK(later.reason() == why.reason());
  c.stop();
}

TEST_CASE_FIXTURE(test::actor_fixture,
                  "a write over a plugin is done once both its settlement "
                  "and the peer's answer came; a failed answer fails it") {
  connected_control c{
      *this,
      caf::actor_cast<transfer_actor>(sys.spawn(settling_transfer, false)),
      ep_a()};
  c.write(7);
  c.write(8);
  run();
  CHECK_FALSE(c.op(7).done); // settled: its bytes left, not yet landed
  CHECK(c.op(7).error.ok());
  c.answer(7, caf::error{});
  c.answer(8, make_error(ec::invalid_extent, "transfer 8 from 'ep-a': test"));
  run();
  CHECK(c.op(7).done);
  CHECK(c.op(7).bytes == 512);
  CHECK_FALSE(c.op(8).done);
  CHECK(c.op(8).error.code() == ec::invalid_extent);
  CHECK(c.op(8).error.reason().find("transfer 8 from 'ep-a'") !=
        std::string::npos);
  c.stop();
}

TEST_CASE_FIXTURE(test::actor_fixture,
                  "a write over CUDA IPC is done on its settlement alone, "
                  "which says the bytes landed") {
  connected_control c{
      *this,
      caf::actor_cast<transfer_actor>(sys.spawn(settling_transfer, true)),
      ep_a()};
  c.write(7);
  run();
  CHECK(c.op(7).done);
  CHECK(c.op(7).bytes == 512);
  c.answer(7, caf::error{}); // a stray answer after it changes nothing
  run();
  CHECK(c.op(7).done);
  c.stop();
}
