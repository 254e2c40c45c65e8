// kvferry-bench-node: what a kvferry::node request costs beyond its bytes
// (issue #15). Two actor systems in one process, each with a node's actors
// (node_actors.hpp) over its own host-memory cache (vLLM per-layer on the
// prefill, block-major on the decode), connected over loopback TCP through
// CAF's middleman as two processes are. Reports, per request size:
//   - a pull's control overhead, total - data (the decode's call to its
//     reply, minus its data window: first announcement known to the last
//     byte landed), p50 and p99, beside the SAME RUN's CAF round trip
//     between the two systems (an empty request and its reply);
//   - the prefill's host time per block to plan and post a request (plan_kv
//     of every layer, the send order, the part note), measured as the time
//     the node actor takes for an advertise whose pull is already known,
//     minus a local round trip to it;
//   - peak RSS.
// A benchmark, not a test: it sleeps where it must let a message land.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <sys/resource.h>
#include <thread>
#include <vector>

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include "kvferry/actors/kv_layout.hpp"
#include "kvferry/node_actors.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "kvferry/runtime/tls.hpp"

using namespace kvferry;
using clock_type = std::chrono::steady_clock;

namespace {

constexpr std::uint32_t layers = 8;
constexpr std::uint64_t cache_blocks = 2048;
constexpr std::uint64_t half_bytes = 2048; // 16 tokens x 64 B
constexpr int rtt_samples = 300;

double us(clock_type::duration d) {
  return std::chrono::duration<double, std::micro>(d).count();
}

double pct(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * v.size()))];
}

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "kvferry-bench-node: %s\n", what.c_str());
  std::exit(1);
}

struct side {
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  std::vector<std::uint8_t> memory;
  std::vector<void*> bases;
  node_handles h;

  side(const std::string& name, kv_layout layout) {
    memory.assign(layout.region_bytes() * layout.region_count(), 1);
    for (std::size_t r = 0; r < layout.region_count(); ++r)
      bases.push_back(memory.data() + r * layout.region_bytes());
    node_options o;
    o.name = name;
    o.cache = {layout, bases, -1};
    auto spawned = spawn_node(sys, o);
    if (!spawned)
      die(render(spawned.error()));
    h = *spawned;
  }
  ~side() {
    caf::scoped_actor self{sys};
    self->send_exit(h.node, caf::exit_reason::user_shutdown);
    self->wait_for(h.node);
    self->send_exit(h.transfer, caf::exit_reason::user_shutdown);
    self->wait_for(h.transfer);
    sys.registry().erase(h.transfer->id()); // CAF #1110
    caf::logger::set_current_actor_system(nullptr);
  }
};

template<class Result, class Handle, class... Ts>
Result ask(caf::scoped_actor& self, const Handle& to, Ts&&... xs) {
  Result out{};
  self->request(to, std::chrono::seconds(30), std::forward<Ts>(xs)...)
      .receive([&](Result& r) { out = std::move(r); },
               [&](const caf::error& e) { die(render(e)); });
  return out;
}

std::vector<std::uint64_t> scattered(std::uint64_t n, std::uint64_t stride) {
  std::vector<std::uint64_t> ids(n);
  for (std::uint64_t i = 0; i < n; ++i)
    ids[i] = (i * stride) % cache_blocks;
  return ids;
}

} // namespace

