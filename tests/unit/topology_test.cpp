// The topology file: defaults, every kind of error a user can make (with the
// file:line:col they rely on to find it), the limits on size, depth, documents
// and worker parameters (shared with `kvferry worker`), and the example
// configs.
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "kvferry/runtime/topology.hpp"
#include "kvferry/runtime/worker_limits.hpp"
#include "skip_case.hpp"

namespace topo = kvferry::topology;
namespace fs = std::filesystem;

namespace {

// Plugins are looked up only in a scratch dir holding a fake kvsock plugin,
// so that the tests do not depend on what is built or installed.
struct plugin_dir {
  fs::path dir = fs::temp_directory_path() /
                 ("kvferry-topo-test-" + std::to_string(::getpid()));
  plugin_dir() {
    fs::create_directories(dir);
    std::ofstream(dir / "libnccl-net-kvsock.so") << "not really a library";
  }
  ~plugin_dir() { fs::remove_all(dir); }
  topo::load_options options(bool allow_missing = false) const {
    topo::load_options o;
    o.plugins.first_dirs = std::vector<std::string>{dir.string()};
    o.plugins.exe_dir = "/nonexistent";
    o.allow_missing_plugins = allow_missing;
    return o;
  }
};

const plugin_dir& fake_plugins() {
  static plugin_dir plugins;
  return plugins;
}

topo::load_result parse(const std::string& text, bool allow_missing = false) {
  return topo::parse(text, "topo.yaml", fake_plugins().options(allow_missing));
}

bool has_error(const topo::load_result& r, const std::string& fragment) {
  for (auto& e : r.errors)
    if (e.find(fragment) != std::string::npos)
      return true;
  return false;
}

bool has_warning(const topo::load_result& r, const std::string& fragment) {
  for (auto& w : r.warnings)
    if (w.find(fragment) != std::string::npos)
      return true;
  return false;
}

const char* two_workers = R"(workers:
  - {name: p0, role: prefill}
  - {name: d0, role: decode}
)";

} // namespace

TEST_CASE(
    "a file with just two workers is valid and gets one-machine defaults") {
  auto r = parse(two_workers);
  INFO(r.report());
  REQUIRE(r.ok());
  auto& t = *r.topology;
  CHECK(t.hosts.size() == 1);
  CHECK(t.hosts[0].address == "127.0.0.1");
  CHECK(t.directory.host == t.hosts[0].name);
  CHECK(t.directory_endpoint() == "127.0.0.1:7470");
  REQUIRE(t.workers.size() == 2);
  CHECK(t.workers[0].host == t.hosts[0].name);
  CHECK(t.workers[0].role == topo::worker_role::prefill);
  CHECK(t.workers[1].role == topo::worker_role::decode);
  CHECK_FALSE(t.workers[0].gpu.has_value());
  CHECK(t.workers[0].plugin == "kvsock");
  CHECK(t.workers[0].plugin_file.find("libnccl-net-kvsock.so") !=
        std::string::npos);
  CHECK(t.model.layers == 32);
  CHECK(t.model.kv_heads == 8);
  CHECK(t.model.head_dim == 128);
  CHECK(t.model.dtype == "fp16");
  CHECK(t.model.block_tokens == 16);
  CHECK(t.model.block_bytes_per_layer() == 2u * 8 * 128 * 16 * 2);
  CHECK(t.control.bind == "127.0.0.1");
  CHECK(t.launch.log_dir == "./kvferry-logs");
}

