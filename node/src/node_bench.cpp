// run_node_bench (node_bench.hpp): the measurement behind `kvferry bench
// node`. A benchmark, not a test: it sleeps where it must let a message
// land (the planning rounds).
#include "kvferry/node_bench.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <sys/resource.h>
#include <thread>
#include <vector>

#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <fmt/format.h>

#include "kvferry/actors/kv_layout.hpp"
#include "kvferry/node_actors.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/stage_stamps.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "kvferry/runtime/tls.hpp"

namespace kvferry {

namespace {

using clock_type = std::chrono::steady_clock;

constexpr int rtt_samples = 300;

// Voluntary context switches of this process so far (every thread): each is
// a thread that blocked, mostly a hand-off between two actors' threads.
long switches() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_nvcsw;
}

double us(clock_type::duration d) {
  return std::chrono::duration<double, std::micro>(d).count();
}

double pct(std::vector<double> v, double p) {
  if (v.empty())
    return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * v.size()))];
}

// A failed step: run_node_bench turns it into its error.
// KVFERRY_STAGE_STAMPS=1: each 1-in-flight pull's stages (stage_stamps.hpp)
// as microseconds after the caller's send, and their medians on stderr.
void keep_stamps(std::vector<std::vector<double>>& splits) {
  const auto t0 = stage_stamps::stamps[stage_stamps::caller_sent].load();
  for (int s = 0; s < stage_stamps::stage_count; ++s)
    if (auto t = stage_stamps::stamps[s].load(); t != 0)
      splits[s].push_back(static_cast<double>(t - t0) / 1e3);
}

void print_splits(std::uint64_t blocks,
                  const std::vector<std::vector<double>>& splits) {
  std::string line;
  for (int s = 1; s < stage_stamps::stage_count; ++s)
    if (!splits[s].empty())
      line +=
          fmt::format("  {} {:.1f}",
                      stage_stamps::name(static_cast<stage_stamps::stage>(s)),
                      pct(splits[s], 0.5));
  fmt::print(stderr,
             "stages of a {}-block pull, p50 us after the caller's "
             "send:{}\n",
             blocks, line);
}

struct bench_failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// One node's actors in an actor system of its own, over a host-memory cache.
struct side {
  std::unique_ptr<runtime::system_config> cfg =
      std::make_unique<runtime::system_config>();
  std::unique_ptr<caf::actor_system> owned =
      std::make_unique<caf::actor_system>(*cfg);
  caf::actor_system& sys = *owned;
  std::string name;
  std::vector<std::uint8_t> memory;
  std::vector<void*> bases;
  node_handles h;

  side(const std::string& node_name, kv_layout layout,
       const std::string& plugin)
      : name(node_name) {
    memory.assign(layout.region_bytes() * layout.region_count(), 1);
    for (std::size_t r = 0; r < layout.region_count(); ++r)
      bases.push_back(memory.data() + r * layout.region_bytes());
    node_options o;
    o.name = name;
    o.cache = {layout, bases, -1};
    o.plugin = plugin;
    auto spawned = spawn_node(sys, o);
    if (!spawned)
      throw bench_failure(name + ": " + render(spawned.error()));
    h = *spawned;
  }
  // Bounded: CAF 0.17's ~actor_system can wait forever for a detached
  // actor whose handle went to the other side's system (issue #1196; seen
  // once in some 30 runs on the 2-core machine): the bench then still
  // exits, with a warning.
  ~side() {
    {
      caf::scoped_actor self{sys};
      runtime::stop_actor(self, h.node.address(), runtime::actor_stop_limit,
                          name + ": node actor");
      runtime::stop_actor(self, h.transfer.address(), runtime::actor_stop_limit,
                          name + ": transfer actor");
    }
    h = {}; // a detached actor's thread ends once its last handle is gone
    runtime::close_actor_system(std::move(owned), std::move(cfg),
                                runtime::system_close_limit, name);
  }
};

template<class Result, class Handle, class... Ts>
Result ask(caf::scoped_actor& self, const Handle& to, Ts&&... xs) {
  Result out{};
  self->request(to, std::chrono::seconds(30), std::forward<Ts>(xs)...)
      .receive([&](Result& r) { out = std::move(r); },
               [&](const caf::error& e) { throw bench_failure(render(e)); });
  return out;
}

