// kvferry's error category: codes, context and rendering.
#include <chrono>
#include <set>
#include <string>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/io/middleman.hpp>
#include <doctest/doctest.h>

#include "actor_fixture.hpp"
#include "kvferry/actors/directory.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/logging.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "kvferry/runtime/tls.hpp"
#include "kvferry/runtime/type_ids.hpp"
#include "kvferry/runtime/version.hpp"

using namespace kvferry;

TEST_CASE("errors carry their code and context") {
  auto err = make_error(ec::unauthorized, "register 'prefill-0': wrong secret");
  CHECK(is(err, ec::unauthorized));
  CHECK(!is(err, ec::timeout));
  CHECK(err.category() == ec_category);
  CHECK(render(err) ==
        "kvferry.unauthorized: register 'prefill-0': wrong secret");
  CHECK(render(make_error(ec::timeout)) == "kvferry.timeout");
  CHECK(render(caf::error{}) == "no error");
}

TEST_CASE("CAF's own errors render through CAF") {
  auto text = render(caf::make_error(caf::sec::request_timeout));
  CHECK(text.find("request_timeout") != std::string::npos);
}

TEST_CASE("every code has a name") {
  for (uint8_t code = 0; code <= static_cast<uint8_t>(ec::internal); ++code)
    CHECK(std::string{to_string(static_cast<ec>(code))} != "unknown");
}

TEST_CASE("a status is a code and a reason, rendered as errors are") {
  status ok;
  CHECK(ok.ok());
  CHECK(ok.message() == "ok");
  status bad{ec::peer_down, "worker 'decode-0' is down"};
  CHECK(!bad.ok());
  CHECK(bad.code() == ec::peer_down);
  CHECK(bad.message() ==
        render(make_error(ec::peer_down, "worker 'decode-0' is down")));
}

TEST_CASE("a result holds a value or the status that says why not") {
  result<int> good{7};
  REQUIRE(good.ok());
  CHECK(*good == 7);
  CHECK(good.error().ok());
  result<int> bad{status{ec::timeout, "no reply from 'decode-0' in 2 s"}};
  CHECK(!bad.ok());
  CHECK(bad.error().code() == ec::timeout);
  CHECK_THROWS_WITH_AS(bad.value(),
                       "kvferry::result::value() of a failure: "
                       "kvferry.timeout: no reply from 'decode-0' in 2 s",
                       std::logic_error);
  result<int> confused{status{}};
  CHECK(confused.error().code() == ec::internal);
}

TEST_CASE("caf errors become statuses") {
  CHECK(to_status(caf::error{}).ok());
  auto mine = to_status(make_error(ec::mismatch, "geometry of 'decode-1'"));
  CHECK(mine.code() == ec::mismatch);
  CHECK(mine.reason() == "geometry of 'decode-1'");
  CHECK(to_status(caf::make_error(caf::sec::request_timeout)).code() ==
        ec::timeout);
  CHECK(to_status(caf::make_error(caf::sec::request_receiver_down)).code() ==
        ec::peer_down);
  auto other = to_status(caf::make_error(caf::sec::unexpected_message));
  CHECK(other.code() == ec::internal);
  CHECK(other.reason().find("unexpected_message") != std::string::npos);
}

TEST_CASE_FIXTURE(test::actor_fixture,
                  "the actor system renders kvferry errors as text") {
  auto err = make_error(ec::peer_down, "worker 'decode-0' is down");
  CHECK(sys.render(err) == "kvferry.peer_down: worker 'decode-0' is down");
}

TEST_CASE_FIXTURE(test::actor_fixture, "message types are registered by name") {
  CHECK(sys.types().portable_name(0, &typeid(worker_info)) ==
        "kvferry::worker_info");
  CHECK(sys.types().portable_name(0, &typeid(lease)) == "kvferry::lease");
}

#if __has_include("kvferry/runtime/protocol.hpp")
#include "kvferry/runtime/protocol.hpp"
TEST_CASE_FIXTURE(test::actor_fixture, "the protocol block is registered too") {
  CHECK(sys.types().portable_name(0, &typeid(proto::extent)) ==
        "kvferry::proto::extent");
}
#endif

TEST_CASE("logging levels") {
  CHECK(!runtime::setup_logging("debug", ""));
  auto err = runtime::setup_logging("loud", "");
  REQUIRE(err);
  CHECK(is(err, ec::invalid_argument));
  CHECK(render(err).find("loud") != std::string::npos);
  err = runtime::setup_logging("info", "/dev/null/x.log");
  REQUIRE(err);
  CHECK(is(err, ec::config_error));
  CHECK(!runtime::setup_logging("warn", ""));
}

TEST_CASE("role names") {
  worker_role role{};
  CHECK(parse_role("decode", role));
  CHECK(role == worker_role::decode);
  CHECK(!parse_role("router", role));
  CHECK(std::string{to_string(worker_role::prefill)} == "prefill");
  CHECK(local_host_id().find('/') != std::string::npos);
}

namespace {

// Connects `from` to what `to` published at `port` on loopback, as every
// kvferry process meets another (runtime::control_middleman).
caf::error connect_error(caf::actor_system& from, std::uint16_t port) {
  caf::scoped_actor self{from};
  caf::error out;
  self->request(runtime::control_middleman(from), std::chrono::seconds(10),
                caf::connect_atom::value, std::string{"127.0.0.1"}, port)
      .receive(
          [](caf::node_id&, caf::strong_actor_ptr&, std::set<std::string>&) {},
          [&](caf::error& err) { out = std::move(err); });
  return out;
}

} // namespace

TEST_CASE("a peer of another kvferry build is refused at connect, by name") {
  runtime::system_config server_cfg;
  caf::actor_system server{server_cfg};
  // Any published actor will do: a directory, as `kvferry directory` has it.
  auto dir = spawn_directory(server, directory_options{"secret"});
  auto port = runtime::publish_control(dir, 0, "127.0.0.1");
  REQUIRE(port);
  SUBCASE("the same build connects") {
    runtime::system_config cfg;
    caf::actor_system client{cfg};
    auto err = connect_error(client, *port);
    CHECK_MESSAGE(!err, render(err));
  }
  SUBCASE("another build's protocol headers: refused, and said so") {
    runtime::system_config cfg;
    cfg.set("middleman.app-identifiers",
            std::vector<std::string>{"kvferry-wire-000000000000"});
    caf::actor_system client{cfg};
    auto err = connect_error(client, *port);
    REQUIRE(err == caf::sec::incompatible_application_ids);
    auto st = to_status(err);
    CHECK(st.code() == ec::mismatch);
    CHECK(st.message().find("same kvferry build") != std::string::npos);
    CHECK(st.message().find(wire_id) != std::string::npos);
  }
  caf::anon_send_exit(dir, caf::exit_reason::user_shutdown);
}
