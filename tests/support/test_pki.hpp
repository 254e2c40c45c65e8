// Certificates for the kvferry processes a test starts (docs/security.md): a
// deployment CA and one certificate per name, made by `kvferry pki init` in a
// scratch folder, with $KVFERRY_TLS_DIR pointing there for this process and
// every child it starts. Removed when the test leaves its scope.
#pragma once

#include <cstdlib>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "run_kvferry.hpp"
#include "scratch_dir.hpp"

namespace kvferry::test {

struct test_pki {
  scratch_dir scratch{"kvferry-pki"};
  std::string dir = (scratch.path / "pki").string();

  /// `names`: the processes' names ("directory", workers' --name); a
  /// "client" certificate (status, demo --directory) is always made.
  explicit test_pki(const std::vector<std::string>& names) {
    std::string args = "pki init " + dir + " client";
    for (auto& n : names)
      args += " " + n;
    auto r = run_kvferry(args, 60);
    REQUIRE_MESSAGE(r.status == 0, r.output);
    setenv("KVFERRY_TLS_DIR", dir.c_str(), 1);
  }
  ~test_pki() { unsetenv("KVFERRY_TLS_DIR"); }
  test_pki(const test_pki&) = delete;
  test_pki& operator=(const test_pki&) = delete;
};

} // namespace kvferry::test
