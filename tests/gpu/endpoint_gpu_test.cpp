// kvferry::endpoint on GPU memory (issue #16), every byte checked:
// - two processes (this executable again, as the server: CUDA IPC cannot
//   open a process's own handles), endpoints on GPU 0 with cudaMalloc'd
//   buffers registered at runtime: write, read (single and vector forms, a
//   vector of 2048 shuffled 4 KiB blocks too) and send/recv (vector) must
//   take CUDA IPC (path() and stats() say so; the initiator's own kernel
//   moves the bytes, one launch per call);
// - two endpoints in one process: the same moves over kvsock (which stages
//   GPU memory through pinned slots where it cannot take CUDA pointers),
//   since one process cannot map its own IPC handles.
#include <doctest/doctest.h>

#ifdef KVFERRY_HAVE_CUDA
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime_api.h>

#include "../support/cuda_upload.hpp"
#include "eventually.hpp"
#include "kvferry/endpoint.hpp"
#include "test_child.hpp"

using namespace kvferry;

namespace {

constexpr auto limit = std::chrono::milliseconds(30000);

void* device_buffer(const std::vector<std::uint8_t>& bytes) {
  void* p = nullptr;
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  REQUIRE(cudaMalloc(&p, bytes.size()) == cudaSuccess);
  REQUIRE(test::upload(p, bytes.data(), bytes.size()) == cudaSuccess);
  return p;
}

std::vector<std::uint8_t> host_copy(const void* p, std::size_t n) {
  std::vector<std::uint8_t> out(n);
  REQUIRE(cudaMemcpy(out.data(), p, n, cudaMemcpyDeviceToHost) == cudaSuccess);
  return out;
}

endpoint make(const char* name) {
  endpoint_options o;
  o.gpu = 0;
  o.name = name;
  auto ep = endpoint::create(o);
  REQUIRE_MESSAGE(ep.ok(), ep.error().message());
  return std::move(ep).value();
}

constexpr std::size_t ipc_n = 8 << 20;

std::vector<std::uint8_t> ipc_pattern() {
  std::vector<std::uint8_t> out(ipc_n);
  for (std::size_t i = 0; i < ipc_n; ++i)
    out[i] = static_cast<std::uint8_t>(i * 7 + i / 4093);
  return out;
}

std::optional<notification> next_note(endpoint& ep) {
  std::optional<notification> got;
  test::eventually(
      [&] {
        auto notes = ep.take_notifications();
        if (!notes.empty())
          got = notes.front();
        return got.has_value();
      },
      std::chrono::seconds(30));
  return got;
}

// The path `id` takes, once the endpoint chose it.
std::optional<transfer_path> path_of(endpoint& ep, xfer_id id) {
  std::optional<transfer_path> path;
  test::eventually(
      [&] {
        auto known = ep.path(id);
        if (known.ok())
          path = *known;
        return path.has_value() || !known.ok();
      },
      std::chrono::seconds(30));
  return path;
}

// Starts transfer `id`, checks it takes CUDA IPC and completes.
void over_ipc(endpoint& ep, result<xfer_id> id, const char* what) {
  REQUIRE_MESSAGE(id.ok(), what, ": ", id.error().message());
  CHECK_MESSAGE(path_of(ep, *id) == transfer_path::cuda_ipc, what);
  auto moved = ep.wait(*id, limit);
  REQUIRE_MESSAGE(moved.ok(), what, ": ", moved.error().message());
}

// The KV-block case, one call each way: every 4 KiB block of region `sr`
// written to a shuffled place of the peer's buffer (`desc`), then read back
// into shuffled places of `back` (region `br`); each call is one transfer
// (one kernel launch of the transfer actor), and every block lands where
// its slice said.
void shuffled_blocks_both_ways(endpoint& ep, conn_id conn,
                               const descriptor& desc, region_id sr,
                               region_id br, void* back) {
  constexpr std::uint64_t block = 4096, blocks = ipc_n / block;
  std::mt19937_64 rng(7);
  std::vector<std::uint64_t> there(blocks), here(blocks);
  std::iota(there.begin(), there.end(), std::uint64_t{0});
  std::iota(here.begin(), here.end(), std::uint64_t{0});
  std::shuffle(there.begin(), there.end(), rng);
  std::shuffle(here.begin(), here.end(), rng);
  std::vector<slice> local;
  std::vector<descriptor> remote;
  for (std::uint64_t i = 0; i < blocks; ++i) {
    local.push_back({sr, i * block, block});
    remote.push_back(desc.sub(there[i] * block, block).value());
  }
  const auto before = ep.stats().ipc_transfers;
  over_ipc(ep, ep.write(conn, local, remote), "vector write of 2048 blocks");
  REQUIRE(cudaMemset(back, 0, ipc_n) == cudaSuccess);
  for (std::uint64_t i = 0; i < blocks; ++i)
    local[i] = {br, here[i] * block, block};
  over_ipc(ep, ep.read(conn, local, remote), "vector read of 2048 blocks");
  CHECK(ep.stats().ipc_transfers - before == 2);
  const auto got = host_copy(back, ipc_n);
  const auto pattern = ipc_pattern();
  std::uint64_t wrong = 0;
  for (std::uint64_t i = 0; i < blocks; ++i)
    wrong += std::memcmp(got.data() + here[i] * block,
                         pattern.data() + i * block, block) != 0;
  CHECK_MESSAGE(wrong == 0, wrong, " of ", blocks, " blocks differ");
}

} // namespace

