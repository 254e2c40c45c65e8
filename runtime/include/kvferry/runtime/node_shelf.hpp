// Kept nodes of a node-based map (std::unordered_map, std::map).
//
// Such a map allocates a node per entry. A table of transfers in flight
// gains an entry per transfer and loses it when the transfer ends, so at a
// steady rate it allocated and freed a node per transfer. A shelf keeps the
// nodes of erased entries (extract()) and inserts later entries into them,
// so a map that stays about its size allocates nothing per entry.
//
// Bounds: at most `max_kept` nodes are kept (beyond, an erased node is
// freed). A node's value is reset to a default one when it is shelved (it
// holds nothing of the entry it was) and again when it is reused (a value
// whose defaults read the clock or a counter gets them afresh). Not
// thread-safe: whoever owns the map owns its shelf (one shelf may serve
// several maps of one type).
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

namespace kvferry {

template<class Map>
class node_shelf {
public:
  using key_type = typename Map::key_type;
  using node_type = typename Map::node_type;

  explicit node_shelf(std::size_t max_kept = 64) : max_kept_(max_kept) {
    kept_.reserve(max_kept_);
  }

  /// Enters `key` with a default value, in a kept node if there is one;
  /// an entry already there is left as it is (as try_emplace). Returns the
  /// entry's value.
  typename Map::mapped_type& emplace(Map& map, const key_type& key) {
    if (kept_.empty())
      return map.try_emplace(key).first->second;
    auto node = std::move(kept_.back());
    kept_.pop_back();
    node.key() = key;
    node.mapped() = typename Map::mapped_type{};
    auto r = map.insert(std::move(node));
    if (!r.inserted) // the key was there: the node comes back
      kept_.push_back(std::move(r.node));
    return r.position->second;
  }

  /// Erases the entry at `i`, keeping its node.
  void erase(Map& map, typename Map::iterator i) {
    if (kept_.size() >= max_kept_) {
      map.erase(i);
      return;
    }
    auto node = map.extract(i);
    node.mapped() = typename Map::mapped_type{};
    kept_.push_back(std::move(node));
  }

  /// Erases the entry of `key`, if any, keeping its node.
  void erase(Map& map, const key_type& key) {
    if (auto i = map.find(key); i != map.end())
      erase(map, i);
  }

  std::size_t kept() const { return kept_.size(); }

private:
  std::size_t max_kept_;
  std::vector<node_type> kept_;
};

} // namespace kvferry
