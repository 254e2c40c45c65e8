// `kvferry bench endpoint`: kvferry::endpoint's one- and two-sided transfers
// (run_endpoint_bench: two endpoints in this process over the plugin, every
// byte verified), beside, in the same run, the plugin's own figure from
// `kvferry bench net` (a child process: the ceiling) and the same small
// writes from Python (a child python3 running kvferry.bench: Python's added
// cost per call). With --gpu N, CUDA IPC rows too: this process and a peer
// process (this binary again, --ipc-peer) on GPU N, one-sided writes and
// reads (every byte verified, the path checked through stats()), beside
// `kvferry bench ipc`'s batched kernel and contiguous-copy ceiling for the
// same sizes, run as a child in the same run; and the like-for-like case:
// vector writes and reads, each one call over as many shuffled blocks as
// bench ipc moves in its one kernel (--vector-sizes, --total). Each such
// call becomes one batched kernel launch of the transfer actor
// (transfer_ipc.cpp, launch_ipc_copy). Without a GPU these rows are skipped.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <unistd.h>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "kvferry/endpoint_bench.hpp"
#include "size_list.hpp"

#ifdef KVFERRY_HAVE_CUDA
#include <chrono>
#include <cstring>
#include <deque>
#include <numeric>
#include <random>
#include <stdexcept>
#include <thread>

#include <cuda_runtime_api.h>

#include "child_process.hpp"
#include "kvferry/endpoint.hpp"
#endif

