// The transfer actor's trust boundary (issue #19): extents that come from a
// peer are checked against the registered region before any byte moves.
// Every producer/consumer test swaps in a fake transfer actor, so this test
// runs two real ones in one process, over the real kvsock plugin on
// loopback, and hands them extents that leave the region:
//   - a send order whose destination leaves the peer's region (a consumer's
//     grant) or whose source leaves ours (a remote consumer's pull):
//     refused by the sender (handle_send);
//   - an announcement whose destination leaves the receiver's region (a
//     sender that trusts a wrong endpoint, or lies): refused by the receiver
//     (handle_announce), which fails the transfer's recv order.
// Each is ec::invalid_extent naming the peer and the extent, and no byte of
// the receiver's memory changes.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include <caf/all.hpp>
#include <doctest/doctest.h>

#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/transfer.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "kvferry/transport/plugin.hpp"
#include "scoped_env.hpp"
#include "transfer_pair_config.hpp"
#include "transfer_state.hpp"
#include "why.hpp"

using namespace kvferry;
using namespace std::chrono_literals;
using proto::extent;

namespace {

// Not a multiple of the page: allocate_host rounds the allocation up, so an
// extent that overruns the region by less than `slack` stays inside the
// allocation and a missing check shows as changed bytes, not as a crash.
constexpr std::uint64_t region_bytes = 4 * 4096 - 512;
constexpr std::uint64_t allocated_bytes = 4 * 4096;
constexpr std::uint8_t sentinel = 0x5a;

caf::error no_reply() {
  return make_error(ec::timeout, "no reply");
}

proto::send_order order_to(proto::endpoint peer, std::uint64_t id,
                           std::vector<extent> extents) {
  proto::send_order o;
  o.transfer_id = id;
  o.peer = std::move(peer);
  o.extents = std::move(extents);
  o.timeout_ms = 5000;
  return o;
}

struct pair_fixture {
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  caf::scoped_actor self{sys};
  std::shared_ptr<memory_region> src_region =
      memory_region::allocate_host(region_bytes, "prefill pool");
  std::shared_ptr<memory_region> dst_region =
      memory_region::allocate_host(region_bytes, "decode pool");
  transfer_actor sender;
  transfer_actor receiver;

  pair_fixture() {
    auto net = transport::plugin::load("kvsock"); // KVFERRY_PLUGIN_PATH
    std::fill_n(src_region->data(), allocated_bytes, std::uint8_t{0xa5});
    std::fill_n(dst_region->data(), allocated_bytes, sentinel);
    sender = spawn_transfer(sys, config("prefill-0", net, src_region));
    receiver = spawn_transfer(sys, config("decode-0", net, dst_region));
  }

  ~pair_fixture() {
    self->send_exit(sender, caf::exit_reason::user_shutdown);
    self->send_exit(receiver, caf::exit_reason::user_shutdown);
  }

  static transfer_config config(std::string name,
                                std::shared_ptr<transport::plugin> net,
                                std::shared_ptr<memory_region> region) {
    return kvferry::test::pair_transfer_config(std::move(name), std::move(net),
                                               std::move(region));
  }

  proto::endpoint receiver_endpoint() {
    proto::endpoint ep;
    self->request(receiver, 10s, proto::endpoint_atom::value)
        .receive([&](proto::endpoint& e) { ep = std::move(e); },
                 [&](caf::error& err) { FAIL(render(err)); });
    return ep;
  }

  // The sender's reply to `order`: bytes sent or the error.
  caf::expected<std::uint64_t> send(proto::send_order order) {
    caf::expected<std::uint64_t> result{no_reply()};
    self->request(sender, 30s, proto::send_atom::value, std::move(order))
        .receive([&](std::uint64_t bytes) { result = bytes; },
                 [&](caf::error& err) { result = std::move(err); });
    return result;
  }

