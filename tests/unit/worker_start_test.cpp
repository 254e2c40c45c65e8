// start_worker (actors/worker.hpp): a worker assembled in the caller's own
// actor system registers with a directory and leaves it on stop; what
// cannot start is an error value naming the worker and the cause.
#include <chrono>
#include <string>

#include <caf/all.hpp>
#include <doctest/doctest.h>

#include "kvferry/actors/directory.hpp"
#include "kvferry/actors/worker.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "kvferry/runtime/tls.hpp"
#include "why.hpp"

using namespace kvferry;
using namespace std::chrono_literals;

namespace {

worker_options small_worker(const std::string& name, std::uint16_t port) {
  worker_options o;
  o.name = name;
  o.role = worker_role::decode;
  o.directory_host = "127.0.0.1";
  o.directory_port = port;
  o.bind = "127.0.0.1";
  o.plugin = "kvsock"; // KVFERRY_PLUGIN_PATH
  o.pool_blocks = 16;
  o.geometry.layers = 2;
  o.geometry.kv_heads = 2;
  o.geometry.head_dim = 8;
  o.geometry.block_tokens = 4;
  return o;
}

} // namespace

TEST_CASE("start_worker: a plugin that does not load is an error naming the "
          "worker") {
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  auto opts = small_worker("decode-7", 1);
  opts.plugin = "/nonexistent/libnccl-net-nothing.so";
  auto w = start_worker(sys, opts);
  REQUIRE_FALSE(w);
  CHECK(is(w.error(), ec::plugin_error));
  auto text = render(w.error());
  CHECK(text.find("worker decode-7") != std::string::npos);
  CHECK(text.find("libnccl-net-nothing") != std::string::npos);
}

TEST_CASE("start_worker: a device the plugin lacks is an error naming the "
          "worker and the devices there are") {
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  auto opts = small_worker("decode-8", 1);
  opts.devices = {"eth-nonexistent"};
  auto w = start_worker(sys, opts);
  REQUIRE_FALSE(w);
  CHECK(is(w.error(), ec::plugin_error));
  auto text = render(w.error());
  CHECK(text.find("worker decode-8") != std::string::npos);
  CHECK(text.find("'eth-nonexistent' is no device of the plugin") !=
        std::string::npos);
  CHECK(text.find("it has 0 '") != std::string::npos);
}

TEST_CASE("start_worker: the worker registers with the directory and leaves "
          "on stop") {
  runtime::system_config cfg;
  cfg.set("middleman.enable-automatic-connections", false);
  caf::actor_system sys{cfg};
  auto dir = spawn_directory(sys, directory_options{});
  auto port = runtime::publish_control(dir, 0, "127.0.0.1");
  REQUIRE_MESSAGE(port, test::why(port));
  auto w = start_worker(sys, small_worker("decode-0", *port));
  REQUIRE_MESSAGE(w, test::why(w));
  auto err = w->await_registration(20s);
  REQUIRE_MESSAGE(!err, render(err));
  CHECK(w->info.attributes.at("memory") == "host memory");
  caf::scoped_actor self{sys};
  bool listed = false;
  self->request(dir, 5s, lookup_atom::value, std::string{"decode-0"})
      .receive([&](const worker_info& info) { listed = info.app == w->app; },
               [](const caf::error&) {});
  CHECK(listed);
  w->stop();
  caf::error after_stop;
  self->request(dir, 5s, lookup_atom::value, std::string{"decode-0"})
      .receive([](const worker_info&) {},
               [&](const caf::error& e) { after_stop = e; });
  CHECK(is(after_stop, ec::not_found));
  self->send_exit(dir, caf::exit_reason::user_shutdown);
}
