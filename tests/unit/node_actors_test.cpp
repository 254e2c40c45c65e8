// kvferry::node at the CAF level (node_actors.hpp, issue #15): two nodes'
// actors spawned into the caller's own actor system, connected by handle,
// and driven from the caller's own actor with the typed messages: a push
// and a layer-by-layer pull land byte for byte.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <caf/all.hpp>
#include <caf/binary_deserializer.hpp>
#include <caf/binary_serializer.hpp>
#include <doctest/doctest.h>

#include "eventually.hpp"
#include "kvferry/actors/node_actor.hpp"
#include "kvferry/node_actors.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "node_cache.hpp"
#include "scoped_env.hpp"
#include "why.hpp"

using namespace kvferry;
using namespace std::chrono_literals;
using kvferry::test::host_cache;

namespace {

constexpr std::uint32_t layers = 2;
constexpr std::uint64_t blocks = 8;
constexpr std::uint64_t half_bytes = 2048;

struct caller_system {
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  caf::scoped_actor self{sys};
  host_cache src{kv_layout::vllm_per_layer(layers, blocks, half_bytes), 5};
  host_cache dst{kv_layout::layer_major(layers, blocks, half_bytes), 0};
  node_handles prefill = spawn("prefill-0", src);
  node_handles decode = spawn("decode-0", dst);

  node_handles spawn(const std::string& name, host_cache& cache) {
    node_options o;
    o.name = name;
    o.cache = cache.cache();
    auto h = spawn_node(sys, o);
    REQUIRE_MESSAGE(h, test::why(h));
    return *h;
  }

  ~caller_system() {
    for (auto* h : {&prefill, &decode}) {
      self->send_exit(h->node, caf::exit_reason::user_shutdown);
      self->wait_for(h->node);
      self->send_exit(h->transfer, caf::exit_reason::user_shutdown);
      self->wait_for(h->transfer); // before the caches go
    }
  }
};

// Nodes whose transfer actors take KVFERRY_PULL_LANES as given here,
// whatever the environment says: they read it when spawned, and this base
// is made before caller_system's members.
struct lanes_env {
  test::scoped_env lanes;
  explicit lanes_env(const char* value) : lanes("KVFERRY_PULL_LANES", value) {}
};

// Offered pulls go announced (no pull lane), as by default.
struct announced_system : lanes_env, caller_system {
  announced_system() : lanes_env("0") {}
};

// The caller's own actor: pulls request `id` layer by layer while the
// prefill's layers become ready, and reports both replies to `report_to`.
caf::behavior driver(caf::event_based_actor* self, node_handles prefill,
                     node_handles decode, caf::actor report_to,
                     std::vector<std::uint64_t> src_blocks,
                     std::vector<std::uint64_t> dst_blocks) {
  auto report = [self, report_to](std::string what) {
    self->send(report_to, std::move(what));
  };
  auto on_error = [report](const caf::error& err) { report(render(err)); };
  self->request(decode.node, caf::infinite, proto::node_pull_atom::value,
                proto::node_request{7, "prefill-0", dst_blocks, {}, false})
      .then(
          [report](const proto::node_report& r) {
            report("pulled " + std::to_string(r.bytes));
          },
          on_error);
  self->request(prefill.node, caf::infinite, proto::node_advertise_atom::value,
                proto::node_request{7, "decode-0", src_blocks, {}, true})
      .then(
          [report](const proto::node_report& r) {
            report("offered " + std::to_string(r.bytes));
          },
          on_error);
  for (std::uint32_t l = layers; l-- > 0;)
    self->request(prefill.node, caf::infinite, proto::node_layer_atom::value,
                  std::uint64_t{7}, l, std::uint64_t{0})
        .then([](caf::ok_atom) {}, on_error);
  return {};
}

} // namespace

TEST_CASE_FIXTURE(caller_system, "a caller's own actor drives two nodes' "
                                 "actors in its actor system") {
  std::string peer;
  self->request(decode.node, 10s, proto::node_connect_atom::value,
                caf::actor_cast<caf::actor>(prefill.node))
      .receive([&](const std::string& name) { peer = name; },
               [&](const caf::error& err) { FAIL(render(err)); });
  CHECK(peer == "prefill-0");
  CHECK(prefill.port != 0);
  std::vector<std::uint64_t> s{0, 1, 6}, d{3, 4, 7};
  auto before = dst.regions;
  sys.spawn(driver, prefill, decode, caf::actor_cast<caf::actor>(self), s, d);
  auto bytes = std::to_string(s.size() * layers * 2 * half_bytes);
  std::vector<std::string> got;
  for (int i = 0; i < 2; ++i)
    self->receive([&](const std::string& line) { got.push_back(line); },
                  caf::after(30s) >> [&] { got.push_back("timeout"); });
  std::sort(got.begin(), got.end());
  CHECK(got == std::vector<std::string>{"offered " + bytes, "pulled " + bytes});
  CHECK(dst.regions == dst.expected(before, src, s, d));
}