TEST_CASE("every section is read") {
  auto r = parse(R"(name: prod
directory: {host: a, port: 9000}
hosts:
  - {name: a, address: 10.0.0.1}
  - {name: b, address: 10.0.0.2}
workers:
  - name: p0
    role: prefill
    host: a
    gpu: 3
    plugin_env: {NCCL_SOCKET_IFNAME: eth1, NCCL_NSOCKS_PERTHREAD: 4}
    devices: [eth1, eth2]
    pool_blocks: 4096
    restart: never
    metrics_port: 9100
  - {name: d0, role: decode, host: b, gpu: none}
model: {layers: 80, kv_heads: 8, head_dim: 128, dtype: bf16, block_tokens: 32}
transfer: {mode: pull, layerwise: true, chunk_bytes: 1048576, comms_per_peer: 4, staging_slots: 8, timeout_ms: 500}
control: {bind: host, secret_env: MY_SECRET}
launch: {log_dir: /tmp/logs, max_restarts: 2, restart_backoff_ms: 100, stop_grace_ms: 1000}
)");
  INFO(r.report());
  REQUIRE(r.ok());
  auto& t = *r.topology;
  CHECK(t.name == "prod");
  CHECK(t.directory_endpoint() == "10.0.0.1:9000");
  auto& p0 = t.workers[0];
  CHECK(p0.gpu == 3);
  CHECK(p0.plugin_env.at("NCCL_SOCKET_IFNAME") == "eth1");
  CHECK(p0.plugin_env.at("NCCL_NSOCKS_PERTHREAD") == "4");
  CHECK(p0.devices == std::vector<std::string>{"eth1", "eth2"});
  CHECK(p0.pool_blocks == 4096);
  CHECK(p0.restart == topo::restart_policy::never);
  CHECK(p0.metrics_port == 9100);
  CHECK_FALSE(t.workers[1].gpu.has_value());
  CHECK(t.model.dtype == "bf16");
  CHECK(t.transfer.mode == topo::transfer_mode::pull);
  CHECK(t.transfer.layerwise);
  CHECK(t.transfer.comms_per_peer == 4);
  CHECK(t.transfer.staging_slots == 8);
  CHECK(t.bind_address_for("b") == "10.0.0.2");
  CHECK(t.workers_on("a").size() == 1);
  CHECK(t.launch.max_restarts == 2);
}

TEST_CASE("an unknown key names file:line:col and suggests the nearest key") {
  auto r = parse(R"(workers:
  - name: p0
    role: prefill
  - name: d0
    role: decode
    pluign: kvsock
)");
  REQUIRE_FALSE(r.ok());
  CHECK(has_error(
      r, "unknown key 'pluign' at topo.yaml:6:5; did you mean 'plugin'?"));
}

TEST_CASE("an unknown key with nothing close lists the valid keys") {
  auto r = parse(std::string(two_workers) + "zebra: 1\n");
  CHECK(has_error(
      r, "unknown key 'zebra' in the top level at topo.yaml:4:1; valid keys:"));
}

TEST_CASE("all errors are collected, not just the first") {
  auto r = parse(R"(directory: {port: 70000}
workers:
  - {name: p0, role: prefil, gpu: -1}
  - {name: d0, role: decode, pool_blocks: 0}
model: {dtype: fp8}
transfer: {staging_slots: 65}
)");
  INFO(r.report());
  CHECK_FALSE(r.topology.has_value());
  CHECK(has_error(r, "directory.port must be an integer in [1, 65535], got "
                     "'70000' at topo.yaml:1:19"));
  CHECK(has_error(r, "worker p0.role must be one of prefill | decode, got "
                     "'prefil' at topo.yaml:3:22; did you mean 'prefill'?"));
  CHECK(has_error(r, "worker p0.gpu must be a device index"));
  CHECK(has_error(r, "worker d0.pool_blocks must be an integer in [1,"));
  CHECK(
      has_error(r, "model.dtype must be one of fp16 | bf16 | fp32, got 'fp8'"));
  CHECK(has_error(
      r, "transfer.staging_slots must be an integer in [0, 64], got '65'"));
  CHECK(r.errors.size() >= 6);
}

TEST_CASE("YAML syntax errors carry their position") {
  auto r = parse("workers: [\n  {name: p0\n");
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].find("YAML syntax error") != std::string::npos);
  CHECK(r.errors[0].find("topo.yaml:") != std::string::npos);
}