int main(int argc, char** argv) {
  int repeats = argc > 1 ? std::atoi(argv[1]) : 50;
  side prefill{"prefill-0",
               kv_layout::vllm_per_layer(layers, cache_blocks, half_bytes)};
  side decode{"decode-0",
              kv_layout::block_major(layers, cache_blocks, half_bytes)};
  caf::scoped_actor a{prefill.sys}, b{decode.sys};
  // The decode system reaches the prefill's node over loopback TCP.
  caf::strong_actor_ptr remote;
  b->request(runtime::control_middleman(decode.sys), std::chrono::seconds(10),
             caf::connect_atom::value, std::string{"127.0.0.1"}, prefill.h.port)
      .receive([&](const caf::node_id&, caf::strong_actor_ptr& p,
                   const std::set<std::string>&) { remote = std::move(p); },
               [&](const caf::error& e) { die(render(e)); });
  auto prefill_remote = caf::actor_cast<node_actor>(remote);
  ask<std::string>(b, decode.h.node, proto::node_connect_atom::value,
                   caf::actor_cast<caf::actor>(prefill_remote));

  std::printf("kvferry-bench-node: %u layers, %llu-byte halves, vLLM "
              "per-layer -> block-major, host memory, kvsock over loopback, "
              "%d repeats\n",
              layers, static_cast<unsigned long long>(half_bytes), repeats);
  std::uint64_t id = 0;
  for (std::uint64_t n : {1ull, 64ull, 1000ull}) {
    auto src = scattered(n, 7), dst = scattered(n, 13);
    std::vector<double> rtt, control, total, data;
    auto one_rtt = [&] {
      auto t0 = clock_type::now();
      ask<std::vector<std::string>>(b, prefill_remote,
                                    proto::node_peers_atom::value);
      rtt.push_back(us(clock_type::now() - t0));
    };
    for (int i = 0; i < 20; ++i) // warm-up: channel, registrations
      one_rtt();
    rtt.clear();
    for (int r = 0; r < repeats + 2; ++r) {
      ++id;
      // The prefill advertised before the decode pulls (as a stack does).
      a->send(prefill.h.node, proto::node_advertise_atom::value,
              proto::node_request{id, "decode-0", src, {}, false});
      auto t0 = clock_type::now();
      auto rep = ask<proto::node_report>(
          b, decode.h.node, proto::node_pull_atom::value,
          proto::node_request{id, "prefill-0", dst, {}, false});
      auto t = us(clock_type::now() - t0);
      a->receive([](const proto::node_report&) {},
                 [](const caf::error& e) { die(render(e)); });
      auto d = (rep.data_end_ns - rep.data_start_ns) / 1e3;
      if (r >= 2) { // two warm-ups
        total.push_back(t);
        data.push_back(d);
        control.push_back(t - d);
      }
      // Interleaved: the round trips see the same load as the requests.
      for (int k = 0; k < rtt_samples / repeats + 1; ++k)
        one_rtt();
    }
    // Host time to plan and post: the pull is known first, then the
    // advertise's handler plans every layer and posts; a local request
    // queued behind it answers once it is done.
    std::vector<double> post;
    for (int r = 0; r < std::max(5, repeats / 5); ++r) {
      ++id;
      b->send(decode.h.node, proto::node_pull_atom::value,
              proto::node_request{id, "prefill-0", dst, {}, false});
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      auto t0 = clock_type::now();
      ask<std::vector<std::string>>(a, prefill.h.node,
                                    proto::node_peers_atom::value);
      auto local = clock_type::now() - t0;
      t0 = clock_type::now();
      a->send(prefill.h.node, proto::node_advertise_atom::value,
              proto::node_request{id, "decode-0", src, {}, false});
      ask<std::vector<std::string>>(a, prefill.h.node,
                                    proto::node_peers_atom::value);
      post.push_back(us(clock_type::now() - t0 - local) /
                     static_cast<double>(n));
      a->receive([](const proto::node_report&) {},
                 [](const caf::error& e) { die(render(e)); });
      b->receive([](const proto::node_report&) {},
                 [](const caf::error& e) { die(render(e)); });
    }
    std::printf("%5llu blocks (%7.2f MiB): control p50 %7.1f us p99 %7.1f us "
                "| CAF round trip p50 %6.1f us p99 %6.1f us | control/RTT "
                "p50 %.2fx | total p50 %8.1f us, data p50 %8.1f us | plan+post "
                "%.3f us/block (median)\n",
                static_cast<unsigned long long>(n),
                n * layers * 2.0 * half_bytes / (1 << 20), pct(control, 0.5),
                pct(control, 0.99), pct(rtt, 0.5), pct(rtt, 0.99),
                pct(control, 0.5) / pct(rtt, 0.5), pct(total, 0.5),
                pct(data, 0.5), pct(post, 0.5));
  }
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  std::printf("peak RSS %.1f MiB\n", ru.ru_maxrss / 1024.0);
  return 0;
}
