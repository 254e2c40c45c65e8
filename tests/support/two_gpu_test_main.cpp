// main() for tests that need two GPUs: below two (or, built with
// KVFERRY_NEEDS_PEER_ACCESS, when GPU 1 cannot reach GPU 0's memory) the
// whole executable is skipped (exit 77, which ctest reports as "skipped")
// with the reason, so it runs for real on a multi-GPU machine only.
#define DOCTEST_CONFIG_IMPLEMENT
#include <cstdio>

#include <doctest/doctest.h>

#include "kvferry/transport/gpu_topology.hpp"

int main(int argc, char** argv) {
  auto gpus = kvferry::transport::system_gpu_topology();
  if (gpus->device_count() < 2) {
    std::printf(
        "SKIPPED: this test needs 2 CUDA GPUs, this machine has %d%s%s\n",
        gpus->device_count(), gpus->device_count() == 0 ? ": " : "",
        gpus->device_count() == 0 ? gpus->why_none().c_str() : "");
    return 77;
  }
#ifdef KVFERRY_NEEDS_PEER_ACCESS
  if (!gpus->can_access_peer(1, 0)) {
    std::printf("SKIPPED: GPU 1 cannot access GPU 0's memory (no peer access "
                "between them)\n");
    return 77;
  }
#endif
  doctest::Context context(argc, argv);
  return context.run();
}
