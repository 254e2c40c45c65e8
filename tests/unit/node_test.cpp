// kvferry::node (issue #15): two nodes in one process over kvsock (loopback),
// each with its own host-memory KV cache in a different layout (the prefill
// vLLM's per-layer tensors, the decode block-major). Push, pull all at once
// and layer by layer (layers made ready out of order and late) land byte
// for byte against a reference copy; errors name the request and peer; a
// peer that stops fails what waits on it, and the node stays usable.
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <doctest/doctest.h>

#include "node_cache.hpp"

using namespace kvferry;
using namespace std::chrono_literals;
using kvferry::test::host_cache;

namespace {

constexpr std::uint32_t layers = 3;
constexpr std::uint64_t blocks = 16;
constexpr std::uint64_t half_bytes = 1536;
constexpr auto patience = 20s; // a generous bound for CI under load

node start_node(const std::string& name, host_cache& cache) {
  node_options o;
  o.name = name;
  o.cache = cache.cache();
  o.timeout = 10s;
  auto n = node::start(std::move(o));
  REQUIRE_MESSAGE(n.ok(), n.error().message());
  return std::move(*n);
}

struct node_pair {
  host_cache src{kv_layout::vllm_per_layer(layers, blocks, half_bytes), 7};
  host_cache dst{kv_layout::block_major(layers, blocks, half_bytes), 0};
  node prefill = start_node("prefill-0", src);
  node decode = start_node("decode-0", dst);

  node_pair() {
    auto peer = decode.connect("127.0.0.1", prefill.port());
    REQUIRE_MESSAGE(peer.ok(), peer.error().message());
    CHECK(*peer == "prefill-0");
  }

  // Every byte of the decode cache is what the reference copy says.
  void check_landed(const std::vector<std::vector<std::uint8_t>>& before,
                    const std::vector<std::uint64_t>& src_blocks,
                    const std::vector<std::uint64_t>& dst_blocks) {
    auto want = dst.expected(before, src, src_blocks, dst_blocks);
    for (std::size_t r = 0; r < want.size(); ++r) {
      CAPTURE(r);
      CHECK(dst.regions[r] == want[r]);
    }
  }
};

request_stats done(const completion& c) {
  auto r = c.wait(patience);
  REQUIRE_MESSAGE(r.ok(), r.error().message());
  return *r;
}

status failure(const completion& c) {
  auto r = c.wait(patience);
  REQUIRE_FALSE(r.ok());
  return r.error();
}

bool names(const status& s, const std::string& what) {
  return s.message().find(what) != std::string::npos;
}

// Scattered ids, out of order, some adjacent (their extents coalesce).
const std::vector<std::uint64_t> src_ids{3, 4, 5, 11, 0, 15};
const std::vector<std::uint64_t> dst_ids{9, 10, 2, 7, 15, 0};
constexpr std::uint64_t request_bytes = 6 * layers * 2 * half_bytes;

} // namespace

TEST_CASE_FIXTURE(node_pair, "both nodes know each other after connect") {
  CHECK(prefill.peers() == std::vector<std::string>{"decode-0"});
  CHECK(decode.peers() == std::vector<std::string>{"prefill-0"});
  CHECK(prefill.name() == "prefill-0");
}

TEST_CASE_FIXTURE(node_pair, "push: send and receive move every layer's K and "
                             "V between different layouts, byte for byte") {
  auto before = dst.regions;
  auto rx = decode.receive(1, "prefill-0", dst_ids);
  auto tx = prefill.send(1, "decode-0", src_ids, dst_ids);
  auto sent = done(tx);
  auto got = done(rx);
  CHECK(sent.bytes == request_bytes);
  CHECK(got.bytes == request_bytes);
  CHECK(got.id == 1);
  CHECK(got.total >= got.data);
  CHECK(got.control == got.total - got.data);
  CHECK_FALSE(got.ipc);
  check_landed(before, src_ids, dst_ids);

  SUBCASE("the receive may come after the bytes landed") {
    before = dst.regions;
    std::vector<std::uint64_t> s{1, 2}, d{12, 13};
    done(prefill.send(2, "decode-0", s, d));
    auto late = done(decode.receive(2, "prefill-0", d));
    CHECK(late.bytes == 2 * layers * 2 * half_bytes);
    check_landed(before, s, d);
  }
}

TEST_CASE_FIXTURE(node_pair, "pull, all at once: the advert may come before or "
                             "after the pull") {
  auto before = dst.regions;
  auto offer = prefill.advertise(3, "decode-0", src_ids, false);
  auto got = done(decode.pull(3, "prefill-0", dst_ids));
  CHECK(got.bytes == request_bytes);
  CHECK(done(offer).bytes == request_bytes); // source blocks free again
  check_landed(before, src_ids, dst_ids);

  before = dst.regions;
  std::vector<std::uint64_t> s{8, 9, 10}, d{3, 4, 5};
  auto pulled = decode.pull(4, "prefill-0", d);
  auto offered = prefill.advertise(4, "decode-0", s, false);
  done(pulled);
  done(offered);
  check_landed(before, s, d);
}

