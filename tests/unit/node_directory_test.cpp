// kvferry::node in directory mode (node_options::directory): nodes register
// with a real kvferry directory (spawned and published in this process, as
// `kvferry directory` does) and meet each other through it, without
// connect(); push and pull land byte for byte; a node that leaves
// mid-request fails what waits on it (peer_down, naming it) and is
// forgotten; registration problems are errors of start().
#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <caf/all.hpp>
#include <doctest/doctest.h>

#include "eventually.hpp"
#include "kvferry/actors/directory.hpp"
#include "kvferry/node.hpp"
#include "kvferry/node_actors.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "kvferry/runtime/tls.hpp"
#include "node_cache.hpp"
#include "why.hpp"

using namespace kvferry;
using namespace std::chrono_literals;
using kvferry::test::eventually;
using kvferry::test::host_cache;

namespace {

constexpr std::uint32_t layers = 2;
constexpr std::uint64_t blocks = 12;
constexpr std::uint64_t half_bytes = 1024;
constexpr auto patience = 20s; // a generous bound for CI under load
const std::string secret = "node-directory-test";

// A directory as `kvferry directory` runs it, in this process's own actor
// system (the nodes own theirs, as in separate processes).
struct directory_fixture {
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  directory_actor dir = spawn_directory(sys, directory_options{secret});
  std::uint16_t port = publish();
  std::string where = "127.0.0.1:" + std::to_string(port);

  std::uint16_t publish() {
    auto p = runtime::publish_control(dir, 0, "127.0.0.1");
    REQUIRE_MESSAGE(p, test::why(p));
    return *p;
  }

  ~directory_fixture() {
    caf::anon_send_exit(dir, caf::exit_reason::user_shutdown);
  }

  result<node> start(const std::string& name, host_cache& cache,
                     std::string pass = secret,
                     std::chrono::milliseconds timeout = 10s) {
    node_options o;
    o.name = name;
    o.cache = cache.cache();
    o.directory = where;
    o.secret = std::move(pass);
    o.timeout = timeout;
    return node::start(std::move(o));
  }

  node must_start(const std::string& name, host_cache& cache) {
    auto n = start(name, cache);
    REQUIRE_MESSAGE(n.ok(), n.error().message());
    return std::move(*n);
  }
};

bool knows(const node& n, const std::string& peer) {
  for (auto& p : n.peers())
    if (p == peer)
      return true;
  return false;
}

struct node_pair : directory_fixture {
  host_cache src{kv_layout::vllm_per_layer(layers, blocks, half_bytes), 3};
  host_cache dst{kv_layout::block_major(layers, blocks, half_bytes), 0};
  node prefill = must_start("prefill-0", src);
  node decode = must_start("decode-0", dst);

  node_pair() {
    // Each node meets the other once the directory told it of the other.
    REQUIRE(eventually([&] { return knows(prefill, "decode-0"); }, patience));
    REQUIRE(eventually([&] { return knows(decode, "prefill-0"); }, patience));
  }

  // Every byte of the decode cache is `before` with src's blocks `s` copied
  // to `d` (the reference copy).
  bool landed(const std::vector<std::vector<std::uint8_t>>& before,
              const std::vector<std::uint64_t>& s,
              const std::vector<std::uint64_t>& d) const {
    return dst.regions == dst.expected(before, src, s, d);
  }
};

// The request's stats; its failure ends the test case, saying why.
request_stats done(const completion& c) {
  auto outcome = c.wait(patience);
  REQUIRE_MESSAGE(outcome.ok(), outcome.error().message());
  return *outcome;
}

bool names(const status& s, const std::string& what) {
  return s.message().find(what) != std::string::npos;
}

} // namespace

TEST_CASE_FIXTURE(node_pair, "two nodes meet through the directory: push and "
                             "pull move every byte") {
  std::vector<std::uint64_t> s{0, 1, 2, 9}, d{5, 6, 11, 0};
  auto before = dst.regions;
  auto rx = decode.receive(1, "prefill-0", d);
  done(prefill.send(1, "decode-0", s, d));
  CHECK(done(rx).bytes == 4 * layers * 2 * half_bytes);
  CHECK(landed(before, s, d));

  before = dst.regions;
  std::vector<std::uint64_t> s2{4, 7, 8}, d2{1, 2, 3};
  auto offer = prefill.advertise(2, "decode-0", s2, true);
  auto pulled = decode.pull(2, "prefill-0", d2);
  for (std::uint32_t l = 0; l < layers; ++l)
    CHECK(prefill.layer_ready(2, l).ok());
  CHECK(done(pulled).bytes == 3 * layers * 2 * half_bytes);
  done(offer);
  CHECK(landed(before, s2, d2));
}

