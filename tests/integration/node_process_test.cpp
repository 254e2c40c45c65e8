// kvferry::node across two processes (issue #15): this test binary runs
// itself a second time as the prefill process (the "node peer process"
// case, chosen by KVFERRY_NODE_PEER), which takes its orders as
// notifications. The decode side here checks every byte against a
// reference copy of the prefill's seeded cache, and kills the prefill
// (SIGKILL) in the middle of a layer-by-layer pull: the pull fails within
// 2 s naming it, and the node goes on with a new prefill.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <doctest/doctest.h>

#include "kvferry_processes.hpp"
#include "node_cache.hpp"

using namespace kvferry;
using namespace std::chrono_literals;
using kvferry::test::host_cache;

namespace {

constexpr std::uint32_t layers = 4;
constexpr std::uint64_t blocks = 32;
constexpr std::uint64_t half_bytes = 4096;
constexpr std::uint64_t seed = 11;
constexpr auto patience = 30s;
const std::vector<std::uint64_t> src_ids{0, 1, 2, 9, 17, 30, 31};
const std::vector<std::uint64_t> dst_ids{5, 6, 7, 1, 31, 12, 13};

kv_layout prefill_layout() {
  return kv_layout::vllm_per_layer(layers, blocks, half_bytes);
}

// The prefill process: obeys "send ID", "advertise ID" (layerwise, layers
// marked ready out of order), "hold ID" (layerwise, only layer 0 ready;
// answers "held ID") and "quit", from whoever sent them.
void serve_as_prefill(const std::string& name) {
  host_cache cache{prefill_layout(), seed};
  node_options o;
  o.name = name;
  o.cache = cache.cache();
  auto n = node::start(std::move(o));
  REQUIRE_MESSAGE(n.ok(), n.error().message());
  std::mutex mtx;
  std::condition_variable cv;
  std::deque<std::pair<std::string, std::string>> orders;
  n->on_notification([&](const std::string& from, const std::string& p) {
    std::lock_guard<std::mutex> guard{mtx};
    orders.emplace_back(from, p);
    cv.notify_all();
  });
  std::printf("port %u\n", static_cast<unsigned>(n->port()));
  std::fflush(stdout);
  auto deadline = std::chrono::steady_clock::now() + 120s;
  while (std::chrono::steady_clock::now() < deadline) {
    std::unique_lock<std::mutex> lock{mtx};
    if (!cv.wait_until(lock, deadline, [&] { return !orders.empty(); }))
      break;
    auto [from, order] = orders.front();
    orders.pop_front();
    lock.unlock();
    std::istringstream in{order};
    std::string verb;
    std::uint64_t id = 0;
    in >> verb >> id;
    if (verb == "quit")
      break;
    if (verb == "send") {
      auto r = n->send(id, from, src_ids, dst_ids).wait(patience);
      REQUIRE_MESSAGE(r.ok(), r.error().message());
    } else if (verb == "advertise" || verb == "hold") {
      auto offer = n->advertise(id, from, src_ids, true);
      REQUIRE(n->layer_ready(id, 0).ok());
      if (verb == "hold") {
        REQUIRE(n->notify(from, "held " + std::to_string(id)).ok());
        continue;
      }
      for (std::uint32_t l = layers - 1; l > 0; --l)
        REQUIRE(n->layer_ready(id, l).ok());
      auto r = offer.wait(patience);
      REQUIRE_MESSAGE(r.ok(), r.error().message());
    }
  }
}

// The decode side: a node and its cache, and a prefill process to talk to.
struct decode_side {
  host_cache prefill_copy{prefill_layout(), seed}; // the reference
  host_cache dst{kv_layout::block_major(layers, blocks, half_bytes), 0};
  node decode = start();
  std::mutex mtx;
  std::condition_variable cv;
  std::vector<std::string> notes;

