// A whole file's bytes, for tests that compare outputs ("" when it cannot be
// read: the comparison then fails, naming the file).
#pragma once

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace kvferry::test {

inline std::string slurp(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

} // namespace kvferry::test
