// One channel striped over several plugin devices (NICs): kvsock with two
// loopback addresses as two devices. Its own executable: the plugin is loaded
// once per process, with its device list as the environment says then.
#include <arpa/inet.h>
#include <chrono>
#include <cstring>
#include <netinet/in.h>
#include <vector>

#include <doctest/doctest.h>

#include "channel_pair.hpp"
#include "fake_plugin.hpp"
#include "kvferry/transport/channel.hpp"
#include "scoped_env.hpp"

using namespace kvferry::transport;
using namespace std::chrono_literals;

namespace {

// The address a kvsock listen handle names (wire.hpp: Handle::address at 8).
in_addr_t handle_address(const net_handle& handle) {
  sockaddr_in address{};
  std::memcpy(&address, handle.data() + 8, sizeof address);
  return address.sin_addr.s_addr;
}

} // namespace

TEST_CASE("comm k of a channel is on device k mod n; a transfer striped over "
          "two devices arrives whole") {
  kvferry::test::scoped_env two_nics("KVSOCK_IFADDR", "127.0.0.1,127.0.0.2");
  auto net = plugin::load("kvsock"); // found on KVFERRY_PLUGIN_PATH
  REQUIRE(net->device_count() == 2);

  channel_options options;
  options.comms = 4;
  options.chunk_bytes = 64 << 10;
  options.peer = "two-nics";
  {
    channel_listener listener(net, std::vector<int>{0, 1}, options);
    REQUIRE(listener.handles().size() == 4);
    for (size_t k = 0; k < 4; ++k) {
      CAPTURE(k);
      CHECK(handle_address(listener.handles()[k]) ==
            htonl(INADDR_LOOPBACK + static_cast<in_addr_t>(k % 2)));
    }
  }

  auto [tx, rx] =
      kvferry::test::connect_channel_pair(net, options, options, 10s, {0, 1});
  const size_t bytes = (2 << 20) + 333;
  auto source = kvferry::test::pattern(bytes, 9);
  std::vector<char> sink(bytes, 0);
  auto send_mr = tx.register_memory(source.data(), bytes);
  auto recv_mr = rx.register_memory(sink.data(), bytes);
  rx.post_recv(sink.data(), bytes, recv_mr);
  tx.post_send(source.data(), bytes, send_mr);
  size_t done = 0;
  auto deadline = std::chrono::steady_clock::now() + 20s;
  while (done < 2 && std::chrono::steady_clock::now() < deadline) {
    auto check = [&](const completion& c) {
      CHECK(c.ok);
      CHECK(c.bytes == bytes);
      ++done;
    };
    tx.poll(check);
    rx.poll(check);
  }
  REQUIRE(done == 2);
  CHECK(sink == source);
}

TEST_CASE("a channel refuses no devices and an index the plugin lacks") {
  auto net = plugin::load("kvsock");
  channel_options options;
  options.peer = "nowhere";
  CHECK_THROWS_WITH_AS(channel_listener(net, std::vector<int>{}, options),
                       doctest::Contains("no plugin device given"),
                       transport_error);
  CHECK_THROWS_AS(channel_listener(net, std::vector<int>{0, 7}, options),
                  transport_error);
}
