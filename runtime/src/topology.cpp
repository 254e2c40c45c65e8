// Loading and validating a topology file. The parser walks the YAML tree
// once, reading each known key with its own range check and recording every
// problem with the key's file:line:col; the cross-checks that need the whole
// deployment (names, hosts, GPUs, roles, plugins, ports) run afterwards. All
// problems are collected so that one run of `kvferry launch --dry-run` shows
// them all.
#include "kvferry/runtime/topology.hpp"

#include <algorithm>
#include <arpa/inet.h>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include "kvferry/runtime/worker_limits.hpp"
#include "kvferry/transport/channel.hpp"

namespace kvferry::topology {

// ---- small public helpers

std::string location::str() const {
  if (line <= 0)
    return file;
  return fmt::format("{}:{}:{}", file, line, column);
}

const char* to_string(worker_role role) {
  return role == worker_role::prefill ? "prefill" : "decode";
}
const char* to_string(restart_policy policy) {
  return policy == restart_policy::never ? "never" : "on-failure";
}
const char* to_string(transfer_mode mode) {
  return mode == transfer_mode::push ? "push" : "pull";
}
const char* to_string(sim_routing routing) {
  switch (routing) {
  case sim_routing::round_robin:
    return "round-robin";
  case sim_routing::least_loaded:
    return "least-loaded";
  case sim_routing::prefix_aware:
    return "prefix-aware";
  }
  return "?";
}

std::uint32_t model_spec::dtype_bytes() const {
  return dtype == "fp32" ? 4 : 2;
}

std::uint64_t model_spec::block_bytes_per_layer() const {
  return 2ull * kv_heads * head_dim * block_tokens * dtype_bytes();
}

const host_spec* deployment::find_host(const std::string& host_name) const {
  for (auto& host : hosts)
    if (host.name == host_name)
      return &host;
  return nullptr;
}

const worker_spec*
deployment::find_worker(const std::string& worker_name) const {
  for (auto& worker : workers)
    if (worker.name == worker_name)
      return &worker;
  return nullptr;
}

std::vector<const worker_spec*>
deployment::workers_on(const std::string& host) const {
  std::vector<const worker_spec*> result;
  for (auto& worker : workers)
    if (worker.host == host)
      result.push_back(&worker);
  return result;
}

std::string deployment::directory_endpoint() const {
  auto* host = find_host(directory.host);
  return fmt::format("{}:{}", host ? host->address : directory.host,
                     directory.port);
}

std::string deployment::bind_address_for(const std::string& host_name) const {
  if (control.bind != "host")
    return control.bind;
  auto* host = find_host(host_name);
  return host ? host->address : "127.0.0.1";
}

std::string load_result::report() const {
  std::string text;
  for (auto& e : errors)
    text += "error: " + e + "\n";
  for (auto& w : warnings)
    text += "warning: " + w + "\n";
  return text;
}

namespace {

// Optimal string alignment distance: a swapped pair of letters ("pluign")
// counts as one edit, the commonest typo.
std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<std::size_t>> d(
      a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i)
    d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j)
    d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i)
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] =
          std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

bool is_valid_name(const std::string& name) {
  if (name.empty() || name.size() > 64)
    return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) {
                       return std::isalnum(static_cast<unsigned char>(c)) ||
                              c == '-' || c == '_' || c == '.';
                     }) &&
         name[0] != '.';
}

bool is_env_name(const std::string& name) {
  if (name.empty() || std::isdigit(static_cast<unsigned char>(name[0])))
    return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
  });
}

bool is_ipv4(const std::string& text) {
  in_addr addr{};
  return ::inet_pton(AF_INET, text.c_str(), &addr) == 1;
}

bool is_loopback(const std::string& address) {
  return address == "localhost" || address.rfind("127.", 0) == 0 ||
         address == "::1";
}

} // namespace

std::string nearest(const std::string& word,
                    const std::vector<std::string>& candidates) {
  // Allow about one edit per three letters, at least one, so that short keys
  // are not "corrected" into unrelated ones.
  std::size_t best_distance = std::max<std::size_t>(1, word.size() / 3) + 1;
  std::string best;
  for (auto& candidate : candidates) {
    auto d = edit_distance(word, candidate);
    if (d < best_distance) {
      best_distance = d;
      best = candidate;
    }
  }
  return best;
}

std::string find_plugin(const std::string& plugin,
                        const load_options& options) {
  return transport::find_plugin_file(plugin, options.plugins).value_or("");
}

std::optional<std::string> read_secret(const control_spec& control,
                                       std::string& why) {
  if (!control.secret.empty())
    return control.secret;
  if (!control.secret_env.empty()) {
    const char* value = std::getenv(control.secret_env.c_str());
    if (value == nullptr || *value == '\0') {
      why =
          fmt::format("control.secret_env names ${} but it is not set (at {})",
                      control.secret_env, control.where.str());
      return std::nullopt;
    }
    return std::string(value);
  }
  if (!control.secret_file.empty()) {
    std::ifstream in(control.secret_file);
    std::string line;
    if (!in || !std::getline(in, line) || line.empty()) {
      why = fmt::format(
          "cannot read the secret from control.secret_file '{}' (at {}): {}",
          control.secret_file, control.where.str(),
          in ? "the first line is empty" : std::strerror(errno));
      return std::nullopt;
    }
    return line;
  }
  return std::string{};
}

