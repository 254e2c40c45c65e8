// The receiving side's quarantine of timed-out CUDA IPC transfers as a pure
// state machine (kvferry/actors/ipc_quarantine.hpp): who is asked, what a
// sender's answer or departure releases, and when a consumer waiting to
// reuse the blocks hears they are safe.
#include <doctest/doctest.h>

#include "kvferry/actors/ipc_quarantine.hpp"

using kvferry::ipc_quarantine;

namespace {

const auto t0 = ipc_quarantine::clock::time_point{} + std::chrono::hours(1);

} // namespace

TEST_CASE("a held transfer stays held until its sender answers") {
  ipc_quarantine q;
  auto h = q.hold("prefill-0", 7, t0);
  CHECK(q.holds("prefill-0", 7));
  CHECK(q.size() == 1);
  CHECK(q.since(h) == t0);
  bool settled = false;
  q.when_settled("prefill-0", 7, [&] { settled = true; });
  CHECK_FALSE(settled);
  CHECK(q.waiters() == 1);
  CHECK(q.release(h));
  CHECK(settled);
  CHECK_FALSE(q.holds("prefill-0", 7));
  CHECK(q.size() == 0);
  CHECK(q.waiters() == 0);
  CHECK_FALSE(q.release(h)); // an answer after the release changes nothing
}

TEST_CASE("settling a transfer that is not held answers at once") {
  ipc_quarantine q;
  q.hold("prefill-0", 7, t0);
  int settled = 0;
  q.when_settled("prefill-0", 8, [&] { ++settled; }); // another transfer
  q.when_settled("prefill-1", 7, [&] { ++settled; }); // another sender
  CHECK(settled == 2);
  CHECK(q.waiters() == 0);
}

TEST_CASE("each hold is asked once, and again after an unanswered ask") {
  ipc_quarantine q;
  auto a = q.hold("prefill-0", 1, t0);
  auto b = q.hold("prefill-0", 2, t0);
  q.hold("prefill-1", 3, t0);
  auto asked = q.take_unasked("prefill-0");
  REQUIRE(asked.size() == 2);
  CHECK(asked[0].id == a);
  CHECK(asked[0].transfer == 1);
  CHECK(asked[1].id == b);
  CHECK(asked[1].transfer == 2);
  CHECK(q.take_unasked("prefill-0").empty()); // not twice
  q.ask_again(b);
  asked = q.take_unasked("prefill-0");
  REQUIRE(asked.size() == 1);
  CHECK(asked[0].id == b);
  CHECK(q.take_unasked("prefill-1").size() == 1);
  CHECK(q.take_unasked("decode-9").empty());
  q.release(a);
  q.ask_again(a); // released: nothing to ask again
  CHECK(q.take_unasked("prefill-0").empty());
}

TEST_CASE("a sender that is gone releases all its holds, and only its") {
  ipc_quarantine q;
  q.hold("prefill-0", 1, t0);
  q.hold("prefill-0", 2, t0);
  auto other = q.hold("prefill-1", 1, t0);
  int settled = 0;
  q.when_settled("prefill-0", 1, [&] { ++settled; });
  q.when_settled("prefill-0", 2, [&] { ++settled; });
  q.when_settled("prefill-1", 1, [&] { settled += 100; });
  CHECK(q.release_peer("prefill-0") == 2);
  CHECK(settled == 2);
  CHECK(q.size() == 1);
  CHECK(q.holds("prefill-1", 1));
  CHECK(q.release_peer("prefill-0") == 0);
  CHECK(q.release(other));
  CHECK(settled == 102);
}

TEST_CASE("the same transfer held twice settles when both holds end") {
  // A rerun with the same request id timed out again while the first
  // kernel still ran: each hold has its own ask and answer.
  ipc_quarantine q;
  auto first = q.hold("prefill-0", 5, t0);
  auto second = q.hold("prefill-0", 5, t0 + std::chrono::seconds(10));
  CHECK(first != second);
  bool settled = false;
  q.when_settled("prefill-0", 5, [&] { settled = true; });
  CHECK(q.release(second));
  CHECK_FALSE(settled);
  CHECK(q.holds("prefill-0", 5));
  CHECK(q.release(first));
  CHECK(settled);
}

TEST_CASE("a waiter may start a new hold from its callback") {
  ipc_quarantine q;
  auto h = q.hold("prefill-0", 5, t0);
  q.when_settled("prefill-0", 5, [&] { q.hold("prefill-0", 5, t0); });
  CHECK(q.release(h));
  CHECK(q.holds("prefill-0", 5)); // the new hold, untouched by the old
  CHECK(q.size() == 1);
}

TEST_CASE("leaving ends only the holds nobody could ask about") {
  // The directory's `left` may mean a lost lease of a live sender: what it
  // was asked about, it answers when its kernel ended.
  ipc_quarantine q;
  auto asked = q.hold("prefill-0", 1, t0);
  q.take_unasked("prefill-0");
  q.hold("prefill-0", 2, t0); // its sender was not known at the time
  q.hold("prefill-1", 3, t0);
  CHECK(q.release_unasked("prefill-0") == 1);
  CHECK(q.holds("prefill-0", 1));
  CHECK_FALSE(q.holds("prefill-0", 2));
  CHECK(q.holds("prefill-1", 3));
  CHECK(q.release(asked));
}
