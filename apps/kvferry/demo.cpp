// `kvferry demo`: the main job. Starts a directory, one prefill worker and one
// decode worker as separate processes on this machine — both on GPU 0 with
// CUDA IPC between them when there is a GPU, else host memory over kvsock on
// loopback (--gpu, --transport; --prefill-gpu / --decode-gpu put the two
// workers on different GPUs of this host; two workers on one GPU run under a
// private MPS daemon, --mps) — or attaches to a running
// deployment with --directory — and acts as the router: a seeded stream of
// requests with random prompt lengths (or a trace's requests at their times,
// --trace: demo_trace.hpp), each one's KV blocks filled with a
// deterministic pattern by the producer, moved by the transfer actors and
// verified byte for byte (xxhash) by the consumer. Prints progress, then a
// table. Exits non-zero, naming what failed, on any mismatch or failure.
// Children are always reaped.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <caf/all.hpp>
#include <caf/io/middleman.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "commands.hpp"
#include "demo_local.hpp"
#include "demo_private_mps.hpp"
#include "demo_stages.hpp"
#include "demo_trace.hpp"
#include "geometry_flags.hpp"
#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/connect_peers.hpp"
#include "kvferry/actors/directory.hpp"
#include "kvferry/actors/router.hpp"
#include "kvferry/runtime/logging.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "percentile.hpp"
#include "pki.hpp"
#include "worker_process.hpp"

