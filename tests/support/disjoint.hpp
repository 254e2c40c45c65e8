// Whether two lists of block offsets share none (the IPC-quarantine tests:
// blocks held back must not be handed out again).
#pragma once

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <vector>

namespace kvferry::test {

inline bool disjoint(std::vector<std::uint64_t> a,
                     std::vector<std::uint64_t> b) {
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  std::vector<std::uint64_t> both;
  std::set_intersection(a.begin(), a.end(), b.begin(), b.end(),
                        std::back_inserter(both));
  return both.empty();
}

} // namespace kvferry::test
