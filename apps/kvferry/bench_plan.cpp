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
// Then the same plan over region tables, as a CUDA IPC transfer (a vector
// endpoint call) packs it (issue #16): virtual offsets (region << 40) into
// an endpoint's table (a placeholder region 0, the blocks' region 1)
//   - translate + pack: translated into a new list, then packed (what the
//     transfer actor did before: to_address_plan, then prepare());
//   - one pass: pack_plan over the region layouts (what it does now);
//   - in parts: the same on --plan-threads threads (plan_crew), as the
//     engine packs plans of 16,384 extents or more (each part packed in
//     place since session 16: no joining copy when nothing coalesces, as
//     here).
// Then the host stages of one vector endpoint call over those blocks (issue
// #16: over CUDA IPC a call of 65,536 4 KiB blocks copies in ~200 us of GPU
// time, and every stage's host time must stay under it), each before and
// after session 15 on this thread (and the crew where the stage uses one):
//   - the caller's pass (one_sided_plan.hpp): before, the loop endpoint.cpp
//     ran (kept below as the baseline); now plan_one_sided, on this thread
//     and in --plan-threads parts, and for a read of the same blocks in
//     parts (the same checks, the extents written peer -> local; the pack
//     of a read is the write's with the tables swapped, equal here);
//   - the control actor: before, a byte total over the list; now none (the
//     caller's pass counts the bytes);
//   - the transfer actor's send handler: before, check_table_extents over
//     both tables and a byte total, then the pack in parts; now the pack in
//     parts alone (it checks both tables and counts the bytes).
//   - the caller's pass that packs the plan itself (pack_one_sided, session
//     19): the pairs checked and packed in virtual offsets in one pass, on
//     this thread and in parts; the transfer actor would then only check
//     the named regions and upload (the kernel translating, issue #16 (b)).
// A single process with warm caches: in the endpoint the list is written on
// the caller's core and read on the transfer actor's, so these are floors.
// Then KV planning (issue #15's budget: at most 1 us of host time per block):
// plan_kv for a request of --kv-blocks blocks out of a cache four times that
// size, all --kv-layers layers, K and V, between the named layouts, blocks
// consecutive and scattered; each reported as us per block.
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
#include "kvferry/actors/kv_layout.hpp"
#include "kvferry/actors/plan.hpp"
#include "kvferry/one_sided_plan.hpp"
#include "kvferry/transport/copy_plan.hpp"
#include "kvferry/transport/extent_lists.hpp"
#include "kvferry/transport/plan_crew.hpp"
#include "kvferry/transport/table_plan.hpp"
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
  std::size_t plan_threads = 4;
  std::uint64_t kv_blocks = 1000;
  std::uint32_t kv_layers = 32;
  std::uint64_t kv_block_bytes =
      16 * 8 * 128 * 2; // 16 tokens, 8 heads, 128 fp16
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

// An endpoint's table as the copy engine sees one side: a 4 KiB
// placeholder (region 0), then the blocks' region (1), laid out 1 MiB apart.
struct endpoint_table {
  std::vector<std::uint64_t> offsets, sizes;
  explicit endpoint_table(std::uint64_t region)
      : offsets{0, 1 << 20}, sizes{4096, region} {}
  region_layout layout() const {
    return {offsets.data(), sizes.data(), offsets.size(), 40};
  }
};

// The plan over region tables three ways (see the top of this file), into
// `staging`, adding their medians to `row`.
void measure_table_plans(const bench_plan_options& opt,
                         const std::vector<copy_extent>& plan,
                         std::uint64_t region,
                         std::vector<std::uint64_t>& staging, json& row) {
  const endpoint_table src{region}, dst{region};
  std::vector<copy_extent> virt(plan.size());
  for (std::size_t i = 0; i < plan.size(); ++i)
    virt[i] = {(1ull << 40) + plan[i].src_offset,
               (1ull << 40) + plan[i].dst_offset, plan[i].length};
  const auto s = src.layout(), d = dst.layout();
  const double before_s = median_seconds(opt.repeats, [&] {
    std::vector<copy_extent> translated; // to_address_plan's own list
    translate_extents(virt, s, d, translated);
    pack_plan(translated, opt.item_bytes, s.span(), d.span(), staging.data());
  });
  packed_plan_size one;
  const double one_s = median_seconds(opt.repeats, [&] {
    one = pack_plan(virt, opt.item_bytes, s, d, staging.data());
  });
  plan_crew crew{opt.plan_threads - 1};
  std::vector<packed_part> parts(opt.plan_threads);
  packed_plan_size joined;
  const double parts_s = median_seconds(opt.repeats, [&] {
    joined = pack_plan_in_parts(
        virt, opt.item_bytes, s, d, staging.data(), parts.data(),
        opt.plan_threads,
        [&](std::size_t count, auto& job) { crew.run(count, job); });
  });
  if (joined.items != one.items)
    throw std::logic_error("bench plan: the plan packed in parts has " +
                           std::to_string(joined.items) + " items, in one " +
                           std::to_string(one.items));
  const double n = static_cast<double>(plan.size());
  row["table_translate_then_pack_seconds"] = before_s;
  row["table_one_pass_seconds"] = one_s;
  row["table_in_parts_seconds"] = parts_s;
  row["table_parts"] = opt.plan_threads;
  row["table_ns_per_extent"] = {{"translate_then_pack", before_s * 1e9 / n},
                                {"one_pass", one_s * 1e9 / n},
                                {"in_parts", parts_s * 1e9 / n}};
}

