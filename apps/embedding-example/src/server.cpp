#include "server.hpp"

#include <algorithm>
#include <cstdlib>
#include <unistd.h>

#include "gpu.hpp"

namespace example {

server::server(const common_options& o, const std::string& role)
    : options_(o), role_(role), gpu_(choose_gpu(o.gpu)),
      cache_(o.geometry, gpu_), blocks_(o.geometry.blocks) {
  if (options_.name.empty())
    options_.name = role + "-" + std::to_string(::getpid());
  if (gpu_ >= 0)
    model_ = std::make_unique<gpu_model>(gpu_, cache_.view());
}

server::~server() {
  if (node_)
    node_->stop(); // no callback after this; then the cache may go
}

void server::start_node(kvferry::node_options o) {
  o.name = options_.name;
  o.cache = {cache_.layout(), cache_.bases(), gpu_};
  o.timeout = options_.timeout;
  o.plugin = default_plugin();
  auto started = kvferry::node::start(std::move(o));
  if (!started.ok())
    throw fatal("cannot start kvferry node '" + options_.name +
                "': " + started.error().message());
  node_.emplace(std::move(*started));
  node_->on_notification(
      [this](const std::string& from, const std::string& payload) {
        box_.post([this, from, payload] {
          if (auto m = parse_message(payload))
            on_message(from, *m);
        });
      });
}

// Unless the environment says where plugins are, the kvsock plugin of the
// kvferry this was built against (its package's libdir, or its build tree),
// wherever the example's binary lies; "" lets kvferry search.
std::string server::default_plugin() {
  if (std::getenv("KVFERRY_NET_PLUGIN") || std::getenv("KVFERRY_PLUGIN_PATH"))
    return {};
  std::string path = EXAMPLE_PLUGIN_DIR "/libnccl-net-kvsock.so";
  return ::access(path.c_str(), R_OK) == 0 ? path : std::string{};
}

bool server::peer_gone(const std::string& peer) {
  // Asked at most every 100 ms: peers() asks the node's actors.
  const auto t = clock::now();
  if (t - last_peers_check_ < std::chrono::milliseconds(100))
    return false;
  last_peers_check_ = t;
  auto peers = node_->peers();
  bool there = std::find(peers.begin(), peers.end(), peer) != peers.end();
  if (there)
    seen_peer_ = peer;
  return !there && seen_peer_ == peer;
}

void server::send(const std::string& to, const std::string& line) {
  auto sent = node_->notify(to, line);
  if (!sent.ok())
    throw fatal("cannot tell '" + to + "' \"" + line + "\": " + sent.message());
}

std::string server::memory() const {
  return gpu_ < 0 ? "host memory" : "GPU " + std::to_string(gpu_);
}

} // namespace example