TEST_CASE_FIXTURE(node_pair, "a node that leaves mid-request fails what waits "
                             "on it, naming it, and is forgotten") {
  auto pulled = decode.pull(3, "prefill-0", {1, 2});
  CHECK_FALSE(pulled.ready());
  prefill.stop();
  auto r = pulled.wait(patience);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code() == ec::peer_down);
  CHECK(names(r.error(), "prefill-0"));
  CHECK(eventually([&] { return decode.peers().empty(); }, patience));
  // A node that joins later is met and works with the one that stayed.
  host_cache again{kv_layout::layer_major(layers, blocks, half_bytes), 9};
  auto late = must_start("prefill-1", again);
  // Each side meets the other on its own (docs/embedding.md: poll peers()).
  REQUIRE(eventually([&] { return knows(decode, "prefill-1"); }, patience));
  REQUIRE(eventually([&] { return knows(late, "decode-0"); }, patience));
  auto before = dst.regions;
  auto rx = decode.receive(4, "prefill-1", {7});
  done(late.send(4, "decode-0", {2}, {7}));
  done(rx);
  auto want = dst.expected(before, again, {2}, {7});
  CHECK(dst.regions == want);
}

TEST_CASE_FIXTURE(directory_fixture, "registration problems are errors of "
                                     "start, naming the node") {
  host_cache cache{kv_layout::block_major(layers, blocks, half_bytes), 0};
  auto wrong = start("decode-1", cache, "not the secret");
  REQUIRE_FALSE(wrong.ok());
  CHECK(wrong.error().code() == ec::unauthorized);

  auto first = must_start("decode-1", cache);
  host_cache other{kv_layout::block_major(layers, blocks, half_bytes), 0};
  auto taken = start("decode-1", other, secret, 2s);
  REQUIRE_FALSE(taken.ok());
  CHECK(taken.error().code() == ec::duplicate);
  CHECK(names(taken.error(), "node decode-1"));

  node_options o;
  o.name = "decode-2";
  o.cache = other.cache();
  o.directory = "no port";
  auto bad = node::start(std::move(o));
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().code() == ec::invalid_argument);
}

TEST_CASE("a directory of another kvferry build: start fails with mismatch, "
          "naming it") {
  // What a process built from other protocol headers offers CAF's handshake.
  runtime::system_config cfg;
  cfg.set("middleman.app-identifiers",
          std::vector<std::string>{"kvferry-wire-000000000000"});
  caf::actor_system sys{cfg};
  auto dir = spawn_directory(sys, directory_options{secret});
  auto port = runtime::publish_control(dir, 0, "127.0.0.1");
  REQUIRE(port);
  host_cache cache{kv_layout::block_major(layers, blocks, half_bytes), 0};
  node_options o;
  o.name = "decode-0";
  o.cache = cache.cache();
  const auto where = "127.0.0.1:" + std::to_string(*port);
  o.directory = where;
  o.secret = secret;
  auto n = node::start(std::move(o));
  REQUIRE_FALSE(n.ok());
  CHECK(n.error().code() == ec::mismatch);
  CHECK_MESSAGE(n.error().message().find("same kvferry build") !=
                    std::string::npos,
                n.error().message());
  CHECK_MESSAGE(names(n.error(), where), n.error().message());
  caf::anon_send_exit(dir, caf::exit_reason::user_shutdown);
}

TEST_CASE_FIXTURE(directory_fixture, "CAF level: spawn_node registers the "
                                     "node; its keeper ends with the node "
                                     "actor, and the directory drops it") {
  host_cache cache{kv_layout::block_major(layers, blocks, half_bytes), 0};
  // The caller's own system, closed as an embedder should (below).
  auto caller_cfg = std::make_unique<runtime::system_config>();
  auto caller_sys_ptr = std::make_unique<caf::actor_system>(*caller_cfg);
  caf::actor_system& caller_sys = *caller_sys_ptr;
  node_options o;
  o.name = "decode-5";
  o.cache = cache.cache();
  o.directory = where;
  o.secret = secret;
  auto h = spawn_node(caller_sys, o);
  REQUIRE_MESSAGE(h, test::why(h));
  REQUIRE(h->keeper);
  caf::scoped_actor dir_side{sys};
  auto listed = [&] {
    bool node_there = false;
    dir_side->request(dir, 5s, lookup_atom::value, std::string{"decode-5"})
        .receive(
            [&](const worker_info& w) {
              node_there =
                  is_node(w) && w.app == caf::actor_cast<caf::actor>(h->node);
            },
            [](const caf::error&) {});
    return node_there;
  };
  CHECK(listed());
  {
    caf::scoped_actor caller{caller_sys};
    caller->monitor(h->keeper);
    caller->send_exit(h->node, caf::exit_reason::user_shutdown);
    bool keeper_down = false;
    caller->receive(
        [&](const caf::down_msg& dm) {
          keeper_down = dm.source == h->keeper.address();
        },
        caf::after(patience) >> [] {});
    CHECK(keeper_down);
    CHECK(eventually([&] { return !listed(); }, patience));
    caller->send_exit(h->transfer, caf::exit_reason::user_shutdown);
    caller->wait_for(h->transfer); // before the cache goes
  }
  // Handles that went to another system sit in the registry, which blocks
  // ~actor_system in CAF 0.17 (actor-framework issue #1110).
  caller_sys.registry().erase(h->node->id());
  caller_sys.registry().erase(h->transfer->id());
  // A remote monitor's late down message can put one back (CAF 0.17): the
  // caller closes its system bounded, as kvferry::node does its own.
  *h = node_handles{};
  runtime::close_actor_system(std::move(caller_sys_ptr), std::move(caller_cfg),
                              10s, "the caller's system");
}