// A receive that fails reaches its caller only once every part's recv
// order is settled (here the caller withdraws it, as the consumer does when
// its own deadline passed; a part's own failure takes the same path): the
// parts not announced yet are given up in the transfer actor, so a push of
// the request that comes later lands no byte in the blocks the caller took
// back and may reuse. Without that, its two layers landed there.
TEST_CASE_FIXTURE(caller_system, "a failed receive settles its parts first: "
                                 "a late push lands nothing in its blocks") {
  self->request(decode.node, 10s, proto::node_connect_atom::value,
                caf::actor_cast<caf::actor>(prefill.node))
      .receive([](const std::string&) {},
               [](const caf::error& err) { FAIL(render(err)); });
  std::vector<std::uint64_t> s{0, 1}, d{2, 5};
  auto receive =
      self->request(decode.node, 30s, proto::node_receive_atom::value,
                    proto::node_request{21, "prefill-0", d, {}, true});
  self->send(decode.node, proto::node_fail_atom::value,
             std::string{"prefill-0"}, std::uint64_t{21},
             make_error(ec::timeout, "test: withdrawn"));
  std::string why;
  receive.receive([](const proto::node_report&) {},
                  [&](const caf::error& err) { why = render(err); });
  CHECK(why.find("test: withdrawn") != std::string::npos);
  auto before = dst.regions;
  // The prefill pushes request 21 anyway, layer by layer: its send fails,
  // the decode's transfer actor refusing it (then a later layer may find
  // the request closed), or, without the settle, lands.
  auto sent = self->request(prefill.node, 30s, proto::node_send_atom::value,
                            proto::node_request{21, "decode-0", s, d, true});
  for (std::uint32_t l = 0; l < layers; ++l)
    self->request(prefill.node, 10s, proto::node_layer_atom::value,
                  std::uint64_t{21}, l, std::uint64_t{0})
        .receive([](caf::ok_atom) {}, [](const caf::error&) {});
  sent.receive([](const proto::node_report&) {}, [](const caf::error&) {});
  // A later request of the pair lands, after what the late push could have
  // landed (the prefill's transfer actor sends in order). The decode tore
  // the channel down when the late push came, which fails the requests of
  // the pair in flight until the prefill heard of it (a message); then one
  // goes over a fresh channel.
  std::vector<std::uint64_t> s2{3}, d2{6};
  bool landed = false;
  for (std::uint64_t id = 22; id < 32 && !landed; ++id) {
    auto sent2 =
        self->request(prefill.node, 30s, proto::node_send_atom::value,
                      proto::node_request{id, "decode-0", s2, d2, false});
    self->request(decode.node, 30s, proto::node_receive_atom::value,
                  proto::node_request{id, "prefill-0", d2, {}, false})
        .receive([&](const proto::node_report&) { landed = true; },
                 [](const caf::error& err) { MESSAGE(render(err)); });
    sent2.receive([](const proto::node_report&) {}, [](const caf::error&) {});
  }
  REQUIRE(landed);
  CHECK(dst.regions == dst.expected(before, src, s2, d2));
}

namespace {

// The nodes of `fixture` connected, the caller listening to the decode
// node's notes.
void connect_and_listen(caller_system& fixture) {
  auto& self = fixture.self;
  self->request(fixture.decode.node, 10s, proto::node_connect_atom::value,
                caf::actor_cast<caf::actor>(fixture.prefill.node))
      .receive([](const std::string&) {},
               [](const caf::error& err) { FAIL(render(err)); });
  self->send(fixture.decode.node, proto::node_listen_atom::value,
             caf::actor_cast<caf::actor>(self));
}

// The prefill advertises request `id` (the reply: once its source blocks
// are free) and notes it; the note follows the offer, so once it came the
// decode node knows the offer and a pull is an offered one.
auto advertise_offered(caller_system& fixture, std::uint64_t id,
                       const std::vector<std::uint64_t>& src_blocks) {
  auto& self = fixture.self;
  auto advert = self->request(
      fixture.prefill.node, 30s, proto::node_advertise_atom::value,
      proto::node_request{id, "decode-0", src_blocks, {}, false});
  self->request(fixture.prefill.node, 10s, proto::node_notify_atom::value,
                std::string{"decode-0"}, std::to_string(id))
      .receive([](caf::ok_atom) {},
               [](const caf::error& err) { FAIL(render(err)); });
  std::string note;
  self->receive([&](proto::node_note_atom, const std::string&,
                    const std::string& p) { note = p; },
                caf::after(30s) >> [&] { note = "timeout"; });
  REQUIRE(note == std::to_string(id));
  return advert;
}

// The decode's pull sent to its transfer actor (`at_transfer`, as
// node_handles::pulls_via_transfer says for a host cache) or to its node.
auto pull_at(caller_system& fixture, bool at_transfer, std::uint64_t id,
             const std::vector<std::uint64_t>& dst_blocks) {
  auto& self = fixture.self;
  proto::node_request req{id, "prefill-0", dst_blocks, {}, false};
  if (at_transfer)
    return self->request(fixture.decode.transfer, 30s,
                         proto::node_pull_atom::value, std::move(req));
  return self->request(fixture.decode.node, 30s, proto::node_pull_atom::value,
                       std::move(req));
}

} // namespace

