// The loader's promises: errors name the plugin and what went wrong; a plugin
// that exits, crashes or hangs in init fails its probe instead of killing us;
// a probe from a busy, threaded process does not hang.
#include <atomic>
#include <cstdlib>
#include <link.h>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "kvferry/transport/channel.hpp"
#include "kvferry/transport/plugin.hpp"
#include "scoped_env.hpp"

using namespace kvferry::transport;
using kvferry::test::scoped_env;

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
  // The deadline leaves the helper program time to start on a loaded
  // machine (and under ASan) before the plugin's init begins.
  auto report = probe_plugin(fixtures + "/libnccl-net-bad-hang.so",
                             std::chrono::seconds(5));
  CHECK_FALSE(report.ok);
  CHECK(has(report.error,
            "init did not return within 5.0 s in the probe process (killed)"));
}

namespace {
// Threads that keep the allocator and the dynamic loader's lock busy until
// they are destroyed: the state in which a fork of this process could
// inherit a held lock and block on it for good.
class busy_threads {
public:
  explicit busy_threads(int allocating) {
    for (int t = 0; t < allocating; ++t)
      threads_.emplace_back([this, t] {
        std::vector<std::unique_ptr<char[]>> held(64);
        for (size_t i = 0; !stop_.load(std::memory_order_relaxed); ++i)
          held[i % held.size()].reset(
              new char[16 + (i * 61 + static_cast<size_t>(t)) % 8192]);
      });
    threads_.emplace_back([this] {
      while (!stop_.load(std::memory_order_relaxed))
        ::dl_iterate_phdr([](dl_phdr_info*, size_t, void*) { return 0; },
                          nullptr);
    });
  }
  busy_threads(const busy_threads&) = delete;
  busy_threads& operator=(const busy_threads&) = delete;
  ~busy_threads() {
    stop_ = true;
    for (auto& thread : threads_)
      thread.join();
  }

private:
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};
} // namespace

TEST_CASE("the probe works from a process whose threads hold malloc and the "
          "loader's lock in a loop") {
  busy_threads busy(4);
  int failed = 0;
  std::string first_error;
  for (int i = 0; i < 20; ++i) {
    auto report = probe_plugin(fixtures + "/libnccl-net-fake.so");
    if (!report.ok && failed++ == 0)
      first_error = report.error;
  }
  INFO(first_error);
  CHECK(failed == 0);
}

TEST_CASE("without its helper program the probe fails, naming where it "
          "looked") {
  const std::string plugin = fixtures + "/libnccl-net-quirk-slow-listen.so";
  {
    scoped_env env("KVFERRY_PLUGIN_PROBE", "/nonexistent/kvferry-plugin-probe");
    auto report = probe_plugin(plugin);
    CHECK_FALSE(report.ok);
    CHECK(report.error == "plugin " + plugin +
                              ": cannot probe: "
                              "KVFERRY_PLUGIN_PROBE=/nonexistent/"
                              "kvferry-plugin-probe is not an executable file "
                              "(No such file or directory)");
    // No fallback to a fork: load() refuses the plugin with the same error.
    CHECK(has(load_error(plugin), "KVFERRY_PLUGIN_PROBE=/nonexistent/"));
  }
  {
    // A helper that ends before it reports anything.
    scoped_env env("KVFERRY_PLUGIN_PROBE", "/bin/false");
    auto report = probe_plugin(plugin);
    CHECK(report.error == "plugin " + plugin +
                              ": the probe helper /bin/false exited with "
                              "status 1 before it began (its stderr says why)");
  }
  // The one found by default works.
  auto report = probe_plugin(plugin);
  CHECK_MESSAGE(report.ok, report.error);
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

// One rule for device properties (NCCL 2.28's), used by the loader, the
// channel wrapper and netcheck alike.
TEST_CASE("properties: NCCL's defaults are substituted with a warning") {
  device_properties dev;
  dev.name = "eth0";
  dev.ptr_support = NCCL_PTR_HOST;
  dev.speed_mbps = 0;
  dev.latency_us = -1;
  dev.max_comms = 16;
  dev.max_recvs = 0;
  auto check = check_properties(dev);
  CHECK(check.usable());
  CHECK(check.used.speed_mbps == nccl_default_speed_mbps);
  CHECK(check.used.latency_us == 0);
  CHECK(check.used.max_recvs == 1);
  CHECK(check.reported.speed_mbps == 0);
  REQUIRE(check.warnings.size() == 3);
  CHECK(has(check.warnings[0], "speed 0 Mbit/s: taken as 10000 Mbit/s"));

  dev.speed_mbps = -1; // "some NICs define speed = -1" (NCCL's comment)
  CHECK(check_properties(dev).used.speed_mbps == nccl_default_speed_mbps);
  dev.speed_mbps = 25000;
  dev.latency_us = 2;
  dev.max_recvs = 8;
  auto clean = check_properties(dev);
  CHECK(clean.warnings.empty());
  CHECK(clean.used.speed_mbps == 25000);
}

TEST_CASE("properties: what NCCL would not use is an error") {
  device_properties dev;
  dev.name = "nic";
  dev.ptr_support = NCCL_PTR_CUDA;
  dev.speed_mbps = 100000;
  dev.max_comms = 0;
  dev.max_recvs = 1;
  dev.device_type = NCCL_NET_DEVICE_UNPACK;
  dev.device_version = 6;
  auto check = check_properties(dev);
  CHECK_FALSE(check.usable());
  REQUIRE(check.errors.size() == 3);
  CHECK(has(check.errors[0], "NCCL_PTR_HOST"));
  CHECK(has(check.errors[1], "maxComms 0"));
  CHECK(has(check.errors[2], "UNPACK device version 6"));
}

TEST_CASE("the loader keeps NCCL's defaults; a channel refuses an unusable "
          "device") {
  auto speed0 = plugin::load(fixtures + "/libnccl-net-quirk-speed0.so");
  CHECK(speed0->device(0).speed_mbps == nccl_default_speed_mbps);
  CHECK(speed0->device(0).max_recvs == 1);
  CHECK(speed0->properties_check(0).reported.speed_mbps == 0);
  CHECK(speed0->usable_device(0).speed_mbps == nccl_default_speed_mbps);
  channel_listener fine(speed0, 0, channel_options{});
  CHECK(fine.handles().size() == 1);

  auto nocomms = plugin::load(fixtures + "/libnccl-net-quirk-nocomms.so");
  CHECK(nocomms->device(0).max_comms == 0);
  std::string error;
  try {
    nocomms->usable_device(0);
  } catch (const transport_error& e) {
    error = e.what();
  }
  CHECK(has(error, "device 0 (fake0) is unusable: maxComms 0"));
  CHECK_THROWS_AS(channel_listener(nocomms, 0, channel_options{}),
                  transport_error);
}
