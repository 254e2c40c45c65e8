// Announcements batched per peer (transfer_net.cpp, "Ordering"; issue #16):
// a sender's transfer actor announces the transfers it posted since its last
// flush in one message, and the receiver posts their receives in that order.
// Two real transfer actors in the deterministic scheduler (actor_fixture),
// over the in-process fake plugin, which matches the k-th send with the k-th
// receive as every v7 plugin does: a receive posted out of order would take
// another transfer's bytes. The scheduler runs an actor only inside run(),
// so every message the test sends before run() is in the actor's mailbox
// when it starts: the orders pile up into one batch, deterministically.
//   - many transfers in flight to one peer leave in one batch and each lands
//     where its own order said, byte for byte;
//   - the sender drops the channel while a batch is pending (the directory
//     says the receiver left): every transfer of the batch fails at both
//     ends with the reason, none hangs, and the next transfer opens a fresh
//     channel and lands;
//   - an endpoint's batched orders (order_batch: its writes' sends) settle
//     once each, in lists to the batch's sender, a refused send with its
//     reason;
//   - a write whose order names an answer_to (an endpoint's write over a
//     plugin) is answered by the receiving transfer actor itself, once,
//     named by its own name, with the reason where it failed there, and
//     leaves no entry behind (no claim will come for it).
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <caf/all.hpp>
#include <doctest/doctest.h>

#include "actor_fixture.hpp"
#include "fake_plugin.hpp"
#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/transfer.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/transport/plugin.hpp"
#include "transfer_pair_config.hpp"
#include "why.hpp"

using namespace kvferry;
using namespace std::chrono_literals;
using proto::extent;

namespace {

constexpr std::uint64_t region_bytes = 64 << 10;
constexpr std::uint8_t sentinel = 0x5a;

template<class T>
using reply = std::shared_ptr<std::optional<caf::expected<T>>>;

// The reply in a slot that has one (run_until_answered).
template<class T>
const caf::expected<T>& answer(const reply<T>& slot) {
  return **slot;
}

// Sends `left` for `peer` to `dest` when the scheduler first runs it (one
// dummy argument: see actor_fixture.hpp).
caf::behavior tell_left(caf::event_based_actor* self, transfer_actor dest,
                        std::string peer) {
  self->send(dest, left_atom::value, std::move(peer),
             make_error(ec::lease_expired, "test: its lease ran out"));
  self->quit();
  return {};
}

using settled_log = std::shared_ptr<std::vector<proto::order_settled>>;

// An endpoint's control actor in miniature: sends batch `b` to `dest` when
// first run and keeps what settles, until `expected` orders did.
caf::behavior batch_client(caf::event_based_actor* self, transfer_actor dest,
                           proto::order_batch b, std::size_t expected,
                           settled_log log) {
  self->send(dest, proto::order_batch_atom::value, std::move(b));
  return {[self, expected, log](proto::settled_atom,
                                std::vector<proto::order_settled>& list) {
    for (auto& s : list)
      log->push_back(std::move(s));
    if (log->size() >= expected)
      self->quit();
  }};
}

using answer_log =
    std::shared_ptr<std::vector<std::pair<std::string, proto::ep_settled>>>;

// A writing endpoint's control actor in miniature: keeps the answers that
// come in ep_batches (with their batches' senders) until `expected` did.
caf::behavior answer_collector(caf::event_based_actor* self,
                               std::size_t expected, answer_log log) {
  return {[self, expected, log](proto::ep_batch_atom, proto::ep_batch& b) {
    for (auto& a : b.answers)
      log->emplace_back(b.sender, std::move(a));
    if (log->size() >= expected)
      self->quit();
  }};
}

bool names(const caf::error& err, const std::string& what) {
  return render(err).find(what) != std::string::npos;
}

struct announce_fixture : test::actor_fixture {
  std::shared_ptr<memory_region> src =
      memory_region::allocate_host(region_bytes, "prefill pool");
  std::shared_ptr<memory_region> dst =
      memory_region::allocate_host(region_bytes, "decode pool");
  transfer_actor sender;
  transfer_actor receiver;
  proto::endpoint receiver_ep;

