// `kvferry bench endpoint`: kvferry::endpoint's one- and two-sided transfers
// (run_endpoint_bench: two endpoints in this process over the plugin, every
// byte verified), beside, in the same run, the plugin's own figure from
// `kvferry bench net` (a child process: the ceiling) and the same small
// writes from Python (a child python3 running kvferry.bench: Python's added
// cost per call).
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "kvferry/endpoint_bench.hpp"
#include "size_list.hpp"

namespace kvferry::app {
namespace {

struct options {
  std::string sizes = "256,4K,64K,1M,16M,256M";
  std::string depths = "1,16";
  std::string ops = "write,read,send";
  std::string plugin;
  std::string python = "python3"; // empty: no Python column
  std::string python_sizes = "256,4K";
  bool net = true;
  std::string json_path;
};

std::string self_dir() {
  char buf[4096];
  auto n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0)
    return ".";
  std::string path(buf, static_cast<std::size_t>(n));
  return path.substr(0, path.rfind('/'));
}

std::string temp_file(const char* tag) {
  return fmt::format("/tmp/kvferry-bench-endpoint-{}-{}.json", ::getpid(), tag);
}

// Runs `command`; its JSON output file, parsed, or null (with why on
// stderr) when it failed.
nlohmann::json run_json(const std::string& command, const std::string& file,
                        const char* what) {
  int rc = std::system(command.c_str());
  nlohmann::json doc;
  std::ifstream in(file);
  if (rc == 0 && in)
    doc = nlohmann::json::parse(in, nullptr, false);
  std::remove(file.c_str());
  if (rc != 0 || doc.is_discarded() || doc.is_null()) {
    std::fprintf(stderr, "bench endpoint: %s failed (rc %d): %s\n", what, rc,
                 command.c_str());
    return nullptr;
  }
  return doc;
}

// size -> bench net's plugin GB/s on host memory (depth 16).
std::map<std::uint64_t, double> net_ceiling(const options& o) {
  auto file = temp_file("net");
  auto cmd = fmt::format("'{}/kvferry' bench net --memory host --sizes '{}' "
                         "--depth 16 --repeat 1 --rtt-iters 100 --json '{}' "
                         "{} > /dev/null",
                         self_dir(), o.sizes, file,
                         o.plugin.empty() ? "" : "--plugin '" + o.plugin + "'");
  std::map<std::uint64_t, double> out;
  auto doc = run_json(cmd, file, "bench net");
  if (doc.is_object())
    for (auto& row : doc["sizes"])
      if (row.contains("host"))
        out[row["size"].get<std::uint64_t>()] =
            row["host"]["gbps"].get<double>();
  return out;
}

// size -> Python's us per write at depth 1.
std::map<std::uint64_t, double> python_rows(const options& o) {
  auto file = temp_file("python");
  auto dir = self_dir();
  auto cmd = fmt::format(
      "PYTHONPATH='{0}/../python:{0}/../lib/python3/dist-packages'"
      "${{PYTHONPATH:+:$PYTHONPATH}} '{1}' -m kvferry.bench --sizes '{2}' "
      "--json '{3}' > /dev/null",
      dir, o.python, o.python_sizes, file);
  std::map<std::uint64_t, double> out;
  auto doc = run_json(cmd, file, "the Python run");
  if (doc.is_array())
    for (auto& row : doc)
      out[row["size"].get<std::uint64_t>()] = row["us_per_op"].get<double>();
  return out;
}

int run(const options& o) {
  endpoint_bench_options bo;
  bo.sizes = parse_sizes(o.sizes);
  bo.depths.clear();
  for (auto d : parse_sizes(o.depths))
    bo.depths.push_back(static_cast<int>(d));
  bo.ops.clear();
  std::stringstream in(o.ops);
  for (std::string op; std::getline(in, op, ',');)
    bo.ops.push_back(op);
  bo.plugin = o.plugin;
  auto rows = run_endpoint_bench(bo);
  if (!rows.ok()) {
    std::fprintf(stderr, "bench endpoint: %s\n",
                 rows.error().message().c_str());
    return 1;
  }
  auto net = o.net ? net_ceiling(o) : std::map<std::uint64_t, double>{};
  auto py =
      o.python.empty() ? std::map<std::uint64_t, double>{} : python_rows(o);
  std::printf("%-6s %9s %5s %9s %9s %9s %8s %9s %6s %9s %9s\n", "op", "size",
              "depth", "GB/s", "us/op", "p50 us", "verified", "net GB/s",
              "ratio", "py us/op", "py added");
  bool all_verified = true;
  nlohmann::json doc = nlohmann::json::array();
  for (const auto& r : *rows) {
    all_verified &= r.verified;
    auto n = net.find(r.size);
    std::string net_col = "-", ratio_col = "-", py_col = "-", added_col = "-";
    if (n != net.end() && r.depth == 16) {
      net_col = fmt::format("{:.3f}", n->second);
      ratio_col = fmt::format("{:.2f}", r.gbps / n->second);
    }
    auto p = py.find(r.size);
    if (p != py.end() && r.op == "write" && r.depth == 1) {
      py_col = fmt::format("{:.1f}", p->second);
      added_col = fmt::format("{:.1f}", p->second - r.us_per_op);
    }
    std::printf("%-6s %9llu %5d %9.3f %9.1f %9.1f %8s %9s %6s %9s %9s\n",
                r.op.c_str(), static_cast<unsigned long long>(r.size), r.depth,
                r.gbps, r.us_per_op, r.p50_us, r.verified ? "yes" : "NO",
                net_col.c_str(), ratio_col.c_str(), py_col.c_str(),
                added_col.c_str());
    nlohmann::json row = {{"op", r.op},         {"size", r.size},
                          {"depth", r.depth},   {"ops", r.ops},
                          {"gbps", r.gbps},     {"us_per_op", r.us_per_op},
                          {"p50_us", r.p50_us}, {"verified", r.verified}};
    if (n != net.end())
      row["net_gbps"] = n->second;
    if (p != py.end() && r.op == "write" && r.depth == 1)
      row["python_us_per_op"] = p->second;
    doc.push_back(row);
  }
  std::printf("(net: `kvferry bench net --memory host --depth 16`, the "
              "plugin's raw figure, in the same run; ratio = endpoint / net "
              "at depth 16; py: the same writes from Python, depth 1)\n");
  if (!o.json_path.empty()) {
    std::ofstream f(o.json_path);
    f << doc.dump(2) << "\n";
  }
  if (!all_verified) {
    std::fprintf(stderr, "bench endpoint: bytes differ (see 'verified')\n");
    return 1;
  }
  return 0;
}

} // namespace

void add_bench_endpoint(CLI::App& bench, int& exit_code) {
  auto o = std::make_shared<options>();
  auto* cmd = bench.add_subcommand(
      "endpoint", "kvferry::endpoint's transfers (C++ and Python) against "
                  "the plugin's raw figure, in the same run");
  cmd->add_option("--sizes", o->sizes, "Comma list; K/M/G suffixes")
      ->capture_default_str();
  cmd->add_option("--depths", o->depths, "Transfers in flight, comma list")
      ->capture_default_str();
  cmd->add_option("--ops", o->ops, "write, read, send (send + recv)")
      ->capture_default_str();
  cmd->add_option("--plugin", o->plugin,
                  "Plugin name or path (default "
                  "kvsock)");
  cmd->add_option("--python", o->python,
                  "Python interpreter for the Python column ('' : none)")
      ->capture_default_str();
  cmd->add_option("--python-sizes", o->python_sizes,
                  "Sizes of the Python column")
      ->capture_default_str();
  cmd->add_flag("!--no-net", o->net, "Leave out bench net's ceiling");
  cmd->add_option("--json", o->json_path, "Write the rows as JSON to FILE");
  cmd->callback([o, &exit_code] { exit_code = run(*o); });
}

} // namespace kvferry::app