// The caller's pass as endpoint.cpp ran it before session 15 (the
// baseline of measure_vector_call): checks inline, a push_back per pair, the
// peer's region sizes grown per pair.
void caller_pass_before(const one_sided_call& call,
                        const std::vector<slice>& local,
                        const std::vector<descriptor>& remote) {
  auto extents = extent_lists::take(local.size());
  std::vector<std::uint64_t> remote_sizes;
  auto local_sizes = call.local; // the endpoint copied its table per call
  for (std::size_t i = 0; i < local.size(); ++i) {
    const auto& d = remote[i];
    const auto& s = local[i];
    if (d.owner != call.peer_instance || s.size != d.size ||
        !slice_inside(local_sizes, s))
      throw std::logic_error("bench plan: a bad pair in the baseline");
    if (remote_sizes.size() <= d.region)
      remote_sizes.resize(d.region + 1, 0);
    remote_sizes[d.region] = d.region_bytes;
    const auto here = table_offset(s.region, s.offset);
    const auto there = table_offset(d.region, d.offset);
    extents.push_back(call.write ? copy_extent{here, there, d.size}
                                 : copy_extent{there, here, d.size});
  }
  extent_lists::give(std::move(extents));
}

// The host stages of one vector write of `plan`'s blocks (see the top of
// this file): microseconds per call, before and now, into `row`.
void measure_vector_call(const bench_plan_options& opt,
                         const std::vector<copy_extent>& plan,
                         std::uint64_t region,
                         std::vector<std::uint64_t>& staging, json& row) {
  one_sided_call call;
  call.peer_instance = 7;
  call.local = {4096, region}; // a placeholder region 0, the blocks' region 1
  std::vector<slice> local(plan.size());
  std::vector<descriptor> remote(plan.size());
  for (std::size_t i = 0; i < plan.size(); ++i) {
    local[i] = slice{1, plan[i].src_offset, plan[i].length};
    remote[i] = descriptor{7, 1, region, plan[i].dst_offset, plan[i].length};
  }
  plan_crew crew{opt.plan_threads - 1};
  std::vector<one_sided_part> parts(crew.size());
  auto caller_now = [&](plan_crew* on) {
    one_sided_plan out;
    out.extents = extent_lists::take_sized(local.size());
    if (auto bad = plan_one_sided(call, local, remote, out, on, parts.data());
        !bad.ok())
      throw std::logic_error("bench plan: " + bad.reason());
    extent_lists::give(std::move(out.extents));
  };
  const double caller_before = median_seconds(
      opt.repeats, [&] { caller_pass_before(call, local, remote); });
  const double caller_one =
      median_seconds(opt.repeats, [&] { caller_now(nullptr); });
  const double caller_parts =
      median_seconds(opt.repeats, [&] { caller_now(&crew); });
  call.write = false; // a read of the same blocks: extents peer -> local
  const double caller_read_parts =
      median_seconds(opt.repeats, [&] { caller_now(&crew); });
  call.write = true;
  // The caller's pass that packs the plan too (pack_one_sided): one pass
  // over the pairs in all, after which the transfer actor would only check
  // the named regions' sizes and upload (issue #16, design (b)).
  std::vector<packed_part> caller_packs(crew.size());
  one_sided_pack packed_by_caller;
  auto caller_packs_now = [&](plan_crew* on) {
    if (auto bad = pack_one_sided(call, local, remote, opt.item_bytes,
                                  staging.data(), packed_by_caller, on,
                                  parts.data(), caller_packs.data());
        !bad.ok())
      throw std::logic_error("bench plan: " + bad.reason());
  };
  const double caller_packs_one =
      median_seconds(opt.repeats, [&] { caller_packs_now(nullptr); });
  const double caller_packs_parts =
      median_seconds(opt.repeats, [&] { caller_packs_now(&crew); });

  std::vector<copy_extent> virt(plan.size());
  one_sided_plan out;
  out.extents = std::move(virt);
  if (auto bad =
          plan_one_sided(call, local, remote, out, nullptr, parts.data());
      !bad.ok())
    throw std::logic_error("bench plan: " + bad.reason());
  virt = std::move(out.extents);
  std::uint64_t counted = 0;
  const double control_before =
      median_seconds(opt.repeats, [&] { counted = total_bytes(virt); });

  const endpoint_table src{region}, dst{region};
  const auto s = src.layout(), d = dst.layout();
  const std::vector<std::uint64_t> src_sizes = src.sizes, dst_sizes = dst.sizes;
  std::vector<packed_part> packs(opt.plan_threads);
  auto pack = [&] { // as gpu_copy_engine packs: in parts only on a crew
    if (opt.plan_threads < 2)
      return pack_plan(virt, opt.item_bytes, s, d, staging.data());
    return pack_plan_in_parts(
        virt, opt.item_bytes, s, d, staging.data(), packs.data(),
        opt.plan_threads,
        [&](std::size_t count, auto& job) { crew.run(count, job); });
  };
  const double transfer_before = median_seconds(opt.repeats, [&] {
    if (auto bad = check_table_extents(virt, src_sizes, dst_sizes))
      throw std::logic_error("bench plan: " + *bad);
    counted = total_bytes(virt);
    pack();
  });
  packed_plan_size packed;
  const double transfer_now =
      median_seconds(opt.repeats, [&] { packed = pack(); });
  if (packed.copied != counted || counted != out.bytes ||
      packed_by_caller.size.copied != counted ||
      packed_by_caller.size.items != packed.items)
    throw std::logic_error("bench plan: the pack counted " +
                           std::to_string(packed.copied) + " bytes, the list " +
                           std::to_string(counted));
  row["vector_call_us"] = {{"caller_before", caller_before * 1e6},
                           {"caller_one_thread", caller_one * 1e6},
                           {"caller_in_parts", caller_parts * 1e6},
                           {"caller_read_in_parts", caller_read_parts * 1e6},
                           {"control_before", control_before * 1e6},
                           {"control_now", 0.0},
                           {"transfer_before", transfer_before * 1e6},
                           {"transfer_now", transfer_now * 1e6},
                           {"caller_packs_one_thread", caller_packs_one * 1e6},
                           {"caller_packs_in_parts", caller_packs_parts * 1e6}};
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
  auto row = json{{"block_bytes", block},
                  {"extents", blocks},
                  {"work_items", packed.items},
                  {"packed_seconds", packed_s},
                  {"packed_us_per_1000_extents", packed_s * 1e9 / blocks},
                  {"item_list_seconds", items_s},
                  {"item_list_over_packed", items_s / packed_s}};
  measure_table_plans(opt, plan, region, staging, row);
  measure_vector_call(opt, plan, region, staging, row);
  return row;
}

