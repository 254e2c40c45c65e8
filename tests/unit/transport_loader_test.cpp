// The loader's promises: errors name the plugin and what went wrong; a plugin
// that exits, crashes or hangs in init fails its probe instead of killing us.
#include <cstdlib>
#include <string>

#include <doctest/doctest.h>

#include "kvferry/transport/plugin.hpp"

using namespace kvferry::transport;

namespace {
const std::string fixtures = KVFERRY_FIXTURE_DIR;

std::string load_error(const std::string& what, load_options options = {}) {
  try {
    plugin::load(what, options);
  } catch (const plugin_load_error& e) {
    return e.what();
  }
  return "(no error)";
}
bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}
} // namespace

TEST_CASE("a missing file, a bad name and an unknown name are clear errors") {
  auto missing = load_error("/nonexistent/libnccl-net-x.so");
  CHECK(has(missing, "plugin /nonexistent/libnccl-net-x.so: no such file"));

  auto bad_name = load_error("two words");
  CHECK(has(bad_name, "'two words': not a plugin name"));

  auto unknown = load_error("nosuchplugin");
  INFO(unknown);
  CHECK(has(unknown, "plugin nosuchplugin"));
  CHECK(has(unknown, "libnccl-net-nosuchplugin.so"));
  CHECK(has(unknown, "dlopen"));
}

TEST_CASE(
    "a library without ncclNetPlugin_v7 names the tables it does export") {
  auto error = load_error(fixtures + "/libnccl-net-bad-v8only.so");
  INFO(error);
  CHECK(has(error, "does not export ncclNetPlugin_v7"));
  CHECK(has(error, "it exports ncclNetPlugin_v8 instead"));
}

TEST_CASE("the probe survives a plugin that calls exit() in init") {
  auto report = probe_plugin(fixtures + "/libnccl-net-bad-exit.so");
  CHECK_FALSE(report.ok);
  CHECK(report.error ==
        "plugin " + fixtures +
            "/libnccl-net-bad-exit.so: init exited with status 1 in the probe "
            "process");
  // load() probes first, so the same plugin cannot take this process down.
  CHECK(has(load_error(fixtures + "/libnccl-net-bad-exit.so"),
            "init exited with status 1"));
}

TEST_CASE("the probe survives a plugin that crashes in init") {
  auto report = probe_plugin(fixtures + "/libnccl-net-bad-segv.so");
  INFO(report.error);
  CHECK_FALSE(report.ok);
  CHECK(has(report.error, ": init "));
  CHECK(has(report.error, "in the probe process"));
  // Plain build: signal 11; under ASan the sanitizer reports and ends the
  // child.
  CHECK((has(report.error, "crashed with signal") ||
         has(report.error, "exited with status")));
}

TEST_CASE("the probe kills a plugin whose init hangs, at the deadline") {
  auto report = probe_plugin(fixtures + "/libnccl-net-bad-hang.so",
                             std::chrono::milliseconds(300));
  CHECK_FALSE(report.ok);
  CHECK(has(report.error,
            "init did not return within 0.3 s in the probe process (killed)"));
}

TEST_CASE("plugins are found by name on KVFERRY_PLUGIN_PATH and loaded once") {
  ::setenv("KVFERRY_PLUGIN_PATH", ("/nonexistent:" + fixtures).c_str(), 1);
  auto where = locate_plugin("fake");
  CHECK(where.path == fixtures + "/libnccl-net-fake.so");

  auto report = probe_plugin("fake");
  REQUIRE_MESSAGE(report.ok, report.error);
  CHECK(report.table_name == "fake");
  REQUIRE(report.devices.size() == 1);
  CHECK(report.devices[0].name == "fake0");
  CHECK(report.devices[0].supports_host());

  auto first = plugin::load("fake");
  auto again = plugin::load(fixtures + "/libnccl-net-fake.so");
  CHECK(first.get() == again.get());
  CHECK(first->name() == "fake");
  CHECK(first->device_count() == 1);
  CHECK(first->device(0).max_recvs >= 1);
  CHECK_THROWS_AS(first->device(1), transport_error);

  bool found = false;
  for (auto& p : discover_plugins())
    found = found || p.requested == "fake";
  CHECK(found);

  ::setenv("KVFERRY_NET_PLUGIN", "fake", 1);
  CHECK(default_plugin() == "fake");
  CHECK(plugin::load().get() == first.get());
  ::unsetenv("KVFERRY_NET_PLUGIN");
  CHECK(default_plugin() == "kvsock");
}

TEST_CASE("plugin errors name the plugin, the call and the result code") {
  plugin_error e("tcpx", "isend", ncclSystemError, "comm 0 to decode-1");
  CHECK(std::string(e.what()) ==
        "plugin tcpx: isend(comm 0 to decode-1) failed: ncclSystemError");
  CHECK(e.code() == ncclSystemError);
  CHECK(std::string(result_name(static_cast<ncclResult_t>(42))) ==
        "ncclResult(42)");
}
