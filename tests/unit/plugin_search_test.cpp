// One plugin search rule (issue #14): `launch`'s topology check
// (topology::find_plugin, what --dry-run accepts) and the loader
// (transport::locate_plugin, what a worker dlopens) pick the same file in a
// build tree and in an installed tree, and refuse the same places.
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "kvferry/runtime/topology.hpp"
#include "kvferry/transport/plugin.hpp"
#include "scratch_dir.hpp"

namespace fs = std::filesystem;
using kvferry::transport::plugin_search;

namespace {

// A name no real plugin has, so that no system directory holds one.
const std::string probe = "kvferry-search-probe";

// What each side makes of `name`: the file launch accepts ("" when none) and
// the path the loader hands to dlopen (the bare file name when it found
// none and leaves the search to dlopen).
struct verdicts {
  std::string launch;
  std::string loader;
};

verdicts look_up(const std::string& name, const plugin_search& search) {
  kvferry::topology::load_options options;
  options.plugins = search;
  return {kvferry::topology::find_plugin(name, options),
          kvferry::transport::locate_plugin(name, search).path};
}

// Only the tree: neither the environment nor LD_LIBRARY_PATH.
plugin_search in_tree(const fs::path& exe_dir) {
  plugin_search search;
  search.first_dirs = std::vector<std::string>{};
  search.library_path = std::vector<std::string>{};
  search.exe_dir = exe_dir.string();
  return search;
}

fs::path put_plugin(const fs::path& dir, const std::string& name) {
  fs::create_directories(dir);
  auto file = dir / kvferry::transport::plugin_file_name(name);
  std::ofstream(file) << "not really a library";
  return file;
}

// `found` names `file` (the search may spell its folder differently: "..").
bool is_file(const std::string& found, const fs::path& file) {
  return !found.empty() && fs::equivalent(found, file);
}

} // namespace

TEST_CASE("an installed tree: both find the plugin in the install libdir") {
  kvferry::test::scratch_dir tmp("kvferry-plugin-search");
  // The install rules: the binary in <prefix>/<bindir>, the plugins in
  // <prefix>/<libdir> (GNUInstallDirs, as this build was configured).
  const auto prefix = tmp.path / "prefix";
  fs::create_directories(prefix / KVFERRY_TEST_INSTALL_BINDIR);
  const auto file = put_plugin(prefix / KVFERRY_TEST_INSTALL_LIBDIR, probe);
  const auto got =
      look_up(probe, in_tree(prefix / KVFERRY_TEST_INSTALL_BINDIR));
  CHECK(is_file(got.launch, file));
  CHECK(got.loader == got.launch);
}

TEST_CASE("a build tree: both find the plugin in <build>/lib") {
  kvferry::test::scratch_dir tmp("kvferry-plugin-search");
  // The build's layout: bin/kvferry, lib/libnccl-net-*.so.
  fs::create_directories(tmp.path / "build" / "bin");
  const auto file = put_plugin(tmp.path / "build" / "lib", probe);
  const auto got = look_up(probe, in_tree(tmp.path / "build" / "bin"));
  CHECK(is_file(got.launch, file));
  CHECK(got.loader == got.launch);
}

TEST_CASE("this build tree: both find the bundled kvsock plugin") {
  const fs::path build = KVFERRY_BINARY_DIR;
  const auto got = look_up("kvsock", in_tree(build / "bin"));
  CHECK(is_file(got.launch, build / "lib" / "libnccl-net-kvsock.so"));
  CHECK(got.loader == got.launch);
}

TEST_CASE("a plugin beside the binary is found by neither") {
  // `launch` used to accept it; a worker could not load it.
  kvferry::test::scratch_dir tmp("kvferry-plugin-search");
  put_plugin(tmp.path / "bin", probe);
  const auto got = look_up(probe, in_tree(tmp.path / "bin"));
  CHECK(got.launch.empty());
  CHECK(got.loader == kvferry::transport::plugin_file_name(probe));
}

TEST_CASE("both search the given directories first, LD_LIBRARY_PATH after "
          "the tree") {
  kvferry::test::scratch_dir tmp("kvferry-plugin-search");
  fs::create_directories(tmp.path / "build" / "bin");
  const auto in_build = put_plugin(tmp.path / "build" / "lib", probe);
  const auto first = put_plugin(tmp.path / "first", probe);
  const auto later = put_plugin(tmp.path / "later", probe);

  auto search = in_tree(tmp.path / "build" / "bin");
  search.library_path = std::vector<std::string>{(tmp.path / "later").string()};
  auto got = look_up(probe, search);
  CHECK(is_file(got.launch, in_build));
  CHECK(got.loader == got.launch);

  search.first_dirs = std::vector<std::string>{(tmp.path / "first").string()};
  got = look_up(probe, search);
  CHECK(is_file(got.launch, first));
  CHECK(got.loader == got.launch);

  fs::remove(in_build);
  search.first_dirs = std::vector<std::string>{};
  got = look_up(probe, search);
  CHECK(is_file(got.launch, later));
  CHECK(got.loader == got.launch);
}

TEST_CASE("a path is taken as it is by both, and must exist") {
  kvferry::test::scratch_dir tmp("kvferry-plugin-search");
  const auto file = put_plugin(tmp.path / "anywhere", probe);
  auto got = look_up(file.string(), in_tree(tmp.path / "bin"));
  CHECK(is_file(got.launch, file));
  CHECK(got.loader == got.launch);
  const auto missing = (tmp.path / "nowhere" / "libnccl-net-x.so").string();
  CHECK(kvferry::topology::find_plugin(missing, {}).empty());
  CHECK_THROWS_AS(kvferry::transport::locate_plugin(missing),
                  kvferry::transport::plugin_load_error);
}
