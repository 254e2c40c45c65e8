// Max-min fair sharing of the links (flow_network.hpp).
#include "flow_network.hpp"

#include <algorithm>
#include <cmath>

namespace kvferry::sim {

std::uint32_t flow_network::add_link(std::string name, double capacity) {
  links_.emplace_back();
  links_.back().name = std::move(name);
  links_.back().capacity = capacity;
  links_.back().nominal = capacity;
  return std::uint32_t(links_.size() - 1);
}

std::uint32_t flow_network::start(ns_t now, std::uint32_t tag, std::uint32_t a,
                                  std::uint32_t b, double bytes, double cap,
                                  double scale) {
  now_ = now;
  std::uint32_t id;
  if (!free_flows_.empty()) {
    id = free_flows_.back();
    free_flows_.pop_back();
  } else {
    id = std::uint32_t(flows_.size());
    flows_.emplace_back();
  }
  auto& f = flows_[id];
  auto version = f.version;
  f = flow{};
  f.version = version;
  f.live = true;
  f.tag = tag;
  f.updated = now_;
  f.res[0] = a;
  f.res[1] = b;
  f.remaining = bytes * scale;
  f.cap = cap * scale;
  f.scale = scale;
  for (auto res : f.res)
    links_[res].members.push_back(id);
  reshare_from(a, b);
  return id;
}

void flow_network::lift_cap(ns_t now, std::uint32_t id) {
  now_ = now;
  auto& f = flows_[id];
  f.cap = unlimited;
  reshare_from(f.res[0], f.res[1]);
}

void flow_network::remove(ns_t now, std::uint32_t id) {
  now_ = now;
  detach(id);
}

void flow_network::set_capacity(ns_t now, std::uint32_t link, double capacity) {
  now_ = now;
  links_[link].capacity = capacity;
  reshare_from(link, link);
}

std::optional<std::uint32_t> flow_network::on_event(ns_t now, std::uint32_t id,
                                                    std::uint32_t version) {
  now_ = now;
  auto& f = flows_[id];
  if (!f.live || f.version != version)
    return std::nullopt;
  settle(f);
  if (f.remaining >= 1.0) { // rounding: not quite there yet
    ++f.version;
    schedule_(now_ + std::max<ns_t>(1, ns_t(std::ceil(f.remaining / f.rate))),
              id, f.version);
    return std::nullopt;
  }
  auto tag = f.tag;
  detach(id);
  return tag;
}

// Takes a flow off its links (finished, or its request failed) and
// re-shares what it leaves.
void flow_network::detach(std::uint32_t id) {
  auto& f = flows_[id];
  settle(f);
  for (auto res : f.res) {
    auto& m = links_[res].members;
    m.erase(std::find(m.begin(), m.end(), id));
  }
  f.live = false;
  ++f.version; // its finish event is void
  free_flows_.push_back(id);
  reshare_from(f.res[0], f.res[1]);
}

// Brings a flow's bytes, and its links' carried bytes, up to now at the
// rate it has had since `updated` (flows move on lazily: only those whose
// rate changes are touched, not every flow at every change).
void flow_network::settle(flow& f) {
  double dt = double(now_ - f.updated);
  if (dt > 0 && f.rate > 0) {
    double moved = std::min(f.remaining, f.rate * dt);
    f.remaining -= moved;
    for (auto r : f.res) {
      links_[r].bytes += moved / f.scale;
      if (rates_ != nullptr && r < recorded_)
        rates_->add(r, f.updated, now_, f.rate / f.scale);
    }
  }
  f.updated = now_;
}

// A link whose flows together could want more than it carries: only such
// a link ties its flows' rates together. On any other, every flow gets
// what its cap and its other link allow, as if the link were not there.
bool flow_network::contested(const link& res) const {
  double want = 0;
  for (auto i : res.members) {
    want += flows_[i].cap;
    if (want > res.capacity)
      return true;
  }
  return false;
}

// Max-min fair rates, recomputed for the flows whose rates a change on
// links `a` and `b` can move: the flows on them, and everything connected
// to those through contested links (a connected component; flows apart
// from it keep their rates, which max-min fairness guarantees).
void flow_network::reshare_from(std::uint32_t a, std::uint32_t b) {
  ++stamp_;
  comp_flows_.clear();
  comp_links_.clear();
  stack_.clear();
  visit_link(a, true);
  visit_link(b, true);
  while (!stack_.empty()) {
    auto r = stack_.back();
    stack_.pop_back();
    visit_link(r, false);
  }
  fill();
  for (auto i : comp_flows_) {
    auto& f = flows_[i];
    if (f.next_rate == f.rate)
      continue;
    settle(f);
    f.rate = f.next_rate;
    ++f.version;
    if (f.rate > 0)
      schedule_(now_ + static_cast<ns_t>(std::ceil(f.remaining / f.rate)), i,
                f.version);
  }
}

// A seed link's flows always join; another link's only when it is
// contested, and then it constrains them (fill()).
void flow_network::visit_link(std::uint32_t r, bool seed) {
  auto& res = links_[r];
  if (res.stamp == stamp_ || !(seed || contested(res)))
    return;
  res.stamp = stamp_;
  res.constraint = contested(res);
  if (res.constraint)
    comp_links_.push_back(r);
  for (auto i : res.members) {
    auto& f = flows_[i];
    if (f.stamp == stamp_)
      continue;
    f.stamp = stamp_;
    comp_flows_.push_back(i);
    for (auto other : f.res)
      if (other != r)
        stack_.push_back(other);
  }
}

// Progressive filling over the component: every unfrozen flow's rate
// rises together (the "level") until a contested link it crosses is full
// or it hits its cap; then it is frozen at that rate. A link with frozen
// rates F and n unfrozen flows fills at level (capacity - F) / n, which
// stays put until one of its flows freezes, so the links wait in a heap
// by that level and the capped flows in order of their caps:
// O(flows log flows) for the component's flows.
void flow_network::fill() {
  capped_.clear();
  for (auto i : comp_flows_) {
    auto& f = flows_[i];
    f.frozen = false;
    f.next_rate = 0;
    if (f.cap < unlimited)
      capped_.push_back(i);
  }
  std::sort(
      capped_.begin(), capped_.end(), [this](std::uint32_t a, std::uint32_t b) {
        return flows_[a].cap != flows_[b].cap ? flows_[a].cap < flows_[b].cap
                                              : a < b;
      });
  saturation_ = {};
  for (auto r : comp_links_) {
    auto& res = links_[r];
    res.frozen_sum = 0;
    res.unfrozen = int(res.members.size());
    push_saturation(r);
  }
  std::size_t next_cap = 0, left = comp_flows_.size();
  while (left > 0) {
    while (next_cap < capped_.size() && flows_[capped_[next_cap]].frozen)
      ++next_cap;
    drop_stale_saturation();
    double link_level =
        saturation_.empty() ? unlimited : std::get<0>(saturation_.top());
    if (next_cap < capped_.size() &&
        flows_[capped_[next_cap]].cap <= link_level) {
      auto i = capped_[next_cap++];
      freeze(i, flows_[i].cap);
      --left;
      continue;
    }
    auto r = std::get<1>(saturation_.top());
    saturation_.pop();
    for (auto i : links_[r].members)
      if (!flows_[i].frozen) {
        freeze(i, link_level);
        --left;
      }
  }
}

void flow_network::push_saturation(std::uint32_t r) {
  auto& res = links_[r];
  ++res.version;
  if (res.unfrozen > 0)
    saturation_.emplace(
        std::max(0.0, (res.capacity - res.frozen_sum) / res.unfrozen), r,
        res.version);
}

void flow_network::drop_stale_saturation() {
  while (!saturation_.empty() &&
         std::get<2>(saturation_.top()) !=
             links_[std::get<1>(saturation_.top())].version)
    saturation_.pop();
}

void flow_network::freeze(std::uint32_t i, double rate) {
  auto& f = flows_[i];
  f.frozen = true;
  f.next_rate = rate;
  for (auto r : f.res) {
    auto& res = links_[r];
    if (res.stamp != stamp_ || !res.constraint)
      continue;
    res.frozen_sum += rate;
    --res.unfrozen;
    push_saturation(r);
  }
}

} // namespace kvferry::sim