// An offered pull's caller is answered by the decode's transfer actor,
// which holds the offer (its node handed it over): pulled there, the node
// is not in the pull's path; pulled at the node, the node hands the pull
// over. The answer has the request's bytes and data window; the node hears
// of it aside, tells the prefill (whose advert completes) and forgets the
// request, so that its id can be pulled again.
TEST_CASE_FIXTURE(caller_system, "an offered pull is answered by the "
                                 "decode's transfer actor; both nodes' "
                                 "bookkeeping follows") {
  connect_and_listen(*this);
  CHECK(decode.pulls_via_transfer); // a host cache: no one-sided reads
  std::vector<std::uint64_t> s{0, 1, 6}, d{3, 4, 7};
  auto bytes = s.size() * layers * 2 * half_bytes;
  for (int round = 0; round < 4; ++round) {
    CAPTURE(round);
    auto before = dst.regions;
    auto advert = advertise_offered(*this, 41, s);
    proto::node_report got;
    pull_at(*this, round % 2 == 0, 41, d)
        .receive([&](const proto::node_report& r) { got = r; },
                 [](const caf::error& err) { FAIL(render(err)); });
    CHECK(got.id == 41);
    CHECK(got.bytes == bytes);
    CHECK_FALSE(got.ipc);
    CHECK(got.data_start_ns > 0);
    CHECK(got.data_end_ns >= got.data_start_ns);
    CHECK(dst.regions == dst.expected(before, src, s, d));
    // The decode node told the prefill once it heard (after the caller):
    // its report, so the advert completes with the decode's bytes.
    advert.receive(
        [&](const proto::node_report& r) { CHECK(r.bytes == bytes); },
        [](const caf::error& err) { FAIL(render(err)); });
  }
}

// Withdraws request `id` of prefill-0 at the decode node, as the consumer
// withdraws one its node did not answer in time, and returns what its
// pull (`pulled`, made before) heard: "pulled" if it landed.
template<class Pending>
std::string withdraw(caller_system& f, Pending& pulled, std::uint64_t id) {
  f.self->send(f.decode.node, proto::node_fail_atom::value,
               std::string{"prefill-0"}, id,
               make_error(ec::timeout, "test: withdrawn"));
  std::string why = "pulled";
  pulled.receive([](const proto::node_report&) {},
                 [&](const caf::error& err) { why = render(err); });
  return why;
}

// After a failed pull: later requests of the pair land (the first ones
// may fail while a channel the failed pull's late bytes tore down is
// replaced), and nothing else changed in the destination since
// `after_failure` (the failed pull's bytes landed nowhere).
void later_requests_land_alone(
    caller_system& f, std::vector<std::vector<std::uint8_t>> after_failure,
    std::uint64_t first_id) {
  std::vector<std::uint64_t> s2{3}, d2{6};
  bool landed = false;
  for (std::uint64_t id = first_id; id < first_id + 10 && !landed; ++id) {
    auto advert2 = advertise_offered(f, id, s2);
    f.self
        ->request(f.decode.node, 30s, proto::node_pull_atom::value,
                  proto::node_request{id, "prefill-0", d2, {}, false})
        .receive([&](const proto::node_report&) { landed = true; },
                 [](const caf::error& err) { MESSAGE(render(err)); });
    advert2.receive([](const proto::node_report&) {}, [](const caf::error&) {});
  }
  REQUIRE(landed);
  CHECK(f.dst.regions == f.dst.expected(after_failure, f.src, s2, d2));
}