  caf::expected<proto::recv_report> recv(std::uint64_t id) {
    proto::recv_order order;
    order.transfer_id = id;
    order.peer_name = "prefill-0";
    order.timeout_ms = 10000;
    caf::expected<proto::recv_report> result{no_reply()};
    self->request(receiver, 30s, proto::recv_atom::value, order)
        .receive([&](proto::recv_report& r) { result = r; },
                 [&](caf::error& err) { result = std::move(err); });
    return result;
  }

  // After a refusal both actors are alive and a well-formed transfer `id`
  // lands at `dst_offset`: a bad extent costs its transfer, not the pair.
  void good_transfer_lands(std::uint64_t id, std::uint64_t dst_offset) {
    auto sent =
        send(order_to(receiver_endpoint(), id, {{0, dst_offset, 1024}}));
    REQUIRE_MESSAGE(sent, test::why(sent));
    CHECK(*sent == 1024);
    auto got = recv(id);
    REQUIRE_MESSAGE(got, test::why(got));
    CHECK(got->bytes == 1024);
    CHECK(dst_region->data()[dst_offset] == 0xa5);
    CHECK(dst_region->data()[dst_offset + 1023] == 0xa5);
  }

  // No byte of the receiver's allocation (the region and the slack past
  // its end) changed.
  bool receiver_untouched() const {
    const auto* d = dst_region->data();
    return std::all_of(d, d + allocated_bytes,
                       [](std::uint8_t b) { return b == sentinel; });
  }
};

// One valid extent, then one that overruns the destination region by 256
// bytes (still inside the allocation's slack).
std::vector<extent> plan_leaving_destination() {
  return {{0, 0, 1024}, {1024, region_bytes - 256, 512}};
}

bool names(const caf::error& err, const std::string& what) {
  return render(err).find(what) != std::string::npos;
}

} // namespace

TEST_CASE_FIXTURE(pair_fixture, "a well-formed transfer lands (the baseline "
                                "the refusals below are measured against)") {
  auto ep = receiver_endpoint();
  REQUIRE(ep.region_bytes == region_bytes);
  auto sent = send(order_to(ep, 1, {{0, 4096, 1024}}));
  REQUIRE_MESSAGE(sent, test::why(sent));
  CHECK(*sent == 1024);
  auto got = recv(1);
  REQUIRE_MESSAGE(got, test::why(got));
  CHECK(got->bytes == 1024);
  CHECK(dst_region->data()[4096] == 0xa5);
  CHECK(dst_region->data()[4096 - 1] == sentinel);
}

TEST_CASE_FIXTURE(pair_fixture,
                  "a send order whose destination leaves the peer's region is "
                  "refused before anything moves, naming peer and extent") {
  auto sent =
      send(order_to(receiver_endpoint(), 2, plan_leaving_destination()));
  REQUIRE_FALSE(sent);
  INFO(render(sent.error()));
  CHECK(is(sent.error(), ec::invalid_extent));
  CHECK(names(sent.error(), "send order 2 to 'decode-0'"));
  CHECK(names(sent.error(), "extent #1 (src_offset 1024, dst_offset 15616, "
                            "length 512) ends past the destination region"));
  CHECK(receiver_untouched());
  good_transfer_lands(12, 4096);
}

TEST_CASE_FIXTURE(pair_fixture,
                  "a send order whose source leaves our region (a pull from a "
                  "remote consumer) is refused, naming peer and extent") {
  auto sent = send(order_to(receiver_endpoint(), 3,
                            {{0, 0, 1024}, {region_bytes - 100, 2048, 200}}));
  REQUIRE_FALSE(sent);
  INFO(render(sent.error()));
  CHECK(is(sent.error(), ec::invalid_extent));
  CHECK(names(sent.error(), "send order 3 to 'decode-0'"));
  CHECK(names(sent.error(), "extent #1 (src_offset 15772, dst_offset 2048, "
                            "length 200) ends past the source region"));
  CHECK(receiver_untouched());
  good_transfer_lands(13, 4096);
}

