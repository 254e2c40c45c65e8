// main() for GPU tests: without a usable CUDA device the whole executable is
// skipped (exit 77, which ctest reports as "skipped") with the reason.
#define DOCTEST_CONFIG_IMPLEMENT
#include <cstdio>

#include <doctest/doctest.h>

#include "kvferry/transport/gpu_info.hpp"

int main(int argc, char** argv) {
  auto inventory = kvferry::transport::list_gpus();
  if (inventory.devices.empty()) {
    std::printf("SKIPPED: this test needs a CUDA GPU: %s\n",
                inventory.why_none.c_str());
    return 77;
  }
  doctest::Context context(argc, argv);
  return context.run();
}