// ---- the parser

namespace {

// The file's shape, checked by one event pass before any node is built:
// nesting deeper than a topology ever needs, or a second document, stop it
// there (yaml-cpp would recurse 2000 levels deep, then report "bad file", and
// silently drop every document after the first).
struct shape_problem {
  YAML::Mark mark;
  std::string what;
};

std::string too_big(const std::string& file, std::uint64_t bytes) {
  return fmt::format("topology file '{}' is {} bytes, over the limit of {} "
                     "bytes (1 MiB) for a topology file",
                     file, bytes, max_topology_bytes);
}

class shape_checker : public YAML::EventHandler {
public:
  void OnDocumentStart(const YAML::Mark& mark) override { start_ = mark; }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark& mark, const std::string&,
                       YAML::anchor_t, YAML::EmitterStyle::value) override {
    enter(mark);
  }
  void OnSequenceEnd() override { --depth_; }
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {
    enter(mark);
  }
  void OnMapEnd() override { --depth_; }

  // Throws shape_problem.
  static void check(const std::string& text) {
    std::istringstream in(text);
    YAML::Parser events(in);
    shape_checker checker;
    if (!events.HandleNextDocument(checker))
      return;
    if (events.HandleNextDocument(checker))
      throw shape_problem{checker.start_,
                          "a second YAML document ('---'); a topology file "
                          "holds exactly one"};
  }

private:
  void enter(const YAML::Mark& mark) {
    if (++depth_ > max_topology_depth)
      throw shape_problem{
          mark, fmt::format("nesting depth {} exceeds the limit of {} (a "
                            "topology needs 4)",
                            depth_, max_topology_depth)};
  }

  YAML::Mark start_; // of the latest document
  int depth_ = 0;
};

class parser {
public:
  parser(std::string file, load_options options)
      : file_(std::move(file)), options_(std::move(options)) {
    result_.topology.emplace();
    topo().source_file = file_;
  }

  load_result run(const std::string& text) {
    if (text.size() > max_topology_bytes) {
      result_.errors.push_back(too_big(file_, text.size()));
      return finish();
    }
    YAML::Node root;
    try {
      shape_checker::check(text);
      root = YAML::Load(text);
    } catch (const shape_problem& e) {
      error(e.mark, e.what);
      return finish();
    } catch (const YAML::ParserException& e) {
      error(e.mark, fmt::format("YAML syntax error: {}", e.msg));
      return finish();
    }
    if (!root.IsMap()) {
      error(root.Mark(),
            "expected a mapping at the top level (keys: name, directory, "
            "hosts, workers, model, transfer, control, launch)");
      return finish();
    }
    read_root(root);
    cross_check();
    return finish();
  }

private:
  deployment& topo() { return *result_.topology; }

  location at(const YAML::Mark& mark) const {
    if (mark.is_null())
      return {file_, 0, 0};
    return {file_, mark.line + 1, mark.column + 1};
  }

  void error(const YAML::Mark& mark, const std::string& what) {
    error(at(mark), what);
  }
  void error(const location& where, const std::string& what,
             const std::string& hint = {}) {
    result_.errors.push_back(
        fmt::format("{} at {}{}", what, where.str(), hint));
  }
  void warning(const location& where, const std::string& what) {
    result_.warnings.push_back(fmt::format("{} at {}", what, where.str()));
  }

  load_result finish() {
    if (!result_.errors.empty())
      result_.topology.reset();
    return std::move(result_);
  }

  // Rejects keys outside `allowed` (suggesting the nearest) and repeated keys.
  void check_keys(const YAML::Node& map,
                  const std::vector<std::string>& allowed,
                  const std::string& context) {
    std::set<std::string> seen;
    for (auto it = map.begin(); it != map.end(); ++it) {
      auto key = it->first.IsScalar() ? it->first.Scalar()
                                      : std::string("<non-scalar>");
      if (!seen.insert(key).second) {
        error(it->first.Mark(),
              fmt::format("key '{}' repeated in {}", key, context));
        continue;
      }
      if (std::find(allowed.begin(), allowed.end(), key) != allowed.end())
        continue;
      auto suggestion = nearest(key, allowed);
      auto where = at(it->first.Mark()).str();
      if (suggestion.empty())
        result_.errors.push_back(
            fmt::format("unknown key '{}' in {} at {}; valid keys: {}", key,
                        context, where, fmt::join(allowed, ", ")));
      else
        result_.errors.push_back(
            fmt::format("unknown key '{}' at {}; did you mean '{}'?", key,
                        where, suggestion));
    }
  }

  // A present, mapping-valued key; reports and returns an invalid node
  // otherwise.
  bool expect_map(const YAML::Node& node, const std::string& what) {
    if (node.IsMap())
      return true;
    error(node.Mark(),
          fmt::format("{} must be a mapping ({}: {{key: value, ...}})", what,
                      what));
    return false;
  }

  bool read_string(const YAML::Node& map, const char* key, std::string& out,
                   const std::string& context) {
    auto node = map[key];
    if (!node)
      return false;
    if (!node.IsScalar() || node.Scalar().empty()) {
      error(node.Mark(),
            fmt::format("{}.{} must be a non-empty string", context, key));
      return false;
    }
    out = node.Scalar();
    return true;
  }