TEST_CASE_FIXTURE(pair_fixture,
                  "an announcement whose destination leaves the receiver's "
                  "region fails the transfer there, naming peer and extent, "
                  "and writes nothing") {
  // The sender believes (or claims) the receiver's region is larger: its
  // own check passes and the receiver is the last line of defence.
  auto ep = receiver_endpoint();
  ep.region_bytes = allocated_bytes * 2;
  // The sender's own outcome depends on how far its sends got before the
  // receiver dropped the channel (a plugin may complete a send once it is on
  // the wire); what matters is the receiver's verdict and its memory.
  (void)send(order_to(ep, 4, plan_leaving_destination()));
  auto got = recv(4);
  REQUIRE_FALSE(got);
  INFO(render(got.error()));
  CHECK(is(got.error(), ec::invalid_extent));
  CHECK(names(got.error(), "transfer 4 from 'prefill-0'"));
  CHECK(names(got.error(), "extent #1 (src_offset 1024, dst_offset 15616, "
                           "length 512) ends past the destination region"));
  CHECK(receiver_untouched());
  // The refused bytes broke that channel's comm order, so the receiver
  // dropped it and told the sender. A send racing that notice fails, named
  // (peer_down); one after it lands on a new channel.
  auto next = send(order_to(receiver_endpoint(), 14, {{0, 8192, 1024}}));
  if (!next) {
    INFO(render(next.error()));
    CHECK(is(next.error(), ec::peer_down));
    CHECK(names(next.error(), "lost peer 'decode-0'"));
  } else {
    CHECK(recv(14));
  }
  good_transfer_lands(15, 4096);
}

// ---- deadlines belong to one transfer, not to its id
// Transfer ids repeat (request id x part: every demo run starts again), and
// a deadline armed for an earlier transfer under the same id used to fail
// the new one, then tear the channel down when its bytes were announced
// ("arrived after the receiver gave up on it"): the soak's decode-0 did so
// on every new channel from prefill-1. Real time: the old deadline must
// pass while the new transfer waits for its bytes.
TEST_CASE_FIXTURE(pair_fixture, "an earlier transfer's deadline does not fail "
                                "a new transfer under the same id") {
  auto ep = receiver_endpoint();
  auto order = [](std::uint64_t id, std::uint32_t timeout_ms) {
    proto::recv_order o;
    o.transfer_id = id;
    o.peer_name = "prefill-0";
    o.timeout_ms = timeout_ms;
    return o;
  };
  // Transfer 9, first time: its receive's deadline is 1 s away.
  auto first =
      self->request(receiver, 30s, proto::recv_atom::value, order(9, 1000));
  auto sent = send(order_to(ep, 9, {{0, 0, 1024}}));
  REQUIRE_MESSAGE(sent, test::why(sent));
  first.receive([](proto::recv_report& r) { CHECK(r.bytes == 1024); },
                [](caf::error& err) { FAIL(render(err)); });
  // Transfer 9 again, ordered before its bytes: nothing may end it before
  // its own 10 s, in particular not the first one's deadline at 1 s. The
  // wait is not synchronisation: that deadline must pass unnoticed.
  auto second =
      self->request(receiver, 30s, proto::recv_atom::value, order(9, 10000));
  std::this_thread::sleep_for(2500ms);
  // Its bytes land on the same channel (the receiver did not give up).
  sent = send(order_to(ep, 9, {{0, 2048, 1024}}));
  REQUIRE_MESSAGE(sent, test::why(sent));
  second.receive([](proto::recv_report& r) { CHECK(r.bytes == 1024); },
                 [](caf::error& err) { FAIL(render(err)); });
  CHECK(dst_region->data()[2048] == 0xa5);
}

