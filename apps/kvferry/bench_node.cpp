// `kvferry bench node`: what a kvferry::node request costs beyond its bytes
// (run_node_bench, node_bench.hpp): a pull's control overhead beside the
// same run's CAF round trip between the two actor systems, and the host
// time per block to plan and post, per request size; then peak RSS.
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <sys/resource.h>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "kvferry/node_bench.hpp"
#include "size_list.hpp"

namespace kvferry::app {
namespace {

struct options {
  std::string blocks = "1,64,1000";
  int repeats = 50;
  int inflight = 1;
  std::string plugin;
  std::string json_path;
};

int run(const options& o) {
  node_bench_options bo;
  bo.blocks = parse_sizes(o.blocks);
  bo.repeats = o.repeats;
  bo.inflight = o.inflight;
  bo.plugin = o.plugin;
  std::printf("bench node: %u layers, %llu-byte halves, vLLM per-layer -> "
              "block-major, host memory, %s over loopback, %d repeats of "
              "%d pull%s in flight\n",
              bo.layers, static_cast<unsigned long long>(bo.half_bytes),
              o.plugin.empty() ? "kvsock" : o.plugin.c_str(), o.repeats,
              o.inflight, o.inflight == 1 ? "" : "s");
  std::fflush(stdout);
  std::printf("%6s %9s %9s %9s %8s %8s %7s %9s %9s %7s %9s %8s %8s %6s "
              "%11s %13s\n",
              "blocks", "MiB", "ctl p50", "ctl p99", "RTT p50", "RTT p99",
              "ctl/RTT", "total p50", "data p50", "tot/RTT", "round p50",
              "us/block", "pull us", "path", "cs pull/RTT", "node/xfer RTT");
  std::fflush(stdout);
  nlohmann::json doc = nlohmann::json::array();
  // Each row as it is measured: what was measured is out even if the two
  // actor systems' teardown afterwards is slow.
  bo.on_row = [&doc](const node_bench_row& r) {
    std::printf("%6llu %9.2f %9.1f %9.1f %8.1f %8.1f %6.2fx %9.1f %9.1f %6.2fx "
                "%9.1f %8.3f %8.3f %6s %5.1f/%-5.1f %6.1f/%-6.1f\n",
                static_cast<unsigned long long>(r.blocks),
                static_cast<double>(r.bytes) / (1 << 20), r.control_p50_us,
                r.control_p99_us, r.rtt_p50_us, r.rtt_p99_us,
                r.control_p50_us / r.rtt_p50_us, r.total_p50_us, r.data_p50_us,
                r.total_p50_us / r.rtt_p50_us, r.round_p50_us,
                r.post_us_per_block, r.pull_post_us_per_block,
                r.ipc ? "ipc" : (r.lane ? "lane" : "plugin"),
                r.switches_per_pull, r.switches_per_rtt, r.node_rtt_p50_us,
                r.transfer_rtt_p50_us);
    doc.push_back({{"blocks", r.blocks},
                   {"bytes", r.bytes},
                   {"control_p50_us", r.control_p50_us},
                   {"control_p99_us", r.control_p99_us},
                   {"rtt_p50_us", r.rtt_p50_us},
                   {"rtt_p99_us", r.rtt_p99_us},
                   {"total_p50_us", r.total_p50_us},
                   {"data_p50_us", r.data_p50_us},
                   {"round_p50_us", r.round_p50_us},
                   {"lane", r.lane},
                   {"post_us_per_block", r.post_us_per_block},
                   {"pull_post_us_per_block", r.pull_post_us_per_block},
                   {"node_rtt_p50_us", r.node_rtt_p50_us},
                   {"transfer_rtt_p50_us", r.transfer_rtt_p50_us},
                   {"ipc", r.ipc},
                   {"switches_per_pull", r.switches_per_pull},
                   {"switches_per_rtt", r.switches_per_rtt}});
    std::fflush(stdout);
  };
  auto rows = run_node_bench(bo);
  if (!rows.ok()) {
    std::fprintf(stderr, "%s\n", rows.error().message().c_str());
    return 1;
  }
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  std::printf("(ctl: a pull's total - data, the decode's call to its reply "
              "minus its data window, from the announcement to the last byte; "
              "a pull lane (path lane) has no announcement, so its "
              "window opens at its first bytes landed and its ctl also holds "
              "the bytes' own leg; the issue's target, control overhead <= "
              "1.3x RTT, is read against ctl/RTT, an upper bound on a lane; "
              "tot/RTT: total over RTT, the same footing for both paths; "
              "round p50: a round of --inflight pulls, start to last reply "
              "(each pull's total counts from the round's start); "
              "RTT: an empty CAF request between the "
              "two systems, interleaved in the same run; us/block: the "
              "prefill's host time to plan and post, median, and pull us: the "
              "decode's for a pull whose advertise is known; cs: voluntary "
              "context switches of the process, both nodes' threads, per pull "
              "/ per round trip; node/xfer RTT: p50 of the caller's round "
              "trip to its own node actor / transfer actor, the hops a pull "
              "has beyond the round trip)\npeak RSS %.1f "
              "MiB\n",
              ru.ru_maxrss / 1024.0);
  if (!o.json_path.empty()) {
    std::ofstream f(o.json_path);
    f << doc.dump(2) << "\n";
  }
  return 0;
}

} // namespace

void add_bench_node(CLI::App& bench, int& exit_code) {
  auto o = std::make_shared<options>();
  auto* cmd = bench.add_subcommand(
      "node", "A kvferry::node pull's control overhead beside the same run's "
              "CAF round trip, and the host time per block to plan and post "
              "(KVFERRY_STAGE_STAMPS=1: also where a pull's time goes, stage "
              "by stage, on stderr)");
  cmd->add_option("--blocks", o->blocks, "Blocks per request, comma list")
      ->capture_default_str();
  cmd->add_option("--repeats", o->repeats, "Requests per size")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  cmd->add_option("--inflight", o->inflight,
                  "Pulls in flight at once (each round pulls this many "
                  "advertised requests before waiting for any)")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  cmd->add_option("--plugin", o->plugin,
                  "Plugin name or path (default kvsock)");
  cmd->add_option("--json", o->json_path, "Write the rows as JSON to FILE");
  cmd->callback([o, &exit_code] { exit_code = run(*o); });
}

} // namespace kvferry::app
