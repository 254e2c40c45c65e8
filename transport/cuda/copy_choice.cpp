// The CPU side of the per-GPU copy-kernel choice (copy_choice.hpp): the
// candidates, band text, the cache file, choosing from timings and the
// precedence of override, cache and tune. No CUDA here: CI tests all of it.
#include "kvferry/transport/copy_choice.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <unistd.h>

namespace kvferry::transport {

namespace {

// Bump when a candidate is added or a kernel changes: cached choices made
// with the old list are then tuned again.
constexpr int candidates_revision = 2;

std::optional<std::uint64_t> parse_count(const std::string& text) {
  if (text.empty() || text.size() > 19 ||
      !std::all_of(text.begin(), text.end(),
                   [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  return std::stoull(text);
}

std::vector<std::string> split(const std::string& text, char by) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream in{text};
  while (std::getline(in, part, by))
    parts.push_back(part);
  if (!text.empty() && text.back() == by)
    parts.emplace_back();
  return parts;
}

} // namespace

copy_tuning plain_copy_tuning() {
  copy_tuning t;
  t.plain = true;
  t.threads_per_block = 512;
  t.blocks_per_sm = 8;
  t.item_bytes = 2u << 20; // a block per extent up to 2 MiB; longer ones split
  t.streaming = false;
  t.claim_items = false;
  return t;
}

const std::vector<copy_candidate>& copy_candidates() {
  static const std::vector<copy_candidate> all = [] {
    copy_tuning warp; // the claim-items warp kernel at every size
    warp.block_per_item_from = std::numeric_limits<std::uint64_t>::max();
    copy_tuning block; // the block-per-item kernel at every size
    block.block_per_item_from = 0;
    copy_tuning block_16k = block;
    block_16k.item_bytes = 16384;
    block_16k.threads_per_block = 512;
    // The plain kernel with narrower blocks: at 512 threads a 4 KiB extent
    // keeps half of each block idle and only 4 blocks fit on an SM (2048
    // threads), so 4 extents per SM are in flight; at 256 threads (8 per SM)
    // 8 are, at 128 threads (16 per SM) 16 are. Small blocks want that.
    // Their items are 256 KiB, so that a few large extents still make many
    // items: at 2 MiB items 256 extents of 2 MiB give 2 narrow blocks per SM.
    copy_tuning plain_256 = plain_copy_tuning();
    plain_256.threads_per_block = 256;
    plain_256.item_bytes = 256u << 10;
    copy_tuning plain_128 = plain_256;
    plain_128.threads_per_block = 128;
    plain_128.blocks_per_sm = 16;
    return std::vector<copy_candidate>{{"default", copy_tuning{}},
                                       {"warp", warp},
                                       {"block", block},
                                       {"block-16k-512", block_16k},
                                       {"plain", plain_copy_tuning()},
                                       {"plain-256", plain_256},
                                       {"plain-128", plain_128}};
  }();
  return all;
}

std::optional<copy_tuning> copy_candidate_named(const std::string& name) {
  for (const auto& c : copy_candidates())
    if (c.name == name)
      return c.tuning;
  return std::nullopt;
}

std::string format_bands(const std::vector<named_band>& bands) {
  if (bands.size() == 1 && bands.front().from_bytes == 0)
    return bands.front().kernel;
  std::string text;
  for (const auto& b : bands)
    text += (text.empty() ? "" : ",") + std::to_string(b.from_bytes) + ":" +
            b.kernel;
  return text;
}

std::optional<std::vector<named_band>> parse_bands(const std::string& text) {
  if (copy_candidate_named(text))
    return std::vector<named_band>{{0, text}};
  std::vector<named_band> bands;
  for (const auto& part : split(text, ',')) {
    const auto colon = part.find(':');
    if (colon == std::string::npos)
      return std::nullopt;
    const auto from = parse_count(part.substr(0, colon));
    const auto kernel = part.substr(colon + 1);
    if (!from || !copy_candidate_named(kernel) ||
        (bands.empty() ? *from != 0 : *from <= bands.back().from_bytes))
      return std::nullopt;
    bands.push_back({*from, kernel});
  }
  if (bands.empty())
    return std::nullopt;
  return bands;
}

std::vector<copy_band> copy_bands_of(const std::vector<named_band>& bands,
                                     const copy_tuning& engine_wide) {
  std::vector<copy_band> out;
  for (const auto& b : bands) {
    auto tuning = copy_candidate_named(b.kernel);
    if (!tuning)
      throw std::invalid_argument("no copy kernel named '" + b.kernel + "'");
    tuning->high_priority_stream = engine_wide.high_priority_stream;
    out.push_back({b.from_bytes, *tuning});
  }
  return out;
}

std::string copy_choice_key::text() const {
  std::string key = gpu_model + "|driver " + driver + "|kvferry " +
                    kvferry_version + " kernels " +
                    std::to_string(candidates_revision);
  // The key is one field of a tab-separated line.
  std::replace_if(
      key.begin(), key.end(), [](char c) { return c == '\t' || c == '\n'; },
      ' ');
  return key;
}

std::vector<named_band> choose_bands(const tuning_table& t,
                                     double keep_default_within) {
  const std::size_t sizes = t.block_bytes.size();
  if (sizes == 0 || t.kernels.empty() || t.seconds.size() != t.kernels.size())
    throw std::invalid_argument("choose_bands: empty or ragged timing table");
  for (std::size_t s = 0; s < sizes; ++s)
    if (t.block_bytes[s] == 0 ||
        (s > 0 && t.block_bytes[s] <= t.block_bytes[s - 1]))
      throw std::invalid_argument(
          "choose_bands: block sizes must be positive and increasing");
  for (const auto& row : t.seconds)
    if (row.size() != sizes)
      throw std::invalid_argument("choose_bands: ragged timing table");
  std::vector<named_band> bands;
  for (std::size_t s = 0; s < sizes; ++s) {
    std::size_t best = 0;
    double best_s = 0;
    for (std::size_t k = 0; k < t.kernels.size(); ++k) {
      const double sec = t.seconds[k][s];
      if (sec > 0 && (best_s <= 0 || sec < best_s)) {
        best = k;
        best_s = sec;
      }
    }
    const double default_s = t.seconds[0][s];
    if (default_s > 0 && default_s <= best_s * (1.0 + keep_default_within))
      best = 0; // none measured, or none clearly faster: the default
    const auto& kernel = t.kernels[best];
    if (!bands.empty() && bands.back().kernel == kernel)
      continue;
    const std::uint64_t from =
        s == 0 ? 0
               : static_cast<std::uint64_t>(
                     std::sqrt(static_cast<double>(t.block_bytes[s - 1]) *
                               static_cast<double>(t.block_bytes[s])));
    bands.push_back({from, kernel});
  }
  return bands;
}

std::optional<std::map<std::string, std::string>>
parse_choice_cache(const std::string& text) {
  std::map<std::string, std::string> entries;
  for (const auto& line : split(text, '\n')) {
    if (line.empty() || line[0] == '#')
      continue;
    const auto tab = line.find('\t');
    if (tab == 0 || tab == std::string::npos ||
        line.find('\t', tab + 1) != std::string::npos ||
        !parse_bands(line.substr(tab + 1)))
      return std::nullopt;
    entries[line.substr(0, tab)] = line.substr(tab + 1);
  }
  return entries;
}

std::string format_choice_cache(const std::map<std::string, std::string>& m) {
  std::string text =
      "# kvferry copy-kernel choices, one GPU per line: <GPU model|driver|"
      "kvferry version>\\t<bands>\n"
      "# Written by the autotune (docs/gpu.md, \"Kernel choice\"); delete a "
      "line or the file to tune again.\n";
  for (const auto& [key, bands] : m)
    text += key + "\t" + bands + "\n";
  return text;
}

std::string choice_cache_path() {
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  if (xdg != nullptr && *xdg == '/')
    return std::string{xdg} + "/kvferry/copy-kernels.txt";
  const char* home = std::getenv("HOME");
  if (home != nullptr && *home != '\0')
    return std::string{home} + "/.cache/kvferry/copy-kernels.txt";
  return {};
}

std::map<std::string, std::string> read_choice_cache(const std::string& path,
                                                     std::string& warning) {
  std::error_code ec;
  if (path.empty() || !std::filesystem::exists(path, ec))
    return {};
  std::ifstream in{path};
  std::stringstream text;
  if (std::filesystem::is_regular_file(path, ec) && in)
    text << in.rdbuf();
  if (!std::filesystem::is_regular_file(path, ec) || !in || in.bad()) {
    warning = "copy-kernel cache " + path +
              " cannot be read; ignoring it (the kernel is tuned again)";
    return {};
  }
  auto entries = parse_choice_cache(text.str());
  if (!entries) {
    warning = "copy-kernel cache " + path +
              " is corrupt; ignoring it (the kernel is tuned again and the "
              "file rewritten)";
    return {};
  }
  return *entries;
}

std::string write_choice_cache_entry(const std::string& path,
                                     const std::string& key,
                                     const std::string& bands) {
  if (path.empty())
    return "no cache directory ($XDG_CACHE_HOME and $HOME are unset)";
  const auto dir = std::filesystem::path{path}.parent_path();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    return "cannot create " + dir.string() + ": " + ec.message();
  std::string ignored; // a corrupt file is replaced by our entry alone
  auto entries = read_choice_cache(path, ignored);
  entries[key] = bands;
  std::string tmp = path + ".XXXXXX";
  const int fd = mkstemp(tmp.data());
  if (fd < 0)
    return "cannot create a temporary file beside " + path + ": " +
           std::strerror(errno);
  const auto text = format_choice_cache(entries);
  const bool written = ::write(fd, text.data(), text.size()) ==
                           static_cast<ssize_t>(text.size()) &&
                       ::fsync(fd) == 0;
  ::close(fd);
  if (!written || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    return "cannot write " + path + ": " + why;
  }
  return {};
}

std::optional<std::string> measured_copy_choice(const std::string& gpu_model) {
  // bench ipc across two processes, 512 MiB of shuffled blocks, every
  // candidate forced in turn (docs/benchmarks.md, 2026-12-05, driver
  // 580.159.04). H200: the narrow plain kernel is within 1% of the best
  // candidate from 4 KiB to 256 KiB (0.88-0.91x of a contiguous copy; the
  // default 0.73-0.87x), block-16k-512 the best at 2 MiB (0.92x); the
  // in-process autotune put warp and default ahead at 64-256 KiB, 2-4%
  // behind in two processes. H100: the default is within 1% of the best at
  // every size, as the autotune also finds.
  static const std::map<std::string, std::string> measured{
      {"NVIDIA H200", "0:plain-256,1048576:block-16k-512"},
      {"NVIDIA H100 80GB HBM3", "default"},
  };
  if (auto it = measured.find(gpu_model); it != measured.end())
    return it->second;
  return std::nullopt;
}

copy_choice resolve_copy_choice(const std::string& override_text,
                                const std::string& key,
                                const std::map<std::string, std::string>& cache,
                                const std::optional<std::string>& measured,
                                const std::function<tuning_table()>& tune,
                                std::vector<std::string>& warnings) {
  copy_choice choice;
  const bool retune = override_text == "tune";
  if (!override_text.empty() && !retune) {
    if (auto bands = parse_bands(override_text)) {
      choice.bands = *bands;
      choice.source = "override";
      choice.why = std::string{copy_kernel_variable} + "=" + override_text;
      return choice;
    }
    warnings.push_back(std::string{copy_kernel_variable} + "='" +
                       override_text +
                       "' is not a kernel name (default, warp, block, "
                       "block-16k-512, plain, plain-256, plain-128), bands "
                       "such as "
                       "'0:default,65536:plain' or 'tune'; ignoring it");
  }
  if (!retune) {
    if (auto it = cache.find(key); it != cache.end()) {
      if (auto bands = parse_bands(it->second)) {
        choice.bands = *bands;
        choice.source = "cached";
        choice.why = "cached for " + key;
        return choice;
      }
      warnings.push_back("copy-kernel cache entry for " + key + " ('" +
                         it->second + "') is not valid; ignoring it");
    }
    if (measured) {
      if (auto bands = parse_bands(*measured)) {
        choice.bands = *bands;
        choice.source = "measured";
        choice.why = "measured for this GPU model across two processes "
                     "(docs/gpu.md, \"Kernel choice\")";
        return choice;
      }
    }
  }
  choice.table = tune();
  choice.bands = choose_bands(*choice.table);
  choice.source = "tuned";
  choice.why = (retune ? std::string{copy_kernel_variable} + "=tune: tuned "
                       : std::string{"tuned "}) +
               "on this GPU for " + key;
  return choice;
}

std::optional<std::string>
parse_nvidia_driver_version(const std::string& text) {
  // "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar ..."
  const auto module = text.find("Kernel Module");
  if (module == std::string::npos)
    return std::nullopt;
  std::istringstream in{text.substr(module + std::strlen("Kernel Module"))};
  std::string word;
  while (in >> word)
    if (std::isdigit(static_cast<unsigned char>(word[0])) &&
        word.find('.') != std::string::npos)
      return word;
  return std::nullopt;
}

} // namespace kvferry::transport
