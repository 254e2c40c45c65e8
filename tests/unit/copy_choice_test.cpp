// The per-GPU copy-kernel choice without a GPU (copy_choice.hpp): band text,
// the cache file (format, atomic rewrite, corrupt files ignored), choosing
// from measured timings, and the precedence of override, cache and tune.
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>

#include <doctest/doctest.h>

#include "kvferry/transport/copy_choice.hpp"
#include "scoped_env.hpp"
#include "scratch_dir.hpp"

using namespace kvferry::transport;

namespace {

using kvferry::test::scoped_env;

std::string read_all(const std::filesystem::path& p) {
  std::ifstream in{p};
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A table of the default and the plain kernel at 4 KiB, 64 KiB and 2 MiB.
tuning_table two_kernels(std::vector<double> default_s,
                         std::vector<double> plain_s) {
  return tuning_table{
      {4096, 65536, 2097152}, {"default", "plain"}, {default_s, plain_s}};
}

const std::function<tuning_table()> no_tune = []() -> tuning_table {
  FAIL("tuned although it should not");
  return {};
};

} // namespace

TEST_CASE("candidates: the default first, the plain kernel as issue #18 "
          "measured it") {
  const auto& all = copy_candidates();
  REQUIRE(all.size() >= 2);
  CHECK(all.front().name == "default");
  const auto plain = copy_candidate_named("plain");
  REQUIRE(plain);
  CHECK(plain->plain);
  CHECK(plain->threads_per_block == 512);
  CHECK(plain->blocks_per_sm == 8);
  CHECK(plain->item_bytes >= 2u << 20); // a block per extent up to 2 MiB
  CHECK_FALSE(copy_candidate_named("fastest"));
}

TEST_CASE("bands round-trip as text; malformed text is refused") {
  const std::vector<named_band> bands{{0, "default"}, {32768, "plain"}};
  CHECK(format_bands(bands) == "0:default,32768:plain");
  CHECK(parse_bands("0:default,32768:plain") == bands);
  CHECK(format_bands({{0, "plain"}}) == "plain");
  CHECK(parse_bands("plain") == std::vector<named_band>{{0, "plain"}});
  for (const char* bad :
       {"", "fast", "1:plain", "0:plain,0:default", "0:plain,-5:default",
        "0:plain,100", "0:plain,100:nope", "0:plain,", "x:plain",
        "0:plain,99999999999999999999:default"})
    CHECK_MESSAGE(!parse_bands(bad), bad);
}

TEST_CASE("engine bands carry each kernel and the engine-wide priority") {
  copy_tuning wide;
  wide.high_priority_stream = true;
  const auto bands = copy_bands_of({{0, "default"}, {65536, "plain"}}, wide);
  REQUIRE(bands.size() == 2);
  CHECK(bands[1].from_bytes == 65536);
  CHECK(bands[1].tuning.plain);
  CHECK_FALSE(bands[0].tuning.plain);
  CHECK(bands[0].tuning.high_priority_stream);
  CHECK(bands[1].tuning.high_priority_stream);
  CHECK_THROWS_AS(copy_bands_of({{0, "nope"}}), std::invalid_argument);
  CHECK_NOTHROW(check_copy_bands(bands));
}

TEST_CASE("an engine's band is picked by the plan's average extent") {
  const std::vector<copy_band> bands{
      {0, copy_tuning{}}, {32768, plain_copy_tuning()}, {1 << 20, {}}};
  auto plan = [](std::uint64_t block, std::size_t n) {
    std::vector<copy_extent> p(n);
    for (std::size_t i = 0; i < n; ++i)
      p[i] = copy_extent{i * 2 * block, i * 2 * block, block};
    return p;
  };
  CHECK(band_for_extents(bands, plan(4096, 10000)) == 0);
  CHECK(band_for_extents(bands, plan(32768, 100)) == 1);
  CHECK(band_for_extents(bands, plan(65536, 3)) == 1);
  CHECK(band_for_extents(bands, plan(2 << 20, 5)) == 2);
  CHECK(band_for_extents(bands, {}) == 0);
  CHECK(band_for_extents({{0, {}}}, plan(2 << 20, 5)) == 0);
  // Bands an engine cannot run are refused naming the band.
  CHECK_THROWS_WITH_AS(check_copy_bands({{4096, {}}}),
                       doctest::Contains("first copy band"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(check_copy_bands({{0, {}}, {0, {}}}),
                       doctest::Contains("copy band 1"), std::invalid_argument);
  copy_tuning odd;
  odd.item_bytes = 100;
  CHECK_THROWS_AS(check_copy_bands({{0, odd}}), std::invalid_argument);
}

TEST_CASE("choosing: the fastest kernel per size, the default unless "
          "another is clearly faster") {
  SUBCASE("plain faster everywhere: one band") {
    CHECK(choose_bands(two_kernels({1.0, 1.0, 1.0}, {0.9, 0.9, 0.95})) ==
          std::vector<named_band>{{0, "plain"}});
  }
  SUBCASE("default faster everywhere") {
    CHECK(choose_bands(two_kernels({1.0, 1.0, 1.0}, {1.2, 1.1, 1.3})) ==
          std::vector<named_band>{{0, "default"}});
  }
  SUBCASE("within the margin the default stays") {
    CHECK(choose_bands(two_kernels({1.0, 1.0, 1.0}, {0.995, 0.999, 0.991})) ==
          std::vector<named_band>{{0, "default"}});
  }
  SUBCASE("default at 4 KiB, plain from 64 KiB: the band starts halfway") {
    CHECK(choose_bands(two_kernels({1.0, 1.0, 1.0}, {1.2, 0.9, 0.9})) ==
          std::vector<named_band>{{0, "default"}, {16384, "plain"}});
  }
  SUBCASE("alternating kernels give three bands") {
    CHECK(choose_bands(two_kernels({1.0, 1.0, 1.0}, {0.8, 1.2, 0.8})) ==
          std::vector<named_band>{
              {0, "plain"}, {16384, "default"}, {370727, "plain"}});
  }
  SUBCASE("a kernel that failed (0 s) is never chosen") {
    CHECK(choose_bands(two_kernels({1.0, 1.0, 1.0}, {0.0, 0.5, 0.0})) ==
          std::vector<named_band>{
              {0, "default"}, {16384, "plain"}, {370727, "default"}});
  }
  SUBCASE("the chosen kernel is at least as fast as default and plain at "
          "every size") {
    const auto t = two_kernels({1.0, 2.0, 3.0}, {1.5, 1.0, 3.5});
    const auto bands = choose_bands(t);
    for (std::size_t s = 0; s < t.block_bytes.size(); ++s) {
      std::size_t band = 0;
      while (band + 1 < bands.size() &&
             bands[band + 1].from_bytes <= t.block_bytes[s])
        ++band;
      const std::size_t k = bands[band].kernel == "default" ? 0 : 1;
      CHECK(t.seconds[k][s] <= std::min(t.seconds[0][s], t.seconds[1][s]));
    }
  }
  SUBCASE("malformed tables are refused") {
    CHECK_THROWS_AS(choose_bands(tuning_table{}), std::invalid_argument);
    CHECK_THROWS_AS(choose_bands(tuning_table{{4096}, {"default"}, {{}}}),
                    std::invalid_argument);
    CHECK_THROWS_AS(
        choose_bands(tuning_table{{8192, 4096}, {"default"}, {{1.0, 1.0}}}),
        std::invalid_argument);
  }
}

TEST_CASE("the cache key names GPU model, driver and kvferry version") {
  const copy_choice_key key{"NVIDIA H200", "550.54.15", "0.1.0"};
  const auto text = key.text();
  CHECK(text.find("NVIDIA H200") != std::string::npos);
  CHECK(text.find("550.54.15") != std::string::npos);
  CHECK(text.find("0.1.0") != std::string::npos);
  CHECK(text !=
        copy_choice_key{"NVIDIA H100 80GB HBM3", "550.54.15", "0.1.0"}.text());
  CHECK(text != copy_choice_key{"NVIDIA H200", "560.28.03", "0.1.0"}.text());
  CHECK(text != copy_choice_key{"NVIDIA H200", "550.54.15", "0.2.0"}.text());
  CHECK(copy_choice_key{"odd\tname", "1", "2"}.text().find('\t') ==
        std::string::npos);
}

TEST_CASE("the driver version is read from /proc/driver/nvidia/version") {
  CHECK(parse_nvidia_driver_version(
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue "
            "Mar  5 22:23:56 UTC 2024\nGCC version:  gcc version 12.2.0\n") ==
        "550.54.15");
  CHECK(parse_nvidia_driver_version(
            "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  "
            "570.86.15  Release Build\n") == "570.86.15");
  CHECK_FALSE(parse_nvidia_driver_version(""));
  CHECK_FALSE(parse_nvidia_driver_version("something else 1.2"));
}

TEST_CASE("cache text: one line per GPU, comments, corrupt files refused") {
  const std::map<std::string, std::string> m{
      {"NVIDIA H100|driver 1|kvferry 0.1.0 kernels 1", "default"},
      {"NVIDIA H200|driver 1|kvferry 0.1.0 kernels 1",
       "0:default,16384:plain"}};
  const auto text = format_choice_cache(m);
  CHECK(text[0] == '#');
  CHECK(parse_choice_cache(text) == m);
  CHECK(parse_choice_cache("")->empty());
  for (const char* bad : {"no tab here\n", "\tplain\n", "key\tnope\n",
                          "key\tplain\textra\n", "key\t1:plain\n"})
    CHECK_MESSAGE(!parse_choice_cache(bad), bad);
}

TEST_CASE("cache file: where it lives") {
  {
    scoped_env xdg{"XDG_CACHE_HOME", "/somewhere/cache"};
    CHECK(choice_cache_path() == "/somewhere/cache/kvferry/copy-kernels.txt");
  }
  {
    scoped_env xdg{"XDG_CACHE_HOME", nullptr};
    scoped_env home{"HOME", "/home/u"};
    CHECK(choice_cache_path() == "/home/u/.cache/kvferry/copy-kernels.txt");
  }
  {
    scoped_env xdg{"XDG_CACHE_HOME", "relative"}; // not absolute: ignored
    scoped_env home{"HOME", nullptr};
    CHECK(choice_cache_path().empty());
  }
}

TEST_CASE("cache file: written atomically, entries kept, corrupt ignored") {
  kvferry::test::scratch_dir dir{"kvferry-copy-choice"};
  const auto path = (dir.path / "kvferry" / "copy-kernels.txt").string();
  std::string warning;
  CHECK(read_choice_cache(path, warning).empty()); // missing: empty, quiet
  CHECK(warning.empty());

  CHECK(write_choice_cache_entry(path, "gpu A", "plain").empty());
  CHECK(
      write_choice_cache_entry(path, "gpu B", "0:default,16384:plain").empty());
  CHECK(write_choice_cache_entry(path, "gpu A", "default").empty());
  auto entries = read_choice_cache(path, warning);
  CHECK(warning.empty());
  CHECK(entries ==
        std::map<std::string, std::string>{{"gpu A", "default"},
                                           {"gpu B", "0:default,16384:plain"}});
  // No temporary file left beside it.
  std::size_t files = 0;
  for (const auto& e :
       std::filesystem::directory_iterator{dir.path / "kvferry"}) {
    (void)e;
    ++files;
  }
  CHECK(files == 1);

  std::ofstream{path} << "garbage without a tab\n";
  entries = read_choice_cache(path, warning);
  CHECK(entries.empty());
  CHECK(warning.find(path) != std::string::npos);
  CHECK(warning.find("corrupt") != std::string::npos);
  // The next tune replaces the corrupt file with its own entry.
  CHECK(write_choice_cache_entry(path, "gpu C", "plain").empty());
  warning.clear();
  CHECK(read_choice_cache(path, warning) ==
        std::map<std::string, std::string>{{"gpu C", "plain"}});
  CHECK(read_all(path).find("garbage") == std::string::npos);

  // A directory in the file's place cannot be read: ignored with a warning.
  const auto blocked = (dir.path / "blocked").string();
  std::filesystem::create_directories(blocked);
  warning.clear();
  CHECK(read_choice_cache(blocked, warning).empty());
  CHECK_FALSE(warning.empty());
  CHECK_FALSE(write_choice_cache_entry(blocked, "k", "plain").empty());
  CHECK_FALSE(write_choice_cache_entry("", "k", "plain").empty());
}

TEST_CASE("precedence: override, then cache, then measured, then tune") {
  const std::string key = "NVIDIA H200|driver 1|kvferry 0.1.0 kernels 1";
  const std::map<std::string, std::string> cache{
      {key, "0:default,16384:plain"}};
  std::vector<std::string> warnings;
  int tunes = 0;
  const std::function<tuning_table()> tune = [&] {
    ++tunes;
    return two_kernels({1.0, 1.0, 1.0}, {0.5, 0.5, 0.5});
  };

  SUBCASE("an override wins over the cache, and nothing is tuned") {
    auto c = resolve_copy_choice("default", key, cache, std::nullopt, no_tune,
                                 warnings);
    CHECK(c.source == "override");
    CHECK(c.bands == std::vector<named_band>{{0, "default"}});
    CHECK(c.why == "KVFERRY_COPY_KERNEL=default");
    c = resolve_copy_choice("0:plain,65536:block", key, cache, std::nullopt,
                            no_tune, warnings);
    CHECK(c.bands == std::vector<named_band>{{0, "plain"}, {65536, "block"}});
    CHECK(warnings.empty());
  }
  SUBCASE("the cache entry of this key is used without tuning") {
    const auto c =
        resolve_copy_choice("", key, cache, std::nullopt, no_tune, warnings);
    CHECK(c.source == "cached");
    CHECK(c.bands == std::vector<named_band>{{0, "default"}, {16384, "plain"}});
    CHECK_FALSE(c.table);
  }
  SUBCASE("another GPU's entry does not count: tuned") {
    const auto c = resolve_copy_choice("", "other GPU", cache, std::nullopt,
                                       tune, warnings);
    CHECK(c.source == "tuned");
    CHECK(tunes == 1);
    CHECK(c.bands == std::vector<named_band>{{0, "plain"}});
    REQUIRE(c.table);
    CHECK(c.table->kernels.size() == 2);
  }
  SUBCASE("'tune' tunes again although the cache has an entry") {
    const auto c =
        resolve_copy_choice("tune", key, cache, std::nullopt, tune, warnings);
    CHECK(c.source == "tuned");
    CHECK(tunes == 1);
    CHECK(c.why.find("KVFERRY_COPY_KERNEL=tune") != std::string::npos);
  }
  SUBCASE("a malformed override warns and falls back to the cache") {
    const auto c = resolve_copy_choice("fastest", key, cache, std::nullopt,
                                       no_tune, warnings);
    CHECK(c.source == "cached");
    REQUIRE(warnings.size() == 1);
    CHECK(warnings[0].find("KVFERRY_COPY_KERNEL='fastest'") !=
          std::string::npos);
  }
  SUBCASE("a model measured across two processes takes that choice, "
          "untuned, unless cached or overridden") {
    const std::optional<std::string> measured{"0:plain-256,1048576:block"};
    auto c = resolve_copy_choice("", "other GPU", cache, measured, no_tune,
                                 warnings);
    CHECK(c.source == "measured");
    CHECK(c.bands ==
          std::vector<named_band>{{0, "plain-256"}, {1048576, "block"}});
    CHECK(resolve_copy_choice("", key, cache, measured, no_tune, warnings)
              .source == "cached");
    CHECK(resolve_copy_choice("plain", key, cache, measured, no_tune, warnings)
              .source == "override");
    c = resolve_copy_choice("tune", "other GPU", cache, measured, tune,
                            warnings);
    CHECK(c.source == "tuned");
    CHECK(tunes == 1);
    CHECK(warnings.empty());
  }
  SUBCASE("the measured choices name known kernels") {
    for (const char* model : {"NVIDIA H200", "NVIDIA H100 80GB HBM3"}) {
      const auto m = measured_copy_choice(model);
      REQUIRE(m);
      CHECK(parse_bands(*m));
    }
    CHECK_FALSE(measured_copy_choice("NVIDIA A100-SXM4-80GB"));
  }
  SUBCASE("a cached entry that no longer parses is tuned again") {
    const std::map<std::string, std::string> stale{{key, "retired-kernel"}};
    const auto c =
        resolve_copy_choice("", key, stale, std::nullopt, tune, warnings);
    CHECK(c.source == "tuned");
    CHECK(tunes == 1);
    CHECK(warnings.size() == 1);
  }
}