  template<class Int>
  bool read_uint(const YAML::Node& map, const char* key, Int& out,
                 std::uint64_t min, std::uint64_t max,
                 const std::string& context) {
    auto node = map[key];
    if (!node)
      return false;
    key_at_[context + "." + key] = at(node.Mark());
    std::uint64_t value = 0;
    if (!parse_uint(node, value) || value < min || value > max) {
      error(node.Mark(),
            fmt::format("{}.{} must be an integer in [{}, {}], got '{}'",
                        context, key, min, max,
                        node.IsScalar() ? node.Scalar() : "<not a scalar>"));
      return false;
    }
    out = static_cast<Int>(value);
    return true;
  }

  static bool parse_uint(const YAML::Node& node, std::uint64_t& value) {
    if (!node.IsScalar())
      return false;
    auto& text = node.Scalar();
    if (text.empty() || !std::all_of(text.begin(), text.end(), [](char c) {
          return c >= '0' && c <= '9';
        }))
      return false;
    errno = 0;
    value = std::strtoull(text.c_str(), nullptr, 10);
    return errno == 0;
  }

  bool read_bool(const YAML::Node& map, const char* key, bool& out,
                 const std::string& context) {
    auto node = map[key];
    if (!node)
      return false;
    auto text = node.IsScalar() ? node.Scalar() : "";
    if (text == "true" || text == "yes" || text == "on")
      out = true;
    else if (text == "false" || text == "no" || text == "off")
      out = false;
    else {
      error(node.Mark(), fmt::format("{}.{} must be true or false, got '{}'",
                                     context, key, text));
      return false;
    }
    return true;
  }

  // A string that must be one of `choices`; returns its index or -1.
  int read_choice(const YAML::Node& map, const char* key,
                  const std::vector<std::string>& choices,
                  const std::string& context) {
    auto node = map[key];
    if (!node)
      return -1;
    auto text = node.IsScalar() ? node.Scalar() : "";
    for (std::size_t i = 0; i < choices.size(); ++i)
      if (text == choices[i])
        return static_cast<int>(i);
    auto hint = nearest(text, choices);
    error(at(node.Mark()),
          fmt::format("{}.{} must be one of {}, got '{}'", context, key,
                      fmt::join(choices, " | "), text),
          hint.empty() ? "" : fmt::format("; did you mean '{}'?", hint));
    return -1;
  }

  void read_root(const YAML::Node& root) {
    check_keys(root,
               {"name", "directory", "hosts", "workers", "model", "transfer",
                "control", "tls", "launch", "sim"},
               "the top level");
    if (read_string(root, "name", topo().name, "deployment") &&
        !is_valid_name(topo().name))
      error(root["name"].Mark(),
            "name must be 1-64 letters, digits, '-', '_' or '.'");
    read_hosts(root["hosts"]);
    read_directory(root["directory"]);
    read_workers(root["workers"]);
    if (auto node = root["model"])
      read_model(node);
    if (auto node = root["transfer"])
      read_transfer(node);
    read_control(root["control"]);
    if (auto node = root["tls"])
      read_tls(node);
    if (auto node = root["launch"])
      read_launch(node);
    if (auto node = root["sim"])
      read_sim(node);
  }

  void read_hosts(const YAML::Node& node) {
    if (!node) {
      // One machine: every process on this host, over loopback.
      topo().hosts.push_back({"local", "127.0.0.1", {file_, 0, 0}});
      return;
    }
    if (!node.IsSequence() || node.size() == 0) {
      error(node.Mark(), "hosts must be a non-empty list of {name, address}");
      return;
    }
    for (const auto& entry : node) {
      if (!expect_map(entry, "a hosts entry"))
        continue;
      check_keys(entry, {"name", "address"}, "a hosts entry");
      host_spec host;
      host.where = at(entry.Mark());
      if (!read_string(entry, "name", host.name, "host")) {
        error(entry.Mark(), "a hosts entry needs a name");
        continue;
      }
      if (!is_valid_name(host.name))
        error(entry["name"].Mark(),
              fmt::format("host name '{}' must be 1-64 letters, digits, "
                          "'-', '_' or '.'",
                          host.name));
      // A host without an address is dialled by its name (DNS / /etc/hosts).
      if (!read_string(entry, "address", host.address, "host " + host.name))
        host.address = host.name == "localhost" ? "127.0.0.1" : host.name;
      topo().hosts.push_back(std::move(host));
    }
  }

  void read_directory(const YAML::Node& node) {
    auto& dir = topo().directory;
    if (!topo().hosts.empty())
      dir.host = topo().hosts.front().name;
    dir.where = {file_, 0, 0};
    if (!node)
      return;
    if (!expect_map(node, "directory"))
      return;
    dir.where = at(node.Mark());
    check_keys(node, {"host", "port"}, "directory");
    read_string(node, "host", dir.host, "directory");
    read_uint(node, "port", dir.port, 1, 65535, "directory");
  }

  void read_workers(const YAML::Node& node) {
    if (!node) {
      error(location{file_, 0, 0},
            "no workers: the file needs a 'workers' list with at least "
            "one prefill and one decode worker");
      return;
    }
    if (!node.IsSequence() || node.size() == 0) {
      error(node.Mark(), "workers must be a non-empty list");
      return;
    }
    if (node.size() > runtime::max_workers) {
      error(node.Mark(),
            fmt::format("workers: {} entries, over the limit of {} workers "
                        "in one deployment",
                        node.size(), runtime::max_workers));
      return;
    }
    for (const auto& entry : node) {
      if (!expect_map(entry, "a workers entry"))
        continue;
      read_worker(entry);
    }
  }