// A failed offered pull (here withdrawn by the caller's app, as the
// consumer withdraws one its node did not answer in time) reaches its
// caller from the decode's transfer actor, with the node's reason, once its
// recv order is settled: nothing lands in its blocks after the caller
// heard, even though the decode node ordered the prefill's transfer actor
// to send (its late bytes tear down the channel instead).
TEST_CASE_FIXTURE(caller_system, "a failed offered pull settles first: "
                                 "nothing lands in its blocks after its "
                                 "caller heard") {
  // The prefill's sends start 50 ms after they are posted (read when the
  // comms open), so the withdrawal, a local message, reaches the decode's
  // transfer actor before any byte on every run. Without it the bytes could
  // land first on a busy machine: the caller then hears of a pull that
  // landed, which is right, but the failure path goes untested.
  test::scoped_env slow_sends{"KVSOCK_FAULT_DELAY_US", "50000"};
  connect_and_listen(*this);
  std::vector<std::uint64_t> s{0, 1}, d{2, 5};
  advertise_offered(*this, 51, s); // its advert is never told: not awaited
  auto pulled = pull_at(*this, false, 51, d);
  // The withdrawal reaches the decode's transfer actor right behind the
  // recv order: the pull fails with the node's reason, once its receives
  // ended (on the pull lane they are posted before the send order leaves,
  // so the caller hears after the bytes landed or the lane was dropped).
  CHECK(withdraw(*this, pulled, 51).find("test: withdrawn") !=
        std::string::npos);
  later_requests_land_alone(*this, dst.regions, 52); // copied as it is now
}

// As above, but the withdrawal comes after the announcement, while the
// channel it came for is still being accepted (a slow receiving machine):
// the announcement waits for the channel, so its receives are not posted
// when the caller hears. They must never be: once the channel opens, the
// given-up transfer drops it (its bytes come on it) instead of taking them
// into blocks the caller was told are free.
TEST_CASE_FIXTURE(announced_system, "a withdrawn pull whose announcement "
                                    "waits for its channel lands nothing") {
  test::scoped_env slow_accept{"KVSOCK_FAULT_ACCEPT_DELAY_US", "400000"};
  connect_and_listen(*this);
  std::vector<std::uint64_t> s{0, 1}, d{2, 5};
  advertise_offered(*this, 51, s);
  auto pulled = pull_at(*this, false, 51, d);
  auto waiting = [&] {
    std::uint64_t n = 0;
    self->request(decode.transfer, 10s, proto::stats_atom::value)
        .receive(
            [&](const proto::transfer_stats& st) { n = st.announced_waiting; },
            [](const caf::error& err) { FAIL(render(err)); });
    return n;
  };
  REQUIRE(test::eventually([&] { return waiting() == 1; }, 5s));
  CHECK(withdraw(*this, pulled, 51).find("test: withdrawn") !=
        std::string::npos);
  later_requests_land_alone(*this, dst.regions, 52); // copied as it is now
}

// A pull at the transfer actor that holds no offer for it goes to the
// node: here it comes before the advertise (the want path, the prefill
// plans and posts); a second pull of a request being served is refused.
TEST_CASE_FIXTURE(caller_system, "a pull at the transfer actor before the "
                                 "offer takes the want path") {
  connect_and_listen(*this);
  std::vector<std::uint64_t> s{2, 3}, d{0, 5};
  auto before = dst.regions;
  auto pulled = pull_at(*this, true, 61, d);
  // The want reaches the prefill node before the advertise below (the
  // node's reply to this request comes after it handled the pull).
  std::string why;
  pull_at(*this, true, 61, d)
      .receive([](const proto::node_report&) {},
               [&](const caf::error& err) { why = render(err); });
  CHECK(why.find("already open") != std::string::npos);
  auto advert =
      self->request(prefill.node, 30s, proto::node_advertise_atom::value,
                    proto::node_request{61, "decode-0", s, {}, false});
  pulled.receive(
      [&](const proto::node_report& r) {
        CHECK(r.bytes == s.size() * layers * 2 * half_bytes);
      },
      [](const caf::error& err) { FAIL(render(err)); });
  advert.receive([](const proto::node_report&) {},
                 [](const caf::error& err) { FAIL(render(err)); });
  CHECK(dst.regions == dst.expected(before, src, s, d));
}

// The node failed an offered request before its caller pulled (withdrawn
// here by the caller's app; a peer gone or the prefill's failure note take
// the same path): the offer's holder, the transfer actor, answers the pull
// with the node's reason, and nothing moves.
TEST_CASE_FIXTURE(caller_system, "an offered pull failed before the caller "
                                 "pulled gets the node's reason") {
  connect_and_listen(*this);
  std::vector<std::uint64_t> s{0}, d{1};
  auto before = dst.regions;
  for (std::uint64_t id : {71, 72}) {
    bool at_transfer = id == 71;
    CAPTURE(at_transfer);
    advertise_offered(*this, id, s); // its advert is never told: not awaited
    self->send(decode.node, proto::node_fail_atom::value,
               std::string{"prefill-0"}, id,
               make_error(ec::timeout, "test: withdrawn early"));
    // The withdrawal reached the transfer actor before the pull (the node
    // handled it before it answers this).
    self->request(decode.node, 10s, proto::node_peers_atom::value)
        .receive([](const std::vector<std::string>&) {},
                 [](const caf::error&) {});
    std::string why;
    pull_at(*this, at_transfer, id, d)
        .receive([](const proto::node_report&) {},
                 [&](const caf::error& err) { why = render(err); });
    CHECK(why.find("test: withdrawn early") != std::string::npos);
  }
  std::this_thread::sleep_for(100ms);
  CHECK(dst.regions == before);
}

