// The simulator's stand-in for the transfer actor (docs/sim.md, "How it
// works"): the seam where kvferry's real producer and consumer meet a
// modelled network. Same typed interface as the transfer actor
// (transfer_actor in actors.hpp); no plugin, no CUDA, no bytes. A send order
// is answered when the network model says its bytes have landed, and so is
// the receiver's recv order for the same transfer.
//
// Only for actors under CAF's test coordinator (one thread, virtual time):
// the actors of one simulation share one `sim_network`. The orders'
// timeouts are not enforced: a modelled transfer always lands, and a
// simulated worker does not die (faults are the engine's, docs/sim.md).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include <caf/actor_system.hpp>

#include "kvferry/actors/actors.hpp"

namespace kvferry::sim {

/// The transfers of one simulation: how long each takes, and which have
/// landed but were not yet claimed by their receiver's recv order.
class sim_network {
public:
  /// How long `bytes` take from worker `sender` to worker `receiver`,
  /// ordered now.
  using model = std::function<caf::timespan(const std::string& sender,
                                            const std::string& receiver,
                                            std::uint64_t bytes)>;
  explicit sim_network(model m) : model_(std::move(m)) {}

  caf::timespan duration(const std::string& sender, const std::string& receiver,
                         std::uint64_t bytes) const {
    return model_(sender, receiver, bytes);
  }

  struct arrival {
    std::uint64_t bytes = 0;
    std::int64_t start_ns = 0, landed_ns = 0; // the actor clock's
  };
  using key = std::tuple<std::string, std::string, std::uint64_t>;
  /// Landed transfers by (sender, receiver, transfer id).
  std::map<key, arrival> landed;

private:
  model model_;
};

/// A simulated transfer actor for worker `name` (its endpoint says that
/// name, `region_bytes` and the handle of this actor).
transfer_actor spawn_sim_transfer(caf::actor_system& sys, std::string name,
                                  std::uint64_t region_bytes,
                                  std::shared_ptr<sim_network> network);

} // namespace kvferry::sim