  void read_worker(const YAML::Node& entry) {
    check_keys(entry,
               {"name", "role", "host", "gpu", "plugin", "plugin_env",
                "devices", "pool_blocks", "restart", "metrics_port"},
               "a workers entry");
    worker_spec worker;
    worker.where = at(entry.Mark());
    if (!read_string(entry, "name", worker.name, "worker")) {
      error(entry.Mark(), "a workers entry needs a name");
      return;
    }
    auto context = "worker " + worker.name;
    if (!is_valid_name(worker.name) || worker.name == "directory")
      error(entry["name"].Mark(),
            fmt::format("worker name '{}' must be 1-64 letters, digits, '-', "
                        "'_' or '.', and "
                        "not 'directory' (it names the log file)",
                        worker.name));
    if (!entry["role"])
      error(entry.Mark(),
            fmt::format("worker '{}' needs a role: prefill or decode",
                        worker.name));
    if (int role = read_choice(entry, "role", {"prefill", "decode"}, context);
        role >= 0)
      worker.role = role == 0 ? worker_role::prefill : worker_role::decode;
    read_worker_host(entry, worker);
    read_gpu(entry, worker, context);
    read_string(entry, "plugin", worker.plugin, context);
    read_plugin_env(entry, worker, context);
    read_devices(entry, worker, context);
    read_uint(entry, "pool_blocks", worker.pool_blocks, 1,
              runtime::max_pool_blocks, context);
    if (int policy =
            read_choice(entry, "restart", {"never", "on-failure"}, context);
        policy >= 0)
      worker.restart =
          policy == 0 ? restart_policy::never : restart_policy::on_failure;
    read_uint(entry, "metrics_port", worker.metrics_port, 0, 65535, context);
    topo().workers.push_back(std::move(worker));
  }

  void read_worker_host(const YAML::Node& entry, worker_spec& worker) {
    if (read_string(entry, "host", worker.host, "worker " + worker.name))
      return;
    if (topo().hosts.size() == 1) {
      worker.host = topo().hosts.front().name;
      return;
    }
    std::vector<std::string> names;
    for (auto& host : topo().hosts)
      names.push_back(host.name);
    error(entry.Mark(),
          fmt::format("worker '{}' needs a host: this file has several ({})",
                      worker.name, fmt::join(names, ", ")));
  }

  void read_gpu(const YAML::Node& entry, worker_spec& worker,
                const std::string& context) {
    auto node = entry["gpu"];
    if (!node)
      return;
    if (node.IsScalar() && node.Scalar() == "none")
      return;
    std::uint64_t index = 0;
    if (!parse_uint(node, index) || index > 1023) {
      error(node.Mark(),
            fmt::format("{}.gpu must be a device index (0, 1, ...) or 'none', "
                        "got '{}'",
                        context, node.IsScalar() ? node.Scalar() : "?"));
      return;
    }
    worker.gpu = static_cast<int>(index);
  }

  void read_plugin_env(const YAML::Node& entry, worker_spec& worker,
                       const std::string& context) {
    auto node = entry["plugin_env"];
    if (!node)
      return;
    if (!expect_map(node, context + ".plugin_env"))
      return;
    for (auto it = node.begin(); it != node.end(); ++it) {
      auto name = it->first.IsScalar() ? it->first.Scalar() : "";
      if (!is_env_name(name)) {
        error(it->first.Mark(),
              fmt::format("{}.plugin_env: '{}' is not an environment variable "
                          "name",
                          context, name));
        continue;
      }
      if (!it->second.IsScalar()) {
        error(it->second.Mark(),
              fmt::format("{}.plugin_env.{} must be a string or number",
                          context, name));
        continue;
      }
      worker.plugin_env[name] = it->second.Scalar();
    }
  }

  void read_devices(const YAML::Node& entry, worker_spec& worker,
                    const std::string& context) {
    auto node = entry["devices"];
    if (!node)
      return;
    if (!node.IsSequence()) {
      error(node.Mark(),
            fmt::format("{}.devices must be a list of plugin device names or "
                        "indexes",
                        context));
      return;
    }
    for (const auto& device : node) {
      if (!device.IsScalar() || device.Scalar().empty())
        error(device.Mark(),
              fmt::format("{}.devices entries must be names or indexes",
                          context));
      else
        worker.devices.push_back(device.Scalar());
    }
  }

  void read_model(const YAML::Node& node) {
    if (!expect_map(node, "model"))
      return;
    key_at_["model"] = at(node.Mark());
    check_keys(node,
               {"layers", "kv_heads", "head_dim", "dtype", "block_tokens"},
               "model");
    auto& model = topo().model;
    read_uint(node, "layers", model.layers, 1, 1024, "model");
    read_uint(node, "kv_heads", model.kv_heads, 1, 1024, "model");
    read_uint(node, "head_dim", model.head_dim, 1, 16384, "model");
    std::vector<std::string> dtypes{"fp16", "bf16", "fp32"};
    if (int dtype = read_choice(node, "dtype", dtypes, "model"); dtype >= 0)
      model.dtype = dtypes[static_cast<std::size_t>(dtype)];
    read_uint(node, "block_tokens", model.block_tokens, 1, 4096, "model");
  }

