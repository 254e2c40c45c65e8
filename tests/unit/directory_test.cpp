// The directory actor under CAF's deterministic test coordinator: every
// request gets a reply or an error, joins and leaves reach watchers, leases
// expire in virtual time, dead workers are dropped.
#include <chrono>
#include <string>

#include <doctest/doctest.h>

#include "actor_fixture.hpp"
#include "idle_worker.hpp"
#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/directory.hpp"

using namespace kvferry;
using namespace std::chrono_literals;

namespace {

constexpr auto secret = "s3cret";
constexpr auto lease_time = std::chrono::seconds(10);

using kvferry::test::idle_worker;

caf::behavior silent_watcher(caf::event_based_actor*, int) {
  return {[](joined_atom, const worker_info&) {},
          [](left_atom, const std::string&, const caf::error&) {}};
}

struct directory_fixture : test::actor_fixture {
  directory_fixture() {
    directory_options options;
    options.secret = secret;
    options.lease = lease_time;
    // These tests jump virtual time by seconds at once, which to the
    // directory's stall watchdog looks like its own pause; the watchdog is
    // tested in membership_test.cpp.
    options.stall_tolerance = caf::timespan{0};
    dir = spawn_directory(sys, options);
    run();
  }

  ~directory_fixture() override {
    caf::anon_send_exit(dir, caf::exit_reason::user_shutdown);
    run();
  }

  worker_info make_worker(std::string name, worker_role role) {
    worker_info info;
    info.name = std::move(name);
    info.role = role;
    info.host = "host-a";
    info.host_id = "host-a/boot";
    info.plugin = "kvsock";
    info.listen_handles.push_back(std::vector<char>(listen_handle_size, 'h'));
    info.regions.push_back(
        region_info{1, 0x1000, 1 << 20, memory_kind::host, -1, {}});
    info.app = sys.spawn(idle_worker, 0);
    info.attributes["model"] = "llama-3-8b";
    return info;
  }

  caf::expected<lease> enroll(const worker_info& info,
                              std::string key = secret) {
    return request<lease>(dir, register_atom::value, info, std::move(key));
  }

  // The (joined|left, name) pairs pushed to `collector` so far.
  std::vector<std::string> events() {
    std::vector<std::string> result;
    for (auto& msg : collected()) {
      if (msg.match_elements<joined_atom, worker_info>())
        result.push_back("joined " + msg.get_as<worker_info>(1).name);
      else if (msg.match_elements<left_atom, std::string, caf::error>())
        result.push_back("left " + msg.get_as<std::string>(1) + " (" +
                         render(msg.get_as<caf::error>(2)) + ")");
      else
        result.push_back("other " + caf::to_string(msg));
    }
    return result;
  }

  directory_actor dir;
};

} // namespace

TEST_CASE_FIXTURE(directory_fixture, "register, lookup and list") {
  auto prefill = make_worker("prefill-0", worker_role::prefill);
  auto decode = make_worker("decode-0", worker_role::decode);
  auto l1 = enroll(prefill);
  REQUIRE(l1);
  CHECK(l1->duration == lease_time);
  CHECK(l1->token != 0);
  REQUIRE(enroll(decode));

  auto found =
      request<worker_info>(dir, lookup_atom::value, std::string{"prefill-0"});
  REQUIRE(found);
  CHECK(found->name == "prefill-0");
  CHECK(found->role == worker_role::prefill);
  CHECK(found->listen_handles.size() == 1);
  CHECK(found->regions.at(0).size == (1u << 20));
  CHECK(found->app == prefill.app);
  CHECK(found->attributes.at("model") == "llama-3-8b");

  auto all = request<std::vector<worker_info>>(dir, list_atom::value);
  REQUIRE(all);
  REQUIRE(all->size() == 2);
  CHECK(all->at(0).name == "decode-0"); // sorted by name
  CHECK(all->at(1).name == "prefill-0");

  auto decoders = request<std::vector<worker_info>>(dir, list_atom::value,
                                                    worker_role::decode);
  REQUIRE(decoders);
  REQUIRE(decoders->size() == 1);
  CHECK(decoders->at(0).name == "decode-0");
}

TEST_CASE_FIXTURE(directory_fixture, "every request is answered") {
  SUBCASE("lookup of an unknown name") {
    auto found =
        request<worker_info>(dir, lookup_atom::value, std::string{"nobody"});
    REQUIRE(!found);
    CHECK(is(found.error(), ec::not_found));
    CHECK(render(found.error()).find("nobody") != std::string::npos);
  }
  SUBCASE("renew and leave of an unknown name or with a wrong token") {
    auto renewed = request<caf::ok_atom>(dir, renew_atom::value,
                                         std::string{"nobody"}, uint64_t{1});
    REQUIRE(!renewed);
    CHECK(is(renewed.error(), ec::not_found));
    auto w = make_worker("w", worker_role::decode);
    auto l = enroll(w);
    REQUIRE(l);
    auto left = request<caf::ok_atom>(dir, leave_atom::value, std::string{"w"},
                                      l->token + 1);
    REQUIRE(!left);
    CHECK(is(left.error(), ec::unauthorized));
    CHECK(request<caf::ok_atom>(dir, renew_atom::value, std::string{"w"},
                                l->token));
  }
  SUBCASE("malformed registrations") {
    auto w = make_worker("", worker_role::decode);
    auto l = enroll(w);
    REQUIRE(!l);
    CHECK(is(l.error(), ec::invalid_argument));
    auto bad = make_worker("bad-handle", worker_role::decode);
    bad.listen_handles.at(0).resize(7);
    l = enroll(bad);
    REQUIRE(!l);
    CHECK(is(l.error(), ec::invalid_argument));
    CHECK(render(l.error()).find("bad-handle") != std::string::npos);
  }
  SUBCASE("watch with a null actor") {
    auto r =
        request<std::vector<worker_info>>(dir, watch_atom::value, caf::actor{});
    REQUIRE(!r);
    CHECK(is(r.error(), ec::invalid_argument));
  }
}

