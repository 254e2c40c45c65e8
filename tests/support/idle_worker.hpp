// The stand-in for a worker's app or transfer actor in the directory and
// membership tests: it lives until told to exit and answers nothing of use.
#pragma once

#include <caf/all.hpp>

namespace kvferry::test {

/// Spawn it as sys.spawn(idle_worker, 0). (Function actors get one
/// argument: CAF 0.17.6 dereferences a null argument tuple for spawn(f)
/// with none, which UBSan reports.)
inline caf::behavior idle_worker(caf::event_based_actor*, int) {
  return {[](caf::ok_atom) {}};
}

} // namespace kvferry::test
