// main() for tests that need two GPUs: below two (or, built with
// KVFERRY_NEEDS_PEER_ACCESS, when GPU 1 cannot reach GPU 0's memory) the
// whole executable is skipped (exit 77, which ctest reports as "skipped")
// with the reason, so it runs for real on a multi-GPU machine only. A CUDA
// error other than "no device" fails it (gpu_presence.hpp).
#define DOCTEST_CONFIG_IMPLEMENT
#include <cstdio>

#include <doctest/doctest.h>

#include "gpu_presence.hpp"
#include "kvferry/transport/gpu_topology.hpp"
#include "skip_case.hpp"

REGISTER_LISTENER("kvferry_cases", 1, kvferry::test::case_counter);

int main(int argc, char** argv) {
  using kvferry::test::gpu_presence;
  auto gpus = kvferry::test::probe_gpus();
  if (gpus.what != gpu_presence::verdict::run)
    return kvferry::test::skip_or_fail(gpus, "this test needs 2 CUDA GPUs");
  if (gpus.devices < 2) {
    std::printf("SKIPPED: this test needs 2 CUDA GPUs, this machine has %d\n",
                gpus.devices);
    return 77;
  }
#ifdef KVFERRY_NEEDS_PEER_ACCESS
  if (!kvferry::transport::system_gpu_topology()->can_access_peer(1, 0)) {
    std::printf("SKIPPED: GPU 1 cannot access GPU 0's memory (no peer access "
                "between them)\n");
    return 77;
  }
#endif
  doctest::Context context(argc, argv);
  return kvferry::test::finish_run(context.run());
}