namespace kvferry::app {
namespace {

using namespace std::chrono;

// The GPU copy columns: kernel GB/s (bytes over the kernels' summed GPU
// time; one sender's kernels run one after another on its stream), then
// p50 / p99 of launch-to-kernel-start and of the window after the kernels;
// "-" where no request was timed on the GPU (plugin path).
std::string gpu_copy_columns(const router_results& out) {
  if (out.gpu_copy_ns <= 0)
    return "- | - | -";
  return fmt::format("{:.3f} | {:.0f} / {:.0f} | {:.0f} / {:.0f}",
                     static_cast<double>(out.gpu_copy_bytes) /
                         static_cast<double>(out.gpu_copy_ns),
                     percentile(out.gpu_queued_us, 0.5),
                     percentile(out.gpu_queued_us, 0.99),
                     percentile(out.after_kernel_us, 0.5),
                     percentile(out.after_kernel_us, 0.99));
}

// Finds the workers of both roles, waiting (up to 15 s) for them to register.
std::string find_workers(caf::actor_system& sys, const directory_actor& dir,
                         router_config& plan) {
  caf::scoped_actor self{sys};
  auto deadline = steady_clock::now() + seconds(15);
  std::string last_error;
  while (steady_clock::now() < deadline) {
    plan.producers.clear();
    plan.consumers.clear();
    self->request(dir, seconds(5), list_atom::value)
        .receive(
            [&](std::vector<worker_info>& all) {
              for (auto& w : all) {
                if (!w.app || is_node(w)) // a kvferry::node: no app
                  continue;
                if (w.role == worker_role::prefill)
                  plan.producers.push_back(
                      {w.name, caf::actor_cast<producer_actor>(w.app)});
                else
                  plan.consumers.push_back({w.name, w.app});
              }
            },
            [&](const caf::error& err) { last_error = render(err); });
    if (!plan.producers.empty() && !plan.consumers.empty())
      return {};
    std::this_thread::sleep_for(milliseconds(100));
  }
  return fmt::format("the directory lists {} prefill and {} decode workers "
                     "after 15 s{}",
                     plan.producers.size(), plan.consumers.size(),
                     last_error.empty() ? "" : " (" + last_error + ")");
}

// How the consumers' requests came in (credit or negotiated), so that a
// control figure can be read against the path it measured.
void print_credit_use(caf::actor_system& sys, const router_config& plan) {
  caf::scoped_actor self{sys};
  for (std::size_t k = 0; k < plan.consumers.size(); ++k)
    self->request(caf::actor_cast<consumer_actor>(plan.consumers[k].app),
                  seconds(5), proto::stats_atom::value)
        .receive(
            [&](const proto::consumer_stats& s) {
              fmt::print("consumer '{}': {} requests on credit, {} negotiated, "
                         "{} refused; {} blocks lent, {} credit returns;\n"
                         "  pool {} free + {} lent of {} blocks, {} requests "
                         "open; {} waited for blocks, {} of them failed\n",
                         plan.consumers[k].name, s.delegated, s.negotiated,
                         s.refused, s.lent_blocks, s.credit_returns,
                         s.free_blocks, s.lent_blocks, s.pool_blocks,
                         s.in_flight, s.waited, s.wait_failed);
            },
            [&](const caf::error& err) {
              fmt::print("consumer '{}': no stats ({})\n",
                         plan.consumers[k].name, render(err));
            });
}

// One round trip of caf_round_trip_us; false when no reply came.
bool round_trip(caf::scoped_actor& self, const router_config& plan,
                bool to_directory) {
  bool ok = false;
  auto failed = [](const caf::error&) {};
  if (to_directory)
    self->request(plan.directory, seconds(2), lookup_atom::value,
                  plan.producers.front().name)
        .receive([&](const worker_info&) { ok = true; }, failed);
  else
    self->request(caf::actor_cast<consumer_actor>(plan.consumers.front().app),
                  seconds(2), proto::stats_atom::value)
        .receive([&](const proto::consumer_stats&) { ok = true; }, failed);
  return ok;
}

// CAF's own cross-process round trip from this process to another (a
// request answered at once: the first decode worker's stats, or with the
// router in the decode worker's process, the directory's lookup of the
// first prefill worker), measured right after the run: the baseline beside
// which the control overhead per request reads, since every request crosses
// processes (router -> producer -> consumer -> router: three times, or two
// with the router in the decode worker's process). p50 in us, 0 when no
// reply came.
double caf_round_trip_us(caf::actor_system& sys, const router_config& plan,
                         bool router_in_decode) {
  constexpr int warm_up = 20, samples = 300;
  caf::scoped_actor self{sys};
  std::vector<double> micros;
  for (int k = 0; k < warm_up + samples; ++k) {
    auto t0 = steady_clock::now();
    if (!round_trip(self, plan, router_in_decode))
      return 0;
    if (k >= warm_up)
      micros.push_back(
          duration<double, std::micro>(steady_clock::now() - t0).count());
  }
  return percentile(std::move(micros), 0.5);
}

// Request ids are unique per run: a worker may still hold an earlier run's
// requests (a router killed, or one whose producer was stopped, leaves them
// open until the workers' deadlines), and the same ids again would be
// refused as duplicates. The base is random, below 2^51: transfer ids keep
// 52 bits of a request id (transfer_id_of), and base + requests stays
// below that. --request-id-base forces one (tests rerun with the same ids).
constexpr std::uint64_t request_id_base_limit = std::uint64_t{1} << 51;

std::uint64_t request_id_base_for(const std::optional<std::uint64_t>& forced) {
  if (forced)
    return *forced;
  std::random_device entropy;
  auto r = (std::uint64_t{entropy()} << 32) ^ entropy();
  return r % request_id_base_limit;
}

// The run's requests (a trace's, or seeded prompt lengths) and how the
// router sends them.
void plan_requests(const demo_command& cmd, const demo_trace& trace,
                   router_config& plan) {
  std::mt19937_64 rng{cmd.seed};
  std::uniform_int_distribution<std::uint32_t> length{cmd.min_tokens,
                                                      cmd.max_tokens};
  plan_trace_requests(trace, plan);
  for (std::uint64_t i = 0; i < cmd.requests && cmd.trace.file.empty(); ++i)
    plan.tokens.push_back(length(rng));
  plan.layerwise = cmd.layerwise;
  plan.pull = cmd.pull;
  plan.seed = cmd.seed;
  plan.sampled_verify = cmd.verify == "sampled";
  // Request i (0-based) has id base + i + 1.
  plan.first_request_id = request_id_base_for(cmd.request_id_base) + 1;
  plan.inflight = std::max<std::uint32_t>(1, cmd.inflight);
  plan.routing_policy = *parse_routing(cmd.routing); // checked by the flag
  plan.timeout_ms = cmd.timeout_ms;
  plan.warm_up_tokens = cmd.warm_up ? cmd.geometry.block_tokens : 0;
  plan.on_warm_up = [](std::size_t pairs, caf::timespan took) {
    fmt::print(stderr,
               "kvferry demo: warm-up ({} request(s), one per worker "
               "pair: first-contact set-up) took {:.1f} ms, not counted "
               "below\n",
               pairs, duration<double, std::milli>(took).count());
  };
}

// Waits for the router's run to end, printing progress every 500 ms. None
// once it ended; the exit code when a stop signal or --deadline-s came first.
std::optional<int> await_run(const demo_command& cmd, const router_run& run,
                             local_processes& local) {
  auto deadline = steady_clock::now() + seconds(cmd.deadline_s);
  while (!run.wait_finished(milliseconds(500))) {
    if (steady_clock::now() > deadline) {
      std::cerr << "kvferry demo: FAILED: requests still in flight after "
                << cmd.deadline_s << " s\n";
      return 1;
    }
    if (stop_signal() != 0)
      return interrupted();
    for (auto& c : local.children)
      if (!c->running()) {
        std::cerr << "kvferry demo: a child process died; waiting for the "
                     "requests in flight to fail\n";
        break;
      }
    if (!cmd.quiet) {
      auto r = run.snapshot();
      auto secs = duration<double>(steady_clock::now() - r.start).count();
      fmt::print(stderr, "  {}/{} requests, {:.2f} GB moved, {:.2f} GB/s\n",
                 r.done, cmd.requests, r.bytes / 1e9,
                 r.bytes / 1e9 / std::max(secs, 1e-9));
    }
  }
  return std::nullopt;
}

// Where the router ran, for the settings line and the header.
const char* router_placement(const demo_command& cmd) {
  return router_in_decode(cmd) ? "router in the decode worker's process"
                               : "router in a process of its own";
}

// The run's settings, one line above either table.
void print_settings(const demo_command& cmd, const std::string& memory) {
  fmt::print("\n{}, {}{}, {}, chunk {} B, {} comms per peer, verify {}; "
             "columns: docs/deploy.md\n",
             memory, cmd.pull ? "pull" : "push",
             cmd.layerwise ? " by layer" : "", router_placement(cmd),
             cmd.chunk_bytes, cmd.comms_per_peer, cmd.verify);
}

// The default table: what a user checks first, within 100 columns.
void print_summary_table(const router_results& r, double caf_rtt_us) {
  auto secs = duration<double>(r.end - r.start).count();
  fmt::print("| requests | failed | GB | wall s | GB/s | data GB/s | p50 ms | "
             "p99 ms | ctrl p50 us | CAF RTT us |\n"
             "|---|---|---|---|---|---|---|---|---|---|\n"
             "| {} | {} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | "
             "{:.3f} | {:.0f} | {:.0f} |\n",
             r.done, r.failed, r.bytes / 1e9, secs, r.bytes / 1e9 / secs,
             data_rate_gbps(r), percentile(r.latency_us, 0.5) / 1e3,
             percentile(r.latency_us, 0.99) / 1e3,
             percentile(r.control_us, 0.5), caf_rtt_us);
}

// --breakdown: every column, the GPU copy split included (scripts read it).
void print_breakdown_table(const std::string& memory, const router_results& r,
                           double caf_rtt_us) {
  auto secs = duration<double>(r.end - r.start).count();
  fmt::print(
      "| memory | requests | failed | bytes moved | wall s | GB/s | data "
      "GB/s | GPU copy GB/s | launch to kernel us p50 / p99 | after "
      "kernel us p50 / p99 | p50 ms | p99 ms | control p50 us | "
      "control p99 us | CAF RTT p50 us | fill + verify us p50 |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
      "| {} | {} | {} | {} | {:.3f} | {:.3f} | {:.3f} | {} | {:.3f} "
      "| {:.3f} | {:.0f} | {:.0f} | {:.0f} | {:.0f} |\n",
      memory, r.done, r.failed, r.bytes, secs, r.bytes / 1e9 / secs,
      data_rate_gbps(r), gpu_copy_columns(r),
      percentile(r.latency_us, 0.5) / 1e3, percentile(r.latency_us, 0.99) / 1e3,
      percentile(r.control_us, 0.5), percentile(r.control_us, 0.99), caf_rtt_us,
      percentile(r.compute_us, 0.5));
}

// Beside the run's GB/s (first send to last answer): the rate while all
// `inflight` requests were open, which a short run's start and end weigh
// less on (demo_stages.hpp).
void print_steady_rate(const router_results& r, std::uint32_t inflight) {
  auto steady = steady_gbps(r, inflight);
  if (steady <= 0)
    return;
  fmt::print("steady GB/s: {:.3f} (requests {}-{} of {} by answer, while {} "
             "were in flight all along: the first wave's start and the last "
             "wave's drain left out)\n",
             steady, inflight + 1, r.requests.size() - inflight,
             r.requests.size(), inflight);
}

void print_table(const demo_command& cmd, const std::string& memory,
                 const router_results& r, double caf_rtt_us) {
  print_settings(cmd, memory);
  if (cmd.breakdown) {
    print_breakdown_table(memory, r, caf_rtt_us);
    fmt::print("\n{}", stage_table(r));
    print_steady_rate(r, cmd.inflight);
  } else
    print_summary_table(r, caf_rtt_us);
}

// Where the run's workers are: the directory and what the demo knows of
// the workers it started.
struct demo_site {
  std::string directory; // HOST:PORT
  std::string memory;    // for the header and the table
  worker_gpus gpus;
  worker_pools pools;
  std::string host;
  std::uint16_t port = 0;
};

// The decode worker in this process (router_in_decode): started in the
// router's actor system, and registered before the router looks for
// workers. 0, or the demo's exit code.
int start_decode_here(caf::actor_system& sys, const demo_command& cmd,
                      const demo_site& site,
                      std::optional<worker_handle>& decode) {
  auto opts = decode_worker_options(cmd, site.gpus, site.pools);
  opts.directory_host = site.host;
  opts.directory_port = site.port;
  auto started = start_worker(sys, opts);
  if (!started) {
    std::cerr << "kvferry demo: " << render(started.error()) << "\n";
    return start_failed(cmd, 1);
  }
  decode.emplace(std::move(*started));
  int sig = 0;
  auto err = decode->await_registration(seconds(10), [&] {
    sig = stop_signal();
    return sig != 0;
  });
  if (sig != 0)
    return interrupted();
  if (err) {
    std::cerr << "kvferry demo: " << render(err) << "\n";
    return start_failed(cmd, 1);
  }
  return 0;
}

// The router's messages to the decode worker of this process go to its
// actor itself, never through a proxy.
void use_local_consumer(router_config& plan, const worker_handle& decode) {
  for (auto& c : plan.consumers)
    if (c.name == decode.info.name)
      c.app = decode.app;
}

// Runs the requests against the workers at `site` (with the decode worker
// in this process when router_in_decode: `decode` holds it) and reports.
// The demo's exit code.
int route(const demo_command& cmd, caf::actor_system& sys,
          const demo_site& site, const demo_trace& trace,
          local_processes& local, std::optional<worker_handle>& decode) {
  if (router_in_decode(cmd))
    if (auto code = start_decode_here(sys, cmd, site, decode))
      return code;
  auto dir = connect_directory(sys, site.host, site.port);
  if (!dir) {
    std::cerr << "kvferry demo: " << render(dir.error()) << "\n";
    return 1;
  }
  router_config plan;
  if (auto bad = find_workers(sys, *dir, plan); !bad.empty()) {
    std::cerr << "kvferry demo: " << bad << "\n";
    return 1;
  }
  if (decode)
    use_local_consumer(plan, *decode);
  plan.directory = *dir;
  plan.directory_name = site.directory;
  // Straight to the workers, not through the directory's node. Our own
  // decode worker has dialled the prefill workers already (start_worker,
  // and its linker for later ones): a second dial of the same node from
  // this process, while the first is still under way, lost a message under
  // load.
  if (!decode)
    connect_members(sys, *dir, std::nullopt, seconds(5));
  if (stop_signal() != 0)
    return interrupted();
  plan_requests(cmd, trace, plan);
  fmt::print(stderr,
             "kvferry demo: {} requests ({}-{} tokens, seed {}, ids {}+), {} "
             "mode{}, {} in flight, {} prefill / {} decode workers on {}, "
             "directory {}, {}\n",
             cmd.requests, cmd.min_tokens, cmd.max_tokens, cmd.seed,
             plan.first_request_id, cmd.pull ? "pull" : "push",
             cmd.layerwise ? ", layer by layer" : "", plan.inflight,
             plan.producers.size(), plan.consumers.size(), site.memory,
             site.directory, router_placement(cmd));
  auto run = std::make_shared<router_run>();
  auto router = spawn_router(sys, plan, run);
  if (auto code = await_run(cmd, *run, local)) {
    caf::anon_send_exit(router, caf::exit_reason::user_shutdown);
    return *code;
  }
  auto r = run->snapshot();
  // After a failed run a worker may be gone: no baseline then.
  auto caf_rtt_us =
      r.failed == 0 ? caf_round_trip_us(sys, plan, decode.has_value()) : 0.0;
  print_table(cmd, site.memory, r, caf_rtt_us);
  if (auto bad = write_demo_trace(cmd, trace, plan, r); !bad.empty()) {
    std::cerr << "kvferry demo: FAILED: " << bad << "\n";
    return 1;
  }
  if (!r.stopped_because.empty())
    std::cerr << "kvferry demo: FAILED: " << r.stopped_because << "\n";
  if (r.failed > 0) {
    std::cerr << "kvferry demo: FAILED: " << r.failed << " of " << r.done
              << " requests failed (of " << cmd.requests
              << " planned); first errors:\n";
    for (std::size_t k = 0; k < std::min<std::size_t>(5, r.errors.size()); ++k)
      std::cerr << "  " << r.errors[k] << "\n";
    return 1;
  }
  if (!r.stopped_because.empty())
    return 1;
  print_credit_use(sys, plan);
  if (cmd.verify == "sampled")
    std::cout << "kvferry demo: OK, " << r.done
              << " requests verified by sampling (a 16-byte stamp per 4 KiB "
                 "page)\n";
  else
    std::cout << "kvferry demo: OK, every byte of " << r.done
              << " requests verified\n";
  return 0;
}

int run_demo(demo_command& cmd) {
  if (auto bad = resolve_dtype(cmd.geometry, cmd.dtype); !bad.empty()) {
    std::cerr << "kvferry demo: " << bad << "\n";
    return 2;
  }
  if (auto bad = cmd.geometry.validate(); !bad.empty()) {
    std::cerr << "kvferry demo: " << bad << "\n";
    return 2;
  }
  demo_trace trace; // --trace: its requests set the token range
  if (auto bad = cmd.trace.file.empty() ? "" : load_demo_trace(cmd, trace);
      !bad.empty()) {
    std::cerr << "kvferry demo: " << bad << "\n";
    return 2;
  }
  if (cmd.min_tokens == 0 || cmd.min_tokens > cmd.max_tokens) {
    std::cerr << "kvferry demo: need 0 < --min-tokens <= --max-tokens\n";
    return 2;
  }
  // Both pools must hold `inflight` of the largest requests at once.
  auto max_blocks =
      std::uint64_t{cmd.geometry.blocks_for_tokens(cmd.max_tokens)} *
      cmd.geometry.layers;
  auto pool_blocks = max_blocks * cmd.inflight;
  if (cmd.transport != "ipc" && cmd.transport != "net") {
    std::cerr << "kvferry demo: --transport '" << cmd.transport
              << "': expected ipc or net\n";
    return 2;
  }
  auto mode = parse_mps_mode(cmd.mps);
  if (!mode) {
    std::cerr << "kvferry demo: --mps '" << cmd.mps
              << "': expected auto, on or off\n";
    return 2;
  }
  worker_gpus gpus;
  if (cmd.directory.empty()) {
    if (auto bad = choose_worker_gpus(cmd, gpus); !bad.empty()) {
      std::cerr << "kvferry demo: " << bad << "\n";
      return start_failed(cmd, 2); // the parent's check passed: MPS's fault
    }
  }
  auto mps = choose_mps(mps_facts_for(cmd, *mode, gpus));
  if (!mps.why.empty())
    std::cerr << "kvferry demo: " << mps.why << "\n";
  if (mps.exit_code != 0)
    return mps.exit_code;
  // This process initialised CUDA (above) before the daemon exists, so it
  // cannot be the daemon's client: the demo runs as a child of it that is.
  if (rerun_under_private_daemon(router_in_decode(cmd), mps)) {
    if (auto code = run_under_private_daemon(cmd, gpus))
      return *code;
    mps = {}; // here, without MPS: said why
  }
  auto memory = cmd.directory.empty() ? describe_worker_memory(gpus) +
                                            via(gpus, cmd.transport, cmd.plugin)
                                      : std::string{"the deployment's memory"};
  // Credit needs blocks of its own: the decode pool holds what the requests
  // in flight may negotiate (pool_blocks; a pool that runs dry fails a
  // request) plus `spare` blocks that it lends the producer ahead of time
  // (see app.hpp). The lending percentage is rounded down, so the loan
  // never eats into pool_blocks. Spare: one of the largest requests, and at
  // least 64 blocks so that small requests find credit while the previous
  // batch of returned blocks is still on its way.
  auto spare = std::max<std::uint64_t>(max_blocks, 64);
  auto decode_pool_blocks = pool_blocks + spare;
  auto decode_lend_percent = spare * 100 / decode_pool_blocks;
  // With credit the consumer answers as soon as the bytes landed, possibly
  // before the producer's transfer actor has reported its send done and the
  // source blocks are free again: room for one more of the largest requests
  // keeps the producer from waiting for them (it would, not fail).
  auto prefill_pool_blocks = pool_blocks + max_blocks;

  // Outlives `local`: the children read their certificates from it.
  throwaway_pki pki;
  if (cmd.directory.empty() && !cmd.runtime.tls.insecure_plaintext) {
    if (auto err =
            pki.create({"directory", "demo-prefill-0", demo_decode_name})) {
      std::cerr << "kvferry demo: " << render(err) << "\n";
      return 1;
    }
    setenv("KVFERRY_TLS_DIR", pki.dir().c_str(), 1); // for the children
    cmd.runtime.tls.dir = pki.dir();
  }
  // From here on there is something to stop: processes, then a run.
  stop_gracefully();
  local_processes local;
  std::string directory = cmd.directory;
  worker_pools pools{prefill_pool_blocks, decode_pool_blocks,
                     decode_lend_percent};
  if (directory.empty()) {
    if (auto code = start_locally(cmd, gpus, pools, mps, local, directory))
      return code;
    if (shared_gpu(gpus) >= 0)
      memory += local.under_mps ? ", MPS on" : ", MPS off";
  }
  demo_site site;
  site.directory = directory;
  site.memory = memory;
  site.gpus = gpus;
  site.pools = pools;
  if (auto err = parse_host_port(directory, site.host, site.port)) {
    std::cerr << "kvferry demo: --directory: " << render(err) << "\n";
    return 2;
  }
  auto cfg = std::make_unique<runtime::system_config>(cmd.runtime);
  // With the decode worker in this process, this process presents its
  // certificate and sets up what a worker's process needs.
  auto identity = router_in_decode(cmd) ? demo_decode_name : client_identity;
  if (auto err = cfg->secure(cmd.runtime.tls, identity)) {
    std::cerr << "kvferry demo: " << render(err) << "\n";
    return 1;
  }
  if (router_in_decode(cmd)) {
    prepare_worker_process(demo_decode_name, "127.0.0.1");
    no_automatic_connections(*cfg);
  }
  auto sys = std::make_unique<caf::actor_system>(*cfg);
  std::optional<worker_handle> decode;
  auto code = route(cmd, *sys, site, trace, local, decode);
  if (!decode)
    return code; // the actor system goes, then the children stop
  // The decode worker leaves and stops, then the children. The actor system
  // is left to the process's end (add_demo ends it with _Exit, as `kvferry
  // worker` does): in CAF 0.17 ~actor_system may wait for a detached actor
  // whose handle went to a peer (actor-framework issue #1196). Our actors
  // have stopped; the plugin's sockets and memory go with the process.
  decode->stop();
  local.children.clear();
  static_cast<void>(sys.release());
  static_cast<void>(cfg.release());
  return code;
}

} // namespace

void add_demo(CLI::App& root, int& exit_code) {
  auto cmd = std::make_shared<demo_command>();
  auto* sub = root.add_subcommand(
      "demo", "Run a directory, a prefill and a decode worker and move "
              "verified KV cache between them");
  sub->add_option("--requests", cmd->requests)->capture_default_str();
  sub->add_flag("--layerwise", cmd->layerwise, "ship layer by layer");
  sub->add_flag("--pull", cmd->pull,
                "the consumer reads what the producer advertises");
  sub->add_option("--seed", cmd->seed)->capture_default_str();
  sub->add_option("--request-id-base", cmd->request_id_base,
                  "request ids are BASE+1..BASE+N (warm-ups after); default: "
                  "a random base per run, so that requests an earlier run "
                  "left open on the workers cannot collide with this run's")
      ->check(CLI::Range(std::uint64_t{0}, request_id_base_limit));
  sub->add_flag("!--no-warm-up", cmd->warm_up,
                "count the first request to each worker too (by default one "
                "small request per worker pair runs before the clock starts, "
                "its time printed)");
  sub->add_option("--directory", cmd->directory,
                  "HOST:PORT: use a running deployment's workers instead of "
                  "starting processes");
  sub->add_option("--router", cmd->router,
                  "where the router runs when the demo starts the workers: "
                  "decode (in this process, which is then also the decode "
                  "worker: a request crosses processes twice, not three "
                  "times) or separate (a process of its own, as with "
                  "--directory)")
      ->capture_default_str()
      ->check(CLI::IsMember({"decode", "separate"}));
  sub->add_option("--min-tokens", cmd->min_tokens)->capture_default_str();
  sub->add_option("--max-tokens", cmd->max_tokens)->capture_default_str();
  sub->add_option("--inflight", cmd->inflight, "requests in flight")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1024u));
  sub->add_option("--routing", cmd->routing,
                  "which prefill and decode worker each request goes to "
                  "(with several, e.g. --directory): round-robin, "
                  "least-loaded (fewest prompt tokens in flight) or "
                  "prefix-aware")
      ->capture_default_str()
      ->check(CLI::IsMember({"round-robin", "least-loaded", "prefix-aware"}));
  add_geometry_flags(*sub, cmd->geometry, cmd->dtype);
  sub->add_option("--plugin", cmd->plugin, "net plugin for the workers");
  sub->add_option("--gpu", cmd->gpu,
                  "workers' KV memory: auto (GPU 0 when there is one), a "
                  "CUDA device ordinal, or none (host memory)")
      ->capture_default_str();
  sub->add_option("--prefill-gpu", cmd->prefill_gpu,
                  "the prefill worker's GPU (default: --gpu); with "
                  "--decode-gpu, the two workers on different GPUs of this "
                  "host (CUDA IPC needs peer access from the prefill GPU to "
                  "the decode GPU)");
  sub->add_option("--decode-gpu", cmd->decode_gpu,
                  "the decode worker's GPU (default: --gpu)");
  sub->add_option("--transport", cmd->transport,
                  "ipc: CUDA IPC between GPU workers; net: the plugin "
                  "(kvsock) even for GPU memory")
      ->capture_default_str();
  sub->add_option("--mps", cmd->mps,
                  "auto: when both workers share a GPU, run them under a "
                  "private NVIDIA MPS daemon that the demo starts and stops, "
                  "so that their kernels run at once (needs "
                  "nvidia-cuda-mps-control on PATH; with "
                  "CUDA_MPS_PIPE_DIRECTORY set, the workers use that daemon "
                  "instead); on: start it for any GPU placement, and fail "
                  "when it or the workers under it do not start; off: never")
      ->capture_default_str();
  sub->add_option("--chunk-bytes", cmd->chunk_bytes)->capture_default_str();
  sub->add_option("--comms-per-peer", cmd->comms_per_peer)
      ->capture_default_str();
  sub->add_option("--timeout-ms", cmd->timeout_ms)->capture_default_str();
  sub->add_option("--deadline-s", cmd->deadline_s,
                  "give up (and fail) after this long")
      ->capture_default_str();
  sub->add_flag("--quiet", cmd->quiet, "no progress lines");
  sub->add_option("--verify", cmd->verify,
                  "full: the producer writes every byte of each request and "
                  "the consumer checks every byte; sampled: only a 16-byte "
                  "stamp (request, layer, K/V, block, page) per 4 KiB page, "
                  "at a place that rotates with the request "
                  "(docs/deploy.md says what it catches)")
      ->capture_default_str()
      ->check(CLI::IsMember({"full", "sampled"}));
  sub->add_flag("--breakdown", cmd->breakdown,
                "the full table: bytes, GPU copy rate, launch-to-kernel and "
                "after-kernel times, control p99 (docs/deploy.md)");
  add_demo_trace_options(*sub, cmd->trace);
  runtime::add_runtime_options(*sub, cmd->runtime);
  sub->callback([cmd, &exit_code] {
    // With the decode worker in this process, its log lines at the level
    // the demo gives its worker children.
    if (cmd->runtime.log_level.empty() && router_in_decode(*cmd))
      cmd->runtime.log_level = "warn";
    if (auto err = runtime::setup_logging(cmd->runtime.log_level,
                                          cmd->runtime.log_file, "demo")) {
      std::cerr << "kvferry demo: " << render(err) << "\n";
      exit_code = 2;
      return;
    }
    exit_code = run_demo(*cmd);
    if (router_in_decode(*cmd)) { // its actor system is still up: run_demo
      spdlog::shutdown();
      std::cout.flush();
      std::_Exit(exit_code);
    }
  });
}

} // namespace kvferry::app
