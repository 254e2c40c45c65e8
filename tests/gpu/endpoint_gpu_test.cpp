// kvferry::endpoint on GPU memory (issue #16): two endpoints on GPU 0 in one
// process, each registering its own cudaMalloc'd buffer, move bytes
// one-sided and two-sided over kvsock (which stages GPU memory through
// pinned slots where it cannot take CUDA pointers); every byte is checked.
// The endpoint's region table has a placeholder region 0 plus the caller's,
// so it moves over the plugin (CUDA IPC takes one-region tables for now).
#include <doctest/doctest.h>

#ifdef KVFERRY_HAVE_CUDA
#include <cstdint>
#include <vector>

#include <cuda_runtime_api.h>

#include "kvferry/endpoint.hpp"

using namespace kvferry;

namespace {

constexpr auto limit = std::chrono::milliseconds(30000);

void* device_buffer(const std::vector<std::uint8_t>& bytes) {
  void* p = nullptr;
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  REQUIRE(cudaMalloc(&p, bytes.size()) == cudaSuccess);
  REQUIRE(cudaMemcpy(p, bytes.data(), bytes.size(), cudaMemcpyHostToDevice) ==
          cudaSuccess);
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

} // namespace

TEST_CASE("endpoints on GPU 0: write, read and send/recv land byte for "
          "byte") {
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