TEST_CASE("a file over the size cap is refused before it is parsed") {
  auto path = fake_plugins().dir / "huge.yaml";
  {
    // 50 MB of valid-looking YAML: parsed, it took minutes and gigabytes.
    std::ofstream out(path);
    out << two_workers << "model:\n";
    std::string line = "  # " + std::string(96, 'x') + "\n";
    for (int i = 0; i < 500000; ++i)
      out << line;
  }
  auto started = std::chrono::steady_clock::now();
  auto r = topo::load_file(path.string(), fake_plugins().options());
  auto took = std::chrono::steady_clock::now() - started;
  INFO(r.report());
  REQUIRE(r.errors.size() == 1);
  CHECK(has_error(r, "topology file '" + path.string() + "' is "));
  CHECK(has_error(r, "over the limit of 1048576 bytes (1 MiB)"));
  // A stat, not a parse: far below a second even under ASan on a busy CI.
  CHECK(took < std::chrono::seconds(2));
  fs::remove(path);
  // Text handed to parse() directly meets the same cap.
  auto text =
      std::string(two_workers) + std::string(topo::max_topology_bytes, '#');
  CHECK(has_error(parse(text), "over the limit of 1048576 bytes"));
}

TEST_CASE("deep nesting is reported as its depth, with the line") {
  auto text = std::string(two_workers) + "model: " + std::string(100000, '[') +
              std::string(100000, ']') + "\n";
  auto r = parse(text);
  INFO(r.report());
  REQUIRE(r.errors.size() == 1);
  CHECK(has_error(r, "nesting depth 17 exceeds the limit of 16 (a topology "
                     "needs 4) at topo.yaml:4:"));
  // Block style nesting is counted the same way.
  std::string deep = std::string(two_workers) + "launch:\n";
  for (int level = 1; level <= 20; ++level)
    deep += std::string(std::size_t(level) * 2, ' ') + "k:\n";
  CHECK(has_error(parse(deep), "nesting depth 17 exceeds the limit of 16"));
}

TEST_CASE("a second YAML document is refused with its line") {
  auto r = parse(std::string(two_workers) + "---\nname: other\n");
  INFO(r.report());
  REQUIRE(r.errors.size() == 1);
  CHECK(has_error(r, "a second YAML document ('---'); a topology file holds "
                     "exactly one at topo.yaml:4:1"));
  // A leading '---' and a closing '...' are still one document.
  CHECK(parse(std::string("---\n") + two_workers + "...\n").ok());
}

TEST_CASE("worker limits: what --dry-run accepts, the worker accepts") {
  SUBCASE("a layer-block over 1 GiB, at the model section's line") {
    auto r = parse(std::string(two_workers) +
                   "model: {kv_heads: 1024, head_dim: 16384, block_tokens: "
                   "64}\n");
    INFO(r.report());
    CHECK(has_error(r, "model: KV geometry: one layer-block (2 x kv-heads "
                       "1024 x head-dim 16384 x 2 bytes x block-tokens 64) is "
                       "4294967296 bytes, over the 1 GiB limit at "
                       "topo.yaml:4:8"));
    CHECK(r.errors.size() == 1); // once, not once per worker
  }
  SUBCASE("a 1 TiB pool, at the worker's pool_blocks") {
    auto r = parse(R"(workers:
  - {name: p0, role: prefill, gpu: 0}
  - {name: d0, role: decode, gpu: 1, pool_blocks: 16777216}
)");
    INFO(r.report());
    REQUIRE(r.errors.size() == 1);
    CHECK(has_error(r, "worker d0.pool_blocks: 16777216 layer-blocks of 64 "
                       "KiB make a pool of 1 TiB, over the 512 GiB limit of "
                       "one worker at topo.yaml:3:51"));
  }
  SUBCASE("a host-memory pool larger than this machine") {
    auto memory = kvferry::runtime::physical_memory_bytes();
    auto blocks = memory / (64 << 10) + 1;
    if (memory == 0 || blocks * (64 << 10) > kvferry::runtime::max_pool_bytes)
      return kvferry::test::skip_case(
          "this machine's memory is unknown or more than any pool may take");
    auto r = parse(fmt::format(R"(workers:
  - {{name: p0, role: prefill}}
  - {{name: d0, role: decode, pool_blocks: {}}}
  - {{name: d1, role: decode, gpu: 0, pool_blocks: {}}}
)",
                               blocks, blocks));
    INFO(r.report());
    REQUIRE(r.errors.size() == 1); // d1's pool is in GPU memory
    CHECK(has_error(r, "worker d0.pool_blocks: "));
    CHECK(has_error(r, "host-memory pool"));
    CHECK(has_error(r, "more than this machine's"));
  }
  SUBCASE("more workers than a deployment holds") {
    std::string text = "workers:\n";
    for (std::size_t i = 0; i <= kvferry::runtime::max_workers; ++i)
      text += fmt::format("  - {{name: w{}, role: {}}}\n", i,
                          i % 2 ? "decode" : "prefill");
    auto r = parse(text);
    REQUIRE(r.errors.size() == 1);
    CHECK(has_error(r, "workers: 1025 entries, over the limit of 1024 workers "
                       "in one deployment at topo.yaml:2:3"));
  }
  SUBCASE("the topology and `kvferry worker` share one rule set") {
    kvferry::runtime::worker_params p;
    p.pool_blocks = 16777216;
    p.gpu_pool = true;
    auto problems = kvferry::runtime::check_worker_params(p, 0);
    REQUIRE(problems.size() == 1);
    CHECK(kvferry::runtime::describe_as_flags(problems) ==
          "--pool-blocks: 16777216 layer-blocks of 64 KiB make a pool of 1 "
          "TiB, over the 512 GiB limit of one worker");
    p.pool_blocks = 4096;
    p.chunk_bytes = std::uint64_t{1} << 30;
    CHECK(kvferry::runtime::describe_as_flags(
              kvferry::runtime::check_worker_params(p, 0)) ==
          "--chunk-bytes: must be in 4096..536870912, got 1073741824");
  }
}