// An offered pull of many blocks does not ship its extents in the send
// order (each is serialised by both processes' I/O threads): it asks the
// prefill's node with a want, which plans and posts it there; the caller
// is still answered by the decode's transfer actor and every byte lands.
TEST_CASE("an offered pull of many blocks lands byte for byte (the "
          "prefill's node plans it)") {
  constexpr std::uint64_t many = 200; // x 2 layers x K and V > 256 extents
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  caf::scoped_actor self{sys};
  host_cache src{kv_layout::vllm_per_layer(layers, 2 * many, half_bytes), 5};
  host_cache dst{kv_layout::layer_major(layers, 2 * many, half_bytes), 0};
  auto spawn = [&](const std::string& name, host_cache& cache) {
    node_options o;
    o.name = name;
    o.cache = cache.cache();
    auto h = spawn_node(sys, o);
    REQUIRE_MESSAGE(h, test::why(h));
    return *h;
  };
  auto prefill = spawn("prefill-0", src);
  auto decode = spawn("decode-0", dst);
  self->request(decode.node, 10s, proto::node_connect_atom::value,
                caf::actor_cast<caf::actor>(prefill.node))
      .receive([](const std::string&) {},
               [](const caf::error& err) { FAIL(render(err)); });
  self->send(decode.node, proto::node_listen_atom::value,
             caf::actor_cast<caf::actor>(self));
  std::vector<std::uint64_t> s, d;
  for (std::uint64_t i = 0; i < many; ++i) {
    s.push_back((i * 7) % (2 * many));
    d.push_back(2 * many - 1 - i);
  }
  auto before = dst.regions;
  auto advert =
      self->request(prefill.node, 30s, proto::node_advertise_atom::value,
                    proto::node_request{91, "decode-0", s, {}, false});
  self->request(prefill.node, 10s, proto::node_notify_atom::value,
                std::string{"decode-0"}, std::string{"91"})
      .receive([](caf::ok_atom) {},
               [](const caf::error& err) { FAIL(render(err)); });
  self->receive(
      [](proto::node_note_atom, const std::string&, const std::string&) {},
      caf::after(30s) >> [] { FAIL("no note"); });
  std::string got = "no reply";
  self->request(decode.transfer, 30s, proto::node_pull_atom::value,
                proto::node_request{91, "prefill-0", d, {}, false})
      .receive(
          [&](const proto::node_report& r) {
            got = "pulled " + std::to_string(r.bytes);
          },
          [&](const caf::error& err) { got = render(err); });
  CHECK(got == "pulled " + std::to_string(many * layers * 2 * half_bytes));
  advert.receive([](const proto::node_report&) {},
                 [](const caf::error& err) { FAIL(render(err)); });
  CHECK(dst.regions == dst.expected(before, src, s, d));
  for (auto* h : {&prefill, &decode}) {
    self->send_exit(h->node, caf::exit_reason::user_shutdown);
    self->wait_for(h->node);
    self->send_exit(h->transfer, caf::exit_reason::user_shutdown);
    self->wait_for(h->transfer);
  }
}

// An offer nobody pulls within the request timeout goes back from the
// decode's transfer actor to its node, which forgets it as it forgets any
// unclaimed entry; a pull that comes later asks the prefill (the want
// path: its advert is still open) and lands.
TEST_CASE("an offer not pulled in time goes back to the node; a late pull "
          "takes the want path") {
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  caf::scoped_actor self{sys};
  host_cache src{kv_layout::vllm_per_layer(layers, blocks, half_bytes), 5};
  host_cache dst{kv_layout::layer_major(layers, blocks, half_bytes), 0};
  auto spawn = [&](const std::string& name, host_cache& cache) {
    node_options o;
    o.name = name;
    o.cache = cache.cache();
    o.timeout = 300ms;
    auto h = spawn_node(sys, o);
    REQUIRE_MESSAGE(h, test::why(h));
    return *h;
  };
  auto prefill = spawn("prefill-0", src);
  auto decode = spawn("decode-0", dst);
  self->request(decode.node, 10s, proto::node_connect_atom::value,
                caf::actor_cast<caf::actor>(prefill.node))
      .receive([](const std::string&) {},
               [](const caf::error& err) { FAIL(render(err)); });
  std::vector<std::uint64_t> s{4}, d{2};
  auto before = dst.regions;
  auto advert =
      self->request(prefill.node, 30s, proto::node_advertise_atom::value,
                    proto::node_request{81, "decode-0", s, {}, false});
  std::this_thread::sleep_for(1500ms); // 5 timeouts: the offer went back
  std::string got = "no reply";
  self->request(decode.transfer, 10s, proto::node_pull_atom::value,
                proto::node_request{81, "prefill-0", d, {}, false})
      .receive(
          [&](const proto::node_report& r) {
            got = "pulled " + std::to_string(r.bytes);
          },
          [&](const caf::error& err) { got = render(err); });
  CHECK(got == "pulled " + std::to_string(layers * 2 * half_bytes));
  advert.receive([](const proto::node_report&) {},
                 [](const caf::error& err) { FAIL(render(err)); });
  CHECK(dst.regions == dst.expected(before, src, s, d));
  for (auto* h : {&prefill, &decode}) {
    self->send_exit(h->node, caf::exit_reason::user_shutdown);
    self->wait_for(h->node);
    self->send_exit(h->transfer, caf::exit_reason::user_shutdown);
    self->wait_for(h->transfer);
  }
}

