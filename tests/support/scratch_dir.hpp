// A fresh folder under /tmp for one test, removed with everything in it when
// the test leaves its scope.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>

#include <doctest/doctest.h>

namespace kvferry::test {

struct scratch_dir {
  std::filesystem::path path;
  /// `prefix` names the folder: /tmp/<prefix>-XXXXXX.
  explicit scratch_dir(const std::string& prefix) {
    std::string name = "/tmp/" + prefix + "-XXXXXX";
    REQUIRE(mkdtemp(name.data()) != nullptr);
    path = name;
  }
  ~scratch_dir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  scratch_dir(const scratch_dir&) = delete;
  scratch_dir& operator=(const scratch_dir&) = delete;
};

} // namespace kvferry::test
