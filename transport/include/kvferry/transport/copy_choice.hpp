// Which copy kernel runs on this GPU, per block size (issue #18): the
// default kernel was tuned on an H100 and is slower than a plain kernel on an
// H200, so the choice is made per GPU model: measured across two processes
// for the models in measured_copy_choice, else by a short autotune at first
// use (every candidate on shuffled plans of 4 KiB .. 2 MiB blocks, ~100 ms of
// GPU time), cached in a small file per GPU model, driver and kvferry
// version, and can be overridden. See docs/gpu.md, "Kernel choice".
//
//   auto choice = choose_copy_kernel(gpu); // override, cache, measured, tune
//   gpu_copy_engine engine{gpu, copy_bands_of(choice.bands)};
//
// The CPU side (cache format, key, choosing from timings, precedence) is
// plain C++ compiled everywhere and unit-tested without a GPU; only
// tune_copy_kernel and choose_copy_kernel need one.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "kvferry/transport/gpu_copy.hpp"

namespace kvferry::transport {

/// The environment variable that overrides the choice: a candidate's name
/// ("plain", "default", ...), bands ("0:default,65536:plain"), or "tune" to
/// measure again and rewrite the cache entry.
inline constexpr const char* copy_kernel_variable = "KVFERRY_COPY_KERNEL";

/// A kernel the autotune may choose.
struct copy_candidate {
  std::string name;
  copy_tuning tuning;
};

/// The plain kernel issue #18 measured: a block per extent of up to 2 MiB,
/// 512 threads, 8 blocks per SM, 16-byte plain loads and stores.
copy_tuning plain_copy_tuning();

/// Every candidate, the default first: the current default, its tuned
/// variants (warp kernel only, block-per-item only, block-per-item with
/// 16 KiB items and 512 threads) and the plain kernel.
const std::vector<copy_candidate>& copy_candidates();

/// The candidate of that name, or nothing.
std::optional<copy_tuning> copy_candidate_named(const std::string& name);

/// One band of a choice by name: candidate `kernel` for plans whose extents
/// average at least `from_bytes`.
struct named_band {
  std::uint64_t from_bytes = 0;
  std::string kernel;
  bool operator==(const named_band& o) const {
    return from_bytes == o.from_bytes && kernel == o.kernel;
  }
};

/// "0:default,65536:plain", or just "plain" for one band from 0.
std::string format_bands(const std::vector<named_band>& bands);
/// The inverse of format_bands; a single name means that kernel at every
/// size. Nothing when the text is malformed, names an unknown kernel, or the
/// bands do not start at 0 and increase.
std::optional<std::vector<named_band>> parse_bands(const std::string& text);

/// The engine's bands for a choice (every kernel known: parse_bands checked).
/// `engine_wide` supplies the settings of the engine rather than the kernel
/// (the stream priority).
std::vector<copy_band> copy_bands_of(const std::vector<named_band>& bands,
                                     const copy_tuning& engine_wide = {});

/// What a cache entry belongs to: the GPU model, its driver, this kvferry's
/// version and the revision of the candidate list (a new kernel re-tunes).
struct copy_choice_key {
  std::string gpu_model;
  std::string driver;
  std::string kvferry_version;
  std::string text() const;
};

/// The key of `gpu` on this machine (its name from CUDA, the driver from
/// /proc/driver/nvidia/version or CUDA, this build's version). Throws
/// gpu_error when there is no such GPU.
copy_choice_key copy_choice_key_for(int gpu);

/// Timings of every candidate (rows, in copy_candidates() order or any
/// other) at each tuned block size (columns, increasing).
struct tuning_table {
  std::vector<std::uint64_t> block_bytes;
  std::vector<std::string> kernels;
  std::vector<std::vector<double>> seconds; // [kernel][size]; <= 0: failed
};

/// Per tuned size the fastest kernel, keeping the default (kernels[0]) where
/// it is within `keep_default_within` (relative) of the fastest, so that
/// noise does not move the choice; neighbouring sizes with the same kernel
/// merge, and a band starts halfway (geometrically) between two tuned sizes.
/// Throws std::invalid_argument on a malformed table.
std::vector<named_band> choose_bands(const tuning_table& table,
                                     double keep_default_within = 0.01);

/// The cache file: one line per GPU key, `<key>\t<bands>`; '#' lines are
/// comments. Nothing when any line is malformed (the caller warns and
/// ignores the whole file).
std::optional<std::map<std::string, std::string>>
parse_choice_cache(const std::string& text);
std::string format_choice_cache(const std::map<std::string, std::string>& m);

/// $XDG_CACHE_HOME/kvferry/copy-kernels.txt, else
/// $HOME/.cache/kvferry/copy-kernels.txt; empty when neither is set.
std::string choice_cache_path();

/// Reads the cache; a missing file is an empty cache, an unreadable or
/// corrupt one too, with `warning` saying why (naming the file).
std::map<std::string, std::string> read_choice_cache(const std::string& path,
                                                     std::string& warning);
/// Adds or replaces one entry: the file is rewritten whole through a
/// temporary file and rename(), so a reader sees the old or the new file,
/// never half of one. Returns why it failed, empty when it worked.
std::string write_choice_cache_entry(const std::string& path,
                                     const std::string& key,
                                     const std::string& bands);

/// The choice and where it came from.
struct copy_choice {
  std::vector<named_band> bands;
  std::string source; // "override", "cached", "measured" or "tuned"
  std::string why;    // one line for a report
  std::optional<tuning_table> table; // when tuned here
};

/// The choice measured across two processes for a GPU model, where one was
/// (bands text), else nothing. The in-process autotune cannot see what an
/// IPC-mapped peer pool costs: on an H200 it ranks kernels 2-4% differently
/// from two processes at 64-256 KiB blocks. So known models use what was
/// measured the way workers copy; other GPUs tune.
std::optional<std::string> measured_copy_choice(const std::string& gpu_model);

/// The precedence, without side effects: a valid override
/// (KVFERRY_COPY_KERNEL) wins; "tune" calls `tune`; else this key's cache
/// entry; else `measured` (measured_copy_choice of the GPU model); else
/// (or a cached entry that no longer parses and nothing measured) `tune`.
/// A malformed override is a warning and is ignored. Warnings are appended.
copy_choice resolve_copy_choice(const std::string& override_text,
                                const std::string& key,
                                const std::map<std::string, std::string>& cache,
                                const std::optional<std::string>& measured,
                                const std::function<tuning_table()>& tune,
                                std::vector<std::string>& warnings);

/// "550.54.15" from /proc/driver/nvidia/version's text, or nothing.
std::optional<std::string> parse_nvidia_driver_version(const std::string& text);

/// Needs a GPU: times every candidate on `gpu` at 4 KiB .. 2 MiB blocks
/// (shuffled source and destination blocks, 256 MiB per size). Throws
/// gpu_error without CUDA or a GPU.
tuning_table tune_copy_kernel(int gpu);

/// The choice for `gpu`: KVFERRY_COPY_KERNEL, else this GPU's cache entry,
/// else the measured choice of its model, else a tune whose result is
/// cached. Once per GPU per process (later calls
/// return the first answer); concurrent processes tune one at a time (a lock
/// file beside the cache, waited for at most 10 s). Warnings go to the log.
copy_choice choose_copy_kernel(int gpu);

// chosen_copy_bands(gpu, engine_wide), the one call a transfer actor needs,
// is declared in gpu_copy.hpp.

} // namespace kvferry::transport
