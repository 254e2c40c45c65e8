// How a test waits for a state that other threads or processes reach: it
// polls the condition, with a deadline, never a bare sleep.
#pragma once

#include <chrono>
#include <thread>

namespace kvferry::test {

/// Polls `done` every few milliseconds until it holds (true) or `limit`
/// passes (false).
template<class F>
bool eventually(F done, std::chrono::milliseconds limit =
                            std::chrono::milliseconds(10000)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

} // namespace kvferry::test