  void read_transfer(const YAML::Node& node) {
    if (!expect_map(node, "transfer"))
      return;
    check_keys(node,
               {"mode", "layerwise", "chunk_bytes", "comms_per_peer",
                "staging_slots", "timeout_ms"},
               "transfer");
    auto& transfer = topo().transfer;
    if (int mode = read_choice(node, "mode", {"push", "pull"}, "transfer");
        mode >= 0)
      transfer.mode = mode == 0 ? transfer_mode::push : transfer_mode::pull;
    read_bool(node, "layerwise", transfer.layerwise, "transfer");
    read_uint(node, "chunk_bytes", transfer.chunk_bytes,
              runtime::min_chunk_bytes, transport::max_chunk_bytes, "transfer");
    read_uint(node, "comms_per_peer", transfer.comms_per_peer, 1, 64,
              "transfer");
    read_uint(node, "staging_slots", transfer.staging_slots, 0,
              static_cast<std::uint32_t>(transport::max_staging_slots),
              "transfer");
    read_uint(node, "timeout_ms", transfer.timeout_ms, 1, 3600000, "transfer");
  }

  void read_control(const YAML::Node& node) {
    auto& control = topo().control;
    control.where = {file_, 0, 0};
    if (!node)
      return;
    if (!expect_map(node, "control"))
      return;
    control.where = at(node.Mark());
    check_keys(node, {"bind", "secret", "secret_file", "secret_env"},
               "control");
    if (read_string(node, "bind", control.bind, "control") &&
        control.bind != "host" && !is_ipv4(control.bind))
      error(node["bind"].Mark(),
            fmt::format("control.bind must be an IPv4 address or 'host' "
                        "(each host's address), got '{}'",
                        control.bind));
    int sources =
        int(read_string(node, "secret", control.secret, "control")) +
        int(read_string(node, "secret_file", control.secret_file, "control")) +
        int(read_string(node, "secret_env", control.secret_env, "control"));
    if (sources > 1)
      error(node.Mark(),
            "control: give at most one of secret, secret_file, secret_env");
    if (!control.secret_env.empty() && !is_env_name(control.secret_env))
      error(node["secret_env"].Mark(),
            fmt::format("control.secret_env '{}' is not an "
                        "environment variable name",
                        control.secret_env));
  }

  // `tls: off|on` or `tls: {dir: PATH}`.
  void read_tls(const YAML::Node& node) {
    auto& tls = topo().tls;
    tls.where = at(node.Mark());
    if (node.IsScalar()) {
      auto text = node.Scalar();
      if (text == "off" || text == "on")
        tls.enabled = text == "on";
      else
        error(node.Mark(),
              fmt::format("tls must be off, on or a map with dir, got '{}'",
                          text));
      return;
    }
    if (!expect_map(node, "tls"))
      return;
    check_keys(node, {"dir"}, "tls");
    read_string(node, "dir", tls.dir, "tls");
  }

  void read_launch(const YAML::Node& node) {
    if (!expect_map(node, "launch"))
      return;
    check_keys(
        node,
        {"log_dir", "max_restarts", "restart_backoff_ms", "stop_grace_ms"},
        "launch");
    auto& launch = topo().launch;
    read_string(node, "log_dir", launch.log_dir, "launch");
    read_uint(node, "max_restarts", launch.max_restarts, 0, 1000, "launch");
    read_uint(node, "restart_backoff_ms", launch.restart_backoff_ms, 0, 600000,
              "launch");
    read_uint(node, "stop_grace_ms", launch.stop_grace_ms, 0, 600000, "launch");
  }

  // ---- the simulator's section (docs/sim.md) ------------------------------

  bool read_double(const YAML::Node& map, const char* key, double& out,
                   double min, double max, const std::string& context) {
    auto node = map[key];
    if (!node)
      return false;
    if (!parse_double(node, out) || out < min || out > max) {
      error(node.Mark(),
            fmt::format("{}.{} must be a number in [{}, {}], got '{}'", context,
                        key, min, max,
                        node.IsScalar() ? node.Scalar() : "<not a scalar>"));
      return false;
    }
    return true;
  }

  static bool parse_double(const YAML::Node& node, double& value) {
    if (!node.IsScalar() || node.Scalar().empty())
      return false;
    char* end = nullptr;
    errno = 0;
    value = std::strtod(node.Scalar().c_str(), &end);
    return errno == 0 && *end == '\0' && std::isfinite(value);
  }

  // A table [[x, ms], ...]: at least one point, x > 0 strictly increasing,
  // ms >= 0 (piecewise linear in between, docs/sim.md).
  void read_table(const YAML::Node& map, const char* key,
                  std::vector<sim_point>& out, const char* x_name) {
    auto node = map[key];
    if (!node)
      return;
    auto bad = [&](const YAML::Node& at_node, const std::string& why) {
      error(at_node.Mark(),
            fmt::format("sim.{} must be a list of [{}, ms] pairs with {} > 0 "
                        "increasing and ms >= 0: {}",
                        key, x_name, x_name, why));
    };
    if (!node.IsSequence() || node.size() == 0)
      return bad(node, "not a non-empty list");
    std::vector<sim_point> table;
    for (const auto& pair : node) {
      sim_point point;
      if (!pair.IsSequence() || pair.size() != 2 ||
          !parse_double(pair[0], point.x) || !parse_double(pair[1], point.ms))
        return bad(pair, "an entry is not a pair of numbers");
      if (point.x <= 0 || point.ms < 0)
        return bad(pair,
                   fmt::format("[{}, {}] is out of range", point.x, point.ms));
      if (!table.empty() && point.x <= table.back().x)
        return bad(pair,
                   fmt::format("{} {} does not increase", x_name, point.x));
      table.push_back(point);
    }
    out = std::move(table);
  }

