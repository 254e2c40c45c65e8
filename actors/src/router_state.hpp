// The router's state (private: only router.cpp and its tests' build see it).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include <caf/actor_clock.hpp>

#include "kvferry/actors/router.hpp"

namespace kvferry {

struct router_state {
  router_config cfg;
  std::shared_ptr<router_run> run;
  /// Index (into cfg.tokens, or the source's order) of the next request to
  /// start; that request, once read (`has_next`), and whether there is none
  /// after the last (`drained`).
  std::size_t next = 0;
  router_input next_input;
  bool has_next = false, drained = false;
  /// Requests in flight: which workers each one goes through, so that a
  /// worker's death fails its requests at once. With credit the consumer,
  /// not the producer, answers a request, and a dead one answers nothing; a
  /// dead producer leaves its requests waiting at the consumer.
  struct route {
    route(std::size_t p, std::size_t c, std::uint32_t l = 0)
        : producer(p), consumer(c), load(l) {}
    std::size_t producer;
    std::size_t consumer;
    caf::actor_clock::time_point sent; // set when sent
    std::uint32_t load = 0; // prompt tokens counted by the policy (0: none)
    /// A measured request: its index, arrival and prefix ids (for its row
    /// and the prefix-aware policy); none for a warm-up request.
    std::size_t index = warm_up;
    caf::timespan due{};
    std::vector<std::uint64_t> prefix_ids;
  };
  static constexpr std::size_t warm_up = std::size_t(-1);
  std::unordered_map<std::uint64_t, route> routes; // by request id
  /// Where requests go; its loads drop when a request leaves `routes`.
  std::optional<route_policy> policy;
  /// After the first failure no new request starts: the run has failed.
  bool stopped = false;
  /// The warm-up requests run; the measured ones wait for them.
  bool warming = false;
  caf::actor_clock::time_point warm_up_start;
  /// When the measured requests began (arrival times count from here), and
  /// whether a timer for the next arrival is set.
  caf::actor_clock::time_point start;
  bool timer_set = false;

  /// Whether `id` was still in flight (not failed meanwhile); forgets it.
  bool forget(std::uint64_t id) { return take(id).has_value(); }
  /// The route of `id` if it was still in flight; forgets it (its load no
  /// longer counts).
  std::optional<route> take(std::uint64_t id) {
    auto it = routes.find(id);
    if (it == routes.end())
      return std::nullopt;
    auto r = std::move(it->second);
    routes.erase(it);
    policy->prefill_done(std::uint32_t(r.producer), r.load);
    policy->decode_done(std::uint32_t(r.consumer), r.load);
    return r;
  }

  static inline const char* name = "kvferry.router";
};

} // namespace kvferry
