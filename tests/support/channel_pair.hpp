// A send channel and a receive channel of one plugin connected to each other
// in this process, for the transport tests.
#pragma once

#include <chrono>
#include <memory>
#include <vector>

#include <doctest/doctest.h>

#include "kvferry/transport/channel.hpp"

namespace kvferry::test {

struct channel_pair {
  transport::send_channel tx;
  transport::recv_channel rx;
};

/// Listens and connects on `devices` of `net` (both sides), polling both
/// sides (connect and accept never block) until both are up; fails the test
/// after `timeout`.
inline channel_pair
connect_channel_pair(std::shared_ptr<transport::plugin> net,
                     const transport::channel_options& tx_options,
                     const transport::channel_options& rx_options,
                     std::chrono::milliseconds timeout,
                     const std::vector<int>& devices = {0}) {
  transport::channel_listener listener(net, devices, rx_options);
  transport::channel_connector connector(net, devices, listener.handles(),
                                         tx_options);
  bool sent = false, accepted = false;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!(sent && accepted) && std::chrono::steady_clock::now() < deadline) {
    if (!sent)
      sent = connector.try_connect();
    if (!accepted)
      accepted = listener.try_accept();
  }
  REQUIRE(sent);
  REQUIRE(accepted);
  return {connector.take(), listener.take()};
}

/// For options the channel must refuse once connected: polls connect and
/// accept (100 rounds at most, done or not), then checks that taking the
/// send channel throws.
inline void
check_send_channel_refused(std::shared_ptr<transport::plugin> net,
                           const transport::channel_options& options) {
  transport::channel_listener listener(net, 0, options);
  transport::channel_connector connector(net, 0, listener.handles(), options);
  for (int i = 0; i < 100 && !(connector.try_connect() & listener.try_accept());
       ++i) {
  }
  CHECK_THROWS_AS(connector.take(), transport::transport_error);
}

} // namespace kvferry::test
