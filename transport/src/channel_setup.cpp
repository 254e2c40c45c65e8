// Opening a channel's comms: the listener (receiving side: listen, then
// accept until every comm is there) and the connector (sending side:
// connect until every comm is there). v7's connect and accept never block:
// they return a NULL comm until the connection is ready.
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "channel_state.hpp"

namespace kvferry::transport {
namespace detail {
namespace {

// Drives a non-blocking step function until it reports completion or the
// deadline passes; backs off from spinning to 1 ms sleeps.
template<class Step>
bool drive_until(std::chrono::milliseconds timeout, Step&& step) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (int round = 0;; ++round) {
    if (step())
      return true;
    if (std::chrono::steady_clock::now() >= deadline)
      return false;
    if (round > 100)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    else
      std::this_thread::yield();
  }
}

} // namespace
} // namespace detail

// ---- listener (receiving side) ----------------------------------------------

struct channel_listener::impl {
  std::shared_ptr<plugin> net;
  std::vector<int> devs; // comm i on devs[i % devs.size()]
  channel_options options;
  std::vector<net_handle> handles;
  std::vector<void*> listen_comms, recv_comms;
  std::vector<std::unique_ptr<ncclNetDeviceHandle_v7_t>> device_storage;
  std::vector<ncclNetDeviceHandle_v7_t*> device_ptrs;

  int dev_of(size_t i) const { return devs[i % devs.size()]; }

  ~impl() {
    if (!net) // the constructor threw before anything was opened
      return;
    auto& table = net->net();
    for (auto* comm : recv_comms)
      if (comm)
        table.closeRecv(comm);
    close_listens();
  }
  void close_listens() {
    auto& table = net->net();
    for (auto*& comm : listen_comms)
      if (comm) {
        if (auto rc = table.closeListen(comm); rc != ncclSuccess)
          spdlog::warn("plugin {}: closeListen(peer {}) failed: {}",
                       net->name(), options.peer, result_name(rc));
        comm = nullptr;
      }
  }
};

channel_listener::channel_listener(std::shared_ptr<plugin> net, int dev,
                                   channel_options options)
    : channel_listener(std::move(net), std::vector<int>{dev},
                       std::move(options)) {
}

channel_listener::channel_listener(std::shared_ptr<plugin> net,
                                   std::vector<int> devices,
                                   channel_options options)
    : impl_(std::make_unique<impl>()) {
  if (!net)
    throw transport_error("channel_listener: no plugin given");
  devices = detail::check_devices(*net, std::move(devices), options.peer);
  if (options.comms < 1)
    throw transport_error(
        fmt::format("channel to {}: comms must be >= 1", options.peer));
  impl_->net = net;
  impl_->devs = std::move(devices);
  impl_->options = options;
  size_t n = static_cast<size_t>(options.comms);
  impl_->handles.assign(n, net_handle{});
  impl_->listen_comms.assign(n, nullptr);
  impl_->recv_comms.assign(n, nullptr);
  for (size_t i = 0; i < n; ++i) {
    auto& props = net->device(impl_->dev_of(i));
    auto storage = std::make_unique<ncclNetDeviceHandle_v7_t>();
    storage->netDeviceType = props.device_type;
    storage->netDeviceVersion = props.device_version;
    impl_->device_ptrs.push_back(props.is_unpack() ? storage.get() : nullptr);
    impl_->device_storage.push_back(std::move(storage));
  }
  auto& table = net->net();
  for (size_t i = 0; i < n; ++i) {
    int dev = impl_->dev_of(i);
    net->check(
        table.listen(dev, impl_->handles[i].data(), &impl_->listen_comms[i]),
        "listen", fmt::format("dev {}, comm {} for {}", dev, i, options.peer));
    if (!impl_->listen_comms[i])
      throw transport_error(
          fmt::format("plugin {}: listen(dev {}) returned success but no "
                      "listen comm",
                      net->name(), dev));
  }
}

channel_listener::~channel_listener() = default;
channel_listener::channel_listener(channel_listener&&) noexcept = default;

const std::vector<net_handle>& channel_listener::handles() const noexcept {
  return impl_->handles;
}

bool channel_listener::try_accept() {
  auto& table = impl_->net->net();
  bool all = true;
  for (size_t i = 0; i < impl_->recv_comms.size(); ++i) {
    if (impl_->recv_comms[i])
      continue;
    impl_->net->check(
        table.accept(impl_->listen_comms[i], &impl_->recv_comms[i],
                     &impl_->device_ptrs[i]),
        "accept", fmt::format("comm {} from {}", i, impl_->options.peer));
    all = all && impl_->recv_comms[i];
  }
  return all;
}