namespace {

proto::endpoint endpoint_of(std::string name, std::string host,
                            std::string ipc) {
  proto::endpoint e;
  e.name = std::move(name);
  e.host_id = std::move(host);
  e.ipc_handle = std::move(ipc);
  e.gpu = ipc.empty() ? -1 : 0;
  return e;
}

} // namespace

TEST_CASE("a pull is a one-sided CUDA IPC read only on one host with both "
          "tables exported; both sides choose alike") {
  auto prefill = endpoint_of("prefill-0", "host-a", "table-p");
  auto decode = endpoint_of("decode-0", "host-a", "table-d");
  CHECK(why_not_one_sided(decode, prefill).empty());
  CHECK(why_not_one_sided(prefill, decode).empty());

  auto far = endpoint_of("decode-1", "host-b", "table-d");
  for (const auto& why :
       {why_not_one_sided(far, prefill), why_not_one_sided(prefill, far)}) {
    CHECK(why.find("not on one host") != std::string::npos);
    CHECK(why.find("decode-1") != std::string::npos);
  }
  // No host id known: never assumed to be the same host.
  auto unknown = endpoint_of("decode-2", "", "table-d");
  CHECK_FALSE(why_not_one_sided(unknown, endpoint_of("p", "", "t")).empty());

  // Host memory, memory CUDA IPC cannot share, or use_ipc off: no export.
  auto host = endpoint_of("decode-3", "host-a", "");
  for (const auto& why :
       {why_not_one_sided(host, prefill), why_not_one_sided(prefill, host)}) {
    CHECK(why.find("'decode-3' exports no CUDA IPC handles") !=
          std::string::npos);
  }
}

TEST_CASE("a one-sided pull's ready note crosses processes whole") {
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  proto::node_ready note{7, "prefill-0", 3, 8, {4, 5, 9}, "event-text"};
  std::vector<char> buf;
  caf::binary_serializer sink{sys, buf};
  REQUIRE_FALSE(sink(note));
  proto::node_ready back;
  caf::binary_deserializer source{sys, buf};
  REQUIRE_FALSE(source(back));
  CHECK(back.id == 7);
  CHECK(back.sender == "prefill-0");
  CHECK(back.part == 3);
  CHECK(back.parts == 8);
  CHECK(back.blocks == note.blocks);
  CHECK(back.event == "event-text");
}

// What a peer told about a request nobody here asked for yet is kept for the
// caller's receive, but not forever: after the request timeout it is
// dropped (a refused credit request or an advertise never pulled would
// otherwise leave one entry each in a long-running node).
TEST_CASE("a peer's failure note is kept for the caller, then dropped "
          "unclaimed after the request timeout") {
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  caf::scoped_actor self{sys};
  host_cache src{kv_layout::vllm_per_layer(layers, blocks, half_bytes), 5};
  host_cache dst{kv_layout::layer_major(layers, blocks, half_bytes), 0};
  auto spawn = [&](const std::string& name, host_cache& cache) {
    node_options o;
    o.name = name;
    o.cache = cache.cache();
    o.timeout = 100ms;
    auto h = spawn_node(sys, o);
    REQUIRE_MESSAGE(h, test::why(h));
    return *h;
  };
  auto prefill = spawn("prefill-0", src);
  auto decode = spawn("decode-0", dst);
  self->request(decode.node, 10s, proto::node_connect_atom::value,
                caf::actor_cast<caf::actor>(prefill.node))
      .receive([](const std::string&) {},
               [](const caf::error& err) { FAIL(render(err)); });
  // A push to a block the decode does not have fails at the prefill, which
  // tells the decode node; nobody there asked for the request yet.
  auto push_out_of_range = [&](std::uint64_t id) {
    std::string why;
    self->request(prefill.node, 10s, proto::node_send_atom::value,
                  proto::node_request{id, "decode-0", {0}, {blocks + 9}, false})
        .receive([](const proto::node_report&) {},
                 [&](const caf::error& err) { why = render(err); });
    REQUIRE(why.find("invalid_argument") != std::string::npos);
  };
  auto receive = [&](std::uint64_t id) {
    std::string got = "received";
    self->request(decode.node, 1s, proto::node_receive_atom::value,
                  proto::node_request{id, "prefill-0", {0}, {}, false})
        .receive([](const proto::node_report&) {},
                 [&](const caf::error& err) { got = render(err); });
    return got;
  };
  push_out_of_range(9);
  // Claimed at once: the receive fails with the prefill's reason.
  CHECK(receive(9).find("invalid_argument") != std::string::npos);
  push_out_of_range(10);
  // Unclaimed for 20 request timeouts: forgotten, so a (too) late receive
  // no longer hears of it and waits instead, until its own deadline.
  std::this_thread::sleep_for(2s);
  CHECK(receive(10).find("invalid_argument") == std::string::npos);
  for (auto* h : {&prefill, &decode}) {
    self->send_exit(h->node, caf::exit_reason::user_shutdown);
    self->wait_for(h->node);
    self->send_exit(h->transfer, caf::exit_reason::user_shutdown);
    self->wait_for(h->transfer);
  }
}

