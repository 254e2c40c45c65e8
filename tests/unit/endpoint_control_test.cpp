// The endpoint's control actor (engine/src/endpoint_control.cpp) when its
// own transfer actor stops: a write's order goes to the transfer actor in a
// batch (proto::order_batch), which a stopped actor drops unanswered, so
// the control actor watches it. Every op in flight fails with the reason,
// and every later op at once, instead of hanging until its caller's
// timeout. A real transfer actor over the in-process fake plugin, the
// control actor and a stand-in for the peer's control actor, all in the
// deterministic scheduler (actor_fixture).
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
  auto shared = std::make_shared<engine_detail::shared_state>();
  engine_detail::control_config cc;
  cc.name = "ep-a";
  cc.instance = 1;
  cc.transfer = transfer;
  cc.self_ep = *ep;
  cc.timeout_ms = 5000;
  cc.shared = shared;
  auto control = engine_detail::spawn_control(sys, cc);
  // The peer connects (its hello): connection 1.
  auto peer = sys.spawn(silent_peer, 0);
  proto::endpoint peer_ep;
  peer_ep.name = "ep-b";
  auto hello =
      request<proto::peer_hello>(control, proto::ep_hello_atom::value,
                                 proto::peer_hello{"ep-b", 2, peer, peer_ep});
  REQUIRE(hello);
  shared->ops[7] = {};
  shared->ops[8] = {};
  // Write 7 is ordered, and the transfer actor stops before it answers.
  caf::anon_send(control, proto::ep_order_atom::value, write_order(7));
  caf::anon_send_exit(transfer, caf::exit_reason::kill);
  run();
  auto failed = [&](std::uint64_t id) {
    std::lock_guard<std::mutex> lock(shared->mu);
    const auto& op = shared->ops.at(id);
    CHECK_FALSE(op.done);
    return op.error;
  };
  auto why = failed(7);
  REQUIRE_FALSE(why.ok());
  CHECK(why.code() == ec::peer_down);
  CHECK(why.reason().find("endpoint 'ep-a': its transfer actor stopped") !=
        std::string::npos);
  // A later write fails at once, with the same reason.
  caf::anon_send(control, proto::ep_order_atom::value, write_order(8));
  run();
  auto later = failed(8);
  REQUIRE_FALSE(later.ok());
  CHECK(later.reason() == why.reason());
  caf::anon_send_exit(control, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(peer, caf::exit_reason::user_shutdown);
  run();
}
