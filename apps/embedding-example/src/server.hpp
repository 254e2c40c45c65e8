// What the prefill and the decode server share: their own paged KV cache
// (GPU or host), block manager and model stream, the kvferry node that has
// the cache registered in place, and the mailbox through which kvferry's
// callbacks reach the server's one thread.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "kvferry/node.hpp"
#include "mailbox.hpp"
#include "options.hpp"
#include "paged_cache.hpp"
#include "protocol.hpp"

namespace example {

class gpu_model;

/// A failure that ends the run; what() names the request or peer at fault.
struct fatal : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class server {
public:
  virtual ~server();

protected:
  server(const common_options& o, const std::string& role);
  /// Starts the node over this server's cache; notifications go to
  /// on_message on the server's thread. Throws fatal.
  void start_node(kvferry::node_options o);
  virtual void on_message(const std::string& from, const message& m) = 0;
  /// Once `peer` was among the node's peers and no longer is (checked at
  /// most every 100 ms; false in between).
  bool peer_gone(const std::string& peer);
  void send(const std::string& to, const std::string& line);
  static std::string default_plugin();
  /// "host memory" or "GPU n".
  std::string memory() const;

  common_options options_;
  std::string role_;
  int gpu_;
  paged_cache cache_;
  block_manager blocks_;
  std::unique_ptr<gpu_model> model_; // with a GPU cache
  mailbox box_;
  std::string seen_peer_;
  clock::time_point last_peers_check_;
  std::optional<kvferry::node> node_; // last: stopped first
};

int run_prefill(const prefill_options& o);
int run_decode(const decode_options& o);

} // namespace example
