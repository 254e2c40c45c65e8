// kvferry::node: a serving stack's KV cache moves with a few calls (issue
// #15). The node owns an actor system, a transfer actor over the caller's
// own KV cache (registered in place, never copied into kvferry pools) and
// the node actor that keeps the request bookkeeping; the caller sees none of
// them (kvferry/node_actors.hpp spawns the same actors into a caller's own
// caf::actor_system instead). docs/embedding.md has a quick start per side.
//
//   kvferry::node_options o;
//   o.name = "decode-0";
//   o.cache = {kvferry::kv_layout::block_major(layers, blocks, block_bytes),
//              {base}};
//   auto n = kvferry::node::start(std::move(o));   // errors as values
//   auto peer = n->connect("10.0.0.5", 7000);       // or o.directory
//   auto done = n->pull(request, "prefill-0", my_blocks);
//   auto stats = done.wait(std::chrono::seconds(10));
//
// Threading: every call is thread-safe and never blocks on the network
// except connect() and start() (bounded by their deadlines) and
// completion::wait (bounded by its argument). Callbacks (completion::on_done,
// on_notification) run on a kvferry thread, one at a time per node: keep
// them short and never call completion::wait for another request in them.
//
// Errors are values (kvferry::status, kvferry::result<T>): the reason names
// the node, peer or request at fault. A request's completion fails with
// peer_down (naming the peer) when its peer leaves, dies or stop()s,
// timeout when its bytes did not land within node_options::timeout,
// invalid_argument for block ids outside the cache, and not_found for a
// peer this node does not know.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kvferry/actors/kv_layout.hpp"
#include "kvferry/runtime/status.hpp"

namespace kvferry {

/// The caller's KV cache, registered in place (never copied into kvferry
/// pools).
struct kv_cache {
  kv_layout layout; // where each (layer, K/V, block) lives
  /// One per layout.region_count(), each at least layout.region_bytes();
  /// caller-owned, they must outlive the node.
  std::vector<void*> bases;
  int gpu = -1; // -1: host memory; else the CUDA device of every base
};

struct node_options {
  /// Unique among the nodes that talk to each other.
  std::string name;
  kv_cache cache;
  /// "host:port" of a kvferry directory; "" = point-to-point (connect()).
  /// With one, start() registers the node there and it meets every other
  /// node of the directory by itself (docs/embedding.md, "Directory mode").
  std::string directory;
  /// The deployment's secret (directory mode).
  std::string secret;
  /// Where peers reach this node (its control port and its data path).
  std::string bind = "127.0.0.1";
  /// The control port; 0: any free port (see node::port()).
  std::uint16_t port = 0;
  /// Net plugin name or path; "": $KVFERRY_NET_PLUGIN, else kvsock.
  std::string plugin;
  /// Plugin devices (NICs), as `kvferry worker --devices`; empty: device 0.
  std::vector<std::string> devices;
  /// CUDA IPC to same-host GPU peers.
  bool use_ipc = true;
  /// The deadline of one request's transfer (from the moment both sides
  /// posted it), and of connect().
  std::chrono::milliseconds timeout{10000};
};

/// What one finished request cost.
struct request_stats {
  std::uint64_t id = 0;
  std::uint64_t bytes = 0;
  std::chrono::nanoseconds total{0};   // call to completion
  std::chrono::nanoseconds data{0};    // first byte posted to last landed
  std::chrono::nanoseconds control{0}; // total - data
  // The path: a pull (and its advertise) between GPU caches on one host
  // that both export CUDA IPC handles is a one-sided read (true): the
  // decode maps the prefill's cache once and its own copy kernel reads each
  // layer, the prefill's ready notice its only control message. Otherwise
  // (false) the transfer actors' push path: the plugin, or for a send to a
  // same-host GPU peer their own CUDA IPC copy.
  bool ipc = false;
};

namespace detail {
struct completion_state;
class node_impl;
} // namespace detail

/// One request's completion: a copyable handle on shared state.
class completion {
public:
  /// A completion of nothing: ready() at once, fails with invalid_argument.
  completion();
  explicit completion(std::shared_ptr<detail::completion_state> state);

