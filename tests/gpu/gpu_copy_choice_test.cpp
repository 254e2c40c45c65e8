// The per-GPU copy-kernel choice on a real GPU (copy_choice.hpp): the
// autotune measures every candidate at every size, caches its choice under
// this GPU's key (a scratch $XDG_CACHE_HOME), and engines running the chosen
// bands -- and bands mixing the plain kernel with the others -- copy every
// byte right. No timing is asserted here: bench ipc measures.
#include <doctest/doctest.h>

#ifdef KVFERRY_HAVE_CUDA
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <numeric>
#include <random>

#include "kvferry/transport/copy_choice.hpp"
#include "kvferry/transport/gpu_copy.hpp"
#include "scratch_dir.hpp"

using namespace kvferry::transport;
using namespace std::chrono_literals;

namespace {

constexpr int gpu = 0;

// `n` blocks of `block` bytes at shuffled slots of both regions.
std::vector<copy_extent> shuffled(std::mt19937_64& rng, std::uint64_t block,
                                  std::uint64_t region, std::uint64_t n) {
  std::vector<std::uint64_t> src(region / block), dst(region / block);
  std::iota(src.begin(), src.end(), 0ull);
  std::iota(dst.begin(), dst.end(), 0ull);
  std::shuffle(src.begin(), src.end(), rng);
  std::shuffle(dst.begin(), dst.end(), rng);
  std::vector<copy_extent> plan(n);
  for (std::uint64_t i = 0; i < n; ++i)
    plan[i] = copy_extent{src[i] * block, dst[i] * block, block};
  return plan;
}

// Copies plans of 4 KiB, 64 KiB and 2 MiB blocks (one per band of the
// bands below) and checks every copied byte.
void check_bands_copy(const std::vector<copy_band>& bands) {
  constexpr std::uint64_t region = 32ull << 20;
  auto src = gpu_region::allocate_device(gpu, region);
  auto dst = gpu_region::allocate_device(gpu, region);
  gpu_copy_engine engine{gpu, bands};
  std::mt19937_64 rng{99};
  for (std::uint64_t block : {4096ull, 65536ull, 2ull << 20}) {
    CAPTURE(block);
    gpu_fill_pattern(gpu, src.data(), region, rng());
    gpu_fill_pattern(gpu, dst.data(), region, rng());
    const auto plan = shuffled(rng, block, region, region / block / 2);
    engine.wait(engine.copy(src.view(), dst.view(), plan), 10s);
    CHECK(gpu_count_mismatches(gpu, src.data(), dst.data(), plan) == 0);
  }
}

} // namespace

TEST_CASE("the autotune measures every candidate, caches its choice, and "
          "the chosen kernels copy right") {
  kvferry::test::scratch_dir cache{"kvferry-gpu-copy-choice"};
  setenv("XDG_CACHE_HOME", cache.path.c_str(), 1);
  // Known models (H100, H200) would take the measured choice: tune anyway.
  setenv(copy_kernel_variable, "tune", 1);

  const auto choice = choose_copy_kernel(gpu);
  unsetenv(copy_kernel_variable);
  CHECK(choice.source == "tuned");
  MESSAGE("chosen: " << format_bands(choice.bands) << " (" << choice.why
                     << ")");
  REQUIRE(choice.table);
  const auto& t = *choice.table;
  std::vector<std::string> every_candidate;
  for (const auto& c : copy_candidates())
    every_candidate.push_back(c.name);
  CHECK(t.kernels == every_candidate);
  CHECK(every_candidate.size() == 7); // default, warp, block, block-16k-512,
                                      // plain, plain-256, plain-128
  CHECK(t.block_bytes.front() == 4096);
  CHECK(t.block_bytes.back() == (2u << 20));
  for (std::size_t k = 0; k < t.kernels.size(); ++k)
    for (std::size_t s = 0; s < t.block_bytes.size(); ++s) {
      CAPTURE(t.kernels[k]);
      CAPTURE(t.block_bytes[s]);
      CHECK(t.seconds[k][s] > 0);
      MESSAGE(t.kernels[k] << " at " << t.block_bytes[s] << " B: "
                           << 256.0 * (1 << 20) / t.seconds[k][s] / 1e9
                           << " GB/s");
    }

  // Cached under this GPU's key: a later process uses it without tuning.
  const auto key = copy_choice_key_for(gpu).text();
  std::string warning;
  const auto entries = read_choice_cache(
      (cache.path / "kvferry/copy-kernels.txt").string(), warning);
  CHECK(warning.empty());
  REQUIRE(entries.count(key) == 1);
  CHECK(entries.at(key) == format_bands(choice.bands));
  std::vector<std::string> warnings;
  const auto again = resolve_copy_choice(
      "", key, entries,
      measured_copy_choice(copy_choice_key_for(gpu).gpu_model),
      []() -> tuning_table {
        FAIL("tuned although cached");
        return {};
      },
      warnings);
  CHECK(again.source == "cached");
  CHECK(again.bands == choice.bands);
  // Once per process: the same answer without reading anything again.
  CHECK(choose_copy_kernel(gpu).bands == choice.bands);

  check_bands_copy(copy_bands_of(choice.bands));
  unsetenv("XDG_CACHE_HOME");
}

TEST_CASE("engines with bands run each band's kernel and copy every byte") {
  check_bands_copy(copy_bands_of(*parse_bands("0:plain,16384:default")));
  check_bands_copy(copy_bands_of(*parse_bands("0:default,16384:plain")));
  check_bands_copy(
      copy_bands_of(*parse_bands("0:warp,32768:plain,1048576:block")));
  check_bands_copy(copy_bands_of(*parse_bands("plain")));
}

#endif
