// The argv/envp form execv and posix_spawn take.
#pragma once

#include <string>
#include <vector>

namespace kvferry::app {

/// Pointers to `strings` followed by a null pointer. They point into
/// `strings`, which must outlive the result (and stay unchanged).
inline std::vector<char*> exec_vector(const std::vector<std::string>& strings) {
  std::vector<char*> pointers;
  pointers.reserve(strings.size() + 1);
  for (const auto& s : strings)
    pointers.push_back(const_cast<char*>(s.c_str()));
  pointers.push_back(nullptr);
  return pointers;
}

} // namespace kvferry::app