template<class Result>
void expect(caf::scoped_actor& self, const char* what) {
  self->receive([](const Result&) {},
                [&](const caf::error& e) {
                  throw bench_failure(std::string{what} + ": " + render(e));
                },
                caf::after(std::chrono::seconds(30)) >>
                    [&] {
                      throw bench_failure(std::string{what} +
                                          ": no reply within 30 s");
                    });
}

std::vector<std::uint64_t> scattered(std::uint64_t n, std::uint64_t stride,
                                     std::uint64_t cache_blocks) {
  std::vector<std::uint64_t> ids(n);
  for (std::uint64_t i = 0; i < n; ++i)
    ids[i] = (i * stride) % cache_blocks;
  return ids;
}

struct bench {
  const node_bench_options& o;
  side prefill{
      "prefill-0",
      kv_layout::vllm_per_layer(o.layers, o.cache_blocks, o.half_bytes),
      o.plugin};
  side decode{"decode-0",
              kv_layout::block_major(o.layers, o.cache_blocks, o.half_bytes),
              o.plugin};
  caf::scoped_actor a{prefill.sys}, b{decode.sys};
  node_actor
      prefill_remote; // the prefill's node as the decode's system sees it
  std::uint64_t id = 0;

  explicit bench(const node_bench_options& opts) : o(opts) {
    // The decode system reaches the prefill's node over loopback TCP.
    caf::strong_actor_ptr remote;
    b->request(runtime::control_middleman(decode.sys), std::chrono::seconds(10),
               caf::connect_atom::value, std::string{"127.0.0.1"},
               prefill.h.port)
        .receive([&](const caf::node_id&, caf::strong_actor_ptr& p,
                     const std::set<std::string>&) { remote = std::move(p); },
                 [&](const caf::error& e) {
                   throw bench_failure("connect: " + render(e));
                 });
    prefill_remote = caf::actor_cast<node_actor>(remote);
    ask<std::string>(b, decode.h.node, proto::node_connect_atom::value,
                     caf::actor_cast<caf::actor>(prefill_remote));
    b->send(decode.h.node, proto::node_listen_atom::value,
            caf::actor_cast<caf::actor>(b));
  }

  // The prefill advertises request `id` and tells the decode so; the decode
  // pulls once it heard, as a serving stack's scheduler does. The note
  // travels behind the prefill node's offer (one sender, one receiver: in
  // order), so the pull is an offered one: the decode orders the prefill's
  // transfer actor itself. (Pulling at once instead races the offer: a pull
  // that comes first asks the prefill's node, a hop more.)
  // With `count` > 1, requests first_id .. first_id + count - 1 (the note
  // follows them all).
  void advertise_and_wait(const std::vector<std::uint64_t>& src,
                          std::uint64_t first_id, int count = 1) {
    for (int k = 0; k < count; ++k)
      a->send(prefill.h.node, proto::node_advertise_atom::value,
              proto::node_request{first_id + static_cast<std::uint64_t>(k),
                                  "decode-0",
                                  src,
                                  {},
                                  false});
    ask<caf::ok_atom>(a, prefill.h.node, proto::node_notify_atom::value,
                      std::string{"decode-0"}, std::string{"advertised"});
    b->receive(
        [](proto::node_note_atom, const std::string&, const std::string&) {},
        caf::after(std::chrono::seconds(30)) >>
            [] {
              throw bench_failure("the prefill's note did not come "
                                  "within 30 s");
            });
  }

  // The decode's pull, sent where a caller sends it
  // (node_handles::pulls_via_transfer).
  proto::node_report pull(proto::node_request req) {
    if (decode.h.pulls_via_transfer)
      return ask<proto::node_report>(
          b, decode.h.transfer, proto::node_pull_atom::value, std::move(req));
    return ask<proto::node_report>(
        b, decode.h.node, proto::node_pull_atom::value, std::move(req));
  }

  // Pulls requests first_id .. first_id + dsts.size() - 1 at once, each
  // into its own blocks; returns each one's reply time from the start,
  // in the order they came, and their reports.
  std::vector<double>
  pull_all(std::uint64_t first_id,
           const std::vector<std::vector<std::uint64_t>>& dsts,
           std::vector<proto::node_report>& reports) {
    std::vector<double> times;
    auto t0 = clock_type::now();
    for (std::size_t k = 0; k < dsts.size(); ++k) {
      proto::node_request req{first_id + k, "prefill-0", dsts[k], {}, false};
      if (decode.h.pulls_via_transfer)
        b->send(decode.h.transfer, proto::node_pull_atom::value, req);
      else
        b->send(decode.h.node, proto::node_pull_atom::value, req);
    }
    reports.clear();
    for (std::size_t k = 0; k < dsts.size(); ++k)
      b->receive(
          [&](proto::node_report& r) {
            times.push_back(us(clock_type::now() - t0));
            reports.push_back(std::move(r));
          },
          [&](const caf::error& e) { throw bench_failure(render(e)); },
          caf::after(std::chrono::seconds(30)) >>
              [] { throw bench_failure("a pull got no reply within 30 s"); });
    return times;
  }

