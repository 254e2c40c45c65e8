// The in-process fake plugin (tests/unit/transport_fake_plugin.cpp) and the
// byte patterns the transport tests move through it: one copy for every test
// that loads it. Needs KVFERRY_FIXTURE_DIR (kvferry_transport_test sets it).
#pragma once

#include <cstddef>
#include <dlfcn.h>
#include <string>
#include <vector>

#include <doctest/doctest.h>

namespace kvferry::test {

inline const std::string& fake_plugin_path() {
  static const std::string path =
      std::string(KVFERRY_FIXTURE_DIR) + "/libnccl-net-fake.so";
  return path;
}

/// One of the fake plugin's exported counters (or switches, which tests
/// set): the plugin must already be loaded.
inline long& fake_counter(const char* name) {
  void* lib = ::dlopen(fake_plugin_path().c_str(), RTLD_NOW | RTLD_NOLOAD);
  REQUIRE(lib);
  auto* value = static_cast<long*>(::dlsym(lib, name));
  ::dlclose(lib);
  REQUIRE(value);
  return *value;
}

/// `bytes` bytes that differ from their neighbours and, for another seed,
/// from another buffer's: a misplaced or stale byte shows in a compare.
inline std::vector<char> pattern(std::size_t bytes, int seed) {
  std::vector<char> data(bytes);
  for (std::size_t i = 0; i < bytes; ++i)
    data[i] = static_cast<char>((i * 131 + seed) & 0xff);
  return data;
}

} // namespace kvferry::test