TEST_CASE("cross-checks: names, hosts, GPUs, roles, ports") {
  SUBCASE("duplicate worker names") {
    auto r = parse(R"(workers:
  - {name: p0, role: prefill}
  - {name: p0, role: decode}
)");
    CHECK(has_error(r, "duplicate worker name 'p0' (first at topo.yaml:2:5) at "
                       "topo.yaml:3:5"));
  }
  SUBCASE("duplicate host names") {
    auto r = parse(
        R"(hosts: [{name: a, address: 10.0.0.1}, {name: a, address: 10.0.0.2}]
control: {bind: host}
workers:
  - {name: p0, role: prefill, host: a}
  - {name: d0, role: decode, host: a}
)");
    CHECK(has_error(r, "duplicate host name 'a'"));
  }
  SUBCASE("a worker on an unknown host gets a suggestion") {
    auto r = parse(
        R"(hosts: [{name: alpha, address: 10.0.0.1}, {name: beta, address: 10.0.0.2}]
control: {bind: host}
workers:
  - {name: p0, role: prefill, host: alpha}
  - {name: d0, role: decode, host: betta}
)");
    CHECK(has_error(r, "worker 'd0' is on unknown host 'betta' at "
                       "topo.yaml:5:5; did you mean 'beta'?"));
  }
  SUBCASE("several hosts: a worker must say which") {
    auto r = parse(
        R"(hosts: [{name: a, address: 10.0.0.1}, {name: b, address: 10.0.0.2}]
control: {bind: host}
workers:
  - {name: p0, role: prefill, host: a}
  - {name: d0, role: decode}
)");
    CHECK(
        has_error(r, "worker 'd0' needs a host: this file has several (a, b)"));
  }
  SUBCASE("two workers on one GPU of one host") {
    auto r = parse(R"(workers:
  - {name: p0, role: prefill, gpu: 0}
  - {name: d0, role: decode, gpu: 0}
)");
    CHECK(r.ok()); // allowed: launch runs them under MPS, and says so
    CHECK(has_warning(
        r, "workers 'p0' and 'd0' share GPU 0 of host 'local': kvferry launch "
           "runs them under a private MPS daemon"));
  }
  SUBCASE("the same GPU index on two hosts is fine") {
    auto r = parse(
        R"(hosts: [{name: a, address: 10.0.0.1}, {name: b, address: 10.0.0.2}]
control: {bind: host}
workers:
  - {name: p0, role: prefill, host: a, gpu: 0}
  - {name: d0, role: decode, host: b, gpu: 0}
)");
    INFO(r.report());
    CHECK(r.ok());
  }
  SUBCASE("decode with no prefill") {
    auto r = parse("workers:\n  - {name: d0, role: decode}\n  - {name: d1, "
                   "role: decode}\n");
    CHECK(has_error(
        r, "decode worker(s) d0, d1 have no prefill worker to feed them"));
  }
  SUBCASE("prefill with no decode") {
    auto r = parse("workers:\n  - {name: p0, role: prefill}\n");
    CHECK(
        has_error(r, "prefill worker(s) p0 have no decode worker to send to"));
  }
  SUBCASE("a metrics port clashing with the directory's") {
    auto r = parse(R"(directory: {port: 9000}
workers:
  - {name: p0, role: prefill, metrics_port: 9000}
  - {name: d0, role: decode}
)");
    CHECK(has_error(r, "worker 'p0': metrics_port 9000 on host 'local' is "
                       "already used by the directory"));
  }
  SUBCASE("loopback bind with remote hosts") {
    auto r = parse(
        R"(hosts: [{name: a, address: 10.0.0.1}, {name: b, address: 10.0.0.2}]
workers:
  - {name: p0, role: prefill, host: a}
  - {name: d0, role: decode, host: b}
)");
    CHECK(has_error(
        r, "control.bind is 127.0.0.1 but the hosts are on other machines"));
  }
  SUBCASE("more than one secret source") {
    auto r = parse(std::string(two_workers) +
                   "control: {secret: x, secret_env: Y}\n");
    CHECK(has_error(r, "give at most one of secret, secret_file, secret_env"));
  }
}