  // sim.transfer_spread_quantiles: [[p, factor], ...], at least two points,
  // p in [0, 1] strictly increasing, factor > 0 and nondecreasing (a
  // quantile function); instead of the log-normal's median and sigma.
  void read_spread_quantiles(const YAML::Node& map) {
    const char* key = "transfer_spread_quantiles";
    auto node = map[key];
    if (!node)
      return;
    auto bad = [&](const YAML::Node& at_node, const std::string& why) {
      error(at_node.Mark(),
            fmt::format("sim.{} must be a list of at least two [p, factor] "
                        "pairs with p in [0, 1] increasing and factor > 0 "
                        "not decreasing: {}",
                        key, why));
    };
    if (!node.IsSequence() || node.size() < 2)
      return bad(node, "not a list of two or more");
    std::vector<sim_quantile> table;
    for (const auto& pair : node) {
      sim_quantile q;
      if (!pair.IsSequence() || pair.size() != 2 ||
          !parse_double(pair[0], q.p) || !parse_double(pair[1], q.factor))
        return bad(pair, "an entry is not a pair of numbers");
      if (q.p < 0 || q.p > 1 || q.factor <= 0)
        return bad(pair,
                   fmt::format("[{}, {}] is out of range", q.p, q.factor));
      if (!table.empty() && q.p <= table.back().p)
        return bad(pair, fmt::format("p {} does not increase", q.p));
      if (!table.empty() && q.factor < table.back().factor)
        return bad(pair,
                   fmt::format("factor {} at p {} decreases", q.factor, q.p));
      table.push_back(q);
    }
    for (auto other : {"transfer_spread_median", "transfer_spread_sigma"})
      if (map[other])
        return error(map[other].Mark(),
                     fmt::format("sim.{} and sim.{} do not go together: the "
                                 "quantile table is the whole spread",
                                 other, key));
    topo().sim.transfer_spread_quantiles = std::move(table);
  }

  void read_sim(const YAML::Node& node) {
    if (!expect_map(node, "sim"))
      return;
    auto& sim = topo().sim;
    sim.where = at(node.Mark());
    check_keys(node,
               {"nic_gbit_per_s", "nics_per_host", "latency_us", "message_us",
                "block_us", "ipc_gbyte_per_s", "ipc_setup_us", "hop_us",
                "router_us", "transfer_spread_median", "transfer_spread_sigma",
                "transfer_spread_quantiles", "prefill_ms", "decode_step_ms",
                "decode_max_batch", "routing", "prefix_reuse", "faults"},
               "sim");
    read_double(node, "nic_gbit_per_s", sim.nic_gbit_per_s, 0.001, 1e6, "sim");
    read_uint(node, "nics_per_host", sim.nics_per_host, 1, 64, "sim");
    read_double(node, "latency_us", sim.latency_us, 0, 1e7, "sim");
    read_double(node, "message_us", sim.message_us, 0, 1e7, "sim");
    read_double(node, "block_us", sim.block_us, 0, 1e7, "sim");
    read_double(node, "ipc_gbyte_per_s", sim.ipc_gbyte_per_s, 0.001, 1e6,
                "sim");
    read_double(node, "ipc_setup_us", sim.ipc_setup_us, 0, 1e7, "sim");
    read_double(node, "hop_us", sim.hop_us, 0, 1e7, "sim");
    read_double(node, "router_us", sim.router_us, 0, 1e10, "sim");
    read_double(node, "transfer_spread_median", sim.transfer_spread_median,
                0.001, 1000, "sim");
    read_double(node, "transfer_spread_sigma", sim.transfer_spread_sigma, 0, 5,
                "sim");
    read_spread_quantiles(node);
    read_table(node, "prefill_ms", sim.prefill_ms, "tokens");
    read_table(node, "decode_step_ms", sim.decode_step_ms, "batch");
    read_uint(node, "decode_max_batch", sim.decode_max_batch, 1, 1u << 20,
              "sim");
    if (int r =
            read_choice(node, "routing",
                        {"round-robin", "least-loaded", "prefix-aware"}, "sim");
        r >= 0)
      sim.routing = static_cast<sim_routing>(r);
    read_bool(node, "prefix_reuse", sim.prefix_reuse, "sim");
    read_faults(node["faults"], sim.faults);
  }

  // sim.faults: strings in --fault's form, kept with their place; what
  // they say is the simulator's to check (sim/src/fault.cpp), and it names
  // a bad one by that place.
  void read_faults(const YAML::Node& node, std::vector<sim_fault>& out) {
    if (!node)
      return;
    const char* form =
        "down=WORKER,at=SECONDS or slow=HOST,gbit=RATE,at=SECONDS";
    if (!node.IsSequence())
      return error(
          node.Mark(),
          fmt::format("sim.faults must be a list of faults ({})", form));
    for (const auto& entry : node) {
      if (!entry.IsScalar() || entry.Scalar().empty()) {
        error(entry.Mark(), fmt::format("sim.faults: an entry is not a "
                                        "string like {}",
                                        form));
        continue;
      }
      out.push_back({entry.Scalar(), at(entry.Mark())});
    }
  }