recv_channel channel_listener::take() {
  for (auto* comm : impl_->recv_comms)
    if (!comm)
      throw transport_error(
          fmt::format("channel from {}: take() before every comm was accepted",
                      impl_->options.peer));
  auto state =
      detail::make_state(impl_->net, impl_->devs, detail::direction::recv,
                         impl_->options, impl_->recv_comms.size());
  for (size_t i = 0; i < impl_->recv_comms.size(); ++i) {
    state->comms[i].comm = std::exchange(impl_->recv_comms[i], nullptr);
    state->comms[i].device = impl_->device_ptrs[i];
    state->comms[i].device_storage = std::move(impl_->device_storage[i]);
  }
  impl_->close_listens();
  detail::tell_caller_polls(*state);
  return recv_channel(std::move(state));
}

recv_channel channel_listener::accept(std::chrono::milliseconds timeout) {
  if (!detail::drive_until(timeout, [&] { return try_accept(); })) {
    size_t pending = 0;
    for (auto* comm : impl_->recv_comms)
      pending += comm == nullptr;
    throw timeout_error(fmt::format(
        "plugin {}: accept from {} on dev {}: {} of {} comms not accepted "
        "within {:.1f} s",
        impl_->net->name(), impl_->options.peer, fmt::join(impl_->devs, ","),
        pending, impl_->recv_comms.size(), timeout.count() / 1000.0));
  }
  return take();
}

// ---- connector (sending side) -----------------------------------------------

struct channel_connector::impl {
  std::shared_ptr<plugin> net;
  std::vector<int> devs; // comm i on devs[i % devs.size()]
  channel_options options;
  std::vector<net_handle>
      handles; // the plugin may keep state in them between calls
  std::vector<void*> send_comms;

  int dev_of(size_t i) const { return devs[i % devs.size()]; }

  ~impl() {
    for (auto* comm : send_comms)
      if (comm)
        net->net().closeSend(comm);
  }
};

channel_connector::channel_connector(std::shared_ptr<plugin> net, int dev,
                                     std::vector<net_handle> peer_handles,
                                     channel_options options)
    : channel_connector(std::move(net), std::vector<int>{dev},
                        std::move(peer_handles), std::move(options)) {
}

channel_connector::channel_connector(std::shared_ptr<plugin> net,
                                     std::vector<int> devices,
                                     std::vector<net_handle> peer_handles,
                                     channel_options options)
    : impl_(std::make_unique<impl>()) {
  if (!net)
    throw transport_error("channel_connector: no plugin given");
  devices = detail::check_devices(*net, std::move(devices), options.peer);
  if (peer_handles.empty())
    throw transport_error(fmt::format(
        "channel to {}: no peer handles to connect to", options.peer));
  impl_->net = std::move(net);
  impl_->devs = std::move(devices);
  impl_->options = std::move(options);
  impl_->handles = std::move(peer_handles);
  impl_->send_comms.assign(impl_->handles.size(), nullptr);
}

channel_connector::~channel_connector() = default;
channel_connector::channel_connector(channel_connector&&) noexcept = default;

bool channel_connector::try_connect() {
  auto& table = impl_->net->net();
  bool all = true;
  for (size_t i = 0; i < impl_->send_comms.size(); ++i) {
    if (impl_->send_comms[i])
      continue;
    ncclNetDeviceHandle_v7_t* device = nullptr;
    impl_->net->check(table.connect(impl_->dev_of(i), impl_->handles[i].data(),
                                    &impl_->send_comms[i], &device),
                      "connect",
                      fmt::format("comm {} to {}", i, impl_->options.peer));
    all = all && impl_->send_comms[i];
  }
  return all;
}

send_channel channel_connector::take() {
  for (auto* comm : impl_->send_comms)
    if (!comm)
      throw transport_error(
          fmt::format("channel to {}: take() before every comm connected",
                      impl_->options.peer));
  auto state =
      detail::make_state(impl_->net, impl_->devs, detail::direction::send,
                         impl_->options, impl_->send_comms.size());
  for (size_t i = 0; i < impl_->send_comms.size(); ++i)
    state->comms[i].comm = std::exchange(impl_->send_comms[i], nullptr);
  detail::tell_caller_polls(*state);
  return send_channel(std::move(state));
}

send_channel channel_connector::connect(std::chrono::milliseconds timeout) {
  if (!detail::drive_until(timeout, [&] { return try_connect(); })) {
    size_t pending = 0;
    for (auto* comm : impl_->send_comms)
      pending += comm == nullptr;
    throw timeout_error(fmt::format(
        "plugin {}: connect to {} on dev {}: {} of {} comms not connected "
        "within {:.1f} s",
        impl_->net->name(), impl_->options.peer, fmt::join(impl_->devs, ","),
        pending, impl_->send_comms.size(), timeout.count() / 1000.0));
  }
  return take();
}

} // namespace kvferry::transport
