// The routing policies (route_policy.hpp).
#include "kvferry/actors/route_policy.hpp"

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

void prefix_cache::touch(const std::vector<std::uint64_t>& ids) {
  for (auto id : ids) {
    if (auto it = where_.find(id); it != where_.end()) {
      order_.splice(order_.begin(), order_, it->second);
      continue;
    }
    if (capacity_ == 0)
      return;
    if (where_.size() == capacity_) {
      where_.erase(order_.back());
      order_.pop_back();
    }
    order_.push_front(id);
    where_[id] = order_.begin();
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
