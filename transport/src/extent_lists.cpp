#include "kvferry/transport/extent_lists.hpp"

#include <algorithm>
#include <mutex>

namespace kvferry::transport {

namespace {

struct shelf {
  std::mutex mu;
  std::vector<std::vector<copy_extent>> lists;
};

shelf& the_shelf() {
  static shelf s;
  return s;
}

// A kept list with room for `capacity` extents (contents stale), or an
// empty new one.
std::vector<copy_extent> kept_or_new(std::size_t capacity) {
  if (capacity >= extent_lists::min_kept_extents) {
    auto& s = the_shelf();
    std::lock_guard<std::mutex> lock(s.mu);
    // The smallest kept list that is large enough: large ones stay for
    // large calls.
    auto best = s.lists.end();
    for (auto i = s.lists.begin(); i != s.lists.end(); ++i)
      if (i->capacity() >= capacity &&
          (best == s.lists.end() || i->capacity() < best->capacity()))
        best = i;
    if (best != s.lists.end()) {
      auto list = std::move(*best);
      s.lists.erase(best);
      return list;
    }
  }
  std::vector<copy_extent> list;
  list.reserve(capacity);
  return list;
}

} // namespace

std::vector<copy_extent> extent_lists::take(std::size_t capacity) {
  auto list = kept_or_new(capacity);
  list.clear();
  return list;
}

std::vector<copy_extent> extent_lists::take_sized(std::size_t size) {
  auto list = kept_or_new(size);
  // Shrinking is free (copy_extent is trivial); growing zero-fills only
  // past the size the list was given back with.
  list.resize(size);
  return list;
}

void extent_lists::give(std::vector<copy_extent>&& list) {
  if (list.capacity() < min_kept_extents)
    return;
  // Kept at its size, not cleared: take_sized() then need not fill it again.
  auto& s = the_shelf();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.lists.size() < max_kept) {
    s.lists.push_back(std::move(list));
    return;
  }
  // Full: keep the larger of this list and the smallest kept one.
  auto smallest = std::min_element(
      s.lists.begin(), s.lists.end(),
      [](const auto& a, const auto& b) { return a.capacity() < b.capacity(); });
  if (smallest->capacity() < list.capacity())
    *smallest = std::move(list);
}

std::size_t extent_lists::kept() {
  auto& s = the_shelf();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.lists.size();
}

} // namespace kvferry::transport