namespace kvferry::app {
namespace {

struct options {
  std::string sizes = "256,4K,64K,1M,16M,256M";
  std::string depths = "1,16";
  std::string ops = "write,read,send";
  std::string plugin;
  std::size_t threads = endpoint_options{}.threads; // 0: one per core
  std::string python = "python3";                   // empty: no Python column
  std::string python_sizes = "256,4K";
  bool net = true;
  int rounds = 1; // of (endpoint rows, bench net, Python), alternated
  std::string json_path;
  int gpu = -1; // >= 0: CUDA IPC rows on this GPU
  // The vector rows' block sizes ('': none) and bytes per operation (bench
  // ipc's --sizes and --total).
  std::string vector_sizes = "4K,64K,2M";
  std::string total = "256M";
  bool ipc_peer = false;        // internal: be the IPC rows' peer process
  std::uint64_t peer_bytes = 0; // internal: the peer's buffer
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

// Python's depth-1 writes of one size: us per op, and the write call alone
// (p50).
struct py_row {
  double us_per_op = 0;
  double call_p50_us = 0;
};

std::map<std::uint64_t, py_row> python_rows(const options& o) {
  auto file = temp_file("python");
  auto dir = self_dir();
  auto cmd = fmt::format(
      "PYTHONPATH='{0}/../python:{0}/../lib/python3/dist-packages'"
      "${{PYTHONPATH:+:$PYTHONPATH}} '{1}' -m kvferry.bench --sizes '{2}' "
      "--json '{3}' > /dev/null",
      dir, o.python, o.python_sizes, file);
  std::map<std::uint64_t, py_row> out;
  auto doc = run_json(cmd, file, "the Python run");
  if (doc.is_array())
    for (auto& row : doc)
      out[row["size"].get<std::uint64_t>()] = {
          row["us_per_op"].get<double>(), row["call_p50_us"].get<double>()};
  return out;
}

double median(std::vector<double> xs) {
  if (xs.empty())
    return 0;
  std::sort(xs.begin(), xs.end());
  auto m = xs.size() / 2;
  return xs.size() % 2 == 1 ? xs[m] : (xs[m - 1] + xs[m]) / 2;
}

#ifdef KVFERRY_HAVE_CUDA

// ---- CUDA IPC rows: this process and a peer process on one GPU

constexpr auto ipc_limit = std::chrono::milliseconds(60000);

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(
        fmt::format("{}: {}", what, cudaGetErrorString(e)));
}

template<class T>
T must(result<T> r, const char* what) {
  if (!r.ok())
    throw std::runtime_error(fmt::format("{}: {}", what, r.error().message()));
  return std::move(r).value();
}

void must(const status& s, const char* what) {
  if (!s.ok())
    throw std::runtime_error(fmt::format("{}: {}", what, s.message()));
}

struct device_buffer {
  device_buffer(int gpu, std::uint64_t n) {
    cuda_check(cudaSetDevice(gpu), "cudaSetDevice");
    cuda_check(cudaMalloc(&data, n), "cudaMalloc");
    cuda_check(cudaMemset(data, 0, n), "cudaMemset");
    cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  }
  ~device_buffer() { cudaFree(data); }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  void* data = nullptr;
};

endpoint make_gpu_endpoint(int gpu, const char* name) {
  endpoint_options eo;
  eo.gpu = gpu;
  eo.name = fmt::format("{}-{}", name, ::getpid());
  eo.transfer_timeout = ipc_limit;
  return must(endpoint::create(eo), "create an endpoint");
}

std::vector<std::uint8_t> take_note(endpoint& ep) {
  auto until = std::chrono::steady_clock::now() + ipc_limit;
  while (std::chrono::steady_clock::now() < until) {
    auto notes = ep.take_notifications();
    if (!notes.empty())
      return notes.front().bytes;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  throw std::runtime_error("no notification from the peer within 60 s");
}

// The peer process: a GPU buffer advertised to whoever connects first; its
// metadata on stdout (hex); ends once told "done".
int run_ipc_peer(const options& o) {
  try {
    auto ep = make_gpu_endpoint(o.gpu, "bench-ipc-peer");
    device_buffer buf(o.gpu, o.peer_bytes);
    auto region = must(ep.reg(buf.data, o.peer_bytes), "reg");
    std::string hex;
    for (auto b : ep.metadata())
      hex += fmt::format("{:02x}", b);
    std::printf("ipc-peer meta %s\n", hex.c_str());
    std::fflush(stdout);
    auto conn = must(ep.accept(ipc_limit), "accept");
    auto desc = must(ep.advertise(region, 0, o.peer_bytes), "advertise");
    auto blob = desc.to_bytes();
    must(ep.notify(conn, {blob.data(), blob.size()}), "notify");
    // Until "done" (the parent stops this process should it not say so).
    auto until = std::chrono::steady_clock::now() + std::chrono::hours(1);
    while (std::chrono::steady_clock::now() < until) {
      for (const auto& note : ep.take_notifications())
        if (std::string(note.bytes.begin(), note.bytes.end()) == "done")
          return 0;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench endpoint (IPC peer): %s\n", e.what());
    return 1;
  }
}

// Members in this order: the endpoint goes before the memory it registered,
// the peer process last.
struct ipc_bench {
  int gpu;
  std::uint64_t bytes;
  std::unique_ptr<child_process> peer;
  device_buffer src, dst;
  endpoint ep;
  conn_id conn = 0;
  descriptor remote;
  std::vector<std::uint8_t> pattern;
  region_id sr = 0, dr = 0;

  ipc_bench(int g, std::uint64_t n, std::unique_ptr<child_process> p,
            const std::vector<std::uint8_t>& meta)
      : gpu(g), bytes(n), peer(std::move(p)), src(g, n), dst(g, n),
        ep(make_gpu_endpoint(g, "bench-ipc")) {
    conn = must(ep.connect(meta), "connect to the IPC peer");
    auto blob = take_note(ep);
    remote = must(descriptor::parse(blob.data(), blob.size()), "descriptor");
    pattern.resize(n);
    for (std::size_t i = 0; i < n; ++i)
      pattern[i] = static_cast<std::uint8_t>(i * 7 + i / 4093);
    cuda_check(cudaMemcpy(src.data, pattern.data(), n, cudaMemcpyHostToDevice),
               "cudaMemcpy");
    sr = must(ep.reg(src.data, n), "reg");
    dr = must(ep.reg(dst.data, n), "reg");
  }

  xfer_id start(bool write, region_id local, std::uint64_t off,
                std::uint64_t size) {
    auto there = must(remote.sub(off, size), "descriptor");
    return write ? must(ep.write(conn, {{local, off, size}}, there), "write")
                 : must(ep.read(conn, {{local, off, size}}, there), "read");
  }
  void finish(xfer_id id) { must(ep.wait(id, ipc_limit), "wait"); }

  // dst[0, n) (device) equals the pattern's first n bytes.
  bool dst_matches(std::uint64_t n) {
    std::vector<std::uint8_t> host(n);
    cuda_check(cudaMemcpy(host.data(), dst.data, n, cudaMemcpyDeviceToHost),
               "cudaMemcpy");
    return std::equal(host.begin(), host.end(), pattern.begin());
  }
};

// `n` operations, `depth` in flight: each started by start(k) (its
// transfer id), awaited in order by finish. Elapsed seconds, and each
// operation's issue-to-completion time (us).
template<class Start>
std::pair<double, std::vector<double>> timed_ops(ipc_bench& b, std::uint64_t n,
                                                 int depth, Start start) {
  using clock_type = std::chrono::steady_clock;
  std::deque<std::pair<xfer_id, clock_type::time_point>> in_flight;
  std::vector<double> lat;
  auto t0 = clock_type::now();
  for (std::uint64_t k = 0; k < n || !in_flight.empty();) {
    if (k < n && in_flight.size() < static_cast<std::size_t>(depth)) {
      in_flight.emplace_back(start(k), clock_type::now());
      ++k;
      continue;
    }
    b.finish(in_flight.front().first);
    lat.push_back(std::chrono::duration<double, std::micro>(
                      clock_type::now() - in_flight.front().second)
                      .count());
    in_flight.pop_front();
  }
  return {std::chrono::duration<double>(clock_type::now() - t0).count(),
          std::move(lat)};
}

endpoint_bench_row ipc_measure(ipc_bench& b, bool write, std::uint64_t size,
                               int depth, bool& all_ipc) {
  const std::uint64_t slots = std::max<std::uint64_t>(
      1, std::min<std::uint64_t>(static_cast<std::uint64_t>(depth),
                                 b.bytes / size));
  const std::uint64_t n =
      std::clamp<std::uint64_t>((std::uint64_t{512} << 20) / size,
                                std::max<std::uint64_t>(4, slots), 2000);
  // Poisoned first: the peer's slots (writes) or ours (reads).
  cuda_check(cudaMemset(b.dst.data, 0, slots * size), "cudaMemset");
  cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  if (write)
    b.finish(b.start(true, b.dr, 0, slots * size));
  const auto before = b.ep.stats().ipc_transfers;
  auto [secs, lat] = timed_ops(b, n, depth, [&](std::uint64_t k) {
    return b.start(write, write ? b.sr : b.dr, (k % slots) * size, size);
  });
  all_ipc &= b.ep.stats().ipc_transfers - before == n;
  if (write) // read the peer's slots back to check them
    b.finish(b.start(false, b.dr, 0, slots * size));
  return bench_row(write ? "write" : "read", size, depth, n, secs,
                   std::move(lat), b.dst_matches(slots * size));
}

// ---- vector rows: bench ipc's case through the endpoint

// Blocks of `block` bytes, `blocks` of them: block i moves from slot
// src[i] of its source to slot dst[i] of its destination, both slot lists
// shuffled over a pool of `pool` bytes (as bench ipc scatters its blocks
// over pools twice its total).
struct block_layout {
  std::uint64_t block = 0;
  std::vector<std::uint64_t> src, dst;
};

block_layout shuffled_blocks(std::uint64_t block, std::uint64_t blocks,
                             std::uint64_t pool, std::mt19937_64& rng) {
  auto slots = [&] {
    std::vector<std::uint64_t> all(pool / block);
    std::iota(all.begin(), all.end(), std::uint64_t{0});
    std::shuffle(all.begin(), all.end(), rng);
    all.resize(blocks);
    return all;
  };
  block_layout l;
  l.block = block;
  l.src = slots();
  l.dst = slots();
  return l;
}

// One operation's arguments, built once (untimed): a write takes the
// pattern's src slots of our source region into the peer's dst slots; a
// read takes the peer's src slots (the pattern) into our dst slots of our
// destination region. Either way block i lands at dst[i] * block.
struct vector_op {
  std::vector<slice> local;
  std::vector<descriptor> remote;
};

vector_op vector_args(const ipc_bench& b, bool write, const block_layout& l) {
  vector_op v;
  v.local.reserve(l.src.size());
  v.remote.reserve(l.src.size());
  for (std::size_t i = 0; i < l.src.size(); ++i) {
    const auto src = l.src[i] * l.block, dst = l.dst[i] * l.block;
    v.local.push_back({write ? b.sr : b.dr, write ? src : dst, l.block});
    v.remote.push_back(
        must(b.remote.sub(write ? dst : src, l.block), "descriptor"));
  }
  return v;
}

// Every block of `l` in our destination buffer equals the pattern's block.
bool blocks_match(ipc_bench& b, const block_layout& l) {
  std::vector<std::uint8_t> host(b.bytes);
  cuda_check(
      cudaMemcpy(host.data(), b.dst.data, b.bytes, cudaMemcpyDeviceToHost),
      "cudaMemcpy");
  for (std::size_t i = 0; i < l.src.size(); ++i)
    if (std::memcmp(host.data() + l.dst[i] * l.block,
                    b.pattern.data() + l.src[i] * l.block, l.block) != 0)
      return false;
  return true;
}

// Vector writes (into a poisoned peer buffer, read back whole to check) or
// reads (of the peer's buffer, which holds the pattern, into our poisoned
// one): each operation one call over every block of `l`.
endpoint_bench_row vector_measure(ipc_bench& b, bool write,
                                  const block_layout& l, int depth,
                                  bool& all_ipc) {
  const auto args = vector_args(b, write, l);
  const std::uint64_t bytes = l.block * l.src.size();
  const std::uint64_t n =
      std::max<std::uint64_t>(20, 2 * static_cast<std::uint64_t>(depth));
  cuda_check(cudaMemset(b.dst.data, 0, b.bytes), "cudaMemset");
  cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  if (write)
    b.finish(b.start(true, b.dr, 0, b.bytes));
  auto call = [&](std::uint64_t) {
    return write ? must(b.ep.write(b.conn, args.local, args.remote), "write")
                 : must(b.ep.read(b.conn, args.local, args.remote), "read");
  };
  // One untimed round at this depth first: the first calls of a new size
  // grow the copy engine's plan staging (pinned, up to 8 slots, a
  // millisecond or more each at 65,536 extents), which bench ipc's prepared
  // kernel never pays; the figure is the steady state.
  const auto before = b.ep.stats().ipc_transfers;
  timed_ops(b, static_cast<std::uint64_t>(depth), depth, call);
  auto [secs, lat] = timed_ops(b, n, depth, call);
  all_ipc &= b.ep.stats().ipc_transfers - before == n + depth;
  if (write)
    b.finish(b.start(false, b.dr, 0, b.bytes));
  auto row = bench_row(write ? "write" : "read", bytes, depth, n, secs,
                       std::move(lat), blocks_match(b, l));
  row.size = l.block;
  return row;
}

// The IPC rows: writes, then reads (of the peer's buffer, written whole
// with the pattern first); each contiguous, then in vector form.
// `all_ipc`: every timed transfer took CUDA IPC.
struct ipc_results {
  std::vector<endpoint_bench_row> rows, vector_rows;
  bool all_ipc = true;
};

ipc_results ipc_rows(const options& o, const std::vector<std::uint64_t>& sizes,
                     const std::vector<int>& depths) {
  const auto blocks = parse_sizes(o.vector_sizes);
  const auto total = parse_size(o.total);
  auto biggest = *std::max_element(sizes.begin(), sizes.end());
  std::uint64_t bytes = std::clamp<std::uint64_t>(
      biggest * 4, std::uint64_t{64} << 20, std::uint64_t{1} << 30);
  bytes = std::max(bytes, biggest);
  if (!blocks.empty()) // room to scatter, as bench ipc's pools twice --total
    bytes = std::max(bytes, 2 * total);
  auto peer = std::make_unique<child_process>(
      "bench endpoint's IPC peer",
      std::vector<std::string>{"kvferry", "bench", "endpoint", "--ipc-peer",
                               "--gpu", std::to_string(o.gpu), "--peer-bytes",
                               std::to_string(bytes)});
  auto line = peer->wait_for_line("ipc-peer meta ", ipc_limit);
  auto hex = line.substr(line.find("meta ") + 5);
  std::vector<std::uint8_t> meta;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
    meta.push_back(
        static_cast<std::uint8_t>(std::stoul(hex.substr(i, 2), nullptr, 16)));
  ipc_bench b(o.gpu, bytes, std::move(peer), meta);
  std::mt19937_64 rng(42);
  std::vector<block_layout> layouts;
  for (auto block : blocks)
    layouts.push_back(shuffled_blocks(block, total / block, bytes, rng));
  ipc_results out;
  for (bool write : {true, false}) {
    if (!write) // the peer's buffer: the pattern
      b.finish(b.start(true, b.sr, 0, bytes));
    for (auto size : sizes)
      for (int depth : depths)
        out.rows.push_back(ipc_measure(b, write, size, depth, out.all_ipc));
    for (const auto& l : layouts)
      for (int depth : depths)
        out.vector_rows.push_back(
            vector_measure(b, write, l, depth, out.all_ipc));
  }
  must(b.ep.notify(b.conn, std::vector<std::uint8_t>{'d', 'o', 'n', 'e'}),
       "notify");
  return out;
}

// bench ipc's figures for one block size: its batched kernel (plan
// prepared once), the same with the plan built and uploaded each time, and
// its contiguous-copy ceiling (GB/s).
struct ipc_figure {
  double kernel = 0, with_plan = 0, contiguous = 0;
};

// block size -> bench ipc's figures, for `sizes` over `total` bytes.
std::map<std::uint64_t, ipc_figure>
ipc_figures(const options& o, const std::vector<std::uint64_t>& sizes,
            std::uint64_t total) {
  std::string list;
  for (auto s : sizes)
    if (s <= total && s % 16 == 0) // what bench ipc takes
      list += (list.empty() ? "" : ",") + std::to_string(s);
  std::map<std::uint64_t, ipc_figure> out;
  if (list.empty())
    return out;
  auto file = temp_file("ipc");
  auto cmd = fmt::format("'{}/kvferry' bench ipc --sizes '{}' --total {} "
                         "--src-gpu {} --dst-gpu {} --no-unpack --json '{}' "
                         "> /dev/null",
                         self_dir(), list, total, o.gpu, o.gpu, file);
  auto doc = run_json(cmd, file, "bench ipc");
  if (doc.is_object())
    for (auto& row : doc["sizes"])
      if (row.contains("kvferry") && row.contains("contiguous"))
        out[row["block_bytes"].get<std::uint64_t>()] = {
            row["kvferry"]["gbps"].get<double>(),
            row.contains("kvferry_with_plan")
                ? row["kvferry_with_plan"]["gbps"].get<double>()
                : 0.0,
            row["contiguous"]["gbps"].get<double>()};
  return out;
}

#endif

#ifdef KVFERRY_HAVE_CUDA

// The contiguous rows: one slice per operation, beside bench ipc's kernel
// and ceiling for blocks of that size (not like for like: see the vector
// rows).
bool print_contiguous(const options& o, const ipc_results& res,
                      const std::map<std::uint64_t, ipc_figure>& fig,
                      nlohmann::json& doc) {
  std::printf("\nCUDA IPC, two processes on GPU %d (path: %s)\n", o.gpu,
              res.all_ipc ? "cuda_ipc for every transfer" : "NOT ALL CUDA IPC");
  std::printf("%-6s %9s %5s %9s %9s %9s %8s %9s %9s %6s\n", "op", "size",
              "depth", "GB/s", "us/op", "p50 us", "verified", "ipc GB/s",
              "ceiling", "ratio");
  bool ok = true;
  for (const auto& r : res.rows) {
    ok &= r.verified;
    auto f = fig.find(r.size);
    std::string k = "-", c = "-", ratio = "-";
    if (f != fig.end()) {
      k = fmt::format("{:.1f}", f->second.kernel);
      c = fmt::format("{:.1f}", f->second.contiguous);
      if (r.depth == 16)
        ratio = fmt::format("{:.2f}", r.gbps / f->second.kernel);
    }
    std::printf("%-6s %9llu %5d %9.3f %9.1f %9.1f %8s %9s %9s %6s\n",
                r.op.c_str(), static_cast<unsigned long long>(r.size), r.depth,
                r.gbps, r.us_per_op, r.p50_us, r.verified ? "yes" : "NO",
                k.c_str(), c.c_str(), ratio.c_str());
    nlohmann::json row = {{"op", r.op},         {"size", r.size},
                          {"depth", r.depth},   {"ops", r.ops},
                          {"gbps", r.gbps},     {"us_per_op", r.us_per_op},
                          {"p50_us", r.p50_us}, {"verified", r.verified},
                          {"path", "cuda_ipc"}};
    if (f != fig.end()) {
      row["ipc_kernel_gbps"] = f->second.kernel;
      row["ipc_contiguous_gbps"] = f->second.contiguous;
    }
    doc.push_back(row);
  }
  std::printf("(ipc: `kvferry bench ipc` on GPU %d in the same run, its "
              "batched kernel over blocks of that size; ceiling: its one "
              "contiguous copy of the same total; ratio = endpoint / ipc at "
              "depth 16)\n",
              o.gpu);
  return ok;
}

// The vector rows, like for like with bench ipc: per block size, each
// operation one write/read over as many shuffled blocks as bench ipc moves.
bool print_vector(const options& o, const ipc_results& res,
                  const std::map<std::uint64_t, ipc_figure>& fig,
                  nlohmann::json& doc) {
  if (res.vector_rows.empty())
    return true;
  const auto total = parse_size(o.total);
  std::printf("\nCUDA IPC, vector form: each operation one call over %s of "
              "shuffled blocks (bench ipc's case), GPU %d\n",
              o.total.c_str(), o.gpu);
  std::printf("%-6s %9s %7s %5s %9s %9s %9s %8s %9s %9s %6s %6s\n", "op",
              "block", "blocks", "depth", "GB/s", "us/op", "p50 us", "verified",
              "ipc GB/s", "ipc+plan", "ratio", "r+plan");
  bool ok = true;
  for (const auto& r : res.vector_rows) {
    ok &= r.verified;
    const auto blocks = total / r.size;
    auto f = fig.find(r.size);
    auto cell = [&](double ipc, const char* format) {
      return f == fig.end() || ipc <= 0 ? std::string("-")
                                        : fmt::format(format, ipc);
    };
    const double k = f == fig.end() ? 0 : f->second.kernel;
    const double p = f == fig.end() ? 0 : f->second.with_plan;
    std::printf("%-6s %9llu %7llu %5d %9.3f %9.1f %9.1f %8s %9s %9s %6s "
                "%6s\n",
                r.op.c_str(), static_cast<unsigned long long>(r.size),
                static_cast<unsigned long long>(blocks), r.depth, r.gbps,
                r.us_per_op, r.p50_us, r.verified ? "yes" : "NO",
                cell(k, "{:.1f}").c_str(), cell(p, "{:.1f}").c_str(),
                cell(k > 0 ? r.gbps / k : 0, "{:.2f}").c_str(),
                cell(p > 0 ? r.gbps / p : 0, "{:.2f}").c_str());
    nlohmann::json row = {{"op", r.op},         {"form", "vector"},
                          {"block", r.size},    {"blocks", blocks},
                          {"depth", r.depth},   {"ops", r.ops},
                          {"gbps", r.gbps},     {"us_per_op", r.us_per_op},
                          {"p50_us", r.p50_us}, {"verified", r.verified},
                          {"path", "cuda_ipc"}};
    if (k > 0) {
      row["ipc_kernel_gbps"] = k;
      row["ratio"] = r.gbps / k;
    }
    if (p > 0) {
      row["ipc_with_plan_gbps"] = p;
      row["ratio_with_plan"] = r.gbps / p;
    }
    doc.push_back(row);
  }
  std::printf("(ipc: `kvferry bench ipc --total %s` on GPU %d in the same "
              "run, its batched kernel over the same number of shuffled "
              "blocks, plan prepared once; ipc+plan: the same with the plan "
              "built and uploaded each time, as every endpoint operation "
              "does; ratio = endpoint / ipc, r+plan = endpoint / ipc+plan)\n",
              o.total.c_str(), o.gpu);
  return ok;
}

// Why the CUDA IPC rows cannot run here (empty: they can).
std::string why_no_gpu(int gpu) {
  int count = 0;
  auto e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess)
    return fmt::format("no CUDA device ({})", cudaGetErrorString(e));
  if (gpu >= count)
    return fmt::format("no GPU {} ({} found)", gpu, count);
  return {};
}

#endif

// Prints (and adds to `doc`) the CUDA IPC rows; false when a row failed.
// Without a GPU (or a CUDA build) they are skipped, saying so.
bool report_ipc(const options& o, const endpoint_bench_options& bo,
                nlohmann::json& doc) {
#ifdef KVFERRY_HAVE_CUDA
  if (auto why = why_no_gpu(o.gpu); !why.empty()) {
    std::printf("\nCUDA IPC rows skipped: --gpu %d: %s\n", o.gpu, why.c_str());
    return true;
  }
  ipc_results res;
  try {
    res = ipc_rows(o, bo.sizes, bo.depths);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench endpoint: CUDA IPC rows: %s\n", e.what());
    return false;
  }
  auto sizes = bo.sizes;
  for (auto block : parse_sizes(o.vector_sizes))
    sizes.push_back(block);
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  auto fig = ipc_figures(o, sizes, parse_size(o.total));
  bool ok = print_contiguous(o, res, fig, doc);
  ok &= print_vector(o, res, fig, doc);
  return ok && res.all_ipc;
#else
  (void)bo;
  (void)doc;
  std::printf("\nCUDA IPC rows skipped: --gpu %d: this build has no CUDA "
              "support\n",
              o.gpu);
  return true;
#endif
}

// One round: the endpoint's rows, then bench net, then Python. Rounds
// alternate the sides (A B C A B C): on a shared machine the load moves
// between them, and one run of each would credit the load to one side.
struct round_result {
  std::string load; // /proc/loadavg's 1-minute figure at the round's start
  std::vector<endpoint_bench_row> rows;
  std::map<std::uint64_t, double> net;
  std::map<std::uint64_t, py_row> py;
};

// Row `i` over the rounds: its medians and its per-round ratios to net.
struct row_summary {
  endpoint_bench_row row; // medians; verified: in every round
  std::vector<double> gbps, net, ratios;
  std::vector<double> py_call, py_added, py_us; // write, depth 1 only
};

row_summary summarise(const std::vector<round_result>& rounds, std::size_t i) {
  row_summary out;
  out.row = rounds.front().rows[i];
  std::vector<double> us, p50, call, cpu, slowest;
  for (const auto& r : rounds) {
    const auto& row = r.rows[i];
    out.row.verified &= row.verified;
    out.gbps.push_back(row.gbps);
    us.push_back(row.us_per_op);
    p50.push_back(row.p50_us);
    call.push_back(row.call_p50_us);
    cpu.push_back(row.cpu_us_per_op);
    slowest.push_back(row.max_us);
    if (auto n = r.net.find(row.size); n != r.net.end()) {
      out.net.push_back(n->second);
      out.ratios.push_back(row.gbps / n->second);
    }
    auto p = r.py.find(row.size);
    if (p != r.py.end() && row.op == "write" && row.depth == 1) {
      out.py_us.push_back(p->second.us_per_op);
      out.py_call.push_back(p->second.call_p50_us);
      out.py_added.push_back(p->second.call_p50_us - row.call_p50_us);
    }
  }
  out.row.gbps = median(out.gbps);
  out.row.us_per_op = median(us);
  out.row.p50_us = median(p50);
  out.row.call_p50_us = median(call);
  out.row.cpu_us_per_op = median(cpu);
  out.row.max_us = median(slowest);
  return out;
}

std::string fixed(const std::vector<double>& xs, const char* format) {
  return xs.empty() ? "-" : fmt::format(format, median(xs));
}

std::string range(const std::vector<double>& xs) {
  if (xs.size() < 2)
    return "-";
  auto [lo, hi] = std::minmax_element(xs.begin(), xs.end());
  return fmt::format("{:.2f}-{:.2f}", *lo, *hi);
}

std::string load_now() {
  std::ifstream in("/proc/loadavg");
  std::string one;
  in >> one;
  return one.empty() ? "?" : one;
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
  bo.threads = o.threads;
  if (o.rounds < 1) {
    std::fprintf(stderr, "bench endpoint: --rounds must be >= 1\n");
    return 1;
  }
  for (auto block : parse_sizes(o.vector_sizes))
    if (block == 0 || block > parse_size(o.total)) {
      std::fprintf(stderr,
                   "bench endpoint: --vector-sizes: block %llu must be "
                   "positive and no larger than --total %s\n",
                   static_cast<unsigned long long>(block), o.total.c_str());
      return 1;
    }
  std::vector<round_result> rounds;
  for (int k = 0; k < o.rounds; ++k) {
    auto load = load_now();
    auto rows = run_endpoint_bench(bo);
    if (!rows.ok()) {
      std::fprintf(stderr, "bench endpoint: %s\n",
                   rows.error().message().c_str());
      return 1;
    }
    round_result r;
    r.load = load;
    r.rows = std::move(*rows);
    if (o.net)
      r.net = net_ceiling(o);
    if (!o.python.empty())
      r.py = python_rows(o);
    rounds.push_back(std::move(r));
  }
  std::printf("%-6s %9s %5s %9s %9s %9s %8s %7s %7s %8s %9s %6s %11s %8s %8s\n",
              "op", "size", "depth", "GB/s", "us/op", "p50 us", "max ms",
              "cpu us", "call us", "verified", "net GB/s", "ratio", "ratios",
              "py call", "py added");
  bool all_verified = true;
  nlohmann::json doc = nlohmann::json::array();
  for (std::size_t i = 0; i < rounds.front().rows.size(); ++i) {
    auto s = summarise(rounds, i);
    const auto& r = s.row;
    all_verified &= r.verified;
    bool ceiling = r.depth == 16;
    std::printf(
        "%-6s %9llu %5d %9.3f %9.1f %9.1f %8.1f %7.1f %7.2f %8s %9s %6s %11s "
        "%8s %8s\n",
        r.op.c_str(), static_cast<unsigned long long>(r.size), r.depth, r.gbps,
        r.us_per_op, r.p50_us, r.max_us / 1000, r.cpu_us_per_op, r.call_p50_us,
        r.verified ? "yes" : "NO",
        ceiling ? fixed(s.net, "{:.3f}").c_str() : "-",
        ceiling ? fixed(s.ratios, "{:.2f}").c_str() : "-",
        ceiling ? range(s.ratios).c_str() : "-",
        fixed(s.py_call, "{:.2f}").c_str(),
        fixed(s.py_added, "{:.2f}").c_str());
    nlohmann::json row = {{"op", r.op},
                          {"size", r.size},
                          {"depth", r.depth},
                          {"ops", r.ops},
                          {"rounds", rounds.size()},
                          {"gbps", r.gbps},
                          {"gbps_rounds", s.gbps},
                          {"us_per_op", r.us_per_op},
                          {"p50_us", r.p50_us},
                          {"call_p50_us", r.call_p50_us},
                          {"cpu_us_per_op", r.cpu_us_per_op},
                          {"max_us", r.max_us},
                          {"verified", r.verified}};
    if (!s.net.empty()) {
      row["net_gbps"] = median(s.net);
      row["net_gbps_rounds"] = s.net;
      row["ratio"] = median(s.ratios);
      row["ratio_rounds"] = s.ratios;
    }
    if (!s.py_call.empty()) {
      row["python_us_per_op"] = median(s.py_us);
      row["python_call_p50_us"] = median(s.py_call);
      row["python_added_us"] = median(s.py_added);
    }
    doc.push_back(row);
  }
  std::printf(
      "(%zu round(s), each: these rows, then `kvferry bench net --memory host "
      "--depth 16` (the plugin's raw figure), then Python; figures are "
      "medians over the rounds. ratio = endpoint / net at depth 16, the "
      "median of the rounds' ratios, ratios: their range. call us: the "
      "issuing call alone, p50 over bursts of back-to-back calls; py call: "
      "the same write call from Python, alike; py added = py call - call us, "
      "Python's cost per call; max ms: the slowest operation; cpu us: this "
      "process's CPU time per operation, both endpoints together)\n",
      rounds.size());
  std::string loads;
  for (const auto& r : rounds)
    loads += (loads.empty() ? "" : " / ") + r.load;
  std::printf("load average (1 min) at each round's start: %s\n",
              loads.c_str());
  if (o.gpu >= 0 && !report_ipc(o, bo, doc))
    all_verified = false;
  if (!o.json_path.empty()) {
    std::ofstream f(o.json_path);
    f << doc.dump(2) << "\n";
  }
  if (!all_verified) {
    std::fprintf(stderr, "bench endpoint: bytes differ or a row failed (see "
                         "'verified' and the messages above)\n");
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
  cmd->add_option("--threads", o->threads,
                  "scheduler threads of each endpoint's actor system (0: one "
                  "per core)")
      ->capture_default_str();
  cmd->add_option("--python", o->python,
                  "Python interpreter for the Python column ('' : none)")
      ->capture_default_str();
  cmd->add_option("--python-sizes", o->python_sizes,
                  "Sizes of the Python column")
      ->capture_default_str();
  cmd->add_flag("!--no-net", o->net, "Leave out bench net's ceiling");
  cmd->add_option("--rounds", o->rounds,
                  "Rounds of (endpoint rows, bench net, Python), alternated; "
                  "figures are medians over them")
      ->capture_default_str();
  cmd->add_option("--json", o->json_path, "Write the rows as JSON to FILE");
  cmd->add_option("--gpu", o->gpu,
                  "Also CUDA IPC rows: this process and a peer process on "
                  "this GPU, beside `bench ipc`'s figures (-1: none)")
      ->capture_default_str();
  cmd->add_option("--vector-sizes", o->vector_sizes,
                  "With --gpu: block sizes of the vector rows (each "
                  "operation one call over --total bytes of shuffled blocks, "
                  "as `bench ipc` moves them); '': none")
      ->capture_default_str();
  cmd->add_option("--total", o->total,
                  "With --gpu: bytes per vector operation, and bench ipc's "
                  "--total")
      ->capture_default_str();
  cmd->add_flag("--ipc-peer", o->ipc_peer)->group("");       // internal
  cmd->add_option("--peer-bytes", o->peer_bytes)->group(""); // internal
  cmd->callback([o, &exit_code] {
#ifdef KVFERRY_HAVE_CUDA
    if (o->ipc_peer) {
      exit_code = run_ipc_peer(*o);
      return;
    }
#endif
    exit_code = run(*o);
  });
}

} // namespace kvferry::app