// The server of the two-process case (KVFERRY_EP_GPU_DIR: the folder both
// share): publishes its metadata, advertises a GPU buffer, receives one
// vector send into another and checks every byte; exits once told "done".
TEST_CASE("endpoint GPU server (child of the two-process case)" *
          doctest::skip()) {
  const char* dir = std::getenv("KVFERRY_EP_GPU_DIR");
  REQUIRE(dir != nullptr);
  std::vector<std::uint8_t> zeros(ipc_n, 0);
  auto ep = make("gpu-ipc-server");
  {
    auto blob = ep.metadata();
    std::ofstream(std::string{dir} + "/meta.tmp", std::ios::binary)
        .write(reinterpret_cast<const char*>(blob.data()),
               static_cast<std::streamsize>(blob.size()));
    std::filesystem::rename(std::string{dir} + "/meta.tmp",
                            std::string{dir} + "/meta");
  }
  auto conn = ep.accept(limit);
  REQUIRE(conn.ok());
  void* target = device_buffer(zeros);
  void* inbox = device_buffer(zeros);
  auto tr = ep.reg(target, ipc_n).value();
  auto ir = ep.reg(inbox, ipc_n).value();
  auto r = ep.recv(*conn, {{ir, 0, ipc_n / 2}, {ir, ipc_n / 2, ipc_n / 2}});
  REQUIRE(r.ok());
  auto desc = ep.advertise(tr, 0, ipc_n).value().to_bytes();
  REQUIRE(ep.notify(*conn, {desc.data(), desc.size()}).ok());
  CHECK(path_of(ep, *r) == transfer_path::cuda_ipc);
  REQUIRE(ep.wait(*r, limit).ok());
  CHECK(host_copy(inbox, ipc_n) == ipc_pattern());
  auto done = next_note(ep);
  REQUIRE(done.has_value());
  CHECK(std::string(done->bytes.begin(), done->bytes.end()) == "done");
  CHECK(host_copy(target, ipc_n) == ipc_pattern());
  auto stats = ep.stats();
  CHECK(stats.ipc_transfers == 1); // the receive
  CHECK(stats.plugin_transfers == 0);
  cudaFree(target);
  cudaFree(inbox);
}

