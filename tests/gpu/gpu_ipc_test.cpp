// CUDA IPC across two processes: the parent exports a device region, a child
// process (this executable again, running only the "ipc child" case) opens it
// through ipc_region_cache, copies from it with the batched kernel and writes
// into it; the parent then sees the child's bytes.
#include <doctest/doctest.h>

#ifdef KVFERRY_HAVE_CUDA
#include <chrono>
#include <cstdlib>
#include <signal.h>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include "kvferry/transport/gpu_copy.hpp"

using namespace kvferry::transport;
using namespace std::chrono_literals;

namespace {

constexpr int gpu = 0;
constexpr std::size_t region_bytes = 8 << 20;
constexpr std::uint64_t seed = 0x5eed;
const char* const child_env = "KVFERRY_TEST_IPC_HANDLE";

std::vector<copy_extent> blocks_plan(std::size_t block, std::size_t count,
                                     bool reversed) {
  std::vector<copy_extent> plan;
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t j = reversed ? count - 1 - i : i;
    plan.push_back({i * block, j * block, block});
  }
  return plan;
}

// Runs the child with the handle in its environment; waits at most 60 s.
int run_child(const std::string& handle_hex) {
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    setenv(child_env, handle_hex.c_str(), 1);
    execl("/proc/self/exe", "gpu_ipc_child", "--test-case=ipc child*",
          "--no-skip", "--no-version", nullptr);
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      FAIL("IPC child did not finish within 60 s");
    }
    std::this_thread::sleep_for(10ms);
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

} // namespace

// Skipped (doctest reports it so) unless the IPC test starts it with
// --no-skip in its child process.
TEST_CASE("ipc child (runs only when started by the IPC test)" *
          doctest::skip()) {
  const char* hex = std::getenv(child_env);
  if (hex == nullptr)
    return;
  ipc_region_cache cache{gpu};
  const auto handle = ipc_handle::from_hex(hex);
  const auto peer = cache.open(handle);
  CHECK(cache.open(handle).base == peer.base); // opened once, cached
  CHECK(cache.open_count() == 1);
  REQUIRE(peer.bytes == region_bytes);

  auto mine = gpu_region::allocate_device(gpu, region_bytes);
  gpu_copy_engine engine{gpu};
  // Read across the process boundary: the peer's first half into ours,
  // reversed.
  const auto plan = blocks_plan(16384, region_bytes / 2 / 16384, true);
  engine.wait(engine.copy(peer, mine.view(), plan), 10s);
  CHECK(gpu_count_mismatches(gpu, peer.base, mine.data(), plan) == 0);
  // Write across it: our copy back into the peer's second half, in order.
  std::vector<copy_extent> back{{0, region_bytes / 2, region_bytes / 2}};
  engine.wait(engine.copy(mine.view(), peer, back), 10s);
  CHECK(gpu_count_mismatches(gpu, mine.data(), peer.base, back) == 0);
}

TEST_CASE(
    "a region exported over CUDA IPC is read and written by another process") {
  auto region = gpu_region::allocate_device(gpu, region_bytes);
  gpu_fill_pattern(gpu, region.data(), region_bytes, seed);
  const auto handle = export_ipc_handle(region);
  CHECK(handle.region_bytes == region_bytes);
  REQUIRE(run_child(handle.to_hex()) == 0);
  // The second half now holds the first half block-reversed (16 KiB blocks).
  auto expected = blocks_plan(16384, region_bytes / 2 / 16384, true);
  for (auto& e : expected)
    std::swap(e.src_offset, e.dst_offset), e.dst_offset += region_bytes / 2;
  CHECK(gpu_count_mismatches(gpu, region.data(), region.data(), expected) == 0);
}

#else
TEST_CASE("GPU IPC tests need a CUDA build") {
}
#endif