TEST_CASE(
    "plugins: found by name, paths must exist, missing ones can be allowed") {
  auto missing = std::string(R"(workers:
  - {name: p0, role: prefill, plugin: nosuch}
  - {name: d0, role: decode, plugin: /no/such/libnccl-net.so}
)");
  auto r = parse(missing);
  CHECK(has_error(r, "worker 'p0': plugin 'nosuch' not found (looked for "
                     "libnccl-net-nosuch.so"));
  CHECK(has_error(
      r, "worker 'd0': plugin file '/no/such/libnccl-net.so' does not exist"));
  auto relaxed = parse(missing, /*allow_missing=*/true);
  CHECK(relaxed.ok());
  CHECK(relaxed.warnings.size() == 2);
}

TEST_CASE("the nearest-key helper") {
  CHECK(topo::nearest("pluign", {"plugin", "pool_blocks"}) == "plugin");
  CHECK(topo::nearest("metrics_prot", {"metrics_port", "name"}) ==
        "metrics_port");
  CHECK(topo::nearest("xyz", {"plugin", "role"}).empty());
}

TEST_CASE("reading the secret") {
  topo::control_spec control;
  std::string why;
  CHECK(topo::read_secret(control, why) == std::string{});
  control.secret_env = "KVFERRY_TOPO_TEST_UNSET_VARIABLE";
  CHECK_FALSE(topo::read_secret(control, why).has_value());
  CHECK(why.find("KVFERRY_TOPO_TEST_UNSET_VARIABLE") != std::string::npos);
  ::setenv("KVFERRY_TOPO_TEST_SECRET", "s3cret", 1);
  control.secret_env = "KVFERRY_TOPO_TEST_SECRET";
  CHECK(topo::read_secret(control, why) == std::string("s3cret"));
}

TEST_CASE("every example config in configs/ validates") {
  auto dir = fs::path(KVFERRY_SOURCE_DIR) / "configs";
  int checked = 0;
  for (auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".yaml")
      continue;
    // Plugins that live on other machines (GPUDirect-TCPX) are warnings.
    auto r =
        topo::load_file(entry.path().string(), fake_plugins().options(true));
    INFO(entry.path().string() << "\n" << r.report());
    CHECK(r.ok());
    for (auto& warning : r.warnings)
      CHECK(warning.find("plugin 'kvsock'") == std::string::npos);
    ++checked;
  }
  CHECK(checked >= 4);
}