// ---- pull lanes (actors/src/transfer_lane.cpp): an offered pull's
// receives are posted before its send order leaves, and the prefill sends
// unannounced on a channel of its own that only such pulls use.

namespace {

// The lane tests' nodes (lanes_env).
struct lane_system : lanes_env, caller_system {
  lane_system() : lanes_env("1") {}
};

proto::transfer_stats stats_of(caller_system& fixture,
                               const transfer_actor& transfer) {
  proto::transfer_stats out;
  fixture.self->request(transfer, 10s, proto::stats_atom::value)
      .receive([&](const proto::transfer_stats& s) { out = s; },
               [](const caf::error& err) { FAIL(render(err)); });
  return out;
}

// An offered pull, pulled at the decode's transfer actor: its error, or ""
// once it landed.
std::string offered_pull(caller_system& fixture, std::uint64_t id,
                         const std::vector<std::uint64_t>& s,
                         const std::vector<std::uint64_t>& d) {
  auto advert = advertise_offered(fixture, id, s);
  std::string why;
  pull_at(fixture, true, id, d)
      .receive([](const proto::node_report&) {},
               [&](const caf::error& err) { why = render(err); });
  advert.receive([](const proto::node_report&) {}, [](const caf::error&) {});
  return why;
}

} // namespace

// The prefill refuses a pull whose receives the decode already posted on
// the lane (here its offer names source blocks past the prefill's cache, so
// the prefill's bounds check refuses the send order): it sends one empty
// chunk per receive, so the decode's receives end short and the caller
// gets the prefill's reason, and nothing lands in the pull's blocks. The
// lane stays in step: the next pull on it lands byte for byte, in its own
// blocks only, and no channel was made again.
TEST_CASE_FIXTURE(lane_system, "a refused pull on a lane lands nothing; "
                               "the next pull on the same lane lands "
                               "byte for byte") {
  connect_and_listen(*this);
  auto before = dst.regions;
  REQUIRE(offered_pull(*this, 81, {0}, {1}) == "");
  CHECK(dst.regions == dst.expected(before, src, {0}, {1}));
  CHECK(stats_of(*this, decode.transfer).lane_pulls == 1);
  // One channel, the lane: no announced channel was opened for the pull.
  auto opened = stats_of(*this, prefill.transfer).registrations;
  CHECK(opened == src.layout.region_count());

  proto::endpoint prefill_ep;
  self->request(prefill.transfer, 10s, proto::endpoint_atom::value)
      .receive([&](const proto::endpoint& ep) { prefill_ep = ep; },
               [](const caf::error& err) { FAIL(render(err)); });
  proto::pull_offer bad;
  bad.id = 82;
  bad.peer = "prefill-0";
  bad.src_blocks = {4 * blocks - 1, 3 * blocks};
  bad.src_layout = describe_layout(
      kv_layout::vllm_per_layer(layers, 4 * blocks, half_bytes));
  bad.dst_layout = describe_layout(dst.layout);
  bad.src = prefill_ep;
  bad.src_node = caf::actor_cast<caf::actor>(prefill.node);
  bad.puller = "decode-0";
  bad.timeout_ms = 10000;
  self->send(decode.transfer, proto::node_offer_atom::value, bad);
  auto after_first = dst.regions;
  std::string why;
  pull_at(*this, true, 82, {2, 5})
      .receive([](const proto::node_report&) { FAIL("a refused pull"); },
               [&](const caf::error& err) { why = render(err); });
  CAPTURE(why);
  CHECK(why.find("send order") != std::string::npos);
  CHECK(dst.regions == after_first);

  REQUIRE(offered_pull(*this, 83, {3}, {6}) == "");
  CHECK(dst.regions == dst.expected(after_first, src, {3}, {6}));
  CHECK(stats_of(*this, prefill.transfer).registrations == opened);
}