// ---- announcements of a channel that is gone
// A sender announced transfer 5 on a channel the receiver had already
// dropped (the receiver was stopped past its lease): the announcement waits,
// with no channel, for bytes that went to the dead channel. Posted on the
// sender's next channel, it took that channel's bytes (transfer 6's), and its
// deadline later tore the new channel down, failing the next run's transfers
// in turn: the soak's cascade. It must fail when the new channel opens.
TEST_CASE_FIXTURE(pair_fixture, "an announcement of the sender's previous "
                                "channel fails when it opens a new one; the "
                                "new channel's bytes land where they belong") {
  auto ep = receiver_endpoint();
  proto::recv_order o;
  o.transfer_id = 5;
  o.peer_name = "prefill-0";
  o.timeout_ms = 10000;
  auto stale = self->request(receiver, 30s, proto::recv_atom::value, o);
  proto::announcement a;
  a.transfer_id = 5;
  a.sender = "prefill-0";
  a.chunks = {{0, 0, 1024}};
  self->send(receiver, proto::announce_atom::value, proto::announce_batch{{a}});
  auto sent = send(order_to(ep, 6, {{0, 2048, 1024}}));
  REQUIRE_MESSAGE(sent, test::why(sent));
  auto got = recv(6);
  REQUIRE_MESSAGE(got, test::why(got));
  CHECK(got->bytes == 1024);
  CHECK(dst_region->data()[2048] == 0xa5);
  CHECK(dst_region->data()[0] == sentinel); // transfer 5's block: untouched
  stale.receive([](proto::recv_report&) { FAIL("transfer 5 landed"); },
                [](caf::error& err) {
                  INFO(render(err));
                  CHECK(is(err, ec::peer_down));
                  CHECK(names(err, "announced on a channel that is gone"));
                });
}

// ---- one end of a channel dropped: the other end learns at once

namespace {

// A receive of transfer `id` from the fixture's sender, 10 s to land.
proto::recv_order recv_order_from_sender(std::uint64_t id) {
  proto::recv_order o;
  o.transfer_id = id;
  o.peer_name = "prefill-0";
  o.timeout_ms = 10000;
  return o;
}

} // namespace

// The soak (f9a0d03): decode-0, stopped past its lease, kept its ends of the
// producers' channels while the producers dropped theirs. After its return a
// producer's new channel dropped the old end, and with it the recv order its
// consumer had just made for that new channel; the announcement then found
// the transfer failed and tore the new channel down too, and the producer
// sent into it for 20 s until a write failed. A recv order with no
// announcement yet belongs to the next channel and must survive.
TEST_CASE_FIXTURE(pair_fixture, "a recv order awaiting its announcement "
                                "survives the drop of the sender's previous "
                                "channel and lands on the next one") {
  auto ep = receiver_endpoint();
  REQUIRE(send(order_to(ep, 11, {{0, 0, 1024}}))); // the channel opens
  REQUIRE(recv(11));
  auto pending = self->request(receiver, 30s, proto::recv_atom::value,
                               recv_order_from_sender(12));
  // The sender hears that the receiver left (its lease ran out) and drops
  // its end; the receiver keeps its own until told.
  self->send(sender, left_atom::value, std::string{"decode-0"},
             make_error(ec::lease_expired, "test: decode-0's lease"));
  auto sent = send(order_to(ep, 12, {{0, 2048, 1024}}));
  REQUIRE_MESSAGE(sent, test::why(sent));
  pending.receive([](proto::recv_report& r) { CHECK(r.bytes == 1024); },
                  [](caf::error& err) { FAIL(render(err)); });
  CHECK(dst_region->data()[2048] == 0xa5);
}

// The other direction: the receiver drops its end (the directory told it
// the sender left; or a deadline, or a plugin error), and tells the sender,
// which drops its end at once: the next transfer opens a fresh channel
// instead of sending into one nobody reads.
TEST_CASE_FIXTURE(pair_fixture, "a receiver that drops its end of a channel "
                                "tells the sender; the next transfer goes "
                                "over a fresh channel and lands") {
  auto ep = receiver_endpoint();
  REQUIRE(send(order_to(ep, 21, {{0, 0, 1024}})));
  REQUIRE(recv(21));
  self->send(receiver, left_atom::value, std::string{"prefill-0"},
             make_error(ec::lease_expired, "test: prefill-0's lease"));
  // Once the receiver answers, it has dropped its end and its notice is in
  // the sender's mailbox (one process), ahead of the next send order.
  self->request(receiver, 10s, proto::stats_atom::value)
      .receive([](const proto::transfer_stats&) {},
               [](caf::error& err) { FAIL(render(err)); });
  auto pending = self->request(receiver, 30s, proto::recv_atom::value,
                               recv_order_from_sender(22));
  auto sent = send(order_to(ep, 22, {{0, 4096, 1024}}));
  REQUIRE_MESSAGE(sent, test::why(sent));
  pending.receive([](proto::recv_report& r) { CHECK(r.bytes == 1024); },
                  [](caf::error& err) { FAIL(render(err)); });
  CHECK(dst_region->data()[4096] == 0xa5);
  self->request(sender, 10s, proto::stats_atom::value)
      .receive(
          [](const proto::transfer_stats& s) {
            CHECK(s.comms_opened == 2); // one comm per channel here
          },
          [](caf::error& err) { FAIL(render(err)); });
}