TEST_CASE_FIXTURE(directory_fixture,
                  "a wrong secret is rejected, naming the worker") {
  auto w = make_worker("prefill-7", worker_role::prefill);
  auto l = enroll(w, "guess");
  REQUIRE(!l);
  CHECK(is(l.error(), ec::unauthorized));
  CHECK(render(l.error()).find("prefill-7") != std::string::npos);
  CHECK(
      !request<worker_info>(dir, lookup_atom::value, std::string{"prefill-7"}));
}

TEST_CASE_FIXTURE(directory_fixture, "duplicate names") {
  auto first = make_worker("decode-0", worker_role::decode);
  REQUIRE(enroll(first));
  SUBCASE("another live worker may not take the name") {
    auto second = make_worker("decode-0", worker_role::decode);
    auto l = enroll(second);
    REQUIRE(!l);
    CHECK(is(l.error(), ec::duplicate));
  }
  SUBCASE("the same worker registering again updates its entry") {
    first.regions.push_back(
        region_info{2, 0x9000, 4096, memory_kind::host, -1, {}});
    REQUIRE(enroll(first));
    auto found =
        request<worker_info>(dir, lookup_atom::value, std::string{"decode-0"});
    REQUIRE(found);
    CHECK(found->regions.size() == 2);
  }
  SUBCASE("a new worker may take the name once the old one died") {
    caf::anon_send_exit(first.app, caf::exit_reason::kill);
    run();
    auto second = make_worker("decode-0", worker_role::decode);
    CHECK(enroll(second));
  }
}

TEST_CASE_FIXTURE(directory_fixture,
                  "watchers get the members, then joins and leaves") {
  auto a = make_worker("a", worker_role::prefill);
  auto la = enroll(a);
  REQUIRE(la);
  auto current =
      request<std::vector<worker_info>>(dir, watch_atom::value, collector);
  REQUIRE(current);
  REQUIRE(current->size() == 1);
  CHECK(current->at(0).name == "a");

  auto b = make_worker("b", worker_role::decode);
  REQUIRE(enroll(b));
  REQUIRE(request<caf::ok_atom>(dir, leave_atom::value, std::string{"a"},
                                la->token));
  auto seen = events();
  REQUIRE(seen.size() == 2);
  CHECK(seen[0] == "joined b");
  CHECK(seen[1] == "left a (no error)");

  REQUIRE(request<caf::ok_atom>(dir, unwatch_atom::value, collector));
  REQUIRE(enroll(make_worker("c", worker_role::decode)));
  CHECK(events().empty());
}

TEST_CASE_FIXTURE(directory_fixture,
                  "a worker whose actor dies is dropped and watchers told") {
  auto w = make_worker("decode-1", worker_role::decode);
  w.transfer = sys.spawn(idle_worker, 0);
  REQUIRE(enroll(w));
  REQUIRE(request<std::vector<worker_info>>(dir, watch_atom::value, collector));
  SUBCASE("its app actor") {
    caf::anon_send_exit(w.app, caf::exit_reason::kill);
  }
  SUBCASE("its transfer actor") {
    caf::anon_send_exit(w.transfer, caf::exit_reason::kill);
  }
  run();
  auto seen = events();
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].rfind("left decode-1 (kvferry.peer_down", 0) == 0);
  CHECK(
      !request<worker_info>(dir, lookup_atom::value, std::string{"decode-1"}));
}

TEST_CASE_FIXTURE(directory_fixture, "leases expire unless renewed") {
  auto w = make_worker("prefill-0", worker_role::prefill);
  auto l = enroll(w);
  REQUIRE(l);
  REQUIRE(request<std::vector<worker_info>>(dir, watch_atom::value, collector));
  // Renewing every 6 s keeps a 10 s lease alive for as long as we like.
  for (int i = 0; i < 5; ++i) {
    advance_time(6s);
    REQUIRE(request<caf::ok_atom>(dir, renew_atom::value,
                                  std::string{"prefill-0"}, l->token));
  }
  CHECK(events().empty());
  CHECK(
      request<worker_info>(dir, lookup_atom::value, std::string{"prefill-0"}));
  // Silence: dropped once the lease runs out, not before.
  advance_time(9s);
  CHECK(events().empty());
  advance_time(2s);
  auto seen = events();
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].rfind("left prefill-0 (kvferry.lease_expired", 0) == 0);
  auto found =
      request<worker_info>(dir, lookup_atom::value, std::string{"prefill-0"});
  REQUIRE(!found);
  CHECK(is(found.error(), ec::not_found));
}

TEST_CASE_FIXTURE(directory_fixture, "a dead watcher is forgotten") {
  auto watcher = sys.spawn(silent_watcher, 0);
  const caf::actor_addr address = watcher.address(); // a weak reference
  REQUIRE(request<std::vector<worker_info>>(dir, watch_atom::value, watcher));
  watcher = nullptr;
  // Alive and watched, it is held by the directory's watcher list.
  REQUIRE(caf::actor_cast<caf::actor>(address) != nullptr);
  caf::anon_send_exit(address, caf::exit_reason::kill);
  run();
  // Forgotten: the directory let go of its handle when the down message came
  // (the list was the last strong reference, so nothing can reach the actor
  // any more), and a later join is pushed to nobody.
  CHECK(caf::actor_cast<caf::actor>(address) == nullptr);
  CHECK(enroll(make_worker("x", worker_role::decode)));
}
