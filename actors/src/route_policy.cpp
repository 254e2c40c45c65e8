// The routing policies (route_policy.hpp).
#include "kvferry/actors/route_policy.hpp"

#include <algorithm>

namespace kvferry {

std::optional<routing> parse_routing(std::string_view text) {
  if (text == "round-robin" || text == "rr")
    return routing::round_robin;
  if (text == "least-loaded" || text == "ll")
    return routing::least_loaded;
  if (text == "prefix-aware" || text == "prefix")
    return routing::prefix_aware;
  return std::nullopt;
}

std::uint32_t prefix_cache::find(std::uint64_t id) const {
  if (slots_.empty())
    return npos;
  auto mask = slots_.size() - 1;
  for (auto i = home(id);; i = (i + 1) & mask) {
    if (slots_[i] == 0)
      return npos;
    if (nodes_[slots_[i] - 1].id == id)
      return std::uint32_t(i);
  }
}

void prefix_cache::unlink(std::uint32_t n) {
  auto& x = nodes_[n];
  (x.newer == npos ? newest_ : nodes_[x.newer].older) = x.older;
  (x.older == npos ? oldest_ : nodes_[x.older].newer) = x.newer;
}

void prefix_cache::push_newest(std::uint32_t n) {
  nodes_[n].newer = npos;
  nodes_[n].older = newest_;
  (newest_ == npos ? oldest_ : nodes_[newest_].newer) = n;
  newest_ = n;
}

// Empties `slot`, moving back the entries after it that probed past it, so
// that every lookup still finds its id before an empty slot.
void prefix_cache::erase_slot(std::size_t slot) {
  auto mask = slots_.size() - 1;
  slots_[slot] = 0;
  for (auto i = (slot + 1) & mask; slots_[i] != 0; i = (i + 1) & mask) {
    auto want = home(nodes_[slots_[i] - 1].id);
    // Its home is cyclically in (slot, i]: it stays; otherwise it moves.
    bool stays =
        slot < i ? (slot < want && want <= i) : (slot < want || want <= i);
    if (!stays) {
      slots_[slot] = slots_[i];
      slots_[i] = 0;
      slot = i;
    }
  }
}

void prefix_cache::insert_slot(std::uint32_t n) {
  auto mask = slots_.size() - 1;
  auto i = home(nodes_[n].id);
  while (slots_[i] != 0)
    i = (i + 1) & mask;
  slots_[i] = n + 1;
}

// Doubles the table (at least 16 slots), keeping it at most half full.
void prefix_cache::grow() {
  auto size = std::max<std::size_t>(16, 2 * slots_.size());
  slots_.assign(size, 0);
  shift_ = 64;
  for (auto s = size; s > 1; s >>= 1)
    --shift_;
  for (std::uint32_t n = 0; n < nodes_.size(); ++n)
    insert_slot(n);
}

void prefix_cache::touch(const std::vector<std::uint64_t>& ids) {
  for (auto id : ids) {
    if (auto slot = find(id); slot != npos) {
      auto n = slots_[slot] - 1;
      unlink(n);
      push_newest(n);
      continue;
    }
    if (capacity_ == 0)
      return;
    std::uint32_t n;
    if (nodes_.size() == capacity_) { // the oldest makes room
      n = oldest_;
      erase_slot(find(nodes_[n].id));
      unlink(n);
    } else {
      n = std::uint32_t(nodes_.size());
      nodes_.push_back({id, npos, npos});
      if (2 * nodes_.size() > slots_.size())
        grow(); // inserts the new node too
    }
    nodes_[n].id = id;
    if (find(id) == npos)
      insert_slot(n);
    push_newest(n);
  }
}

route_policy::route_policy(routing kind, std::size_t prefill_workers,
                           const std::vector<std::size_t>& prefix_capacity)
    : kind_(kind), prefills_(prefill_workers) {
  for (std::uint32_t i = 0; i < prefills_.size(); ++i)
    prefill_order_.insert({0.0, i});
  decodes_.reserve(prefix_capacity.size());
  for (auto capacity : prefix_capacity) {
    decode_order_.insert({0, std::uint32_t(decodes_.size())});
    decodes_.push_back({0, false, prefix_cache{capacity}});
  }
}

template<class Load>
std::uint32_t route_policy::next_live(const std::vector<worker<Load>>& workers,
                                      std::uint64_t& counter) {
  std::uint32_t i;
  do
    i = std::uint32_t(counter++ % workers.size());
  while (workers[i].dead);
  return i;
}

// The live decode worker holding the longest run of `ids`; the load breaks
// ties, then the order.
std::uint32_t
route_policy::best_prefix(const std::vector<std::uint64_t>& ids) const {
  std::int64_t best = -1;
  std::size_t best_match = 0;
  for (std::uint32_t i = 0; i < decodes_.size(); ++i) {
    if (decodes_[i].dead)
      continue;
    auto match = decodes_[i].held.leading(ids);
    if (best < 0 || match > best_match ||
        (match == best_match && decodes_[i].load < decodes_[best].load)) {
      best = i;
      best_match = match;
    }
  }
  return std::uint32_t(best);
}

std::optional<route_policy::choice>
route_policy::pick(double prefill_cost, std::int64_t decode_load,
                   const std::vector<std::uint64_t>& ids) {
  if (prefill_order_.empty() || decode_order_.empty())
    return std::nullopt; // the order sets hold the live workers
  choice c;
  switch (kind_) {
  case routing::round_robin:
    c.prefill = next_live(prefills_, rr_prefill_);
    c.decode = next_live(decodes_, rr_decode_);
    break;
  case routing::least_loaded:
    c.prefill = prefill_order_.begin()->second;
    c.decode = decode_order_.begin()->second;
    break;
  case routing::prefix_aware:
    c.prefill = prefill_order_.begin()->second;
    c.decode = best_prefix(ids);
    break;
  }
  add(prefills_, prefill_order_, c.prefill, prefill_cost);
  add(decodes_, decode_order_, c.decode, decode_load);
  return c;
}

} // namespace kvferry