// plan_kv for one request between two layouts, into a reused list.
json measure_kv_plan(const bench_plan_options& opt, const kv_layout& src,
                     const kv_layout& dst, bool scattered,
                     std::mt19937_64& rng) {
  std::vector<std::uint64_t> all(src.num_blocks());
  std::iota(all.begin(), all.end(), 0ull);
  auto blocks = [&] {
    if (scattered)
      std::shuffle(all.begin(), all.end(), rng);
    return std::vector<std::uint64_t>(all.begin(), all.begin() + opt.kv_blocks);
  };
  const auto src_blocks = blocks(), dst_blocks = blocks();
  std::vector<extent> plan;
  const double s = median_seconds(opt.repeats, [&] {
    plan.clear();
    plan_kv(src, src_blocks, dst, dst_blocks, std::nullopt, plan);
  });
  return json{{"src_layout", src.name()},
              {"dst_layout", dst.name()},
              {"blocks", opt.kv_blocks},
              {"layers", src.layers()},
              {"scattered", scattered},
              {"extents", plan.size()},
              {"seconds", s},
              {"us_per_block", s * 1e6 / static_cast<double>(opt.kv_blocks)}};
}

json measure_kv_plans(const bench_plan_options& opt, std::mt19937_64& rng) {
  if (opt.kv_blocks == 0 || opt.kv_layers == 0 || opt.kv_block_bytes == 0)
    throw std::invalid_argument(
        "--kv-blocks, --kv-layers and --kv-block-bytes must be positive");
  const auto cache = 4 * opt.kv_blocks;
  const auto vllm =
      kv_layout::vllm_per_layer(opt.kv_layers, cache, opt.kv_block_bytes);
  const auto major =
      kv_layout::block_major(opt.kv_layers, cache, opt.kv_block_bytes);
  std::cout << fmt::format(
      "KV plans: {} blocks of a {}-block cache, {} layers, K and V, "
      "{}-byte block halves\n",
      opt.kv_blocks, cache, opt.kv_layers, opt.kv_block_bytes);
  std::cout << fmt::format("{:>22} {:>22} {:>10} {:>8} {:>12} {:>10}\n", "from",
                           "to", "blocks", "extents", "plan us", "us/block");
  json rows = json::array();
  for (const auto* from : {&vllm, &major})
    for (const auto* to : {&vllm, &major})
      for (bool scattered : {false, true}) {
        auto row = measure_kv_plan(opt, *from, *to, scattered, rng);
        std::cout << fmt::format(
            "{:>22} {:>22} {:>10} {:>8} {:>12.1f} {:>10.3f}\n", from->name(),
            to->name(), scattered ? "scattered" : "in a row",
            row["extents"].get<std::uint64_t>(),
            row["seconds"].get<double>() * 1e6,
            row["us_per_block"].get<double>());
        rows.push_back(std::move(row));
      }
  return rows;
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
    if (opt.plan_threads < 1 || opt.plan_threads > 64)
      throw std::invalid_argument("--plan-threads must be 1 to 64");
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
    std::cout << fmt::format(
        "\nOver region tables (a CUDA IPC transfer's plan, issue #16), ns per "
        "extent: translate + pack (before) / one pass (now) / in {} parts\n",
        opt.plan_threads);
    for (const auto& row : result["sizes"]) {
      const auto& ns = row["table_ns_per_extent"];
      std::cout << fmt::format("{:>8} {:>8} {:>10.2f} {:>10.2f} {:>10.2f}\n",
                               row["block_bytes"].get<std::uint64_t>(),
                               row["extents"].get<std::uint64_t>(),
                               ns["translate_then_pack"].get<double>(),
                               ns["one_pass"].get<double>(),
                               ns["in_parts"].get<double>());
    }
    std::cout << fmt::format(
        "\nOne vector endpoint call over these blocks (issue #16), host us "
        "per call and stage, before / now (parts: {} threads)\n",
        opt.plan_threads);
    std::cout << fmt::format("{:>8} {:>8} {:>22} {:>12} {:>14} {:>18}\n",
                             "block", "extents", "caller (1 / parts)",
                             "read: parts", "control", "transfer actor");
    for (const auto& row : result["sizes"]) {
      const auto& us = row["vector_call_us"];
      std::cout << fmt::format(
          "{:>8} {:>8} {:>7.1f} / {:>5.1f} / {:>5.1f} {:>12.1f} {:>6.1f} / "
          "{:>4.1f} {:>8.1f} / {:>6.1f}\n",
          row["block_bytes"].get<std::uint64_t>(),
          row["extents"].get<std::uint64_t>(),
          us["caller_before"].get<double>(),
          us["caller_one_thread"].get<double>(),
          us["caller_in_parts"].get<double>(),
          us["caller_read_in_parts"].get<double>(),
          us["control_before"].get<double>(), us["control_now"].get<double>(),
          us["transfer_before"].get<double>(),
          us["transfer_now"].get<double>());
    }
    std::cout << fmt::format(
        "\nThe caller's pass packing the plan itself (pack_one_sided, virtual "
        "offsets: the transfer actor would only upload it), host us per "
        "call, 1 / {} threads, against caller + transfer actor now\n",
        opt.plan_threads);
    std::cout << fmt::format("{:>8} {:>8} {:>22} {:>24}\n", "block", "extents",
                             "caller packs (1 / parts)",
                             "caller + actor (parts)");
    for (const auto& row : result["sizes"]) {
      const auto& us = row["vector_call_us"];
      std::cout << fmt::format(
          "{:>8} {:>8} {:>13.1f} / {:>6.1f} {:>10.1f} + {:>6.1f}\n",
          row["block_bytes"].get<std::uint64_t>(),
          row["extents"].get<std::uint64_t>(),
          us["caller_packs_one_thread"].get<double>(),
          us["caller_packs_in_parts"].get<double>(),
          us["caller_in_parts"].get<double>(),
          us["transfer_now"].get<double>());
    }
    result["kv_plans"] = measure_kv_plans(opt, rng);
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
  cmd->add_option("--plan-threads", opt->plan_threads,
                  "Threads of the plans over region tables packed in parts")
      ->capture_default_str();
  cmd->add_option("--kv-blocks", opt->kv_blocks,
                  "KV plans: blocks per request (the cache has 4x)")
      ->capture_default_str();
  cmd->add_option("--kv-layers", opt->kv_layers, "KV plans: layers")
      ->capture_default_str();
  cmd->add_option("--kv-block-bytes", opt->kv_block_bytes,
                  "KV plans: bytes of one block's K (or V) in one layer")
      ->capture_default_str();
  cmd->add_option("--json", opt->json_path,
                  "Write the results to this JSON file");
  cmd->callback([opt, &exit_code] { exit_code = run_bench_plan(*opt); });
}

} // namespace kvferry::app