TEST_CASE_FIXTURE(node_pair, "pull of an advert the decode knows: it orders "
                             "the prefill's transfer actor itself, and the "
                             "advert completes once the bytes landed") {
  std::mutex mtx;
  std::condition_variable cv;
  std::uint64_t notes = 0;
  decode.on_notification([&](const std::string&, const std::string&) {
    std::lock_guard<std::mutex> guard{mtx};
    ++notes;
    cv.notify_all();
  });
  for (std::uint64_t id : {20, 21}) {
    CAPTURE(id);
    auto before = dst.regions;
    auto offer = prefill.advertise(id, "decode-0", src_ids, false);
    // The prefill node sends its offer before this note (one sender, one
    // receiver: in order), so the pull below finds the offer.
    REQUIRE(prefill.notify("decode-0", "offered").ok());
    {
      std::unique_lock<std::mutex> lock{mtx};
      REQUIRE(cv.wait_for(lock, patience, [&] { return notes == id - 19; }));
    }
    auto got = done(decode.pull(id, "prefill-0", dst_ids));
    CHECK(got.bytes == request_bytes);
    CHECK(got.data > std::chrono::nanoseconds{0});
    auto freed = done(offer); // the decode's report: the bytes landed
    CHECK(freed.bytes == request_bytes);
    check_landed(before, src_ids, dst_ids);
  }
  // A pull into blocks the plan cannot fill fails on both sides.
  auto offer = prefill.advertise(22, "decode-0", src_ids, false);
  REQUIRE(prefill.notify("decode-0", "offered").ok());
  {
    std::unique_lock<std::mutex> lock{mtx};
    REQUIRE(cv.wait_for(lock, patience, [&] { return notes == 3; }));
  }
  auto short_pull = failure(decode.pull(22, "prefill-0", {1, 2}));
  CHECK(short_pull.code() == ec::invalid_argument);
  CHECK(names(short_pull, "request 22"));
  CHECK(failure(offer).code() == ec::invalid_argument);
}

TEST_CASE_FIXTURE(node_pair,
                  "pull, layer by layer: each layer moves once it is "
                  "ready, out of order and late") {
  auto before = dst.regions;
  auto offer = prefill.advertise(5, "decode-0", src_ids, true);
  auto pulled = decode.pull(5, "prefill-0", dst_ids);
  CHECK(prefill.layer_ready(5, 2).ok());
  CHECK(prefill.layer_ready(5, 0).ok());
  // Layer 1 is not written yet: neither side can be done.
  CHECK_FALSE(pulled.ready());
  CHECK_FALSE(offer.ready());
  CHECK(prefill.layer_ready(5, 1).ok());
  auto got = done(pulled);
  CHECK(got.bytes == request_bytes);
  CHECK(done(offer).bytes == request_bytes);
  check_landed(before, src_ids, dst_ids);
}

TEST_CASE_FIXTURE(node_pair,
                  "layers ready before the pull move when it comes") {
  auto before = dst.regions;
  auto offer = prefill.advertise(6, "decode-0", src_ids, true);
  for (std::uint32_t l = 0; l < layers; ++l)
    CHECK(prefill.layer_ready(6, l).ok());
  done(decode.pull(6, "prefill-0", dst_ids));
  done(offer);
  check_landed(before, src_ids, dst_ids);
}

TEST_CASE_FIXTURE(node_pair, "errors are values naming the request, the peer "
                             "or the block") {
  auto unknown = failure(prefill.send(7, "decode-9", {1}, {1}));
  CHECK(unknown.code() == ec::not_found);
  CHECK(names(unknown, "decode-9"));
  auto past = failure(prefill.send(8, "decode-0", {1, blocks}, {1, 2}));
  CHECK(past.code() == ec::invalid_argument);
  CHECK(names(past, "request 8"));
  CHECK(names(past, "block id #1 is 16"));
  auto before = dst.regions;
  auto uneven = failure(prefill.send(9, "decode-0", {1, 2}, {1}));
  CHECK(uneven.code() == ec::invalid_argument);
  // A pull into blocks this cache lacks is refused before it asks; the
  // offer stays open for a good one.
  auto offer = prefill.advertise(10, "decode-0", {1}, false);
  auto bad = failure(decode.pull(10, "prefill-0", {blocks + 3}));
  CHECK(bad.code() == ec::invalid_argument);
  CHECK_FALSE(offer.ready());
  done(decode.pull(10, "prefill-0", {5}));
  done(offer);
  auto not_open = prefill.layer_ready(11, 0);
  CHECK(not_open.code() == ec::not_found);
  CHECK(prefill.layer_ready(10, layers).code() == ec::invalid_argument);
  auto whole = prefill.advertise(18, "decode-0", {1}, false);
  CHECK(prefill.layer_ready(18, 0).code() == ec::invalid_argument);
  done(decode.pull(18, "prefill-0", {1}));
  done(whole);
  CHECK(decode.connect("127.0.0.1", 1).error().code() == ec::unreachable);
  // Nothing of that broke the pair.
  before = dst.regions;
  done(prefill.send(12, "decode-0", {2}, {6}));
  done(decode.receive(12, "prefill-0", {6}));
  check_landed(before, {2}, {6});
}

