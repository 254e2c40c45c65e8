// The protocol messages survive CAF serialization unchanged (what crosses
// processes) and own the type IDs 300..399.
#include <caf/all.hpp>
#include <caf/binary_deserializer.hpp>
#include <caf/binary_serializer.hpp>
#include <doctest/doctest.h>

#include "kvferry/runtime/protocol.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "kvferry/runtime/type_ids.hpp"

using namespace kvferry::proto;

namespace {

// Deserializing an actor handle looks it up in a proxy registry (the
// middleman's, between processes). Handles of this process resolve
// through the actor registry; this backend makes no proxies.
struct no_proxies : caf::proxy_registry::backend {
  caf::strong_actor_ptr make_proxy(caf::node_id, caf::actor_id) override {
    return nullptr;
  }
  void set_last_hop(caf::node_id*) override {}
};

template<class T>
T roundtrip(caf::actor_system& sys, T x) {
  no_proxies backend;
  caf::proxy_registry proxies{sys, backend};
  caf::scoped_execution_unit context{&sys};
  context.proxy_registry_ptr(&proxies);
  std::vector<char> buf;
  caf::binary_serializer sink{&context, buf};
  if (auto err = sink(x))
    FAIL("serialize: " << sys.render(err));
  T y;
  caf::binary_deserializer source{&context, buf};
  if (auto err = source(y))
    FAIL("deserialize: " << sys.render(err));
  return y;
}

} // namespace

TEST_CASE("protocol type ids live in 300..399") {
  CHECK(caf::id_block::kvferry_protocol::begin == 300);
  CHECK(caf::id_block::kvferry_protocol::end <= 400);
  CHECK(caf::type_id<extent>::value == 300);
}

TEST_CASE("messages roundtrip through CAF's binary serializer") {
  kvferry::runtime::system_config cfg;
  caf::actor_system sys{cfg};
  // Handles of other processes (endpoint, send_order, grant, and
  // allocate_request and arrival_notice with their requester) need the
  // middleman's proxies; the multi-process tests cover those.
  announcement a;
  a.transfer_id = 42;
  a.sender = "prefill-0";
  a.comms = 2;
  a.chunks = {{0, 4096, 65536}, {1 << 16, 0, 4096}};
  auto a2 = roundtrip(sys, a);
  CHECK(a2.transfer_id == 42);
  CHECK(a2.sender == "prefill-0");
  CHECK(a2.chunks == a.chunks);
  CHECK_FALSE(a2.answer_to); // none: nobody wants the receiver's word

  // A write's announcement names whom the receiver answers.
  // (One dummy argument: CAF 0.17 spawning with none trips UBSan, see
  // actor_fixture.hpp.)
  auto writer = sys.spawn(
      [](caf::event_based_actor*, int) { return caf::behavior{[](int) {}}; },
      0);
  announcement w = a;
  w.answer_to = writer;
  CHECK(roundtrip(sys, w).answer_to == writer);
  caf::anon_send_exit(writer, caf::exit_reason::user_shutdown);

  // A sender's batch keeps its announcements and their order.
  announcement b = a;
  b.transfer_id = 43;
  b.chunks = {{8192, 0, 512}};
  auto batch = roundtrip(sys, announce_batch{{a, b}});
  REQUIRE(batch.announcements.size() == 2);
  CHECK(batch.announcements[0].transfer_id == 42);
  CHECK(batch.announcements[1].transfer_id == 43);
  CHECK(batch.announcements[1].chunks == b.chunks);

  recv_order o;
  o.transfer_id = 9;
  o.peer_name = "prefill-1";
  o.timeout_ms = 1234;
  auto o2 = roundtrip(sys, o);
  CHECK(o2.peer_name == "prefill-1");
  CHECK(o2.timeout_ms == 1234);

  ready_report r;
  r.request_id = 5;
  r.transfer_ns = -1;
  r.compute_ns = 77;
  auto r2 = roundtrip(sys, r);
  CHECK(r2.request_id == 5);
  CHECK(r2.transfer_ns == -1);
  CHECK(r2.compute_ns == 77);

  // Every field of a CUDA IPC completion crosses, in its own slot.
  landed l{"prefill-2", 9, 4096, 11, 22, -3, 44};
  auto l2 = roundtrip(sys, l);
  CHECK(l2.sender == "prefill-2");
  CHECK(l2.transfer_id == 9);
  CHECK(l2.bytes == 4096);
  CHECK(l2.launched_ns == 11);
  CHECK(l2.copied_ns == 22);
  CHECK(l2.gpu_queued_ns == -3);
  CHECK(l2.gpu_copy_ns == 44);
}
