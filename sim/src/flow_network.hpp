// The links of a simulation and the flows crossing them, shared max-min
// fairly (docs/sim.md, "What is modelled", 5): the network model of both
// engines. The model engine (engine.cpp) drives it from its event queue; the
// actors engine (actors_engine.cpp) from CAF's test clock, behind the
// simulated transfer actors.
//
// Flows move on lazily: a flow's bytes are brought up to date only when its
// rate changes, and each flow's projected end is an event the owner
// schedules (`schedule`), void once the flow's version moved on.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <queue>
#include <string>
#include <tuple>
#include <vector>

#include "kvferry/sim/timeline.hpp"

namespace kvferry::sim {

class flow_network {
public:
  using ns_t = std::int64_t;
  static constexpr double unlimited = std::numeric_limits<double>::infinity();

  /// Asks the owner to call on_event(id, version) at virtual time `at`.
  using schedule_fn =
      std::function<void(ns_t at, std::uint32_t id, std::uint32_t version)>;

  struct link {
    std::string name;
    double capacity = 0; // bytes per ns (= GB/s), now
    double nominal = 0;  // as built (a fault may slow it): for busy %
    double bytes = 0;    // carried so far
    std::vector<std::uint32_t> members; // the flows crossing it
    // Scratch of one max-min computation: the rates of its frozen flows, its
    // unfrozen flows, the version of its entry in the saturation heap, the
    // computation it was last seen by and whether it constrained it.
    double frozen_sum = 0;
    int unfrozen = 0;
    std::uint64_t stamp = 0, version = 0;
    bool constraint = false;
  };

  /// Links [0, recorded) have their rates added to series of the same index
  /// of `rates` (the plots' NIC utilisation); `rates` may be null.
  flow_network(schedule_fn schedule, timeline* rates, std::uint32_t recorded)
      : schedule_(std::move(schedule)), rates_(rates), recorded_(recorded) {}

  std::uint32_t add_link(std::string name, double capacity);
  const link& at(std::uint32_t i) const { return links_[i]; }
  std::uint32_t links() const { return std::uint32_t(links_.size()); }

  /// A flow of `bytes` through links `a` and `b`, at most `cap` bytes per
  /// ns; `tag` is the owner's (returned when it ends). Returns its id.
  /// With `scale` (a request's transfer_factor) it takes `scale` times the
  /// link time per byte: it moves bytes x scale, and its links count its
  /// true bytes carried.
  std::uint32_t start(ns_t now, std::uint32_t tag, std::uint32_t a,
                      std::uint32_t b, double bytes, double cap,
                      double scale = 1);
  /// Lifts flow `id`'s cap.
  void lift_cap(ns_t now, std::uint32_t id);
  /// Takes a flow off its links (its request failed) and re-shares.
  void remove(ns_t now, std::uint32_t id);
  /// A link's rate from now on (a fault).
  void set_capacity(ns_t now, std::uint32_t link, double capacity);
  /// At a flow's projected end: its tag when all its bytes are there (the
  /// flow is gone then); nothing when the event is void or the flow is not
  /// quite there yet (rounding: it is rescheduled).
  std::optional<std::uint32_t> on_event(ns_t now, std::uint32_t id,
                                        std::uint32_t version);
  /// Whether the event (id, version) is still the flow's projected end (not
  /// void): an owner may drop void ones before their time.
  bool pending(std::uint32_t id, std::uint32_t version) const {
    return flows_[id].live && flows_[id].version == version;
  }

private:
  struct flow {
    std::uint32_t tag = 0;
    std::uint32_t res[2] = {0, 0};
    double remaining = 0, cap = 0, rate = 0; // in bytes x scale
    double scale = 1;
    ns_t updated = 0;          // `remaining` is as of this time
    std::uint32_t version = 0; // of its pending finish event
    bool live = false;
    // Scratch of a max-min computation (reshare_from).
    double next_rate = 0;
    std::uint64_t stamp = 0;
    bool frozen = false;
  };

  void settle(flow& f);
  bool contested(const link& l) const;
  void reshare_from(std::uint32_t a, std::uint32_t b);
  void visit_link(std::uint32_t r, bool seed);
  void fill();
  void push_saturation(std::uint32_t r);
  void drop_stale_saturation();
  void freeze(std::uint32_t i, double rate);
  void detach(std::uint32_t id);

  schedule_fn schedule_;
  timeline* rates_;
  std::uint32_t recorded_;
  ns_t now_ = 0;
  std::vector<link> links_;
  std::vector<flow> flows_; // by id; free ids in free_flows_
  std::vector<std::uint32_t> free_flows_;
  // Scratch of reshare_from().
  std::vector<std::uint32_t> comp_flows_, comp_links_, stack_, capped_;
  using saturation = std::tuple<double, std::uint32_t, std::uint64_t>;
  std::priority_queue<saturation, std::vector<saturation>,
                      std::greater<saturation>>
      saturation_; // (level, link, version)
  std::uint64_t stamp_ = 0;
};

} // namespace kvferry::sim