  std::uint64_t lane_pulls() {
    return ask<proto::transfer_stats>(b, decode.h.transfer,
                                      proto::stats_atom::value)
        .lane_pulls;
  }

  node_bench_row run(std::uint64_t n) {
    node_bench_row row;
    row.blocks = n;
    row.bytes = n * o.layers * 2 * o.half_bytes;
    auto src = scattered(n, 7, o.cache_blocks);
    auto dst = scattered(n, 13, o.cache_blocks);
    std::vector<double> rtt, control, total, data, node_rtt, transfer_rtt;
    long rtt_switches = 0, pull_switches = 0;
    auto one_rtt = [&] {
      auto s0 = switches();
      auto t0 = clock_type::now();
      ask<std::vector<std::string>>(b, prefill_remote,
                                    proto::node_peers_atom::value);
      rtt.push_back(us(clock_type::now() - t0));
      rtt_switches += switches() - s0;
      // The hops a pull has beyond the round trip, priced alike: the
      // caller to its node actor (a scheduler thread) and to its transfer
      // actor (a thread of its own), each and back.
      t0 = clock_type::now();
      ask<std::vector<std::string>>(b, decode.h.node,
                                    proto::node_peers_atom::value);
      node_rtt.push_back(us(clock_type::now() - t0));
      t0 = clock_type::now();
      ask<proto::transfer_stats>(b, decode.h.transfer,
                                 proto::stats_atom::value);
      transfer_rtt.push_back(us(clock_type::now() - t0));
    };
    for (int i = 0; i < 20; ++i) // warm-up: channel, registrations
      one_rtt();
    rtt.clear();
    node_rtt.clear();
    transfer_rtt.clear();
    rtt_switches = 0;
    const auto lane_pulls_before = lane_pulls();
    const int inflight = std::max(1, o.inflight);
    std::vector<std::vector<std::uint64_t>> dsts(
        static_cast<std::size_t>(inflight));
    for (std::size_t k = 0; k < dsts.size(); ++k) // blocks of its own each
      for (auto block : dst)
        dsts[k].push_back((block + k * n) % o.cache_blocks);
    std::vector<double> rounds;
    std::vector<proto::node_report> reports;
    std::vector<std::vector<double>> splits(stage_stamps::stage_count);
    for (int r = 0; r < o.repeats + 2; ++r) {
      const auto first = id + 1;
      id += static_cast<std::uint64_t>(inflight);
      advertise_and_wait(src, first, inflight);
      auto s0 = switches();
      auto times = inflight == 1 ? std::vector<double>{}
                                 : pull_all(first, dsts, reports);
      if (inflight == 1) { // the caller's plain request, as before
        stage_stamps::clear();
        stage_stamps::stamp(stage_stamps::caller_sent);
        auto t0 = clock_type::now();
        reports = {
            pull(proto::node_request{first, "prefill-0", dst, {}, false})};
        times = {us(clock_type::now() - t0)};
        stage_stamps::stamp(stage_stamps::caller_got);
        if (r >= 2)
          keep_stamps(splits);
      }
      if (r >= 2)
        pull_switches += switches() - s0;
      for (int k = 0; k < inflight; ++k)
        expect<proto::node_report>(a, "advertise");
      if (r < 2) // two warm-ups
        continue;
      rounds.push_back(times.back());
      for (std::size_t k = 0; k < times.size(); ++k) {
        const auto& rep = reports[k];
        row.ipc = rep.ipc;
        auto d = static_cast<double>(rep.data_end_ns - rep.data_start_ns) / 1e3;
        total.push_back(times[k]);
        data.push_back(d);
        control.push_back(times[k] - d);
      }
      // Interleaved: the round trips see the same load as the requests.
      for (int k = 0; k < rtt_samples / o.repeats + 1; ++k)
        one_rtt();
    }
    row.lane = lane_pulls() > lane_pulls_before;
    if (stage_stamps::enabled)
      print_splits(n, splits);
    row.control_p50_us = pct(control, 0.5);
    row.control_p99_us = pct(control, 0.99);
    row.rtt_p50_us = pct(rtt, 0.5);
    row.rtt_p99_us = pct(rtt, 0.99);
    row.node_rtt_p50_us = pct(node_rtt, 0.5);
    row.transfer_rtt_p50_us = pct(transfer_rtt, 0.5);
    row.total_p50_us = pct(total, 0.5);
    row.round_p50_us = pct(rounds, 0.5);
    row.data_p50_us = pct(data, 0.5);
    row.switches_per_pull = static_cast<double>(pull_switches) /
                            static_cast<double>(o.repeats * inflight);
    row.switches_per_rtt =
        static_cast<double>(rtt_switches) /
        static_cast<double>(std::max<std::size_t>(1, rtt.size()));
    row.post_us_per_block = plan_and_post(n, src, dst, false);
    row.pull_post_us_per_block = plan_and_post(n, src, dst, true);
    return row;
  }

