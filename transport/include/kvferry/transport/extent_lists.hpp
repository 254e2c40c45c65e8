// Recycled extent lists for vector transfers.
//
// A vector call over KV blocks carries its extent list from the caller's
// thread to the transfer actor: 24 bytes per block, 1.5 MiB for 65,536
// blocks of 4 KiB. Allocated fresh per call, such a list comes from mmap or
// from a heap top that glibc trims again after the free (the list is freed
// on another thread), so every call page-faulted its list in: ~400 faults,
// more host time per call than the copy kernel's. The caller takes a list
// here and the transfer actor gives it back once it is done with it (over
// CUDA IPC once the plan is packed, over the plugin once the sends are
// posted), so in steady state a vector call allocates nothing.
//
// Bounds: at most max_kept lists are kept, each of at least min_kept_extents
// capacity (smaller ones are cheap for malloc and are simply freed). The
// memory kept is max_kept x the largest list of the run. Thread-safe.
#pragma once

#include <cstddef>
#include <vector>

#include "kvferry/transport/copy_plan.hpp"

namespace kvferry::transport {

class extent_lists {
public:
  static constexpr std::size_t max_kept = 16;
  static constexpr std::size_t min_kept_extents = 4096;

  /// An empty list with room for at least `capacity` extents: a kept one
  /// when one is large enough, else a new one.
  static std::vector<copy_extent> take(std::size_t capacity);

  /// A list of exactly `size` extents of stale contents, for a caller that
  /// writes every one by index (several threads may, each its own range).
  /// A kept list keeps the size it was given back with, so in steady state
  /// this neither allocates nor zero-fills 24 bytes per extent.
  static std::vector<copy_extent> take_sized(std::size_t size);

  /// Keeps `list` for a later take() or take_sized(), or frees it when it
  /// is small or max_kept lists are kept already.
  static void give(std::vector<copy_extent>&& list);

  /// How many lists are kept now (for tests).
  static std::size_t kept();
};

} // namespace kvferry::transport