  node start() {
    node_options o;
    o.name = "decode-0";
    o.cache = dst.cache();
    auto n = node::start(std::move(o));
    REQUIRE_MESSAGE(n.ok(), n.error().message());
    n->on_notification([this](const std::string&, const std::string& p) {
      std::lock_guard<std::mutex> guard{mtx};
      notes.push_back(p);
      cv.notify_all();
    });
    return std::move(*n);
  }

  // Starts a prefill process named `name` and connects to it.
  std::unique_ptr<test::child> spawn_prefill(const std::string& name) {
    auto c = std::make_unique<test::child>(
        std::vector<std::string>{"-tc=node peer process*"}, "/proc/self/exe",
        std::vector<std::string>{"KVFERRY_NODE_PEER=" + name});
    auto line = c->wait_for_line("port ", patience);
    REQUIRE_MESSAGE(!line.empty(), c->text);
    auto port = static_cast<std::uint16_t>(std::stoi(line.substr(5)));
    auto peer = decode.connect("127.0.0.1", port);
    REQUIRE_MESSAGE(peer.ok(), peer.error().message());
    CHECK(*peer == name);
    return c;
  }

  bool heard(const std::string& note) {
    std::unique_lock<std::mutex> lock{mtx};
    return cv.wait_for(lock, patience, [&] {
      return std::find(notes.begin(), notes.end(), note) != notes.end();
    });
  }

  void check_landed(const std::vector<std::vector<std::uint8_t>>& before) {
    auto want = dst.expected(before, prefill_copy, src_ids, dst_ids);
    for (std::size_t r = 0; r < want.size(); ++r) {
      CAPTURE(r);
      CHECK(dst.regions[r] == want[r]);
    }
  }

  void push_and_check(const std::string& from, std::uint64_t id) {
    auto before = dst.regions;
    auto rx = decode.receive(id, from, dst_ids);
    REQUIRE(decode.notify(from, "send " + std::to_string(id)).ok());
    auto r = rx.wait(patience);
    REQUIRE_MESSAGE(r.ok(), r.error().message());
    CHECK(r->bytes == src_ids.size() * layers * 2 * half_bytes);
    check_landed(before);
  }
};

} // namespace

TEST_CASE("node peer process (run by the tests below)") {
  const char* name = std::getenv("KVFERRY_NODE_PEER");
  if (name != nullptr)
    serve_as_prefill(name);
}

TEST_CASE_FIXTURE(decode_side, "two processes: push and layer-by-layer pull "
                               "land byte for byte") {
  auto prefill = spawn_prefill("prefill-1");
  push_and_check("prefill-1", 1);
  auto before = dst.regions;
  auto pulled = decode.pull(2, "prefill-1", dst_ids);
  REQUIRE(decode.notify("prefill-1", "advertise 2").ok());
  auto r = pulled.wait(patience);
  REQUIRE_MESSAGE(r.ok(), r.error().message());
  check_landed(before);
  CHECK(decode.notify("prefill-1", "quit").ok());
  CHECK(prefill->wait_exit(patience) == 0);
}

TEST_CASE_FIXTURE(decode_side, "a prefill process killed mid-pull fails the "
                               "pull within 2 s, naming it; the node goes on") {
  auto prefill = spawn_prefill("prefill-1");
  auto pulled = decode.pull(3, "prefill-1", dst_ids);
  REQUIRE(decode.notify("prefill-1", "hold 3").ok());
  REQUIRE(heard("held 3")); // layer 0 is on its way, the rest never comes
  REQUIRE(kill(prefill->pid, SIGKILL) == 0);
  auto t0 = std::chrono::steady_clock::now();
  auto r = pulled.wait(patience);
  auto took = std::chrono::steady_clock::now() - t0;
  REQUIRE_FALSE(r.ok());
  INFO(r.error().message());
  CHECK(took < 2s);
  CHECK(r.error().code() == ec::peer_down);
  CHECK(r.error().message().find("prefill-1") != std::string::npos);
  CHECK(decode.peers().empty());
  // A new prefill process: the decode node is as good as new.
  auto again = spawn_prefill("prefill-2");
  push_and_check("prefill-2", 4);
}