TEST_CASE_FIXTURE(node_pair, "notifications arrive in order, also those sent "
                             "before the callback was set") {
  CHECK(prefill.notify("decode-0", "first").ok());
  CHECK(prefill.notify("decode-0", "second").ok());
  CHECK(prefill.notify("nobody", "x").code() == ec::not_found);
  CHECK(prefill.notify("decode-0", std::string(65 * 1024, 'x')).code() ==
        ec::invalid_argument);
  std::mutex mtx;
  std::condition_variable cv;
  std::vector<std::string> got;
  decode.on_notification([&](const std::string& from, const std::string& p) {
    std::lock_guard<std::mutex> guard{mtx};
    got.push_back(from + ":" + p);
    cv.notify_all();
  });
  CHECK(prefill.notify("decode-0", "third").ok());
  std::unique_lock<std::mutex> lock{mtx};
  CHECK(cv.wait_for(lock, patience, [&] { return got.size() == 3; }));
  CHECK(got == std::vector<std::string>{"prefill-0:first", "prefill-0:second",
                                        "prefill-0:third"});
}

TEST_CASE_FIXTURE(node_pair, "completions: on_done runs once, at once when "
                             "already done") {
  auto c = prefill.send(13, "decode-0", {1}, {1});
  std::mutex mtx;
  std::condition_variable cv;
  int calls = 0;
  c.on_done([&](const result<request_stats>& r) {
    CHECK(r.ok());
    std::lock_guard<std::mutex> guard{mtx};
    ++calls;
    cv.notify_all();
  });
  done(decode.receive(13, "prefill-0", {1}));
  {
    std::unique_lock<std::mutex> lock{mtx};
    CHECK(cv.wait_for(lock, patience, [&] { return calls == 1; }));
  }
  bool at_once = false;
  c.on_done([&](const result<request_stats>&) { at_once = true; });
  CHECK(at_once);
  CHECK(completion{}.ready());
  CHECK(completion{}.wait(0ms).error().code() == ec::invalid_argument);
  auto open = decode.receive(14, "prefill-0", {1});
  CHECK(open.wait(1ms).error().code() == ec::timeout);
}

TEST_CASE_FIXTURE(node_pair, "a peer that stops fails what waits on it within "
                             "2 s, naming it; the node stays usable") {
  auto pulled = decode.pull(15, "prefill-0", dst_ids);
  auto offer = prefill.advertise(16, "decode-0", src_ids, true);
  prefill.stop();
  auto t0 = std::chrono::steady_clock::now();
  auto why = failure(pulled);
  CHECK(std::chrono::steady_clock::now() - t0 < 2s);
  CHECK(why.code() == ec::peer_down);
  CHECK(names(why, "prefill-0"));
  auto own = failure(offer); // the stopped node's own requests
  CHECK(own.code() == ec::peer_down);
  CHECK(names(own, "node 'prefill-0' stopped"));
  CHECK(decode.peers().empty());
  prefill.stop(); // idempotent
  // A new prefill under the same name.
  host_cache again{kv_layout::per_layer_block_first(layers, blocks, half_bytes),
                   9};
  auto fresh = start_node("prefill-0", again);
  REQUIRE(decode.connect("127.0.0.1", fresh.port()).ok());
  auto before = dst.regions;
  done(fresh.send(17, "decode-0", {0, 1}, {14, 15}));
  done(decode.receive(17, "prefill-0", {14, 15}));
  auto want = dst.expected(before, again, {0, 1}, {14, 15});
  CHECK(dst.regions == want);
}

TEST_CASE("start refuses a cache that does not match its layout") {
  node_options o;
  o.name = "n";
  CHECK(node::start(o).error().code() == ec::invalid_argument); // no layout
  host_cache c{kv_layout::vllm_per_layer(layers, blocks, half_bytes), 1};
  o.cache = c.cache();
  o.cache.bases.pop_back();
  auto refused = node::start(o);
  CHECK(refused.error().code() == ec::invalid_argument);
  CHECK(names(refused.error(), "3 regions, but 2 bases"));
  o.name.clear();
  CHECK(node::start(o).error().code() == ec::invalid_argument);
}