  // Host time per block to plan and post: the prefill's (the pull is known
  // first, its advertise plans every layer and posts) or, with
  // `decode_plans`, the decode's (the advertise is known first: an offered
  // pull plans both sides and orders the prefill's transfer actor: at the
  // decode's transfer actor, where the caller pulls). The other side's
  // message lands first; a local request to the planning actor queued
  // behind the timed one answers once it is done, minus a local round trip.
  double plan_and_post(std::uint64_t n, const std::vector<std::uint64_t>& src,
                       const std::vector<std::uint64_t>& dst,
                       bool decode_plans) {
    auto pull = [&] {
      proto::node_request req{id, "prefill-0", dst, {}, false};
      if (decode.h.pulls_via_transfer)
        b->send(decode.h.transfer, proto::node_pull_atom::value, req);
      else
        b->send(decode.h.node, proto::node_pull_atom::value, req);
    };
    auto advertise = [&] {
      a->send(prefill.h.node, proto::node_advertise_atom::value,
              proto::node_request{id, "decode-0", src, {}, false});
    };
    // The planner: the prefill's node, or the actor the decode pulls at.
    auto behind_planner = [&] {
      if (!decode_plans)
        ask<std::vector<std::string>>(a, prefill.h.node,
                                      proto::node_peers_atom::value);
      else if (decode.h.pulls_via_transfer)
        ask<proto::transfer_stats>(b, decode.h.transfer,
                                   proto::stats_atom::value);
      else
        ask<std::vector<std::string>>(b, decode.h.node,
                                      proto::node_peers_atom::value);
    };
    std::vector<double> post;
    for (int r = 0; r < std::max(5, o.repeats / 5); ++r) {
      ++id;
      decode_plans ? advertise() : pull();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      auto t0 = clock_type::now();
      behind_planner();
      auto local = clock_type::now() - t0;
      t0 = clock_type::now();
      decode_plans ? pull() : advertise();
      behind_planner();
      // Planning a few blocks takes less than the local round trip's own
      // jitter: a difference below zero reads as zero, not as a gain.
      post.push_back(std::max(0.0, us(clock_type::now() - t0 - local)) /
                     static_cast<double>(n));
      expect<proto::node_report>(a, "advertise");
      expect<proto::node_report>(b, "pull");
    }
    return pct(post, 0.5);
  }
};

} // namespace

result<std::vector<node_bench_row>>
run_node_bench(const node_bench_options& options) {
  if (options.repeats < 1 || options.layers == 0 || options.blocks.empty())
    return status{ec::invalid_argument,
                  "bench node: needs repeats >= 1, layers >= 1 and a size"};
  for (auto n : options.blocks)
    if (n == 0 || n > options.cache_blocks)
      return status{ec::invalid_argument,
                    "bench node: " + std::to_string(n) +
                        " blocks per request (1 to " +
                        std::to_string(options.cache_blocks) + ")"};
  const char* stamps = std::getenv("KVFERRY_STAGE_STAMPS");
  stage_stamps::enabled = stamps != nullptr && std::string{stamps} == "1";
  try {
    bench b{options};
    std::vector<node_bench_row> rows;
    for (auto n : options.blocks) {
      rows.push_back(b.run(n));
      if (options.on_row)
        options.on_row(rows.back());
    }
    return rows;
  } catch (const std::exception& e) {
    return status{ec::internal, std::string{"bench node: "} + e.what()};
  }
}

} // namespace kvferry