  // ---- checks across the whole deployment

  void cross_check() {
    check_unique_hosts();
    check_unique_workers();
    check_worker_hosts();
    check_gpus();
    check_roles();
    check_plugins();
    check_ports();
    check_control();
    check_worker_limits();
  }

  std::vector<std::string> host_names() const {
    std::vector<std::string> names;
    for (auto& host : result_.topology->hosts)
      names.push_back(host.name);
    return names;
  }

  std::string unknown_host_hint(const std::string& name) const {
    auto names = host_names();
    auto suggestion = nearest(name, names);
    if (!suggestion.empty())
      return fmt::format("; did you mean '{}'?", suggestion);
    return fmt::format("; hosts are: {}", fmt::join(names, ", "));
  }

  void check_unique_hosts() {
    std::map<std::string, const host_spec*> by_name, by_address;
    for (auto& host : topo().hosts) {
      if (auto [it, fresh] = by_name.emplace(host.name, &host); !fresh)
        error(host.where, fmt::format("duplicate host name '{}' (first at {})",
                                      host.name, it->second->where.str()));
      if (auto [it, fresh] = by_address.emplace(host.address, &host);
          !fresh && it->second->name != host.name)
        warning(host.where,
                fmt::format("hosts '{}' and '{}' share the address {}; "
                            "`kvferry launch` needs --host there",
                            it->second->name, host.name, host.address));
    }
  }

  void check_unique_workers() {
    std::map<std::string, const worker_spec*> by_name;
    for (auto& worker : topo().workers)
      if (auto [it, fresh] = by_name.emplace(worker.name, &worker); !fresh)
        error(worker.where,
              fmt::format("duplicate worker name '{}' (first at {})",
                          worker.name, it->second->where.str()));
  }

  void check_worker_hosts() {
    auto& dir = topo().directory;
    if (!dir.host.empty() && !topo().find_host(dir.host))
      error(dir.where,
            fmt::format("directory.host '{}' is not in hosts", dir.host),
            unknown_host_hint(dir.host));
    for (auto& worker : topo().workers)
      if (!worker.host.empty() && !topo().find_host(worker.host))
        error(worker.where,
              fmt::format("worker '{}' is on unknown host '{}'", worker.name,
                          worker.host),
              unknown_host_hint(worker.host));
  }

  void check_gpus() {
    std::map<std::pair<std::string, int>, const worker_spec*> owners;
    for (auto& worker : topo().workers) {
      if (!worker.gpu)
        continue;
      auto [it, fresh] =
          owners.emplace(std::make_pair(worker.host, *worker.gpu), &worker);
      // Allowed (the demo runs so), but worth a word: a typo looks the same.
      if (!fresh)
        warning(worker.where,
                fmt::format("workers '{}' and '{}' share GPU {} of host '{}': "
                            "kvferry launch runs them under a private MPS "
                            "daemon (docs/deploy.md)",
                            it->second->name, worker.name, *worker.gpu,
                            worker.host));
    }
  }

  void check_roles() {
    std::vector<std::string> prefill, decode;
    for (auto& worker : topo().workers)
      (worker.role == worker_role::prefill ? prefill : decode)
          .push_back(worker.name);
    if (topo().workers.empty())
      return;
    if (prefill.empty())
      error(topo().workers.front().where,
            fmt::format("decode worker(s) {} have no prefill worker to feed "
                        "them; add a worker "
                        "with role: prefill",
                        fmt::join(decode, ", ")));
    if (decode.empty())
      error(topo().workers.front().where,
            fmt::format("prefill worker(s) {} have no decode worker to send "
                        "to; add a worker "
                        "with role: decode",
                        fmt::join(prefill, ", ")));
  }

  void check_plugins() {
    for (auto& worker : topo().workers) {
      worker.plugin_file = find_plugin(worker.plugin, options_);
      if (!worker.plugin_file.empty())
        continue;
      auto what =
          worker.plugin.find('/') != std::string::npos
              ? fmt::format("worker '{}': plugin file '{}' does not exist",
                            worker.name, worker.plugin)
              : fmt::format(
                    "worker '{}': plugin '{}' not found (looked for "
                    "libnccl-net-{}.so in $KVFERRY_PLUGIN_PATH, the kvferry "
                    "binary's ../lib, the install libdir, $LD_LIBRARY_PATH "
                    "and the system library dirs)",
                    worker.name, worker.plugin, worker.plugin);
      if (options_.allow_missing_plugins)
        warning(worker.where, what);
      else
        error(worker.where, what,
              "; pass --allow-missing-plugins to check a file meant for "
              "another machine");
    }
  }

  void check_ports() {
    // Two listeners on one host and one port cannot both start.
    std::map<std::pair<std::string, int>, std::string> owners;
    auto& dir = topo().directory;
    owners[{dir.host, dir.port}] = "the directory";
    for (auto& worker : topo().workers) {
      if (worker.metrics_port == 0)
        continue;
      auto [it, fresh] =
          owners.emplace(std::make_pair(worker.host, int(worker.metrics_port)),
                         "worker '" + worker.name + "'");
      if (!fresh)
        error(worker.where,
              fmt::format(
                  "worker '{}': metrics_port {} on host '{}' is already "
                  "used by {}",
                  worker.name, worker.metrics_port, worker.host, it->second));
    }
  }

