// Where a request goes: the routing policies (round-robin, least-loaded,
// prefix-aware), one implementation for the router actor (router.hpp) and
// the simulator's engine (sim/, docs/sim.md "Routing").
//
// Plain code, no CAF and no clock: the owner tells the policy what it
// learned (a prefill ended, a decode worker freed a request's blocks, a
// request's KV landed, a worker died) and asks it for the next request's
// workers. Every choice is deterministic: ties go to the first worker in
// the owner's order, and dead workers are skipped.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string_view>
#include <utility>
#include <vector>

#include "kvferry/runtime/topology.hpp"

namespace kvferry {

/// The policies (the topology's `sim.routing`, `kvferry demo --routing`).
using routing = topology::sim_routing;

/// "round-robin" | "least-loaded" | "prefix-aware" (or "rr", "ll",
/// "prefix"); none for anything else.
std::optional<routing> parse_routing(std::string_view text);

/// What a decode worker holds of earlier requests' prefixes (trace
/// `hash_ids`, 512-token blocks), least recently used first out, like
/// vLLM's prefix cache of evictable free pages.
///
/// Flat, since the simulator touches one per request at 1,000 workers: the
/// ids in a vector of nodes linked in use order, found through an
/// open-addressing table of node indices (linear probing, deletion by
/// backward shift), both grown as ids come, up to the capacity; no
/// allocation per id.
class prefix_cache {
public:
  explicit prefix_cache(std::size_t capacity = 0) : capacity_(capacity) {}
  /// How many of `ids`' leading ids it holds (without touching them).
  std::size_t leading(const std::vector<std::uint64_t>& ids) const {
    std::size_t n = 0;
    while (n < ids.size() && find(ids[n]) != npos)
      ++n;
    return n;
  }
  /// `ids` are now the most recently used (added, evicting the least
  /// recently used beyond the capacity).
  void touch(const std::vector<std::uint64_t>& ids);

private:
  static constexpr std::uint32_t npos = 0xffffffff;
  struct node {
    std::uint64_t id;
    std::uint32_t newer, older; // npos at the ends
  };
  std::size_t home(std::uint64_t id) const {
    return std::size_t((id * 0x9e3779b97f4a7c15ull) >> shift_);
  }
  // The slot holding `id`'s node, or npos.
  std::uint32_t find(std::uint64_t id) const;
  void unlink(std::uint32_t n);
  void push_newest(std::uint32_t n);
  void erase_slot(std::size_t slot);
  void insert_slot(std::uint32_t n);
  void grow();

  std::size_t capacity_;
  std::vector<node> nodes_;
  std::uint32_t newest_ = npos, oldest_ = npos;
  std::vector<std::uint32_t> slots_; // node index + 1; 0: empty
  int shift_ = 64;
};

class route_policy {
public:
  /// `prefill_workers` workers of one role; one decode worker per entry of
  /// `prefix_capacity`: how many prefix ids the policy remembers of it (the
  /// blocks its pool holds; 0 when prefixes do not matter).
  route_policy(routing kind, std::size_t prefill_workers,
               const std::vector<std::size_t>& prefix_capacity);

  struct choice {
    std::uint32_t prefill = 0, decode = 0;
  };
  /// The workers for the next request, whose prefill costs `prefill_cost`
  /// and which holds `decode_load` at its decode worker (any units, the
  /// same for every request: ms, tokens, blocks), with leading prefix ids
  /// `ids` (may be empty). Both loads count against the chosen workers until
  /// prefill_done / decode_done take them back. None when faults left no
  /// live prefill or no live decode worker.
  ///
  /// - round-robin: each role's live workers in turn;
  /// - least-loaded: the prefill worker with the least cost routed and not
  ///   done, the decode worker with the least load routed and not done;
  /// - prefix-aware: the decode worker holding the longest run of `ids`
  ///   (what landed there, landed()), the load breaking ties; the prefill
  ///   worker least-loaded.
  std::optional<choice> pick(double prefill_cost, std::int64_t decode_load,
                             const std::vector<std::uint64_t>& ids);

  /// A request's prefill on `worker` ended (or will not happen): its cost
  /// no longer counts.
  void prefill_done(std::uint32_t worker, double cost) {
    add(prefills_, prefill_order_, worker, -cost);
  }
  /// A request left decode worker `worker` (finished, rejected or failed).
  void decode_done(std::uint32_t worker, std::int64_t load) {
    add(decodes_, decode_order_, worker, -load);
  }
  /// A request's KV with prefix `ids` is now complete at decode worker
  /// `worker` (for prefix-aware routing).
  void landed(std::uint32_t worker, const std::vector<std::uint64_t>& ids) {
    decodes_[worker].held.touch(ids);
  }
  /// What the policy believes decode worker `worker` holds.
  const prefix_cache& held(std::uint32_t worker) const {
    return decodes_[worker].held;
  }
  /// A worker died: never picked again.
  void prefill_down(std::uint32_t worker) {
    kill(prefills_, prefill_order_, worker);
  }
  void decode_down(std::uint32_t worker) {
    kill(decodes_, decode_order_, worker);
  }

  routing kind() const { return kind_; }

private:
  template<class Load>
  struct worker {
    Load load{};
    bool dead = false;
    prefix_cache held;
  };
  // Live workers by (load, index): least-loaded is the first, ties going to
  // the first in the owner's order, without a scan of 1,000 workers.
  template<class Load>
  using order = std::set<std::pair<Load, std::uint32_t>>;

  template<class Load>
  static void add(std::vector<worker<Load>>& workers, order<Load>& ord,
                  std::uint32_t i, Load delta) {
    auto& w = workers[i];
    if (!w.dead)
      ord.erase({w.load, i});
    w.load += delta;
    if (!w.dead)
      ord.insert({w.load, i});
  }
  template<class Load>
  static void kill(std::vector<worker<Load>>& workers, order<Load>& ord,
                   std::uint32_t i) {
    auto& w = workers[i];
    if (w.dead)
      return;
    ord.erase({w.load, i});
    w.dead = true;
  }
  template<class Load>
  static std::uint32_t next_live(const std::vector<worker<Load>>& workers,
                                 std::uint64_t& counter);
  std::uint32_t best_prefix(const std::vector<std::uint64_t>& ids) const;

  routing kind_;
  std::vector<worker<double>> prefills_;
  std::vector<worker<std::int64_t>> decodes_;
  order<double> prefill_order_;
  order<std::int64_t> decode_order_;
  std::uint64_t rr_prefill_ = 0, rr_decode_ = 0;
};

} // namespace kvferry