// ---- a transfer that ended leaves nothing behind
// Each transfer entry carries its own deadline, so once a transfer ended
// and its recv order claimed it, neither transfer actor keeps anything of
// it: memory is bounded by what is in flight, not by the rate times the
// timeout (a deadline kept apart from its entry used to stay until it
// passed, 30 s or more, at tens of thousands of transfers a second). A
// transfer that landed before its recv order came is kept for that order.
TEST_CASE_FIXTURE(pair_fixture, "a transfer that ended and was claimed "
                                "leaves no state in either transfer actor") {
  auto tracked = [&](const transfer_actor& a) {
    std::uint64_t n = ~std::uint64_t{0};
    self->request(a, 10s, proto::stats_atom::value)
        .receive([&](const proto::transfer_stats& s) { n = s.tracked; },
                 [](caf::error& err) { FAIL(render(err)); });
    return n;
  };
  auto ep = receiver_endpoint();
  constexpr std::uint64_t transfers = 40;
  for (std::uint64_t id = 100; id < 100 + transfers; ++id) {
    const std::uint64_t offset = (id % 8) * 1024;
    if (id % 2 == 0) { // claimed first: the recv order waits for its bytes
      auto pending = self->request(receiver, 30s, proto::recv_atom::value,
                                   recv_order_from_sender(id));
      REQUIRE(send(order_to(ep, id, {{0, offset, 1024}})));
      pending.receive([](proto::recv_report& r) { CHECK(r.bytes == 1024); },
                      [](caf::error& err) { FAIL(render(err)); });
    } else { // landed first: the recv order finds it done
      REQUIRE(send(order_to(ep, id, {{0, offset, 1024}})));
      auto got = recv(id);
      REQUIRE_MESSAGE(got, test::why(got));
      CHECK(got->bytes == 1024);
    }
  }
  CHECK(tracked(sender) == 0);
  CHECK(tracked(receiver) == 0);
  // Landed and not claimed yet: kept for its recv order, then gone.
  REQUIRE(send(order_to(ep, 200, {{0, 0, 1024}})));
  for (int i = 0; i < 500 && tracked(receiver) == 0; ++i)
    std::this_thread::sleep_for(10ms); // the announcement is on its way
  CHECK(tracked(receiver) == 1);
  CHECK(recv(200));
  CHECK(tracked(receiver) == 0);
  CHECK(tracked(sender) == 0);
}

