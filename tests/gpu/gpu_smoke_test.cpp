// Runs only where a CUDA device is present (see support/gpu_test_main.cpp).
#include <doctest/doctest.h>

#include "kvferry/transport/gpu_info.hpp"

TEST_CASE("a GPU is enumerated with a name and memory") {
  auto inventory = kvferry::transport::list_gpus();
  REQUIRE_FALSE(inventory.devices.empty());
  CHECK_FALSE(inventory.devices[0].name.empty());
  CHECK(inventory.devices[0].memory_bytes > 0);
}
