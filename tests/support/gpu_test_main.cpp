// main() for GPU tests: on a machine without a CUDA device the whole
// executable is skipped (exit 77, which ctest reports as "skipped") with the
// reason; a CUDA error other than "no device" (a broken or too old driver)
// fails it (gpu_presence.hpp says which is which).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "gpu_presence.hpp"
#include "skip_case.hpp"

REGISTER_LISTENER("kvferry_cases", 1, kvferry::test::case_counter);

int main(int argc, char** argv) {
  auto gpus = kvferry::test::probe_gpus();
  if (gpus.what != kvferry::test::gpu_presence::verdict::run)
    return kvferry::test::skip_or_fail(gpus, "this test needs a CUDA GPU");
  doctest::Context context(argc, argv);
  return kvferry::test::finish_run(context.run());
}