// While its bytes are late a receiver's transfer actor sleeps on its comms'
// wait descriptors (the wake watch, on by default with kvsock): the bytes
// wake it, and its loop turns about once a millisecond meanwhile, not every
// 20-200 us (as it did, some 500-600 turns per 100 ms). A backstop turn may
// find the bytes just before their wake (then no wake counts), so three
// late transfers must bring at least one. (Its hot window, on by default
// on 8 cores or more, is off here: the next case covers it.)
TEST_CASE("a receiver whose bytes are late sleeps until they come") {
  test::scoped_env late{"KVSOCK_FAULT_DELAY_US", "60000"};
  test::scoped_env cold{"KVFERRY_HOT_US", "0"};
  pair_fixture f;
  auto stats = [&](const transfer_actor& a) {
    proto::transfer_stats out;
    f.self->request(a, 10s, proto::stats_atom::value)
        .receive([&](const proto::transfer_stats& s) { out = s; },
                 [](caf::error& err) { FAIL(render(err)); });
    return out;
  };
  auto ep = f.receiver_endpoint();
  REQUIRE(f.send(order_to(ep, 1, {{0, 0, 1024}}))); // opens the channel
  REQUIRE(f.recv(1));
  const auto before = stats(f.receiver);
  for (std::uint64_t id = 2; id < 5; ++id) {
    auto pending = f.self->request(f.receiver, 30s, proto::recv_atom::value,
                                   recv_order_from_sender(id));
    REQUIRE(f.send(order_to(ep, id, {{0, id * 1024, 1024}})));
    pending.receive([](proto::recv_report& r) { CHECK(r.bytes == 1024); },
                    [](caf::error& err) { FAIL(render(err)); });
    CHECK(f.dst_region->data()[id * 1024] == 0xa5);
  }
  const auto after = stats(f.receiver);
  MESSAGE("polls " << after.polls - before.polls << ", wakes "
                   << after.wakes - before.wakes);
  CHECK(after.polls - before.polls < 3 * 200);
  CHECK(after.wakes > before.wakes);
}

// The hot window (KVFERRY_HOT_US): after a transfer the loop keeps polling
// for that long, so that the next word from a peer finds its thread awake;
// then it stops, and an idle transfer actor takes no CPU. An idle actor
// polls not at all, so turns counted inside the window are the window's.
// The window is long (300 ms) and the count waits for its turns, because
// on a loaded 2-core machine (CI runs the sanitizer build two tests at a
// time) a yielding thread may get only a few turns in any 10 ms.
TEST_CASE("a transfer actor stays hot for its window, then goes idle") {
  constexpr auto window = 300ms;
  test::scoped_env hot{"KVFERRY_HOT_US", "300000"};
  pair_fixture f;
  auto polls = [&] {
    std::uint64_t out = 0;
    f.self->request(f.receiver, 10s, proto::stats_atom::value)
        .receive([&](const proto::transfer_stats& s) { out = s.polls; },
                 [](caf::error& err) { FAIL(render(err)); });
    return out;
  };
  auto ep = f.receiver_endpoint();
  REQUIRE(f.send(order_to(ep, 1, {{0, 0, 1024}})));
  REQUIRE(f.recv(1));
  const auto done_at = std::chrono::steady_clock::now();
  const auto done = polls();
  auto hot_polls = polls() - done;
  while (hot_polls <= 10 &&
         std::chrono::steady_clock::now() - done_at < window * 2 / 3) {
    std::this_thread::sleep_for(1ms);
    hot_polls = polls() - done;
  }
  MESSAGE("polls within the window: " << hot_polls);
  CHECK(hot_polls > 10);
  std::this_thread::sleep_until(done_at + window + 100ms); // window passed
  const auto idle = polls();
  std::this_thread::sleep_for(100ms);
  CHECK(polls() == idle);
}

// Who stays hot by default: a detached transfer actor (a worker's, a
// node's) where cores are to spare; never on a small machine, where the
// busy loop would take the peer's core, nor kvferry::endpoint's, which
// shares its scheduler thread.
TEST_CASE("the hot window is on by default only for a detached transfer "
          "actor on 8 cores or more") {
  using transfer_detail::hot_window_for;
  CHECK(hot_window_for(2, true).count() == 0);
  CHECK(hot_window_for(4, true).count() == 0);
  CHECK(hot_window_for(8, true) == 1ms);
  CHECK(hot_window_for(16, false).count() == 0);
  test::scoped_env unset{"KVFERRY_HOT_US", nullptr};
  const auto fallback = transfer_detail::hot_window_from_env(true);
  {
    test::scoped_env set{"KVFERRY_HOT_US", "300"}; // for any transfer actor
    CHECK(transfer_detail::hot_window_from_env(false) == 300us);
  }
  test::scoped_env bad{"KVFERRY_HOT_US", "lots"}; // warned and ignored
  CHECK(transfer_detail::hot_window_from_env(true) == fallback);
}
