// The transfer actor's config for tests of two transfer actors of one
// process over a plugin (transfer_bounds_test, transfer_announce_test).
#pragma once

#include <memory>
#include <string>

#include "kvferry/actors/transfer.hpp"

namespace kvferry::test {

/// One comm per peer, 64 KiB chunks, a 5 s open timeout, and no host id, so
/// the pair never takes CUDA IPC.
inline transfer_config
pair_transfer_config(std::string name, std::shared_ptr<transport::plugin> net,
                     std::shared_ptr<memory_region> region) {
  transfer_config tc;
  tc.name = std::move(name);
  tc.net = std::move(net);
  tc.region = std::move(region);
  tc.comms_per_peer = 1;
  tc.chunk_bytes = 64 << 10;
  tc.open_timeout_ms = 5000;
  return tc;
}

} // namespace kvferry::test