  void check_control() {
    auto& control = topo().control;
    bool remote_hosts =
        std::any_of(topo().hosts.begin(), topo().hosts.end(),
                    [](auto& host) { return !is_loopback(host.address); });
    if (remote_hosts && topo().hosts.size() > 1 && is_loopback(control.bind))
      error(
          control.where,
          fmt::format("control.bind is {} but the hosts are on other machines, "
                      "which cannot reach a loopback address; use bind: host "
                      "(each host's address) or 0.0.0.0",
                      control.bind));
    bool has_secret = !control.secret.empty() || !control.secret_env.empty() ||
                      !control.secret_file.empty();
    if (!has_secret && !is_loopback(control.bind))
      warning(control.where,
              "the control plane listens beyond loopback without a secret; set "
              "control.secret_env or control.secret_file");
    if (!control.secret.empty())
      warning(control.where,
              "control.secret puts the secret in the file; prefer secret_env "
              "or secret_file");
    if (!control.secret_file.empty() &&
        ::access(control.secret_file.c_str(), R_OK) != 0)
      warning(control.where,
              fmt::format("control.secret_file '{}' is not readable here",
                          control.secret_file));
  }

  // The rules `kvferry worker` applies to its flags (runtime/worker_limits),
  // applied to what each worker would be started with. A host-memory pool is
  // held against this machine's memory for workers on a loopback host (this
  // machine); other hosts' memory is not known here.
  void check_worker_limits() {
    std::set<std::string> reported; // model/transfer problems are shared
    for (auto& worker : topo().workers) {
      auto host = topo().find_host(worker.host);
      bool local = host != nullptr && is_loopback(host->address);
      auto problems = runtime::check_worker_params(
          worker_params_of(worker),
          local ? runtime::physical_memory_bytes() : 0);
      for (auto& problem : problems) {
        auto [field, where] = field_of(problem.param, worker);
        auto text = fmt::format("{}: {}", field, problem.what);
        if (reported.insert(text).second)
          error(where, text);
      }
    }
  }

  runtime::worker_params worker_params_of(const worker_spec& worker) const {
    auto& t = *result_.topology;
    runtime::worker_params p;
    p.geometry.layers = t.model.layers;
    p.geometry.kv_heads = t.model.kv_heads;
    p.geometry.head_dim = t.model.head_dim;
    p.geometry.dtype = parse_dtype(t.model.dtype).value_or(kv_dtype::fp16);
    p.geometry.block_tokens = t.model.block_tokens;
    p.pool_blocks = worker.pool_blocks;
    p.gpu_pool = worker.gpu.has_value();
    p.chunk_bytes = t.transfer.chunk_bytes;
    p.comms_per_peer = t.transfer.comms_per_peer;
    p.staging_slots = t.transfer.staging_slots;
    p.timeout_ms = t.transfer.timeout_ms;
    return p;
  }

  // The key a worker parameter comes from, and where it is written (the
  // worker's entry, or the file, when it was defaulted).
  std::pair<std::string, location> field_of(runtime::worker_param param,
                                            const worker_spec& worker) const {
    auto key = [&](const std::string& field, const std::string& context,
                   const std::string& name, const location& fallback) {
      auto it = key_at_.find(context);
      return std::make_pair(field + name,
                            it != key_at_.end() ? it->second : fallback);
    };
    auto file = location{file_, 0, 0};
    auto in_worker = "worker " + worker.name;
    switch (param) {
    case runtime::worker_param::geometry:
      return key("model", "model", "", file);
    case runtime::worker_param::pool_blocks:
      return key(in_worker, in_worker + ".pool_blocks", ".pool_blocks",
                 worker.where);
    case runtime::worker_param::chunk_bytes:
      return key("transfer", "transfer.chunk_bytes", ".chunk_bytes", file);
    case runtime::worker_param::comms_per_peer:
      return key("transfer", "transfer.comms_per_peer", ".comms_per_peer",
                 file);
    case runtime::worker_param::staging_slots:
      return key("transfer", "transfer.staging_slots", ".staging_slots", file);
    case runtime::worker_param::timeout_ms:
      return key("transfer", "transfer.timeout_ms", ".timeout_ms", file);
    }
    return {"?", file};
  }

  std::string file_;
  load_options options_;
  load_result result_;
  // Where each numeric key was written: "transfer.chunk_bytes", "worker
  // d0.pool_blocks", and "model" for the model section.
  std::map<std::string, location> key_at_;
};

} // namespace

load_result parse(const std::string& yaml_text, const std::string& file_name,
                  const load_options& options) {
  return parser(file_name, options).run(yaml_text);
}

load_result load_file(const std::string& path, const load_options& options) {
  load_result result;
  std::ifstream in(path);
  if (!in) {
    result.errors.push_back(fmt::format("cannot open topology file '{}': {}",
                                        path, std::strerror(errno)));
    return result;
  }
  // The size is checked before anything is read or parsed, so that a huge
  // file costs a stat, not minutes and gigabytes. A pipe or a file that
  // grows is read only up to one byte past the limit.
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
      std::uint64_t(st.st_size) > max_topology_bytes) {
    result.errors.push_back(too_big(path, std::uint64_t(st.st_size)));
    return result;
  }
  std::string text(max_topology_bytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  return parse(text, path, options);
}

} // namespace kvferry::topology