  /// The request's id.
  std::uint64_t id() const;
  /// Poll; never blocks.
  bool ready() const;
  /// The stats once the request finished, or why it failed; ec::timeout
  /// (saying "still running") when `limit` passed first: the request goes on.
  result<request_stats> wait(std::chrono::milliseconds limit) const;
  /// Calls `f` once when the request finishes (at once, on this thread, if
  /// it already has); else on a kvferry thread. Again replaces a callback
  /// not yet called.
  void on_done(std::function<void(const result<request_stats>&)> f);

private:
  std::shared_ptr<detail::completion_state> state_;
};

class node {
public:
  /// Registers the cache, loads the plugin, starts the actors, listens on
  /// bind:port and (with a directory) registers there. Errors: invalid_argument
  /// (empty name, a layout without layers, bases that do not match the
  /// layout), plugin_error, cuda_error, unreachable (cannot listen or reach
  /// the directory), unauthorized, duplicate (the name is taken).
  static result<node> start(node_options opts);

  node(node&&) noexcept;
  node& operator=(node&&) noexcept;
  /// Stops.
  ~node();
  /// Idempotent; open requests fail with peer_down naming this node. The
  /// caller's cache is no longer touched once stop() returns.
  void stop();

  const std::string& name() const;
  /// The control port peers connect() to.
  std::uint16_t port() const;

  /// Point-to-point: reach the node listening on host:port (within
  /// node_options::timeout); both directions are usable afterwards. Returns
  /// its name. Errors: unreachable, duplicate (it has this node's name),
  /// mismatch (its layout's layers or block size differ).
  result<std::string> connect(const std::string& host, std::uint16_t port);
  /// The peers this node can address: connected, or met through the
  /// directory (a node that just joined it shows up shortly after).
  std::vector<std::string> peers() const;

  // --- prefill side --------------------------------------------------------

  /// Push request `id`: src_blocks[i] -> dst_blocks[i] of `to`, every
  /// layer. `to` must call receive(id, this node's name, ...) (before or
  /// after). Completes once the bytes left this cache (src blocks free).
  completion send(std::uint64_t id, const std::string& to,
                  const std::vector<std::uint64_t>& src_blocks,
                  const std::vector<std::uint64_t>& dst_blocks);
  /// Offer request `id` for `to` to pull. layerwise: layer l moves once
  /// layer_ready(id, l) was called; else all at once (call layer_ready for
  /// none). Completes when the source blocks are free again (the pull
  /// finished or failed).
  completion advertise(std::uint64_t id, const std::string& to,
                       const std::vector<std::uint64_t>& src_blocks,
                       bool layerwise);
  /// Layer `layer` of request `id` is written. GPU: `cuda_event` (a
  /// cudaEvent_t recorded on the model's stream after the write, or null):
  /// the layer's copy waits for it (on the GPU over CUDA IPC; over a plugin
  /// the transfer actor polls it before posting), never the caller. Errors:
  /// not_found (no such advertised request), invalid_argument (layer out of
  /// range, or the request is not layerwise).
  status layer_ready(std::uint64_t id, std::uint32_t layer,
                     void* cuda_event = nullptr);

  // --- decode side ---------------------------------------------------------

  /// Wait for `from`'s push of request `id` (send) into dst_blocks.
  completion receive(std::uint64_t id, const std::string& from,
                     const std::vector<std::uint64_t>& dst_blocks);
  /// Pull request `id` that `from` advertised (or will advertise) into
  /// dst_blocks, layer by layer as the layers become ready: one message to
  /// `from` plus the bytes; on one host with both caches on the GPU a
  /// one-sided CUDA IPC read, with no message at all (request_stats::ipc).
  /// Completes when every layer landed.
  completion pull(std::uint64_t id, const std::string& from,
                  const std::vector<std::uint64_t>& dst_blocks);

  // --- small messages between the stacks (e.g. "prefill request r") --------

  /// At most 64 KiB, delivered in order per peer. Errors: not_found,
  /// invalid_argument (too long).
  status notify(const std::string& to, std::string payload);
  /// Called (on a kvferry thread) for every notification; replaces the
  /// previous callback. Notifications that arrive before one is set wait.
  void on_notification(
      std::function<void(const std::string& from, const std::string& payload)>
          f);

private:
  explicit node(std::unique_ptr<detail::node_impl> impl);
  std::unique_ptr<detail::node_impl> impl_;
};

} // namespace kvferry
