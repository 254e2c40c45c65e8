// kvferry bench plan — host time to build a copy plan; needs no GPU.
//
// For each block size, a plan of total/block blocks at random slots of pools
// twice the total (as bench ipc builds them) is built, into buffers reused
// from run to run, the two ways gpu_copy_engine::prepare can:
//   - packed: pack_plan (bounds checked in its pass), what prepare() does for
//     the default kernel apart from its CUDA calls (a staging-reuse event
//     wait, one upload, one event record);
//   - item list: check_extents + coalesce + partition_into_work_items + the
//     copy into staging, what prepare() did before issue #5 (and still does
//     for the bulk and block-per-item kernels).
// Host clock, one warm-up, median of --repeats.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <numeric>
#include <random>
#include <sys/resource.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "kvferry/transport/copy_plan.hpp"
#include "size_list.hpp"

namespace kvferry::app {

namespace {

using json = nlohmann::json;
using namespace kvferry::transport;

struct bench_plan_options {
  std::string sizes = "4K,16K,64K";
  std::string total = "256M";
  std::uint32_t item_bytes = 8192;
  int repeats = 50;
  std::string json_path;
};

// `blocks` blocks of `block` bytes at distinct random slots of two pools of
// 2 * blocks slots each.
std::vector<copy_extent> random_block_plan(std::mt19937_64& rng,
                                           std::uint64_t block,
                                           std::uint64_t blocks) {
  auto slots = [&] {
    std::vector<std::uint64_t> all(2 * blocks);
    std::iota(all.begin(), all.end(), 0ull);
    std::shuffle(all.begin(), all.end(), rng);
    return all;
  };
  const auto src = slots(), dst = slots();
  std::vector<copy_extent> plan(blocks);
  for (std::uint64_t i = 0; i < blocks; ++i)
    plan[i] = copy_extent{src[i] * block, dst[i] * block, block};
  return plan;
}

// Median host seconds of `build` over `repeats` runs after one warm-up.
template<typename Build>
double median_seconds(int repeats, Build&& build) {
  build();
  std::vector<double> samples;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    build();
    samples.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count());
  }
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

void require_fits(const std::vector<copy_extent>& plan, std::uint64_t region) {
  if (auto problem = check_extents(plan, region, region))
    throw std::logic_error("bench plan built a bad plan: " + *problem);
}

json measure_block_size(const bench_plan_options& opt, std::uint64_t block,
                        std::mt19937_64& rng) {
  const std::uint64_t blocks = parse_size(opt.total) / block;
  const std::uint64_t region = 2 * blocks * block;
  const auto plan = random_block_plan(rng, block, blocks);

  // Buffers sized once, as the engine's plan slots are after the first plan.
  std::vector<std::uint64_t> staging((packed_plan_bytes(blocks) + 7) / 8);
  packed_plan_size packed;
  const double packed_s = median_seconds(opt.repeats, [&] {
    packed = pack_plan(plan, opt.item_bytes, region, region, staging.data());
  });

  std::vector<copy_work_item> scratch;
  std::vector<copy_work_item> item_staging(
      count_work_items(plan, opt.item_bytes));
  const double items_s = median_seconds(opt.repeats, [&] {
    require_fits(plan, region);
    scratch.clear();
    partition_into_work_items(coalesce(plan), opt.item_bytes, scratch);
    std::memcpy(item_staging.data(), scratch.data(),
                scratch.size() * sizeof(copy_work_item));
  });
  if (packed.items != scratch.size())
    throw std::logic_error("bench plan: the packed plan has " +
                           std::to_string(packed.items) + " items, the list " +
                           std::to_string(scratch.size()));
  return json{{"block_bytes", block},
              {"extents", blocks},
              {"work_items", packed.items},
              {"packed_seconds", packed_s},
              {"packed_us_per_1000_extents", packed_s * 1e9 / blocks},
              {"item_list_seconds", items_s},
              {"item_list_over_packed", items_s / packed_s}};
}

long peak_rss_kib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

int run_bench_plan(const bench_plan_options& opt) {
  try {
    if (opt.repeats < 1)
      throw std::invalid_argument("--repeats must be at least 1");
    std::mt19937_64 rng{2026};
    json result{{"item_bytes", opt.item_bytes},
                {"repeats", opt.repeats},
                {"sizes", json::array()}};
    std::cout << fmt::format(
        "kvferry bench plan: host time to build a copy plan ({} B work items, "
        "median of {}; packed = what prepare() does now, item list = before "
        "issue #5)\n",
        opt.item_bytes, opt.repeats);
    std::cout << fmt::format("{:>8} {:>8} {:>12} {:>16} {:>14} {:>10}\n",
                             "block", "extents", "packed us", "us/1000 extents",
                             "item list us", "list/packed");
    for (auto block : parse_sizes(opt.sizes)) {
      if (block == 0 || block > parse_size(opt.total))
        throw std::invalid_argument("block size " + std::to_string(block) +
                                    " must be positive and at most --total");
      const json row = measure_block_size(opt, block, rng);
      std::cout << fmt::format(
          "{:>8} {:>8} {:>12.1f} {:>16.2f} {:>14.1f} {:>9.1f}x\n", block,
          row["extents"].get<std::uint64_t>(),
          row["packed_seconds"].get<double>() * 1e6,
          row["packed_us_per_1000_extents"].get<double>(),
          row["item_list_seconds"].get<double>() * 1e6,
          row["item_list_over_packed"].get<double>());
      result["sizes"].push_back(row);
    }
    result["peak_rss_kib"] = peak_rss_kib();
    std::cout << fmt::format("peak RSS: {} KiB\n",
                             result["peak_rss_kib"].get<long>());
    if (!opt.json_path.empty()) {
      std::ofstream file(opt.json_path);
      if (!(file << result.dump(2) << "\n"))
        throw std::runtime_error("cannot write " + opt.json_path);
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "kvferry bench plan: " << e.what() << "\n";
    return 1;
  }
}

} // namespace

void add_bench_plan(CLI::App& bench, int& exit_code) {
  auto opt = std::make_shared<bench_plan_options>();
  auto* cmd = bench.add_subcommand(
      "plan", "Host time to build a GPU copy plan (packed extents vs the "
              "work-item list); needs no GPU");
  cmd->add_option("--sizes", opt->sizes,
                  "Block sizes, comma-separated (K, M suffixes)")
      ->capture_default_str();
  cmd->add_option("--total", opt->total, "Bytes per plan, per block size")
      ->capture_default_str();
  cmd->add_option("--item-bytes", opt->item_bytes,
                  "Work item size (a positive multiple of 16)")
      ->capture_default_str();
  cmd->add_option("--repeats", opt->repeats, "Timed runs (median reported)")
      ->capture_default_str();
  cmd->add_option("--json", opt->json_path,
                  "Write the results to this JSON file");
  cmd->callback([opt, &exit_code] { exit_code = run_bench_plan(*opt); });
}

} // namespace kvferry::app