TEST_CASE("endpoints of two processes on GPU 0: every transfer takes CUDA "
          "IPC, byte for byte") {
  auto dir = std::filesystem::temp_directory_path() /
             ("kvferry-ep-gpu-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  test::child_guard child{test::start_test_child(
      "endpoint GPU server*", {"KVFERRY_EP_GPU_DIR=" + dir.string()})};
  REQUIRE(
      test::eventually([&] { return std::filesystem::exists(dir / "meta"); },
                       std::chrono::seconds(60)));
  std::ifstream f(dir / "meta", std::ios::binary);
  std::vector<std::uint8_t> meta((std::istreambuf_iterator<char>(f)),
                                 std::istreambuf_iterator<char>());
  auto pattern = ipc_pattern();
  std::vector<std::uint8_t> zeros(ipc_n, 0);
  auto ep = make("gpu-ipc-client");
  auto conn = ep.connect(meta);
  REQUIRE_MESSAGE(conn.ok(), conn.error().message());
  auto blob = next_note(ep);
  REQUIRE(blob.has_value());
  auto desc = descriptor::parse(blob->bytes.data(), blob->bytes.size()).value();
  void* src = device_buffer(pattern);
  void* back = device_buffer(zeros);
  auto sr = ep.reg(src, ipc_n).value();
  auto br = ep.reg(back, ipc_n).value();
  const auto half = ipc_n / 2, quarter = ipc_n / 4;
  over_ipc(ep, ep.write(*conn, {{sr, 0, half}}, {desc.sub(0, half).value()}),
           "write");
  over_ipc(ep,
           ep.write(*conn, {{sr, half, quarter}, {sr, half + quarter, quarter}},
                    {desc.sub(half, quarter).value(),
                     desc.sub(half + quarter, quarter).value()}),
           "vector write");
  over_ipc(ep, ep.read(*conn, {{br, 0, half}}, {desc.sub(0, half).value()}),
           "read");
  over_ipc(ep,
           ep.read(*conn, {{br, half + quarter, quarter}, {br, half, quarter}},
                   {desc.sub(half + quarter, quarter).value(),
                    desc.sub(half, quarter).value()}),
           "vector read");
  CHECK(host_copy(back, ipc_n) == pattern);
  shuffled_blocks_both_ways(ep, *conn, desc, sr, br, back);
  over_ipc(ep, ep.write(*conn, {{sr, 0, ipc_n}}, desc), "write (restores)");
  over_ipc(ep,
           ep.send(*conn, {{sr, 0, quarter}, {sr, quarter, ipc_n - quarter}}),
           "vector send");
  auto stats = ep.stats();
  CHECK(stats.ipc_transfers == 8);
  CHECK(stats.ipc_bytes == 6 * ipc_n);
  CHECK(stats.plugin_transfers == 0);
  REQUIRE(ep.notify(*conn, std::vector<std::uint8_t>{'d', 'o', 'n', 'e'}).ok());
  CHECK(test::stop_test_child(child.pid, dir) == 0);
  child.pid = 0;
  cudaFree(src);
  cudaFree(back);
  std::filesystem::remove_all(dir);
}

TEST_CASE("endpoints on GPU 0 in one process: write, read and send/recv land "
          "byte for byte over the plugin") {
  constexpr std::size_t n = 8 << 20;
  std::vector<std::uint8_t> pattern(n), zeros(n, 0);
  for (std::size_t i = 0; i < n; ++i)
    pattern[i] = static_cast<std::uint8_t>(i * 7 + i / 4093);
  auto a = make("gpu-ep-a");
  auto b = make("gpu-ep-b");
  auto ab = a.connect(b.metadata());
  REQUIRE_MESSAGE(ab.ok(), ab.error().message());
  auto ba = b.accept(limit);
  REQUIRE(ba.ok());
  void* src = device_buffer(pattern);
  void* dst = device_buffer(zeros);
  void* back = device_buffer(zeros);
  auto sr = a.reg(src, n).value();
  auto kr = a.reg(back, n).value();
  auto dr = b.reg(dst, n).value();
  auto desc = b.advertise(dr, 0, n).value();
  auto w = a.write(*ab, {{sr, 0, n}}, {desc});
  REQUIRE(w.ok());
  auto moved = a.wait(*w, limit);
  REQUIRE_MESSAGE(moved.ok(), moved.error().message());
  CHECK(host_copy(dst, n) == pattern);
  auto r = a.read(*ab, {{kr, 0, n}}, {desc});
  REQUIRE(r.ok());
  REQUIRE(a.wait(*r, limit).ok());
  CHECK(host_copy(back, n) == pattern);
  REQUIRE(cudaMemset(dst, 0, n) == cudaSuccess);
  auto rv = b.recv(*ba, {{dr, 0, n}});
  auto sd = a.send(*ab, {{sr, 0, n}});
  REQUIRE(rv.ok());
  REQUIRE(sd.ok());
  CHECK(a.wait(*sd, limit).ok());
  CHECK(b.wait(*rv, limit).ok());
  CHECK(host_copy(dst, n) == pattern);
  // One process: CUDA IPC cannot open its own handles.
  CHECK(a.stats().ipc_transfers == 0);
  CHECK(a.stats().plugin_transfers == 3);
  CHECK(a.dereg(sr).ok());
  CHECK(a.dereg(kr).ok());
  CHECK(b.dereg(dr).ok());
  cudaFree(src);
  cudaFree(dst);
  cudaFree(back);
}

#else

TEST_CASE("endpoint GPU test: this build has no CUDA") {
  MESSAGE("SKIPPED: built without CUDA");
}

#endif
