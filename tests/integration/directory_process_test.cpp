// `kvferry directory --port 0` as a real process; clients in this process
// register, look up and watch through the middleman (TCP), and learn of a
// worker whose process (here: actor system) goes away. Every wait has a
// deadline; the child is always reaped.
#include <chrono>
#include <optional>
#include <signal.h>
#include <string>
#include <thread>

#include <caf/all.hpp>
#include <caf/io/middleman.hpp>
#include <doctest/doctest.h>

#include "idle_worker.hpp"
#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/directory.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "kvferry_processes.hpp"
#include "test_pki.hpp"
#include "why.hpp"

using namespace kvferry;
using namespace std::chrono_literals;

namespace {

constexpr auto secret = "integration-secret";

using kvferry::test::idle_worker;

worker_info make_worker(caf::actor_system& sys, std::string name) {
  worker_info info;
  info.name = std::move(name);
  info.role = worker_role::decode;
  info.host = local_hostname();
  info.host_id = local_host_id();
  info.plugin = "kvsock";
  info.listen_handles.push_back(std::vector<char>(listen_handle_size, 'x'));
  info.app = sys.spawn(idle_worker, 0);
  return info;
}

// A client presenting the test deployment's "client" certificate.
struct client_config : runtime::system_config {
  explicit client_config(const test::test_pki& pki) {
    runtime::tls_options tls;
    tls.dir = pki.dir;
    auto err = secure(tls, "client");
    REQUIRE_MESSAGE(!err, render(err));
  }
};

template<class T, class... Ts>
caf::expected<T> ask(caf::actor_system& sys, const directory_actor& dir,
                     Ts&&... xs) {
  caf::scoped_actor self{sys};
  std::optional<caf::expected<T>> result;
  self->request(dir, 5s, std::forward<Ts>(xs)...)
      .receive([&](T& value) { result = std::move(value); },
               [&](caf::error& err) { result = std::move(err); });
  return std::move(*result);
}

// Polls a lookup until the worker is gone (not_found) or `timeout` passes.
bool gone_within(caf::actor_system& sys, const directory_actor& dir,
                 const std::string& name, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    auto found = ask<worker_info>(sys, dir, lookup_atom::value, name);
    if (!found && is(found.error(), ec::not_found))
      return true;
    std::this_thread::sleep_for(50ms);
  }
  return false;
}

} // namespace

TEST_CASE("kvferry directory serves remote clients through the middleman") {
  test::test_pki pki{{"directory"}}; // the child finds it in $KVFERRY_TLS_DIR
  test::child proc{{"directory", "--bind", "127.0.0.1", "--port", "0",
                    "--secret", secret, "--lease-ms", "10000", "--log-level",
                    "warn"}};
  auto address = test::directory_address(proc); // within 20 s
  auto port =
      static_cast<uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));

  client_config cfg{pki};
  caf::actor_system sys{cfg};
  auto dir = connect_directory(sys, "127.0.0.1", port, 10s);
  REQUIRE_MESSAGE(dir, test::why(dir));

  auto w = make_worker(sys, "decode-0");
  auto granted =
      ask<lease>(sys, *dir, register_atom::value, w, std::string{secret});
  REQUIRE_MESSAGE(granted, test::why(granted));
  CHECK(granted->duration == std::chrono::milliseconds(10000));

  auto found =
      ask<worker_info>(sys, *dir, lookup_atom::value, std::string{"decode-0"});
  REQUIRE_MESSAGE(found, test::why(found));
  CHECK(found->host_id == local_host_id());
  CHECK(found->listen_handles.at(0).size() == listen_handle_size);
  CHECK(found->app == w.app); // the handle survives the round trip

  auto intruder = make_worker(sys, "decode-9");
  auto rejected = ask<lease>(sys, *dir, register_atom::value, intruder,
                             std::string{"wrong"});
  REQUIRE(!rejected);
  CHECK(is(rejected.error(), ec::unauthorized));
  CHECK(render(rejected.error()).find("decode-9") != std::string::npos);

  // Death must be noticed well before the 10 s lease could run out (the
  // bound is the behaviour; 6 s leaves room for a loaded, sanitized run).
  SUBCASE("a worker whose actor dies is dropped") {
    caf::anon_send_exit(w.app, caf::exit_reason::kill);
    CHECK(gone_within(sys, *dir, "decode-0", 6s));
  }
  SUBCASE("a worker whose process goes away is dropped") {
    {
      client_config other_cfg{pki};
      caf::actor_system other{other_cfg};
      auto other_dir = connect_directory(other, "127.0.0.1", port, 10s);
      REQUIRE(other_dir);
      auto v = make_worker(other, "prefill-0");
      REQUIRE(ask<lease>(other, *other_dir, register_atom::value, v,
                         std::string{secret}));
      CHECK(ask<worker_info>(sys, *dir, lookup_atom::value,
                             std::string{"prefill-0"}));
      caf::anon_send_exit(v.app, caf::exit_reason::user_shutdown);
    } // `other` shuts down: its connection closes
    CHECK(gone_within(sys, *dir, "prefill-0", 6s));
  }
  SUBCASE("an unrenewed lease expires") {
    auto start = std::chrono::steady_clock::now();
    CHECK(gone_within(sys, *dir, "decode-0", 30s));
    CHECK(std::chrono::steady_clock::now() - start > 6s);
  }

  caf::anon_send_exit(w.app, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(intruder.app, caf::exit_reason::user_shutdown);
  kill(proc.pid, SIGTERM);
  CHECK(proc.wait_exit(10s) == 0);
}

TEST_CASE("connecting to a port nobody listens on fails in time, naming it") {
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  auto start = std::chrono::steady_clock::now();
  auto dir = connect_directory(sys, "127.0.0.1", 1, 500ms);
  REQUIRE(!dir);
  CHECK(is(dir.error(), ec::unreachable));
  CHECK(render(dir.error()).find("127.0.0.1:1") != std::string::npos);
  CHECK(std::chrono::steady_clock::now() - start < 5s);
}