// Lanes off (the default): an offered pull goes announced on the peer's
// channel, and the decode counts no lane pull (transfer_stats::lane_pulls,
// which `bench node` reads to name the path).
TEST_CASE_FIXTURE(announced_system, "with lanes off an offered pull lands "
                                    "announced and counts no lane pull") {
  connect_and_listen(*this);
  auto before = dst.regions;
  REQUIRE(offered_pull(*this, 91, {2}, {3}) == "");
  CHECK(dst.regions == dst.expected(before, src, {2}, {3}));
  CHECK(stats_of(*this, decode.transfer).lane_pulls == 0);
}

// Pushes (announced, on the peer's channel) and offered pulls (on the
// lane) between one pair, in flight together: every byte lands in its own
// request's blocks.
TEST_CASE_FIXTURE(lane_system, "pulls on a lane racing pushes to the same "
                               "peer land in their own blocks") {
  connect_and_listen(*this);
  auto before = dst.regions;
  std::vector<std::uint64_t> all_s, all_d;
  for (std::uint64_t round = 0; round < 8; ++round) {
    CAPTURE(round);
    std::vector<std::uint64_t> ps{round}, pd{round % 4};         // pushed
    std::vector<std::uint64_t> ls{7 - round}, ld{4 + round % 4}; // pulled
    auto push_id = 200 + 2 * round, pull_id = 201 + 2 * round;
    auto sent =
        self->request(prefill.node, 30s, proto::node_send_atom::value,
                      proto::node_request{push_id, "decode-0", ps, pd, false});
    auto received =
        self->request(decode.node, 30s, proto::node_receive_atom::value,
                      proto::node_request{push_id, "prefill-0", pd, {}, false});
    CHECK(offered_pull(*this, pull_id, ls, ld) == "");
    received.receive([](const proto::node_report&) {},
                     [](const caf::error& err) { FAIL(render(err)); });
    sent.receive([](const proto::node_report&) {},
                 [](const caf::error& err) { FAIL(render(err)); });
    before = dst.expected(before, src, ps, pd);
    before = dst.expected(before, src, ls, ld);
    CHECK(dst.regions == before);
  }
}

// The decode gives up on a pull whose receives are posted on a lane (here
// its "prefill" is this test's own actor, which takes the send order and
// never connects): the pull fails at its deadline and the lane is dropped,
// closing its receives, so nothing can land in its blocks later; the next
// pull from the real prefill makes a new lane and lands.
TEST_CASE_FIXTURE(lane_system, "a pull past its deadline drops its lane; "
                               "the next pull makes a new one") {
  connect_and_listen(*this);
  proto::endpoint fake;
  self->request(prefill.transfer, 10s, proto::endpoint_atom::value)
      .receive([&](const proto::endpoint& ep) { fake = ep; },
               [](const caf::error& err) { FAIL(render(err)); });
  fake.transfer = caf::actor_cast<caf::actor>(self);
  proto::pull_offer offer;
  offer.id = 91;
  offer.peer = "prefill-0";
  offer.src_blocks = {0};
  offer.src_layout = describe_layout(src.layout);
  offer.dst_layout = describe_layout(dst.layout);
  offer.src = fake;
  offer.src_node = caf::actor_cast<caf::actor>(prefill.node);
  offer.puller = "decode-0";
  offer.timeout_ms = 300;
  self->send(decode.transfer, proto::node_offer_atom::value, offer);
  auto before = dst.regions;
  auto pulled = pull_at(*this, true, 91, {2});
  // The order comes unannounced: its receives are posted on a new lane,
  // whose handles it carries.
  proto::send_order order;
  caf::response_promise never; // kept unanswered: no reply, no bytes
  self->receive(
      [&](proto::send_atom, const proto::send_order& o) {
        order = o;
        never = self->make_response_promise();
      },
      caf::after(10s) >> [] { FAIL("no send order"); });
  CHECK(order.lane != 0);
  CHECK_FALSE(order.lane_handles.empty());
  std::string why;
  pulled.receive([](const proto::node_report&) { FAIL("a lost pull"); },
                 [&](const caf::error& err) { why = render(err); });
  CAPTURE(why);
  CHECK(why.find("did not complete in time") != std::string::npos);
  CHECK(dst.regions == before);
  REQUIRE(offered_pull(*this, 92, {3}, {6}) == "");
  CHECK(dst.regions == dst.expected(before, src, {3}, {6}));
}
