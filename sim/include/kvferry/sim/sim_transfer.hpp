// The simulator's stand-in for the transfer actor (docs/sim.md, "How it
// works"): the seam where kvferry's real producer and consumer meet a
// modelled network. Same typed interface as the transfer actor
// (transfer_actor in actors.hpp); no plugin, no CUDA, no bytes. A send order
// goes to the `sim_network`, which tells both ends when its bytes have
// landed (`landed_atom`, as the real receiver hears of a CUDA IPC copy):
// the sender then answers the send order, the receiver the recv order.
//
// Only for actors under CAF's test coordinator (one thread, virtual time):
// the actors of one simulation share one `sim_network`. The orders'
// timeouts are not enforced: a modelled transfer always lands.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <caf/actor_system.hpp>

#include "kvferry/actors/actors.hpp"

namespace kvferry::sim {

/// The transfers of one simulation.
class sim_network {
public:
  struct order {
    std::string sender, receiver;
    std::uint64_t transfer_id = 0, bytes = 0;
    transfer_actor from, to;
    std::int64_t ordered_ns = 0; // the actor clock's
  };
  virtual ~sim_network() = default;
  /// A send order's bytes are to move; call land() once they have.
  virtual void start(order o) = 0;
  /// Tells both ends that `o`'s bytes landed at `landed_ns`.
  static void land(const order& o, std::int64_t landed_ns);
};

/// A network where a transfer takes a fixed function of (sender, receiver,
/// bytes), whatever else moves (tests).
class fixed_network : public sim_network {
public:
  using model = std::function<caf::timespan(const std::string& sender,
                                            const std::string& receiver,
                                            std::uint64_t bytes)>;
  explicit fixed_network(model m) : model_(std::move(m)) {}
  void start(order o) override;

private:
  model model_;
};

/// The endpoint a simulated worker `name` advertises.
proto::endpoint sim_endpoint(const std::string& name,
                             std::uint64_t region_bytes,
                             const transfer_actor& transfer);

/// A simulated transfer actor for worker `name` (its endpoint:
/// sim_endpoint(name, region_bytes, this actor)).
transfer_actor spawn_sim_transfer(caf::actor_system& sys, std::string name,
                                  std::uint64_t region_bytes,
                                  std::shared_ptr<sim_network> network);

} // namespace kvferry::sim