  announce_fixture() {
    auto net = transport::plugin::load(test::fake_plugin_path());
    for (std::uint64_t i = 0; i < region_bytes; ++i) // no two blocks alike
      src->data()[i] = static_cast<std::uint8_t>((i * 131 + i / 256) & 0xff);
    std::memset(dst->data(), sentinel, region_bytes);
    sender = spawn_transfer(sys, config("prefill-0", net, src));
    receiver = spawn_transfer(sys, config("decode-0", net, dst));
    auto ep = request<proto::endpoint>(receiver, proto::endpoint_atom::value);
    REQUIRE(ep);
    receiver_ep = std::move(*ep);
  }

  ~announce_fixture() override {
    caf::anon_send_exit(sender, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(receiver, caf::exit_reason::user_shutdown);
    run();
  }

  static transfer_config config(std::string name,
                                std::shared_ptr<transport::plugin> net,
                                std::shared_ptr<memory_region> region) {
    auto tc = kvferry::test::pair_transfer_config(
        std::move(name), std::move(net), std::move(region));
    tc.detached = false; // in the test's scheduler
    return tc;
  }

  // Send and recv orders, sent when the test next runs the scheduler; the
  // reply lands in the returned slot.
  reply<std::uint64_t> order_send(std::uint64_t id, extent e) {
    proto::send_order o;
    o.transfer_id = id;
    o.peer = receiver_ep;
    o.extents = {e};
    o.timeout_ms = 5000;
    return ask<std::uint64_t>(sender, proto::send_atom::value, std::move(o));
  }

  reply<proto::recv_report> order_recv(std::uint64_t id) {
    proto::recv_order o;
    o.transfer_id = id;
    o.peer_name = "prefill-0";
    o.timeout_ms = 5000;
    return ask<proto::recv_report>(receiver, proto::recv_atom::value,
                                   std::move(o));
  }

  template<class T, class... Ts>
  reply<T> ask(const transfer_actor& dest, Ts... xs) {
    auto out = std::make_shared<std::optional<caf::expected<T>>>();
    sys.spawn(test::detail::request_once<T, transfer_actor, Ts...>, dest, out,
              std::move(xs)...);
    return out;
  }

  // Runs until every slot has its reply: the transfer actors poll the plugin
  // from their progress loops, which back off into (virtual) delays.
  template<class Slots>
  void run_until_answered(const Slots& slots) {
    auto all_in = [&] {
      for (const auto& s : slots)
        if (!*s)
          return false;
      return true;
    };
    run();
    for (int i = 0; i < 1000 && !all_in(); ++i)
      advance_time(1ms);
    REQUIRE(all_in());
  }

  std::uint64_t announce_batches() {
    auto s = request<proto::transfer_stats>(sender, proto::stats_atom::value);
    REQUIRE(s);
    return s->announce_batches;
  }

  // Transfer `id` of 512 B from `src_offset` to `dst_offset`, both ends.
  void transfer_lands(std::uint64_t id, std::uint64_t src_offset,
                      std::uint64_t dst_offset) {
    auto recv = order_recv(id);
    auto sent = order_send(id, {src_offset, dst_offset, 512});
    run_until_answered(std::vector{sent});
    run_until_answered(std::vector{recv});
    REQUIRE_MESSAGE(answer(sent), test::why(answer(sent)));
    REQUIRE_MESSAGE(answer(recv), test::why(answer(recv)));
    CHECK(std::memcmp(dst->data() + dst_offset, src->data() + src_offset,
                      512) == 0);
  }
};

} // namespace

TEST_CASE_FIXTURE(announce_fixture,
                  "many transfers in flight to one peer are announced in one "
                  "batch and each lands where its order said") {
  transfer_lands(1, 0, 0); // the channel opens
  const auto batches_before = announce_batches();
  // 48 transfers of different sizes, their destinations in reverse order of
  // their sources: a receive posted out of order takes another transfer's
  // bytes (or size) and shows in the compare below.
  constexpr std::uint64_t count = 48;
  struct planned {
    std::uint64_t id;
    extent e;
  };
  std::vector<planned> plan;
  std::uint64_t src_at = 1024, dst_end = region_bytes;
  for (std::uint64_t k = 0; k < count; ++k) {
    std::uint64_t bytes = 256 + 32 * k;
    dst_end -= bytes;
    plan.push_back({100 + k, {src_at, dst_end, bytes}});
    src_at += bytes;
  }
  REQUIRE(src_at <= region_bytes);
  std::vector<reply<std::uint64_t>> sends;
  std::vector<reply<proto::recv_report>> recvs;
  for (const auto& p : plan) {
    sends.push_back(order_send(p.id, p.e));
    recvs.push_back(order_recv(p.id));
  }
  run_until_answered(sends);
  run_until_answered(recvs);
  for (std::uint64_t k = 0; k < count; ++k) {
    const auto& e = plan[k].e;
    INFO("transfer " << plan[k].id);
    const auto& sent = answer(sends[k]);
    const auto& got = answer(recvs[k]);
    REQUIRE_MESSAGE(sent, test::why(sent));
    REQUIRE_MESSAGE(got, test::why(got));
    CHECK(*sent == e.length);
    CHECK(got->bytes == e.length);
    CHECK(std::memcmp(dst->data() + e.dst_offset, src->data() + e.src_offset,
                      e.length) == 0);
  }
  // All 48 orders were in the sender's mailbox before its flush message.
  CHECK(announce_batches() == batches_before + 1);
}

TEST_CASE_FIXTURE(announce_fixture,
                  "a channel dropped while a batch is pending fails every "
                  "transfer of the batch at both ends with the reason") {
  transfer_lands(1, 0, 0); // the channel opens
  std::vector<reply<std::uint64_t>> sends;
  std::vector<reply<proto::recv_report>> recvs;
  for (std::uint64_t k = 0; k < 8; ++k) {
    recvs.push_back(order_recv(200 + k));
    sends.push_back(order_send(200 + k, {1024 * k, 4096 + 1024 * k, 1024}));
  }
  // Behind the orders, before the flush: the directory says decode-0 left,
  // and the sender drops its channel to it.
  sys.spawn(tell_left, sender, std::string{"decode-0"});
  run_until_answered(sends);
  run_until_answered(recvs);
  for (const auto& slot : sends) {
    const auto& s = answer(slot);
    REQUIRE_FALSE(s);
    INFO(render(s.error()));
    CHECK(is(s.error(), ec::peer_down));
    CHECK(names(s.error(), "lost peer 'decode-0'"));
    CHECK(names(s.error(), "the directory reports it left"));
  }
  // The receiver heard of every transfer of the batch, then of the drop.
  for (const auto& slot : recvs) {
    const auto& r = answer(slot);
    REQUIRE_FALSE(r);
    INFO(render(r.error()));
    CHECK(is(r.error(), ec::peer_down));
    CHECK(names(r.error(), "lost peer 'prefill-0'"));
    CHECK(names(r.error(), "it dropped its end of our channel"));
    CHECK(names(r.error(), "the directory reports it left"));
  }
  // The pair goes on over a fresh channel.
  transfer_lands(300, 8192, 16384);
}

TEST_CASE_FIXTURE(announce_fixture,
                  "an endpoint's batched sends each settle once, in lists "
                  "to the batch's sender, with the reason where one failed") {
  transfer_lands(1, 0, 0); // the channel opens
  // Six writes that land, and one out of the receiver's region (refused by
  // the sender; nothing of it is announced).
  proto::order_batch sends;
  for (std::uint64_t k = 0; k < 7; ++k) {
    proto::send_order o;
    o.transfer_id = 500 + k;
    o.peer = receiver_ep;
    o.extents = {{1024 * k, 8192 + 2048 * k, 1024}};
    if (k == 6)
      o.extents = {{0, region_bytes - 512, 1024}}; // past its end
    o.timeout_ms = 5000;
    sends.sends.push_back(std::move(o));
  }
  auto sent = std::make_shared<std::vector<proto::order_settled>>();
  sys.spawn(batch_client, sender, sends, std::size_t{7}, sent);
  run();
  for (int i = 0; i < 1000 && sent->size() < 7; ++i)
    advance_time(1ms);
  REQUIRE(sent->size() == 7);
  auto find = [&](std::uint64_t id) {
    std::size_t hits = 0;
    const proto::order_settled* found = nullptr;
    for (const auto& s : *sent)
      if (s.transfer_id == id) {
        ++hits;
        found = &s;
      }
    CHECK(hits == 1); // each order settles exactly once
    REQUIRE(found != nullptr);
    return *found;
  };
  for (std::uint64_t k = 0; k < 6; ++k) {
    INFO("transfer " << 500 + k);
    auto s = find(500 + k);
    REQUIRE_MESSAGE(!s.error, render(s.error));
    CHECK(s.peer == "decode-0");
    CHECK(s.bytes == 1024);
  }
  auto refused = find(506);
  INFO(render(refused.error));
  CHECK(is(refused.error, ec::invalid_extent));
  CHECK(names(refused.error, "send order 506 to 'decode-0'"));
  // Every byte of the six landed (a sender's settlement says they left:
  // poll the receiver's region until they are there), and nothing of the
  // refused one.
  auto landed = [&] {
    for (std::uint64_t k = 0; k < 6; ++k)
      if (std::memcmp(dst->data() + 8192 + 2048 * k, src->data() + 1024 * k,
                      1024) != 0)
        return false;
    return true;
  };
  for (int i = 0; i < 1000 && !landed(); ++i)
    advance_time(1ms);
  CHECK(landed());
  CHECK(dst->data()[region_bytes - 1] == sentinel);
}

TEST_CASE_FIXTURE(announce_fixture,
                  "a write with answer_to is answered by the receiving "
                  "transfer actor itself, once, with no claim, and leaves "
                  "nothing behind") {
  transfer_lands(1, 0, 0); // the channel opens
  auto answers = std::make_shared<
      std::vector<std::pair<std::string, proto::ep_settled>>>();
  auto writer = sys.spawn(answer_collector, std::size_t{5}, answers);
  auto write = [&](std::uint64_t id, extent e) {
    proto::send_order o;
    o.transfer_id = id;
    o.peer = receiver_ep;
    o.extents = {e};
    o.timeout_ms = 5000;
    o.answer_to = caf::actor_cast<caf::actor>(writer);
    return o;
  };
  auto sent = std::make_shared<std::vector<proto::order_settled>>();
  auto settle = [&](proto::order_batch b, std::size_t total) {
    sys.spawn(batch_client, sender, std::move(b), total, sent);
    run();
    for (int i = 0;
         i < 1000 && (sent->size() < total || answers->size() < total); ++i)
      advance_time(1ms);
    REQUIRE(sent->size() == total);
    REQUIRE(answers->size() == total);
  };
  proto::order_batch four;
  for (std::uint64_t k = 0; k < 4; ++k)
    four.sends.push_back(write(600 + k, {1024 * k, 8192 + 2048 * k, 1024}));
  settle(std::move(four), 4);
  // One whose extent lies past the receiver's region although its order's
  // table says it fits (a peer table gone stale): the sender's check
  // passes, the receiver refuses it (and drops the channel).
  proto::order_batch stale;
  stale.sends.push_back(write(604, {0, region_bytes + 4096, 1024}));
  stale.sends.back().peer.region_bytes = 2 * region_bytes;
  settle(std::move(stale), 5);
  auto find = [&](std::uint64_t id) {
    std::size_t hits = 0;
    std::pair<std::string, proto::ep_settled> found;
    for (const auto& a : *answers)
      if (a.second.transfer_id == id) {
        ++hits;
        found = a;
      }
    CHECK(hits == 1); // each write is answered exactly once
    return found;
  };
  for (std::uint64_t k = 0; k < 4; ++k) {
    INFO("transfer " << 600 + k);
    auto [by, a] = find(600 + k);
    CHECK(by == "decode-0"); // the receiver's name, which its endpoint shares
    REQUIRE_MESSAGE(!a.error, render(a.error));
    CHECK(std::memcmp(dst->data() + 8192 + 2048 * k, src->data() + 1024 * k,
                      1024) == 0);
  }
  auto [by, refused] = find(604);
  INFO(render(refused.error));
  CHECK(by == "decode-0");
  CHECK(is(refused.error, ec::invalid_extent));
  CHECK(names(refused.error, "transfer 604 from 'prefill-0'"));
  // Answered writes keep no entry for a claim: a claim of one now waits
  // for a transfer that will not come, and ends at its deadline.
  proto::recv_order late;
  late.transfer_id = 600;
  late.peer_name = "prefill-0";
  late.timeout_ms = 20;
  auto claim = ask<proto::recv_report>(receiver, proto::recv_atom::value,
                                       std::move(late));
  run();
  for (int i = 0; i < 1000 && !*claim; ++i) {
    advance_time(1ms);
    std::this_thread::sleep_for(1ms);
  }
  REQUIRE(*claim);
  CHECK(is(answer(claim).error(), ec::timeout));
}
